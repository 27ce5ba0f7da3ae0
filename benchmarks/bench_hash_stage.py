"""The hash stage alone, in this process: wall time, CPU time (core-seconds)
and the stage's own per-step seconds, over SRC's partitions as `gpupipe dedup`
cuts them.

    python benchmarks/bench_hash_stage.py SRC [--rounds 2] [--blas default] [--dali-cores N [N ...]]

``--blas default`` lets the hash kernels use OpenBLAS's own threads beside
DALI's (the stage before it limited them to one, RESULTS.md §20): on 2 cores
the two sets of threads competed.  The per-step seconds overlap (decoding
runs in its own thread), so they add up to more than the wall time.
``--dali-cores 1 2`` alternates, round by round, configurations whose DALI
decoder is given 1 and 2 cores (it runs one thread more than that: 2 and 3
threads); the default is this machine's cores (up to 8).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--blas", choices=("one", "default"), default="one")
    ap.add_argument("--dali-cores", type=int, nargs="+", default=[None])
    args = ap.parse_args()

    from gpupipe.runner import _partitions, partition_rows
    from gpupipe.stages import hashing
    from gpupipe.stages.ingest import ingest

    if args.blas == "default":
        hashing.threadpool_limits = lambda **kw: contextlib.nullcontext()
    table = ingest(args.src).table.select(list(hashing.READS))
    parts = _partitions(table, partition_rows(table.num_rows))
    configs = [hashing.HashConfig(device="cpu", dali_threads=c) for c in args.dali_cores]
    for cfg in configs:
        hashing.hash_partition(parts[0].slice(0, 600), cfg)    # DALI's first pipeline, out of the timing
    for r in range(args.rounds):
        for cfg in configs:
            c0, t0 = os.times(), time.perf_counter()
            total = hashing.HashCounts()
            for p in parts:
                total = total.add(hashing.hash_partition(p, cfg)[1])
            wall, c1 = time.perf_counter() - t0, os.times()
            cpu = (c1.user - c0.user) + (c1.system - c0.system)
            steps = ", ".join(f"{k[2:]} {v:.2f}" for k, v in vars(total).items() if k.startswith("s_"))
            print(f"round {r + 1} (BLAS threads: {args.blas}; DALI cores: {cfg.dali_threads or 'default'}): "
                  f"{table.num_rows:,} images, wall {wall:.2f} s ({table.num_rows / wall:,.0f} images/s), "
                  f"CPU {cpu:.2f} core-s; steps (s): {steps}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
