"""ROC of the same-picture check: edited copies vs different samples of one class.

    python benchmarks/bench_verify_roc.py [--dataset digits|fashion] [--n N] [--sources 300]

Positives: for ``--sources`` random originals, one edited copy of every kind
in `gpupipe.transforms` (NEAR_KINDS + EXTRA_KINDS), encoded with Pillow and
decoded by gpupipe's own DALI decoder, paired with their source.
Negatives: every candidate pair among the originals that gpupipe's own
search proposes (pHash within 8 bits or shift key within 8 bits), minus the
pairs with identical pixels: different samples that look alike, the pairs
the check actually has to reject.  Both go through
`gpupipe.hashing.verify.PairCheck` with the full zoom search (the decision
the stage takes at any threshold), with and without the hash gate.

Prints, per threshold, the recall of each kind and the number of negatives
accepted, and writes the scores to ``--out`` (npz) for plotting or a sheet
of the negatives (``--sheet PNG``: the highest-scoring negatives side by
side, for a person to judge).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpupipe.datasets import load_digits_images, load_fashion_mnist  # noqa: E402
from gpupipe.device import cpu_device  # noqa: E402
from gpupipe.hashing.neighbors import near_pairs  # noqa: E402
from gpupipe.hashing.verify import GATE_FINE_BITS, MOVED_MARGIN, PairCheck  # noqa: E402
from gpupipe.stages.hashing import image_keys  # noqa: E402
from gpupipe.transforms import EXTRA_KINDS, NEAR_KINDS, encode, near_copy, resize  # noqa: E402

THRESHOLDS = (0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.995)


def load(dataset: str, n: int | None):
    if dataset == "digits":
        images, labels = load_digits_images()
        images = np.stack([resize(im, 32, 32) for im in images])      # as the demo: 4x, bicubic
    else:
        images, labels = load_fashion_mnist(split="test")
    if n:
        images, labels = images[:n], labels[:n]
    return images, labels


def decode_all(blobs: list[bytes]):
    from gpupipe.dali.decode import Decoder

    dec = Decoder(cpu_device(), batch_size=512).setup()
    thumbs, grays = [], []
    for s in range(0, len(blobs), 512):
        d = dec.decode([np.frombuffer(b, np.uint8) for b in blobs[s:s + 512]])
        assert len(d.ok) == len(blobs[s:s + 512]), "every planted file decodes"
        thumbs.append(np.asarray(d.thumbs))
        grays.append(np.asarray(d.grays))
    return np.concatenate(thumbs), np.concatenate(grays)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("digits", "fashion"), default="digits")
    ap.add_argument("--n", type=int, default=None, help="originals (default: all 1,797 digits / 10,000 Fashion test)")
    ap.add_argument("--sources", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="npz with the scores")
    ap.add_argument("--sheet", default=None, help="PNG of the 40 highest-scoring negatives")
    args = ap.parse_args()

    images, labels = load(args.dataset, args.n)
    rng = np.random.default_rng(args.seed)
    kinds = NEAR_KINDS + EXTRA_KINDS
    src = rng.choice(len(images), min(args.sources, len(images)), replace=False)
    blobs = [encode(im, "PNG") for im in images]
    pos_src, pos_kind = [], []
    for s in src.tolist():
        for k in kinds:
            blobs.append(near_copy(images[s], k, rng)[0])
            pos_src.append(s)
            pos_kind.append(k)
    t = time.perf_counter()
    thumbs, grays = decode_all(blobs)
    n0 = len(images)
    ph, sk = image_keys(grays[:n0], np)
    i1, j1, _ = near_pairs(ph, max_distance=8, direct=True)
    i2, j2, _ = near_pairs(sk, max_distance=8, direct=True)
    key = np.unique(np.concatenate([i1 * n0 + j1, i2 * n0 + j2]))
    ni, nj = key // n0, key % n0
    same = (thumbs[ni] == thumbs[nj]).all(axis=(1, 2, 3))
    ni, nj = ni[~same], nj[~same]
    check = PairCheck(thumbs)
    pi, pj = n0 + np.arange(len(pos_src)), np.asarray(pos_src)
    t1 = time.perf_counter()
    sp = check.similarity(pi, pj, gate=False, full=True)
    sn = check.similarity(ni, nj, gate=False, full=True)
    secs = time.perf_counter() - t1
    gp, gn = check.gate(pi, pj), check.gate(ni, nj)
    pos_kind = np.asarray(pos_kind)
    print(f"{args.dataset}: {n0} originals, {len(src)} sources x {len(kinds)} kinds = {len(pi)} copies; "
          f"{len(ni)} candidate pairs among the originals ({int(same.sum())} pixel-identical left out); "
          f"similarity {secs / (len(pi) + len(ni)) * 1e6:.0f} us/pair full search (decode etc. {t1 - t:.0f} s)")
    print("copies passing the hash gate: " + ", ".join(f"{k} {gp[pos_kind == k].mean():.3f}" for k in kinds)
          + f"; negatives passing it: {gn.mean():.3f}")
    head = "| threshold | " + " | ".join(kinds) + " | min recall | negatives accepted (no gate) | with gate |"
    print(head)
    print("|" + "---|" * (len(kinds) + 4))
    for th in THRESHOLDS:
        rec = [float(((sp >= th) & gp)[pos_kind == k].mean()) for k in kinds]
        print(f"| {th} | " + " | ".join(f"{r:.3f}" for r in rec) + f" | {min(rec):.3f} | "
              f"{int((sn >= th).sum())} of {len(sn)} | {int(((sn >= th) & gn).sum())} |")
    fp, fn = check.unmoved(pi, pj), check.unmoved(ni, nj)
    print(f"\nthe stage's decision: threshold t where the 256-bit DCT hashes agree (within {GATE_FINE_BITS} bits), "
          f"t + {MOVED_MARGIN} where they do not; copies whose hashes agree: "
          + ", ".join(f"{k} {fp[pos_kind == k].mean():.2f}" for k in kinds) + f"; negatives: {fn.mean():.4f}")
    print(head)
    print("|" + "---|" * (len(kinds) + 4))
    for th in THRESHOLDS:
        accp = gp & (sp >= np.where(fp, th, th + MOVED_MARGIN))
        accn = sn >= np.where(fn, th, th + MOVED_MARGIN)
        rec = [float(accp[pos_kind == k].mean()) for k in kinds]
        print(f"| {th} | " + " | ".join(f"{r:.3f}" for r in rec) + f" | {min(rec):.3f} | "
              f"{int(accn.sum())} of {len(sn)} | {int((accn & gn).sum())} |")
    print("positive scores, 1st percentile by kind: "
          + ", ".join(f"{k} {np.percentile(sp[pos_kind == k], 1):.4f}" for k in kinds))
    print("negative scores, quantiles 0.99 / 0.999 / max: "
          + " / ".join(f"{q:.4f}" for q in np.quantile(sn, [0.99, 0.999, 1.0])) if len(sn) else "no negatives")
    if args.out:
        np.savez(args.out, sp=sp, kind=pos_kind, gp=gp, sn=sn, gn=gn, ni=ni, nj=nj, labels=labels)
    if args.sheet and len(sn):
        from PIL import Image

        top = np.argsort(-sn)[:40]
        gap = np.full((32, 4, 3), 255, np.uint8)
        tiles = [np.concatenate([thumbs[ni[k]], gap, thumbs[nj[k]], np.full((32, 12, 3), 128, np.uint8)], 1)
                 for k in top]
        rows = [np.concatenate(tiles[r:r + 5], 1) for r in range(0, len(tiles) - len(tiles) % 5, 5)]
        img = np.concatenate([np.pad(r, ((0, 4), (0, 0), (0, 0)), constant_values=128) for r in rows], 0)
        Image.fromarray(img).resize((img.shape[1] * 3, img.shape[0] * 3), Image.NEAREST).save(args.sheet)
        print(f"wrote {args.sheet}: the 40 highest-scoring negatives ({sn[top[-1]]:.4f} .. {sn[top[0]]:.4f}), "
              "row-major, each pair side by side")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
