"""Real duplicates in real photographs: gpupipe dedup against ciFAIR's human judgments on CIFAR-10.

    python benchmarks/bench_cifair.py --cifar DIR [--pairs CSV] [--verify photo] [--run RUN] [--sheet PNG]

DIR: CIFAR-10 as JPEGs, ``DIR/{train,test}/<class>/NNNN.jpg`` (extract
``../shared/data/cifar10/cifar10-jpeg.tar.gz``).  CSV: ciFAIR's pairs
``a,b,judgment`` (default ``../shared/data/cifar10/cifair_pairs_dev.csv``):
judgment 1 = the same camera shot after other post-processing (positives),
2 = very similar, different content (should not be grouped).

The pairs are split in two halves by the test image's number NNNN:
*choose* ((NNNN // 2) % 2 == 0), on which DEFAULT_MIN_REGISTERED was chosen,
and *judge* (the rest), reported apart.  Runs ``gpupipe dedup`` on DIR (or
reads ``--run``, a finished run over the same DIR) and prints, per half:
same-shot pairs grouped (recall), judgment-2 pairs grouped, and over the
whole set the groups, split leaks and the pairs that ciFAIR does not list.
``--sheet`` draws a seeded sample of 100 of those unlisted pairs (member and
its representative side by side, 4x) for a person to judge precision.
Writes the numbers as JSON next to the run (``cifair.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpupipe import schema  # noqa: E402
from gpupipe.runner import LEDGER, DedupOptions, run_dedup  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def halves(pairs: pd.DataFrame) -> pd.Series:
    """True for the *choose* half (thresholds were chosen on it), False for *judge*."""
    nnnn = pairs["a"].str.extract(r"/(\d+)\.[a-z]+$")[0].astype(int)
    return (nnnn // 2) % 2 == 0


def score(ledger: pd.DataFrame, pairs: pd.DataFrame) -> dict:
    group = dict(zip(ledger[schema.REL_PATH], ledger[schema.DEDUP_GROUP]))
    pairs = pairs.assign(grouped=[group.get(a) is not None and group.get(a) == group.get(b)
                                  for a, b in zip(pairs["a"], pairs["b"])], choose=halves(pairs))
    out = {}
    for name, sel in (("choose", pairs.choose), ("judge", ~pairs.choose), ("all", pairs.choose | True)):
        p = pairs[sel]
        j1, j2 = p[p.judgment == 1], p[p.judgment == 2]
        out[name] = {"same_shot_pairs": len(j1), "same_shot_grouped": int(j1.grouped.sum()),
                     "recall": round(float(j1.grouped.mean()), 3) if len(j1) else None,
                     "similar_pairs": len(j2), "similar_grouped": int(j2.grouped.sum()),
                     "similar_grouped_rate": round(float(j2.grouped.mean()), 3) if len(j2) else None}
    return out


def unlisted_pairs(ledger: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """(member, representative) rel_path pairs of the near groups that ciFAIR does not list."""
    near = ledger[ledger[schema.DEDUP_KIND] == schema.KIND_NEAR]
    path_of = dict(zip(ledger[schema.SAMPLE_ID], ledger[schema.REL_PATH]))
    found = pd.DataFrame({"a": near[schema.REL_PATH].to_numpy(),
                          "b": [path_of[g] for g in near[schema.DEDUP_GROUP]],
                          "similarity": near[schema.DEDUP_SIMILARITY].to_numpy()})
    listed = {frozenset(x) for x in zip(pairs["a"], pairs["b"])}
    return found[[frozenset(x) not in listed for x in zip(found["a"], found["b"])]]


def sheet(root: Path, found: pd.DataFrame, path: Path, n: int = 100, seed: int = 0) -> pd.DataFrame:
    from PIL import Image

    from gpupipe.sheets import image_grid

    sample = found.sample(n=min(n, len(found)), random_state=seed).sort_values(["a", "b"])
    rows = [[np.asarray(Image.open(root / a).convert("RGB")), np.asarray(Image.open(root / b).convert("RGB"))]
            for a, b in zip(sample["a"], sample["b"])]
    # 10 pairs a row: 20 cells
    grid = [sum(rows[k:k + 10], []) for k in range(0, len(rows), 10)]
    image_grid(grid, path, scale=4)
    return sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar", type=Path, required=True)
    ap.add_argument("--pairs", type=Path, default=SHARED / "cifair_pairs_dev.csv")
    ap.add_argument("--verify", default="photo", choices=("pixels", "photo"))
    ap.add_argument("--run", type=Path, default=None, help="a finished dedup run over --cifar (else one is made)")
    ap.add_argument("--sheet", type=Path, default=None)
    args = ap.parse_args()
    pairs = pd.read_csv(args.pairs)
    run = args.run or Path(f"/tmp/bench-cifair-{args.verify}")
    seconds = None
    if args.run is None:
        t = time.perf_counter()
        run_dedup(args.cifar, run, DedupOptions(device="cpu", verify=args.verify))
        seconds = round(time.perf_counter() - t, 2)
    ledger = pq.read_table(run / LEDGER).to_pandas()
    summary = json.loads((run / "summary.json").read_text())
    res = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
           "verify": summary.get("verify"), "seconds": seconds, "halves": score(ledger, pairs)}
    near = ledger[ledger[schema.DEDUP_KIND] == schema.KIND_NEAR]
    found = unlisted_pairs(ledger, pairs)
    res["near_duplicates"] = len(near)
    res["groups"] = int(ledger.loc[ledger[schema.DEDUP_GROUP_SIZE] > 1, schema.DEDUP_GROUP].nunique())
    res["split_leak_groups"] = int(ledger.loc[ledger[schema.DEDUP_SPLIT_LEAK], schema.DEDUP_GROUP].nunique())
    res["found_pairs_not_in_cifair"] = len(found)
    res["probe_recall"] = summary.get("recall")
    print(f"verify {res['verify']}; near duplicates {len(near)} in {res['groups']} groups, "
          f"split-leak groups {res['split_leak_groups']}, found pairs ciFAIR does not list {len(found)}")
    print("| half | same-shot pairs | grouped | recall | judgment-2 pairs | grouped |")
    print("|---|---|---|---|---|---|")
    for name, h in res["halves"].items():
        print(f"| {name} | {h['same_shot_pairs']} | {h['same_shot_grouped']} | {h['recall']} | "
              f"{h['similar_pairs']} | {h['similar_grouped']} |")
    if args.sheet:
        s = sheet(args.cifar, found, args.sheet)
        s.to_csv(args.sheet.with_suffix(".csv"), index=False)
        print(f"sheet: {args.sheet} ({len(s)} pairs, 10 a row, each pair side by side; list in "
              f"{args.sheet.with_suffix('.csv')})")
    (run / "cifair.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
