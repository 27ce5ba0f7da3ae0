"""Nearest-neighbour candidates for the photo route: a bounded number per image.

The two 64-bit keys propose the pairs within a Hamming radius.  Real copies of
one camera shot (a crop with rescaling, a colour shift, a re-encode) often
land just outside it: on ciFAIR's same-shot pairs of CIFAR-10 the keys within
8 bits (zoomed queries included) propose 0.86-0.88 of them, and a wider radius
multiplies the candidates of every image (benchmarks/RESULTS.md §18).  A
radius is the wrong shape for this: what a copy has in common with its
original is that, among all the images, it is one of the *closest*, not that
it is within a fixed distance.  So ``--verify photo`` also proposes, for each
image and each of its zoomed views, its ``KNN_NEIGHBOURS`` nearest images in
a continuous descriptor:

    descriptor(image) = the 63 AC coefficients of the 8x8 lowest frequencies of
                        the 2-D DCT of its 32x32 gray thumbnail, L2-normalised

(pHash before binarisation: the normalisation absorbs a contrast change, the
missing DC term a brightness offset, and the magnitudes keep the ranking
information that pHash's median threshold throws away).  Neighbours by cosine
similarity.  The candidates per image are bounded (the count does not grow
with N) whatever the radius of the pair.

The search is faiss's HNSW graph (`faiss.IndexHNSWFlat`, inner product): a
well-kept library made for this job; its cost grows as N log N.  The graph is
built on one thread so that the same input gives the same graph and the same
candidates (the search itself is deterministic and uses every thread).  It
runs on the host in both modes: descriptors are 252 bytes per image and the
search is a few seconds per 100k images, small beside the check.

A pair that only this search proposed is a harder case than one within the
Hamming radius: among the most similar images of a class (horses in profile,
cars at three-quarter view), the nearest one is often a different shot that the
photo route's registered correlation still aligns at z 6-8.  On a seeded
sample of 40 such pairs grouped at the route's floor (z >= 6), 13 were clearly
different pictures by eye, at z 6.3-8.5; so those pairs must reach z >=
MIN_Z_NEAREST_ONLY.  8.5 keeps every same-shot pair of the *choose* half of
ciFAIR's development pairs that only this search proposes (z 11.8-14.9,
benchmarks/bench_cifair_roc.py); at 8.5, a new sample of 40 such pairs held 1
clearly different and 2 uncertain (benchmarks/bench_nearest_only_sheet.py,
benchmarks/RESULTS.md §21).

Images whose descriptor is ~0 (flat, no structure) take no part: their copies
are found by the pixel hash and the Hamming keys.
"""

from __future__ import annotations

import numpy as np

from gpupipe.hashing.phash import dct_matrix

KNN_NEIGHBOURS = 1          # nearest images proposed per image and per view (zoom 1 and each zoomed query)
HNSW_M = 16                 # faiss HNSW: links per node
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 32
MIN_Z_NEAREST_ONLY = 8.5    # the photo route's z floor for pairs only this search proposed (see below)
_DIM = 63
_FLAT = 1.0                 # AC norm (gray levels, orthonormal DCT) at or below this: a flat image


def dct_descriptor(gray32, xp=np):
    """(B, 32, 32) gray (uint8 or float) on ``xp``'s device -> ((B, 63) float32 unit rows,
    (B,) bool: the image has structure).  Rows of flat images are 0."""
    x = xp.asarray(gray32).reshape(-1, 32, 32).astype(xp.float32)
    low = xp.asarray(dct_matrix()[:8].astype(np.float32))               # (8, 32)
    coef = xp.matmul(xp.matmul(low[None], x), low.T[None])              # (B, 8, 8)
    ac = coef.reshape(-1, 64)[:, 1:]
    norm = xp.sqrt((ac * ac).sum(axis=1))
    ok = norm > _FLAT
    return (ac / xp.maximum(norm, xp.float32(1e-6))[:, None] * ok[:, None]).astype(xp.float32), ok


class NearestIndex:
    """The images' descriptors in a faiss HNSW index; `search` gives each query's
    ``k`` nearest indexed images other than itself, with their similarities.

    base: (m, 63) float32 host array (`dct_descriptor`), ok: (m,) bool (rows that take part).
    """

    def __init__(self, base: np.ndarray, ok: np.ndarray):
        import faiss

        self.rows = np.flatnonzero(ok).astype(np.int64)                 # index position -> image row
        self.index = faiss.IndexHNSWFlat(_DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)          # one thread: the graph (and so the candidates) is reproducible
        try:
            if len(self.rows):
                self.index.add(np.ascontiguousarray(base[self.rows], dtype=np.float32))
        finally:
            faiss.omp_set_num_threads(threads)
        self.index.hnsw.efSearch = HNSW_EF_SEARCH

    def search(self, queries: np.ndarray, self_rows: np.ndarray | None, k: int):
        """For (Q, 63) ``queries``: ((Q, k) image rows, -1 where fewer, and (Q, k) float32
        similarities, -inf there) of the k nearest indexed images, skipping row
        ``self_rows[q]`` (the query's own image; None: queries are not indexed images)."""
        q = int(queries.shape[0])
        rows = np.full((q, k), -1, np.int64)
        sims = np.full((q, k), -np.inf, np.float32)
        if q == 0 or len(self.rows) == 0 or k <= 0:
            return rows, sims
        want = min(k + (self_rows is not None), len(self.rows))
        d, i = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), want)
        r = np.where(i >= 0, self.rows[np.maximum(i, 0)], -1)
        bad = r < 0
        if self_rows is not None:
            bad |= r == np.asarray(self_rows, np.int64)[:, None]
        # the query's own image and empty slots last, the rest nearest first (stable)
        order = np.argsort(bad, axis=1, kind="stable")
        r, d, bad = (np.take_along_axis(a, order, 1) for a in (r, d, bad))
        r, d = np.where(bad, -1, r), np.where(bad, -np.inf, d).astype(np.float32)
        kk = min(k, r.shape[1])
        rows[:, :kk], sims[:, :kk] = r[:, :kk], d[:, :kk]
        return rows, sims
