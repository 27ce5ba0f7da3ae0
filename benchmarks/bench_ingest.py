"""How long listing a source takes: `gpupipe.stages.ingest.ingest`, and for
WebDataset shards the tar listing alone (`gpupipe.io.tarindex.list_members`).

    python benchmarks/bench_ingest.py SRC [--rounds 3]

SRC as `gpupipe dedup` takes it (a folder, shards, a manifest).  Prints each
round's seconds.  Numbers: benchmarks/RESULTS.md §32.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from gpupipe.io.tarindex import list_members
    from gpupipe.stages.ingest import ingest

    shards = sorted(glob.glob(os.path.join(args.src, "**", "*.tar"), recursive=True)) if os.path.isdir(args.src) else []
    for r in range(args.rounds):
        line = f"round {r + 1}:"
        if shards:
            t = time.perf_counter()
            members = sum(len(list_members(s).members) for s in shards)
            line += f" tar listing {time.perf_counter() - t:.2f} s ({len(shards)} shards, {members:,} members);"
        t = time.perf_counter()
        rows = ingest(args.src).table.num_rows
        print(f"{line} ingest {time.perf_counter() - t:.2f} s ({rows:,} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
