"""`rank`'s scoring path against the bare forward, outside `gpupipe bench`.

    python benchmarks/studies/bench_score_forward.py /tmp/cifar10 [--models small-cnn photo-cnn] [--rounds 2]

`gpupipe bench` read photo-cnn's scoring (decode, resize, forward, per-sample
scores) faster than its bare forward over inputs already in memory, which
cannot be (RESULTS.md §33).  This times the same two things in a plain
process: `score` over a DALI `file_pipeline` of every ``*.jpg`` under SRC
(batch 1024, 32 px), then the model's forward over 8 random batches of 1024
held in memory (channels-last, inference mode); torch's threads as they
come.  Prints images/s of each, per model and round.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from gpupipe.dali.augment import file_pipeline
from gpupipe.device import cpu_device
from gpupipe.models import nets
from gpupipe.models.score import score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("--models", nargs="+", default=["small-cnn", "photo-cnn"])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    refs = sorted(str(p) for p in Path(args.src).rglob("*.jpg"))
    y = np.zeros(len(refs), np.int64)
    held = [nets.as_input(torch.rand(1024, 3, 32, 32)) for _ in range(8)]
    print(f"{len(refs)} images, {torch.get_num_threads()} torch threads")
    for name in args.models:
        model = nets.build(nets.resolve_model(name), 10, 3, seed=0)
        for r in range(args.rounds):
            epochs = file_pipeline(cpu_device(), refs, np.arange(len(refs)), size=32, channels=3, batch_size=1024)
            t = time.perf_counter()
            s = score(model, epochs, y, torch_device="cpu")
            scoring = len(s.rows) / (time.perf_counter() - t)
            del epochs
            with torch.inference_mode():
                model.eval()
                model(held[0])
                t = time.perf_counter()
                for x in held:
                    model(x)
                bare = len(held) * 1024 / (time.perf_counter() - t)
            print(f"{name} round {r + 1}: scoring {scoring:,.0f} images/s ({len(np.unique(s.rows))} rows), "
                  f"bare forward {bare:,.0f} images/s, ratio {scoring / bare:.2f}")


if __name__ == "__main__":
    main()
