"""Where a sample's encoded bytes live, and reading them without unpacking.

Each ledger row names its container in ``path`` and, unless that is the image
file itself, how to find the bytes inside it in ``ingest_locator``:

- null: ``path`` is the image file;
- ``tar:OFFSET:SIZE``: the SIZE bytes at OFFSET of the tar shard ``path`` (a
  WebDataset member's data, read with one seek);
- ``parquet:ROW:COLUMN``: row ROW of the Parquet file ``path``, column COLUMN,
  a binary column or a struct whose ``bytes`` field holds the image (the
  Hugging Face datasets layout);
- ``missing:REASON``: the source names a sample but holds no image for it (a
  WebDataset key with a label and no image member); reading it fails with
  `ReadError` and that reason, so the row is flagged, not dropped.

`read_many` is the one reader every stage uses (hashing, probes, model
inputs, export, the report).  Sources are opened read-only.
"""

from __future__ import annotations

import bisect
import functools
import os
import threading
from collections import OrderedDict, defaultdict
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

TAR = "tar"
PARQUET = "parquet"
MISSING = "missing"


class ReadError(OSError):
    """A sample's bytes cannot be read; ``reason`` is its `invalid_reason`."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


def tar_locator(offset: int, size: int) -> str:
    return f"{TAR}:{int(offset)}:{int(size)}"


def parquet_locator(row: int, column: str) -> str:
    return f"{PARQUET}:{int(row)}:{column}"


def missing_locator(reason: str) -> str:
    return f"{MISSING}:{reason}"


def read_one(path: str, locator: str | None) -> bytes | OSError:
    return read_many([path], [locator])[0]


def read_many(paths: Sequence[str], locators: Sequence[str | None] | None = None) -> list[bytes | OSError]:
    """The encoded bytes of each (path, locator), or the OSError that stopped it."""
    n = len(paths)
    if locators is None:
        locators = [None] * n
    out: list[bytes | OSError | None] = [None] * n
    tars: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    parquets: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for i, (p, loc) in enumerate(zip(paths, locators)):
        if loc is None:
            out[i] = _read_file(p)
            continue
        kind, _, rest = loc.partition(":")
        try:
            if kind == TAR:
                off, size = rest.split(":")
                tars[p].append((i, int(off), int(size)))
            elif kind == PARQUET:
                row, col = rest.split(":", 1)
                parquets[(p, col)].append((i, int(row)))
            elif kind == MISSING:
                out[i] = ReadError(rest or "missing", f"{p}: {rest}")
            else:
                out[i] = ReadError("bad_locator", f"{p}: unknown locator {loc!r}")
        except ValueError:
            out[i] = ReadError("bad_locator", f"{p}: malformed locator {loc!r}")
    for p, items in tars.items():
        _read_tar(p, items, out)
    for (p, col), items in parquets.items():
        _read_parquet(p, col, items, out)
    return out  # type: ignore[return-value]


_READ_STEP = 1 << 20


def _read_file(path: str) -> bytes | OSError:
    # os.open/os.read, not open(): the buffered file object's own calls (fstat,
    # isatty's ioctl, lseek) cost more than the read of a small image: CIFAR-10's
    # 60,000 JPEGs in 4 threads took 1.7-2.0 core-s with open(), 0.8-0.9 with this
    # (benchmarks/bench_read_decode.py; RESULTS.md §32).
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        return e
    try:
        chunks = []
        while chunk := os.read(fd, _READ_STEP):     # to the end of the file, however it is read
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except OSError as e:
        return e
    finally:
        os.close(fd)


def _read_tar(path: str, items: list[tuple[int, int, int]], out: list) -> None:
    """Members' data by offset: one open per shard and batch, reads in file order.
    A member cut short by a truncated shard comes back short (sniff flags it)."""
    try:
        with open(path, "rb") as fh:
            for i, off, size in sorted(items, key=lambda t: t[1]):
                fh.seek(off)
                out[i] = fh.read(size)
    except OSError as e:
        for i, _, _ in items:
            if out[i] is None:
                out[i] = e


@functools.lru_cache(maxsize=64)
def _footer(path: str, mtime_ns: int) -> tuple[pq.FileMetaData, tuple[int, ...]]:
    """A Parquet file's parsed footer and its row groups' first rows (cached:
    read_many is called per chunk and per training batch)."""
    md = pq.read_metadata(path)
    starts, s = [], 0
    for g in range(md.num_row_groups):
        starts.append(s)
        s += md.row_group(g).num_rows
    starts.append(s)
    return md, tuple(starts)


class _RowGroups:
    """Decoded Parquet row groups (one column each), least recently used first
    out past ``max_bytes``: training draws shuffled rows, one or two from each
    row group, and would otherwise read a whole group for every row."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.held = max_bytes, 0
        self._items: OrderedDict[tuple, pa.Array] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, load) -> pa.Array:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        arr = load()                                # outside the lock: reads run in parallel
        with self._lock:
            if key not in self._items and arr.nbytes <= self.max_bytes:
                self._items[key] = arr
                self.held += arr.nbytes
                while self.held > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self.held -= old.nbytes
        return arr


_ROW_GROUPS = _RowGroups(256 << 20)


def bytes_array(col: pa.ChunkedArray) -> pa.Array:
    arr = col.combine_chunks()
    if pa.types.is_struct(arr.type):
        arr = arr.field("bytes")
    return arr


def _read_parquet(path: str, column: str, items: list[tuple[int, int]], out: list) -> None:
    """Rows of one column: only the row groups that hold the rows asked for are read."""
    try:
        mtime = os.stat(path).st_mtime_ns
        md, starts = _footer(path, mtime)
        by_group: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for i, row in items:
            if not 0 <= row < starts[-1]:
                out[i] = ReadError("bad_locator", f"{path}: row {row} beyond {starts[-1]} rows")
                continue
            by_group[bisect.bisect_right(starts, row) - 1].append((i, row))
        with pq.ParquetFile(path, metadata=md) as pf:
            for g, rows in sorted(by_group.items()):
                arr = _ROW_GROUPS.get((path, mtime, column, g),
                                      lambda: bytes_array(pf.read_row_group(g, columns=[column]).column(0)))
                for i, row in rows:
                    v = arr[row - starts[g]].as_py()
                    out[i] = v if v is not None else ReadError("missing", f"{path}: row {row} has no image bytes")
    except (OSError, pa.ArrowException, KeyError) as e:
        for i, _ in items:
            if out[i] is None:
                out[i] = e if isinstance(e, OSError) else ReadError("unreadable", f"{path}: {e}")
