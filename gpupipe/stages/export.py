"""The export stage: the curated dataset as ImageFolder trees plus manifests.

Reads: ingest, balance and split columns.  Writes (sources are never touched):

    OUT/train/<label>/<name>      kept train rows (all folds), symlinks to the sources (or copies);
                                  samples inside tar shards or Parquet files are written out as files
    OUT/test/<label>/<name>       kept test rows
    OUT/manifest.csv|.parquet     every kept row: sample_id, path (in OUT), source_path, source_locator,
                                  label, set, fold
    OUT/folds/fold-K.csv|.parquet fold K: the train rows, subset = train | val
    OUT/surplus.csv|.parquet      surplus rows in the order they come back

``<name>`` is the source's file name with the sample id added
(``img_000123-<16 hex>.png``; a Parquet row's number with the extension of its
format), so equal names from different folders cannot collide.  The tree is built beside ``OUT`` and renamed into place, so a
reader sees the old export or the new one, never a part.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gpupipe import schema
from gpupipe.io.sources import read_many
from gpupipe.table import Ledger

Mode = Literal["symlink", "copy"]


@dataclass(frozen=True)
class ExportConfig:
    mode: Mode = "symlink"
    workers: int = 8          # threads for copies


@dataclass
class ExportStats:
    out: str
    files: int
    train: int
    test: int
    surplus: int
    folds: int
    written_from_shards: int = 0    # samples inside tar shards / Parquet files, written out as files


def _folder(label: str) -> str:
    """A folder name for a label: path separators and leading dots replaced."""
    safe = str(label).replace("/", "_").replace("\\", "_").replace("\0", "_")
    return "_" + safe if safe.startswith(".") or not safe else safe


def export(frame, ledger: Ledger, out: str | os.PathLike, cfg: ExportConfig = ExportConfig()) -> ExportStats:
    out = Path(out).absolute()
    ids, _ = ledger.host(frame, schema.SAMPLE_ID)
    src, _ = ledger.host(frame, schema.PATH)
    status, _ = ledger.host(frame, schema.BALANCE_STATUS)
    label, _ = ledger.host(frame, schema.BALANCE_LABEL)
    sets, _ = ledger.host(frame, schema.SPLIT_SET)
    fold, has_fold = ledger.host(frame, schema.SPLIT_FOLD)
    surplus_rank, _ = ledger.host(frame, schema.BALANCE_SURPLUS_RANK)
    kept = np.flatnonzero(status == schema.BAL_KEPT)

    rel_src, _ = ledger.host(frame, schema.REL_PATH)
    loc, inside = (ledger.host(frame, schema.LOCATOR) if schema.LOCATOR in frame.columns
                   else (np.full(len(ids), None, object), np.zeros(len(ids), bool)))
    fmt, _ = ledger.host(frame, schema.IMAGE_FORMAT)
    names = [f"{Path(r).stem}-{int(i) & (2**64 - 1):016x}{Path(r).suffix.lower() or _EXT.get(f, '.' + str(f))}"
             for r, i, f in zip(rel_src[kept], ids[kept], fmt[kept])]
    rel = [f"{s}/{_folder(lab)}/{name}" for s, lab, name in zip(sets[kept], label[kept], names)]
    shard = inside[kept]          # samples inside a tar shard or Parquet file: written out, whatever the mode
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for d in {str(Path(r).parent) for r in rel}:
            (tmp / d).mkdir(parents=True, exist_ok=True)
        loose = [(s, r) for s, r, sh in zip(src[kept], rel, shard) if not sh]
        if cfg.mode == "symlink":
            for s, r in loose:
                os.symlink(s, tmp / r)
        else:
            with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
                list(pool.map(lambda sr: shutil.copyfile(sr[0], tmp / sr[1]), loose))
        _write_from_shards(src[kept][shard], loc[kept][shard], [r for r, sh in zip(rel, shard) if sh], tmp)
        manifest = pd.DataFrame({
            "sample_id": ids[kept], "path": [str(out / r) for r in rel], "source_path": src[kept],
            "source_locator": loc[kept],
            "label": label[kept], "set": sets[kept],
            "fold": pd.Series(np.where(has_fold[kept], fold[kept], 0), dtype="Int16").where(has_fold[kept]),
        })
        _write_both(manifest, tmp / "manifest")
        train = manifest[manifest["set"] == schema.SET_TRAIN]
        n_folds = int(train["fold"].max()) + 1 if len(train) else 0
        (tmp / "folds").mkdir()
        for f in range(n_folds):
            part = train[["sample_id", "path", "label"]].assign(
                subset=np.where(train["fold"].to_numpy() == f, "val", "train"))
            _write_both(part, tmp / "folds" / f"fold-{f}")
        sp = np.flatnonzero(status == schema.BAL_SURPLUS)
        sp = sp[np.lexsort((surplus_rank[sp], label[sp].astype(str)))]
        _write_both(pd.DataFrame({"sample_id": ids[sp], "source_path": src[sp], "label": label[sp],
                                  "surplus_rank": surplus_rank[sp]}), tmp / "surplus")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportStats(str(out), len(kept), int((sets[kept] == schema.SET_TRAIN).sum()),
                       int((sets[kept] == schema.SET_TEST).sum()), len(sp), n_folds, int(shard.sum()))


_EXT = {"jpeg": ".jpg", "tiff": ".tif"}


def _write_from_shards(paths, locators, rel: list[str], tmp: Path, chunk: int = 1024) -> None:
    """Write the bytes of samples that live inside tar shards or Parquet files
    to ``tmp/rel`` (a symlink cannot point inside a shard)."""
    for k in range(0, len(rel), chunk):
        data = read_many(list(paths[k:k + chunk]), list(locators[k:k + chunk]))
        for r, d in zip(rel[k:k + chunk], data):
            if isinstance(d, OSError):
                raise OSError(f"export: cannot read the source of {r}: {d}") from d
            with open(tmp / r, "wb") as fh:
                fh.write(d)


def _write_both(df: pd.DataFrame, stem: Path) -> None:
    df.to_csv(stem.with_suffix(".csv"), index=False)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), stem.with_suffix(".parquet"))


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "x")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
