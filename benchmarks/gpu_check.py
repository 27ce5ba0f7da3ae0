"""GPU check and timings of what runs without DALI and cuDF: the hash kernels,
the shift key, the same-picture check, the near-duplicate search and the dedup
stage, on CuPy.

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
    from gpupipe.hashing.shiftkey import ring_code, shift_key
    from gpupipe.hashing.verify import PairCheck
    from gpupipe.stages.dedup import DedupConfig, dedup
    from gpupipe.table import Ledger

    dev = resolve_device("gpu")
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"device: {name}; CuPy {cp.__version__}; df module {dev.df.__name__} ({dev.note})")

    rgb_thumbs = np.load(f"{args.run}/thumbs.npy")                  # (N, 32, 32, 3)
    thumbs = rgb_thumbs[..., 0] if rgb_thumbs.ndim == 4 else rgb_thumbs   # gray data: R = G = B
    table = pq.read_table(f"{args.run}/ledger.parquet")
    n = len(thumbs)
    g = cp.asarray(thumbs)

    # 1. equality CPU == GPU on real thumbnails
    ph_c, ph_g = phash(thumbs), cp.asnumpy(phash(g, cp))
    fi_c, fi_g = dct_hash(thumbs, size=FINE_SIZE), cp.asnumpy(dct_hash(g, size=FINE_SIZE, xp=cp))
    sk_c, sk_g = shift_key(thumbs), cp.asnumpy(shift_key(g, cp))
    rc_c, rc_g = ring_code(thumbs), cp.asnumpy(ring_code(g, xp=cp))
    rgb = np.repeat(thumbs[:4096, :28, :28, None], 3, axis=3)
    px_c, px_g = to_hex(pixel_hash(rgb)), to_hex(cp.asnumpy(pixel_hash(cp.asarray(rgb), cp)))
    print(f"equal on {n} real thumbnails: pHash {np.mean(ph_c == ph_g):.5f}, fine hash rows "
          f"{np.mean((fi_c == fi_g).all(1)):.5f}, shift key {np.mean(sk_c == sk_g):.5f}, ring code rows "
          f"{np.mean((rc_c == rc_g).all(1)):.5f}, pixel hash {np.mean(np.array(px_c) == np.array(px_g)):.5f}")
    rng = np.random.default_rng(0)
    pi, pj = rng.integers(0, n, 20000), rng.integers(0, n, 20000)
    s_c = PairCheck(rgb_thumbs).similarity(pi, pj, gate=False, full=True)
    s_g = cp.asnumpy(PairCheck(cp.asarray(rgb_thumbs), xp=cp).similarity(cp.asarray(pi), cp.asarray(pj),
                                                                          gate=False, full=True))
    print(f"same-picture similarity, 20,000 random pairs: max |CPU - GPU| {np.abs(s_c - s_g).max():.2e}")

    # 2. kernel throughput on the GPU
    for b, hw in ((65536, 28), (4096, 224)):
        imgs = cp.random.randint(0, 255, size=(b, hw, hw, 3), dtype=cp.uint8)
        s, _ = timed(lambda imgs=imgs: pixel_hash(imgs, cp), cp)
        print(f"pixel hash {hw}x{hw}x3: {b / s:,.0f} images/s ({imgs.nbytes / s / 1e9:.0f} GB/s)")
        del imgs
    big = cp.asarray(np.tile(thumbs, (max(1, 262144 // n), 1, 1)))
    s, _ = timed(lambda: phash(big, cp), cp)
    print(f"pHash (64-bit) on 32x32 thumbs: {len(big) / s:,.0f} images/s")
    s, _ = timed(lambda: shift_key(big, cp), cp)
    print(f"shift key (64-bit): {len(big) / s:,.0f} images/s")
    s, _ = timed(lambda: dct_hash(big, size=FINE_SIZE, xp=cp), cp)
    print(f"fine hash (256-bit): {len(big) / s:,.0f} images/s")
    m = 1_000_000
    i = cp.random.randint(0, n, m)
    j = cp.random.randint(0, n, m)
    chk = PairCheck(cp.asarray(rgb_thumbs), xp=cp, chunk=65536)
    s, _ = timed(lambda: chk.similarity(i, j, gate=False), cp, repeat=1)
    print(f"same-picture check, no gate (coarse + fine): {m / s:,.0f} pairs/s")
    h = cp.asarray(np.random.default_rng(0).integers(0, 2**63, 10_000_000, dtype=np.int64).view(np.uint64))
    s, (ei, _, _) = timed(lambda: near_pairs(h, max_distance=8, xp=cp), cp, repeat=1)
    print(f"near_pairs, 10M random hashes, max_distance 8: {s:.2f} s, {int(ei.shape[0])} edges")

    # 3. the dedup stage on the GPU from the CPU run's hash columns == the CPU result
    base = table.drop_columns([c for c in schema.names("dedup")])
    ledger = Ledger(dev)
    frame = ledger.from_arrow(base)
    for rep in range(2):                      # the first call compiles CuPy kernels
        t = time.perf_counter()
        out, stats = dedup(frame, ledger, DedupConfig(), thumbs=rgb_thumbs)
        cp.cuda.Device().synchronize()
        s = time.perf_counter() - t
    groups = [c for c in schema.names("dedup") if c != schema.DEDUP_SIMILARITY]
    got = ledger.to_arrow(out).select(groups)
    want = table.select(groups)
    same = got.cast(want.schema).equals(want)
    differ = int(sum(a != b for a, b in zip(got.column(schema.DEDUP_GROUP).to_pylist(),
                                            want.column(schema.DEDUP_GROUP).to_pylist())))
    print(f"dedup stage on GPU: {s:.2f} s for {n} rows, {stats.candidates} candidates, {stats.gated} gated, "
          f"{stats.verified} verified; equal to the CPU ledger: {same} ({differ} rows in another group)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
