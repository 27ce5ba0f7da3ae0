"""The outlier-removal rule over several automatic rounds: which rule removes
the images of no class and leaves clean rows alone?  (Issue 12, item 4: the
rule `--remove-outlier` was first off by default because, over the demo's
three rounds, each round's new model put another tail of clean digits past
4; this benchmark chose its default, RESULTS.md §14-15.)

Real images with planted label flips and planted images of no class
(`bench_outlier.build`; ``--outliers 0`` for a set without them, like the
demo's), deduplicated, then ``--rounds`` automatic out-of-fold rounds with the
default policy (the outlier rule off), keeping each round's outlier scores.
Then, offline, each candidate rule over those scores: a row is removed the
first round the rule fires on it while it is still open (rows the policy
decided leave the count of later rounds, as in the loop).

* once: outlier score >= T in one round (the current `--remove-outlier T`);
* twice: >= T in two consecutive rounds in which it was scored (two models,
  trained on different folds, both put it far from every class).

Counts, with the default policy's own removals (``--remove-prob``) included:
planted outliers removed (of those scored), flips removed, clean rows removed.  The loop's own decisions do not depend on the rule here, so this
is an approximation of running it: a rule that removes a row earlier changes
the next round's training data by that row.

    python benchmarks/bench_outlier_rounds.py --dataset digits|fashion [--outliers 0.03] [--rounds 3]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_outlier import add_data_args, prepare  # noqa: E402

from gpupipe import schema  # noqa: E402
from gpupipe.loop import RankOptions, run_rank  # noqa: E402
from gpupipe.models.train import TrainConfig  # noqa: E402
from gpupipe.runner import LEDGER  # noqa: E402

THRESHOLDS = (4.0, 5.0, 6.0, 7.0, 8.0, 10.0)


def simulate(scores: list[np.ndarray], open_before: list[np.ndarray], threshold: float, times: int) -> np.ndarray:
    """Round each row is removed in by the rule (0: never).  scores[r]: the
    outlier score of round r+1 (NaN where not scored); open_before[r]: the
    row was open when round r+1 scored it."""
    n = len(scores[0])
    removed = np.zeros(n, np.int32)
    streak = np.zeros(n, np.int32)
    for r, (s, o) in enumerate(zip(scores, open_before)):
        scored = o & ~np.isnan(s) & (removed == 0)
        far = scored & (np.nan_to_num(s, nan=-np.inf) >= threshold)
        streak = np.where(far, streak + 1, np.where(scored, 0, streak))
        removed[(removed == 0) & (streak >= times)] = r + 1
    return removed


def run_rounds(args, base: Path):
    """Build, deduplicate and run the rounds; save what the rules need (rounds.npz)."""
    planted, run = prepare(args, base)
    from gpupipe.stages.review import AutoPolicy

    # The loop with the outlier rule off (each rule is replayed over its scores below).
    opts = dict(device="cpu", review="auto", mode="oof", folds=args.folds, seed=args.seed,
                train=TrainConfig(max_epochs=args.epochs, lr_decay=args.lr_decay, schedule=args.schedule),
                policy=AutoPolicy(remove_outlier=None))
    t0 = time.perf_counter()
    scores, open_before, rel = [], [], None
    for r in range(1, args.rounds + 1):
        before = pq.read_table(run / LEDGER).to_pandas()
        status_before = (before[schema.REVIEW_STATUS].isna().to_numpy() if schema.REVIEW_STATUS in before
                         else np.ones(len(before), bool))
        res = run_rank(run, RankOptions(max_rounds=r, **opts))
        t = pq.read_table(run / LEDGER).to_pandas()
        rel = t[schema.REL_PATH].to_numpy()
        this = (t[schema.RANK_ROUND] == r).to_numpy()
        scores.append(np.where(this, t[schema.RANK_OUTLIER].to_numpy(float), np.nan))
        open_before.append(status_before & this)
        if res.stopped != "max rounds":
            break
    seconds = time.perf_counter() - t0
    final = pq.read_table(run / LEDGER).to_pandas()
    by_policy = (final[schema.REVIEW_STATUS] == schema.STATUS_REMOVED).to_numpy()
    is_out = np.isin(rel, list(planted["outliers"]))
    is_flip = np.isin(rel, planted["flipped"])
    np.savez(base / "rounds.npz", scores=np.stack(scores), open_before=np.stack(open_before), rel=rel,
             by_policy=by_policy, is_out=is_out, is_flip=is_flip, seconds=seconds)
    return scores, open_before, rel, by_policy, is_out, is_flip, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(ap)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="only the rules, over the scores an earlier run saved")
    args = ap.parse_args()
    name = f"outlier-rounds-{args.dataset}-{args.noise}-{args.outliers}"
    base = Path(args.data) / name
    if args.reuse:
        saved = np.load(base / "rounds.npz", allow_pickle=True)
        scores, open_before, rel, by_policy = (list(saved["scores"]), list(saved["open_before"]), saved["rel"],
                                               saved["by_policy"])
        is_out, is_flip = saved["is_out"], saved["is_flip"]
        seconds = float(saved["seconds"])
    else:
        scores, open_before, rel, by_policy, is_out, is_flip, seconds = run_rounds(args, base)
    clean = ~is_out & ~is_flip
    ever = np.zeros(len(rel), bool)
    for s in scores:
        ever |= ~np.isnan(s)
    rows = [{"threshold": None, "rounds_far": 0, "outliers_removed": int((by_policy & is_out).sum()),
             "outliers_scored": int((ever & is_out).sum()), "flips_removed": int((by_policy & is_flip).sum()),
             "clean_removed": int((by_policy & clean).sum()), "clean_removed_per_round": []}]
    for th in THRESHOLDS:
        for times in (1, 2):
            removed = (simulate(scores, open_before, th, times) > 0) | by_policy     # the rule adds to the policy
            rows.append({"threshold": th, "rounds_far": times, "outliers_removed": int((removed & is_out).sum()),
                         "outliers_scored": int((ever & is_out).sum()), "flips_removed": int((removed & is_flip).sum()),
                         "clean_removed": int((removed & clean).sum()),
                         "clean_removed_per_round": [int(((simulate(scores, open_before, th, times) == r + 1)
                                                          & clean).sum()) for r in range(len(scores))]})
    out = {"dataset": args.dataset, "noise": args.noise, "outliers": args.outliers, "rounds": len(scores),
           "rows": len(rel), "seconds_rounds": round(seconds, 1), "rules": rows, "args": vars(args),
           "machine": f"{platform.node()} ({platform.machine()})", "date": time.strftime("%Y-%m-%d")}
    (Path(args.data) / f"{name}.json").write_text(json.dumps(out, indent=1))
    print(f"{args.dataset}, {args.noise} flips {args.rate}, outliers {args.outliers}: {len(scores)} rounds, "
          f"{seconds:.0f} s")
    print("| T | far in | outliers removed | flips removed | clean removed (by the rule, per round) |\n"
          "|---|---|---|---|---|")
    for r in rows:
        rule = "off | -" if r["threshold"] is None else \
            f"{r['threshold']} | {r['rounds_far']} round{'s' if r['rounds_far'] > 1 else ''}"
        print(f"| {rule} | "
              f"{r['outliers_removed']} of {r['outliers_scored']} | {r['flips_removed']} | "
              f"{r['clean_removed']} {r['clean_removed_per_round']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
