"""Can the flags beat cleanlab by more than the ordering does?  Two levers on
the same out-of-fold models (issue 12: flag F1 >= cleanlab's + 0.05):

* **a second opinion from the features**: each scored row's k nearest
  reference rows (the fold model's training rows, with their given, noisy
  labels) vote for a class; that vote, mixed with the model's probabilities,
  is what the flags read.  cleanlab's ``find_label_issues`` sees only the
  model's probabilities; Datalab's ``label`` issue flags the same rows with
  or without features (RESULTS.md §15).
* **how many to flag**: cleanlab's count (``find_label_issues`` defaults,
  what gpupipe uses), ``num_label_issues`` off-diagonal and calibrated, and
  the number of flips (an oracle: the ceiling of the order alone).

And the review order a person sees (`stages.review.suspicion`) with three
label keys: the model's loss, the loss of the mix, the odds of the mix
(reviews needed to find 90% of all errors, flips and images of no class).

    python benchmarks/bench_flag_signals.py --dataset digits|fashion --noise symmetric|pair
        [--offset 20000 --seed 7]   (other images and flips: the judge sets)
        [--cost]                     (only seconds per 10,000 rows)

Reads ``.bench/outlier-features-<dataset>-<noise>.npz`` (made by
``bench_outlier_features.py`` with the same options; run it first).  Rows at
or past `FAR` (gpupipe's outlier score) are left out of the flags as rank
leaves them out; images of no class flagged count as false flags, as in §15.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_outlier import add_data_args, planted_of, set_name  # noqa: E402
from bench_outlier_features import blockcat  # noqa: E402

from gpupipe.models.outlier import FAR, K, knn_distances, knn_vote, robust_z  # noqa: E402
from gpupipe.models.score import label_error_odds  # noqa: E402


def loss_key(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Positions in gpupipe's order (`score.flag_label_issues`): lowest probability of the label, then margin."""
    n, k = p.shape
    given = p[np.arange(n), y]
    other = np.where(np.eye(k, dtype=bool)[y], -1.0, p).max(axis=1)
    pos = np.empty(n, np.int64)
    pos[np.lexsort((given - other, given))] = np.arange(n)
    return pos


ORDERS = {
    "loss": loss_key,
    "posterior": lambda y, p: np.argsort(np.argsort(-label_error_odds(y, p, even=0.0), kind="stable")),
    "posterior, noise half symmetric": lambda y, p: np.argsort(np.argsort(-label_error_odds(y, p, even=0.5),
                                                                           kind="stable")),
    "mean rank of loss and posterior": lambda y, p: loss_key(y, p) + ORDERS["posterior"](y, p),
}


def fold_parts(z: dict, folds: int):
    """Per fold of the saved models: its scored rows, the reference rows'
    labels, both sides' every-block features, gpupipe's outlier score of the
    scored rows (within classes, robust z) and their logits."""
    nblocks = sum(1 for key in z if key.startswith("f0_scored_block"))
    for f in range(folds):
        y_ref = z["y"][z[f"f{f}_ref_rows"]]
        sb, rb = blockcat(z, f, "scored", nblocks), blockcat(z, f, "ref", nblocks)
        yield (z[f"f{f}_scored_rows"], y_ref, sb, rb, robust_z([knn_distances(sb, rb, y_ref, k=K)])[0],
               z[f"f{f}_scored_logits"])


def flag_by(key: np.ndarray, count: int) -> np.ndarray:
    flags = np.zeros(len(key), bool)
    flags[np.argsort(key, kind="stable")[:count]] = True
    return flags


def cost(z: dict) -> int:
    """Seconds per 10,000 scored rows, fold 0's model, three runs each: the
    neighbours' votes (`outlier.knn_vote`, every block, against the fold's
    reference) beside the within-class distances rank already computes; and
    the flags (`score.flag_label_issues`) without and with the votes."""
    import time

    from gpupipe.models.score import flag_label_issues

    nblocks = sum(1 for key in z if key.startswith("f0_scored_block"))
    sb, rb = blockcat(z, 0, "scored", nblocks), blockcat(z, 0, "ref", nblocks)
    y_ref, y = z["y"][z["f0_ref_rows"]], z["y"][z["f0_scored_rows"]]
    probs = torch.softmax(torch.as_tensor(z["f0_scored_logits"], dtype=torch.float64), 1).numpy()
    per = 10000 / len(sb)
    flag_label_issues(y, probs)                                 # imports cleanlab
    for name, fn in (("votes", lambda: knn_vote(sb, rb, y_ref, len(z["classes"]))),
                     ("within-class distances", lambda: knn_distances(sb, rb, y_ref, k=K)),
                     ("flags, no votes", lambda: flag_label_issues(y, probs)),
                     ("flags, with votes", lambda: flag_label_issues(y, probs, probs))):
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - t) * per)
        print(f"{name}: {', '.join(f'{x:.2f}' for x in runs)} s per 10,000 rows "
              f"({len(sb)} scored, {len(rb)} reference rows, {torch.get_num_threads()} torch threads)")
    return 0


def review_effort(y, model, mixed, outlier_score, is_error) -> dict:
    """The review order (`stages.review.suspicion`: a label key's percentile, or
    the outlier score's where that is >= FAR and higher) with three label keys:
    the model's loss (gpupipe's), the loss of the mix with the votes, and
    `label_error_odds` of the mix.  Share of all errors (flips and images of
    no class) found after reviewing 0.5x, 0.9x, 1x, 1.5x the errors, and the
    reviews for 90%."""
    from gpupipe.stages.review import suspicion

    n = len(y)
    keys = {"model's loss (gpupipe)": -np.log(model[np.arange(n), y]),
            "loss of model 0.5 + votes 0.5": -np.log(mixed[np.arange(n), y]),
            "label_error_odds of the mix": label_error_odds(y, mixed)}
    errors = int(is_error.sum())
    print(f"\n| review order's label key ({errors} errors) | found at 0.5x | 0.9x | 1x | 1.5x | reviewed for 90% |"
          "\n|---|---|---|---|---|---|")
    out = {}
    for name, key in keys.items():
        order = np.argsort(-suspicion(key, outlier_score), kind="stable")
        found = np.cumsum(is_error[order]) / errors
        at = {x: round(float(found[min(n, int(round(x * errors))) - 1]), 3) for x in (0.5, 0.9, 1.0, 1.5)}
        need = round(float((np.searchsorted(found, 0.9) + 1) / errors), 2)
        out[name] = {**{f"{x}x": v for x, v in at.items()}, "for_90": need}
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in at.values()) + f" | {need}x |")
    return out


def main() -> int:
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(ap)
    ap.add_argument("--k", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--cost", action="store_true", help="only time the votes and the flags, per 10,000 rows")
    args = ap.parse_args()
    name = set_name(args)
    base = Path(args.data) / f"outlier-{name}"
    z = dict(np.load(Path(args.data) / f"outlier-features-{name}.npz", allow_pickle=False))
    if args.cost:
        return cost(z)
    planted = planted_of(args, base)
    ncls = len(z["classes"])
    rows, far, logits, votes = [], [], [], {}
    for f, (scored, y_ref, sb, rb, outlier, fold_logits) in enumerate(fold_parts(z, args.folds)):
        rows.append(scored)
        far.append(outlier)
        logits.append(fold_logits)
        for feat, (s, r) in (("emb", (z[f"f{f}_scored_emb"], z[f"f{f}_ref_emb"])), ("blocks", (sb, rb))):
            for k in args.k:
                votes.setdefault(f"kNN vote ({feat}, k={k})", []).append(
                    knn_vote(s, r, y_ref, ncls, k=k).astype(np.float64))
    rows, outlier_score = np.concatenate(rows), np.concatenate(far)
    far = outlier_score >= FAR
    model = torch.softmax(torch.as_tensor(np.concatenate(logits), dtype=torch.float64), 1).numpy()
    votes = {key: np.concatenate(v) for key, v in votes.items()}
    rel = z["rel"][rows]
    is_out = np.asarray([r in planted["outliers"] for r in rel])
    flips = set(planted["flipped"])
    is_flip = np.asarray([r in flips for r in rel])
    y = z["y"][rows]
    near = ~far

    def f1(flag_near: np.ndarray) -> dict:
        flag = np.zeros(len(y), bool)
        flag[np.flatnonzero(near)[flag_near]] = True
        tp = (flag & is_flip).sum()
        p, r = tp / max(1, flag.sum()), tp / max(1, is_flip.sum())
        return {"p": round(float(p), 3), "r": round(float(r), 3), "f1": round(float(2 * p * r / max(p + r, 1e-9)), 3),
                "n": int(flag.sum())}

    base_cl = find_label_issues(y, model)                         # the target's baseline: cleanlab, all rows
    tp = (base_cl & is_flip).sum()
    p, r = tp / base_cl.sum(), tp / is_flip.sum()
    baseline = round(float(2 * p * r / (p + r)), 3)
    print(f"## {name}: {len(y)} scored, {far.sum()} at or past FAR ({(far & is_out).sum()} of {is_out.sum()} "
          f"images of no class), {is_flip.sum()} flips ({(near & is_flip).sum()} below FAR)")
    print(f"cleanlab find_label_issues on the model's probabilities, every row: F1 {baseline}\n")
    probs = {"model": model}
    for key in ("kNN vote (emb, k=10)", "kNN vote (blocks, k=30)"):
        probs[key] = votes[key]
        probs[f"model 0.5 + {key} 0.5"] = 0.5 * model + 0.5 * votes[key]
    yn = y[near]
    oracle = int((near & is_flip).sum())
    print("| probabilities | order | cleanlab count | off-diagonal | calibrated | oracle count | "
          "cleanlab's own flags on these probabilities |\n|---|---|---|---|---|---|---|")
    res = {"baseline_cleanlab_f1": baseline}
    for key, pr in probs.items():
        pn = pr[near]
        counts = {"cleanlab": int(find_label_issues(yn, pn).sum()),
                  "off_diagonal": int(num_label_issues(yn, pn, estimation_method="off_diagonal")),
                  "calibrated": int(num_label_issues(yn, pn, estimation_method="off_diagonal_calibrated")),
                  "oracle": oracle}
        own = f1(find_label_issues(yn, pn))
        for order, fn in ORDERS.items():
            pos = fn(yn, pn)
            row = {c: f1(flag_by(pos, n)) for c, n in counts.items()}
            res[f"{key} | {order}"] = {**row, "cleanlab flags": own}
            print(f"| {key} | {order} | " + " | ".join(f"{v['f1']:.3f} ({v['n']})" for v in row.values())
                  + f" | {own['f1']:.3f} |")
    res["review"] = review_effort(y, model, 0.5 * model + 0.5 * votes["kNN vote (blocks, k=30)"], outlier_score,
                                  is_flip | is_out)
    out = Path(args.data) / f"flag-signals-{name}.json"
    out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
