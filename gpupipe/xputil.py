"""Small array helpers written once over numpy | CuPy.

`unique` is sort-based on purpose: numpy 2.4's ``np.unique`` takes a hash-table
path that measured 10-20x slower than one stable argsort here (1.1 s for 3 calls
on 70,000-730,000 int64 values; 13 s on 10M), and CuPy's is sort-based anyway.
Where only the values are wanted, a plain sort (numpy's SIMD quicksort) is 15x
faster again than the stable argsort (28M int64: 0.45 s against 6.7 s).

`one_blas_thread` is the one place the process's BLAS is put on one thread
(the hash stage's partitions, the check's threads), counted across threads.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np


def run_starts(sorted_keys, xp=np):
    """(n,) bool: True where a run of equal values starts in sorted 1-D keys."""
    n = int(sorted_keys.shape[0])
    first = xp.ones(n, dtype=bool)
    if n:
        first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return first


def min_per_group(values, groups, n_groups: int, xp=np, *, fill: int = 0):
    """(n_groups,) the smallest of ``values`` in each group; ``fill`` where a
    group has no member.  values, groups: (n,) int64, groups in [0, n_groups)."""
    out = xp.full(n_groups, fill, dtype=xp.int64)
    order = xp.lexsort(xp.stack([values, groups]))
    firsts = order[run_starts(groups[order], xp)]
    out[groups[firsts]] = values[firsts]
    return out


def unique(a, xp=np, *, return_index: bool = False, return_inverse: bool = False):
    """Sorted distinct values of 1-D ``a``, like ``xp.unique``.

    return_index: also the index of each value's first occurrence in ``a``.
    return_inverse: also, per element of ``a``, the position of its value.
    """
    n = int(a.shape[0])
    if not (return_index or return_inverse):
        # the values alone: a plain sort (numpy's SIMD quicksort: 9x a stable argsort at 20M)
        s = xp.sort(a)
        return s[run_starts(s, xp)]
    # Stable order (ties by index), so return_index gives first occurrences;
    # lexsort on (index, value) guarantees it where argsort has no kind=.
    order = xp.argsort(a, kind="stable") if xp is np else xp.lexsort(xp.stack([xp.arange(n), a]))
    s = a[order]
    first = run_starts(s, xp)
    values = s[first]
    if not (return_index or return_inverse):
        return values
    out = [values]
    if return_index:
        out.append(order[first])
    if return_inverse:
        inv = xp.empty(n, dtype=xp.int64)
        inv[order] = xp.cumsum(first) - 1
        out.append(inv)
    return tuple(out)


def top_k_pairs(i, j, score, k: int, xp=np):
    """(E,) bool: the pairs (i[e], j[e]) that are among the k lowest-``score``
    pairs of either of their two ends (ties by pair order).  Bounds a pair
    list to at most k per element, however dense the neighbourhoods.

    Both ends of each pair are sorted by (node, score, pair order); an end is
    among its node's k best when the end k places before it in that order
    belongs to another node (no per-run counting)."""
    e = int(i.shape[0])
    if e == 0 or k <= 0:
        return xp.zeros(e, dtype=bool)
    # Both ends of pair p at positions 2p and 2p+1, so a stable sort breaks ties by pair order.
    pos_bits = int(2 * e - 1).bit_length()
    node_bits = int(xp.maximum(i.max(), j.max())).bit_length()
    score_bits = max(1, int(score.max()).bit_length()) if score.dtype.kind in "iu" else 64
    if score.dtype.kind in "iu" and int(score.min()) >= 0 and node_bits + score_bits + pos_bits <= 63:
        # Small integer scores (Hamming distances, gate units): node, score and position packed
        # into one int64 and sorted as plain numbers, the position read back from the low bits:
        # the same order as the stable sort below, at a plain sort's cost (9x less at 20M).
        # Built in place: at 20M pairs each temporary is 320 MB.
        key = xp.empty(2 * e, dtype=xp.int64)
        key[0::2] = i
        key[1::2] = j
        key <<= score_bits + pos_bits
        sc = score.astype(xp.int64) << pos_bits
        key[0::2] |= sc
        key[1::2] |= sc
        del sc
        key |= xp.arange(2 * e, dtype=xp.int64)
        key.sort()
        node_sorted = key >> (score_bits + pos_bits)
        key &= (1 << pos_bits) - 1
        order = key
    else:
        node = xp.stack([i, j], axis=1).reshape(-1).astype(xp.int64)
        s = score.astype(xp.float32) if score.dtype != xp.float64 else None
        if s is not None and int(node.max()) < 2 ** 31:
            # One int64 key, node then score: float32 bits made order-preserving (negatives
            # flipped), one stable argsort instead of a three-key lexsort (2.7x faster at 6M).
            bits = xp.repeat(s + xp.float32(0), 2).view(xp.int32).astype(xp.int64)   # + 0: -0.0 -> 0.0
            bits = xp.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2 ** 31
            order = xp.argsort((node << 32) | bits, kind="stable")
        else:
            pair = xp.repeat(xp.arange(e), 2)
            order = xp.lexsort(xp.stack([pair, xp.repeat(score, 2).astype(xp.float64), node.astype(xp.float64)]))
        node_sorted = node[order]
    best = xp.ones(2 * e, dtype=bool)            # rank < k: the end k places earlier is another node's
    if 2 * e > k:
        best[k:] = node_sorted[k:] != node_sorted[:-k]
    top = xp.zeros(2 * e, dtype=bool)
    top[order] = best
    return top.reshape(e, 2).any(axis=1)


def splitmix64(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint64 (N,) well-mixed hashes of int64 ``values`` and ``seed`` (splitmix64's
    finaliser): a seeded pseudo-random key per value that does not depend on
    row order.  Three multiply-xor steps; a library call would cost more than it."""
    with np.errstate(over="ignore"):              # uint64 arithmetic wraps, as intended
        z = values.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def apportion(total: int, counts: np.ndarray, *, minimum: int = 0) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``counts (K,)`` by largest
    remainders, at least ``minimum`` each (where a group has that many), never
    more than a group has.  -> int64 (K,)."""
    counts = np.asarray(counts, np.int64)
    if counts.sum() == 0:
        return np.zeros_like(counts)
    exact = total * counts / counts.sum()
    quota = np.minimum(counts, np.maximum(minimum, np.floor(exact).astype(np.int64)))
    for i in np.argsort(-(exact - quota), kind="stable"):
        if quota.sum() >= total:
            break
        if quota[i] < counts[i]:
            quota[i] += 1
    return quota


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limit = None


@contextlib.contextmanager
def one_blas_thread():
    """BLAS on one thread while any caller in this process is inside.  Counted:
    threadpoolctl's limit is process-wide, and callers in several threads (the
    partitions a Dask worker hashes at once) each entering and leaving their own
    limit left the process on one thread when they ended out of order (and later
    float sums, the same-picture check's, rounded otherwise than before)."""
    global _blas_users, _blas_limit
    from threadpoolctl import threadpool_limits

    with _blas_lock:
        if _blas_users == 0:
            _blas_limit = threadpool_limits(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limit.restore_original_limits()
                _blas_limit = None
