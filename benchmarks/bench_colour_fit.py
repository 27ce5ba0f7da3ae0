"""How the photo route's colour test was chosen: pairs judged by eye and ciFAIR's pairs.

    python benchmarks/bench_colour_fit.py --run RUN [--pairs CSV]

RUN: a ``gpupipe dedup --verify photo`` run over CIFAR-10's 60,000 JPEGs (its
ledger and thumbs.npy; ``benchmarks/bench_cifair.py`` makes one).  Labelled
pairs: the by-eye judgments committed beside this script (same / uncertain /
different; ``cifair_unlisted_pairs.csv`` and ``cifair_nearest_only_pairs.csv``
were judged before the colour test existed and chose it;
``cifair_unlisted_pairs_colour_s*.csv`` were drawn after and judge it), and
ciFAIR's same-shot (j1) and judgment-2 (j2) pairs per half.  For every pair the
registered r and z accept (r >= REG_MIN_R, z >= 6), prints how many of each
label a single colour-fit threshold would reject, then what the shipped rule
(`gpupipe.hashing.photo.min_colour_fit`: MIN_COLOUR_FIT, and
MIN_COLOUR_FIT_WEAK under STRONG_Z) rejects, with the rejected pairs.
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
from gpupipe.hashing import photo  # noqa: E402
from gpupipe.hashing.verify import PairCheck  # noqa: E402

HERE = Path(__file__).resolve().parent
CHOSE = ("cifair_unlisted_pairs.csv", "cifair_nearest_only_pairs.csv")


def labelled(paths: np.ndarray, pairs: Path) -> pd.DataFrame:
    row = {p: k for k, p in enumerate(paths)}
    out = []
    for f in sorted(HERE.glob("cifair_*pairs*.csv")):
        d = pd.read_csv(f)
        tag = "chose" if f.name in CHOSE else "judge"
        out += [(row[a], row[b], f"eye {tag} {e}") for a, b, e in zip(d.a, d.b, d.by_eye)]
    cp = pd.read_csv(pairs)
    out += [(row[a], row[b], f"j{j} {'choose' if c else 'judge'}") for a, b, j, c in zip(cp.a, cp.b, cp.judgment, halves(cp))]
    return pd.DataFrame(out, columns=["a", "b", "label"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--pairs", type=Path, default=SHARED / "cifair_pairs_dev.csv")
    args = ap.parse_args()
    t = pq.read_table(args.run / "ledger.parquet").to_pandas()
    thumbs = np.asarray(np.load(args.run / "thumbs.npy", mmap_mode="r"))
    paths = np.asarray(t[schema.REL_PATH].astype(str))
    s = labelled(paths, args.pairs)
    reg = PairCheck(thumbs, registered=True).registered_similarity(s.a.to_numpy(), s.b.to_numpy())
    s = s.assign(r=reg.r, z=reg.z, colour_fit=reg.colour_fit)
    s = s[(s.r >= photo.REG_MIN_R) & (s.z >= photo.DEFAULT_MIN_REGISTERED_Z)]
    labels = sorted(s.label.unique())
    print("pairs the registered r and z accept, per label:", s.label.value_counts().sort_index().to_dict())
    print("| colour fit < | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for th in np.round(np.arange(0.80, 0.951, 0.01), 2):
        cut = s[s.colour_fit < th].label.value_counts()
        print(f"| {th:.2f} | " + " | ".join(str(int(cut.get(k, 0))) for k in labels) + " |")
    cut = s[s.colour_fit < photo.min_colour_fit(s.z.to_numpy())]
    print(f"shipped rule (>= {photo.MIN_COLOUR_FIT}; >= {photo.MIN_COLOUR_FIT_WEAK} where z < {photo.STRONG_Z}) "
          "rejects:", {k: int(v) for k, v in cut.label.value_counts().sort_index().items()})
    pd.set_option("display.width", 200)
    print(cut.assign(a=paths[cut.a], b=paths[cut.b]).round(3).sort_values("label").to_string(index=False))


if __name__ == "__main__":
    main()
