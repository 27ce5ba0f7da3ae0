"""Ingest: list the samples of a source into the first ledger columns.

Sources (read-only, never written, never unpacked):
- an ImageFolder tree ``root/<label>/<file>`` or ``root/<split>/<label>/<file>``
  (the split layout is recognised when every top-level folder is a split name);
- a manifest, CSV or Parquet, with columns ``path,label[,split]``; relative
  paths are relative to the manifest's folder;
- WebDataset shards: a ``.tar`` file, a folder of them (no loose images), or a
  brace pattern (``shards/train-{000000..000099}.tar``).  Members are grouped
  into samples by key (the member name up to the first dot of its last
  component); a sample's image is its ``jpg|jpeg|png|webp|bmp|tif|tiff|gif``
  member, its label the text of its ``cls``, ``txt`` or ``json`` member
  (``label_column`` names another extension; from JSON the ``label``,
  ``class`` or ``cls`` field);
- Parquet files with the image bytes inside (a ``.parquet`` file or a folder
  of them): ``image_column`` (default ``image``, else the first binary column
  or struct with a ``bytes`` field, as Hugging Face datasets writes) and
  ``label_column`` (default ``label``; integer labels take their names from
  Hugging Face's ClassLabel metadata when the file has it).

Shards and Parquet files in ``<split>/`` folders, or named ``<split>-*``
(``train-00000-of-00004.parquet``), give that split.  A sample inside a shard
or file keeps its container in ``path`` and where it sits in
``ingest_locator`` (`gpupipe.io.sources`); its ``rel_path``
(``shard.tar/key.jpg``, ``file.parquet/000000123``) gives its stable id.

Reads: nothing.  Adds: `schema.INGEST`.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import xxhash

from gpupipe import schema
from gpupipe.io.sources import bytes_array, missing_locator, parquet_locator, tar_locator
from gpupipe.io.tarindex import list_members

# Files taken as samples, by extension (case-insensitive).  GIF, HEIC/HEIF and AVIF
# are listed so that they become rows flagged `unsupported_format`, not skipped unseen.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif",
                              ".heic", ".heif", ".avif"})
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test"})
_CANON_SPLIT = {"valid": "val", "validation": "val"}
# A WebDataset sample's image member, by preference; its label members, by preference.
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
WDS_LABEL_EXTS = ("cls", "txt", "json")
JSON_LABEL_KEYS = ("label", "class", "cls")
NO_IMAGE_MEMBER = "no_image_member"   # invalid_reason of a WebDataset key holding no image member


class SourceError(ValueError):
    """The source cannot be read as a dataset; the message says why."""


@dataclass(frozen=True)
class IngestResult:
    table: pa.Table
    layout: str                 # "imagefolder" | "imagefolder-splits" | "manifest" | "webdataset" | "parquet"
    skipped_non_images: int     # files (or shard members) ignored for their extension
    source_errors: dict[str, str] = field(default_factory=dict)   # shard, file, link loop or repeated manifest path -> what happened


def sample_ids_of(rel_paths: list[str]) -> np.ndarray:
    """Stable ids of samples: xxh3-64 of each relative POSIX path, as an int64 array
    (one array for all: a numpy scalar per row cost ~1 us of a listing's 7 per file)."""
    return np.fromiter((xxhash.xxh3_64_intdigest(r.encode("utf-8")) for r in rel_paths), dtype=np.uint64,
                       count=len(rel_paths)).view(np.int64)


def sample_id_of(rel_path: str) -> int:
    """Stable id of one sample (`sample_ids_of`)."""
    return int(sample_ids_of([rel_path])[0])


def ingest(src: str | os.PathLike, *, image_column: str | None = None,
           label_column: str | None = None) -> IngestResult:
    text = str(src)
    if "{" in text and not Path(text).exists():
        from braceexpand import braceexpand

        shards = [Path(p) for p in braceexpand(text)]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise SourceError(f"{len(missing)} shard(s) of {text} do not exist, e.g. {missing[0]}")
        root = Path(os.path.commonpath([str(p.absolute().parent) for p in shards]))
        return _from_webdataset(root, shards, label_column)
    src = Path(src)
    if not src.exists():
        raise SourceError(f"source {src} does not exist")
    if src.is_file():
        suffix = src.suffix.lower()
        if suffix == ".tar":
            return _from_webdataset(src.parent, [src], label_column)
        if suffix == ".parquet" and _image_column(src, image_column, quiet=True) is not None:
            return _from_parquet_images(src.parent, [src], image_column, label_column)
        return _from_manifest(src)
    loops: list[str] = []
    walked = list(_walk(src, loops))
    if not any(_is_image(rel) for _, rel, _ in walked):
        tars = [Path(p) for p, rel, _ in walked if rel.lower().endswith(".tar")]
        if tars:
            return _from_webdataset(src, tars, label_column)
        parquets = [Path(p) for p, rel, _ in walked if rel.lower().endswith(".parquet")]
        if parquets and _image_column(parquets[0], image_column, quiet=True) is not None:
            return _from_parquet_images(src, parquets, image_column, label_column)
    res = _from_imagefolder(src, walked)
    if loops:    # reported, not followed: a folder linking to one of its parents
        res.source_errors.update({r: "symlink loop: not followed" for r in loops})
    return res


def _is_image(rel: str) -> bool:
    """Does the file's extension name an image format (`IMAGE_EXTENSIONS`)?"""
    return os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS


def _walk(root: Path, loops: list | None = None):
    """Yield (absolute path, relative POSIX path, size or None) of every
    non-hidden file under ``root``, in sorted order.  Plain strings and
    DirEntry.stat: Path objects cost ~10 us a file at a million files.

    Symbolic links are followed, to folders outside ``root`` too; a link to a
    folder already on the way down (a loop) is not, and its relative path is
    appended to ``loops``.  A link that leads to nothing (dangling, or a loop
    of file links) is yielded with size None: the hash stage flags it."""
    top = os.stat(root)
    stack = [(str(root.absolute()), "", ((top.st_dev, top.st_ino),))]
    while stack:
        d, rel, above = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise SourceError(f"cannot list {d}: {e.strerror}") from e
        for e in reversed(entries):
            if e.name.startswith("."):
                continue
            r = f"{rel}/{e.name}" if rel else e.name
            try:
                is_dir, is_file = e.is_dir(follow_symlinks=True), e.is_file(follow_symlinks=True)
            except OSError:      # ELOOP: a link in a loop of links
                is_dir = is_file = False
            if is_dir:
                try:
                    st = e.stat(follow_symlinks=True)
                except OSError:
                    continue
                node = (st.st_dev, st.st_ino)
                if node in above:
                    if loops is not None:
                        loops.append(r)
                    continue
                stack.append((e.path, r, above + (node,)))
            elif is_file:
                try:
                    size = e.stat(follow_symlinks=True).st_size
                except OSError:
                    size = None
                yield e.path, r, size
            elif e.is_symlink():     # dangling, or a loop: a row, flagged when read
                yield e.path, r, None


def _from_imagefolder(root: Path, walked: list) -> IngestResult:
    tops = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not tops:
        raise SourceError(f"{root} holds no class folders (expected root/<label>/<image>), "
                          "WebDataset shards (.tar) or Parquet files with image bytes")
    split_layout = all(p.name.lower() in SPLIT_NAMES for p in tops)
    rows = _rows()
    skipped = 0
    for path, rel, size in walked:
        if not _is_image(rel):
            skipped += 1
            continue
        parts = rel.split("/")
        if split_layout:
            split = _CANON_SPLIT.get(parts[0].lower(), parts[0].lower())
            label = parts[1] if len(parts) >= 3 else None
        else:
            split, label = None, (parts[0] if len(parts) >= 2 else None)
        _append(rows, path, rel, label, split, size)
    if not rows["path"]:
        raise SourceError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    layout = "imagefolder-splits" if split_layout else "imagefolder"
    return IngestResult(_table(rows), layout, skipped)


def _from_manifest(path: Path) -> IngestResult:
    try:
        if path.suffix.lower() == ".parquet":
            t = pq.read_table(path)
        elif path.suffix.lower() in (".csv", ".tsv"):
            opts = pacsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            t = pacsv.read_csv(path, parse_options=opts,
                               convert_options=pacsv.ConvertOptions(column_types={"label": pa.string(), "path": pa.string(), "split": pa.string()}))
        else:
            raise SourceError(f"{path}: a manifest must be .csv, .tsv or .parquet")
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"cannot read manifest {path}: {e}") from e
    if "path" not in t.column_names:
        raise SourceError(f"manifest {path} has no 'path' column (columns: {t.column_names})")
    base = path.parent
    paths = _text_column(t, "path", path)
    labels = _text_column(t, "label", path)
    splits = _text_column(t, "split", path)
    rows = _rows()
    first: dict[str, int] = {}              # rel -> the first row (0-based) that lists it
    repeats: dict[str, list[int]] = {}      # rel -> every row listing it, for rels listed more than once
    for i, (p, lab, sp) in enumerate(zip(paths, labels, splits)):
        if not p:
            raise SourceError(f"manifest {path}, row {i + 1}: empty path")
        f = Path(p) if os.path.isabs(p) else base / p
        rel = Path(p).as_posix() if not os.path.isabs(p) else f.as_posix()
        j = first.setdefault(rel, i)
        if j != i:
            repeats.setdefault(rel, [j]).append(i)
            continue
        _add(rows, f, rel, lab, _canon_split(sp))
    repeated = _repeated_rows(rows, repeats, labels, splits)
    return IngestResult(_table(rows), "manifest", 0, repeated)


def _text_column(t: pa.Table, name: str, path: Path) -> list[str | None]:
    """Column ``name`` of a manifest as text, one entry per row (all None when
    it is absent).  Numbers become their decimal text (a whole float as an
    integer: pandas writes an integer column with a gap as float); NaN, null,
    empty and blank text become None."""
    import pyarrow.compute as pc

    if name not in t.column_names:
        return [None] * t.num_rows
    col = t.column(name)
    if pa.types.is_floating(col.type):
        col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
    try:
        values = col.cast(pa.string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise SourceError(f"manifest {path}: column {name!r} of type {col.type} cannot be read as text") from e
    return [v if v and not v.isspace() else None for v in values]


def _canon_split(sp: str | None) -> str | None:
    return None if sp is None else _CANON_SPLIT.get(sp.lower(), sp.lower())


def _repeated_rows(rows, repeats: dict[str, list[int]], labels: list, splits: list) -> dict[str, str]:
    """A path listed more than once is one sample: its first row's label and
    split, or none where its rows disagree.  -> rel -> what happened (for
    ``source_errors``)."""
    errors: dict[str, str] = {}
    where = {r: k for k, r in enumerate(rows["rel"])} if repeats else {}
    for rel, at in repeats.items():
        msg = f"listed {len(at)} times (rows {', '.join(str(i + 1) for i in at)})"
        for key, values in (("label", [labels[i] for i in at]), ("split", [_canon_split(splits[i]) for i in at])):
            seen = list(dict.fromkeys(values))
            if len(seen) > 1:
                msg += f" with different {key}s ({', '.join(map(repr, seen))}): no {key}"
                rows[key][where[rel]] = None
        errors[rel] = msg
    return errors


def _add(rows, f: Path, rel: str, label, split) -> None:
    try:
        size = f.stat().st_size
    except OSError:
        size = None      # missing or unreadable: flagged by the hash stage
    _append(rows, str(f.absolute()), rel, label, split, size)


def _rows() -> dict[str, list]:
    return {k: [] for k in ("path", "rel", "label", "split", "size", "locator")}


def _append(rows, path: str, rel: str, label, split, size, locator: str | None = None) -> None:
    rows["path"].append(path)
    rows["rel"].append(rel)
    rows["label"].append(label)
    rows["split"].append(split)
    rows["size"].append(size)
    rows["locator"].append(locator)


def _split_of(rel: str) -> str | None:
    """The split a shard or file belongs to: a ``<split>/`` folder in its path,
    or a ``<split>-`` / ``<split>_`` prefix of its name."""
    parts = rel.split("/")
    for part in parts[:-1]:
        if part.lower() in SPLIT_NAMES:
            return _CANON_SPLIT.get(part.lower(), part.lower())
    m = re.match(r"([A-Za-z]+)[-_.]", parts[-1])
    if m and m.group(1).lower() in SPLIT_NAMES:
        return _CANON_SPLIT.get(m.group(1).lower(), m.group(1).lower())
    return None


def _rel_to(root: Path, p: Path) -> str:
    try:
        return p.absolute().relative_to(root.absolute()).as_posix()
    except ValueError:
        return p.absolute().as_posix()


# --- WebDataset shards -----------------------------------------------------------------
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")    # webdataset's rule: key = name up to the first dot


def _wds_label(ext: str, data: bytes) -> str | None:
    text = data.decode("utf-8", errors="replace").strip()
    if ext == "json":
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        if isinstance(obj, dict):
            for k in JSON_LABEL_KEYS:
                if k in obj and isinstance(obj[k], (str, int)) and not isinstance(obj[k], bool):
                    return str(obj[k])
        return None
    return text or None


# Shards are listed in worker processes from this many on.  Listing is Python work per
# member (a tar header walk, the label members read, ~7 us a sample on this project's
# 2-core machine: 14 s for a million samples in 101 shards, RESULTS.md §39), one shard
# independent of the next (11 shards of 100k samples: 1.2-1.3 s here, 0.7 s in two
# processes).  8 is a choice, not a measured break-even: fewer shards are most often
# small sets, listed here in well under a second.
PARALLEL_SHARDS = 8
MAX_LIST_PROCESSES = 16


def _from_webdataset(root: Path, shards: list[Path], label_column: str | None, *,
                     processes: int | None = None) -> IngestResult:
    """processes: worker processes listing the shards (None: one per core, up to
    `MAX_LIST_PROCESSES`, from `PARALLEL_SHARDS` shards on; 1: this process)."""
    label_exts = (label_column.lower().lstrip("."),) if label_column else WDS_LABEL_EXTS
    rows = _rows()
    skipped = 0
    errors: dict[str, str] = {}
    jobs = [(root, shard, label_exts) for shard in sorted(shards)]
    for part, part_skipped, part_errors in _map_shards(jobs, processes):
        for k, v in part.items():
            rows[k].extend(v)
        skipped += part_skipped
        errors.update(part_errors)
    if not rows["path"]:
        raise SourceError(f"no samples in {len(shards)} shard(s) under {root}"
                          + (f": {next(iter(errors.items()))}" if errors else ""))
    return IngestResult(_table(rows), "webdataset", skipped, errors)


def _map_shards(jobs: list, processes: int | None):
    """`_shard_rows` of each job, in order: in worker processes or here.

    Workers are forked (Linux only): a spawned worker re-imports the caller's main
    module, which breaks any script that calls `ingest` without an ``if __name__ ==
    "__main__"`` guard.  A forked worker runs only `_shard_rows` (Python, mmap and
    file reads), so threads the caller holds (BLAS's, DALI's) do not matter to it."""
    import multiprocessing
    import sys

    if processes is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        processes = min(cores, len(jobs), MAX_LIST_PROCESSES) if len(jobs) >= PARALLEL_SHARDS else 1
    processes = min(processes, len(jobs))
    if (processes <= 1 or not sys.platform.startswith("linux")
            or multiprocessing.current_process().daemon):      # a daemon may not start processes
        return map(_shard_rows, jobs)
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_shard_rows, jobs))
    except (BrokenProcessPool, OSError):     # a worker lost (killed for memory?) or none could start
        return map(_shard_rows, jobs)


def _shard_rows(job) -> tuple[dict[str, list], int, dict[str, str]]:
    """One shard's samples: (rows as `_rows`, members skipped, {shard: what went wrong})."""
    root, shard, label_exts = job
    rows = _rows()
    skipped = 0
    errors: dict[str, str] = {}
    srel = _rel_to(root, shard)
    split = _split_of(srel)
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    labels: dict[str, str | None] = {}
    label_rank: dict[str, int] = {}
    try:
        listing = list_members(str(shard))
    except (tarfile.TarError, OSError) as e:
        return rows, skipped, {srel: f"not a readable tar: {e}"}
    if listing.error:
        errors[srel] = listing.error
    with open(shard, "rb") as fh:
        for name, off, size in listing.members:
            km = _KEY.match(name)
            if km is None or km.group(1).rsplit("/", 1)[-1].startswith("."):
                skipped += 1
                continue
            key, ext = km.group(1), km.group(2).lower()
            if ext in label_exts:
                rank = label_exts.index(ext)            # cls before txt before json
                if rank < label_rank.get(key, len(label_exts)):
                    fh.seek(off)
                    labels[key] = _wds_label(ext, fh.read(min(size, 1 << 16)))
                    label_rank[key] = rank
                samples.setdefault(key, {})
            else:
                samples.setdefault(key, {})[ext] = (off, size)
    path = str(shard.absolute())
    for key in sorted(samples):
        members = samples[key]
        label = labels.get(key)
        img = next((e for e in WDS_IMAGE_EXTS if e in members), None)
        if img is None:   # a multi-part extension ending in an image one ("seg.png" alone)
            img = next((e for e in sorted(members) if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
        others = [e for e in sorted(members) if e != img and e not in ("json",)]
        if img is None and others:
            img = others[0]           # unknown extension: sniffed and flagged by the hash stage
            others = others[1:]
        if img is None:
            _append(rows, path, f"{srel}/{key}", label, split, None, missing_locator(NO_IMAGE_MEMBER))
            continue
        off, size = members[img]
        skipped += len(others)
        _append(rows, path, f"{srel}/{key}.{img}", label, split, size, tar_locator(off, size))
    return rows, skipped, errors


# --- Parquet files with image bytes ----------------------------------------------------
def _image_column(path: Path, name: str | None, *, quiet: bool = False) -> str | None:
    try:
        sch = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        if quiet:
            return None
        raise SourceError(f"cannot read {path}: {e}") from e

    def is_bytes(t: pa.DataType) -> bool:
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return True
        return pa.types.is_struct(t) and any(
            t.field(i).name == "bytes" and (pa.types.is_binary(t.field(i).type) or pa.types.is_large_binary(t.field(i).type))
            for i in range(t.num_fields))

    if name is not None:
        if name not in sch.names:
            if quiet:
                return None
            raise SourceError(f"{path} has no column {name!r} (columns: {sch.names})")
        if not is_bytes(sch.field(name).type):
            raise SourceError(f"{path}: column {name!r} is {sch.field(name).type}, not binary nor a struct with 'bytes'")
        return name
    if "image" in sch.names and is_bytes(sch.field("image").type):
        return "image"
    return next((f.name for f in sch if is_bytes(f.type)), None)


def _class_names(sch: pa.Schema, column: str) -> list[str] | None:
    """Hugging Face datasets' ClassLabel names of ``column``, from the file's metadata."""
    meta = (sch.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        feat = json.loads(meta)["info"]["features"][column]
    except (ValueError, KeyError, TypeError):
        return None
    names = feat.get("names") if isinstance(feat, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None


def _byte_lengths(pf: pq.ParquetFile, column: str) -> list[int | None]:
    """Each row's image size in bytes (the dedup stage prefers the larger of two
    equal pictures, as it does for files).  Reads the column one row group at a
    time: a full pass over the bytes before the hash stage's."""
    import pyarrow.compute as pc

    out: list[int | None] = []
    for g in range(pf.metadata.num_row_groups):
        out.extend(pc.binary_length(bytes_array(pf.read_row_group(g, columns=[column]).column(0))).to_pylist())
    return out


def _from_parquet_images(root: Path, files: list[Path], image_column: str | None,
                         label_column: str | None) -> IngestResult:
    rows = _rows()
    errors: dict[str, str] = {}
    for f in sorted(files):
        frel = _rel_to(root, f)
        try:
            col = _image_column(f, image_column)
            if col is None:
                errors[frel] = "no image-bytes column"
                continue
            pf = pq.ParquetFile(f)
            sch = pf.schema_arrow
            lab_col = label_column or "label"
            n = pf.metadata.num_rows
            if lab_col in sch.names:
                raw = pf.read(columns=[lab_col]).column(0)
                names = _class_names(sch, lab_col)
                vals = raw.to_pylist()
                if names is not None:
                    labels = [names[v] if isinstance(v, int) and 0 <= v < len(names) else
                              (None if v is None else str(v)) for v in vals]
                else:
                    labels = [None if v is None or (isinstance(v, str) and not v) else str(v) for v in vals]
            elif label_column is not None:
                raise SourceError(f"{f} has no label column {label_column!r} (columns: {sch.names})")
            else:
                labels = [None] * n
            sizes = _byte_lengths(pf, col)
        except (pa.ArrowInvalid, OSError) as e:
            errors[frel] = f"cannot read: {e}"
            continue
        split = _split_of(frel)
        width = max(9, len(str(n)))
        for r in range(n):
            _append(rows, str(f.absolute()), f"{frel}/{r:0{width}d}", labels[r], split, sizes[r],
                    parquet_locator(r, col))
    if not rows["path"]:
        raise SourceError(f"no image rows in {len(files)} Parquet file(s) under {root}"
                          + (f": {next(iter(errors.items()))}" if errors else ""))
    return IngestResult(_table(rows), "parquet", 0, errors)


def _table(rows) -> pa.Table:
    ids = sample_ids_of(rows["rel"])
    if len(np.unique(ids)) != len(ids):
        seen: dict[int, str] = {}
        for i, r in zip(ids.tolist(), rows["rel"]):
            if i in seen:
                raise SourceError(f"the source lists {r!r} twice (or two paths share an id: {seen[i]!r})")
            seen[i] = r
    order = np.argsort(np.asarray(rows["rel"], dtype=object), kind="stable")
    data = {
        schema.SAMPLE_ID: pa.array(ids, pa.int64()),
        schema.PATH: pa.array(rows["path"], pa.string()),
        schema.REL_PATH: pa.array(rows["rel"], pa.string()),
        schema.LABEL: pa.array(rows["label"], pa.string()),
        schema.SPLIT: pa.array(rows["split"], pa.string()),
        schema.FILE_BYTES: pa.array(rows["size"], pa.int64()),
        schema.LOCATOR: pa.array(rows["locator"], pa.string()),
    }
    t = pa.table(data, schema=schema.arrow_schema("ingest"))
    return t.take(pa.array(order))
