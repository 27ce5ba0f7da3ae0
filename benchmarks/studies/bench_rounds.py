"""Does averaging a row's probabilities over the loop's rounds find more of the
label errors that are left?  (Issue 12, item 1: scores averaged over what the
loop already trains.)

Real images with planted label flips (`bench_outlier.build`, no outliers),
deduplicated, then two out-of-fold rounds with the automatic policy
(``--review auto``), keeping the ledger after each.  Every row still open
after round 1 was scored by two models that never trained on it (round 1's
fold model and round 2's; the folds are drawn anew each round).  Over those
rows, against the flips still in them:

* average precision of the loss of the given label, from round 2's
  probabilities alone and from the mean of rounds 1 and 2;
* flag precision / recall / F1 (`models.score.flag_label_issues`) from each;
* what the automatic policy (defaults) would do with each: flips relabeled
  to the true class, clean rows damaged.

    python benchmarks/bench_rounds.py --dataset digits|fashion [--n 10000] [--noise symmetric|pair]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_outlier import add_data_args, average_precision, prepare  # noqa: E402

from gpupipe import schema  # noqa: E402
from gpupipe.loop import RankOptions, run_rank  # noqa: E402
from gpupipe.models.score import flag_label_issues  # noqa: E402
from gpupipe.models.train import TrainConfig  # noqa: E402
from gpupipe.runner import LEDGER  # noqa: E402
from gpupipe.stages.review import AutoPolicy  # noqa: E402


def _prf(flag: np.ndarray, truth: np.ndarray) -> list[float]:
    tp = (flag & truth).sum()
    p, r = tp / max(1, flag.sum()), tp / max(1, truth.sum())
    return [round(float(p), 3), round(float(r), 3), round(float(2 * p * r / max(p + r, 1e-9)), 3)]


def measure(probs: np.ndarray, given: np.ndarray, true: np.ndarray, classes: list[str]) -> dict:
    n = len(given)
    is_err = given != true
    pg = probs[np.arange(n), given]
    loss = -np.log(np.maximum(pg, 1e-12))
    flags = flag_label_issues(given, probs)
    pol = AutoPolicy()
    top, pred = probs.max(1), probs.argmax(1)
    relabel = (pred != given) & (top >= pol.relabel_prob)
    confirm = (pred == given) & (pg >= pol.accept_prob)
    remove = (pred != given) & ~relabel & (pg <= pol.remove_prob)
    return {"ap_loss": round(average_precision(loss, is_err), 4), "flags_p_r_f1": _prf(flags, is_err),
            "auto_relabeled_right": int((relabel & is_err & (pred == true)).sum()),
            "auto_relabeled_wrong": int((relabel & (pred != true)).sum()),
            "auto_removed_errors": int((remove & is_err).sum()),
            "auto_clean_damaged": int(((relabel | remove) & ~is_err).sum()),
            "auto_errors_confirmed": int((confirm & is_err).sum())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(ap, outliers=None)
    args = ap.parse_args()
    args.outliers = 0.0
    base = Path(args.data) / f"rounds-{args.dataset}-{args.noise}"
    planted, run = prepare(args, base)
    t0 = time.perf_counter()
    opts = dict(device="cpu", review="auto", mode="oof", folds=args.folds, seed=args.seed,
                train=TrainConfig(max_epochs=args.epochs))
    run_rank(run, RankOptions(max_rounds=1, **opts))
    first = pq.read_table(run / LEDGER).to_pandas()
    run_rank(run, RankOptions(max_rounds=2, **opts))
    second = pq.read_table(run / LEDGER).to_pandas()
    seconds = time.perf_counter() - t0
    state = json.loads((run / "rank.json").read_text())
    classes = [str(c) for c in state["classes"]]
    index = {c: i for i, c in enumerate(classes)}
    # Open after round 1 (the policy left them), scored again in round 2.
    both = first[schema.REVIEW_STATUS].isna() & first[schema.RANK_LOSS].notna() & (second[schema.RANK_ROUND] == 2)
    rel = second.loc[both, schema.REL_PATH].to_numpy()
    given = second.loc[both, schema.LABEL].map(index).to_numpy()
    flipped = set(planted["flipped"])
    true = np.array([index[planted["true"][r]] if r in flipped else g for r, g in zip(rel, given)])
    p1 = np.stack(first.loc[both, schema.RANK_PROBS].to_numpy()).astype(np.float64)
    p2 = np.stack(second.loc[both, schema.RANK_PROBS].to_numpy()).astype(np.float64)
    out = {"dataset": args.dataset, "noise": args.noise, "rows_open_after_round_1": int(both.sum()),
           "errors_left": int((given != true).sum()), "seconds_two_rounds": round(seconds, 1),
           "val_accuracy": [r.get("val_accuracy") for r in state["rounds"]],
           "round 2 alone": measure(p2, given, true, classes),
           "mean of rounds 1 and 2": measure((p1 + p2) / 2, given, true, classes),
           "round 1 alone": measure(p1, given, true, classes),
           "args": vars(args), "machine": f"{platform.node()} ({platform.machine()})",
           "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out, indent=1))
    (Path(args.data) / f"rounds-{args.dataset}-{args.noise}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
