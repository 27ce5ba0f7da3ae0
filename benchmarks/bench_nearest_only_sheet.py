"""The pairs only the nearest-neighbour search brings: a contact sheet to judge by eye.

    python benchmarks/bench_nearest_only_sheet.py --run RUN --cifar DIR --out PNG [--n 40] [--seed 1]

RUN: a `gpupipe dedup --verify photo` run over CIFAR-10 (benchmarks/bench_cifair.py
makes one).  Among its near-duplicate rows, those whose pair (member,
representative) the 8-bit keys with the zoomed queries do not propose
(`bench_cifair_roc.candidates`): a seeded sample of ``--n``, each pair side by
side with its registered r, z and descriptor cosine, written to PNG (and the
list to the same name .csv).  How MIN_Z_NEAREST_ONLY (gpupipe/hashing/knn.py)
was chosen: this sheet from a run with the floor at the route's z >= 6
(benchmarks/RESULTS.md §21).
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

from bench_cifair_roc import candidates  # noqa: E402
from gpupipe import schema  # noqa: E402
from gpupipe.hashing.verify import PairCheck, to_gray  # noqa: E402
from gpupipe.stages.dedup import _photo_views  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--cifar", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    from PIL import Image, ImageDraw

    t = pq.read_table(args.run / "ledger.parquet").to_pandas(types_mapper=pd.ArrowDtype)
    thumbs = np.asarray(np.load(args.run / "thumbs.npy", mmap_mode="r"))
    n = len(t)
    old = candidates(to_gray(thumbs), zoomed=True)
    old = set((old[:, 0].astype(np.int64) * n + old[:, 1]).tolist())
    row_of = {int(s): k for k, s in enumerate(t[schema.SAMPLE_ID])}
    near = t[(t[schema.DEDUP_KIND] == schema.KIND_NEAR).fillna(False)]
    a = near.index.to_numpy()
    b = np.array([row_of[int(x)] for x in near[schema.DEDUP_DUPLICATE_OF]])
    keyed = np.array([(min(x, y) * n + max(x, y)) in old for x, y in zip(a.tolist(), b.tolist())])
    _, (desc, _) = _photo_views(thumbs, np.arange(n), np)
    views = len(desc) // n
    cos = np.max([(desc[v * n + a] * desc[b]).sum(1) for v in range(views)]
                 + [(desc[v * n + b] * desc[a]).sum(1) for v in range(views)], axis=0)
    r, z = PairCheck(thumbs, registered=True).registered_similarity(a, b, colour=False)[:2]
    paths = np.asarray(t[schema.REL_PATH].astype(str))
    d = pd.DataFrame({"a": paths[a], "b": paths[b], "keyed": keyed, "cos": cos, "r": r, "z": z})
    print(f"near-duplicate rows {len(d)}: proposed by the keys {int(keyed.sum())}, only by the nearest "
          f"neighbours {int((~keyed).sum())}")
    s = d[~d.keyed].sample(min(args.n, int((~keyed).sum())), random_state=args.seed).reset_index(drop=True)
    sheet = Image.new("RGB", (5 * 208, ((len(s) + 4) // 5) * 112), "white")
    draw = ImageDraw.Draw(sheet)
    for k, p in s.iterrows():
        x, y = (k % 5) * 208, (k // 5) * 112
        for j, f in enumerate((p.a, p.b)):
            sheet.paste(Image.open(args.cifar / f).convert("RGB").resize((96, 96), Image.Resampling.BICUBIC),
                        (x + j * 98, y))
        draw.text((x, y + 97), f"{k} r{p.r:.2f} z{p.z:.1f} c{p.cos:.2f}", fill="black")
    sheet.save(args.out)
    s.to_csv(args.out.with_suffix(".csv"), index_label="k")
    print(f"sheet: {args.out} ({len(s)} pairs); list in {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
