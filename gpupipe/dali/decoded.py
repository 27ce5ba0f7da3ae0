"""Images decoded once at model size and kept in a memory-mapped file.

A rank round reads every image many times: each out-of-fold model trains on
it for every epoch, and a model scores it (and its test-time views).  Decoded
from its file each time (on 2 cores a 32 px CIFAR-10 JPEG decodes and resizes
at ~28,000-36,000 images/s, on the cores the forward pass needs), scoring
photo-cnn reached 0.69-0.79 of the bare forward, from the decoded pixels
0.88-0.90 (RESULTS.md §34).  `decode_once` decodes each valid row once per
run (`file_pipeline`'s decode and resize, to uint8), into
``DIR/decoded-<size>px-<channels>c-<key>.npy`` (uint8 (N, size, size, C), row
i = the table's position i, written atomically); `file_pipeline` takes a
`DecodedRefs` in place of file refs and feeds those pixels to the same
augmentation graph through an ``external_source``.  The pixels are the ones
the file path gives, bit for bit, so only the random streams move
(benchmarks/studies/bench_score_forward.py, bench_decoded_seeds.py).

The key hashes the rows' refs (path and locator) with the size and channels:
a new ingest, size or channel count decodes again; reviews (relabels,
removals) do not.  Over `CACHE_BUDGET` bytes, or with less than twice its
size free on the disk, nothing is cached and the pipelines decode from the
files as before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpupipe.dali.augment import SeededBatches
from gpupipe.device import Device

#: Largest decoded array kept (bytes): 1M images at 32 px RGB are 3.1 GB.
CACHE_BUDGET = 8 << 30
PREFIX = "decoded-"


@dataclass(frozen=True)
class DecodedImages:
    """``path``: a ``.npy`` uint8 (N, size, size, channels) array; row i is the table's position i."""

    path: str
    size: int
    channels: int

    def array(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")

    def take(self, positions) -> "DecodedRefs":
        return DecodedRefs(self, np.asarray(positions, np.int64))


@dataclass(frozen=True, eq=False)
class DecodedRefs:
    """Some rows of a `DecodedImages`, in this order: what `file_pipeline` takes
    in place of file refs (``positions[i]`` goes with the pipeline's ``rows[i]``)."""

    images: DecodedImages
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, idx) -> "DecodedRefs":
        return DecodedRefs(self.images, self.positions[np.asarray(idx, np.int64)])


def take(refs, idx):
    """``refs[idx]`` for file refs (a list) and `DecodedRefs` alike."""
    if isinstance(refs, DecodedRefs):
        return refs.take(idx)
    return [refs[i] for i in np.asarray(idx, np.int64)]


def cache_key(refs, use: np.ndarray, size: int, channels: int) -> str:
    import xxhash

    pos = np.flatnonzero(use)
    h = xxhash.xxh3_128()
    h.update(f"{size}:{channels}:{len(refs)}\n".encode())
    h.update(pos.astype(np.int64).tobytes())
    h.update("\n".join(repr(refs[i]) for i in pos).encode())
    return h.hexdigest()[:16]


def decode_once(device: Device, refs, use: np.ndarray, *, size: int, channels: int, directory: str | os.PathLike,
                batch_size: int = 1024) -> DecodedImages | None:
    """The rows ``use`` (bool (N,)) of ``refs`` (N: a path or a (path, locator)
    pair each, as `file_pipeline` takes) decoded and resized to ``size``
    (uint8), in ``directory``; an existing file with the same key is reused,
    other ``decoded-*`` files there are removed.  None when the array would pass `CACHE_BUDGET`, the
    disk has less than twice its size free, or its blocks cannot be reserved
    (`_reserve`): the caller decodes from the files."""
    from gpupipe.dali.augment import file_pipeline
    from gpupipe.table import crash_point, fsync_dir

    n = len(refs)
    nbytes = n * size * size * channels
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if nbytes > CACHE_BUDGET or shutil.disk_usage(directory).free < 2 * nbytes:
        return None
    key = cache_key(refs, use, size, channels)
    path = directory / f"{PREFIX}{size}px-{channels}c-{key}.npy"
    for old in directory.glob(f"{PREFIX}*.npy"):
        if old != path:
            old.unlink(missing_ok=True)
    images = DecodedImages(str(path), size, channels)
    if path.exists():
        return images
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, channels))
        if not _reserve(tmp):          # the disk filled up since the check: decode from the files
            del out
            Path(tmp).unlink(missing_ok=True)
            return None
        pos = np.flatnonzero(use)
        if len(pos):
            for x, rows in file_pipeline(device, [refs[i] for i in pos], pos, size=size, channels=channels,
                                         batch_size=batch_size, as_uint8=True):
                out[rows] = x.permute(0, 2, 3, 1).cpu().numpy()
        out.flush()
        del out
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        crash_point(f"wrote {path.name}")
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return images


def _reserve(path: str) -> bool:
    """Allocate every block of the (sparse) file now, so that a full disk is an
    error here rather than a SIGBUS while the memory map is written.  False
    when the disk is full; True when reserved, or where the file system cannot
    reserve (then writes go as they would without it)."""
    import errno

    try:
        with open(path, "rb+") as fh:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return False
    except AttributeError:            # no posix_fallocate on this platform
        pass
    return True


class ArrayBatches(SeededBatches):
    """``external_source`` over a `DecodedRefs`: batches of (pixels uint8
    (B, S, S, C), rows (B, 1)), read from the memory map where the pipeline runs."""

    def __init__(self, refs: DecodedRefs, rows, batch_size: int, shuffle: bool, seed: int):
        super().__init__(len(refs), batch_size, shuffle, seed)
        self.images, self.positions = refs.images, refs.positions
        self.rows = np.asarray(rows, np.int64)
        self._array = None

    def __getstate__(self):            # the memory map is opened again where the pipeline runs
        return {**self.__dict__, "_array": None}

    def batch(self, idx: np.ndarray, pad: int):
        if self._array is None:
            self._array = self.images.array()
        at = np.concatenate([self.positions[idx], np.repeat(self.positions[idx[-1:]], pad)])
        rows = np.concatenate([self.rows[idx], np.full(pad, -1, np.int64)])
        return np.ascontiguousarray(self._array[at]), rows[:, None]
