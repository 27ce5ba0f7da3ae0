"""Do the neighbours' votes for a row's old label tell a wrong automatic
relabel from a right one?  (Issue 12: the signal the audit queue orders by,
and why it is not a rule of the automatic policy.)

    python benchmarks/bench_vote_guard.py downstream [--dataset fashion|digits] [--data DIR]
    python benchmarks/bench_vote_guard.py round1 --dataset digits|fashion --noise symmetric|pair
        [--offset 20000] [--seed 7]

``downstream``: the last round's automatic relabels of the curate runs
``bench_downstream.py`` left (the ledger keeps the scores they were decided
on), right and wrong against the planted truth, by how many of the row's 30
nearest training images vote for its old label (`rank_neighbour_votes`).

``round1``: the relabels the automatic policy would make in one
out-of-fold round (the model's top class is another with p >= 0.9, the row
not far from every class) on the planted sets of RESULTS.md §15-16, from
the fold models ``bench_outlier_features.py`` saved, with the votes rank
computes (every block, k=30): how many right and wrong ones a guard "no
relabel when m or more neighbours vote for the old label" would stop.
No training: seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

K_VOTES = 30          # rank's neighbours (`models.outlier.knn_vote`, k=30)
GUARDS = (1, 2, 3, 4, 6)


def vote_count(share: np.ndarray, classes: int) -> np.ndarray:
    """The stored, smoothed vote share ((n + 1) / (K_VOTES + classes)) -> n."""
    return np.rint(share * (K_VOTES + classes) - 1).astype(int)


def downstream(args) -> int:
    from bench_decisions_by_round import decisions_against_truth
    from bench_downstream import recorded_runs

    work, run_args, labels = recorded_runs(args)
    parts = []
    for seed in args.seeds:
        d = decisions_against_truth(work, labels, seed, flip_rate=run_args.get("flip_rate", 0.15),
                                    imbalance=run_args.get("imbalance", 1.0))
        last = d[(d["action"] == "relabel") & d["given_prob"].notna()].copy()
        run = work / f"seed{seed}" / "run"
        classes = json.loads((run / "rank.json").read_text())["classes"]
        votes = pd.read_parquet(run / "ledger.parquet", columns=["sample_id", "rank_neighbour_votes"]) \
            .set_index("sample_id").loc[last["sample_id"], "rank_neighbour_votes"]
        old = [classes.index(str(lab)) for lab in last["label_before"]]
        share = np.array([v[j] for v, j in zip(votes, old)])
        last["old_votes"] = vote_count(share, len(classes))
        parts.append(last)
    x = pd.concat(parts)
    print(f"{work}: the last round's {len(x)} automatic relabels (seeds {args.seeds}), "
          f"{int(x['right'].sum())} right\n")
    print("| neighbours voting for the old label | wrong relabels | right relabels |")
    print("|---|---|---|")
    for n, g in x.groupby("old_votes"):
        print(f"| {n} | {int((~g['right']).sum())} | {int(g['right'].sum())} |")
    for m in GUARDS:
        g = x["old_votes"] >= m
        print(f"- {m} or more: {int((~x['right'][g]).sum())} of {int((~x['right']).sum())} wrong, "
              f"{int(x['right'][g].sum())} of {int(x['right'].sum())} right")
    return 0


def round1(args) -> int:
    from bench_flag_signals import fold_parts
    from bench_outlier import planted_of, set_name

    from gpupipe.models.outlier import FAR, knn_vote

    name = set_name(args)
    z = dict(np.load(Path(args.data) / f"outlier-features-{name}.npz", allow_pickle=False))
    planted = planted_of(args, Path(args.data) / f"outlier-{name}")
    ncls = len(z["classes"])
    rows, far, logits, votes = [], [], [], []
    for scored, y_ref, sb, rb, outlier, fold_logits in fold_parts(z, args.folds):
        rows.append(scored)
        far.append(outlier)
        logits.append(fold_logits)
        votes.append(knn_vote(sb, rb, y_ref, ncls, k=K_VOTES).astype(np.float64))
    rows = np.concatenate(rows)
    far = np.concatenate(far) >= FAR
    p = torch.softmax(torch.as_tensor(np.concatenate(logits), dtype=torch.float64), 1).numpy()
    v = np.concatenate(votes)
    rel, y, classes = z["rel"][rows], z["y"][rows], list(z["classes"])
    true = np.array([classes.index(planted["true"][r]) if r in planted["true"] else y[i]
                     for i, r in enumerate(rel)])
    of_no_class = np.isin(rel, list(planted["outliers"]))
    pred = p.argmax(1)
    relabel = ~far & ~of_no_class & (pred != y) & (p.max(1) >= 0.9)
    right = pred == true
    old_votes = vote_count(v[np.arange(len(y)), y], ncls)
    print(f"{name}: one out-of-fold round would relabel {int(relabel.sum())}, {int(right[relabel].sum())} "
          f"to the true class")
    for m in GUARDS:
        stop = relabel & (old_votes >= m)
        print(f"- guard at {m}: stops {int((stop & ~right).sum())} of {int((relabel & ~right).sum())} wrong, "
              f"{int((stop & right).sum())} of {int((relabel & right).sum())} right")
    return 0


def main() -> int:
    from bench_downstream import add_runs_args
    from bench_outlier import add_data_args

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    add_runs_args(sub.add_parser("downstream"))
    b = sub.add_parser("round1")
    add_data_args(b)
    args = ap.parse_args()
    return downstream(args) if args.what == "downstream" else round1(args)


if __name__ == "__main__":
    sys.exit(main())
