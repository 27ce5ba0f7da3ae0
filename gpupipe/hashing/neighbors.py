"""Near-duplicate candidate search over 64-bit perceptual hashes, one kernel over numpy | CuPy.

Sorted-neighbourhood search over random bit permutations; no all-pairs step:

1. Exact duplicates.  A stable sort groups identical hashes into runs; each member of a run
   links to the run's first (lowest-index) member: a star, O(run) edges, never O(run^2).
   Later steps see the U distinct values only, so a run of 100k identical (near-blank)
   hashes is one value and cannot push true neighbours out of a window.
2. Near pairs.  A table is one order of the distinct values; each value is compared with the
   next ``window`` values in it (k = 1..W: sorted[:-k] vs sorted[k:], chunked).  Orders come
   from seeded random bit permutations: permute, sort, compare, then 15 times: rotate every
   value left by 4 bits, re-sort, compare.  Hashes agreeing on the first q ~ log2(U / W) - 0.5
   bits of an order fall within the window, so a table finds a pair at distance d with
   probability ~C(64 - q, d) / C(64, d).  A rotated sorted array is 16 sorted runs, which
   numpy's stable sort merges ~2.5x faster than a fresh sort.  Permutations and rotations keep
   Hamming distances, so values are compared as they are.
3. Candidates compared = U * n_tables * window: linear in N, whatever the clustering.  Edge
   (p, p+k) is dropped when edges p..p+k along the order all matched (they connect it
   already), so a dense cluster yields ~1 edge per member per table.

Contract: the output is a set of edges, each truly within ``max_distance``, whose connected
components are the near-duplicate groups found: NOT every close pair (identical hashes form a
star; a near pair between two duplicate runs is reported once, between their first members).
Recall is exact for d = 0, probabilistic for 0 < d <= max_distance (see ``default_n_tables``);
inputs of at most ~2900 distinct hashes are compared exhaustively (exact) by default.
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import numpy as np

from gpupipe.xputil import top_k_pairs, unique

_STEP = 4                         # rotation between tables of one permutation (16 tables each)
_PER_PERM = 64 // _STEP
_DEFAULT_WINDOW = 16              # measured best recall per CPU second at 1M..10M hashes
_TARGET_RECALL = 0.95             # default: probability to find a pair at d == max_distance
_MAX_TABLES = 256
_EXHAUSTIVE_PAIRS = 1 << 22       # up to ~2900 distinct hashes every pair is compared
_M1, _M2, _M4, _H01 = (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F,
                       0x0101010101010101)


def _array_module(a: Any, xp: types.ModuleType | None) -> types.ModuleType:
    if xp is not None:
        return xp
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy
        return cupy
    return np


def _popcount(x, xp: types.ModuleType, out=None):
    """Set bits of each uint64 element -> uint8, same shape.  SWAR where xp lacks bitwise_count."""
    if hasattr(xp, "bitwise_count"):
        return xp.bitwise_count(x) if out is None else xp.bitwise_count(x, out=out)
    u = xp.uint64
    x = x - ((x >> u(1)) & u(_M1))
    x = (x & u(_M2)) + ((x >> u(2)) & u(_M2))
    c = ((((x + (x >> u(4))) & u(_M4)) * u(_H01)) >> u(56)).astype(xp.uint8)
    if out is not None:
        out[...] = c
    return c if out is None else out


def hamming(a, b, xp: types.ModuleType | None = None):
    """Elementwise Hamming distance of two uint64 arrays (broadcastable) -> uint8 in 0..64."""
    xp = _array_module(a, xp)
    x = xp.bitwise_xor(xp.asarray(a, dtype=xp.uint64), xp.asarray(b, dtype=xp.uint64))
    return _popcount(x, xp)


def _p_any_clean(q: int, d: int, m: int) -> float:
    """P(random d differing bits miss one of m bit windows [k*STEP, k*STEP + q) mod 64 at least).
    Exact, by inclusion-exclusion over the 2**m window subsets (m <= 16)."""
    if m == 0:
        return 0.0
    unions = np.zeros(1, dtype=np.uint64)
    signs = np.ones(1)
    for k in range(m):
        bits = (np.arange(k * _STEP, k * _STEP + q) % 64).astype(np.uint64)
        w = np.bitwise_or.reduce(np.uint64(1) << bits, initial=np.uint64(0))
        unions, signs = np.concatenate([unions, unions | w]), np.concatenate([signs, -signs])
    clean = np.array([math.comb(64 - c, d) for c in range(65)], dtype=np.float64) / math.comb(64, d)
    return float(-(signs[1:] * clean[np.bitwise_count(unions[1:])]).sum())


def default_n_tables(n_unique: int, max_distance: int, window: int,
                     target: float = _TARGET_RECALL) -> int:
    """Fewest tables finding a pair at exactly ``max_distance`` with probability >= ``target``.

    A table needs the pair to agree on its first q = log2(n_unique / window) - 0.5 bits (the
    -0.5 fitted to measured hit rates at 1M and 10M hashes, W = 1..128, within ~5%); the 16
    tables of one permutation look at windows shifted by 4 bits, which overlap, so their joint
    hit rate is computed exactly (``_p_any_clean``, interpolated in q).  Pairs closer than the
    threshold are found with higher probability.  Capped at 256.
    """
    if max_distance <= 0 or n_unique < 2:
        return 0
    q = min(64.0 - max_distance, max(1.0, math.log2(max(n_unique / window, 1.0)) - 0.5))
    lo, frac = int(q), q - int(q)

    miss = [(1 - frac) * math.log(max(1e-300, 1.0 - _p_any_clean(lo, max_distance, m)))
            + frac * math.log(max(1e-300, 1.0 - _p_any_clean(lo + 1, max_distance, m)))
            for m in range(_PER_PERM + 1)]          # log P(missed by m tables of one permutation)
    goal = math.log(1.0 - target)
    for t in range(1, _MAX_TABLES + 1):
        if (t // _PER_PERM) * miss[_PER_PERM] + miss[t % _PER_PERM] <= goal:
            return t
    return _MAX_TABLES


def _bit_luts(perm: np.ndarray) -> np.ndarray:
    """(4, 65536) uint64 tables: OR of lut[c][16-bit digit c] moves bit i to bit perm[i]."""
    v = np.arange(1 << 16, dtype=np.uint64)
    luts = np.zeros((4, 1 << 16), dtype=np.uint64)
    for i in range(64):
        luts[i // 16] |= ((v >> np.uint64(i % 16)) & np.uint64(1)) << np.uint64(perm[i])
    return luts


def _permute(x, luts, xp: types.ModuleType, out=None):
    """Apply a bit permutation, (M,) uint64 -> (M,) uint64, via four 16-bit lookup tables."""
    if sys.byteorder == "little" and x.flags.c_contiguous:
        digits = x.view(xp.uint16).reshape(-1, 4)          # digit c = bits 16c..16c+15
        parts = [digits[:, c] for c in range(4)]
    else:
        parts = [((x >> xp.uint64(16 * c)) & xp.uint64(0xFFFF)).astype(xp.intp) for c in range(4)]
    out = xp.take(luts[0], parts[0], out=out)
    for c in range(1, 4):
        out |= luts[c][parts[c]]
    return out


def _rotl(x, r: int, xp: types.ModuleType):
    """Each uint64 rotated left by r bits (0 <= r < 64), (M,) -> new (M,)."""
    return (x << xp.uint64(r)) | (x >> xp.uint64(64 - r)) if r else x.copy()


def _close_positions(s, max_distance: int, window: int, chunk: int, xp: types.ModuleType):
    """Ranks p of sorted (U,) uint64 ``s`` with some s[p + k], 1 <= k <= window, within range.

    Keeps per element the minimum distance over its window, chunk by chunk in reused buffers:
    xor, popcount, minimum per k, no allocation.  -> (P,) int64 ascending.
    """
    u = s.shape[0]
    xbuf = xp.empty(chunk, dtype=xp.uint64)
    cbuf = xp.empty(chunk, dtype=xp.uint8)
    mn = xp.empty(chunk, dtype=xp.uint8)
    found = []
    for a in range(0, u - 1, chunk):
        n0 = min(chunk, u - 1 - a)
        mn[:n0] = 255
        for k in range(1, min(window, u - 1 - a) + 1):
            n = min(n0, u - a - k)
            xp.bitwise_xor(s[a:a + n], s[a + k:a + k + n], out=xbuf[:n])
            xp.minimum(mn[:n], _popcount(xbuf[:n], xp, out=cbuf[:n]), out=mn[:n])
        found.append(xp.flatnonzero(mn[:n0] <= max_distance) + a)
    return xp.concatenate(found).astype(xp.int64) if found else xp.empty(0, dtype=xp.int64)


def _window_edges(s, p, max_distance: int, window: int, xp: types.ModuleType, direct: bool = False):
    """Edges (p, p + k) within range, 1 <= k <= window, for ranks (P,) ``p`` of sorted ``s``.

    Edge (p, p+k), k >= 2, is dropped when (p, p+1) .. (p+k-1, p+k) all match: those already
    connect it (unless ``direct``: then every matching pair is kept, for callers that
    check pairs one by one).  -> left (E,), right (E,) int64 ranks in ``s``.
    """
    u = s.shape[0]
    idx = p[:, None] + xp.arange(1, window + 1, dtype=xp.int64)[None, :]    # (P, W)
    valid = idx < u
    idx = xp.minimum(idx, u - 1)
    match = (_popcount(s[p][:, None] ^ s[idx], xp) <= max_distance) & valid
    if not direct:
        adjacent = (_popcount(s[idx - 1] ^ s[idx], xp) <= max_distance) & valid
        chained = xp.cumsum(~adjacent, axis=1, dtype=xp.int32) == 0         # p..p+k all linked
        chained[:, 0] = False
        match &= ~chained
    rows, cols = xp.nonzero(match)
    return p[rows], idx[rows, cols]


def near_pairs(hashes, *, max_distance: int, xp: types.ModuleType | None = None,
               n_tables: int | None = None, window: int | None = None, seed: int = 0,
               direct: bool = False, queries=None, max_per_hash: int | None = None):
    """Edges linking hashes within ``max_distance`` bits; their connected components are the groups.

    hashes: (N,) uint64 (int64 is reinterpreted bit for bit) on ``xp``'s device, N < 2**31.
    max_distance: 0..64, inclusive Hamming threshold (smaller = stricter).
    n_tables: orders searched (None -> ``default_n_tables``: a pair at exactly ``max_distance``
        is found with probability ~0.95, closer pairs more often; inputs of <= ~2900 distinct
        hashes: one exhaustive table).  window: neighbours compared per order (None -> 16).
    seed: permutations come from ``numpy.random.default_rng(seed)``: same seed, same output.

    Returns (i, j, dist): (M,) int64, (M,) int64, (M,) uint8 on ``xp``'s device: i < j, each
    pair once, sorted by (i, j), dist == hamming(hashes[i], hashes[j]) <= max_distance.
    Identical hashes all link to the lowest index holding that value (a star); near pairs are
    found between distinct values and reported between their lowest indices.  The edges are a
    sparse subset of all close pairs whose connected components equal the near-duplicate groups
    found.  Work: N * n_tables * window compares plus one sort per table, linear in N.

    direct: return the close pairs themselves, for a caller that verifies each pair on its
    own (a chain A~B~C must not stand in for A~C): no window edge is dropped as chained, and
    pairs are expanded to the members of runs of equal hashes -- every pair within a run and
    between two close runs when their sizes multiply to at most 64, else the pairs through each
    run's first member and between consecutive members.  Still bounded: a run of k equal
    hashes gives O(k) pairs beyond that size.
    """
    xp = _array_module(hashes, xp)
    h = xp.asarray(hashes)
    if h.ndim != 1:
        raise ValueError(f"hashes must be 1-D (N,), got shape {h.shape}")
    if h.dtype == xp.int64:
        h = h.view(xp.uint64)
    if h.dtype != xp.uint64:
        raise TypeError(f"hashes must be uint64, got {h.dtype}")
    if not isinstance(max_distance, (int, np.integer)) or not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be an int in 0..64, got {max_distance!r}")
    if (window is not None and window < 1) or (n_tables is not None and n_tables < 0):
        raise ValueError("window must be >= 1 and n_tables >= 0")
    n, max_distance = int(h.shape[0]), int(max_distance)
    if n >= 2 ** 31:
        raise ValueError("at most 2**31 - 1 hashes per call")

    # 1. exact duplicates: stable sort, runs of equal values, star to each run's first member
    order = xp.argsort(h, kind="stable")
    sh = h[order]
    new = xp.ones(n, dtype=bool)
    new[1:] = sh[1:] != sh[:-1]
    starts = xp.flatnonzero(new)
    uniq, first = sh[starts], order[starts]                 # (U,) ascending, (U,) lowest index
    dup = xp.flatnonzero(~new)                              # (N - U,) ranks of repeats
    star_i = first[xp.searchsorted(starts, dup, side="right") - 1]
    star_j = order[dup]
    sorted_ids = order if direct or queries is not None else None   # rows of each run, for expansion
    del order, sh, new

    # 2. near pairs among the U distinct values, one order (table) at a time
    u = int(uniq.shape[0])
    if n_tables is None and window is None and u * (u - 1) // 2 <= _EXHAUSTIVE_PAIRS:
        n_tables, window = 1, max(u - 1, 1)                 # small input: every pair, exact
    window = _DEFAULT_WINDOW if window is None else int(window)
    if n_tables is None:
        n_tables = default_n_tables(u, max_distance, window)
    rng = np.random.default_rng(seed)
    chunk = min(1 << 16 if xp is np else 1 << 24, max(u, 1))
    rows = max(1, (1 << 20) // window)                      # (rows, window) blocks in pass 2
    codes: list = []
    qcodes: list = []
    q = None if queries is None else xp.asarray(queries).view(xp.uint64) if xp.asarray(queries).dtype == xp.int64 \
        else xp.asarray(queries, dtype=xp.uint64)
    held, limit = 0, max(1 << 23, 8 * u)        # codes held before a prune (8 B each); pruning earlier cannot change the result
    todo = n_tables if u > 1 and max_distance > 0 else 0
    s = xp.empty(u if todo else 0, dtype=xp.uint64)
    # Each sorted value's place in uniq, carried through every table's sort: an edge's ends
    # are read off it (searching uniq for 2E permuted-back values per table took 5 of the
    # pHash search's 18 s on a million mosaics; an argsort in place of each sort costs ~1 ms).
    sid = xp.arange(u if todo else 0, dtype=xp.int64)
    if q is not None and (todo == 0) and u:                  # exact lookups only
        pos = xp.minimum(xp.searchsorted(uniq, q), u - 1)
        hit = xp.nonzero(_popcount(uniq[pos] ^ q, xp) <= max_distance)[0]
        qcodes.append(hit.astype(xp.int64) * u + pos[hit])
    for t in range(todo):
        rot = (t % _PER_PERM) * _STEP                       # total left rotation of this order
        if rot == 0:
            perm = rng.permutation(64)
            _permute(uniq, xp.asarray(_bit_luts(perm)), xp, out=s)
            o = xp.argsort(s)
            sid = o
        else:                                                # 16 sorted runs: a merge on CPU
            carry = s >> xp.uint64(64 - _STEP)
            s <<= xp.uint64(_STEP)
            s |= carry
            del carry
            # timsort merges the 16 runs; CuPy < 14 has no kind= (its sort is radix)
            o = xp.argsort(s, kind="stable") if xp is np else xp.argsort(s)
            sid = sid[o]
        s = s[o]
        del o
        if q is not None:
            if rot == 0:
                qbase = _permute(q, xp.asarray(_bit_luts(perm)), xp)
            qcodes.append(_query_window(s, sid, _rotl(qbase, rot, xp) if rot else qbase, u,
                                        max_distance, window, xp))
        p = _close_positions(s, max_distance, window, chunk, xp)
        for c in range(0, int(p.shape[0]), rows):
            left, right = _window_edges(s, p[c:c + rows], max_distance, window, xp, direct)
            a, b = sid[left], sid[right]                    # each end's place in uniq
            codes.append(xp.minimum(a, b) * u + xp.maximum(a, b))
            held += int(a.shape[0])
        if held > limit:                                    # bound memory in clustered data
            codes = [unique(xp.concatenate(codes), xp)]
            # Pruning keeps at most ~max_per_hash * u pairs and costs a sort of both ends of
            # every pair, so only distinct lists past half that bound are pruned here (the final
            # prune gives the same result): on a million mosaics, 6 prunes for both keys, not 14.
            if direct and max_per_hash and int(codes[0].shape[0]) > max_per_hash * u // 2:
                codes = [_prune(codes[0], uniq, u, max_per_hash, xp)]
            held = int(codes[0].shape[0])
            limit = max(limit, 2 * held)
    del s
    near = unique(xp.concatenate(codes), xp) if codes else xp.empty(0, dtype=xp.int64)
    if direct and max_per_hash:
        near = _prune(near, uniq, u, max_per_hash, xp)
    if sorted_ids is not None:
        lens = xp.diff(xp.concatenate([starts, xp.asarray([n], dtype=starts.dtype)])).astype(xp.int64)
    if direct:
        star_i, star_j = _run_pairs(starts.astype(xp.int64), lens, sorted_ids, xp)
        na, nb = _cross_pairs(near // max(u, 1), near % max(u, 1), starts.astype(xp.int64), lens, sorted_ids, xp)
    else:
        na, nb = first[near // max(u, 1)], first[near % max(u, 1)]

    # 3. both edge kinds, i < j, sorted by (i, j), each pair once
    i = xp.concatenate([star_i, xp.minimum(na, nb)]).astype(xp.int64)
    j = xp.concatenate([star_j, xp.maximum(na, nb)]).astype(xp.int64)
    key = unique(i * n + j, xp)
    i, j = key // max(n, 1), key % max(n, 1)
    if q is None:
        return i, j, hamming(h[i], h[j], xp)
    qkey = unique(xp.concatenate(qcodes), xp) if qcodes else xp.empty(0, dtype=xp.int64)
    qa, ub = qkey // max(u, 1), qkey % max(u, 1)
    take = xp.where(lens[ub] <= _FULL, lens[ub], 1)          # whole run, or its first member
    owner, k = _expand(take, xp)
    qi = qa[owner]
    hj = sorted_ids[starts[ub[owner]].astype(xp.int64) + k]
    return i, j, hamming(h[i], h[j], xp), qi, hj, hamming(q[qi], h[hj], xp)


def _prune(codes, uniq, u: int, k: int, xp):
    """Pair codes a * u + b kept among the k closest (Hamming) partners of a or of b."""
    a, b = codes // u, codes % u
    d = _popcount(uniq[a] ^ uniq[b], xp)        # integers 0..64: top_k_pairs' packed-key sort
    return codes[top_k_pairs(a, b, d, k, xp)]


def _query_window(s, sid, qs, u: int, max_distance: int, window: int, xp):
    """Codes query * U + uniq_index of the sorted values ``s`` (their places in uniq:
    ``sid``) within range of each permuted query ``qs``, among the ``window`` values on
    either side of its sorted position."""
    pos = xp.searchsorted(s, qs)
    off = xp.arange(-window, window, dtype=xp.int64)[None, :]
    idx = pos[:, None].astype(xp.int64) + off
    valid = (idx >= 0) & (idx < u)
    idx = xp.clip(idx, 0, u - 1)
    match = (_popcount(s[idx] ^ qs[:, None], xp) <= max_distance) & valid
    rows, cols = xp.nonzero(match)
    return rows.astype(xp.int64) * u + sid[idx[rows, cols]]


_FULL = 64      # runs (and pairs of runs) up to this many pairs are expanded in full


def _expand(counts, xp):
    """For counts (E,) >= 0: (owner (T,), rank (T,)) listing rank 0..counts[e]-1 of each e."""
    total = int(counts.sum())
    ends = xp.cumsum(counts)
    # searchsorted, not repeat(arange, counts): CuPy < 14.1 takes no array of repeats.
    owner = xp.searchsorted(ends, xp.arange(total, dtype=ends.dtype), side="right").astype(xp.int64)
    return owner, xp.arange(total, dtype=xp.int64) - (ends - counts)[owner]


def _run_pairs(starts, lens, sorted_ids, xp):
    """Pairs among the members of each run of equal hashes (members in ``sorted_ids``
    from ``starts`` for ``lens``): all pairs where that is at most _FULL pairs, else
    (first, each) and (each, next)."""
    big = lens * (lens - 1) // 2 > _FULL
    small = xp.nonzero((lens > 1) & ~big)[0]
    # all pairs (p, q), p < q, in small runs: expand (run, p) then (run, p, q)
    run, p = _expand(lens[small] - 1, xp)
    run = small[run]
    owner, k = _expand(lens[run] - 1 - p, xp)
    a, b = p[owner], p[owner] + 1 + k
    i_all = sorted_ids[starts[run[owner]] + a]
    j_all = sorted_ids[starts[run[owner]] + b]
    large = xp.nonzero(big)[0]
    run, q = _expand(lens[large] - 1, xp)
    base = starts[large[run]]
    i_star, j_star = sorted_ids[base], sorted_ids[base + q + 1]
    i_next, j_next = sorted_ids[base + q], sorted_ids[base + q + 1]
    return (xp.concatenate([i_all, i_star, i_next]), xp.concatenate([j_all, j_star, j_next]))


def _cross_pairs(a, b, starts, lens, sorted_ids, xp):
    """Member pairs for close runs (a[e], b[e]): all of them where |a| * |b| <= _FULL,
    else (first of a, each of b) and (each of a, first of b)."""
    la, lb = lens[a], lens[b]
    full = la * lb <= _FULL
    f = xp.nonzero(full)[0]
    owner, k = _expand(la[f] * lb[f], xp)
    e = f[owner]
    i1 = sorted_ids[starts[a[e]] + k // lb[e]]
    j1 = sorted_ids[starts[b[e]] + k % lb[e]]
    g = xp.nonzero(~full)[0]
    owner, k = _expand(lb[g], xp)
    i2, j2 = sorted_ids[starts[a[g[owner]]]], sorted_ids[starts[b[g[owner]]] + k]
    owner, k = _expand(la[g], xp)
    i3, j3 = sorted_ids[starts[a[g[owner]]] + k], sorted_ids[starts[b[g[owner]]]]
    return xp.concatenate([i1, i2, i3]), xp.concatenate([j1, j2, j3])
