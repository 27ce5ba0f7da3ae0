"""Which rows to flag, at one count: gpupipe's global loss order against
cleanlab's choice and a few mixes, on the out-of-fold probabilities that
`bench_outlier.py` left (``.bench/outlier-{digits,fashion}-{symmetric,pair}``;
run those first).  The planted outliers are left out: this is about label flips.

For each set: F1 against the planted flips of the rows flagged by

* cleanlab ``find_label_issues`` (defaults: prune_by_noise_rate), its count k;
* loss: the k highest-loss rows (gpupipe's `is_mislabeled_issue` rule);
* class quota: cleanlab's count per given class, highest loss within;
* cell quota: cleanlab's count per (given, most likely other) class, highest loss within;
* cleanlab and loss / cleanlab or loss: intersection / union of the two sets.

    python benchmarks/bench_flag_orders.py [--data .bench]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from gpupipe import schema
from gpupipe.datasets import flip_labels, load_digits_images, load_fashion_mnist


def f1(flag: np.ndarray, truth: np.ndarray) -> float:
    tp = (flag & truth).sum()
    p, r = tp / max(1, flag.sum()), tp / max(1, truth.sum())
    return round(float(2 * p * r / max(p + r, 1e-9)), 3)


def main() -> int:
    from cleanlab.filter import find_label_issues

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=".bench")
    args = ap.parse_args()
    cols = ["cleanlab", "loss", "class quota", "cell quota", "cleanlab and loss", "cleanlab or loss"]
    print("| set | flips | k | " + " | ".join(cols) + " |\n|---|---|---|" + "---|" * len(cols))
    for name in ("digits-symmetric", "digits-pair", "fashion-symmetric", "fashion-pair"):
        meta = Path(args.data) / f"outlier-{name}.json"
        if not meta.exists():
            print(f"| {name} | (run bench_outlier.py --dataset {name.replace('-', ' --noise ')} first) |")
            continue
        a = json.loads(meta.read_text())["args"]
        if a["dataset"] == "digits":
            _, labels = load_digits_images()
        else:
            _, labels = load_fashion_mnist(split="train")
            labels = labels[:a["n"]]
        flipped = flip_labels(labels, rate=a["rate"], mode=a["noise"], seed=a["seed"])[1]
        run = Path(args.data) / f"outlier-{name}" / "run"
        t = pq.read_table(run / "ledger.parquet").to_pandas()
        t = t[t[schema.RANK_LOSS].notna() & ~t[schema.REL_PATH].str.contains("/outlier_")]
        idx = t[schema.REL_PATH].str.rsplit("_", n=1).str[1].str.split(".").str[0].astype(int).to_numpy()
        truth = flipped[idx]
        classes = json.loads((run / "rank.json").read_text())["classes"]
        probs = np.stack(t[schema.RANK_PROBS].to_numpy()).astype(np.float64)
        probs /= probs.sum(1, keepdims=True)
        n, k_classes = probs.shape
        given = np.searchsorted(np.asarray(classes), t[schema.LABEL].to_numpy(str))
        cl = find_label_issues(given, probs)
        k = int(cl.sum())
        loss = -np.log(np.maximum(probs[np.arange(n), given], 1e-12))
        pred = np.where(np.eye(k_classes, dtype=bool)[given], -1.0, probs).argmax(1)

        def top(score, rows=None, count=k):
            rows = np.arange(n) if rows is None else rows
            f = np.zeros(n, bool)
            f[rows[np.argsort(-score[rows], kind="stable")[:count]]] = True
            return f

        by_class = np.zeros(n, bool)
        by_cell = np.zeros(n, bool)
        for c in range(k_classes):
            m = np.flatnonzero(given == c)
            by_class |= top(loss, m, int(cl[m].sum()))
            for d in range(k_classes):
                m = np.flatnonzero((given == c) & (pred == d))
                by_cell |= top(loss, m, int(cl[m].sum()))
        g = top(loss)
        row = [f1(cl, truth), f1(g, truth), f1(by_class, truth), f1(by_cell, truth), f1(cl & g, truth),
               f1(cl | g, truth)]
        print(f"| {name} | {int(truth.sum())} | {k} | " + " | ".join(map(str, row)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
