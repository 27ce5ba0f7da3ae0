"""How many rows to flag as likely mislabeled (issue 25): cleanlab's count
against the count that maximises the flags' expected F1, on kept ranked runs.

    python benchmarks/bench_flag_count.py RUN [RUN ...]

Each RUN is a ranked, undecided run directory whose truth is known:
``bench_cifar10n.py``'s ``.bench/cifar10n-<noise>-<part>-10000/oof-<tag>``
(truth: the part's ``truth.json``, the original labels) or
``bench_outlier.py``'s ``.bench/outlier-<dataset>-<noise>/run`` (truth:
``planted.json``: the planted flips; planted images of no class count as
errors where they are flagged).  The flags' order is the shipped one
(`score.label_error_odds` of the model-and-votes mix); only the count
differs:

* cleanlab: ``find_label_issues`` on the mix, its defaults (the count
  `flag_label_issues` took before this study);
* expected F1: the count c maximising 2 * sum(q[:c]) / (c + sum(q)), q the
  probability that each row's label is wrong under `score.label_posterior`
  (temperature and noise rate fitted together) in the flags' order: the
  expected F1 of flagging the first c rows, were q calibrated (§29's count;
  since RESULTS.md §31 `flag_label_issues` scales q first:
  `benchmarks/bench_noise_rate.py` measures that one);
* posterior rate: the noise rate `label_posterior` estimates, times the rows;
* truth: as many as the errors there are (not known to a user: a ceiling
  for this order).

Prints, per run, the count, P, R and F1 of each, and the expected F1 the
tool would state beside its flags.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from gpupipe import schema
from gpupipe.device import resolve_device
from gpupipe.models.outlier import is_far
from gpupipe.models.score import flag_order, label_posterior, with_votes
from gpupipe.runner import LEDGER
from gpupipe.stages.rank import rows_of
from gpupipe.table import Ledger


def truth_of(run: Path) -> tuple[dict, set]:
    """(rel_path -> true label, rel_paths of planted images of no class)."""
    if (run.parent / "truth.json").exists():
        return json.loads((run.parent / "truth.json").read_text()), set()
    planted = json.loads((run.parent / "planted.json").read_text())
    return planted["true"], set(planted["outliers"])


def flagged_positions(run: Path):
    """The rows `rank` flags among in a ranked run (scored, eligible, not far
    from every class) -> (ledger, frame, `rows_of`, those positions (bool N),
    whether each of their labels is wrong (bool, one per position))."""
    ledger = Ledger(resolve_device("cpu"))
    frame = ledger.read(run / LEDGER)
    rows = rows_of(frame, ledger)
    rel = ledger.host(frame, schema.REL_PATH)[0].astype(str)
    has = ledger.host(frame, schema.RANK_PROBS)[1]
    use = has & rows.eligible & ~is_far(*ledger.host(frame, schema.RANK_OUTLIER))
    true, junk = truth_of(run)
    given = np.asarray(rows.classes, dtype=object)[rows.y[use]]
    err = np.array([r in junk or true.get(r, g) != g for r, g in zip(rel[use], given)])
    return ledger, frame, rows, use, err


def flagged_rows(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A ranked run's rows as `rank` flags them (`flagged_positions`) ->
    (labels (N,), probabilities (N, K) float64, the neighbours' votes (N, K),
    NaN where none, whether each label is wrong (N,) bool)."""
    ledger, frame, rows, use, err = flagged_positions(run)
    probs = ledger.host(frame, schema.RANK_PROBS)[0]
    votes, has_votes = ledger.host(frame, schema.RANK_VOTES)
    return (rows.y[use], probs[use].astype(np.float64), np.where(has_votes[use, None], votes[use], np.nan), err)


def ranked(run: Path):
    """`flagged_rows` with what the flags are made of: (labels, probabilities,
    votes, wrong, the model-and-votes mix, the flags' order, its label posterior)."""
    y, p, votes, err = flagged_rows(run)
    mix = with_votes(p, votes)
    return y, p, votes, err, mix, flag_order(y, mix), label_posterior(y, mix)


def counts(run: Path) -> dict:
    y, p, votes, err, mix, order, lp = ranked(run)
    n = len(y)
    q = (1.0 - lp.post[np.arange(n), y])[order]
    expected = 2 * np.cumsum(q) / (np.arange(1, n + 1) + q.sum())

    from cleanlab.filter import find_label_issues

    def prf(c: int) -> dict:
        tp = int(err[order[:c]].sum())
        pr, rc = tp / max(c, 1), tp / max(int(err.sum()), 1)
        return {"count": c, "P": round(pr, 3), "R": round(rc, 3), "F1": round(2 * pr * rc / max(pr + rc, 1e-12), 3)}

    best = int(np.argmax(expected)) + 1
    return {"run": str(run), "rows": n, "errors": int(err.sum()),
            "estimated_noise_rate": round(lp.noise_rate, 4), "expected_f1_at_its_count": round(float(expected.max()), 3),
            "cleanlab": prf(int(find_label_issues(y, mix, n_jobs=1).sum())), "expected F1": prf(best),
            "posterior rate": prf(int(round(lp.noise_rate * n))), "truth": prf(int(err.sum()))}


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("| run | rows | errors | est. noise | cleanlab: count, P, R, F1 | expected F1: count, P, R, F1 "
          "(stated F1) | posterior rate: count, F1 | truth count: F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for run in sys.argv[1:]:
        c = counts(Path(run))
        cl, ef, pr, tr = c["cleanlab"], c["expected F1"], c["posterior rate"], c["truth"]
        print(f"| {run} | {c['rows']} | {c['errors']} | {c['estimated_noise_rate']:.3f} | {cl['count']}, {cl['P']}, "
              f"{cl['R']}, **{cl['F1']}** | {ef['count']}, {ef['P']}, {ef['R']}, **{ef['F1']}** "
              f"({c['expected_f1_at_its_count']}) | {pr['count']}, {pr['F1']} | {tr['F1']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
