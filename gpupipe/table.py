"""The per-sample ledger: Parquet I/O and the pandas | cuDF adapter.

On a CPU host the ledger is a pandas DataFrame with Arrow-backed columns; on a
GPU host with a working cuDF it is a cuDF DataFrame.  Stages talk to it through
`Ledger`, which hides the few places where the two libraries differ (getting
an xp array out of a column, putting one back with nulls).  Parquet files are
written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gpupipe import schema
from gpupipe.device import Device


def _is_cudf(frame) -> bool:
    return type(frame).__module__.startswith("cudf")


class Ledger:
    """Adapter bound to one device: build, read and write per-sample tables."""

    def __init__(self, device: Device):
        self.device = device
        self.xp = device.xp
        self.df = device.df
        self.gpu_frames = device.df.__name__.startswith("cudf")

    # --- conversions ---------------------------------------------------------
    def from_arrow(self, table: pa.Table):
        if self.gpu_frames:
            return self.df.DataFrame.from_arrow(table)
        return table.to_pandas(types_mapper=pd.ArrowDtype)

    def to_arrow(self, frame) -> pa.Table:
        if _is_cudf(frame):
            return frame.to_arrow()
        # Without pandas' metadata: its ArrowDtype names ("list<element: float>[pyarrow]")
        # do not parse back in to_pandas().
        return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)

    def array(self, frame, name: str, *, fill: Any = None, dtype=None):
        """A column as an xp array (nulls replaced by ``fill`` when given)."""
        return self.series_array(frame[name], fill=fill, dtype=dtype)

    def series_array(self, s, *, fill: Any = None, dtype=None):
        """A Series (pandas or cuDF) as an xp array."""
        if fill is not None:
            s = s.fillna(fill)
        if _is_cudf(s):
            return s.to_cupy(dtype=dtype) if dtype is not None else s.to_cupy()
        host = s.to_numpy(dtype=dtype) if dtype is not None else s.to_numpy()
        # A GPU without cuDF keeps pandas frames but computes on CuPy arrays.
        return host if self.xp is np else self.xp.asarray(host)

    def codes(self, frame, name: str):
        """Factorise a column: (N,) int64 xp array of codes, -1 for nulls."""
        if _is_cudf(frame):
            codes, _ = frame[name].factorize(use_na_sentinel=True)
        else:
            codes, _ = pd.factorize(frame[name], use_na_sentinel=True)
        return codes_array(codes, self.xp)

    def assign(self, frame, columns: dict[str, tuple[Any, Any]]):
        """Add columns from (values, valid) pairs: values an xp array, valid an
        xp bool array or None (all valid).  Dtypes come from `schema`."""
        out = frame.copy(deep=False)
        for name, (values, valid) in columns.items():
            dtype = _dtype_of(name)
            values_h = self.device.to_host(values)
            mask = None if valid is None else ~self.device.to_host(valid).astype(bool)
            if isinstance(values_h, pa.Array):
                arr = values_h
            elif pa.types.is_list(dtype):      # (N, K) array -> one list of K values per row
                k = values_h.shape[1]
                offsets = pa.array(np.arange(0, k * len(values_h) + 1, k, dtype=np.int32))
                flat = pa.array(np.ascontiguousarray(values_h).reshape(-1), type=dtype.value_type)
                arr = pa.ListArray.from_arrays(offsets, flat, mask=None if mask is None else pa.array(mask))
            else:
                arr = pa.array(values_h, type=dtype, mask=mask, from_pandas=False)
            if self.gpu_frames:
                out[name] = self.df.Series.from_arrow(arr)
            else:
                out[name] = pd.Series(pd.arrays.ArrowExtensionArray(arr), index=out.index)
        return out

    def host(self, frame, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A column on the host: (values numpy, valid bool numpy).  Strings come
        as an object array (None where null); list columns as a 2-D float array
        (NaN rows where null); other nulls hold arbitrary values."""
        s = frame[name]
        arr = s.to_arrow() if _is_cudf(s) else pa.array(s)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        valid = np.array(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)   # writable copies
        if pa.types.is_list(arr.type):
            lengths = arr.value_lengths().fill_null(0).to_numpy()
            k = int(lengths.max()) if len(lengths) else 0
            out = np.full((len(arr), k), np.nan, np.float32)
            if valid.any():
                out[valid] = np.asarray(arr.filter(arr.is_valid()).flatten().to_numpy()).reshape(-1, k)
            return out, valid
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            return np.asarray(arr.to_pylist(), dtype=object), valid
        filled = arr.fill_null(False if pa.types.is_boolean(arr.type) else 0)
        return np.array(filled.to_numpy(zero_copy_only=False)), valid

    # --- persistence ---------------------------------------------------------
    def read(self, path: str | os.PathLike):
        return self.from_arrow(pq.read_table(path))

    def write(self, frame, path: str | os.PathLike) -> Path:
        return write_parquet_atomic(self.to_arrow(frame), path)

    def write_ledger(self, frame, path: str | os.PathLike) -> Path:
        """Write the columns of every stage the frame holds in full, in schema
        order and cast to the schema's dtypes (atomically)."""
        stages = [s for s in schema.STAGES if all(c.name in frame.columns for c in schema.STAGES[s])]
        table = self.to_arrow(frame).select(schema.names(*stages)).cast(schema.arrow_schema(*stages))
        return write_parquet_atomic(table, path)


def codes_array(codes, xp):
    """Factorisation codes -> (N,) int64 ``xp`` array.  pandas gives a numpy
    array; cuDF's ``Series.factorize`` a CuPy array already (of the smallest
    integer type that holds the codes: int8 for < 128 values, so -1 for null
    must survive the widening).  No ``.to_cupy()``: that was the cuDF branch's
    first-call failure."""
    return xp.asarray(codes).astype(xp.int64, copy=False)


def _dtype_of(name: str) -> pa.DataType:
    for stage in schema.STAGES.values():
        for col in stage:
            if col.name == name:
                return col.dtype
    raise KeyError(f"column {name!r} is not declared in gpupipe.schema")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str):
    """Open a temporary file beside ``path``; on success fsync and rename it
    over ``path``, so readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)       # mkstemp makes 0600; outputs are ordinary files
        crash_point(f"wrote {path.name}")
        os.replace(tmp, path)
        fsync_dir(path.parent)              # the rename itself survives a crash
        crash_point(f"renamed {path.name}")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def crash_point(what: str) -> None:
    """Fault injection for the kill tests (tests/test_kill.py), at every step
    where a write becomes visible.  With ``GPUPIPE_KILL_AT=n`` in the
    environment the n-th call in this process kills it with SIGKILL, as a power
    cut or the OOM killer would; with ``GPUPIPE_CRASH_LOG=FILE`` each call
    appends its step to FILE (to count the steps of a run).  Neither is set
    in normal use, and then this costs one dictionary lookup."""
    if "GPUPIPE_KILL_AT" not in os.environ and "GPUPIPE_CRASH_LOG" not in os.environ:
        return
    global _crash_count
    _crash_count += 1
    if os.environ.get("GPUPIPE_CRASH_LOG"):
        with open(os.environ["GPUPIPE_CRASH_LOG"], "a") as fh:
            fh.write(f"{_crash_count}\t{os.getpid()}\t{what}\n")
    if os.environ.get("GPUPIPE_KILL_AT") == str(_crash_count):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


_crash_count = 0


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory, so that renames into it are on disk (a no-op where
    directories cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    with atomic_file(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
    return Path(path)


def write_npy_atomic(array: np.ndarray, path: str | os.PathLike) -> Path:
    with atomic_file(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    with atomic_file(path, "w") as fh:
        fh.write(text)
    return Path(path)


def check_columns(frame, required: Iterable[str], *, where: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise KeyError(f"{where}: the ledger lacks column(s) {missing}")
