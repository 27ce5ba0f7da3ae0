"""How right is each round of the automatic policy?  Its decisions in the
curate runs ``bench_downstream.py`` left, against the planted truth.

    python benchmarks/bench_decisions_by_round.py [--dataset digits|fashion] [--seeds 0 1 2]
        [--data .bench/downstream-fashion]

Per action (confirm, relabel, remove) and round, how many decisions were
right and wrong, per seed: a confirm is right when the given label was not
flipped, a relabel when the new label is the true class, a remove when the
label was flipped (a clean row removed is a wrong one).  The decisions are
read from ``<data>/seed<N>/run/decisions.parquet``; duplicates and invalid
files (not planted originals) are left out.  Reads the run's flip rate and
long tail from its results.json.  No training: seconds.

Then the last round's relabels by the scores they were decided on (the
ledger keeps the last round's scores, so only that round's decisions can
be read this way): right / all at thresholds of the top class's
probability and of the given label's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_downstream import add_runs_args, original_positions, recorded_runs, train_positions  # noqa: E402

from gpupipe.datasets import flip_labels  # noqa: E402


def decisions_against_truth(work: Path, labels: np.ndarray, seed: int, *, flip_rate: float,
                            imbalance: float) -> pd.DataFrame:
    """The seed's decisions on planted originals (``labels``: the dataset's, as
    `bench_downstream.load` gives them), with ``right`` (bool), and for the
    last round's decisions the scores they were made on (``given_prob``,
    ``top_prob``; NaN for earlier rounds)."""
    positions = train_positions(labels, seed, imbalance)
    _, flipped = flip_labels(labels[positions], rate=flip_rate, seed=seed)
    d = pd.read_parquet(work / f"seed{seed}" / "run" / "decisions.parquet")
    index = original_positions(d["rel_path"], len(positions))
    d = d[index >= 0].copy()
    i = index[index >= 0]
    true = labels[positions][i].astype(str)
    d["right"] = np.where(d["action"] == "relabel", d["label_after"].astype(str) == true,
                          np.where(d["action"] == "remove", flipped[i], ~flipped[i]))
    d["seed"] = seed
    last = d["round"] == d["round"].max()
    ledger = pd.read_parquet(work / f"seed{seed}" / "run" / "ledger.parquet",
                             columns=["sample_id", "rank_probs", "rank_prob_given"])
    scores = ledger.set_index("sample_id").loc[d.loc[last, "sample_id"]]
    d.loc[last, "given_prob"] = scores["rank_prob_given"].to_numpy()
    d.loc[last, "top_prob"] = [np.nanmax(p) for p in scores["rank_probs"]]
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_runs_args(ap)
    args = ap.parse_args()
    work, run_args, labels = recorded_runs(args)
    d = pd.concat([decisions_against_truth(work, labels, s, flip_rate=run_args.get("flip_rate", 0.15),
                                           imbalance=run_args.get("imbalance", 1.0)) for s in args.seeds])
    t = d.groupby(["action", "round", "seed"])["right"].agg(["sum", "count"]).unstack("seed")
    print(f"{work}: right / all decisions on planted originals, per seed {args.seeds}\n")
    print("| action | round | " + " | ".join(f"seed {s}" for s in args.seeds) + " | all seeds |")
    print("|---|---|" + "---|" * (len(args.seeds) + 1))
    for (action, rnd), row in t.iterrows():
        cells = [f"{int(row[('sum', s)])} / {int(row[('count', s)])}" for s in args.seeds]
        right, count = sum(int(row[("sum", s)]) for s in args.seeds), sum(int(row[("count", s)]) for s in args.seeds)
        print(f"| {action} | {rnd} | " + " | ".join(cells) + f" | {right} / {count} ({right / count:.0%}) |")
    last = d[(d["action"] == "relabel") & d["given_prob"].notna()]
    print(f"\nthe last round's {len(last)} relabels (all seeds) by the scores they were decided on: right / kept "
          "(right / wrong left open)")
    for col, cuts, keep in (("top_prob", (0.9, 0.95, 0.98, 0.99), np.greater_equal),
                            ("given_prob", (0.001, 0.003, 0.01, 0.02, 0.05), np.less_equal)):
        for t in cuts:
            k = keep(last[col], t)
            print(f"- {col} {'>=' if keep is np.greater_equal else '<='} {t}: {last.right[k].sum()} / {k.sum()} "
                  f"({last.right[~k].sum()} / {(~last.right[~k]).sum()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
