"""near_pairs on clustered hashes with planted near pairs: recall, exactness of edges, contract."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from gpupipe.hashing.neighbors import _popcount, default_n_tables, hamming, near_pairs

MAX_D = 8


def _flip(rng: np.random.Generator, d: int) -> np.uint64:
    bits = rng.choice(64, size=d, replace=False)
    return np.bitwise_or.reduce(np.uint64(1) << bits.astype(np.uint64), initial=np.uint64(0))


def _labels(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# Planted pairs per distance 0..MAX_D: real near-duplicates sit mostly at a few bits, as in
# benchmarks/bench_neighbors.py (50% at 0-2 bits, 30% at 3-6, the rest up to the threshold).
PER_DISTANCE = (400, 400, 400, 150, 150, 150, 150, 100, 100)


@pytest.fixture(scope="module")
def planted():
    """~57k hashes: 50k random, 3k copies of one value, 2k sharing their high 32 bits, a dense
    cluster of 1k distinct values within 3 bits of one centre, and 2000 planted pairs at known
    distances 0..MAX_D (a tenth of them based inside the high-32 cluster).
    -> (hashes (N,) uint64, pairs (P, 2) int64, pair distance (P,) int64, copy indices)."""
    rng = np.random.default_rng(7)
    parts = [rng.integers(0, 2**64, size=50_000, dtype=np.uint64, endpoint=False)]
    parts.append(np.full(3_000, rng.integers(0, 2**64, dtype=np.uint64, endpoint=False)))
    high = rng.integers(0, 2**32, dtype=np.uint64) << np.uint64(32)
    parts.append(high | rng.integers(0, 2**32, size=2_000, dtype=np.uint64))
    centre = rng.integers(0, 2**64, dtype=np.uint64, endpoint=False)
    parts.append(np.array([centre ^ _flip(rng, int(rng.integers(1, 4))) for _ in range(1_000)]))
    h = np.concatenate(parts)
    copies = np.arange(50_000, 53_000)
    shared_high = np.arange(53_000, 55_000)

    dist = np.repeat(np.arange(MAX_D + 1), PER_DISTANCE)
    ends = rng.choice(50_000, size=2 * dist.size, replace=False)
    base, partner = ends[:dist.size], ends[dist.size:]
    crowded = rng.random(dist.size) < 0.1                   # pairs inside the high-32 cluster
    base[crowded] = rng.choice(shared_high, size=int(crowded.sum()), replace=False)
    h[partner] = h[base] ^ np.array([_flip(rng, int(d)) for d in dist])
    return h, np.stack([base, partner], axis=1), dist, copies


@pytest.fixture(scope="module")
def result(planted):
    h = planted[0]
    return near_pairs(h, max_distance=MAX_D)


def test_recall_of_planted_pairs(planted, result):
    h, pairs, dist, _ = planted
    i, j, _ = result
    labels = _labels(i, j, h.size)
    found = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    per_d = {d: float(found[dist == d].mean()) for d in range(MAX_D + 1)}
    assert found.mean() >= 0.99, per_d
    assert found[dist <= 2].all() and found[dist <= 5].mean() >= 0.995, per_d
    assert per_d[MAX_D] >= 0.85, per_d                       # default aims at ~0.95 here


def test_every_edge_is_true_and_well_formed(planted, result):
    h = planted[0]
    i, j, d = result
    assert i.dtype == np.int64 and j.dtype == np.int64 and d.dtype == np.uint8
    assert (i < j).all()
    truth = np.bitwise_count(h[i] ^ h[j])
    assert (d == truth).all() and (d <= MAX_D).all()
    key = i * h.size + j
    assert (np.diff(key) > 0).all()                          # sorted by (i, j), each pair once


def test_identical_cluster_is_one_star_component(planted, result):
    h, _, _, copies = planted
    i, j, d = result
    labels = _labels(i, j, h.size)
    assert np.unique(labels[copies]).size == 1
    star = np.isin(j, copies[1:]) & (d == 0)
    assert (i[star] == copies[0]).all() and star.sum() == copies.size - 1
    assert i.size < 10 * h.size                              # no quadratic blow-up


def test_dense_cluster_of_distinct_values_stays_sparse():
    """~19k distinct hashes all within 6 bits of each other: one group, ~1 edge per member per
    table (not window-many), and every edge true."""
    rng = np.random.default_rng(11)
    centre = rng.integers(0, 2**64, dtype=np.uint64, endpoint=False)
    flips = np.unique(np.array([_flip(rng, 3) for _ in range(25_000)]))[:20_000]
    h = np.concatenate([centre ^ flips, rng.integers(0, 2**64, size=5_000, dtype=np.uint64)])
    i, j, d = near_pairs(h, max_distance=6)
    labels = _labels(i, j, h.size)
    assert np.unique(labels[:flips.size]).size == 1
    assert (d == np.bitwise_count(h[i] ^ h[j])).all() and (d <= 6).all()
    assert i.size <= 2 * default_n_tables(h.size, 6, 16) * flips.size


def test_deterministic_for_a_seed(planted, result):
    h = planted[0]
    again = near_pairs(h, max_distance=MAX_D)
    assert all((a == b).all() for a, b in zip(result, again))
    other = near_pairs(h[:20_000], max_distance=MAX_D, seed=1)
    assert all(x.size for x in other)


def _brute_components(h: np.ndarray, max_d: int) -> np.ndarray:
    dist = np.bitwise_count(h[:, None] ^ h[None, :])
    bi, bj = np.nonzero(np.triu(dist <= max_d, 1))
    return _labels(bi, bj, h.size)


@pytest.fixture(scope="module")
def small():
    """2000 hashes: 200 centres, each member within 0..9 bits of its centre (chains and overlaps)."""
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 2**64, size=200, dtype=np.uint64, endpoint=False)
    h = centres[rng.integers(0, 200, size=2_000)]
    return h ^ np.array([_flip(rng, int(rng.integers(0, 10))) for _ in range(h.size)])


@pytest.mark.parametrize("kwargs", [{}, {"n_tables": 30, "window": 8}, {"n_tables": 30, "seed": 5}])
def test_components_equal_brute_force(small, kwargs):
    """Defaults search a small input exhaustively; forced tables must still find every group."""
    i, j, d = near_pairs(small, max_distance=MAX_D, **kwargs)
    assert (d == hamming(small[i], small[j])).all() and (d <= MAX_D).all()
    assert _same_partition(_labels(i, j, small.size), _brute_components(small, MAX_D))


def test_threshold_zero_links_only_identical(small):
    h = np.concatenate([small, small[:50]])
    i, j, d = near_pairs(h, max_distance=0)
    assert (d == 0).all() and (h[i] == h[j]).all()
    assert _same_partition(_labels(i, j, h.size), _brute_components(h, 0))


def test_edge_cases_and_validation():
    for n in (0, 1):
        i, j, d = near_pairs(np.zeros(n, dtype=np.uint64), max_distance=4)
        assert i.size == j.size == d.size == 0
    i, j, d = near_pairs(np.array([5, 5, 7], dtype=np.int64), max_distance=1)
    assert i.tolist() == [0, 0] and j.tolist() == [1, 2] and d.tolist() == [0, 1]
    with pytest.raises(TypeError):
        near_pairs(np.zeros(3, dtype=np.float64), max_distance=1)
    with pytest.raises(ValueError):
        near_pairs(np.zeros((2, 2), dtype=np.uint64), max_distance=1)
    with pytest.raises(ValueError):
        near_pairs(np.zeros(3, dtype=np.uint64), max_distance=65)


def test_swar_popcount_matches_numpy():
    class NoBitwiseCount:                                    # numpy seen without bitwise_count
        def __getattr__(self, name):
            if name == "bitwise_count":
                raise AttributeError(name)
            return getattr(np, name)

    x = np.random.default_rng(0).integers(0, 2**64, size=10_000, dtype=np.uint64, endpoint=False)
    x[:3] = [0, 2**64 - 1, 1 << 63]
    assert (_popcount(x, NoBitwiseCount()) == np.bitwise_count(x)).all()


def test_default_tables_grow_with_size_and_threshold():
    assert default_n_tables(10_000_000, 0, 32) == 0
    assert default_n_tables(1_000_000, 8, 32) < default_n_tables(10_000_000, 8, 32)
    assert default_n_tables(1_000_000, 6, 32) < default_n_tables(1_000_000, 10, 32) <= 240


@pytest.mark.gpu
def test_cupy_equals_numpy(small):
    cupy = pytest.importorskip("cupy")
    big = np.random.default_rng(1).integers(0, 2**64, size=30_000, dtype=np.uint64, endpoint=False)
    for h, kw in ((small, {}), (np.concatenate([big, small]), {"n_tables": 9})):
        want = near_pairs(h, max_distance=MAX_D, **kw)
        got = near_pairs(cupy.asarray(h), max_distance=MAX_D, **kw)
        assert all((cupy.asnumpy(g) == w).all() for g, w in zip(got, want))


def test_direct_pairs_are_every_close_pair_of_a_small_input():
    """direct=True: each close pair itself (no chains), runs of equal hashes expanded."""
    import itertools

    rng = np.random.default_rng(3)
    h = rng.integers(0, 2 ** 63, 400, dtype=np.int64).view(np.uint64)
    h[10:14] = h[3]                                   # a run of 5 equal hashes
    for k in range(20, 30):                            # a chain: each 3 bits from the previous one
        h[k + 1] = h[k] ^ np.uint64(0b111 << (3 * (k - 20)))
    i, j, d = near_pairs(h, max_distance=4, direct=True)
    got = set(zip(i.tolist(), j.tolist()))
    want = {(a, b) for a, b in itertools.combinations(range(400), 2) if int(hamming(h[a], h[b])) <= 4}
    assert got == want
    assert (d <= 4).all() and (i < j).all()
    chained, _, _ = near_pairs(h, max_distance=4)
    assert len(chained) < len(i)                      # the default keeps a spanning subset only


def test_queries_find_their_partners_and_change_nothing():
    rng = np.random.default_rng(4)
    h = rng.integers(0, 2 ** 63, 30000, dtype=np.int64).view(np.uint64)
    flips = np.zeros(200, np.uint64)
    for _ in range(3):
        flips |= np.uint64(1) << rng.integers(0, 64, 200).astype(np.uint64)
    q = h[:200] ^ flips
    out = near_pairs(h, max_distance=6, direct=True, queries=q)
    alone = near_pairs(h, max_distance=6, direct=True)
    assert all(np.array_equal(a, b) for a, b in zip(out[:3], alone))
    qi, hj, qd = out[3:]
    found = set(zip(qi.tolist(), hj.tolist()))
    assert sum((k, k) in found for k in range(200)) >= 198           # measured 200 of 200
    assert (qd == hamming(q[qi], h[hj])).all() and (qd <= 6).all()


def test_max_per_hash_bounds_dense_neighbourhoods_and_keeps_the_closest():
    """A dense cluster (every member within 6 bits of every other) and one
    exact partner: with max_per_hash each hash keeps only its closest partners."""
    rng = np.random.default_rng(5)
    base = np.uint64(rng.integers(0, 2 ** 63))
    bits = [np.uint64(1) << np.uint64(b) for b in range(64)]
    cluster = np.array([base ^ bits[k] ^ bits[(k + 1) % 64] ^ bits[(k + 7) % 64] for k in range(60)], np.uint64)
    h = np.concatenate([cluster, cluster[:1] ^ bits[63], rng.integers(0, 2 ** 63, 2000).astype(np.uint64)])
    full_i, _, _ = near_pairs(h, max_distance=6, direct=True)
    i, j, d = near_pairs(h, max_distance=6, direct=True, max_per_hash=4)
    assert len(i) < len(full_i) / 5
    deg = np.bincount(np.concatenate([i, j]), minlength=len(h))
    assert deg.max() <= 2 * 4 * 2                              # at most k of its own plus others' picks
    assert (0, 60) in set(zip(i.tolist(), j.tolist()))         # the 1-bit partner survives


def test_top_k_pairs():
    from gpupipe.xputil import top_k_pairs

    i = np.array([0, 0, 0, 1, 2])
    j = np.array([1, 2, 3, 2, 3])
    score = np.array([3.0, 1.0, 2.0, 0.5, 9.0])
    keep = top_k_pairs(i, j, score, 1)
    # node 0's best is (0,2); node 1's best (1,2); node 2's best (1,2); node 3's best (0,3)
    assert keep.tolist() == [False, True, True, True, False]


def test_top_k_pairs_matches_brute_force():
    """top_k_pairs keeps exactly the pairs a plain per-element ranking keeps, ties by
    pair order, for integer (packed-key path) and float scores, on sparse and dense lists."""
    from gpupipe.xputil import top_k_pairs

    rng = np.random.default_rng(5)
    # (elements, pairs, k, scores in 0..top-1, integer scores); top 3000: like gate units
    for n, e, k, top, integer in ((50, 60, 3, 6, True), (50, 600, 3, 6, True), (300, 900, 4, 6, False),
                                  (20, 400, 8, 6, False), (1000, 1500, 1, 6, True), (300, 3000, 8, 3000, True)):
        i = rng.integers(0, n, e)
        j = (i + rng.integers(1, n, e)) % n
        score = rng.integers(0, top, e)
        score = score if integer else score.astype(np.float32)
        expect = np.zeros(e, bool)
        for node in np.unique(np.concatenate([i, j])):
            mine = np.flatnonzero((i == node) | (j == node))
            ranked = mine[np.argsort(score[mine], kind="stable")]     # ties by pair order
            expect[ranked[:k]] = True
        assert top_k_pairs(i, j, score, k).tolist() == expect.tolist(), (n, e, k, integer)
