"""Decoding once vs decoding every epoch, over seeds: tests/test_outlier.py's
planted set (1,797 real digits at 32 px, 10% symmetric flips, 60 planted
images of no class), one out-of-fold round (3 folds, 10 epochs) per seed,
with ``decode_cache`` on and off.

    python benchmarks/studies/bench_decoded_seeds.py [--seeds 0 1 2 3] [--out F.json]
        [--colour | --no-strokes] [--train-decoded] [--order numpy|numpy-all|dali] [--mask-seed-offset N]
        [--shards]

The decoded pixels are the files' bit for bit (tests/test_decoded.py); what
moves is the random stream (the epochs' order, the augmentations' draws).
Prints per seed and mode: flag F1 against the flips, images of no class
flagged, the outlier score's AP, seconds of the round.

Since §34 a round trains from the files whenever its augmentations draw pen
strokes; ``--train-decoded`` lifts that rule (the experiment that found the
gap).  Two experiments on the decoded path, by patching it in this process:
``--order dali`` takes each training epoch's order from a DALI file reader
(over one dummy file, ``shuffle_after_epoch`` as the file path's) instead of
numpy's permutation; ``--order numpy-all`` reshuffles the first epoch too
(shipped: the first epoch is the initial permutation as it is); ``--mask-seed-offset N`` seeds the pen-stroke masks'
generator N further along.  ``--shards``: the second arm is the same tree
written as WebDataset shards (500 samples a shard), ranked with the defaults
(training reads the shard members' bytes through an ``external_source``, as
rank does with pen strokes), against the ImageFolder read by DALI's file
reader; rows are matched by file name.
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

from gpupipe import schema
from gpupipe.datasets import flip_labels, load_digits_images, plant_dataset, plant_no_class_images
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
    outliers = plant_no_class_images(root, images)
    run = base / "run"
    run_dedup(root, run, DedupOptions(device="cpu", recall_sample=0))
    return run, outliers, flips


def _ap(score: np.ndarray, positive: np.ndarray) -> float:
    hits = positive[np.argsort(-score, kind="stable")]
    return float((np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits).sum() / max(1, hits.sum()))


def patch(args) -> None:
    """The experiments' patches of the decoded path (see the module's doc)."""
    from gpupipe.dali import augment, decoded, strokes

    if args.train_decoded:
        strokes.StrokeSpec.any = property(lambda self: False)          # rank's rule sees no strokes
    if args.mask_seed_offset:
        masks, offset = augment.StrokeMasks, args.mask_seed_offset
        augment.StrokeMasks = lambda spec, *, size, batch_size, seed: masks(spec, size=size, batch_size=batch_size,
                                                                            seed=seed + offset)
    if args.order == "numpy-all":
        def reshuffled_iter(self):
            self._epoch += 1
            n = len(self.rows)
            self._order = (np.random.default_rng([self.seed, self._epoch, 1]).permutation(n) if self.shuffle
                           else np.arange(n))
            self._pos = 0
            return self

        decoded.ArrayBatches.__iter__ = reshuffled_iter
    if args.order == "dali":
        orders: dict = {}
        dummy = Path(tempfile.mkdtemp(prefix="dali-order-")) / "x.bin"
        dummy.write_bytes(b"x")

        def reader_order(n: int, seed: int, epoch: int) -> np.ndarray:
            from nvidia.dali import fn, pipeline_def
            from nvidia.dali.plugin.base_iterator import LastBatchPolicy
            from nvidia.dali.plugin.pytorch import DALIGenericIterator

            if (n, seed) not in orders:
                @pipeline_def(batch_size=256, num_threads=1, device_id=None, seed=seed)
                def pipe():
                    _, row = fn.readers.file(files=[str(dummy)] * n, labels=list(range(n)), shuffle_after_epoch=True,
                                             seed=seed, name="reader", pad_last_batch=True)
                    return row

                p = pipe()
                p.build()
                it = DALIGenericIterator(p, ["row"], reader_name="reader", last_batch_policy=LastBatchPolicy.PARTIAL,
                                         auto_reset=True)
                orders[(n, seed)] = [np.concatenate([b[0]["row"].reshape(-1).numpy() for b in it]) for _ in range(40)]
            return orders[(n, seed)][epoch % 40]

        def dali_iter(self):
            self._epoch += 1
            n = len(self.rows)
            # the first epoch served (DALI restarts the source once before serving) is the reader's first
            self._order = reader_order(n, self.seed, max(self._epoch - 1, 0)) if self.shuffle else np.arange(n)
            self._pos = 0
            return self

        decoded.ArrayBatches.__iter__ = dali_iter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--out", default=None)
    ap.add_argument("--colour", action="store_true", help="tinted digits: the photo defaults (photo-cnn, one cycle)")
    ap.add_argument("--no-strokes", action="store_true", help="the light set without its spots")
    ap.add_argument("--train-decoded", action="store_true", help="train from the decoded images even with strokes")
    ap.add_argument("--order", choices=("numpy", "numpy-all", "dali"), default="numpy",
                    help="decoded path: each epoch's order (numpy-all: the first epoch reshuffled too)")
    ap.add_argument("--mask-seed-offset", type=int, default=0, help="decoded path: the stroke masks' seed + N")
    ap.add_argument("--shards", action="store_true", help="second arm: the tree as WebDataset shards (file path)")
    args = ap.parse_args()
    patch(args)
    base = Path(tempfile.mkdtemp(prefix="decoded-seeds-"))
    try:
        run, outliers, flips = planted(base, colour=args.colour)
        second = run
        if args.shards:
            from gpupipe.datasets import imagefolder_samples, write_webdataset

            write_webdataset(imagefolder_samples(base / "tree"), base / "wds", shard_size=500)
            second = base / "run-shards"
            run_dedup(base / "wds", second, DedupOptions(device="cpu", recall_sample=0))
        arms = {False: "files", True: "shards" if args.shards else "decoded"}
        outliers = {Path(k).name for k in outliers}
        flips = {Path(k).name for k in flips}
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
                shutil.copytree(second if cache else run, r)
                t = time.perf_counter()
                run_rank(r, RankOptions(device="cpu", review="person", worst=10, best=10, mode="oof", folds=3,
                                        max_rounds=1, train=train, seed=seed,
                                        decode_cache=cache or args.shards))
                sec = time.perf_counter() - t
                d = pq.read_table(r / "ledger.parquet").to_pandas()
                d = d[d[schema.RANK_LOSS].notna()]
                names = d[schema.REL_PATH].map(lambda r: r.rsplit("/", 1)[-1])
                is_out = names.isin(outliers).to_numpy()
                is_flip = names.isin(flips).to_numpy()
                flag = d[schema.RANK_FLAG].to_numpy(bool)
                f1 = 2 * (flag & is_flip).sum() / (flag.sum() + is_flip.sum())
                row = {"seed": seed, "decoded": cache, "arm": arms[cache], "flag_f1": round(float(f1), 3),
                       "no_class_flagged": int((flag & is_out).sum()),
                       "outlier_ap": round(_ap(d[schema.RANK_OUTLIER].to_numpy(float), is_out), 3),
                       "seconds": round(sec, 1)}
                print(row, flush=True)
                out.append(row)
                shutil.rmtree(r)
        for cache in (False, True):
            rs = [r for r in out if r["decoded"] == cache]
            print(f"{arms[cache]}: F1 mean {np.mean([r['flag_f1'] for r in rs]):.3f}, no class flagged "
                  f"{[r['no_class_flagged'] for r in rs]}, outlier AP mean {np.mean([r['outlier_ap'] for r in rs]):.3f}, "
                  f"seconds mean {np.mean([r['seconds'] for r in rs]):.1f}")
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
