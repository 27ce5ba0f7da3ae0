"""The flags' order against its one parameter, `score.EVEN_NOISE` (the share of
each class's estimated noise spread evenly over the other classes), on kept
ranked runs with known truth (issue 25, RESULTS.md §31.4).

    python benchmarks/studies/bench_even_noise.py RUN [RUN ...]

RUN as for `benchmarks/bench_flag_count.py`.  Per run and value: the flags'
F1 at the true count (the order alone) / at the shipped count
(`score.expected_f1_count` on the scaled posterior, `score.flag_label_issues`)
with the order that value gives; then the mean of the second over the runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_flag_count import truth_of  # noqa: E402

from gpupipe import schema  # noqa: E402
from gpupipe.device import resolve_device  # noqa: E402
from gpupipe.models.outlier import is_far  # noqa: E402
from gpupipe.models.score import (expected_f1_count, label_error_odds, label_posterior, scaled_to,  # noqa: E402
                                  with_votes, wrong_label_count)
from gpupipe.runner import LEDGER  # noqa: E402
from gpupipe.stages.rank import rows_of  # noqa: E402
from gpupipe.table import Ledger  # noqa: E402

EVEN = (0.25, 0.5, 0.75, 1.0)


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    mean = {e: [] for e in EVEN}
    for arg in sys.argv[1:]:
        run = Path(arg)
        ledger = Ledger(resolve_device("cpu"))
        frame = ledger.read(run / LEDGER)
        rows = rows_of(frame, ledger)
        rel = ledger.host(frame, schema.REL_PATH)[0].astype(str)
        probs, has = ledger.host(frame, schema.RANK_PROBS)
        votes, has_votes = ledger.host(frame, schema.RANK_VOTES)
        use = has & rows.eligible & ~is_far(*ledger.host(frame, schema.RANK_OUTLIER))
        y, p = rows.y[use], probs[use].astype(np.float64)
        mix = with_votes(p, np.where(has_votes[use, None], votes[use], np.nan))
        true, junk = truth_of(run)
        given = np.asarray(rows.classes, dtype=object)[y]
        err = np.array([r in junk or true.get(r, g) != g for r, g in zip(rel[use], given)])
        n, k = len(y), int(err.sum())
        lp = label_posterior(y, mix)
        wrong = scaled_to(1.0 - lp.post[np.arange(n), y], wrong_label_count(y, mix, lp.noise_rate))
        margin = mix[np.arange(n), y] - np.where(np.eye(mix.shape[1], dtype=bool)[y], -1.0, mix).max(axis=1)
        cells = []
        for even in EVEN:
            order = np.lexsort((margin, -label_error_odds(y, mix, even=even)))     # as `score.flag_order`
            c = expected_f1_count(wrong[order])
            f1 = 2 * int(err[order[:c]].sum()) / (c + k)
            mean[even].append(f1)
            cells.append(f"{even}: {err[order[:k]].mean():.3f} / {f1:.3f}")
        print(f"| {run} | {k} | " + " | ".join(cells) + " |", flush=True)
    print("mean F1 at the shipped count: " + ", ".join(f"{e}: {np.mean(v):.4f}" for e, v in mean.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
