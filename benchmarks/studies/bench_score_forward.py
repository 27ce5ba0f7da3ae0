"""`rank`'s scoring path against the bare forward, taken apart, outside `gpupipe bench`.

    python benchmarks/studies/bench_score_forward.py /tmp/cifar10 [--models small-cnn photo-cnn] [--rounds 3] [--batch 256 1024]

Over every ``*.jpg`` under SRC (32 px, torch's threads as they come), per
batch size, model and round, in one process:

* decode: a DALI `file_pipeline` epoch, nothing done with the batches;
* scoring from the files: `score` over that pipeline (decode + resize + forward);
* scoring from the decoded images: `score` over a `file_pipeline` of the images
  decoded once (`gpupipe.dali.decoded`, what `rank` reads since §34);
* scoring from memory: `score` over the same batches held as tensors;
* bare forward: the model over the held batches (inference mode), all of
  them.  (An earlier version timed 8 batches of random tensors after a
  short warm-up, and read the forward 2-3x slower than this: RESULTS.md §34.)
Prints images/s of each and scoring over the bare forward.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gpupipe.dali.augment import file_pipeline
from gpupipe.dali.decoded import decode_once
from gpupipe.device import cpu_device
from gpupipe.models import nets
from gpupipe.models.score import score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("--models", nargs="+", default=["small-cnn", "photo-cnn"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    args = ap.parse_args()
    refs = np.array(sorted(str(p) for p in Path(args.src).rglob("*.jpg")), dtype=object)
    n, dev = len(refs), cpu_device()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        images = decode_once(dev, refs, np.ones(n, bool), size=32, channels=3, directory=tmp)
        print(f"{n} images, {torch.get_num_threads()} torch threads; decoded once in "
              f"{time.perf_counter() - t:.2f} s", flush=True)
        for batch in args.batch:
            run(args, refs, images, batch)


def rate(f, n: int) -> float:
    t = time.perf_counter()
    f()
    return n / (time.perf_counter() - t)


def run(args, refs, images, batch: int) -> None:
    n, dev = len(refs), cpu_device()
    rows = np.arange(n)
    y = np.zeros(n, np.int64)

    def files():
        return file_pipeline(dev, list(refs), rows, size=32, channels=3, batch_size=batch)

    def decoded():
        return file_pipeline(dev, images.take(rows), rows, size=32, channels=3, batch_size=batch)

    held = [(nets.as_input(x).clone(), r) for x, r in decoded()]
    for name in args.models:
        model = nets.build(nets.resolve_model(name), 10, 3, seed=0)

        def bare() -> None:
            with torch.inference_mode():
                model.eval()
                for x, _ in held:
                    model(x)

        bare()                                                     # warm-up
        for r in range(args.rounds):
            ep = files()
            dec = rate(lambda: [None for _ in ep], n)
            ep = files()
            s_files = rate(lambda: score(model, ep, y, torch_device="cpu"), n)
            ep = decoded()
            s_dec = rate(lambda: score(model, ep, y, torch_device="cpu"), n)
            del ep
            s_mem = rate(lambda: score(model, held, y, torch_device="cpu"), n)
            fwd = rate(bare, n)
            print(f"{name} batch {batch} round {r + 1}: decode {dec:,.0f}, scoring from the files {s_files:,.0f} "
                  f"({s_files / fwd:.2f}), from the decoded images {s_dec:,.0f} ({s_dec / fwd:.2f}), "
                  f"from memory {s_mem:,.0f} ({s_mem / fwd:.2f}), bare forward {fwd:,.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
