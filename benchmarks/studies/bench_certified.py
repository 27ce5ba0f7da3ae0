"""The method's own route, certified mode: how well do the outlier score, the
flags and the review order work when the model trained on a small certified
seed set only (issue 12: measured so far in out-of-fold mode only)?

    python benchmarks/bench_certified.py --dataset digits|fashion [--noise symmetric|pair]
        [--seed-size 200] [--outlier-k 20 5 ...]

On the planted tree of ``bench_outlier.py`` (10% flips, 3% images of no
class; same options), deduplicated, then ``rank --mode certified`` for one
round: an oracle certifies a random seed set (``--seed-size``, 20 of them
held out for early stopping; flips in it relabeled, images of no class
removed), the model trains on it and scores every other row.  No other
review.  Against the planted truth, over the scored rows:

* the outlier score's AP for the images of no class;
* the flags' precision / recall / F1 against the flips, beside cleanlab's
  ``find_label_issues`` on the same probabilities;
* the review order (`stages.review`): reviews needed for 90% of all errors.

``--outlier-k``: the within-class neighbour count of the outlier score
(`models.outlier.K`; a 200-image seed set holds ~18 rows of a class): one
run per value, the rest of the round the same.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_outlier import add_data_args, average_precision, build, set_name  # noqa: E402

from gpupipe import schema  # noqa: E402
from gpupipe.loop import RankOptions, run_rank  # noqa: E402
from gpupipe.models import outlier  # noqa: E402
from gpupipe.models.train import TrainConfig  # noqa: E402
from gpupipe.runner import DedupOptions, run_dedup  # noqa: E402
from gpupipe.stages.review import label_suspicion, suspicion  # noqa: E402


def oracle_csv(tree: Path, planted: dict, out: Path) -> Path:
    """rel_path,label for every file: the true label (a flip's original class),
    empty for an image of no class (the oracle removes it)."""
    rows = []
    for p in sorted(tree.rglob("*.png")):
        rel = str(p.relative_to(tree))
        rows.append((rel, "" if rel in planted["outliers"] else planted["true"].get(rel, p.parent.name)))
    pd.DataFrame(rows, columns=["rel_path", "label"]).to_csv(out, index=False)
    return out


def reviews_for(order_key: np.ndarray, is_error: np.ndarray, share: float = 0.9) -> float:
    found = np.cumsum(is_error[np.argsort(-order_key, kind="stable")]) / max(1, is_error.sum())
    return round(float((np.searchsorted(found, share) + 1) / max(1, is_error.sum())), 2)


def one(args, base: Path, planted: dict, k: int) -> dict:
    from cleanlab.filter import find_label_issues

    run = base / f"run-k{k}"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(base / "dedup", run)
    # The neighbour count is a keyword default of the search (`outlier.K`); set it for this run.
    saved = outlier.knn_distances.__kwdefaults__["k"]
    outlier.knn_distances.__kwdefaults__["k"] = k
    try:
        t0 = time.perf_counter()
        run_rank(run, RankOptions(device="cpu", review="oracle", oracle=str(base / "oracle.csv"), worst=0, best=0,
                                  mode="certified", max_rounds=1, seed_size=args.seed_size, seed=args.seed,
                                  train=TrainConfig(max_epochs=args.epochs * 3)))
        seconds = time.perf_counter() - t0
    finally:
        outlier.knn_distances.__kwdefaults__["k"] = saved
    state = json.loads((run / "rank.json").read_text())
    t = pq.read_table(run / "ledger.parquet").to_pandas()
    t = t[t[schema.RANK_LOSS].notna()].reset_index(drop=True)
    is_out = t[schema.REL_PATH].isin(set(planted["outliers"])).to_numpy()
    is_flip = t[schema.REL_PATH].isin(set(planted["flipped"])).to_numpy()
    score = t[schema.RANK_OUTLIER].to_numpy(float)
    flags = t[schema.RANK_FLAG].to_numpy(bool)
    classes = state["rounds"][0]["classes"]
    y = t[schema.LABEL].map({c: i for i, c in enumerate(classes)}).to_numpy()
    probs = np.stack(t[schema.RANK_PROBS].to_numpy()).astype(np.float64)

    def prf(flag):
        tp = (flag & is_flip).sum()
        p, r = tp / max(1, flag.sum()), tp / max(1, is_flip.sum())
        return [round(float(p), 3), round(float(r), 3), round(float(2 * p * r / max(p + r, 1e-9)), 3)]

    key = label_suspicion(t[schema.RANK_LOSS].to_numpy(float), t[schema.RANK_PROB_GIVEN].to_numpy(float),
                          t[schema.RANK_VOTE_GIVEN].to_numpy(float))
    return {"k": k, "seed_rows": state["rounds"][0]["trained_on"] + state["rounds"][0]["validated_on"],
            "val_accuracy": state["rounds"][0]["val_accuracy"], "scored": len(t),
            "outliers_scored": int(is_out.sum()), "flips_scored": int(is_flip.sum()),
            "outlier_ap": round(average_precision(score, is_out), 3),
            "far": int((score >= outlier.FAR).sum()), "far_of_no_class": int(((score >= outlier.FAR) & is_out).sum()),
            "flags": prf(flags), "cleanlab": prf(find_label_issues(y, probs)),
            "reviews_for_90": {"loss": reviews_for(suspicion(t[schema.RANK_LOSS].to_numpy(float), score),
                                                   is_out | is_flip),
                               "review order": reviews_for(suspicion(key, score), is_out | is_flip)},
            "seconds_rank": round(seconds, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(ap)
    ap.add_argument("--seed-size", type=int, default=200)
    ap.add_argument("--outlier-k", type=int, nargs="+", default=[outlier.K])
    args = ap.parse_args()
    name = set_name(args)
    base = Path(args.data) / f"certified-{name}"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    planted = build(args, base / "tree")
    oracle_csv(base / "tree", planted, base / "oracle.csv")
    run_dedup(base / "tree", base / "dedup", DedupOptions(device="cpu", recall_sample=0))
    res = [one(args, base, planted, k) for k in args.outlier_k]
    print(f"## {name}, certified mode, seed set {args.seed_size}: {res[0]['scored']} scored "
          f"({res[0]['outliers_scored']} of no class, {res[0]['flips_scored']} flips), "
          f"val accuracy {res[0]['val_accuracy']:.3f}\n")
    print("| outlier k | outlier AP | >= FAR (of no class) | flags P / R / F1 | cleanlab P / R / F1 | "
          "reviews for 90%: loss order / review order | rank s |\n|---|---|---|---|---|---|---|")
    for r in res:
        print(f"| {r['k']} | {r['outlier_ap']} | {r['far']} ({r['far_of_no_class']}) | "
              f"{' / '.join(map(str, r['flags']))} | {' / '.join(map(str, r['cleanlab']))} | "
              f"{r['reviews_for_90']['loss']}x / {r['reviews_for_90']['review order']}x | {r['seconds_rank']} |")
    (Path(args.data) / f"certified-{name}.json").write_text(json.dumps(
        {"args": vars(args), "runs": res, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
