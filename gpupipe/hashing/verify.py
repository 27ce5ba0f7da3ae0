"""Is a candidate pair the same picture?  Verification on 32x32 thumbnails (numpy | CuPy).

Hash candidates (pHash, `gpupipe.hashing.shiftkey`) propose pairs; this
module decides.  A near duplicate is one picture after re-encoding, resizing,
a small crop or shift (up to ~7% of the side), a brightness or contrast
change, mild blur or noise (`gpupipe.transforms` lists them), not another
sample of the same class.  What separates the two is detail at the right
place: after aligning the two thumbnails, a copy agrees in its mid-frequency
structure (strokes, edges, texture), a different sample of the same shape
does not.

The similarity of a pair (`PairCheck.similarity`), in [-1, 1], 1 = identical
up to brightness and contrast:

    s(a, b) = max over zoom z in {1/1.04, 1, 1.04} and shift (dy, dx), |d| <= 5 px,
              of the Pearson correlation between f(a) over its central 22x22
              window and f(zoom_z(b)) over the same window shifted by (dy, dx),

where f is a band-pass (difference of Gaussians, sigma 1 and 3 px) of the
thumbnail standardised to zero mean and unit variance; colour thumbnails are
compared over their three channels at once (a recoloured picture is not the
same picture).  The correlation is invariant to brightness and contrast; the
search absorbs shifts, crops and the scale change a crop brings; the
band-pass ignores what blur, noise and JPEG change (the finest detail) and
what every sample of a class shares (the coarse silhouette).  The peak is
refined below one pixel by a parabola per axis through the correlations
around the best integer shift.

Cost control, cheapest first (each step only sees pairs the previous kept):
1. gate: the 256-bit DCT hash (`gpupipe.hashing.phash`, size 16) within
   GATE_FINE_BITS, or the 256-bit Fourier-magnitude code
   (`gpupipe.hashing.shiftkey.ring_code`) within GATE_RING_BITS: a few
   popcounts per pair, loose enough that every measured copy passes;
2. coarse: the correlation of a lower band (COARSE_SIGMAS) at 16x16 over
   shifts of up to 4 px (of 32), one zoom; pairs below COARSE_MIN stop here;
3. fine: at 32x32, zoom 1, 3x3 shifts around the coarse one, and
   the sub-pixel peak.  Zooms other than 1 (with 5x5 shifts) only for pairs
   whose zoom-1 score lands within ZOOM_WITHIN below the threshold.

Each image's band-passes are computed when first needed and cached (up to
CACHE_BYTES per cache, so memory stays bounded; past it the images cached
longest ago make room, and a caller that checks pairs in an order where an
image's pairs come close together computes each about once: the dedup stage
orders them by a bandwidth-reducing numbering of the pair graph).

The decision (`PairCheck.__call__`): the similarity must reach
DEFAULT_MIN_SIMILARITY (0.99) where the two 256-bit DCT hashes agree (the
content did not move: re-encodes, photometric edits, resizes), and 0.995
where they do not (a shift, crop or zoom was needed, and look-alike samples
of one class align as well as a moved copy does).  Both were chosen from the
measured ROC of copies vs different samples of one class on real digits and
judged on Fashion-MNIST: benchmarks/bench_verify_roc.py, benchmarks/RESULTS.md.

Real photographs (``--verify photo``): real same-shot duplicates combine a crop
with rescaling, a colour shift and JPEG, which the band-pass at 0.99 rejects
(6% of ciFAIR's CIFAR-10 pairs grouped).  The photo route adds, for pairs of
colour images, the *registered similarity* (a zoom search over 0.8-1.25, a
lower band, in gray) decided by its statistical significance, and a colour test
at the alignment found (one global colour map must explain the pair):
`gpupipe.hashing.photo`.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from gpupipe.hashing.neighbors import hamming
from gpupipe.hashing.phash import FINE_SIZE, dct_hash
from gpupipe.hashing.shiftkey import ring_code
from gpupipe.xputil import one_blas_thread

VerifyMode = Literal["pixels", "photo", "none"]
THUMB = 32
DEFAULT_MIN_SIMILARITY = 0.99
MOVED_MARGIN = 0.005           # pairs whose 256-bit DCT hashes differ (moved content) need this much more
GATE_FINE_BITS = 38            # of 256: photometric edits, re-encodes, resizes
GATE_RING_BITS = 70            # of 256: shifts and crops
GATE_UNITS = GATE_FINE_BITS * GATE_RING_BITS    # `PairCheck.gate_units` at the gate's limit
COARSE_MIN = 0.8
SIGMAS = (1.0, 3.0)            # band-pass at 32 px (fine step)
COARSE_SIGMAS = (1.5, 4.0)     # a lower band for the 16 px step: tolerant of half-pixel offsets
ZOOMS = (1 / 1.04, 1.0, 1.04)
ZOOM_WITHIN = 0.05             # zooms are tried where zoom 1 scores this close below the threshold
MARGIN = 5                     # 32 px: central 22x22 window, shifts up to 5 px
CACHE_BYTES = 1 << 30          # per cache of band-passed images; beyond it the oldest make room
CPU_IMAGES = 512               # images per step of per-image work on the CPU: temporaries stay in cache
                               # (the band-pass ran 3x faster than at 16,384 a step)
CPU_PAIRS = 2048               # pairs per step of the per-pair correlations on the CPU, in threads
COARSE_SHIFT = 2               # 16 px: up to 2 px (4 px at 32)


_GRAY = np.array([0.299, 0.587, 0.114], np.float32)     # ITU-R BT.601, as DALI's RGB -> GRAY


def is_colour(thumbs, xp=np):
    """(B,) bool: the RGB thumbnails (B, H, W, 3) whose channels are not all equal."""
    return ((thumbs[..., 0] != thumbs[..., 1]) | (thumbs[..., 1] != thumbs[..., 2])).any(axis=(1, 2))


def _luma(rgb, xp):
    """(..., 3) RGB -> (...) float32 BT.601 luma, as one flat (M, 3) @ (3,) product: numpy
    takes a slower loop for a stacked one (0.56 vs 0.15 ms for 512 thumbnails), and the
    two give the same float32 for every one of the 256**3 byte triples."""
    rgb = rgb.astype(xp.float32, copy=False)
    return (rgb.reshape(-1, 3) @ xp.asarray(_GRAY)).reshape(rgb.shape[:-1])


def to_gray(rgb, xp=np):
    """(..., 3) uint8 RGB -> (...) uint8 gray."""
    return xp.rint(_luma(rgb, xp)).astype(xp.uint8)


@functools.lru_cache(maxsize=8)
def _gauss(n: int, sigma: float) -> np.ndarray:
    x = np.arange(n)
    k = np.exp(-0.5 * ((x[:, None] - x[None, :]) / sigma) ** 2)
    k = (k / k.sum(axis=1, keepdims=True)).astype(np.float32)
    # Weights below float32's smallest normal number are zero for the sums they
    # enter, but as subnormals they made every product with them ~10x slower
    # on x86 CPUs (the band-pass took 3x as long).
    k[k < np.finfo(np.float32).tiny] = 0
    return k


@functools.lru_cache(maxsize=8)
def _zoom(n: int, z: float) -> np.ndarray:
    """(n, n) bilinear resampling matrix: output i samples the input at c + (i - c) / z."""
    c = (n - 1) / 2
    src = np.clip(c + (np.arange(n) - c) / z, 0, n - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (src - i0).astype(np.float32)
    m = np.zeros((n, n), np.float32)
    np.add.at(m, (np.arange(n), i0), 1 - f)
    np.add.at(m, (np.arange(n), i1), f)
    return m


def _sandwich(x, m, xp):
    """m @ x @ m.T for x (B, C, n, n) and m (r, n) -> (B, C, r, r), C-contiguous:
    one flat GEMM, then one broadcast matmul."""
    b, c, n, _ = x.shape
    r = m.shape[0]
    y = xp.matmul(x.reshape(b * c * n, n), xp.asarray(np.ascontiguousarray(m.T))).reshape(b, c, n, r)
    return xp.matmul(xp.asarray(m), y)


@functools.lru_cache(maxsize=8)
def _halved_gauss(n: int, sigma: float) -> np.ndarray:
    """(n/2, n) float32: the Gaussian of `_gauss` followed by the mean of each two
    neighbours, one matrix: the sandwich with it is the mean of each 2x2 block of the
    sandwich with `_gauss` (to float rounding)."""
    pairs = np.zeros((n // 2, n), np.float32)
    pairs[np.arange(n // 2), 2 * np.arange(n // 2)] = 0.5
    pairs[np.arange(n // 2), 2 * np.arange(n // 2) + 1] = 0.5
    k = pairs @ _gauss(n, sigma)
    k[k < np.finfo(np.float32).tiny] = 0          # no subnormal weights (`_gauss`)
    return k


def band_pass(thumbs, *, colour: bool, sigmas: tuple[float, float] | None = None, half: bool = False, xp=np):
    """(U, 32, 32) or (U, 32, 32, 3) uint8 -> (U, C, 32, 32) float32: standardised,
    then difference of Gaussians (``sigmas``, px).  C = 3 when ``colour``, else 1 (gray).
    ``half``: (U, C, 16, 16), the mean of each 2x2 block of that (to float
    rounding), the halving folded into the Gaussians' matrices: a quarter of the
    second product's work and half of the first's (the 16 px step's band-passes
    took 2.6x less time on 512 colour thumbnails)."""
    sigmas = SIGMAS if sigmas is None else sigmas
    gauss = _halved_gauss if half else _gauss
    t = thumbs.astype(xp.float32)
    if t.ndim == 4:
        t = xp.moveaxis(t, -1, 1) if colour else _luma(t, xp)[:, None]
    else:
        t = t[:, None]
    t = t - t.mean(axis=(1, 2, 3), keepdims=True)
    t = t / (t.std(axis=(1, 2, 3), keepdims=True) + xp.float32(1.0))
    return _sandwich(t, gauss(THUMB, sigmas[0]), xp) - _sandwich(t, gauss(THUMB, sigmas[1]), xp)


def _centre(a, m: int, xp):
    """Central window of each reference, zero mean, unit norm: (P, K)."""
    n = a.shape[-1]
    v = a[:, :, m:n - m, m:n - m].reshape(a.shape[0], -1)
    v = v - v.mean(axis=1, keepdims=True)
    return v / (xp.sqrt((v * v).sum(axis=1, keepdims=True)) + xp.float32(1e-6))


@functools.lru_cache(maxsize=8)
def _window_matrix(n: int, w: int) -> np.ndarray:
    """(n - w + 1, n) 0/1: row o sums pixels o .. o + w - 1."""
    o = np.arange(n - w + 1)[:, None]
    x = np.arange(n)[None, :]
    return ((x >= o) & (x < o + w)).astype(np.float32)


def _window_sums(b, w: int, xp):
    """Sums of b and of b*b over every (w x w) window, channels summed:
    two (P, n-w+1, n-w+1) arrays (two small GEMMs each, no cumsum)."""
    r = _window_matrix(b.shape[-1], w)
    sq = b * b
    if b.shape[1] > 1:
        b, sq = b.sum(axis=1, keepdims=True), sq.sum(axis=1, keepdims=True)
    return _sandwich(b, r, xp)[:, 0], _sandwich(sq, r, xp)[:, 0]


def _norms(s1, s2, k: int, xp):
    """sqrt of the centred sum of squares of each window, from `_window_sums`."""
    return xp.sqrt(xp.maximum(s2 - s1 * s1 / k, xp.float32(1e-6)))


def correlations(a, b, m: int, shifts: int, xp=np):
    """Pearson correlation of a's central window with b's window shifted by
    (dy, dx), |dy|, |dx| <= shifts <= m.  a, b: (P, C, n, n) float32.
    Returns (P, 2*shifts+1, 2*shifts+1) float32."""
    p, c, n, _ = a.shape
    w = n - 2 * m
    av = _centre(a, m, xp).reshape(p, c, w, w)
    s1, s2 = _window_sums(b, w, xp)
    norms = _norms(s1, s2, c * w * w, xp)
    o, r = m - shifts, 2 * shifts + 1
    return _surface(av, b, o, o, r, xp) / norms[:, o:o + r, o:o + r]


def _surface(av, b, oy: int, ox: int, r: int, xp):
    """(P, r, r): dot products of the centred references ``av`` (P, C, w, w) with
    the windows of ``b`` whose top-left corners are (oy + iy, ox + ix)."""
    w = av.shape[-1]
    out = xp.empty((av.shape[0], r, r), dtype=xp.float32)
    for iy in range(r):
        for ix in range(r):
            y0, x0 = oy + iy, ox + ix
            out[:, iy, ix] = xp.einsum("pcij,pcij->p", av, b[:, :, y0:y0 + w, x0:x0 + w])
    return out


def _peak_anywhere(surface, best, xp):
    """Sub-pixel peak value of (P, r, r) surfaces around each argmax ``best``
    (flat index): a parabola per axis through the argmax and its neighbours
    (where it has both).  -> (P,)"""
    p, r, _ = surface.shape
    by, bx = best // r, best % r
    rows = xp.arange(p)
    f0 = surface[rows, by, bx]
    gain = xp.zeros_like(f0)
    for axis_y in (True, False):
        c = by if axis_y else bx
        inner = (c > 0) & (c < r - 1)
        lo_i, hi_i = xp.clip(c - 1, 0, r - 1), xp.clip(c + 1, 0, r - 1)
        lo = surface[rows, lo_i, bx] if axis_y else surface[rows, by, lo_i]
        hi = surface[rows, hi_i, bx] if axis_y else surface[rows, by, hi_i]
        curv = lo - 2 * f0 + hi
        ok = inner & (curv < 0)
        gain += xp.where(ok, -((hi - lo) ** 2) / (8 * xp.where(ok, curv, -1)), 0)
    return xp.minimum(f0 + gain, 1.0)


def _threads() -> int:
    """Threads for the check's per-image work on the CPU: this process's cores, up to 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4))


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="gpupipe-check")


def _each(fn, starts, xp) -> None:
    """``fn(s)`` for every start ``s``: on the CPU in threads (numpy's kernels
    release the GIL; each call writes its own rows), at most a few at a time so
    that memory holds that many chunks' temporaries; on a GPU one after another
    (its kernels are queued on one stream anyway).  Run in threads, the check's
    per-image work (codes, band-passes) used the second core the dedup step had
    left idle."""
    starts = list(starts)
    if xp is not np or len(starts) < 2 or _threads() < 2:
        for s in starts:
            fn(s)
        return
    with one_blas_thread():
        list(_pool().map(fn, starts))


class _Cache:
    """Per-image arrays computed on first use and kept: ``get(idx)`` returns them
    for images ``idx``, computing (in chunks) the ones not held.  At most
    ``max_bytes`` are held (memory bounded at any N): past that, the images
    admitted longest ago make room (a ring), so a caller that asks for images in
    an order where pairs share their images soon after (the dedup stage orders its
    pairs so) computes each image about once.  A call asking for more images than
    fit computes the rest for that call only, each once.  The values never depend
    on what was held."""

    def __init__(self, n: int, compute, shapes, xp, chunk: int, *, max_bytes: int):
        self.xp, self.compute, self.shapes, self.chunk = xp, compute, shapes, chunk
        self.slot = xp.full(n, -1, dtype=xp.int64)      # per image: its row in the store, -1: not held
        self.row_bytes = 4 * sum(int(np.prod(s)) for s in shapes)
        self.max_rows = min(n, max(0, max_bytes // self.row_bytes))
        self.owner = xp.full(self.max_rows, -1, dtype=xp.int64)   # per store row: its image
        self.cursor = 0                                  # next row to (re)fill, cyclically
        # On the host the whole capacity at once: numpy's zeros are pages the OS maps on first
        # write, so rows never filled cost no memory, and growing by copies (6 s at 1M) is gone.
        rows = self.max_rows if xp is np else 0
        self.store = [xp.zeros((rows, *s), dtype=xp.float32) for s in shapes]

    def _grow(self, need: int) -> None:
        xp = self.xp
        cap = min(self.max_rows, max(need, 2 * int(self.store[0].shape[0]), 1024))
        grown = [xp.zeros((cap, *s), dtype=xp.float32) for s in self.shapes]
        for g, old in zip(grown, self.store):
            g[:old.shape[0]] = old
        self.store = grown

    def _admit(self, todo) -> None:
        """Compute and hold images ``todo`` (distinct, not held, at most max_rows of them)
        in the rows after the cursor, releasing the images those rows held."""
        xp = self.xp
        k_all = int(todo.shape[0])
        need = min(self.max_rows, self.cursor + k_all)      # rows wrap at max_rows
        if need > int(self.store[0].shape[0]):
            self._grow(need)
        rows = (self.cursor + xp.arange(k_all, dtype=xp.int64)) % self.max_rows
        old = self.owner[rows]
        self.slot[old[old >= 0]] = -1

        def fill(s: int) -> None:       # disjoint rows of the store for each chunk
            k, at = todo[s:s + self.chunk], rows[s:s + self.chunk]
            for dst, val in zip(self.store, self.compute(k)):
                dst[at] = val

        _each(fill, range(0, k_all, self.chunk), xp)
        self.slot[todo] = rows
        self.owner[rows] = todo
        self.cursor = (self.cursor + k_all) % self.max_rows

    def hold(self, idx) -> bool:
        """Compute images ``idx`` not held yet, in ascending order, and hold them, when
        they all fit; nothing is returned.  -> whether they fit."""
        todo = self.xp.unique(idx[self.slot[idx] < 0])
        if int(todo.shape[0]) > self.max_rows:
            return False
        if int(todo.shape[0]):
            self._admit(todo)
        return True

    def pairs(self, i, j):
        """The arrays of images ``i`` and ``j`` (M,) each, to be read block by block:
        -> ``take(c)`` giving (arrays of i[c], arrays of j[c]) for a slice or index
        array c.  Where all of them are held at once, each block is read from the
        store when asked (in the callers' threads, a block at a time: on a million
        mosaics one gather of a whole step's 32 px band-passes took 7.6 s of the
        check); else from one `get` of each."""
        both = self.xp.concatenate([i, j])
        for _ in range(3):            # rows refilled for some images may have held others of these
            if not self.hold(both):
                break
            at = self.slot[both]
            if bool((at >= 0).all()):
                m = int(i.shape[0])
                ai, aj = at[:m], at[m:]
                return lambda c: (tuple(x[ai[c]] for x in self.store), tuple(x[aj[c]] for x in self.store))
        gi, gj = self.get(i), self.get(j)
        return lambda c: (tuple(x[c] for x in gi), tuple(x[c] for x in gj))

    def get(self, idx):
        xp = self.xp
        todo = xp.unique(idx[self.slot[idx] < 0])
        if 0 < int(todo.shape[0]) <= self.max_rows:
            self._admit(todo)
        at = self.slot[idx]
        out = [x[xp.maximum(at, 0)] for x in self.store]
        miss = xp.nonzero(at < 0)[0]
        if int(miss.shape[0]):                       # not held: computed for this call, each image once
            ids, inv = xp.unique(idx[miss], return_inverse=True)
            inv = inv.ravel()
            vals = [xp.empty((int(ids.shape[0]), *s), dtype=xp.float32) for s in self.shapes]

            def fill(s: int) -> None:
                for dst, val in zip(vals, self.compute(ids[s:s + self.chunk])):
                    dst[s:s + self.chunk] = val

            _each(fill, range(0, int(ids.shape[0]), self.chunk), xp)
            for dst, val in zip(out, vals):
                dst[miss] = val[inv]
        return tuple(out)


@dataclass
class CheckStats:
    pairs: int = 0          # pairs asked about
    gated: int = 0          # passed the hash gate
    coarse: int = 0         # passed the 16x16 correlation
    accepted: int = 0       # called the same picture


GPU_CHUNK = 131072      # pairs per step on a GPU (~2 GiB of float32 band-passes per operand at 32 px RGB)


class Registered(NamedTuple):
    """Per pair, the photo route's view (`PairCheck.registered_similarity`)."""
    r: object            # (M,) float32 registered similarity, -1 where ruled out early
    z: object            # (M,) float32 its significance
    zoom: object         # (M,) float32 zoom of b at the peak
    dy: object           # (M,) int64 shift of b's window at the peak (32 px units)
    dx: object
    colour_fit: object   # (M,) float32 R^2 of one global colour map there, -1 where r < REG_MIN_R


class PairCheck:
    """``check(i, j) -> (M,) bool``: which pairs (thumbs[i[k]], thumbs[j[k]]) are the same picture.

    thumbs: (U, 32, 32) or (U, 32, 32, 3) uint8 on ``xp``'s device, the
    thumbnails of the images involved (computed once each, however many
    pairs are checked).  Colour is used when any of them is not gray.
    """

    def __init__(self, thumbs, *, min_similarity: float | None = None, xp=np, chunk: int | None = None,
                 registered: bool = False, min_registered: float | None = None):
        self.xp = xp
        # the photo route: a pair the band-pass rejects is still the same picture when its
        # registered similarity is significant at z >= min_registered (`gpupipe.hashing.photo`)
        self.registered = bool(registered)
        self.min_registered = None
        if self.registered:     # imported here: gpupipe.hashing.photo builds on this module's primitives
            from gpupipe.hashing import photo
            self._photo = photo
            self.min_registered = photo.DEFAULT_MIN_REGISTERED_Z if min_registered is None else float(min_registered)
        # Pairs per step.  The GPU is launch-bound at small steps: 130,000 pairs/s at
        # 16,384 and 519,000 at 131,072 on an H200, caches warm (benchmarks/gpu_check.py);
        # the CPU gains nothing from bigger steps and keeps its temporaries small.
        chunk = chunk or (16384 if xp is np else GPU_CHUNK)
        self.min_similarity = DEFAULT_MIN_SIMILARITY if min_similarity is None else float(min_similarity)
        self.stats = CheckStats()
        self.thumbs = thumbs
        u = int(thumbs.shape[0])
        self._chunk = chunk
        # per image, in chunks (bounded temporaries): is it colour, and its two 256-bit codes
        self.colour = False
        self._is_colour = xp.zeros(u, dtype=bool)       # per image: are its channels not all equal
        self._fine = xp.zeros((u, 4), xp.uint64)
        self._ring = xp.zeros((u, 4), xp.uint64)
        step = CPU_IMAGES if xp is np else chunk

        def codes(s: int) -> None:
            t = thumbs[s:s + step]
            if t.ndim == 4:
                self._is_colour[s:s + step] = is_colour(t, xp)
                t = to_gray(t, xp)
            self._fine[s:s + step] = dct_hash(t, size=FINE_SIZE, xp=xp)
            self._ring[s:s + step] = ring_code(t, xp=xp)

        _each(codes, range(0, u, step), xp)
        self.colour = bool(self._is_colour.any())
        # band-passes (16x16 coarse; 32x32 fine with its window norms) computed on first
        # use for the images that need them, each once: an image is in several pairs
        c = 3 if self.colour else 1
        r = 2 * MARGIN + 1
        self._coarse = _Cache(u, lambda k: (band_pass(self.thumbs[k], colour=self.colour, sigmas=COARSE_SIGMAS,
                                                      half=True, xp=xp),),
                              [(c, THUMB // 2, THUMB // 2)], xp, step, max_bytes=CACHE_BYTES)
        self._fine_cache = _Cache(u, self._fine_filter, [(c, THUMB, THUMB), (r, r)], xp, step,
                                  max_bytes=CACHE_BYTES)
        self._reg_cache = _Cache(u, lambda k: self._photo.reg_filters(self.thumbs[k], xp=xp),
                                 [(1, THUMB, THUMB), (1, THUMB // 2, THUMB // 2),
                                  ((2 * self._photo.REG_LAGS + 1) ** 2,), (1,)],
                                 xp, step, max_bytes=CACHE_BYTES) if self.registered else None

    def warm(self, i, j) -> None:
        """Before checking the pairs (i, j): compute the 16 px band-passes of their
        images in the thumbnails' order, where they all fit the cache at once.  The
        pairs' own order (each image's partners close together) reads the thumbnails
        from all over the file, a row at a time; this order reads runs of rows (on a
        million mosaics the 16 px band-passes took 11.3 s of the check in the pairs'
        order, 3.2 s in this one: benchmarks/bench_dedup_step.py)."""
        self._coarse.hold(self.xp.concatenate([i, j]))

    def _fine_filter(self, k):
        f = band_pass(self.thumbs[k], colour=self.colour, xp=self.xp)
        w = THUMB - 2 * MARGIN
        s1, s2 = _window_sums(f, w, self.xp)
        return f, _norms(s1, s2, f.shape[1] * w * w, self.xp)

    def unmoved(self, i, j):
        """(M,) bool: the pairs' 256-bit DCT hashes agree within GATE_FINE_BITS, i.e.
        their content is where it was (no shift, crop or zoom to undo)."""
        xp = self.xp
        return hamming(self._fine[i], self._fine[j], xp=xp).astype(xp.int32).sum(axis=1) <= GATE_FINE_BITS

    def gate_units(self, i, j):
        """(M,) int32: the pair's two hash distances relative to their gate limits, the
        smaller of the two, in units of 1 / GATE_UNITS (min(fine * GATE_RING_BITS, ring *
        GATE_FINE_BITS): exact integers, sortable as such); <= GATE_UNITS passes the gate,
        smaller is closer."""
        xp = self.xp
        out = xp.empty(int(i.shape[0]), dtype=xp.int32)
        step = 1 << 20                                       # bounded temporaries at any size

        def part(s: int) -> None:                            # in threads on the CPU (28M pairs: 5.3 s on one)
            a, b = i[s:s + step], j[s:s + step]
            fine = hamming(self._fine[a], self._fine[b], xp=xp).astype(xp.int32).sum(axis=1)
            ring = hamming(self._ring[a], self._ring[b], xp=xp).astype(xp.int32).sum(axis=1)
            out[s:s + step] = xp.minimum(fine * GATE_RING_BITS, ring * GATE_FINE_BITS)

        _each(part, range(0, int(i.shape[0]), step), xp)
        return out

    def gate(self, i, j):
        return self.gate_units(i, j) <= GATE_UNITS

    def _photo_pairs(self, i, j):
        """(M,) bool: the pairs the photo route applies to, both images in colour."""
        return self._is_colour[i] & self._is_colour[j]

    def registered_similarity(self, i, j, *, colour: bool = True):
        """`Registered` for each pair (``registered=True`` only): (M,) float32
        `gpupipe.hashing.photo.registered_similarity`, (M,) its significance
        `~gpupipe.hashing.photo.registered_z`, the zoom and shift at its peak, and
        (M,) `~gpupipe.hashing.photo.colour_fit` there (-1 where ruled out, and
        everywhere when ``colour`` is False: callers that read only r skip the fit)."""
        xp = self.xp
        m = int(i.shape[0])
        out = Registered(xp.full(m, -1.0, dtype=xp.float32), xp.zeros(m, dtype=xp.float32),
                         xp.ones(m, dtype=xp.float32), xp.zeros(m, dtype=xp.int64), xp.zeros(m, dtype=xp.int64),
                         xp.full(m, -1.0, dtype=xp.float32))
        for s in range(0, m, self._chunk):
            c = slice(s, s + self._chunk)
            fa, ca, aa, sa = self._reg_cache.get(i[c])
            fb, cb, ab, sb = self._reg_cache.get(j[c])
            out.r[c], out.zoom[c], out.dy[c], out.dx[c] = self._photo.registered_similarity(fa, ca, fb, cb, xp=xp)
            out.z[c] = self._photo.registered_z(out.r[c], aa, ab, sa, sb, xp)
            live = xp.nonzero(out.r[c] >= self._photo.REG_MIN_R)[0]
            if colour and int(live.shape[0]):     # only where the pair could pass
                ii, jj = i[c][live], j[c][live]
                out.colour_fit[s + live] = self._photo.colour_fit(
                    self.thumbs[ii], self.thumbs[jj], out.zoom[c][live], out.dy[c][live], out.dx[c][live], xp)
        return out

    def similarity(self, i, j, *, gate: bool = True, full: bool = False):
        """(M,) float32 similarity of each pair; -1 where the gate or the coarse
        step already ruled it out (``gate=False`` skips the hash gate).  Zooms
        other than 1 are only searched where zoom 1 lands within ZOOM_WITHIN
        below the threshold, unless ``full`` (for measuring ROCs).  With the
        photo route on, a pair's registered similarity counts where it is higher."""
        out = self._pixel_similarity(i, j, gate=gate, full=full)
        if self.registered:
            both = self.xp.nonzero(self._photo_pairs(i, j))[0]
            if int(both.shape[0]):
                out[both] = self.xp.maximum(out[both], self.registered_similarity(i[both], j[both], colour=False).r)
        return out

    def _pixel_similarity(self, i, j, *, gate: bool = True, full: bool = False):
        xp = self.xp
        m = int(i.shape[0])
        out = xp.full(m, -1.0, dtype=xp.float32)
        self.stats.pairs += m
        if m == 0:
            return out
        live = xp.nonzero(self.gate(i, j))[0] if gate else xp.arange(m)
        self.stats.gated += int(live.shape[0])
        for s in range(0, int(live.shape[0]), self._chunk):
            k = live[s:s + self._chunk]
            out[k] = self._score(i[k], j[k], full)
        return out

    def __call__(self, i, j, min_registered=None):
        """The decision: similarity >= min_similarity where the 256-bit DCT hashes
        agree (within GATE_FINE_BITS: the content did not move), and >=
        min_similarity + MOVED_MARGIN where they do not (a shift, crop or zoom
        was needed to align them, and look-alike samples align too).  With the
        photo route on, a colour pair that fails this is still the same picture
        when its registered similarity reaches photo.REG_MIN_R at significance z >=
        min_registered (`gpupipe.hashing.photo`); ``min_registered`` given ((M,) or a
        number) replaces that floor per pair."""
        xp = self.xp
        sim = self._pixel_similarity(i, j)
        unmoved = self.unmoved(i, j)
        ok = sim >= xp.where(unmoved, xp.float32(self.min_similarity), xp.float32(self.min_similarity + MOVED_MARGIN))
        if self.registered:   # colour pairs only: on gray digits it merged different writers' digits
            rest = xp.nonzero(~ok & self._photo_pairs(i, j))[0]
            if int(rest.shape[0]):
                reg = self.registered_similarity(i[rest], j[rest])
                floor = self.min_registered if min_registered is None else \
                    xp.broadcast_to(xp.asarray(min_registered, dtype=xp.float32), ok.shape)[rest]
                ok[rest] = ((reg.r >= self._photo.REG_MIN_R) & (reg.z >= floor)
                            & (reg.colour_fit >= self._photo.min_colour_fit(reg.z, xp)))
        self.stats.accepted += int(ok.sum())
        return ok

    def _score(self, i, j, full: bool = False):
        xp = self.xp
        p = int(i.shape[0])
        best = xp.empty(p, dtype=xp.int64)
        coarse = xp.empty(p, dtype=xp.float32)
        step = CPU_PAIRS if xp is np else max(p, 1)      # on a GPU one step: its kernels queue on one stream
        take = self._coarse.pairs(i, j)

        def coarse_part(s: int) -> None:          # each pair's own rows: the same numbers in any split
            c = slice(s, s + step)
            (ci,), (cj,) = take(c)
            surf = correlations(ci, cj, COARSE_SHIFT, COARSE_SHIFT, xp)
            best[c] = surf.reshape(int(surf.shape[0]), -1).argmax(axis=1)
            coarse[c] = _peak_anywhere(surf, best[c], xp)

        _each(coarse_part, range(0, p, step), xp)
        out = xp.full(p, -1.0, dtype=xp.float32)
        live = xp.nonzero(coarse >= COARSE_MIN)[0]
        self.stats.coarse += int(live.shape[0])
        if int(live.shape[0]) == 0:
            return out
        r = 2 * COARSE_SHIFT + 1
        dy = 2 * (best[live] // r - COARSE_SHIFT)
        dx = 2 * (best[live] % r - COARSE_SHIFT)
        # each image of the surviving pairs band-passed once at 32 px
        q = int(live.shape[0])
        take = self._fine_cache.pairs(i[live], j[live])
        score = xp.empty(q, dtype=xp.float32)

        def fine_part(s: int) -> None:            # zoom 1 for every pair
            c = slice(s, s + step)
            (a, _), (b, norms) = take(c)
            score[c] = _peaks_at(_centre(a, MARGIN, xp), b, dy[c], dx[c], 1, xp, norms=norms)

        _each(fine_part, range(0, q, step), xp)
        # the other zooms (crops) only where zoom 1 is close
        top = self.min_similarity + MOVED_MARGIN
        near = xp.arange(q) if full else xp.nonzero((score < top) & (score >= top - ZOOM_WITHIN))[0]
        if int(near.shape[0]):
            (a, _), (b, _) = take(near)
            av = _centre(a, MARGIN, xp)
            for z in ZOOMS:
                if z != 1.0:
                    bz = _sandwich(b, _zoom(THUMB, z), xp)
                    score[near] = xp.maximum(score[near], _peaks_at(av, bz, dy[near], dx[near], 2, xp))
        out[live] = score
        return out


def _to_host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _peaks_at(av, b, dy, dx, radius: int, xp, norms=None, *, shifts: bool = False):
    """Sub-pixel peak of the correlations of references ``av`` (from `_centre`) with
    ``b`` (P, C, 32, 32) at shifts within ``radius`` of (dy, dx) (32 px units);
    pairs are grouped by their shift so every window is a plain slice.  -> (P,), and
    with ``shifts`` also the integer shift (dy, dx) of each peak, (P,) each."""
    p = int(av.shape[0])
    n, m = THUMB, MARGIN
    w = n - 2 * m
    av = av.reshape(p, b.shape[1], w, w)
    if norms is None:
        s1, s2 = _window_sums(b, w, xp)
        norms = _norms(s1, s2, b.shape[1] * w * w, xp)
    out = xp.full(p, -1.0, dtype=xp.float32)
    at_y, at_x = xp.zeros(p, dtype=xp.int64), xp.zeros(p, dtype=xp.int64)
    span = 4 * COARSE_SHIFT + 1
    code = (dy + 2 * COARSE_SHIFT) * span + (dx + 2 * COARSE_SHIFT)
    r = 2 * radius + 1
    for c in np.unique(_to_host(code)).tolist():
        g = xp.nonzero(code == c)[0]
        # top-left of the search, clamped so windows stay inside the thumbnail
        oy = min(max(m + c // span - 2 * COARSE_SHIFT - radius, 0), 2 * m + 1 - r)
        ox = min(max(m + c % span - 2 * COARSE_SHIFT - radius, 0), 2 * m + 1 - r)
        surf = _surface(av[g], b[g], oy, ox, r, xp) / norms[g, oy:oy + r, ox:ox + r]
        best = surf.reshape(int(g.shape[0]), -1).argmax(axis=1)
        out[g] = _peak_anywhere(surf, best, xp)
        at_y[g], at_x[g] = oy + best // r - m, ox + best % r - m
    return (out, at_y, at_x) if shifts else out


def pair_check(thumbs, *, mode: VerifyMode = "pixels", min_similarity: float | None = None,
               min_registered: float | None = None, xp=np):
    """The check the dedup stage applies to hash candidates: a `PairCheck`
    (``mode="photo"``: with the registered route for real photographs), or
    (``mode="none"``) one that accepts every pair."""
    if mode == "none":
        return _AcceptAll(xp)
    if mode in ("pixels", "photo"):
        return PairCheck(thumbs, min_similarity=min_similarity, xp=xp, registered=mode == "photo",
                         min_registered=min_registered)
    raise ValueError(f"verify mode must be 'pixels', 'photo' or 'none', not {mode!r}")


class _AcceptAll:
    def __init__(self, xp):
        self.xp = xp
        self.stats = CheckStats()

    def __call__(self, i, j):
        self.stats.pairs += int(i.shape[0])
        self.stats.accepted += int(i.shape[0])
        return self.xp.ones(int(i.shape[0]), dtype=bool)
