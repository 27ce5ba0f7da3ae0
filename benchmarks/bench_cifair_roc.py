"""How the photo route's thresholds were chosen: ciFAIR's pairs against hard negatives.

    python benchmarks/bench_cifair_roc.py --run RUN [--pairs CSV] [--fashion-n 10000]

RUN: a finished ``gpupipe dedup`` run over CIFAR-10's 60,000 JPEGs (its
ledger and thumbs.npy; ``benchmarks/bench_cifair.py`` makes one).  For every
pair below, the check alone (`gpupipe.hashing.verify.PairCheck` with the
photo route), on the pair as given, not only where the candidate search
proposed it:
- positives: ciFAIR's same-shot pairs (judgment 1), in the *choose* and
  *judge* halves of `bench_cifair.halves`; judgment-2 pairs (very similar,
  different content) should be rejected;
- CIFAR negatives: every candidate pair (pHash or shift key within 8 bits)
  whose two images carry different CIFAR-10 classes: look-alikes that are
  not the same shot;
- digits / Fashion-MNIST negatives: every candidate pair (the same search,
  zoomed queries included) of different originals, as colour thumbnails
  made gray (the route is off for gray images in the stage; here it is
  forced on, to show why).
Prints, per rule (r >= R and z >= Z), the share of positives accepted and the
count of negatives accepted; then the candidate recall of ciFAIR's pairs with
and without the zoomed queries; then the same-shot pairs that only the
nearest-neighbour search proposes, per half, with their z.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cifair import SHARED, halves  # noqa: E402
from gpupipe import schema  # noqa: E402
from gpupipe.hashing.neighbors import hamming, near_pairs  # noqa: E402
from gpupipe.hashing.verify import PairCheck, to_gray  # noqa: E402
from gpupipe.stages.dedup import ZOOM_QUERIES, _photo_views  # noqa: E402
from gpupipe.stages.hashing import image_keys  # noqa: E402

RULES = [(r, z) for z in (0, 6, 7, 8) for r in (0.85, 0.9)]


def zoom_keys(gray: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per zoom of ZOOM_QUERIES, the stage's (pHash, shift key) of every image zoomed in."""
    (ph, sk), _ = _photo_views(gray, np.arange(len(gray)), np)
    m = len(gray)
    return [(ph[k * m:(k + 1) * m], sk[k * m:(k + 1) * m]) for k in range(len(ZOOM_QUERIES))]


def candidates(gray: np.ndarray, zoomed: bool, bits: int = 8) -> np.ndarray:
    """(K, 2) candidate pairs (i < j) of distinct pixels, as the dedup stage proposes them."""
    keys = image_keys(gray, np)
    zk = zoom_keys(gray) if zoomed else []
    m, out = len(gray), []
    for w in (0, 1):
        q = np.concatenate([k[w] for k in zk]) if zk else None
        res = near_pairs(keys[w], max_distance=bits, direct=True, queries=q)
        out.append(np.stack(res[:2], 1))
        if q is not None:
            zi, zj = res[3] % m, res[4]
            out.append(np.stack([np.minimum(zi, zj), np.maximum(zi, zj)], 1)[zi != zj])
    c = np.unique(np.concatenate(out), axis=0)
    return c[(gray[c[:, 0]] != gray[c[:, 1]]).any(axis=(1, 2))]


def scores(thumbs: np.ndarray, pairs: np.ndarray):
    """(r, z) of the registered route for pairs (K, 2) of rows of thumbs (N, 32, 32, 3)."""
    chk = PairCheck(thumbs, registered=True)
    chk._is_colour[:] = True                       # forced on, gray images too
    r, z = chk.registered_similarity(pairs[:, 0], pairs[:, 1], colour=False)[:2]
    return r, z


def gray_set(name: str, n: int) -> np.ndarray:
    from gpupipe.datasets import load_digits_images, load_fashion_mnist
    from gpupipe.transforms import resize

    if name == "digits":
        im, _ = load_digits_images()
    else:
        im, _ = load_fashion_mnist(split="test")
        im = im[:n]
    im = np.stack([resize(x, 32, 32) for x in im])
    return im if im.ndim == 3 else im[..., 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--pairs", type=Path, default=SHARED / "cifair_pairs_dev.csv")
    ap.add_argument("--fashion-n", type=int, default=10000)
    args = ap.parse_args()
    t = pq.read_table(args.run / "ledger.parquet", columns=[schema.REL_PATH, schema.LABEL]).to_pandas()
    thumbs = np.asarray(np.load(args.run / "thumbs.npy", mmap_mode="r"))
    row = {p: k for k, p in enumerate(t[schema.REL_PATH])}
    pairs = pd.read_csv(args.pairs)
    pos = np.array([[row[a], row[b]] for a, b in zip(pairs["a"], pairs["b"])])
    choose, jd = halves(pairs).to_numpy(), pairs["judgment"].to_numpy()
    gray = to_gray(thumbs)
    lab = t[schema.LABEL].to_numpy()
    cand = candidates(gray, zoomed=False)
    cross = cand[lab[cand[:, 0]] != lab[cand[:, 1]]]
    sets = {"pos": scores(thumbs, pos), "cifar_cross": scores(thumbs, cross)}
    n_neg = {"cifar_cross": len(cross)}
    for name in ("digits", "fashion"):
        g = gray_set(name, args.fashion_n)
        c = candidates(g, zoomed=True)
        sets[name] = scores(np.repeat(g[..., None], 3, axis=-1), c)
        n_neg[name] = len(c)
    print(f"negatives: CIFAR cross-class candidates {n_neg['cifar_cross']}, digits {n_neg['digits']}, "
          f"Fashion-MNIST ({args.fashion_n}) {n_neg['fashion']}")
    print("| rule | same-shot, choose (61) | same-shot, judge (65) | judgment-2 choose / judge | "
          "CIFAR cross-class | digits | Fashion-MNIST |")
    print("|---|---|---|---|---|---|---|")
    r, z = sets["pos"]
    for rmin, zmin in RULES:
        ok = (r >= rmin) & (z >= zmin)
        neg = {k: int(((v[0] >= rmin) & (v[1] >= zmin)).sum()) for k, v in sets.items() if k != "pos"}
        print(f"| r >= {rmin}, z >= {zmin} | {ok[(jd == 1) & choose].mean():.3f} | {ok[(jd == 1) & ~choose].mean():.3f} | "
              f"{ok[(jd == 2) & choose].sum()}/{((jd == 2) & choose).sum()} / "
              f"{ok[(jd == 2) & ~choose].sum()}/{((jd == 2) & ~choose).sum()} | {neg['cifar_cross']} | {neg['digits']} | "
              f"{neg['fashion']} |")
    # candidate recall of the same-shot pairs: which key search proposes them
    keys0 = image_keys(gray, np)
    zk = dict(zip(ZOOM_QUERIES, zoom_keys(gray)))
    j1 = pos[jd == 1]
    print("| candidates | same-shot pairs proposed |")
    print("|---|---|")
    for bits in (8, 10):
        hit0 = np.zeros(len(j1), bool)
        for w in (0, 1):
            hit0 |= hamming(keys0[w][j1[:, 0]], keys0[w][j1[:, 1]]) <= bits
        hit = hit0.copy()
        for z in ZOOM_QUERIES:
            for w in (0, 1):
                hit |= hamming(zk[z][w][j1[:, 0]], keys0[w][j1[:, 1]]) <= bits
                hit |= hamming(zk[z][w][j1[:, 1]], keys0[w][j1[:, 0]]) <= bits
        print(f"| pHash or shift key within {bits} bits | {hit0.mean():.3f} |")
        print(f"| ... or either image zoomed by {ZOOM_QUERIES} | {hit.mean():.3f} |")
        if bits == 8:
            hit8 = hit
    nearest_only(thumbs, pos, jd, choose, hit8)


def nearest_only(thumbs: np.ndarray, pos: np.ndarray, jd: np.ndarray, choose: np.ndarray, keyed: np.ndarray) -> None:
    """The same-shot pairs that the stage's nearest-neighbour search proposes (any view of
    either image has the other as its nearest, `gpupipe.hashing.knn`) and the 8-bit keys
    (``keyed``) do not: per half, how many, and their (r, z): what MIN_Z_NEAREST_ONLY was
    chosen on (the choose half's lowest z among them)."""
    from gpupipe.hashing.knn import KNN_NEIGHBOURS
    from gpupipe.stages.dedup import _nearest_candidates

    m = len(thumbs)
    _, views = _photo_views(thumbs, np.arange(m), np)
    near, _ = _nearest_candidates(views, m, None, 0, np)
    j1 = pos[jd == 1]
    code = np.minimum(j1[:, 0], j1[:, 1]).astype(np.int64) * m + np.maximum(j1[:, 0], j1[:, 1])
    by_knn = np.isin(code, near)
    r, z = scores(thumbs, j1)
    print(f"nearest-neighbour candidates ({KNN_NEIGHBOURS} per view): {len(near)} pairs")
    print("| half | same-shot proposed (keys or nearest) | nearest only | their z (r >= 0.85), ascending |")
    print("|---|---|---|---|")
    for name, sel in (("choose", choose[jd == 1]), ("judge", ~choose[jd == 1])):
        only = sel & by_knn & ~keyed
        zs = sorted(round(float(v), 2) for v, rr in zip(z[only], r[only]) if rr >= 0.85)
        print(f"| {name} | {((by_knn | keyed) & sel).sum()} / {sel.sum()} | {only.sum()} | {zs} |")


if __name__ == "__main__":
    main()
