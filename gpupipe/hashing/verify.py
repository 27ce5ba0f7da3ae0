"""Verify near-duplicate candidates on their 32x32 grayscale thumbnails (numpy | CuPy).

A 64-bit pHash is coarse: on small, centred images (Fashion-MNIST) about 1 in
800 unrelated pairs lies within 8 bits, so at 70,000 images the candidates
found by Hamming distance alone are a million, nearly all false.  Each
candidate pair is therefore checked again on the thumbnails the decode made,
in one of two ways (`VerifyMode`):

``fine`` (default, cheap): the 256-bit DCT hash of both thumbnails
(`gpupipe.hashing.phash.dct_hash` with size 16), computed only for the images
that have a candidate, must be within ``max_fine_distance`` bits.  Its mid
frequencies separate re-encodes, brightness changes and resizes (under ~35
bits on Fashion-MNIST) from different objects of one coarse shape (99% above
42 bits): about 0.5% of false candidates pass.  Translations do not pass.

``thumbs`` (slower, tolerant of shifts): a shift-tolerant pixel distance

    d(a, b) = min over integer shifts |dy|, |dx| <= max_shift of
              mean |z(a) - z(b)| over the overlap,

where z standardises a thumbnail to zero mean and unit standard deviation
(so +-10% brightness or contrast costs nothing) and the shift search absorbs
small translations.  0 means identical up to brightness; unrelated images sit
around 0.5-1.0; re-encodes, +-10% brightness, JPEG q75, 90% resizes and 1-2 px
shifts of 28 px images mostly stay under 0.12 (measured in benchmarks/).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from gpupipe.hashing.neighbors import hamming
from gpupipe.hashing.phash import FINE_SIZE, dct_hash

VerifyMode = Literal["fine", "thumbs", "none"]
THUMB = 32
DEFAULT_MAX_SHIFT = 2
DEFAULT_MAX_THUMB_DISTANCE = 0.12
DEFAULT_MAX_FINE_DISTANCE = 38


def pair_check(thumbs, *, mode: VerifyMode = "fine", max_fine_distance: int | None = None,
               max_thumb_distance: float | None = None, xp=np):
    """A function ``check(i, j) -> (M,) bool`` telling which pairs
    (thumbs[i[k]], thumbs[j[k]]) are near duplicates.

    thumbs: (U, 32, 32) uint8, the thumbnails of the images involved.  For
    ``fine`` the 256-bit hashes are computed here, once per image, however many
    pairs are checked later.  Thresholds default to DEFAULT_MAX_FINE_DISTANCE
    (bits of 256) and DEFAULT_MAX_THUMB_DISTANCE.
    """
    if mode == "none":
        return lambda i, j: xp.ones(int(i.shape[0]), dtype=bool)
    if mode == "fine":
        fine = dct_hash(thumbs, size=FINE_SIZE, xp=xp)
        limit = DEFAULT_MAX_FINE_DISTANCE if max_fine_distance is None else max_fine_distance
        return lambda i, j: hamming(fine[i], fine[j], xp=xp).astype(xp.int32).sum(axis=1) <= limit
    if mode == "thumbs":
        tlimit = DEFAULT_MAX_THUMB_DISTANCE if max_thumb_distance is None else max_thumb_distance
        return lambda i, j: thumb_distance(thumbs[i], thumbs[j], xp=xp) <= tlimit
    raise ValueError(f"verify mode must be one of fine, thumbs, none; not {mode!r}")


def _standardise(t, xp):
    t = t.reshape(t.shape[0], THUMB, THUMB).astype(xp.float32)
    t = t - t.mean(axis=(1, 2), keepdims=True)
    return t / (t.std(axis=(1, 2), keepdims=True) + xp.float32(1.0))


def thumb_distance(a, b, *, max_shift: int = DEFAULT_MAX_SHIFT, xp=np, chunk: int = 16384):
    """Shift-tolerant distance between paired thumbnails.

    a, b: (M, 32, 32) or (M, 1024) uint8 on ``xp``'s device, pair k is (a[k], b[k]).
    Returns (M,) float32: 0 for identical, larger = more different.
    """
    m = int(a.shape[0])
    out = xp.empty(m, dtype=xp.float32)
    for s in range(0, m, chunk):
        za, zb = _standardise(a[s:s + chunk], xp), _standardise(b[s:s + chunk], xp)
        best = None
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                ya, yb = slice(max(0, dy), THUMB + min(0, dy)), slice(max(0, -dy), THUMB + min(0, -dy))
                xa, xb = slice(max(0, dx), THUMB + min(0, dx)), slice(max(0, -dx), THUMB + min(0, -dx))
                d = xp.abs(za[:, ya, xa] - zb[:, yb, xb]).mean(axis=(1, 2))
                best = d if best is None else xp.minimum(best, d)
        out[s:s + chunk] = best
    return out
