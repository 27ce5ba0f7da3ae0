"""The area under the margin as a third opinion in the flags' order: kept
out-of-fold runs whose ledger has `rank_train_margin` (issue 25, RESULTS.md §36).

    python benchmarks/studies/bench_train_margin.py RUN [RUN ...]

RUN as for `benchmarks/bench_flag_count.py` (its truth files).  For each run,
on the rows `rank` flags among (scored, eligible, not far from every class):

- F1 at the true count (flag exactly as many rows as are wrong) of three
  orders: the odds alone (`score.flag_order` without margins, the order
  before §36), the margin alone (lowest first), and both (`flag_order` with
  margins, the shipped one);
- the flags `flag_label_issues` makes with and without the margins (count,
  P, R, F1), with the run's number of models (`rank_model_probs`);
- the review order's share of the wrong labels in its first 1x (as many
  rows as are wrong): its label part (`review.label_suspicion`: the loss of
  the model mixed with the votes) without and with the margins.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_flag_count import flagged_positions  # noqa: E402

from gpupipe import schema  # noqa: E402


def rows(run: Path):
    """`bench_flag_count.flagged_positions`' rows -> (labels, probabilities, votes,
    margins (NaN where none), wrong, the run's number of models, loss, P(given),
    the neighbours' vote for the given label)."""
    from gpupipe.stages.review import each_model

    ledger, frame, r, use, err = flagged_positions(run)
    votes, has_votes = ledger.host(frame, schema.RANK_VOTES)

    def floats(name: str) -> np.ndarray:          # NaN where null, or where a run before §36 lacks the column
        if name not in frame.columns:
            return np.full(int(use.sum()), np.nan)
        v, has = ledger.host(frame, name)
        return np.where(has, v, np.nan)[use].astype(np.float64)

    each = each_model(frame, ledger, len(r.classes))
    models = each[0].shape[1] if each is not None and each[1][use].all() else 1
    return (r.y[use], ledger.host(frame, schema.RANK_PROBS)[0][use].astype(np.float64),
            np.where(has_votes[use, None], votes[use], np.nan), floats(schema.RANK_TRAIN_MARGIN), err, models, floats(schema.RANK_LOSS),
            floats(schema.RANK_PROB_GIVEN), floats(schema.RANK_VOTE_GIVEN))


def prf(flags: np.ndarray, err: np.ndarray) -> tuple[int, float, float, float]:
    tp = int((flags & err).sum())
    p, r = tp / max(int(flags.sum()), 1), tp / max(int(err.sum()), 1)
    return int(flags.sum()), p, r, 2 * p * r / max(p + r, 1e-12)


def main() -> int:
    from gpupipe.models.score import flag_label_issues, flag_order, with_votes
    from gpupipe.stages.review import label_suspicion

    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("| run | rows, wrong | models | margins | F1 at the true count: odds / margin / both | "
          "flags without margins: count, P, R, F1 | with: count, P, R, F1 | review top 1x: without / with |")
    print("|---|---|---|---|---|---|---|---|")
    for run in map(Path, sys.argv[1:]):
        y, p, votes, margin, err, models, loss, pg, vote = rows(run)
        mix = with_votes(p, votes)
        n_err = int(err.sum())
        at_true = []
        for order in (flag_order(y, mix), np.argsort(np.nan_to_num(margin, nan=np.inf), kind="stable"),
                      flag_order(y, mix, margin)):
            at_true.append(err[order[:n_err]].mean())
        without = prf(flag_label_issues(y, p, votes, models=models), err)
        with_m = prf(flag_label_issues(y, p, votes, models=models, margins=margin), err)
        review = [err[np.argsort(-label_suspicion(loss, pg, vote, m), kind="stable")[:n_err]].mean()
                  for m in (None, margin)]
        print(f"| {run} | {len(y)}, {n_err} | {models} | {np.isfinite(margin).mean():.3f} | "
              + " / ".join(f"{v:.3f}" for v in at_true) + " | "
              + ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in without) + " | "
              + ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in with_m) + " | "
              + " / ".join(f"{v:.3f}" for v in review) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
