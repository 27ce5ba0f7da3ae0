"""The corpus of real-world inputs (tests/corpus.py) through gpupipe dedup: timing
and the outcome of every kind.

Builds the corpus in a temporary folder (or ``--data``), runs ``run_dedup``
in-process on it (and on its ``manifest.csv``), and prints the seconds per
stage and a Markdown table: kind, file, expected outcome, outcome got.  Exits
1 when any outcome differs from the expected one.

    python benchmarks/bench_corpus.py [--device cpu|gpu|auto] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import pyarrow.parquet as pq  # noqa: E402
from corpus import build_corpus  # noqa: E402

from gpupipe import schema  # noqa: E402
from gpupipe.runner import LEDGER, DedupOptions, run_dedup  # noqa: E402


def _outcomes(run: Path) -> dict[str, tuple[str, str | None]]:
    t = pq.read_table(run / LEDGER)
    cols = [t.column(c).to_pylist() for c in (schema.REL_PATH, schema.INVALID_REASON, schema.LABEL)]
    return {rel: (reason or "valid", label) for rel, reason, label in zip(*cols)}


def _run(src: Path, run: Path, device: str) -> tuple[float, dict]:
    t = time.perf_counter()
    summary = run_dedup(src, run, DedupOptions(device=device, recall_sample=0))
    return time.perf_counter() - t, summary.seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "gpu", "auto"))
    ap.add_argument("--data", type=Path, help="folder to build the corpus in (default: a temporary one)")
    args = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory() if args.data is None else None
    base = Path(tmp.name) if tmp else args.data
    try:
        t = time.perf_counter()
        c = build_corpus(base / "tree", outside=base / "elsewhere")
        built = time.perf_counter() - t
        wall, seconds = _run(c.root, base / "run", args.device)
        m_wall, _ = _run(c.root / "manifest.csv", base / "run-manifest", args.device)
        got, m_got = _outcomes(base / "run"), _outcomes(base / "run-manifest")
    finally:
        if tmp:       # the corpus holds a mode-000 file and links: restore before removal
            os.chmod(base / "tree" / "broken" / "locked.jpg", 0o644)
            tmp.cleanup()

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; device {args.device}")
    print(f"corpus: {len(c.cases)} files of {len({x.kind for x in c.cases})} kinds (ImageFolder), "
          f"{len(c.manifests['manifest.csv'])} manifest rows; mode-000 files readable (root): {c.reads_mode_000}")
    print(f"build {built:.2f} s; dedup {wall:.2f} s wall ("
          + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()) + f"); manifest dedup {m_wall:.2f} s")
    print()
    print("| kind | file | expected | got |")
    print("|---|---|---|---|")
    bad = 0
    rows = [(x, got.get(x.rel, ("(no row)", None))) for x in c.cases]
    rows += [(x, m_got.get(x.rel, ("(no row)", None))) for x in c.manifests["manifest.csv"]]
    for x, (outcome, label) in rows:
        want = x.expected or "valid"
        ok = outcome == want and label == x.label
        bad += not ok
        shown = outcome if label == x.label else f"{outcome}, label {label!r} (want {x.label!r})"
        rel = x.rel if not os.path.isabs(x.rel) else "(absolute path)"
        print(f"| {x.kind} | `{rel}` | {want} | {shown if ok else f'**{shown}**'} |")
    print()
    print(f"{len(rows) - bad} of {len(rows)} as expected")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
