"""Scale: `gpupipe dedup` on N distinct real-derived images in WebDataset shards.

    python benchmarks/bench_scale.py [--sizes 100000 1000000] [--data .bench/scale] [--workers N]

For each N: builds N distinct 56x56 images, 2x2 mosaics of four random
Fashion-MNIST images (seeded; no two share all four parts), plus planted
duplicates (0.5% byte copies under another key, 0.5% JPEG q75 re-encodes),
as PNG members of WebDataset shards of 10,000 samples (``.cls`` labels: the
top-left part's class).  Then, in one run, side by side:

- a DALI decode-only pass over the same shards (``fn.readers.webdataset`` ->
  ``fn.decoders.image``, CPU, all cores): the ceiling;
- ``gpupipe dedup --device cpu`` on the shards, in a child process: wall time,
  images/s, peak RSS (the child's own VmHWM, read at its exit), and the planted pairs found
  (recall) and groups formed among different mosaics (false groups).

Targets (issue 9): >= 50% of decode-only, peak RSS <= 4 GiB, time from 100k to
1M grows at most 11x.  Writes RESULTS-scale.json beside the data.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARD = 10_000


def build(n: int, out: Path, seed: int = 0) -> dict:
    """Write the shards of N mosaics + planted copies; return the ground truth."""
    from PIL import Image

    from gpupipe.datasets import FASHION_MNIST_CLASSES, add_tar_member, load_fashion_mnist
    from gpupipe.transforms import near_copy

    truth_file = out / "truth.json"
    if truth_file.exists():
        t = json.loads(truth_file.read_text())
        if t["n"] == n and t["seed"] == seed:
            return t
    out.mkdir(parents=True, exist_ok=True)
    for p in out.glob("*.tar"):
        p.unlink()
    images, labels = load_fashion_mnist(split="all")
    rng = np.random.default_rng(seed)
    quads = rng.integers(0, len(images), (n, 4))
    n_copy = n_near = n // 200
    src = rng.choice(n, n_copy + n_near, replace=False)

    def mosaic(q):
        return np.concatenate([np.concatenate([images[q[0]], images[q[1]]], 1),
                               np.concatenate([images[q[2]], images[q[3]]], 1)], 0)

    def png(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def encode(i: int) -> bytes:
        return png(mosaic(quads[i]))

    pairs = []
    extra: list[tuple[str, bytes, int]] = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        t = time.perf_counter()
        for s in range(0, n, SHARD):
            idx = range(s, min(n, s + SHARD))
            blobs = list(pool.map(encode, idx, chunksize=256))
            with tarfile.open(out / f"train-{s // SHARD:06d}.tar", "w") as tf:
                for i, b in zip(idx, blobs):
                    add_tar_member(tf, f"m{i:08d}.png", b)
                    add_tar_member(tf, f"m{i:08d}.cls", FASHION_MNIST_CLASSES[labels[quads[i][0]]].encode())
            done = min(n, s + SHARD)
            if done % 100_000 == 0 or done == n:
                print(f"  {done:,} mosaics written, {done / (time.perf_counter() - t):,.0f}/s", flush=True)
    prng = np.random.default_rng(seed + 1)
    for k, i in enumerate(src.tolist()):
        a = mosaic(quads[i])
        if k < n_copy:
            extra.append((f"c{i:08d}.png", png(a), i))
        else:
            data, _ = near_copy(a, "jpeg_q75", prng)
            extra.append((f"j{i:08d}.jpg", data, i))
    with tarfile.open(out / "train-planted.tar", "w") as tf:
        for name, b, i in extra:
            add_tar_member(tf, name, b)
            add_tar_member(tf, name.split(".")[0] + ".cls", FASHION_MNIST_CLASSES[labels[quads[i][0]]].encode())
            pairs.append([name, f"m{i:08d}.png"])
    truth = {"n": n, "seed": seed, "planted_pairs": pairs, "files": n + len(extra)}
    truth_file.write_text(json.dumps(truth))
    return truth


def decode_only(shards: list[str], threads: int, batch: int = 512) -> dict:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None)
    def pipe():
        enc = fn.readers.webdataset(paths=shards, ext=["png;jpg"], missing_component_behavior="skip",
                                    pad_last_batch=True, name="r", dont_use_mmap=False)
        return fn.decoders.image(enc, device="cpu", output_type=types.RGB)

    p = pipe()
    p.build()
    size = p.epoch_size("r")
    t = time.perf_counter()
    for _ in range(-(-size // batch)):
        p.run()
    s = time.perf_counter() - t
    return {"images": size, "seconds": round(s, 1), "images_per_s": round(size / s)}


# Runs `gpupipe.cli` as `python -m` would and, at exit, writes the process's own peak
# resident set (VmHWM of /proc/self/status) to the file named first.  Not ru_maxrss: Linux
# carries the hiwater mark of the memory a process had before exec into it, and Python's
# subprocess starts children by vfork, whose memory before exec is this bench's (after the
# in-process decode-only pass over a million images, ~4 GiB): its 1M "peaks" read 3.90-3.98 GiB.
_PEAK_WRAPPER = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as f:
        kb = next((line.split()[1] for line in f if line.startswith("VmHWM:")), "")
    with open(out, "w") as f:
        f.write(kb)
atexit.register(peak)
sys.argv[0] = "gpupipe"
runpy.run_module("gpupipe.cli", run_name="__main__", alter_sys=True)
"""


def run_gpupipe(src: Path, run: Path, workers: int | None) -> dict:
    peak_file = run.parent / f"{run.name}.peak-kb"
    args = ["dedup", str(src), "--out", str(run), "--device", "cpu", "--quiet", "--recall-sample", "0"]
    if workers:
        args += ["--workers", str(workers)]
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, str(peak_file), *args], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    kb = peak_file.read_text().strip() if peak_file.exists() else ""
    summary = json.loads((run / "summary.json").read_text())
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(int(kb) / 2**20, 2) if kb else None,
            "peak_rss_note": "the gpupipe process's own VmHWM (Linux /proc), read at its exit; "
                             "with --workers its workers are not counted",
            "stage_seconds": {k: round(v, 1) for k, v in summary["seconds"].items()}}


def score(run: Path, truth: dict) -> dict:
    import pyarrow.parquet as pq

    from gpupipe import schema

    t = pq.read_table(run / "ledger.parquet", columns=[schema.REL_PATH, schema.DEDUP_GROUP]).to_pandas()
    name = t[schema.REL_PATH].str.rsplit("/", n=1).str[1]
    group = dict(zip(name, t[schema.DEDUP_GROUP]))
    found = sum(1 for a, b in truth["planted_pairs"] if group.get(a) is not None and group.get(a) == group.get(b))
    mosaics = t[name.str.startswith("m")]
    sizes = mosaics.groupby(schema.DEDUP_GROUP).size()
    return {"planted_pairs": len(truth["planted_pairs"]), "recall": round(found / len(truth["planted_pairs"]), 4),
            "false_groups_among_mosaics": int((sizes > 1).sum())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--data", default=".bench/scale")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    results = {"machine": f"{platform.node()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
               "command": " ".join(sys.argv), "sizes": {}}
    for n in args.sizes:
        d = Path(args.data) / f"n{n}"
        t = time.perf_counter()
        truth = build(n, d / "shards")
        print(f"N={n:,}: shards ready in {time.perf_counter() - t:.0f} s", flush=True)
        shards = sorted(str(p) for p in (d / "shards").glob("*.tar"))
        dec = decode_only(shards, os.cpu_count() or 2)
        print(f"  decode-only: {dec}", flush=True)
        g = run_gpupipe(d / "shards", d / "run", args.workers)
        g["images_per_s"] = round(truth["files"] / g["wall_s"])
        g["vs_decode_only"] = round(g["images_per_s"] / dec["images_per_s"], 3)
        g.update(score(d / "run", truth))
        print(f"  gpupipe dedup: {g}", flush=True)
        results["sizes"][n] = {"files": truth["files"], "decode_only": dec, "gpupipe": g}
        Path(args.data, "RESULTS-scale.json").write_text(json.dumps(results, indent=2))
    ns = sorted(results["sizes"])
    if len(ns) >= 2:
        a, b = results["sizes"][ns[0]]["gpupipe"]["wall_s"], results["sizes"][ns[-1]]["gpupipe"]["wall_s"]
        results["growth"] = {"from": ns[0], "to": ns[-1], "time_ratio": round(b / a, 2), "size_ratio": ns[-1] / ns[0]}
        Path(args.data, "RESULTS-scale.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
