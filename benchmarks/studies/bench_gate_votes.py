"""The automatic policy's gated decisions on a CIFAR-10N run, one line each,
with the neighbours' votes beside them; and the precision of the relabels the
thresholds propose at each level of the neighbours' vote for the new class
(issue 25: can the votes tell the gate's wrong relabels from its right ones?).

    python benchmarks/studies/bench_gate_votes.py RUN [RUN ...]

RUN: a ranked, undecided ``bench_cifar10n.py`` run (``.bench/cifar10n-<noise>-<part>-10000/oof-<tag>``);
its truth is the part's ``truth.json``.  The gate is the shipped one
(`score.label_posterior` of the model's probabilities; relabels at 0.9,
removes at 0.99), re-read by `bench_policy_estimators.gated`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_policy_estimators import gated, load  # noqa: E402

from gpupipe.models.score import label_posterior  # noqa: E402


def main() -> int:
    for run in map(Path, sys.argv[1:]):
        p, y, true, votes = load(run, run.parent / "truth.json")
        n = len(y)
        pred, top = p.argmax(1), p.max(1)
        lp = label_posterior(y, p)
        relabel, remove = gated(p, y, lp.post, 0.9, remove_bar=0.99)
        vp, vy = votes[np.arange(n), pred], votes[np.arange(n), y]
        print(run)
        for i in np.flatnonzero(relabel | remove):
            kind = "relabel" if relabel[i] else "remove"
            ok = (pred[i] == true[i]) if relabel[i] else (y[i] != true[i])
            print(f"  {kind:7s} right={ok!s:5s} top={top[i]:.3f} post={lp.post[i, pred[i]]:.3f} "
                  f"vote_pred={vp[i]:.2f} vote_given={vy[i]:.2f} y={y[i]} pred={pred[i]} true={true[i]}")
        # over all proposed relabels (the thresholds alone): right ones by the vote for the new class
        prop = (pred != y) & (top >= 0.9)
        for lo in (0.0, 0.3, 0.5, 0.7):
            m = prop & (vp >= lo)
            print(f"  proposed relabels with vote_pred >= {lo}: {m.sum()} right {(m & (pred == true)).sum()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
