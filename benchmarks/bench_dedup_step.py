"""The dedup step alone (candidate search, same-picture checks, groups) on a finished run.

Reads a run directory's ledger (its hash columns) and thumbnails (thumbs.npy,
read row by row as `gpupipe dedup` does), runs `gpupipe.stages.dedup.dedup`
once, prints its timings, counts and the process's peak RSS, and compares the
groups with the ones the ledger holds (same partition of the rows or not).
For changes to the dedup step at 1M images without re-hashing the shards:

    python benchmarks/bench_dedup_step.py --run .bench/scale/n1000000/run [--profile 25]
    python benchmarks/bench_dedup_step.py --run RUN --rounds 6 --check-threads 1 2   # alternating

The run's own groups are the reference: a change that keeps them prints
``groups: identical``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from gpupipe import schema
from gpupipe.device import resolve_device
from gpupipe.io.rows import NpyRows
from gpupipe.stages import dedup as dedup_stage
from gpupipe.table import Ledger


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Do the group labels a and b (one per row, -1 = no group) split the rows the same way?"""
    if not np.array_equal(a < 0, b < 0):
        return False
    ok = a >= 0
    pairs = pd.DataFrame({"a": a[ok], "b": b[ok]}).drop_duplicates()
    return pairs["a"].is_unique and pairs["b"].is_unique


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run directory of `gpupipe dedup` (ledger.parquet, thumbs.npy)")
    ap.add_argument("--verify", default="pixels", choices=["pixels", "photo", "none"])
    ap.add_argument("--profile", type=int, default=0, help="print the N most expensive functions (cProfile)")
    ap.add_argument("--sort", default="tottime", help="cProfile order: tottime or cumulative")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--rounds", type=int, default=1, help="run the step this many times (the last one's numbers)")
    ap.add_argument("--check-threads", type=int, nargs="+", default=None,
                    help="alternate round by round between these thread counts of the check's per-image work "
                         "(gpupipe.hashing.verify._threads); prints each round's seconds")
    args = ap.parse_args(argv)

    run = Path(args.run)
    if not (run / "ledger.parquet").exists() or not (run / "thumbs.npy").exists():
        raise SystemExit(f"{run} is not a finished `gpupipe dedup` run (no ledger.parquet and thumbs.npy)")
    if args.check_threads:
        return _alternate(run, args)
    cols = [c for c in dedup_stage.READS] + [schema.DEDUP_GROUP]
    table = pq.read_table(run / "ledger.parquet", columns=cols)
    reference = table.column(schema.DEDUP_GROUP).to_numpy(zero_copy_only=False)
    reference = np.where(np.isnan(reference.astype(np.float64)), -1, reference).astype(np.int64)
    ledger = Ledger(resolve_device("cpu"))
    frame = ledger.from_arrow(table.drop_columns([schema.DEDUP_GROUP]))
    del table
    thumbs = NpyRows(run / "thumbs.npy")
    before = _peak_gib()
    cfg = dedup_stage.DedupConfig(verify=args.verify)
    t = time.perf_counter()
    if args.profile:
        prof = cProfile.Profile()
        out, stats = prof.runcall(dedup_stage.dedup, frame, ledger, cfg, thumbs=thumbs)
    else:
        out, stats = dedup_stage.dedup(frame, ledger, cfg, thumbs=thumbs)
    wall = time.perf_counter() - t
    group = out[schema.DEDUP_GROUP].to_numpy(dtype=np.float64, na_value=np.nan)
    group = np.where(np.isnan(group), -1, group).astype(np.int64)
    same = _same_partition(group, reference)
    numbers = {
        "run": str(run), "rows": len(frame), "seconds": round(wall, 2),
        "search_s": round(stats.seconds.get("search", 0), 2), "check_s": round(stats.seconds.get("verify", 0), 2),
        "nodes": stats.nodes, "candidates": stats.candidates, "candidates_phash": stats.candidates_phash,
        "candidates_shift": stats.candidates_shift, "checked": stats.checked, "gated": stats.gated, "coarse": stats.coarse, "verified": stats.verified,
        "peak_rss_gib_before": round(before, 2), "peak_rss_gib": round(_peak_gib(), 2),
        "groups_identical": bool(same), "groups_of_two_or_more": int((np.unique(group[group >= 0], return_counts=True)[1] > 1).sum()),
    }
    print(json.dumps(numbers, indent=1))
    print("groups:", "identical" if same else "DIFFERENT from the run's ledger")
    if args.profile:
        pstats.Stats(prof, stream=sys.stdout).sort_stats(args.sort).print_stats(args.profile)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=1) + "\n")
    return 0


def _alternate(run: Path, args) -> int:
    """The dedup step ``args.rounds`` times per thread count, alternating; the seconds of each."""
    from gpupipe.hashing import verify

    table = pq.read_table(run / "ledger.parquet", columns=list(dedup_stage.READS))
    ledger = Ledger(resolve_device("cpu"))
    cfg = dedup_stage.DedupConfig(verify=args.verify)
    seconds: dict[int, list[float]] = {n: [] for n in args.check_threads}
    for _ in range(args.rounds):
        for n in args.check_threads:
            verify._threads = lambda n=n: n
            frame = ledger.from_arrow(table)
            with NpyRows(run / "thumbs.npy") as thumbs:
                t = time.perf_counter()
                dedup_stage.dedup(frame, ledger, cfg, thumbs=thumbs)
                seconds[n].append(round(time.perf_counter() - t, 3))
    for n, s in seconds.items():
        print(f"check threads {n}: dedup step {sorted(s)} s, median {np.median(s):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
