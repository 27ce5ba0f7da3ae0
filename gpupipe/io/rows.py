"""Rows of a large ``.npy`` file, read on demand with ``os.pread``.

The dedup step's same-picture check needs the thumbnails of the images its
candidate pairs involve, a few at a time; at 1M images the file holds 3 GiB.
Reading the rows asked for (consecutive rows in one read) keeps the process's
memory at what the check holds, where ``np.load(mmap_mode="r")`` would count
every page it touched in the process's resident set.
"""

from __future__ import annotations

import os

import numpy as np


_PREADV = hasattr(os, "preadv")


class NpyRows:
    """Read-only, row-indexed view of a C-ordered ``.npy`` file."""

    GAP_ROWS = 16        # rows this close are read together (at 3 KiB a row: 48 KiB read for nothing at most)

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with open(self.path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> "NpyRows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step == 1:
                return self._read(start, max(0, stop - start))
            index = np.arange(start, stop, step)
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        if not len(idx):
            return out
        if idx.min() < 0 or idx.max() >= self.shape[0]:
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        order = np.argsort(idx, kind="stable")
        s = idx[order]
        # Rows at most GAP_ROWS apart share one read (the rows between are read and dropped):
        # a sorted batch of scattered rows costs a few large reads instead of one per row.
        breaks = np.flatnonzero(np.diff(s) > self.GAP_ROWS) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(s)]])
        flat = out.reshape(len(idx), -1)
        for a, b in zip(starts.tolist(), ends.tolist()):
            first = int(s[a])
            if b - a == 1 and _PREADV:     # a lone row: read straight into its place (2 us a row, not 6)
                k = int(order[a])
                if os.preadv(self._fd, [flat[k]], self.offset + first * self.row_bytes) != self.row_bytes:
                    raise OSError(f"{self.path}: short read of row {first}")
                continue
            block = self._read(first, int(s[b - 1]) - first + 1)
            out[order[a:b]] = block[s[a:b] - first]
        return out

    def _read(self, first: int, count: int) -> np.ndarray:
        nbytes = count * self.row_bytes
        buf = os.pread(self._fd, nbytes, self.offset + first * self.row_bytes)
        if len(buf) != nbytes:
            raise OSError(f"{self.path}: short read ({len(buf)} of {nbytes} bytes)")
        return np.frombuffer(buf, self.dtype).reshape(count, *self.shape[1:])
