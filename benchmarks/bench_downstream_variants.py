"""Where does the curated set lose accuracy?  Other choices of rows from the
curate runs ``bench_downstream.py`` left, trained and tested the same way
(same fixed model, epochs, seed and clean test set).

    python benchmarks/bench_downstream_variants.py [--dataset digits|fashion] [--seeds 0 1 2]

Per seed, from ``<data>/seed<N>/run/ledger.parquet``:

* curated: the kept rows with their curated labels (what the benchmark trains on);
* no balance: every usable row (kept and surplus) with its curated label;
* no balance, suspects in: and the suspect rows (flagged or far, left open)
  with their given labels.

Reports accuracy on the seed's clean test set for each, beside the raw and
clean accuracies the benchmark recorded (``results.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_downstream import fit_and_test  # noqa: E402

from gpupipe import schema  # noqa: E402
from gpupipe.device import resolve_device  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("digits", "fashion"), default="fashion")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--data", default=None, help="default: .bench/downstream[-fashion]")
    args = ap.parse_args()
    work = Path(args.data or (".bench/downstream" + ("" if args.dataset == "digits" else "-fashion")))
    recorded = {r["seed"]: r for r in json.loads((work / "results.json").read_text())["runs"]}
    dev = resolve_device("cpu")
    print("| seed | raw | curated | no balance | no balance, suspects in | clean | rows: curated / no balance / "
          "suspects in |\n|---|---|---|---|---|---|---|")
    out = []
    for seed in args.seeds:
        root = work / f"seed{seed}"
        test_files = sorted(str(p) for p in (root / "test").rglob("*.png"))
        test_y = [int(Path(p).parent.name) for p in test_files]
        d = pq.read_table(root / "run" / "ledger.parquet").to_pandas()
        status, reason = d[schema.BALANCE_STATUS], d[schema.BALANCE_REASON]
        usable = status.isin([schema.BAL_KEPT, schema.BAL_SURPLUS])
        sets = {"curated": status == schema.BAL_KEPT, "no balance": usable,
                "no balance, suspects in": usable | (reason == "suspect")}
        acc, rows = {}, {}
        for name, pick in sets.items():
            k = d[pick.to_numpy()]
            rows[name] = len(k)
            acc[name] = fit_and_test(dev, k[schema.PATH].tolist(), k[schema.BALANCE_LABEL].astype(int).tolist(),
                                     test_files, test_y, epochs=args.epochs, seed=seed)
        rec = recorded[seed]["accuracy"]
        out.append({"seed": seed, "accuracy": {**acc, "raw": rec["raw"], "clean": rec["clean"]}, "rows": rows})
        print(f"| {seed} | {rec['raw']:.4f} | {acc['curated']:.4f} | {acc['no balance']:.4f} | "
              f"{acc['no balance, suspects in']:.4f} | {rec['clean']:.4f} | "
              f"{' / '.join(str(v) for v in rows.values())} |", flush=True)
    (work / "variants.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
