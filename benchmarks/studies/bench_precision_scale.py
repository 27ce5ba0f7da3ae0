"""Precision as N grows: false duplicate groups per 10,000 distinct images, at 70k and 1M.

    python benchmarks/bench_precision_scale.py [--sizes 70000 1000000] [--seed 0]

Builds N distinct images from real ones: 2x2 mosaics (56x56) of four random
Fashion-MNIST images.  Mosaics share parts (each Fashion image appears in
about 4N/70,000 of them) but no two are the same picture, so every group
gpupipe forms among them is a false one.  The mosaics never touch the disk:
each goes through the same DALI resize as the hash stage (32x32 RGB and gray
thumbnails, from exactly the pixels a lossless PNG would decode to), the
same keys (`gpupipe.stages.hashing.image_keys`) and the real dedup stage
(candidate searches, same-picture check, grouping).  Target: the number of
false groups per 10k images does not grow with N.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpupipe import schema  # noqa: E402
from gpupipe.datasets import load_fashion_mnist  # noqa: E402
from gpupipe.device import cpu_device  # noqa: E402
from gpupipe.stages.dedup import DedupConfig, dedup  # noqa: E402
from gpupipe.stages.hashing import image_keys  # noqa: E402
from gpupipe.table import Ledger  # noqa: E402

BATCH = 2048


def thumbnails(n: int, images: np.ndarray, seed: int):
    """(n, 32, 32, 3) RGB thumbnails and (n, 32, 32) gray ones of n mosaics."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=BATCH, num_threads=2, device_id=None, exec_async=False, exec_pipelined=False)
    def pipe():
        rgb = fn.external_source(name="rgb", dtype=types.UINT8, layout="HWC")
        thumb = fn.resize(rgb, size=[32, 32], antialias=True, dtype=types.UINT8)
        return thumb, fn.color_space_conversion(thumb, image_type=types.RGB, output_type=types.GRAY)

    p = pipe()
    p.build()
    rng = np.random.default_rng(seed)
    quads = rng.integers(0, len(images), (n, 4))
    rgb_out = np.empty((n, 32, 32, 3), np.uint8)
    gray_out = np.empty((n, 32, 32), np.uint8)
    for s in range(0, n, BATCH):
        q = quads[s:s + BATCH]
        b = len(q)
        top = np.concatenate([images[q[:, 0]], images[q[:, 1]]], axis=2)
        bottom = np.concatenate([images[q[:, 2]], images[q[:, 3]]], axis=2)
        mosaic = np.concatenate([top, bottom], axis=1)                          # (b, 56, 56)
        batch = np.repeat(mosaic[..., None], 3, axis=3)
        feed = list(batch) + [batch[0]] * (BATCH - b)
        p.feed_input("rgb", feed)
        t, g = p.run()
        rgb_out[s:s + b] = np.array(t.as_tensor())[:b]
        gray_out[s:s + b] = np.array(g.as_tensor())[:b].reshape(b, 32, 32)
    return rgb_out, gray_out, quads


def frame_of(n: int, ph: np.ndarray, sk: np.ndarray) -> pd.DataFrame:
    ids = np.arange(n, dtype=np.int64)
    hexes = pa.array([f"{i:032x}" for i in range(n)], pa.string())
    table = pa.table({
        schema.SAMPLE_ID: ids, schema.LABEL: pa.array(["x"] * n), schema.SPLIT: pa.nulls(n, pa.string()),
        schema.FILE_BYTES: np.full(n, 4000, np.int64), schema.IMAGE_FORMAT: pa.array(["png"] * n),
        schema.IMAGE_WIDTH: np.full(n, 56, np.int32), schema.IMAGE_HEIGHT: np.full(n, 56, np.int32),
        schema.IS_INVALID: np.zeros(n, bool), schema.BYTES_HASH: hexes, schema.PIXELS_HASH: hexes,
        schema.PHASH: pa.array(ph, pa.uint64()), schema.SHIFT_KEY: pa.array(sk, pa.uint64()),
    })
    return Ledger(cpu_device()).from_arrow(table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[70_000, 1_000_000])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    images, _ = load_fashion_mnist(split="all")
    ledger = Ledger(cpu_device())
    print("| N | candidates | gated | verified | false groups | rows in them | false groups per 10k | "
          "thumbs s | keys s | dedup s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        t0 = time.perf_counter()
        rgb, gray, quads = thumbnails(n, images, args.seed)
        t1 = time.perf_counter()
        ph, sk = image_keys(gray, np)
        t2 = time.perf_counter()
        frame = frame_of(n, ph, sk)
        out, stats = dedup(frame, ledger, DedupConfig(), thumbs=rgb)
        t3 = time.perf_counter()
        size = out[schema.DEDUP_GROUP_SIZE].to_numpy(dtype=np.int64)
        keep = out[schema.DEDUP_KEEP].to_numpy(dtype=bool)
        groups = int((keep & (size > 1)).sum())
        rows = int((size > 1).sum())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        print(f"| {n:,} | {stats.candidates:,} | {stats.gated:,} | {stats.verified:,} | {groups} | {rows} | "
              f"{groups / n * 1e4:.2f} | {t1 - t0:.0f} | {t2 - t1:.0f} | {t3 - t2:.0f} | {rss:.1f} |", flush=True)
        shared = 0
        if groups:
            g = out[schema.DEDUP_GROUP].to_numpy(dtype=np.float64, na_value=np.nan)
            for rep in np.flatnonzero(keep & (size > 1))[:20]:
                members = np.flatnonzero(g == g[rep])
                shared += int(len(set(quads[members[0]]) & set(quads[members[1]])))
            print(f"  first {min(groups, 20)} false groups: {shared} quadrant images shared in total between "
                  "their first two members (0 = four different Fashion images each)")
        del rgb, gray, frame, out
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
