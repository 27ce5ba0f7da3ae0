"""How many labels are wrong?  Estimators of the noise rate on kept ranked
runs with known truth, and the flags' F1 at the count each implies (issue 25).

    python benchmarks/bench_noise_rate.py RUN [RUN ...]

RUN as for `benchmarks/bench_flag_count.py` (its truth files).  The order is
the shipped one (`score.flag_order` of the model-and-votes mix); per
estimator: the estimated share of wrong labels, and P/R/F1 of flagging that
many rows in that order.  Estimators:

* before: the count `flag_label_issues` flagged before this study: the
  expected-F1 count (`score.expected_f1_count`) on the posterior's
  wrong-label probabilities (RESULTS.md §29);
* posterior: `score.label_posterior`'s rate (temperature, rate and
  confusion shape fitted together: what the shipped count and gate read);
* cleanlab joint: 1 - trace of cleanlab's calibrated confident joint
  (`cleanlab.count.estimate_joint`);
* cleanlab count: `cleanlab.count.num_label_issues` / N;
* disagreement: the share of rows whose most likely class is not the given one;
* truth.

and two counts between the posterior (which undercounts where the model has
absorbed the noise: confident heads on a backbone) and cleanlab's count
(which counts the model's own mistakes as noise: a weak model):

* geometric mean: `score.wrong_label_count`, sqrt(posterior rate * cleanlab
  count rate) * N rows, flagged as such;
* shipped: what `flag_label_issues` flags since RESULTS.md §31: the
  expected-F1 count on the posterior's wrong-label probabilities scaled
  (`score.scaled_to`, clipped at 1) to sum to that geometric mean;
* larger: the same, scaled to the larger of the two estimates instead
  (RESULTS.md §34.2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench_flag_count import ranked

from gpupipe.models.score import expected_f1_count, flag_label_issues, scaled_to, wrong_label_count


def study(run: Path) -> dict:
    from cleanlab.count import estimate_joint, num_label_issues

    y, p, votes, err, mix, order, lp = ranked(run)
    n = len(y)
    rates = {
        "posterior": lp.noise_rate,
        "cleanlab joint": float(1.0 - np.trace(estimate_joint(y, mix))),
        "cleanlab count": num_label_issues(y, mix) / n,
        "disagreement": float((mix.argmax(1) != y).mean()),
        "truth": float(err.mean()),
    }
    q = (1.0 - lp.post[np.arange(n), y])[order]
    gm = wrong_label_count(y, mix, lp.noise_rate)
    counts = {name: int(round(r * n)) for name, r in rates.items()}
    counts["before"] = expected_f1_count(q)
    counts["geometric mean"] = int(round(gm))
    counts["shipped"] = expected_f1_count(scaled_to(q, gm))
    counts["larger"] = expected_f1_count(scaled_to(q, max(lp.noise_rate * n, float(num_label_issues(y, mix)))))
    rates.update({name: counts[name] / n for name in ("before", "geometric mean", "shipped", "larger")})
    shipped = flag_label_issues(y, p, votes)
    assert shipped.sum() == counts["shipped"] and shipped[order[:counts["shipped"]]].all()   # the same flags
    out = {"run": str(run), "rows": n, "errors": int(err.sum()), "oof_accuracy": float((p.argmax(1) == y).mean())}
    for name, r in rates.items():
        c = counts[name]
        tp = int(err[order[:c]].sum())
        pr, rc = tp / max(c, 1), tp / max(int(err.sum()), 1)
        out[name] = (round(r, 4), round(2 * pr * rc / max(pr + rc, 1e-12), 3))
    return out


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    names = ["before", "posterior", "cleanlab joint", "cleanlab count", "disagreement", "geometric mean",
             "shipped", "larger", "truth"]
    print("| run | rows | errors | OOF acc. vs given | " + " | ".join(f"{m}: rate, F1" for m in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for run in sys.argv[1:]:
        o = study(Path(run))
        print(f"| {run} | {o['rows']} | {o['errors']} | {o['oof_accuracy']:.3f} | "
              + " | ".join(f"{o[m][0]:.3f}, {o[m][1]}" for m in names) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
