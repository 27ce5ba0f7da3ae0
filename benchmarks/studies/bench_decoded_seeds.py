"""Decoding once vs decoding every epoch, over seeds: tests/test_outlier.py's
planted set (1,797 real digits at 32 px, 10% symmetric flips, 60 planted
images of no class), one out-of-fold round (3 folds, 10 epochs) per seed,
with ``decode_cache`` on and off.

    python benchmarks/studies/bench_decoded_seeds.py [--seeds 0 1 2 3] [--out F.json]

The decoded pixels are the files' bit for bit (tests/test_decoded.py); what
moves is the random stream (the epochs' order, the augmentations' draws).
Prints per seed and mode: flag F1 against the flips, images of no class
flagged, the outlier score's AP, seconds of the round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from gpupipe import schema
from gpupipe.datasets import flip_labels, load_digits_images, load_fashion_mnist, plant_dataset
from gpupipe.loop import RankOptions, run_rank
from gpupipe.models.train import TrainConfig
from gpupipe.runner import DedupOptions, run_dedup


def planted(base: Path, colour: bool = False):
    """As tests/test_outlier.py's ``planted`` fixture: -> (dedup run dir, {rel: kind}, flipped rels).
    ``colour``: every image tinted by a random colour (not the class's)."""
    images, labels = load_digits_images()
    if colour:
        tint = np.random.default_rng(11).uniform(0.3, 1.0, (len(images), 1, 1, 3))
        images = (images[..., None] * tint).astype(np.uint8)
    noisy, flipped = flip_labels(labels, rate=0.1, seed=0)
    root = base / "tree"
    truth = plant_dataset(images, noisy, root, upscale=4)
    flips = {p for p in truth.originals if flipped[int(p.rsplit("_", 1)[1].split(".")[0])]}
    rng = np.random.default_rng(7)
    fashion, _ = load_fashion_mnist(split="test")
    outliers = {}
    for i in range(60):
        kind = ("fashion", "blank", "noise", "crop")[i % 4]
        if kind == "fashion":
            img = np.asarray(Image.fromarray(fashion[rng.integers(len(fashion))]).resize((32, 32), Image.BICUBIC))
        elif kind == "blank":
            img = np.clip(rng.integers(20, 235) + rng.normal(0, 3, (32, 32)), 0, 255)
        elif kind == "noise":
            img = rng.integers(0, 256, (32, 32))
        else:
            d = images[rng.integers(len(images))]
            d = d.mean(axis=-1).astype(np.uint8) if d.ndim == 3 else d
            y, x = rng.integers(0, 5, 2)
            img = np.asarray(Image.fromarray(d[y:y + 3, x:x + 3]).resize((32, 32), Image.BICUBIC))
        rel = f"{rng.integers(10)}/outlier_{kind}_{i:03d}.png"
        Image.fromarray(np.asarray(img, np.uint8)).save(root / rel)
        outliers[rel] = kind
    run = base / "run"
    run_dedup(root, run, DedupOptions(device="cpu", recall_sample=0))
    return run, outliers, flips


def _ap(score: np.ndarray, positive: np.ndarray) -> float:
    hits = positive[np.argsort(-score, kind="stable")]
    return float((np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits).sum() / max(1, hits.sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--out", default=None)
    ap.add_argument("--colour", action="store_true", help="tinted digits: the photo defaults (photo-cnn, one cycle)")
    ap.add_argument("--no-strokes", action="store_true", help="the light set without its spots")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="decoded-seeds-"))
    try:
        run, outliers, flips = planted(base, colour=args.colour)
        out = []
        train = TrainConfig(max_epochs=10)
        if args.no_strokes:
            from dataclasses import replace

            from gpupipe.dali.augment import AugmentConfig
            from gpupipe.dali.strokes import StrokeSpec

            train = replace(train, augment=replace(AugmentConfig.light(), strokes=StrokeSpec(0, 0, 0)))
        for seed in args.seeds:
            for cache in (False, True):
                r = base / f"r{seed}{int(cache)}"
                shutil.copytree(run, r)
                t = time.perf_counter()
                run_rank(r, RankOptions(device="cpu", review="person", worst=10, best=10, mode="oof", folds=3,
                                        max_rounds=1, train=train, seed=seed,
                                        decode_cache=cache))
                sec = time.perf_counter() - t
                d = pq.read_table(r / "ledger.parquet").to_pandas()
                d = d[d[schema.RANK_LOSS].notna()]
                is_out = d[schema.REL_PATH].isin(outliers).to_numpy()
                is_flip = d[schema.REL_PATH].isin(flips).to_numpy()
                flag = d[schema.RANK_FLAG].to_numpy(bool)
                f1 = 2 * (flag & is_flip).sum() / (flag.sum() + is_flip.sum())
                row = {"seed": seed, "decoded": cache, "flag_f1": round(float(f1), 3),
                       "no_class_flagged": int((flag & is_out).sum()),
                       "outlier_ap": round(_ap(d[schema.RANK_OUTLIER].to_numpy(float), is_out), 3),
                       "seconds": round(sec, 1)}
                print(row, flush=True)
                out.append(row)
                shutil.rmtree(r)
        for cache in (False, True):
            rs = [r for r in out if r["decoded"] == cache]
            print(f"decoded={cache}: F1 mean {np.mean([r['flag_f1'] for r in rs]):.3f}, no class flagged "
                  f"{[r['no_class_flagged'] for r in rs]}, outlier AP mean {np.mean([r['outlier_ap'] for r in rs]):.3f}, "
                  f"seconds mean {np.mean([r['seconds'] for r in rs]):.1f}")
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
