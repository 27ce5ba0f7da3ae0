"""Downstream accuracy: does curation help a fixed model?  (issue 4's measure of the mission)

    python benchmarks/bench_downstream.py [--dataset digits|fashion] [--n 2500] [--seeds 0 1 2]
        [--flip-rate 0.15] [--epochs 40] [--test-images 10000] [--fits 3] [--imbalance 1]
        [--relabel-rounds N] [--baselines RESULTS_JSON]

Per seed: real images (scikit-learn's 1,797 digits upscaled to 32x32, or the
first ``--n`` Fashion-MNIST training images, 28x28), a clean stratified test set (20%) held out first; the
rest written as an ImageFolder with planted defects: label flips
(``--flip-rate``), byte copies and near duplicates, invalid files.  The same
fixed model (the competition's ResNet-50-to-layer1, Adam 1e-4, plain images,
a fixed number of epochs, no early stopping: one recipe every time) is
trained on

  (a) raw: every decodable file with its given label (duplicates included),
  (b) curated: `gpupipe curate` with its defaults (--review auto), the kept rows
      with their curated labels,
  (c) clean: the same originals with their true labels, no duplicates,

and tested on the same clean test set (``--test-images N``, Fashion-MNIST:
the first N images of its own test split instead); each accuracy is the
mean of ``--fits`` trainings (default 3: one training moves by up to 3.4
points, RESULTS.md §5.3).  Reports accuracy (mean, spread) and the share of
the raw-to-clean gap that curation recovers (target >= 90% on every seed).

``--relabel-rounds N``: curate's automatic policy relabels only in its
first N rounds (0: every round).  ``--baselines FILE``: raw and clean do
not depend on gpupipe's curation, so an earlier run's accuracies for them
(the same planted files and fit seeds) can be reused and only curated is
trained: a third of the time.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from gpupipe import schema
from gpupipe.runner import CurateOptions, run_curate
from gpupipe.dali.augment import file_pipeline
from gpupipe.datasets import flip_labels, load_digits_images, load_fashion_mnist, plant_dataset
from gpupipe.device import resolve_device
from gpupipe.loop import RankOptions
from gpupipe.models.score import score
from gpupipe.models.train import TrainConfig, train
from gpupipe.runner import DedupOptions
from gpupipe.stages.balance import BalanceConfig
from gpupipe.stages.review import AutoPolicy
from gpupipe.stages.split import SplitConfig

PLANT = dict(n_byte_copies=60, n_near={"jpeg_q75": 20, "brightness_+10": 20, "resize_90": 20},
             n_corrupt={"truncated": 2, "empty": 2, "not_an_image": 2})


def fit_and_test(dev, files, labels, test_files, test_labels, *, epochs: int, seed: int) -> float:
    cfg = TrainConfig(model="resnet50-layer1", augment=None, max_epochs=epochs, epoch_samples=len(files),
                      batch_size=64)
    res = train(dev, files, np.asarray(labels), [], np.zeros(0, np.int64), num_classes=10, channels=1,
                config=cfg, seed=seed)
    ep = file_pipeline(dev, test_files, np.arange(len(test_files)), size=32, channels=1, batch_size=512)
    s = score(res.model, ep, np.asarray(test_labels), torch_device=dev.torch_device)
    return float((s.pred == np.asarray(test_labels)[s.rows]).mean())


def fits_and_test(dev, files, labels, test_files, test_labels, *, epochs: int, seed: int, fits: int) -> list[float]:
    """`fit_and_test` ``fits`` times, model seeds ``seed*100 .. seed*100+fits-1``
    (one fit: ``seed``, as before ``--fits``): one training of this model on
    ~2,000 images moves by up to 3.4 points from seed to seed (RESULTS.md §5.3)."""
    return [fit_and_test(dev, files, labels, test_files, test_labels, epochs=epochs,
                         seed=seed * 100 + f if fits > 1 else seed) for f in range(fits)]


def load(dataset: str, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """-> (images, labels, upscale) of the benchmark's data."""
    if dataset == "digits":
        (images, labels), upscale = load_digits_images(), 4
        return images, labels, upscale
    images, labels = load_fashion_mnist(split="train")
    return images[:n], labels[:n], 1


def split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (test, train) positions: a stratified 20% test set, seeded.  The
    planted training files are named by their position in ``train``
    (``<class>/img_<i>.png``)."""
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:int(round(0.2 * (labels == c).sum()))]
                           for c in range(10)])
    return test, np.setdiff1d(np.arange(len(labels)), test)


def imbalanced(labels: np.ndarray, positions: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """``positions`` (into ``labels``) thinned to a long tail: class c of K
    keeps ``ratio ** (-c / (K - 1))`` of its images (class 0 all of them, the
    last 1/ratio), a seeded random subset, in their order.  ratio 1: all."""
    if ratio == 1:
        return positions
    rng = np.random.default_rng(seed + 7919)
    classes = np.unique(labels[positions])
    keep = []
    for i, c in enumerate(classes):
        mine = positions[labels[positions] == c]
        m = int(round(len(mine) * ratio ** (-i / max(len(classes) - 1, 1))))
        keep.append(rng.permutation(mine)[:m])
    return np.sort(np.concatenate(keep))


def train_positions(labels: np.ndarray, seed: int, imbalance: float = 1.0) -> np.ndarray:
    """The positions of a seed's training images (`split`, then `imbalanced`):
    the planted training files are named by their place in this array."""
    return imbalanced(labels, split(labels, seed)[1], imbalance, seed)


def original_positions(rel_paths, n_train: int) -> np.ndarray:
    """int (N,): each planted original's position among the seed's ``n_train``
    training images (its name ``<class>/img_<i>.png``), -1 for every other
    file (the planted copies are numbered after the originals)."""
    index = pd.to_numeric(pd.Series(rel_paths).str.extract(r"^\d+/img_(\d+)\.png$")[0]).fillna(-1)
    index = index.astype(int).to_numpy()
    return np.where(index < n_train, index, -1)


def add_runs_args(ap: argparse.ArgumentParser) -> None:
    """--dataset, --seeds, --data: which curate runs of this script to read."""
    ap.add_argument("--dataset", choices=("digits", "fashion"), default="fashion")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data", default=None, help="default: .bench/downstream[-fashion]")


def recorded_runs(args) -> tuple[Path, dict, np.ndarray]:
    """(the runs' folder, the arguments they ran with, the dataset's labels)
    for `add_runs_args`'s options; a run stopped before its results.json
    ran with this script's defaults."""
    work = Path(args.data or (".bench/downstream" + ("" if args.dataset == "digits" else "-fashion")))
    results = work / "results.json"
    run_args = json.loads(results.read_text()).get("args", {}) if results.exists() else {}
    return work, run_args, load(args.dataset, run_args.get("n", 2500))[1]


def labelled_files(root: Path, *, decodable: bool = False) -> tuple[list[str], list[int]]:
    """Every PNG under ``root/<class>/`` with its class; ``decodable``: every
    file there that a trainer can decode, whatever its format."""
    from gpupipe.io.sniff import sniff

    if decodable:
        files = [str(p) for p in sorted(root.rglob("*"))
                 if p.is_file() and sniff(p.read_bytes()).invalid_reason is None]
    else:
        files = sorted(str(p) for p in root.rglob("*.png"))
    return files, [int(Path(p).parent.name) for p in files]


def official_test(work: Path, n: int) -> tuple[list[str], list[int]]:
    """The first ``n`` images of Fashion-MNIST's test split as PNG files (written once)."""
    root = work / f"test-official-{n}"
    if not (root / ".done").exists():
        images, labels = load_fashion_mnist(split="test")
        plant_dataset(images[:n], labels[:n], root, class_names=[str(k) for k in range(10)], seed=0)
        (root / ".done").write_text("")
    return labelled_files(root)


def one_seed(seed: int, args, work: Path, dev, baselines: dict) -> dict:
    images, labels, upscale = load(args.dataset, args.n)
    test = split(labels, seed)[0]
    train_idx = train_positions(labels, seed, args.imbalance)
    root = work / f"seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    names = [str(k) for k in range(10)]
    plant_dataset(images[test], labels[test], root / "test", class_names=names, upscale=upscale, seed=seed)
    test_files, test_y = labelled_files(root / "test")
    if args.test_images:
        test_files, test_y = official_test(work, args.test_images)
    noisy, flipped = flip_labels(labels[train_idx], rate=args.flip_rate, seed=seed)
    truth = plant_dataset(images[train_idx], noisy, root / "raw", class_names=names, seed=seed, upscale=upscale,
                          **PLANT)
    plant_dataset(images[train_idx], labels[train_idx], root / "clean", class_names=names, upscale=upscale,
                  seed=seed)

    raw, raw_y = labelled_files(root / "raw", decodable=True)     # a trainer needs decodable files
    clean, clean_y = labelled_files(root / "clean")
    out = {"seed": seed, "planted_flips": int(flipped.sum()), "raw_files": len(raw), "clean_files": len(clean),
           "planted_duplicates": sum(it.category != "invalid" for it in truth.items)}
    t = time.perf_counter()
    opts = CurateOptions(dedup=DedupOptions(device=args.device),      # curate's defaults, seeded
                         rank=RankOptions(device=args.device, review="auto", mode="oof", max_rounds=3, seed=seed,
                                          policy=AutoPolicy(relabel_rounds=args.relabel_rounds or None)),
                         balance=BalanceConfig(seed=seed), split=SplitConfig(seed=seed))
    run_curate(root / "raw", root / "run", opts)
    out["curate_seconds"] = round(time.perf_counter() - t, 1)
    d = pq.read_table(root / "run" / "ledger.parquet").to_pandas()
    kept = d[d[schema.BALANCE_STATUS] == schema.BAL_KEPT]
    out["curated_files"] = len(kept)
    index = {p: int(p.rsplit("_", 1)[1].split(".")[0]) for p in truth.originals}
    true_of = {p: str(labels[train_idx][i]) for p, i in index.items()}
    known = kept[schema.REL_PATH].map(true_of)
    out["curated_label_errors"] = int((known.notna() & (known != kept[schema.BALANCE_LABEL])).sum())
    out["raw_label_errors"] = int(flipped.sum())
    accs, fits = {}, {}
    for name, files, ys in (
        ("raw", raw, raw_y),
        ("curated", kept[schema.PATH].tolist(), kept[schema.BALANCE_LABEL].astype(int).tolist()),
        ("clean", clean, clean_y),
    ):
        if name in baselines:            # the same files and fit seeds as an earlier run's: its accuracies
            fits[name], accs[name] = baselines[name], float(np.mean(baselines[name]))
            continue
        t = time.perf_counter()
        fits[name] = fits_and_test(dev, files, ys, test_files, test_y, epochs=args.epochs, seed=seed, fits=args.fits)
        accs[name] = float(np.mean(fits[name]))
        out[f"{name}_train_seconds"] = round(time.perf_counter() - t, 1)
    out["accuracy"], out["fits"] = accs, fits
    gap = accs["clean"] - accs["raw"]
    out["gap_recovered"] = (accs["curated"] - accs["raw"]) / gap if gap > 0 else None
    print(json.dumps(out), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=("digits", "fashion"), default="digits")
    ap.add_argument("--n", type=int, default=2500, help="fashion: the first N training images")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--flip-rate", type=float, default=0.15)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--test-images", type=int, default=0,
                    help="fashion: test on the first N images of its test split, not the seed's 20%% (--n 2500: "
                         "500 images, one image 0.2 points, while a seed's raw-to-clean gap can be 5 images)")
    ap.add_argument("--imbalance", type=float, default=1.0,
                    help="a long-tailed training set: class c of K keeps R**(-c/(K-1)) of its images (the last "
                         "1/R); the test set stays balanced")
    ap.add_argument("--fits", type=int, default=3,
                    help="trainings averaged per accuracy (seeds seed*100..; 1: one training with the seed, as "
                         "before RESULTS.md §5.3)")
    ap.add_argument("--relabel-rounds", type=int, default=None,
                    help="the automatic policy relabels only in the first N rounds (0: every round; default: "
                         "curate's)")
    ap.add_argument("--baselines", default=None, metavar="RESULTS_JSON",
                    help="take raw and clean from an earlier run's results.json, or bench_downstream_variants.py's "
                         "json (the same dataset, flips, epochs, test set, fits and long tail: the same files and "
                         "fit seeds), instead of training them again; only curated is trained")
    ap.add_argument("--data", default=None, help="default: .bench/downstream[-fashion]")
    args = ap.parse_args()
    if args.test_images and args.dataset != "fashion":
        ap.error("--test-images: Fashion-MNIST only (digits has no other images)")
    dev = resolve_device(args.device)
    work = Path(args.data or (".bench/downstream" + ("" if args.dataset == "digits" else "-fashion")))
    recorded = {}
    if args.baselines:
        earlier = json.loads(Path(args.baselines).read_text())
        same = ("dataset", "n", "flip_rate", "epochs", "test_images", "imbalance", "fits")    # those it recorded
        diff = [k for k in same if k in earlier["args"] and earlier["args"][k] != getattr(args, k)]
        if diff:
            ap.error(f"--baselines: that run differs in {diff}")
        recorded = {r["seed"]: {k: r["fits"][k] for k in ("raw", "clean")} for r in earlier["runs"]}
        if missing := [s for s in args.seeds if s not in recorded]:
            ap.error(f"--baselines: that run has no seed {missing}")
    runs = [one_seed(s, args, work, dev, recorded.get(s, {})) for s in args.seeds]
    acc = {k: np.array([r["accuracy"][k] for r in runs]) for k in ("raw", "curated", "clean")}
    rec = np.array([r["gap_recovered"] for r in runs if r["gap_recovered"] is not None], float)
    gap_of_means = (acc["curated"].mean() - acc["raw"].mean()) / (acc["clean"].mean() - acc["raw"].mean())
    lines = [f"machine: {platform.node()}, {torch.get_num_threads()} torch threads, device {dev.torch_device}; "
             f"{args.dataset}" + (f" (first {args.n})" if args.dataset == "fashion" else "")
             + (f", tested on the first {args.test_images} of its test split" if args.test_images else "")
             + (f", long tail {args.imbalance:g}x" if args.imbalance != 1 else "")
             + f"; seeds {args.seeds}, flip rate {args.flip_rate}, {args.epochs} epochs, resnet50-layer1, "
             f"mean of {args.fits} fit(s)", "",
             "| data | accuracy mean | min | max | per seed |", "|---|---|---|---|---|"]
    for k, v in acc.items():
        lines.append(f"| {k} | {v.mean():.4f} | {v.min():.4f} | {v.max():.4f} | {', '.join(f'{x:.4f}' for x in v)} |")
    lines += ["", f"gap recovered: {gap_of_means:.1%} of the mean gap; per seed "
                  f"{', '.join(f'{x:.1%}' for x in rec)} (target 90%)",
              f"label errors left in the curated set: {[r['curated_label_errors'] for r in runs]} of "
              f"{[r['raw_label_errors'] for r in runs]} planted; curated files {[r['curated_files'] for r in runs]} "
              f"vs raw {[r['raw_files'] for r in runs]}"]
    print("\n".join(lines))
    (work / "results.json").write_text(json.dumps({"runs": runs, "summary": lines, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
