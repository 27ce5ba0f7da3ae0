"""64-bit DCT perceptual hash (pHash), written once over numpy | CuPy.

The classic construction (as in imagededup and the ImageHash library): the
grayscale image is reduced to 32x32 (done by DALI with antialiasing, on the
decode device), the 2-D DCT-II is taken, the top-left 8x8 low frequencies are
kept, and each bit says whether a coefficient is >= the median of the 63 AC
coefficients.  Bit 63 is coefficient (0, 0); bits run row-major.  Similar
images have hashes at a small Hamming distance (0..64).

`dct_hash` with ``size=16`` gives a 256-bit hash of the same kind: the
mid frequencies it adds tell apart different objects that share a coarse
shape; the same-picture check (`gpupipe.hashing.verify`) uses it as a cheap
gate and to tell whether a pair's content moved.

The DCT is two small matrix products in float64 so that CPU and GPU agree
bit for bit except on exact ties at the median.
"""

from __future__ import annotations

import functools

import numpy as np

HASH_SIZE = 8
DCT_SIZE = 32


@functools.lru_cache(maxsize=4)
def dct_matrix(n: int = DCT_SIZE) -> np.ndarray:
    """Orthonormal DCT-II matrix, (n, n) float64: ``X_dct = D @ X @ D.T``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_BIT_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)
FINE_SIZE = 16      # the 256-bit "fine" hash (gate and moved/unmoved test of the check)


def dct_hash(gray32, *, size: int = HASH_SIZE, xp=np, chunk: int = 8192):
    """DCT hash with ``size * size`` bits (size 8: pHash; 16: the fine hash).

    gray32: (B, 32, 32) or (B, 32, 32, 1), uint8 or float, on ``xp``'s device.
    Returns (B, size * size // 64) uint64 on the same device; word 0 holds the
    lowest frequencies, bit 63 of word 0 is coefficient (0, 0).  Works in
    chunks of ``chunk`` images (float64 temporaries stay in cache).
    """
    if gray32.shape[0] > chunk:
        return xp.concatenate([dct_hash(gray32[s:s + chunk], size=size, xp=xp, chunk=chunk)
                               for s in range(0, gray32.shape[0], chunk)])
    x = gray32.reshape(gray32.shape[0], DCT_SIZE, DCT_SIZE).astype(xp.float64)
    b = x.shape[0]
    low = xp.asarray(dct_matrix()[:size])                 # (size, 32): only the rows we keep
    # X @ low.T as one (B*32, 32) x (32, size) product, then low @ that: two flat
    # GEMMs instead of a batched one (4x faster in numpy, same numbers).
    right = xp.matmul(x.reshape(b * DCT_SIZE, DCT_SIZE), low.T).reshape(b, DCT_SIZE, size)
    coef = xp.matmul(low[None], right)                     # (B, size, size)
    flat = coef.reshape(b, size * size)
    # The median of the size*size - 1 AC coefficients (an odd count) is one of
    # them: a partition is exact and several times faster than xp.median.
    k = (size * size - 1) // 2
    med = xp.partition(flat[:, 1:], k, axis=1)[:, k]
    bits = (flat >= med[:, None]).astype(xp.uint64).reshape(b, size * size // 64, 64)
    return (bits * xp.asarray(_BIT_WEIGHTS)).sum(axis=2, dtype=xp.uint64)


def phash(gray32, xp=np):
    """pHash of a batch: (B, 32, 32) gray -> (B,) uint64 (see `dct_hash`)."""
    return dct_hash(gray32, size=HASH_SIZE, xp=xp)[:, 0]
