"""GPU check and timings of what runs without DALI and cuDF: the hash kernels,
the near-duplicate search and the dedup stage, on CuPy.

    python benchmarks/gpu_check.py --run RUN_DIR

RUN_DIR is a CPU dedup run (ledger.parquet + thumbs.npy): the dedup stage is
re-run on the GPU from its hash columns and thumbnails and must give the same
groups.  Prints one line per measurement; no asserts beyond equality checks.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pyarrow.parquet as pq


def timed(fn, xp, repeat=3):
    fn()
    xp.cuda.Device().synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    xp.cuda.Device().synchronize()
    return (time.perf_counter() - t) / repeat, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    args = ap.parse_args()
    import cupy as cp

    from gpupipe import schema
    from gpupipe.device import resolve_device
    from gpupipe.hashing.neighbors import near_pairs
    from gpupipe.hashing.phash import FINE_SIZE, dct_hash, phash
    from gpupipe.hashing.pixels import pixel_hash, to_hex
    from gpupipe.hashing.verify import thumb_distance
    from gpupipe.stages.dedup import DedupConfig, dedup
    from gpupipe.table import Ledger

    dev = resolve_device("gpu")
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"device: {name}; CuPy {cp.__version__}; df module {dev.df.__name__} ({dev.note})")

    thumbs = np.load(f"{args.run}/thumbs.npy")
    table = pq.read_table(f"{args.run}/ledger.parquet")
    n = len(thumbs)
    g = cp.asarray(thumbs)

    # 1. equality CPU == GPU on real thumbnails
    ph_c, ph_g = phash(thumbs), cp.asnumpy(phash(g, cp))
    fi_c, fi_g = dct_hash(thumbs, size=FINE_SIZE), cp.asnumpy(dct_hash(g, size=FINE_SIZE, xp=cp))
    rgb = np.repeat(thumbs[:4096, :28, :28, None], 3, axis=3)
    px_c, px_g = to_hex(pixel_hash(rgb)), to_hex(cp.asnumpy(pixel_hash(cp.asarray(rgb), cp)))
    print(f"equal on {n} real thumbnails: pHash {np.mean(ph_c == ph_g):.5f}, fine hash rows "
          f"{np.mean((fi_c == fi_g).all(1)):.5f}, pixel hash {np.mean(np.array(px_c) == np.array(px_g)):.5f}")

    # 2. kernel throughput on the GPU
    for b, hw in ((65536, 28), (4096, 224)):
        imgs = cp.random.randint(0, 255, size=(b, hw, hw, 3), dtype=cp.uint8)
        s, _ = timed(lambda imgs=imgs: pixel_hash(imgs, cp), cp)
        print(f"pixel hash {hw}x{hw}x3: {b / s:,.0f} images/s ({imgs.nbytes / s / 1e9:.0f} GB/s)")
        del imgs
    big = cp.asarray(np.tile(thumbs, (max(1, 262144 // n), 1, 1)))
    s, _ = timed(lambda: phash(big, cp), cp)
    print(f"pHash (64-bit) on 32x32 thumbs: {len(big) / s:,.0f} images/s")
    s, _ = timed(lambda: dct_hash(big, size=FINE_SIZE, xp=cp), cp)
    print(f"fine hash (256-bit): {len(big) / s:,.0f} images/s")
    m = 1_000_000
    i = cp.random.randint(0, n, m)
    j = cp.random.randint(0, n, m)
    s, _ = timed(lambda: thumb_distance(g[i], g[j], xp=cp, chunk=65536), cp, repeat=1)
    print(f"thumb distance (25 shifts): {m / s:,.0f} pairs/s")
    h = cp.asarray(np.random.default_rng(0).integers(0, 2**63, 10_000_000, dtype=np.int64).view(np.uint64))
    s, (ei, _, _) = timed(lambda: near_pairs(h, max_distance=8, xp=cp), cp, repeat=1)
    print(f"near_pairs, 10M random hashes, max_distance 8: {s:.2f} s, {int(ei.shape[0])} edges")

    # 3. the dedup stage on the GPU from the CPU run's hash columns == the CPU result
    base = table.drop_columns([c for c in schema.names("dedup")])
    ledger = Ledger(dev)
    frame = ledger.from_arrow(base)
    for mode in ("fine", "thumbs"):
        t = time.perf_counter()
        out, stats = dedup(frame, ledger, DedupConfig(verify=mode), thumbs=thumbs)
        cp.cuda.Device().synchronize()
        s = time.perf_counter() - t
        got = ledger.to_arrow(out).select(schema.names("dedup"))
        if mode == "fine":
            want = table.select(schema.names("dedup"))
            same = got.cast(want.schema).equals(want)
            print(f"dedup stage on GPU (verify {mode}): {s:.2f} s for {n} rows, {stats.candidates} candidates, "
                  f"{stats.verified} verified; equal to the CPU ledger: {same}")
        else:
            print(f"dedup stage on GPU (verify {mode}): {s:.2f} s for {n} rows, {stats.candidates} candidates, "
                  f"{stats.verified} verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
