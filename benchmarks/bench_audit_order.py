"""Which automatic decisions should a person check first?  The audit queue
(`gpupipe.stages.review.audit_queue`, what `--review auto` writes to
RUN_DIR/review/audit.csv) against the planted truth of the curate runs
``bench_downstream.py`` left.

    python benchmarks/bench_audit_order.py [--dataset digits|fashion] [--seeds 0 1 2]
        [--data .bench/downstream-fashion]

Per seed: the automatic policy's relabels and removes, how many are wrong (a
relabel to another class than the true one; a clean row removed), and how
many wrong relabels (the decisions that leave a label error in the curated
set) a person finds in the first B reviews of three orders:

* audit: the audit queue (relabels first, each by how much the latest
  round's scores still back the given label);
* by round: the relabels, latest round first (the order §5.5's "later
  relabels reviewed" took), then the removes, latest first;
* random: the same decisions in a seeded random order.

B is the number of relabels after round 1 (§5.5's budget), 20 and 50.
Files that are not planted originals (copies) count as reviews, never as
wrong.  No training: seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decisions_by_round import decisions_against_truth  # noqa: E402
from bench_downstream import load  # noqa: E402

from gpupipe import schema  # noqa: E402
from gpupipe.device import resolve_device  # noqa: E402
from gpupipe.stages.review import audit_queue  # noqa: E402
from gpupipe.table import Ledger  # noqa: E402


def orders(q: pd.DataFrame, seed: int) -> dict[str, np.ndarray]:
    """Positions into ``q`` (the audit queue) for each order compared."""
    relabel = (q["auto_action"] == "relabel").to_numpy()
    by_round = np.lexsort((np.arange(len(q)), -q["auto_round"].to_numpy(), ~relabel))
    return {"audit": np.arange(len(q)), "by round": by_round,
            "random": np.random.default_rng(seed).permutation(len(q))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("digits", "fashion"), default="fashion")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data", default=None, help="default: .bench/downstream[-fashion]")
    args = ap.parse_args()
    work = Path(args.data or (".bench/downstream" + ("" if args.dataset == "digits" else "-fashion")))
    results = work / "results.json"
    run_args = json.loads(results.read_text()).get("args", {}) if results.exists() else {}
    labels = load(args.dataset, run_args.get("n", 2500))[1]
    ledger = Ledger(resolve_device("cpu"))
    print(f"{work}: wrong relabels found in the first B reviews (of all wrong relabels)\n")
    print("| seed | relabels / wrong | removes / wrong | B | audit | by round | random | "
          "audit, B=20 | by round, B=20 | audit, B=50 | by round, B=50 |")
    print("|---" * 11 + "|")
    out = []
    for seed in args.seeds:
        run = work / f"seed{seed}" / "run"
        d = decisions_against_truth(work, labels, seed, flip_rate=run_args.get("flip_rate", 0.15),
                                    imbalance=run_args.get("imbalance", 1.0))
        wrong_ids = set(d.loc[~d["right"] & (d["action"] != "confirm"), "sample_id"].tolist())
        q = audit_queue(ledger.read(run / "ledger.parquet"), ledger,
                        json.loads((run / "rank.json").read_text())["classes"])
        wrong = q["sample_id"].isin(wrong_ids).to_numpy()
        relabel = (q["auto_action"] == "relabel").to_numpy()
        budget = int((relabel & (q["auto_round"] >= 2).to_numpy()).sum())
        o = orders(q, seed)
        found = {(name, b): int((wrong & relabel)[pos[:b]].sum()) for name, pos in o.items() for b in (budget, 20, 50)}
        n_wr, n_wm = int((wrong & relabel).sum()), int((wrong & ~relabel).sum())
        print(f"| {seed} | {int(relabel.sum())} / {n_wr} | {int((~relabel).sum())} / {n_wm} | {budget} | "
              f"**{found['audit', budget]}** | {found['by round', budget]} | {found['random', budget]} | "
              f"{found['audit', 20]} | {found['by round', 20]} | {found['audit', 50]} | {found['by round', 50]} |")
        out.append({"seed": seed, "relabels": int(relabel.sum()), "wrong_relabels": n_wr,
                    "removes": int((~relabel).sum()), "wrong_removes": n_wm, "budget": budget,
                    "found": {f"{name}@{b}": v for (name, b), v in found.items()}})
    (work / "audit-order.json").write_text(json.dumps({"args": vars(args), "runs": out}, indent=1))
    assert schema.SAMPLE_ID == "sample_id"            # the queue's id column is the ledger's
    return 0


if __name__ == "__main__":
    sys.exit(main())
