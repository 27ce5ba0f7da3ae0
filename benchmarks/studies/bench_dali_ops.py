"""What each DALI operator of the hash stage costs per image, and whether DALI's
pipelined executor helps, on samples inside WebDataset shards (issue 27).

    python benchmarks/studies/bench_dali_ops.py SHARDS [--n 30000] [--rounds 3]

Reads the first N samples' bytes into memory (as `gpupipe.stages.ingest` lists
them), then alternates, round by round, pipelines of the hash stage's
operators at batch 256 (`gpupipe.dali.decode.Decoder`'s: decode, the
antialiased resize to the 32x32 thumbnail, the gray conversion): decode only;
+ resize; + gray, synchronous as the hash stage runs them (``feed_input`` and
``run``, one thread more than the cores); and the last one in DALI's
pipelined executor (prefetch queue 2, ``external_source`` from the batches)
with 3 and 2 threads.  Prints wall and CPU microseconds per image.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

B = 256


def _pipe(ops: str, batches, *, pipelined: bool, threads: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=B, num_threads=threads, device_id=None, exec_async=pipelined,
                  exec_pipelined=pipelined, prefetch_queue_depth=2 if pipelined else 1)
    def pipe():
        if pipelined:
            enc = fn.external_source(source=batches, batch=True, cycle="raise", dtype=types.UINT8)
        else:
            enc = fn.external_source(name="input", dtype=types.UINT8, device="cpu")
        rgb = fn.decoders.image(enc, device="cpu", output_type=types.RGB)
        if ops == "decode":
            return rgb
        thumb = fn.resize(rgb, size=[32, 32], antialias=True, dtype=types.UINT8)
        if ops == "decode + resize":
            return rgb, thumb
        return rgb, thumb, fn.color_space_conversion(thumb, image_type=types.RGB, output_type=types.GRAY)

    p = pipe()
    p.build()
    return p


def _time(p, batches, pipelined: bool) -> tuple[float, float]:
    c0, t0 = os.times(), time.perf_counter()
    if pipelined:
        try:
            for _ in batches:
                [o.as_array() for o in p.run()]
        except StopIteration:
            pass
    else:
        for b in batches:
            p.feed_input("input", b)
            out = p.run()
            [o.as_array() for o in (out if isinstance(out, tuple) else (out,))]
    wall, c1 = time.perf_counter() - t0, os.times()
    n = len(batches) * B
    return wall / n * 1e6, ((c1.user - c0.user) + (c1.system - c0.system)) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shards")
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from gpupipe.io.sources import read_many
    from gpupipe.stages.ingest import ingest

    t = ingest(args.shards).table
    n = min(args.n, t.num_rows) // B * B
    data = read_many(t.column("path").to_pylist()[:n], t.column("ingest_locator").to_pylist()[:n])
    enc = [np.frombuffer(d, np.uint8) for d in data]
    batches = [enc[i:i + B] for i in range(0, n, B)]
    cores = len(os.sched_getaffinity(0))
    configs = [("decode", False, cores + 1), ("decode + resize", False, cores + 1),
               ("decode + resize + gray", False, cores + 1), ("decode + resize + gray", True, cores + 1),
               ("decode + resize + gray", True, cores)]
    print(f"{n:,} samples of {args.shards}, batch {B}, {cores} cores")
    for r in range(args.rounds):
        for ops, pipelined, threads in configs:
            p = _pipe(ops, batches, pipelined=pipelined, threads=threads)
            wall, cpu = _time(p, batches, pipelined)
            print(f"round {r + 1}: {ops}, {'pipelined' if pipelined else 'synchronous'}, {threads} threads: "
                  f"{wall:.1f} us wall, {cpu:.1f} us CPU per image", flush=True)
            del p
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
