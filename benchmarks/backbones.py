"""Backbones for `rank --backbone` benchmarks, and a way to make honest weights here.

    python benchmarks/backbones.py --cifar /tmp/cifar10 --out .bench/cifar-test-small-cnn.pt [--epochs 30]
        [--also-train 20000 30000 --labels ../shared/data/cifar10/cifar10n_labels_dev.csv]

trains gpupipe's small-cnn on CIFAR-10's **test** split (10,000 images with
their original labels: other images than the training images CIFAR-10N
judges, as a user's ImageNet or in-house checkpoint would be) with the photo
augmentations (``--also-train LO HI``: and the development training images
LO..HI-1 of CIFAR-10N's label file, with their original labels; 20,000-29,999
lie outside the ``choose`` and ``judge`` parts that bench_cifar10n.py judges),
and saves the weights of its feature part (everything before
the dropout and the dense layer: 128 features).  Then::

    python benchmarks/bench_cifar10n.py --part judge --backbone backbones:small_cnn_features \
        --backbone-weights .bench/cifar-test-small-cnn.pt

(``benchmarks/`` is on the path when the bench runs, so ``backbones`` imports.)
Nothing trained on CIFAR-10 labels ships in the project.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def small_cnn_features(channels: int = 3) -> torch.nn.Module:
    """gpupipe's small-cnn up to its global average pooling: (B, C, S, S) -> (B, 128)
    (`gpupipe.models.nets.small_cnn_features`, which the same weights fit)."""
    from gpupipe.models.nets import small_cnn_features as features

    return features(channels)


def wide_cnn(num_classes: int, channels: int) -> torch.nn.Module:
    """small-cnn at twice the width (32-64-128-256 filters): ~4x its multiply-adds.
    A `rank --model` factory for the capacity study (RESULTS.md §31.1)."""
    from gpupipe.models.nets import small_cnn

    return small_cnn(num_classes, channels, widths=(32, 64, 128, 256))


class _Luma(torch.nn.Module):
    """RGB (B, 3, H, W) -> luma (B, 1, H, W), Rec. 601 weights; no parameters."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).sum(1, keepdim=True)


def luma_cnn(num_classes: int, channels: int) -> torch.nn.Module:
    """gpupipe's photo-cnn on the images' luma only: a model that cannot use colour
    (sky, grass), for the second-opinion study of issue 25 (RESULTS.md §36)."""
    from gpupipe.models.nets import photo_cnn

    if channels != 3:
        return photo_cnn(num_classes, channels)
    return torch.nn.Sequential(_Luma(), photo_cnn(num_classes, 1))


def main() -> int:
    from gpupipe.dali.augment import AugmentConfig
    from gpupipe.device import resolve_device
    from gpupipe.models.train import TrainConfig, train

    ap = argparse.ArgumentParser()
    ap.add_argument("--cifar", default="/tmp/cifar10")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--also-train", type=int, nargs=2, metavar=("LO", "HI"), default=None)
    ap.add_argument("--labels", default="../shared/data/cifar10/cifar10n_labels_dev.csv")
    args = ap.parse_args()
    files = sorted(Path(args.cifar, "test").glob("*/*.jpg"))
    if args.also_train:
        import csv

        lo, hi = args.also_train
        if lo < 20_000:
            sys.exit("--also-train: images below 20,000 are the choose and judge parts bench_cifar10n.py judges")
        with open(args.labels, newline="") as fh:
            files += [Path(args.cifar, r["path"]) for r in csv.DictReader(fh) if lo <= int(r["index"]) < hi]
    classes = sorted({f.parent.name for f in files})
    y = np.array([classes.index(f.parent.name) for f in files])
    val = np.random.default_rng(0).random(len(files)) < 0.1
    f = np.array([str(p) for p in files], object)
    res = train(resolve_device("cpu"), list(f[~val]), y[~val], list(f[val]), y[val], num_classes=10, channels=3,
                config=TrainConfig(model="small-cnn", max_epochs=args.epochs, patience=args.epochs,
                                   augment=AugmentConfig.photo()),     # small_cnn_features takes its weights
                seed=0)
    print(f"trained {res.epochs} epochs, best {res.best_epoch}, validation accuracy "
          f"{res.val_accuracy[res.best_epoch - 1]:.3f} ({len(files)} CIFAR-10 images, held-out 10%)")
    body = small_cnn_features()
    body.load_state_dict({k: v for k, v in res.model.state_dict().items() if k.split(".")[0].isdigit()
                          and int(k.split(".")[0]) < len(body)})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(body.state_dict(), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
