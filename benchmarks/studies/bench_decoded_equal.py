"""What training sees from the files and from the decoded images, epoch by epoch.

    python benchmarks/studies/bench_decoded_equal.py /tmp/cifar10

RESULTS.md §34: with pen strokes, models trained from the decoded images
(an ``external_source``) flagged worse than from the files (DALI's reader).
This compares the two training streams of `file_pipeline` (the light set,
gray, batch 64, shuffled, each image twice an epoch as `train` tiles them)
over 1,200 CIFAR-10 images, 4 epochs each: every row once per epoch, each
batch's pixels matched to its row, the mean |augmented - plain| per epoch,
and the pixels a stroke set (0 where the plain image is above 0.2, 1 where
below 0.8); then, over 600 flat grey images (where every 0 or 1 pixel is a
stroke), how many of the stroke masks repeat.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gpupipe.dali.augment import AugmentConfig, file_pipeline
from gpupipe.dali.decoded import decode_once, take
from gpupipe.device import cpu_device


def streams(refs: np.ndarray, directory: Path):
    dev = cpu_device()
    images = decode_once(dev, refs, np.ones(len(refs), bool), size=32, channels=1, directory=directory)
    rows = np.tile(np.arange(len(refs)), 2)
    for name, src in (("files", list(refs)), ("decoded", images.take(np.arange(len(refs))))):
        yield name, file_pipeline(dev, take(src, rows), rows, size=32, channels=1, batch_size=64,
                                  augment=AugmentConfig.light(), shuffle=True, seed=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    args = ap.parse_args()
    refs = np.array(sorted(str(p) for p in Path(args.src).rglob("*.jpg"))[:1200], dtype=object)
    dev = cpu_device()
    with tempfile.TemporaryDirectory() as tmp:
        plain = torch.cat([x.clone() for x, _ in file_pipeline(dev, list(refs), np.arange(len(refs)), size=32,
                                                               channels=1, batch_size=256)])
        for name, epochs in streams(refs, Path(tmp) / "cifar"):
            for e in range(4):
                seen, size, dark, bright = [], [], 0, 0
                for x, r in epochs:
                    ref = plain[torch.as_tensor(r)]
                    seen.append(r)
                    size.append((x - ref).abs().mean(dim=(1, 2, 3)))
                    dark += int(((x == 0) & (ref > 0.2)).sum())
                    bright += int(((x == 1) & (ref < 0.8)).sum())
                seen = np.concatenate(seen)
                once = np.array_equal(np.sort(seen), np.sort(np.tile(np.arange(len(refs)), 2)))
                print(f"{name} epoch {e}: rows {len(seen)} (each twice: {once}), mean |augmented - plain| "
                      f"{float(torch.cat(size).mean()):.4f}, stroke pixels {dark} black, {bright} white", flush=True)
        flat = Path(tmp) / "flat"
        flat.mkdir()
        for i in range(600):
            Image.fromarray(np.full((32, 32), 128, np.uint8)).save(flat / f"{i}.jpg")
        grey = np.array(sorted(str(p) for p in flat.glob("*.jpg")), dtype=object)
        for name, epochs in streams(grey, Path(tmp) / "flat-decoded"):
            masks, batches = [], []
            for _ in range(3):
                for x, _ in epochs:
                    m = ((x == 0) | (x == 1)).numpy()
                    masks += [hashlib.md5(mi.tobytes()).hexdigest() for mi in m if mi.any()]
                    batches.append(hashlib.md5(m.tobytes()).hexdigest())
            print(f"{name}, flat grey, 3 epochs: {len(masks)} images with strokes, {len(set(masks))} distinct "
                  f"masks; {len(batches)} batches, {len(set(batches))} distinct", flush=True)


if __name__ == "__main__":
    main()
