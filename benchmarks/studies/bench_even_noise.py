"""The flags against their two parameters on kept ranked runs with known truth
(issue 25, RESULTS.md §31.4): `score.EVEN_NOISE` (the share of each class's
estimated noise spread evenly over the other classes, in the order) or, with
``--votes``, `score.VOTE_SHARE` (the neighbours' votes' share of the mix).

    python benchmarks/studies/bench_even_noise.py [--votes] RUN [RUN ...]

RUN as for `benchmarks/bench_flag_count.py`.  Per run and value: the flags'
F1 at the true count (the order alone) / as `score.flag_label_issues` flags
them with that value; then the mean of the second over the runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_flag_count import flagged_rows  # noqa: E402

from gpupipe.models import score  # noqa: E402

VALUES = {"even": (0.25, 0.5, 0.75, 1.0), "votes": (0.0, 0.25, 0.5, 0.75)}


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--votes"]
    if not args:
        sys.exit(__doc__)
    what = "votes" if "--votes" in sys.argv else "even"
    mean: dict[float, list[float]] = {v: [] for v in VALUES[what]}
    shipped = score.VOTE_SHARE, score.EVEN_NOISE
    for arg in args:
        run = Path(arg)
        y, p, v, err = flagged_rows(run)
        k = int(err.sum())
        cells = []
        for value in VALUES[what]:
            # the module's constants, as flag_label_issues reads them (label_error_odds' default is bound at
            # definition, so EVEN_NOISE goes in through its keyword)
            score.VOTE_SHARE = value if what == "votes" else shipped[0]
            even = value if what == "even" else shipped[1]
            odds = score.label_error_odds
            score.label_error_odds = lambda labels, probs, even=even: odds(labels, probs, even=even)
            try:
                mix = score.with_votes(p, v)
                order = score.flag_order(y, mix)
                flags = score.flag_label_issues(y, p, v)
            finally:
                score.label_error_odds = odds
                score.VOTE_SHARE = shipped[0]
            f1 = 2 * int((flags & err).sum()) / (int(flags.sum()) + k)
            mean[value].append(f1)
            cells.append(f"{value}: {err[order[:k]].mean():.3f} / {f1:.3f}")
        print(f"| {run} | {k} | " + " | ".join(cells) + " |", flush=True)
    print("mean F1 of the flags: " + ", ".join(f"{e}: {np.mean(m):.4f}" for e, m in mean.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
