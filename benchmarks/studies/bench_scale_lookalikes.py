"""What the dedup step checks on bench_scale's mosaics: how many parts each
checked pair shares (issue 27).

    python benchmarks/studies/bench_scale_lookalikes.py --run .bench/scale/n100000/run --shards .bench/scale/n100000/shards

bench_scale builds each image as a 2x2 mosaic of four Fashion-MNIST images
drawn at random from 70,000 (seeded).  Two mosaics that hold the same image in
the same quarter look alike there, and the number of such partners per
mosaic grows with N (about 4 (N - 1) / 70,000: 5.7 at 100k, 57 at 1M).  This
runs the dedup step once on a finished run (as `benchmarks/bench_dedup_step.py`
does), keeps the pairs that reach the same-picture check (after the hash
gate's closest-per-image bound) and the pairs it verifies, and counts, per
pair, the quarters the two mosaics share in place (0-4; the planted copies
share 4).  Prints the counts per N and the checks per image.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpupipe import schema  # noqa: E402
from gpupipe.device import resolve_device  # noqa: E402
from gpupipe.io.rows import NpyRows  # noqa: E402
from gpupipe.stages import dedup as dedup_stage  # noqa: E402
from gpupipe.table import Ledger  # noqa: E402

FASHION = 70_000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--shards", required=True, help="the run's shards (their truth.json gives N and the seed)")
    args = ap.parse_args(argv)
    truth = json.loads((Path(args.shards) / "truth.json").read_text())
    quads = np.random.default_rng(truth["seed"]).integers(0, FASHION, (truth["n"], 4))   # bench_scale.build's draw

    table = pq.read_table(Path(args.run) / "ledger.parquet", columns=list(dedup_stage.READS) + [schema.REL_PATH])
    rel = table.column(schema.REL_PATH).to_pylist()
    mosaic = np.array([int(re.search(r"[mcj](\d{8})\.", r).group(1)) for r in rel], np.int64)
    ledger = Ledger(resolve_device("cpu"))
    frame = ledger.from_arrow(table.drop_columns([schema.REL_PATH]))

    kept = {}
    closest = dedup_stage._closest

    def spy(ei, ej, score, k, xp):
        keep = closest(ei, ej, score, k, xp)
        kept["all"] = (np.asarray(ei), np.asarray(ej))
        kept["checked"] = (np.asarray(ei[keep]), np.asarray(ej[keep]))
        return keep

    dedup_stage._closest = spy
    with NpyRows(Path(args.run) / "thumbs.npy") as thumbs:
        out, stats = dedup_stage.dedup(frame, ledger, dedup_stage.DedupConfig(), thumbs=thumbs)
    # node -> its first row, as dedup numbers nodes (distinct pixel hashes of valid rows, in row order)
    valid = ~ledger.array(frame, schema.IS_INVALID, fill=True, dtype=bool)
    pix = ledger.codes(frame, schema.PIXELS_HASH)
    rows_valid = np.flatnonzero(valid & (pix >= 0))
    _, first = np.unique(pix[rows_valid], return_index=True)
    first_rows = rows_valid[np.sort(first)]

    group = out[schema.DEDUP_GROUP].to_numpy(dtype=np.float64, na_value=np.nan)
    result = {"n": truth["n"], "rows": len(rel), "nodes": int(len(first_rows)), "candidates": stats.candidates,
              "checked": stats.checked, "verified": stats.verified,
              "seconds": {k: round(v, 1) for k, v in stats.seconds.items()}}
    for name, (ei, ej) in kept.items():
        a, b = mosaic[first_rows[ei]], mosaic[first_rows[ej]]
        shared = (quads[a] == quads[b]).sum(axis=1)
        result[name] = {"pairs": int(len(a)), "per_image": round(len(a) / len(first_rows), 2),
                        "shared_in_place": {int(s): int((shared == s).sum()) for s in range(5)}}
    del group
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
