"""Dedup on the 70,000 Fashion-MNIST images as PNG files, with planted defects.

In one run on one machine:
- gpupipe dedup (in-process, CPU): images/s per stage and whole;
- a DALI decode-only pass over the same (decodable) files: the practical ceiling;
- imagededup's PHash (encode_images + find_duplicates) at thresholds 10 (its
  default), 8, 4 and 0, from one search;
- precision/recall of duplicate pairs against the planted ground truth, over all
  pairs and over pairs that touch a planted file, and recall per planted kind.

    python benchmarks/bench_dedup.py [--data .bench/fashion] [--n N] [--skip-imagededup] [--no-shift]
                                     [--sheet PNG]

Prints a Markdown table and writes the numbers as JSON next to the data.
Targets (issue 8): precision >= 0.99 and recall >= 0.98 over the planted pairs,
every kind >= 0.95; throughput at least today's (28-37% of the decode-only pass).
``--sheet`` writes the pairs of *originals* that gpupipe groups (no ground
truth knows them: Fashion-MNIST holds near-identical product photos) side by
side, for a person to judge.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow.parquet as pq  # noqa: E402

from gpupipe.datasets import (  # noqa: E402
    FASHION_MNIST_CLASSES, INVALID_KINDS, NEAR_KINDS, GroundTruth, load_fashion_mnist, plant_dataset,
)
from gpupipe.evaluate import found_groups, score_group_map  # noqa: E402
from gpupipe.runner import LEDGER, DedupOptions, run_dedup  # noqa: E402

PLANT = dict(
    n_byte_copies=200, n_cross_class_copies=50, n_reencodes=200,
    n_near={k: 100 for k in NEAR_KINDS}, n_corrupt={k: 5 for k in INVALID_KINDS}, seed=0,
)


def prepare(data: Path, n: int | None) -> tuple[Path, GroundTruth]:
    root, truth_file = data / "tree", data / "planted.json"
    params = {**PLANT, "n": n}
    if truth_file.exists() and json.loads((data / "params.json").read_text()) == params:
        return root, GroundTruth.from_json(truth_file)
    images, labels = load_fashion_mnist(split="all")
    if n:
        images, labels = images[:n], labels[:n]
    t = time.perf_counter()
    truth = plant_dataset(images, labels, root, class_names=list(FASHION_MNIST_CLASSES), **PLANT)
    print(f"planted {len(truth.originals)} originals + {len(truth.items)} files in {time.perf_counter() - t:.1f} s")
    truth.to_json(truth_file)
    (data / "params.json").write_text(json.dumps(params))
    return root, truth


def scores(group_of: dict[str, int], truth: GroundTruth) -> dict:
    planted = {it.path for it in truth.items if it.category != "invalid"}
    expected = truth.expected_groups("near")
    allp = score_group_map(group_of, expected)
    onlyp = score_group_map(group_of, expected, only=planted)
    found, total = defaultdict(int), defaultdict(int)
    for it in truth.items:
        if it.category in ("near", "reencode", "copy"):
            key = it.kind if it.category == "near" else it.category
            total[key] += 1
            g = group_of.get(it.path)
            found[key] += g is not None and g == group_of.get(it.source)
    near_found = sum(found[k] for k in NEAR_KINDS)
    near_total = sum(total[k] for k in NEAR_KINDS)
    return {
        "pairs_all": allp.as_dict(), "pairs_planted": onlyp.as_dict(),
        "recall_by_kind": {k: round(found[k] / total[k], 3) for k in sorted(total)},
        "near_recall": round(near_found / near_total, 4),
    }


def imagededup_runs(root: Path, thresholds: tuple[int, ...]) -> dict[str, dict]:
    """imagededup PHash: encode once, search once at the largest threshold
    (its brute-force search computes every pair's distance whatever the
    threshold, so one search serves all), then keep each threshold's pairs by
    recomputing their distance from imagededup's own hashes."""
    from baselines import _components, run_imagededup_phash

    top = max(thresholds)
    r = run_imagededup_phash(root, max_distance=top, return_maps=True)
    enc, dup_map = r.pop("encodings"), r.pop("dup_map")
    r.pop("duplicates")
    out = {}
    for thr in thresholds:
        kept = {a: [b for b in bs if bin(int(enc[a], 16) ^ int(enc[b], 16)).count("1") <= thr]
                for a, bs in dup_map.items()}
        groups = _components(kept)
        out[f"imagededup PHash t={thr}"] = {**r, "max_distance": thr, "duplicates": groups,
                                            "n_groups": len(groups), "dup_map": kept}
    return out


def direct_pair_scores(dup_map: dict[str, list[str]], truth: GroundTruth) -> dict:
    """imagededup reports pairs (file -> its duplicates), not groups: score
    those pairs directly, without the chaining of connected components."""
    planted = [it for it in truth.items if it.category in ("near", "reencode", "copy")]
    group_of = {p: i for i, g in enumerate(truth.expected_groups("near")) for p in g}
    hit, total = defaultdict(int), defaultdict(int)
    for it in planted:
        key = it.kind if it.category == "near" else it.category
        total[key] += 1
        hit[key] += it.source in dup_map.get(it.path, ())
    touching = {it.path for it in planted}
    reported = [(a, b) for a, bs in dup_map.items() for b in bs if a < b and (a in touching or b in touching)]
    correct = sum(1 for a, b in reported if a in group_of and group_of.get(a) == group_of.get(b))
    near_total = sum(total[k] for k in NEAR_KINDS)
    return {"direct_recall_by_kind": {k: round(hit[k] / total[k], 3) for k in sorted(total)},
            "direct_near_recall": round(sum(hit[k] for k in NEAR_KINDS) / near_total, 4),
            "direct_precision_planted": round(correct / len(reported), 4) if reported else 1.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".bench/fashion")
    ap.add_argument("--n", type=int, default=None, help="use the first N images (default: all 70,000)")
    ap.add_argument("--skip-imagededup", action="store_true")
    ap.add_argument("--no-shift", action="store_true", help="also run gpupipe without the shift-key search")
    ap.add_argument("--sheet", default=None, help="PNG of grouped original pairs")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate decode-only and gpupipe this many times (the VM's speed drifts)")
    args = ap.parse_args()
    data = Path(args.data)
    root, truth = prepare(data, args.n)
    results: dict = {"machine": f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
                     "date": time.strftime("%Y-%m-%d"), "files": len(truth.originals) + len(truth.items)}

    from baselines import run_dali_decode_only

    invalid = set(truth.invalid_paths())
    decodable = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in invalid)
    results["rounds"] = []
    for _ in range(args.rounds):
        d = run_dali_decode_only(decodable, batch_size=256, num_threads=os.cpu_count() or 2)
        t = time.perf_counter()
        s = run_dedup(root, data / "run-rounds", DedupOptions(device="cpu"))
        g = s.rows / (time.perf_counter() - t)
        results["rounds"].append({"decode_only": d["images_per_s"], "gpupipe": g, "ratio": g / d["images_per_s"]})
        print(f"round: decode-only {d['images_per_s']:,.0f}/s, gpupipe {g:,.0f}/s ({g / d['images_per_s']:.0%})", flush=True)
    results["dali_decode_only"] = d

    runs = [("gpupipe", DedupOptions(device="cpu"))]
    if args.no_shift:
        runs.append(("gpupipe --shift-distance -1", DedupOptions(device="cpu", shift_distance=-1)))
    for name, opts in runs:
        out = data / ("run-" + name.replace(" ", "").replace("--", "-"))
        t = time.perf_counter()
        s = run_dedup(root, out, opts)
        wall = time.perf_counter() - t
        ledger = pq.read_table(out / LEDGER)
        h = s.counts["hash_stage"]
        results[name] = {
            "seconds": s.seconds, "wall": wall, "images_per_s": s.rows / wall,
            "stage_images_per_s": {
                "ingest (list files)": s.rows / s.seconds["ingest"],
                "hash stage (all below)": s.rows / s.seconds["hash"],
                "  read + xxh3 bytes (stage 1)": h["read"] / h["s_read"],
                "  sniff headers": h["read"] / h["s_sniff"],
                "  DALI decode + thumbs": h["decoded"] / h["s_decode"],
                "  pixel hash (stage 2)": h["decoded"] / h["s_pixels"],
                "  pHash (stage 3)": h["decoded"] / h["s_phash"],
                "dedup stage (group, search, verify)": s.rows / s.seconds["dedup"],
            },
            "counts": s.counts, "verify": s.verify, "max_distance": s.max_distance, "recall_probe": s.recall,
            **scores(found_groups(ledger), truth),
        }
        if name == "gpupipe" and args.sheet:
            results[name]["original_pairs"] = original_pairs_sheet(ledger, truth, root, out / "thumbs.npy", args.sheet)
    if not args.skip_imagededup:
        for name, r in imagededup_runs(root, thresholds=(10, 8, 4, 0)).items():
            group_of = {p: i for i, g in enumerate(r.pop("duplicates")) for p in g}
            results[name] = {**r, **scores(group_of, truth), **direct_pair_scores(r.pop("dup_map"), truth)}

    (data / "results_dedup.json").write_text(json.dumps(results, indent=2, default=str))
    print(render(results))
    return 0


def original_pairs_sheet(ledger, truth: GroundTruth, root: Path, thumbs_file: Path, sheet: str, show: int = 60) -> dict:
    """Pairs of different originals (not pixel-identical) that gpupipe put in one
    group: how many, and a PNG of a seeded sample of them (each pair side by
    side, with its similarity) for a person to judge."""
    import numpy as np
    from PIL import Image

    from gpupipe import schema

    t = ledger.to_pandas()
    thumbs = np.load(thumbs_file)
    row = {p: i for i, p in enumerate(t[schema.REL_PATH])}
    same = {frozenset(g) for g in truth.preexisting_groups}
    members = defaultdict(list)
    for p in truth.originals:
        g = t[schema.DEDUP_GROUP].iat[row[p]]
        if g is not None and g == g:
            members[g].append(p)
    pairs = []
    for m in members.values():
        if len(m) > 1 and frozenset(m) not in same:
            m = sorted(m)
            pairs += [(m[0], q) for q in m[1:]]
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(pairs))[:show]
    gap = np.full((32, 4, 3), 255, np.uint8)
    tiles = [np.concatenate([thumbs[row[pairs[k][0]]], gap, thumbs[row[pairs[k][1]]],
                             np.full((32, 12, 3), 128, np.uint8)], 1) for k in pick]
    if tiles:
        rows_ = [np.concatenate(tiles[r:r + 6], 1) for r in range(0, len(tiles) - len(tiles) % 6, 6)] or [tiles[0]]
        img = np.concatenate([np.pad(x, ((0, 4), (0, 0), (0, 0)), constant_values=128) for x in rows_], 0)
        Image.fromarray(img).resize((img.shape[1] * 3, img.shape[0] * 3), Image.NEAREST).save(sheet)
    classes = sum(truth.class_of(a) != truth.class_of(b) for a, b in pairs)
    return {"pairs": len(pairs), "groups": sum(1 for m in members.values() if len(m) > 1 and frozenset(m) not in same),
            "pairs_across_classes": int(classes), "sheet": sheet, "shown": int(len(pick))}


def render(r: dict) -> str:
    ceiling = r["dali_decode_only"]["images_per_s"]
    lines = [f"files: {r['files']}; machine: {r['machine']}; date: {r['date']}", "",
             "rounds (decode-only vs gpupipe, alternating): " + "; ".join(
                 f"{x['decode_only']:,.0f} vs {x['gpupipe']:,.0f} ({x['ratio']:.0%})" for x in r["rounds"]), "",
             "| tool | images/s | vs decode-only | near recall | pair precision (planted) | pair recall | pair precision (all) |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| DALI decode-only | {ceiling:,.0f} | 100% | | | | |"]
    for name, v in r.items():
        if not isinstance(v, dict) or "pairs_all" not in v:
            continue
        lines.append(f"| {name} | {v['images_per_s']:,.0f} | {v['images_per_s'] / ceiling:.0%} | {v['near_recall']:.3f} | "
                     f"{v['pairs_planted']['precision']:.3f} | {v['pairs_all']['recall']:.3f} | {v['pairs_all']['precision']:.4f} |")
    for name, v in r.items():
        if isinstance(v, dict) and "stage_images_per_s" in v:
            lines += ["", f"{name} per stage (images/s): " + "; ".join(
                f"{k.strip()} {x:,.0f}" for k, x in v["stage_images_per_s"].items())]
    for name, v in r.items():
        if isinstance(v, dict) and "direct_near_recall" in v:
            lines += ["", f"{name}, its reported pairs scored directly (no connected components): near recall "
                      f"{v['direct_near_recall']}, precision of pairs touching a planted file "
                      f"{v['direct_precision_planted']}; by kind: "
                      + ", ".join(f"{k} {x}" for k, x in v["direct_recall_by_kind"].items())]
    for name, v in r.items():
        if isinstance(v, dict) and v.get("original_pairs"):
            o = v["original_pairs"]
            lines += ["", f"{name}: {o['pairs']} pairs of different originals grouped ({o['groups']} groups, "
                      f"{o['pairs_across_classes']} across classes); {o['shown']} shown in {o['sheet']}"]
        if isinstance(v, dict) and v.get("recall_probe"):
            p = v["recall_probe"]
            lines += ["", f"{name}: recall measured by its own probe: {p['recall']} ("
                      + ", ".join(f"{k} {x['recall']}" for k, x in p["by_kind"].items())
                      + f"), false matches {p['false_matches']}"]
    lines += ["", "recall by planted kind:"]
    for name, v in r.items():
        if isinstance(v, dict) and "recall_by_kind" in v:
            lines.append(f"  {name}: " + ", ".join(f"{k} {x}" for k, x in v["recall_by_kind"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
