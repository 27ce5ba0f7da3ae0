"""Prepare what `gpu_check.py` needs on a GPU machine without DALI: a CPU
dedup run over real images, packed small enough to travel.

    python benchmarks/gpu_prepare.py [--n 20000] [--out .gpu]

Plants near duplicates, re-encodes, byte copies and invalid files among the
first N Fashion-MNIST images (the proportions of bench_dedup.py), runs
``gpupipe dedup --device cpu`` on them, and writes OUT/run/ledger.parquet and
OUT/run/thumbs.npz (the RGB thumbnails, compressed; the lent machine has no
DALI to make them).  The GPU check re-runs the dedup stage from these hash
columns and thumbnails and compares, and trains and scores the auxiliary
models on the thumbnails (32x32, the models' input size) with the ledger's
labels.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpupipe.datasets import FASHION_MNIST_CLASSES, INVALID_KINDS, NEAR_KINDS, load_fashion_mnist, plant_dataset  # noqa: E402
from gpupipe.runner import LEDGER, THUMBS, DedupOptions, run_dedup  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--out", default=".gpu")
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    images, labels = load_fashion_mnist(split="all")
    scale = args.n / 70000
    plant_dataset(images[:args.n], labels[:args.n], data / "tree", class_names=list(FASHION_MNIST_CLASSES),
                  n_byte_copies=round(200 * scale), n_cross_class_copies=round(50 * scale),
                  n_reencodes=round(200 * scale), n_near={k: max(1, round(100 * scale)) for k in NEAR_KINDS},
                  n_corrupt={k: 2 for k in INVALID_KINDS}, seed=0)
    t = time.perf_counter()
    s = run_dedup(data / "tree", data / "run", DedupOptions(device="cpu", recall_sample=0))
    print(f"CPU dedup of {s.rows} files: {time.perf_counter() - t:.1f} s")
    run = out / "run"
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "run" / LEDGER, run / LEDGER)
    np.savez_compressed(run / "thumbs.npz", thumbs=np.load(data / "run" / THUMBS))
    shutil.rmtree(data)
    size = sum(p.stat().st_size for p in run.iterdir())
    print(f"wrote {run} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
