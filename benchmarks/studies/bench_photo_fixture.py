"""The photo test's fixture checked over every pair, not only the candidates.

    python benchmarks/bench_photo_fixture.py [--out /tmp/photo-fixture]

Builds `tests/test_photo_duplicates.py`'s real-photo fixture (80 crops of
scikit-learn's two photographs, one composite copy each), runs ``gpupipe
dedup --verify photo`` on it, then applies the photo route alone
(`gpupipe.hashing.photo`) to all pairs of different shots and to each shot's
pair: how close the nearest negatives come to the thresholds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import test_photo_duplicates as fixture  # noqa: E402
from gpupipe import schema  # noqa: E402
from gpupipe.hashing.photo import DEFAULT_MIN_REGISTERED_Z, REG_MIN_R, min_colour_fit  # noqa: E402
from gpupipe.hashing.verify import PairCheck  # noqa: E402
from gpupipe.runner import LEDGER, DedupOptions, run_dedup  # noqa: E402


class _Dirs:
    def __init__(self, base: Path):
        self.base = base

    def mktemp(self, name: str) -> Path:
        p = self.base / name
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
        return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/photo-fixture"))
    args = ap.parse_args()
    root, n = fixture.photo_tree.__wrapped__(_Dirs(args.out))
    run = args.out / "run"
    run_dedup(root, run, DedupOptions(device="cpu", verify="photo", recall_sample=0))
    t = pq.read_table(run / LEDGER).to_pandas()
    shot = t[schema.REL_PATH].str.extract(r"(shot\d+)")[0].to_numpy()
    i, j = np.triu_indices(len(t), 1)
    check = PairCheck(np.load(run / "thumbs.npy"), registered=True)
    for name, sel in (("different shots", shot[i] != shot[j]), ("a shot and its copy", shot[i] == shot[j])):
        reg = check.registered_similarity(i[sel], j[sel])
        r, z = reg.r, reg.z
        ok = (r >= REG_MIN_R) & (z >= DEFAULT_MIN_REGISTERED_Z)
        colour_ok = ok & (reg.colour_fit >= min_colour_fit(z))
        live = reg.colour_fit[ok]
        print(f"{name}: {int(sel.sum())} pairs, the route's r and z accept {int(ok.sum())}, with the colour fit "
              f"{int(colour_ok.sum())}; r max {r.max():.3f}, 10th percentile {np.quantile(r, 0.1):.3f}; z max "
              f"{z.max():.2f}, 10th percentile {np.quantile(z, 0.1):.2f}; colour fit of those r and z accept: "
              + (f"min {live.min():.3f}, 10th percentile {np.quantile(live, 0.1):.3f}" if len(live) else "none"))


if __name__ == "__main__":
    main()
