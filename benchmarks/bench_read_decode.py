"""What reading a small file and resizing a small image cost, next to decoding it.

    python benchmarks/bench_read_decode.py SRC_FOLDER [--rounds 2]

1. Reading every JPEG under SRC_FOLDER (CIFAR-10's 60,000: /tmp/cifar10) in 4
   threads, as the hash stage reads loose files: Python's ``open().read()``
   against ``os.open``/``os.read`` (what `gpupipe.io.sources` does): wall
   seconds and core-seconds of this process.
2. DALI on the CPU, 512 crops of scikit-learn's two sample photographs per
   side (32, 56, 128, 256, 400 px, JPEG q90), 3 threads, run synchronously as the
   hash stage runs it: decode only, decode + the hash stage's antialiased
   resize to 32x32, and two cheaper resizes for comparison: microseconds of
   wall and of CPU per image.  At 32 px the resize returns the image itself
   (`gpupipe.dali.decode.Decoder.decode(at_size=True)` skips it).
Numbers: benchmarks/RESULTS.md §32.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _open_read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def reads(files: list[str], rounds: int) -> None:
    from gpupipe.io.sources import read_many

    ways = {"open().read()": lambda ps: [_open_read(p) for p in ps], "os.open/os.read (read_many)": read_many}
    print(f"reading {len(files):,} files in 4 threads, 512 a task")
    for r in range(rounds):
        for name, fn in ways.items():
            t, c = time.perf_counter(), _cpu()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(fn, [files[i:i + 512] for i in range(0, len(files), 512)]))
            print(f"  round {r + 1}: {name:28s} wall {time.perf_counter() - t:.2f} s, {_cpu() - c:.2f} core-s")


def resizes(rounds: int) -> None:
    from nvidia.dali import fn, pipeline_def, types
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    b = 512
    print(f"DALI on the CPU, {b} JPEG crops a batch, 3 threads, synchronous: us per image (wall / CPU)")
    for side in (32, 56, 128, 256, 400):
        blobs = []
        for k in range(b):
            p = photos[k % 2]
            y, x = rng.integers(0, p.shape[0] - side), rng.integers(0, p.shape[1] - side)
            buf = io.BytesIO()
            Image.fromarray(p[y:y + side, x:x + side]).save(buf, "JPEG", quality=90)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        cells = []
        for mode in ("decode", "resize", "no antialias", "nearest"):
            @pipeline_def(batch_size=b, num_threads=3, device_id=None, exec_async=False, exec_pipelined=False,
                          prefetch_queue_depth=1)
            def pipe():
                rgb = fn.decoders.image(fn.external_source(name="e", dtype=types.UINT8), device="cpu",
                                        output_type=types.RGB)
                if mode == "decode":
                    return rgb
                if mode == "resize":            # the hash stage's thumbnail
                    return fn.resize(rgb, size=[32, 32], antialias=True, dtype=types.UINT8)
                if mode == "no antialias":
                    return fn.resize(rgb, size=[32, 32], antialias=False, dtype=types.UINT8)
                return fn.resize(rgb, size=[32, 32], interp_type=types.INTERP_NN, dtype=types.UINT8)

            p = pipe()
            p.build()
            for _ in range(2):
                p.feed_input("e", blobs)
                p.run()
            n = 10 * rounds
            t, c = time.perf_counter(), _cpu()
            for _ in range(n):
                p.feed_input("e", blobs)
                p.run()
            cells.append(f"{mode} {(time.perf_counter() - t) / (n * b) * 1e6:.1f} / {(_cpu() - c) / (n * b) * 1e6:.1f}")
        print(f"  {side:3d} px: " + "; ".join(cells))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.src, "**", "*.jpg"), recursive=True))
    if not files:
        raise SystemExit(f"no .jpg files under {args.src}")
    reads(files, args.rounds)
    resizes(args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
