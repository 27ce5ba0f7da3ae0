"""List the members of a tar shard: (name, data offset, size), without unpacking.

Written by hand for the common case, plain ustar / GNU headers, because
Python's `tarfile` spends ~60 us parsing each header (10 s for the 200,000
members of 100,000 WebDataset samples on this project's 2-core machine,
measured with cProfile); reading the 512-byte headers straight from a memory
map costs a few microseconds.  Any header this reader does not handle (pax
extended headers, GNU long names, base-256 sizes, sparse files) hands the
whole shard to `tarfile`, which handles them all.
"""

from __future__ import annotations

import mmap
import tarfile
import zlib
from dataclasses import dataclass

BLOCK = 512
_REGULAR = (b"0", b"\x00", b"7")           # regular file, old-style regular, contiguous
_SKIPPED = (b"1", b"2", b"3", b"4", b"5", b"6")   # links, devices, directories, FIFOs: no data of ours


class _Fallback(Exception):
    pass


@dataclass(frozen=True)
class Listing:
    members: list[tuple[str, int, int]]   # (name, offset of its data, size), regular files, in archive order
    error: str | None                      # why listing stopped early (truncated or corrupt shard), or None


def list_members(path: str) -> Listing:
    """Members of the tar file ``path``.  A file that is not a tar raises
    `tarfile.ReadError`; a shard cut short or corrupt part-way lists what
    comes before and says why in ``error`` (a member cut short is listed with
    its declared size: reading it gives fewer bytes)."""
    try:
        return _fast(path)
    except _Fallback:
        return _slow(path)


def _octal(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        raise _Fallback()                  # base-256 number: tarfile decodes it
    s = field.rstrip(b" \x00").lstrip(b" ")
    return int(s, 8) if s else 0


def _byte_sum(h: bytes) -> int:
    """sum(h) of a 512-byte header, exactly, in C: Adler-32's first half is 1 + the
    sum of the bytes modulo 65,521, and 256 bytes sum to at most 65,280, so each
    half's is exact (4x faster than Python's sum; a million samples' shards hold
    two million headers)."""
    m = memoryview(h)
    return (zlib.adler32(m[:256]) & 0xFFFF) + (zlib.adler32(m[256:]) & 0xFFFF) - 2


def _checksum_ok(h: bytes) -> bool:
    try:
        want = _octal(h[148:156])
    except ValueError:                     # not octal digits: not a tar header
        return False
    return want == _byte_sum(h) - sum(h[148:156]) + 8 * 32     # the checksum field counts as spaces


def _fast(path: str) -> Listing:
    members: list[tuple[str, int, int]] = []
    with open(path, "rb") as fh:
        try:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:                                   # empty file
            raise tarfile.ReadError(f"{path}: empty file") from None
        with mm:
            end = len(mm)
            off = 0
            while True:
                if off + BLOCK > end:
                    if not members and off == 0:
                        raise tarfile.ReadError(f"{path}: shorter than one tar header")
                    return Listing(members, None if off >= end else f"truncated after {len(members)} members")
                h = mm[off:off + BLOCK]
                if h.count(0) == BLOCK:
                    return Listing(members, None)            # end-of-archive marker
                if not _checksum_ok(h):
                    raise _Fallback()        # not a tar, corrupt, or a signed-char checksum: tarfile decides
                kind = h[156:157]
                if kind not in _REGULAR and kind not in _SKIPPED:
                    raise _Fallback()                        # pax, GNU long names, sparse...
                try:
                    size = _octal(h[124:136])
                except ValueError:
                    return Listing(members, f"bad size field after {len(members)} members")
                name = h[0:100].split(b"\x00", 1)[0]
                if h[257:263] == b"ustar\x00":               # POSIX ustar: a prefix field
                    prefix = h[345:500].split(b"\x00", 1)[0]
                    if prefix:
                        name = prefix + b"/" + name
                data = off + BLOCK
                if kind in _REGULAR:
                    members.append((name.decode("utf-8", "surrogateescape"), data, size))
                off = data + -(-size // BLOCK) * BLOCK
                if data + size > end:
                    return Listing(members, f"truncated in member {len(members)}")


def _slow(path: str) -> Listing:
    members: list[tuple[str, int, int]] = []
    with tarfile.open(path, "r:") as tf:
        try:
            for m in tf:
                if m.isfile():
                    members.append((m.name, m.offset_data, m.size))
        except (tarfile.TarError, EOFError, OSError) as e:
            return Listing(members, f"read stopped after {len(members)} members: {e}")
    return Listing(members, None)
