"""Shift-tolerant hash codes from Fourier magnitudes, written once over numpy | CuPy.

pHash bits are signs of DCT coefficients: a shift of 1-2 px of a 28 px
image (4-7% of the side) moves their phases enough to flip a third of the
bits, so shifted and cropped copies are rarely pHash candidates.  The
magnitude of the 2-D Fourier transform does not change when the content
moves (exactly for circular shifts, closely for small real ones), so a code
built from magnitudes finds them.

Construction (``ring_code``), from a 32x32 grayscale thumbnail:
1. subtract the background (median of the border pixels) and multiply by a
   centred Gaussian window (sigma = 10 px), so content entering or leaving at
   the border matters little;
2. take the magnitudes |F(u, v)| of the low frequencies u^2 + v^2 <= r^2
   (one of each conjugate pair), computed as a partial DFT (two GEMMs);
3. each bit compares two frequencies of about the same radius, drawn once
   from a fixed seed: bit = |F(k_a)| > |F(k_b)|.  Comparing within a ring
   cancels the 1/f fall-off of natural images, so every bit is balanced
   (about half the images set it) and the code carries information where a
   comparison against one global median would not.

Two codes come from it: `shift_key` (64 bits, r = 5), the second candidate
key searched beside pHash, and `ring_code` with 256 bits (r = 8), a cheap
gate before the pixel check (`gpupipe.hashing.verify`).  Magnitudes keep no
phase, so many different images of one silhouette share a code: these codes
propose candidates, they never decide.  Measured recall and candidate counts:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import functools

import numpy as np

THUMB = 32
WINDOW_SIGMA = 10.0
KEY_RADIUS, KEY_SEED = 5, 0         # 64-bit candidate key
GATE_RADIUS, GATE_SEED = 8, 1       # 256-bit gate code


@functools.lru_cache(maxsize=8)
def ring_pairs(radius: int, n_bits: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed frequency comparisons of a code: (rows (K,), cols (K,), pairs (n_bits, 2)).

    rows/cols index an ``rfft2`` output of a 32x32 image (cols are the
    non-negative frequencies); pairs index into those K frequencies.  Each
    pair joins two frequencies that are close in radius.
    """
    ks = [(u, v) for v in range(0, radius + 1) for u in range(-radius, radius + 1)
          if (v > 0 or u > 0) and u * u + v * v <= radius * radius]
    radii = np.array([np.hypot(u, v) for u, v in ks])
    order = np.argsort(radii, kind="stable")
    candidates = [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, min(len(order), a + 6))]
    if len(candidates) < n_bits:
        raise ValueError(f"radius {radius} gives {len(candidates)} comparisons, fewer than {n_bits}")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(candidates), n_bits, replace=False))
    pairs = np.array([candidates[i] for i in pick], dtype=np.int64)
    rows = np.array([u % THUMB for u, _ in ks], dtype=np.int64)
    cols = np.array([v for _, v in ks], dtype=np.int64)
    return rows, cols, pairs


@functools.lru_cache(maxsize=8)
def _dft(radius: int, n_bits: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The partial DFT of a code's frequencies, F(u, v) = sum_y,x z[y, x] e^(-2 pi i (u y + v x) / 32)
    for |u| <= radius, 0 <= v <= radius: left (2U, 32) = [cos; sin] of u y, right (32, 2V) =
    [cos | sin] of v x (float32), and at (K,) the flat index in the U x V grid of each
    frequency `ring_pairs` lists."""
    rows, cols, _ = ring_pairs(radius, n_bits, seed)
    us, vs, x = np.arange(-radius, radius + 1), np.arange(radius + 1), np.arange(THUMB)
    a, b = 2 * np.pi * np.outer(us, x) / THUMB, 2 * np.pi * np.outer(x, vs) / THUMB
    left = np.concatenate([np.cos(a), np.sin(a)], axis=0).astype(np.float32)
    right = np.concatenate([np.cos(b), np.sin(b)], axis=1).astype(np.float32)
    u = np.where(rows > THUMB // 2, rows - THUMB, rows)
    return left, right, (u + radius) * len(vs) + cols


@functools.lru_cache(maxsize=2)
def _window() -> np.ndarray:
    y = np.arange(THUMB, dtype=np.float64) - (THUMB - 1) / 2
    w = np.exp(-0.5 * (y / WINDOW_SIGMA) ** 2)
    return (w[:, None] * w[None, :]).astype(np.float32)


_BIT_WEIGHTS = (np.uint64(1) << np.arange(64, dtype=np.uint64)).astype(np.uint64)


def ring_code(gray32, *, radius: int = GATE_RADIUS, n_bits: int = 256, seed: int = GATE_SEED,
              xp=np, chunk: int = 8192):
    """Magnitude-comparison code of each thumbnail.

    gray32: (B, 32, 32) uint8 or float on ``xp``'s device.  Returns
    (B, n_bits // 64) uint64 on the same device; Hamming distance between
    codes is the number of comparisons that differ (0 = same magnitudes order).
    """
    if n_bits % 64:
        raise ValueError("n_bits must be a multiple of 64")
    b = int(gray32.shape[0])
    if b > chunk:
        return xp.concatenate([ring_code(gray32[s:s + chunk], radius=radius, n_bits=n_bits, seed=seed, xp=xp)
                               for s in range(0, b, chunk)])
    _, _, pairs = ring_pairs(radius, n_bits, seed)
    left, right, at = _dft(radius, n_bits, seed)
    u, v = left.shape[0] // 2, right.shape[1] // 2
    g = gray32.reshape(b, THUMB, THUMB).astype(xp.float32)
    border = xp.concatenate([g[:, 0], g[:, -1], g[:, 1:-1, 0], g[:, 1:-1, -1]], axis=1)
    z = (g - xp.median(border, axis=1)[:, None, None]) * xp.asarray(_window())
    # Only the low frequencies the code compares, as two real GEMMs (a partial DFT):
    # 2.7x faster than a full rfft2 on the CPU; the same 64-bit keys on all 60,000
    # CIFAR-10 images, and 3 of them with one of 256 gate bits flipped (float rounding).
    x = xp.matmul(z.reshape(b * THUMB, THUMB), xp.asarray(right)).reshape(b, THUMB, 2 * v)   # [sum cos | sum sin] over x
    y = xp.matmul(xp.asarray(left), x)                                    # (B, 2U, 2V), rows [cos; sin] over y
    re = y[:, :u, :v] - y[:, u:, v:]
    im = y[:, u:, :v] + y[:, :u, v:]
    mag = xp.sqrt(re * re + im * im).reshape(b, u * v)[:, xp.asarray(at)]       # (B, K) |F(u, v)|
    bits = (mag[:, xp.asarray(pairs[:, 0])] > mag[:, xp.asarray(pairs[:, 1])]).astype(xp.uint64)
    return (bits.reshape(b, n_bits // 64, 64) * xp.asarray(_BIT_WEIGHTS)).sum(axis=2, dtype=xp.uint64)


def shift_key(gray32, xp=np):
    """The 64-bit shift-tolerant candidate key: (B, 32, 32) -> (B,) uint64."""
    return ring_code(gray32, radius=KEY_RADIUS, n_bits=64, seed=KEY_SEED, xp=xp)[:, 0]
