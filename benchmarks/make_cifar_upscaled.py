"""A photo-sized copy of a CIFAR-10 folder: every JPEG upscaled (bicubic) to SIZE x SIZE
and saved as JPEG q90, same folders and names, for timing the hash stage where the
thumbnail needs a real downscale (the 32 px originals skip it).

    python benchmarks/make_cifar_upscaled.py --cifar /tmp/cifar10 --split test --size 256 --out /tmp/cifar256
    gpupipe bench /tmp/cifar256 --device cpu --repeat 3 --no-rank

The content is CIFAR's (no new detail), so only the costs change, not what is a
duplicate.  Numbers: benchmarks/RESULTS.md §32.3.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cifar", required=True, help="the extracted CIFAR-10 JPEG folder (train/, test/)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    src = Path(args.cifar) / args.split
    files = sorted(src.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no .jpg files under {src}")
    out = Path(args.out) / args.split

    def one(f: Path) -> None:
        dst = out / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            im.convert("RGB").resize((args.size, args.size), Image.BICUBIC).save(dst, "JPEG", quality=90)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, files))
    print(f"{len(files):,} images of {src} at {args.size} px -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
