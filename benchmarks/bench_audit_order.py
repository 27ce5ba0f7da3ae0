"""Which rows of an unattended run should a person check first?  The audit
queue (`gpupipe.stages.review.audit_queue`, what `--review auto` writes to
RUN_DIR/review/audit.csv) against the planted truth of the curate runs
``bench_downstream.py`` left.

    python benchmarks/bench_audit_order.py [--dataset digits|fashion] [--seeds 0 1 2]
        [--data .bench/downstream-fashion]

Per seed: the label errors the curated set keeps (originals whose label
now is not their true class: wrong automatic relabels and flips left open),
and how many of them a person fixes in the first B reviews of five orders
of the same rows:

* audit: the audit queue (the automatic relabels, each by how much the
  latest scores still back the given label, in turn with the open rows
  the set keeps, by the review order's label key; then the removes);
* relabels first: the same relabels, then the same open rows, then removes;
* open first: the same open rows, then the same relabels, then removes;
* later relabels first: the relabels, latest round first (§5.5's "later
  relabels reviewed"), then the open rows, then the removes;
* random: the queue's rows in a seeded random order.

B is the number of relabels after round 1 (§5.5's budget), 20, 50 and
100.  Also: the clean rows the policy removed (a wrong remove) among the
queue.  Files that are not planted originals (copies) count as reviews,
never as errors.  No training: seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_downstream import add_runs_args, original_positions, recorded_runs, train_positions  # noqa: E402

from gpupipe import schema  # noqa: E402
from gpupipe.device import resolve_device  # noqa: E402
from gpupipe.stages.review import audit_queue  # noqa: E402
from gpupipe.table import Ledger  # noqa: E402


def orders(q: pd.DataFrame, seed: int) -> dict[str, np.ndarray]:
    """Positions into ``q`` (the audit queue) for each order compared."""
    action = q["auto_action"].to_numpy()
    n = np.arange(len(q))
    kind = np.select([action == "relabel", action == "open"], [0, 1], 2)
    later = np.lexsort((n, -q["auto_round"].to_numpy(), kind))
    first = np.select([action == "open", action == "relabel"], [0, 1], 2)
    return {"audit": n, "relabels first": np.lexsort((n, kind)), "later relabels first": later,
            "open first": np.lexsort((n, first)), "random": np.random.default_rng(seed).permutation(len(q))}


BUDGETS = (20, 50, 100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_runs_args(ap)
    args = ap.parse_args()
    work, run_args, labels = recorded_runs(args)
    ledger = Ledger(resolve_device("cpu"))
    names = ("audit", "relabels first", "later relabels first", "open first", "random")
    print(f"{work}: label errors the curated set keeps, fixed in the first B reviews\n")
    print("| seed | errors kept (wrong relabels + open) | in the queue | wrong removes | B | "
          + " | ".join(names) + " | " + " | ".join(f"audit / later, B={b}" for b in BUDGETS) + " |")
    print("|---" * (5 + len(names) + len(BUDGETS)) + "|")
    out = []
    for seed in args.seeds:
        run = work / f"seed{seed}" / "run"
        d = pq.read_table(run / "ledger.parquet").to_pandas()
        true_label = labels[train_positions(labels, seed, run_args.get("imbalance", 1.0))]
        index = original_positions(d[schema.REL_PATH], len(true_label))
        truth = pd.Series(np.where(index >= 0, true_label[np.maximum(index, 0)].astype(str), None),
                          index=d[schema.SAMPLE_ID])
        now = np.where(d[schema.REVIEW_LABEL].notna(), d[schema.REVIEW_LABEL], d[schema.LABEL]).astype(str)
        # The set today's default (--balance none) keeps: every usable row (the
        # runs of RESULTS.md §5.2-5.4 may have cut some to surplus).
        kept = d[schema.BALANCE_STATUS].isin([schema.BAL_KEPT, schema.BAL_SURPLUS]).to_numpy()
        errors_kept = int((kept & (index >= 0) & (truth.to_numpy(object) != now)).sum())
        q = audit_queue(ledger.read(run / "ledger.parquet"), ledger,
                        json.loads((run / "rank.json").read_text())["classes"])
        t = truth.loc[q["sample_id"]].to_numpy(object)
        action = q["auto_action"].to_numpy()
        original = pd.notna(t)
        error = (action != "remove") & original & (q["label"].astype(str).to_numpy() != t)
        wrong_remove = (action == "remove") & original & (t == q["given_label"].astype(str).to_numpy())
        budget = int(((action == "relabel") & (q["auto_round"] >= 2).to_numpy()).sum())
        o = orders(q, seed)
        found = {(name, b): int(error[pos[:b]].sum()) for name, pos in o.items() for b in (budget, *BUDGETS)}
        print(f"| {seed} | {errors_kept} | {int(error.sum())} | {int(wrong_remove.sum())} | {budget} | "
              + " | ".join(f"{found[name, budget]}" for name in names) + " | "
              + " | ".join(f"{found['audit', b]} / {found['later relabels first', b]}" for b in BUDGETS) + " |")
        out.append({"seed": seed, "errors_kept": errors_kept, "errors_in_queue": int(error.sum()),
                    "wrong_removes": int(wrong_remove.sum()), "rows": len(q), "budget": budget,
                    "found": {f"{name}@{b}": v for (name, b), v in found.items()}})
    (work / "audit-order.json").write_text(json.dumps({"args": vars(args), "runs": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
