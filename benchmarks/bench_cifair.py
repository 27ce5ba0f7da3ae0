"""Real duplicates in real photographs: gpupipe dedup against ciFAIR's human judgments on CIFAR-10.

    python benchmarks/bench_cifair.py --cifar DIR [--pairs CSV] [--verify photo] [--run RUN] [--sheet PNG [--seed S]]

DIR: CIFAR-10 as JPEGs, ``DIR/{train,test}/<class>/NNNN.jpg`` (extract
``../shared/data/cifar10/cifar10-jpeg.tar.gz``).  CSV: ciFAIR's pairs
``a,b,judgment`` (default ``../shared/data/cifar10/cifair_pairs_dev.csv``):
judgment 1 = the same camera shot after other post-processing (positives),
2 = very similar, different content (should not be grouped).

The pairs are split in two halves by the test image's number NNNN:
*choose* ((NNNN // 2) % 2 == 0), on which the photo route's thresholds were chosen,
and *judge* (the rest), reported apart.  Runs ``gpupipe dedup`` on DIR (or
reads ``--run``, a finished run over the same DIR) and prints, per half:
same-shot pairs grouped (recall), judgment-2 pairs grouped, and over the
whole set the groups, split leaks and the pairs that ciFAIR does not list.
``--sheet`` draws a seeded sample of 100 of those unlisted pairs (member and
its representative side by side, 4x) for a person to judge precision.
``--imagededup`` adds the anchor: imagededup's PHash over the same files
(benchmarks/requirements*.txt), a pair counted found when imagededup reports
it within threshold t, for t = 0..10, with the pairs it reports over the set.
``--upscale S`` asks whether the check's 32x32 thumbnails hold up on larger
files: a subset (every image of a ciFAIR pair and ``--others`` seeded other
images) is written twice, as it is and enlarged to S x S (bicubic, JPEG q90),
and dedup runs on both; the same-shot recall over the subset's pairs is
printed for each.  (Upscaled CIFAR images hold no more detail than the 32 px
ones: this measures the decode-and-thumbnail path on large files, not what a
larger comparison would gain on real high-resolution photos.)
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

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


def imagededup_table(root: Path, pairs: pd.DataFrame) -> list[dict]:
    """Per threshold 0..10: the ciFAIR pairs imagededup PHash reports, per half, and its pair count."""
    from baselines import run_imagededup_phash

    r = run_imagededup_phash(root, max_distance=10, return_maps=True)
    code = {k: int(v, 16) for k, v in r["encodings"].items()}
    dist = {}
    for a, dups in r["dup_map"].items():
        for b in dups:
            if a < b:
                dist[(a, b)] = bin(code[a] ^ code[b]).count("1")
    d = np.array(list(dist.values()))
    choose = halves(pairs)
    out = []
    for t in range(11):
        hit = np.array([dist.get((min(a, b), max(a, b)), 99) <= t for a, b in zip(pairs["a"], pairs["b"])])
        row = {"threshold": t, "pairs_reported": int((d <= t).sum())}
        for name, sel in (("choose", choose), ("judge", ~choose)):
            row[f"recall_{name}"] = round(float(hit[(pairs.judgment == 1) & sel].mean()), 3)
            row[f"similar_{name}"] = int(hit[(pairs.judgment == 2) & sel].sum())
        out.append(row)
    print(f"imagededup PHash: {r['n_images']} images, {r['total_seconds']:.0f} s")
    print("| imagededup PHash t | same-shot found, choose | judge | judgment-2 (choose / judge) | pairs reported |")
    print("|---|---|---|---|---|")
    for row in out:
        print(f"| {row['threshold']} | {row['recall_choose']} | {row['recall_judge']} | "
              f"{row['similar_choose']} / {row['similar_judge']} | {row['pairs_reported']} |")
    return out


def upscale_table(root: Path, pairs: pd.DataFrame, size: int, others: int, verify: str) -> dict:
    from PIL import Image

    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    listed = set(pairs["a"]) | set(pairs["b"])
    rng = np.random.default_rng(0)
    rest = [f for f in files if f not in listed]
    subset = sorted(listed | set(rng.choice(rest, size=min(others, len(rest)), replace=False).tolist()))
    out = {}
    for name, px in (("32 px (as is)", None), (f"{size} px", size)):
        tree = Path(f"/tmp/bench-cifair-up-{px or 32}")
        if not tree.exists():
            for f in subset:
                dst = tree / f
                dst.parent.mkdir(parents=True, exist_ok=True)
                im = Image.open(root / f).convert("RGB")
                if px:
                    im.resize((px, px), Image.Resampling.BICUBIC).save(dst, "JPEG", quality=90)
                else:
                    dst.write_bytes((root / f).read_bytes())
        run = Path(f"/tmp/bench-cifair-up-run-{px or 32}-{verify}")
        t = time.perf_counter()
        run_dedup(tree, run, DedupOptions(device="cpu", verify=verify, recall_sample=0))
        sec = time.perf_counter() - t
        h = score(pq.read_table(run / LEDGER).to_pandas(), pairs)
        out[name] = {"images": len(subset), "seconds": round(sec, 1), "halves": h}
        print(f"{name}: {len(subset)} images, {sec:.1f} s; same-shot recall choose {h['choose']['recall']}, "
              f"judge {h['judge']['recall']}; judgment-2 grouped {h['all']['similar_grouped']}/{h['all']['similar_pairs']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar", type=Path, required=True)
    ap.add_argument("--pairs", type=Path, default=SHARED / "cifair_pairs_dev.csv")
    ap.add_argument("--verify", default="photo", choices=("pixels", "photo"))
    ap.add_argument("--run", type=Path, default=None, help="a finished dedup run over --cifar (else one is made)")
    ap.add_argument("--sheet", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0, help="with --sheet: which seeded sample")
    ap.add_argument("--imagededup", action="store_true", help="also run the imagededup PHash anchor")
    ap.add_argument("--upscale", type=int, default=None, metavar="S", help="also compare a subset enlarged to S px")
    ap.add_argument("--others", type=int, default=4000, help="with --upscale: images beside the pairs' own")
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
        s = sheet(args.cifar, found, args.sheet, seed=args.seed)
        s.to_csv(args.sheet.with_suffix(".csv"), index=False)
        print(f"sheet: {args.sheet} ({len(s)} pairs, 10 a row, each pair side by side; list in "
              f"{args.sheet.with_suffix('.csv')})")
    if args.imagededup:
        res["imagededup"] = imagededup_table(args.cifar, pairs)
    if args.upscale:
        res["upscale"] = upscale_table(args.cifar, pairs, args.upscale, args.others, args.verify)
    (run / "cifair.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
