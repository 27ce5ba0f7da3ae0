"""The bare forward pass on CPU with glibc's default allocator settings and
with large blocks kept in the heap (``mallopt``), in fresh processes.

    python benchmarks/studies/bench_forward_malloc.py [--rounds 2] [--train /tmp/cifar10]

RESULTS.md §34: on this VM (transparent huge pages only on ``madvise``) the
forward's rate swung ~2x between rounds and runs.  Activations above
glibc's mmap ceiling (32 MiB at most by default; photo-cnn's first block at
batch 1024 is 100 MB) are fresh mappings every batch, faulted in 4 KiB
pages.  Each round runs a child process per setting (off: defaults; on:
``mallopt(M_MMAP_THRESHOLD, 1 GiB)`` and ``M_TRIM_THRESHOLD`` 2 GiB before
torch allocates) that times small-cnn and photo-cnn over 16,384 random
32 px images at batch 256 and 1024, three passes each, and prints images/s
and the child's peak RSS.  ``--train SRC``: instead, two epochs of one-cycle
photo-cnn training (photo set, batch 64) on 8,192 of SRC's ``train/`` JPEGs
decoded once (`gpupipe.dali.decoded`), labels from the folder names.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import ctypes, resource, sys, time
if sys.argv[1] == "on":
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 30)          # M_MMAP_THRESHOLD
    libc.mallopt(-1, (1 << 31) - 1)    # M_TRIM_THRESHOLD
import torch
from gpupipe.models import nets
for name in ("photo-cnn", "small-cnn"):
    model = nets.build(nets.resolve_model(name), 10, 3, seed=0).eval()
    for bs in (256, 1024):
        held = [nets.as_input(torch.rand(bs, 3, 32, 32)).clone() for _ in range(16384 // bs)]
        with torch.inference_mode():
            model(held[0])
            r = []
            for _ in range(3):
                t = time.perf_counter()
                for x in held:
                    model(x)
                r.append(round(16384 / (time.perf_counter() - t)))
        print(f"  mallopt {sys.argv[1]}: {name} batch {bs}: {r} images/s", flush=True)
print(f"  mallopt {sys.argv[1]}: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
"""


TRAIN = r"""
import ctypes, sys, tempfile, time
if sys.argv[1] == "on":
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 30)
    libc.mallopt(-1, (1 << 31) - 1)
from pathlib import Path
import numpy as np
from gpupipe.dali.augment import AugmentConfig
from gpupipe.dali.decoded import decode_once
from gpupipe.device import cpu_device
from gpupipe.models.train import TrainConfig, train
refs = np.array(sorted(str(p) for p in Path(sys.argv[2], "train").rglob("*.jpg"))[:8192], dtype=object)
names = sorted({Path(r).parent.name for r in refs})
y = np.array([names.index(Path(r).parent.name) for r in refs])
dev = cpu_device()
with tempfile.TemporaryDirectory() as tmp:
    images = decode_once(dev, refs, np.ones(len(refs), bool), size=32, channels=3, directory=tmp)
    cfg = TrainConfig(model="photo-cnn", epoch_samples=len(refs), max_epochs=2,
                      augment=AugmentConfig.auto(channels=3, mode="oof"), schedule="onecycle")
    t = time.perf_counter()
    train(dev, images.take(np.arange(len(refs))), y, [], np.zeros(0, np.int64), num_classes=len(names), channels=3,
          config=cfg, seed=0)
    print(f"  mallopt {sys.argv[1]}: training {2 * len(refs) / (time.perf_counter() - t):,.0f} images/s", flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train", default=None, metavar="SRC")
    args = ap.parse_args()
    for r in range(args.rounds):
        print(f"round {r + 1}", flush=True)
        for setting in ("off", "on") if r % 2 == 0 else ("on", "off"):
            cmd = [TRAIN, setting, args.train] if args.train else [CHILD, setting]
            subprocess.run([sys.executable, "-c", *cmd], check=True)


if __name__ == "__main__":
    main()
