"""Benchmark near_pairs: time, peak memory, candidates and recall of planted near pairs.

Claim measured: near-duplicate search over N random 64-bit hashes is linear in N (candidates =
U * n_tables * window) and meets 10M hashes in <= 60 s, <= 4 GiB peak RSS, recall >= 0.99.

Per N, in a fresh subprocess (so each peak RSS is its own): N uniform random uint64 hashes, of
which 1% are overwritten as partners of planted near pairs (another 1% are their bases); planted
distances: 50% uniform in 0..2 bits, 30% in 3..6, 20% in 7..10.  A planted pair counts as found
when both ends fall in one connected component of the returned edges (scipy csgraph); recall is
over planted pairs with distance <= max_distance, overall and per distance bucket.

    python benchmarks/bench_neighbors.py --max-distance 10
    python benchmarks/bench_neighbors.py --max-distance 8 --sizes 1e6 1e7
    python benchmarks/bench_neighbors.py --combined --max-distance 8 --sizes 1e6 1e7

--combined measures what the dedup stage runs: two independent keys (pHash and the shift
key), each searched with ``direct=True`` (the close pairs themselves, as the stage verifies
pairs one by one); time and memory are for both searches, and a planted pair counts as found
only when it is itself among the returned pairs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

BUCKETS = ((0, 2), (3, 6), (7, 10))


def planted_hashes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> hashes (N,) uint64, base (P,) int64, partner (P,) int64, distance (P,) int64."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    p = n // 100
    ends = rng.choice(n, size=2 * p, replace=False)
    base, partner = ends[:p], ends[p:]
    bucket = rng.choice(3, size=p, p=[0.5, 0.3, 0.2])
    lo = np.array([b[0] for b in BUCKETS])[bucket]
    hi = np.array([b[1] for b in BUCKETS])[bucket]
    dist = rng.integers(lo, hi + 1)
    mask = np.zeros(p, dtype=np.uint64)
    for start in range(0, p, 1 << 16):                      # d distinct random bits per pair
        sl = slice(start, start + (1 << 16))
        bits = np.argsort(rng.random((len(dist[sl]), 64)), axis=1).astype(np.uint64)
        on = np.arange(64)[None, :] < dist[sl][:, None]
        mask[sl] = np.bitwise_or.reduce(np.where(on, np.uint64(1) << bits, np.uint64(0)), axis=1)
    h[partner] = h[base] ^ mask
    return h, base, partner, dist


def one_size(n: int, max_distance: int, n_tables: int | None, window: int | None, seed: int,
             xp_name: str = "numpy") -> dict:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from gpupipe.hashing.neighbors import _DEFAULT_WINDOW, default_n_tables, near_pairs

    h, base, partner, dist = planted_hashes(n, seed)
    xp, sync = np, (lambda: None)
    if xp_name == "cupy":                       # GPU: hashes already on the device, kernels warm
        import cupy as xp
        sync = xp.cuda.Device().synchronize
        near_pairs(xp.asarray(h[:100_000]), max_distance=max_distance, window=window)
    hx = xp.asarray(h)
    sync()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    i, j, d = near_pairs(hx, max_distance=max_distance, n_tables=n_tables, window=window, seed=seed)
    sync()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if xp is not np:
        i, j, d = xp.asnumpy(i), xp.asnumpy(j), xp.asnumpy(d)
    rss_search = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sh = np.sort(h)
    u = int((sh[1:] != sh[:-1]).sum()) + 1
    del sh
    w = _DEFAULT_WINDOW if window is None else window
    tables = default_n_tables(u, max_distance, w) if n_tables is None else n_tables
    candidates = tables * sum(u - k for k in range(1, w + 1))
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    found = labels[base] == labels[partner]
    within = dist <= max_distance
    out = {"n": n, "max_distance": max_distance, "n_tables": tables, "window": w,
           "wall_s": wall, "cpu_s": cpu, "rss_before_gib": rss_before / 2**20, "rss_search_gib": rss_search / 2**20,
           "candidates": candidates, "edges": int(i.size), "planted": int(within.sum()),
           "recall": float(found[within].mean())}
    for lo, hi in BUCKETS:
        sel = within & (dist >= lo) & (dist <= hi)
        out[f"recall_{lo}-{hi}"] = float(found[sel].mean()) if sel.any() else float("nan")
    out["rss_peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def combined(n: int, max_distance: int, seed: int) -> dict:
    """Both keys of the dedup stage, direct pairs: wall time, peak RSS, recall of planted pairs."""
    from gpupipe.hashing.neighbors import near_pairs

    keys = [planted_hashes(n, seed + k) for k in range(2)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    found = []
    pairs = 0
    for k, (h, base, partner, dist) in enumerate(keys):
        i, j, _ = near_pairs(h, max_distance=max_distance, seed=seed + k, direct=True)
        pairs += int(i.size)
        got = np.isin(np.minimum(base, partner) * n + np.maximum(base, partner), i * n + j)
        found.append((got, dist))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"n": n, "max_distance": max_distance, "wall_s": wall, "cpu_s": cpu, "pairs": pairs,
           "rss_before_gib": rss_before / 2**20,
           "rss_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    got = np.concatenate([g for g, _ in found])
    dist = np.concatenate([d for _, d in found])
    within = dist <= max_distance
    out["recall"] = float(got[within].mean())
    for lo, hi in BUCKETS:
        sel = within & (dist >= lo) & (dist <= hi)
        out[f"recall_{lo}-{hi}"] = float(got[sel].mean()) if sel.any() else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 2e6, 5e6, 1e7])
    ap.add_argument("--max-distance", type=int, default=10)
    ap.add_argument("--n-tables", type=int, default=None)
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--xp", choices=["numpy", "cupy"], default="numpy", help="array module (cupy: GPU)")
    ap.add_argument("--combined", action="store_true", help="both dedup keys, direct pairs (see above)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None and args.combined:
        print(json.dumps(combined(args.child, args.max_distance, args.seed)))
        return
    if args.combined:
        cols = ["n", "wall_s", "cpu_s", "rss_peak_gib", "pairs", "recall", "recall_0-2", "recall_3-6", "recall_7-10"]
        print(f"combined (pHash + shift key, direct pairs), max_distance={args.max_distance}")
        print(" | ".join(cols))
        for n in (int(s) for s in args.sizes):
            cmd = [sys.executable, __file__, "--child", str(n), "--max-distance", str(args.max_distance),
                   "--seed", str(args.seed), "--combined"]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            print(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else f"{r[c]:,}" for c in cols), flush=True)
        return
    if args.child is not None:
        print(json.dumps(one_size(args.child, args.max_distance, args.n_tables, args.window, args.seed,
                                  args.xp)))
        return
    cols = ["n", "n_tables", "window", "wall_s", "cpu_s", "rss_peak_gib", "rss_search_gib", "candidates",
            "edges", "recall", "recall_0-2", "recall_3-6", "recall_7-10"]
    print(f"max_distance={args.max_distance} xp={args.xp}")
    print(" | ".join(cols))
    rows = []
    for n in (int(s) for s in args.sizes):
        cmd = [sys.executable, __file__, "--child", str(n), "--max-distance", str(args.max_distance),
               "--seed", str(args.seed), "--xp", args.xp]
        cmd += ["--n-tables", str(args.n_tables)] if args.n_tables is not None else []
        cmd += ["--window", str(args.window)] if args.window is not None else []
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        rows.append(r)
        print(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else f"{r[c]:,}" for c in cols),
              flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"{a['n']:,} -> {b['n']:,} ({b['n'] / a['n']:.0f}x): time x{b['wall_s'] / a['wall_s']:.1f}, "
              f"peak RSS x{b['rss_peak_gib'] / a['rss_peak_gib']:.1f}, "
              f"candidates x{b['candidates'] / a['candidates']:.1f}")


if __name__ == "__main__":
    main()
