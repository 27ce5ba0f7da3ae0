"""Hash stage: the per-partition work (read, sniff, decode, hash).

For each row of a partition, cheapest first:
1. read the file (or shard member, or Parquet row: `gpupipe.io.sources`) and hash its bytes (xxh3-128) -- stage 1 of dedup;
2. sniff the header: format, dimensions, and the obvious invalid files
   (empty, not an image, truncated, absurd dimensions) -- never decoded;
3. decode with DALI only the first file of each distinct byte hash in the
   partition; its byte twins get its results without decoding again;
4. from the decoded pixels: the exact pixel hash (stage 2), the 64-bit pHash
   and the 64-bit shift-tolerant key (stage 3's candidate keys), all on the
   decode device, and a 32x32 RGB thumbnail for the near-duplicate check.

A partition is streamed in chunks, so memory stays bounded whatever its size.
The output depends only on the files, never on partitioning or device
(a twin's hashes are what its own decode would give).

Reads: sample_id, path, ingest_locator.  Adds: `schema.HASH`.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import xxhash

from gpupipe import schema
from gpupipe.device import Device, DeviceRequest, resolve_device
from gpupipe.hashing.phash import DCT_SIZE as THUMB
from gpupipe.hashing.phash import phash
from gpupipe.hashing.pixels import pixel_hash, to_hex
from gpupipe.hashing.shiftkey import shift_key
from gpupipe.io.sniff import sniff
from gpupipe.io.sources import ReadError, read_many
from gpupipe.xputil import one_blas_thread

READS = (schema.SAMPLE_ID, schema.PATH, schema.LOCATOR)
MISSING = "missing"             # the file is not there (or a link leads nowhere)
UNREADABLE = "unreadable"       # any other read error: permission, a folder, a link loop, I/O
UNDECODABLE = "undecodable"
OUTPUT_SCHEMA = pa.schema([pa.field(schema.SAMPLE_ID, pa.int64(), False), *schema.arrow_schema("hash")])


@dataclass(frozen=True)
class HashConfig:
    device: DeviceRequest = "auto"
    batch_size: int = 512
    dali_threads: int | None = None     # cores DALI decodes on (None: this process's, up to 8); it runs one more thread
    io_threads: int = 4
    max_pixels: int = 178_956_970       # Pillow's decompression-bomb limit
    min_side: int = 1


@dataclass
class HashCounts:
    rows: int = 0
    read: int = 0
    invalid: int = 0
    byte_twins: int = 0     # settled by stage 1, not decoded
    decoded: int = 0
    # seconds spent per step, summed over partitions; decoding runs in its own
    # thread, overlapping the other steps, so these add up to more than the stage
    s_read: float = 0.0     # waiting for file reads + xxh3 of their bytes (stage 1)
    s_sniff: float = 0.0
    s_decode: float = 0.0   # DALI decode + 32x32 gray thumbs
    s_pixels: float = 0.0   # exact pixel hash (stage 2)
    s_phash: float = 0.0    # DCT pHash + shift key (stage 3's candidate keys)

    def add(self, other: "HashCounts") -> "HashCounts":
        return HashCounts(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))


_local = threading.local()


def _decoder(config: HashConfig):
    """One DALI decoder per thread and configuration, built on first use and
    kept: a DALI pipeline is fed and run by one caller at a time, and a Dask
    worker may run several partitions at once in threads (one per process
    was not safe then)."""
    from gpupipe.dali.decode import Decoder, default_threads

    cache = _local.__dict__.setdefault("decoders", {})
    if config not in cache:
        device = resolve_device(config.device)
        # One DALI thread more than the cores it has: this stage's own thread hashes each
        # batch while DALI decodes the next, and the extra thread keeps the cores busy
        # (CIFAR-10's 60,000 on 2 cores: 2.68-2.78 s against 2.89-3.02 s with two threads, 4
        # alternating rounds, benchmarks/bench_hash_stage.py --dali-cores 1 2).
        cores = config.dali_threads or default_threads()
        cache[config] = Decoder(device, batch_size=config.batch_size, num_threads=cores + 1).setup()
    return cache[config]


def _submit_reads(pool: ThreadPoolExecutor, paths: list[str], locators: list, n_tasks: int) -> list:
    """Read ``paths`` (with their locators) in ``n_tasks`` tasks (one future per file costs ~10 us)."""
    step = max(1, -(-len(paths) // n_tasks))
    return [pool.submit(read_many, paths[i:i + step], locators[i:i + step]) for i in range(0, len(paths), step)]


def hash_partition(
    part: pa.Table, config: HashConfig, progress: Callable[[int], None] | None = None
) -> tuple[pa.Table, HashCounts, np.ndarray]:
    """Run the hash stage over one partition (an Arrow table with `READS`).

    Returns an Arrow table with ``sample_id`` and the `schema.HASH` columns, in
    the partition's row order; the work counts; and the (n, 32, 32, 3) uint8
    RGB thumbnails (zeros for invalid rows), kept outside the ledger
    (`gpupipe.runner` writes them to ``thumbs.npy``) for near-duplicate checks.
    """
    decoder = _decoder(config)
    device: Device = decoder.device
    n = part.num_rows
    ids = part.column(schema.SAMPLE_ID).to_numpy()
    paths = part.column(schema.PATH).to_pylist()
    locators = (part.column(schema.LOCATOR).to_pylist() if schema.LOCATOR in part.column_names
                else [None] * n)
    out = {
        "fmt": [None] * n, "w": [None] * n, "h": [None] * n, "reason": [None] * n,
        "bytes": [None] * n, "pixels": [None] * n, "phash": [None] * n, "shift": [None] * n,
    }
    settled: dict[str, tuple] = {}      # byte hash -> (pixel hex, phash, shift key, thumb, error)
    thumbs = np.zeros((n, THUMB, THUMB, 3), dtype=np.uint8)
    counts = HashCounts(rows=n)
    chunk = max(1, config.batch_size * 4)
    # One BLAS thread for the hash kernels: DALI's threads decode on the other cores
    # meanwhile, and OpenBLAS's own threads competing with them cost more than they gave
    # (CIFAR-10's 60,000 on 2 cores: 7.4-7.8 core-s with them, 4.6-4.8 with one; RESULTS.md §20.1).
    with ThreadPoolExecutor(max_workers=config.io_threads) as pool, ThreadPoolExecutor(max_workers=1) as decode_pool, \
            one_blas_thread():
        # Three steps overlap: the reads of chunk k+2 (io pool), the decoding of chunk
        # k+1 (the decode thread; DALI releases the GIL), and here, the hashing of chunk k.
        pending: set[str] = set()        # byte hashes queued for decoding, not settled yet
        ahead = _submit_reads(pool, paths[0:chunk], locators[0:chunk], config.io_threads)
        current = None
        for start in [*range(0, n, chunk), n]:
            queued = None
            if start < n:
                stop = min(n, start + chunk)
                t0 = time.perf_counter()
                datas = [d for f in ahead for d in f.result()]
                ahead = _submit_reads(pool, paths[stop:stop + chunk], locators[stop:stop + chunk],
                                      config.io_threads)   # [] after the last
                to_decode, waiting = _read_chunk(datas, start, out, settled, pending, config, counts, t0)
                batches = _batches(to_decode, out, config.batch_size)
                queued = (stop - start, to_decode, waiting, [b for b, _ in batches],
                          [decode_pool.submit(_decode, decoder, *b) for b in batches])
            if current is not None:
                _hash_chunk(device, current, out, thumbs, settled, pending, counts)
                if progress is not None:
                    progress(current[0])
            current = queued
    invalid = [r is not None for r in out["reason"]]
    counts.invalid = sum(invalid)
    table = pa.table(
        {
            schema.SAMPLE_ID: pa.array(ids, pa.int64()),
            schema.IMAGE_FORMAT: pa.array(out["fmt"], pa.string()),
            schema.IMAGE_WIDTH: pa.array(out["w"], pa.int32()),
            schema.IMAGE_HEIGHT: pa.array(out["h"], pa.int32()),
            schema.IS_INVALID: pa.array(invalid, pa.bool_()),
            schema.INVALID_REASON: pa.array(out["reason"], pa.string()),
            schema.BYTES_HASH: pa.array(out["bytes"], pa.string()),
            schema.PIXELS_HASH: pa.array(out["pixels"], pa.string()),
            schema.PHASH: pa.array(out["phash"], pa.uint64()),
            schema.SHIFT_KEY: pa.array(out["shift"], pa.uint64()),
        },
        schema=OUTPUT_SCHEMA,
    )
    return table, counts, thumbs


def _read_chunk(datas, start: int, out, settled, pending: set, config: HashConfig, counts: HashCounts,
                t0: float):
    """Stages 1 and 0 of one chunk's files (read results ``datas``, rows from
    ``start``): byte hash, header sniff; -> (to_decode [(row, byte hash, bytes)]:
    the first of each byte hash not seen before, waiting [(row, byte hash)]: its twins)."""
    t_sniff = 0.0
    to_decode: list[tuple[int, str, np.ndarray]] = []
    waiting: list[tuple[int, str]] = []
    for i, data in enumerate(datas, start):
        if isinstance(data, OSError):
            out["reason"][i] = _read_reason(data)
            continue
        counts.read += 1
        bh = xxhash.xxh3_128_hexdigest(data)
        out["bytes"][i] = bh
        t1 = time.perf_counter()
        s = sniff(data, max_pixels=config.max_pixels, min_side=config.min_side)
        t_sniff += time.perf_counter() - t1
        out["fmt"][i], out["w"][i], out["h"][i] = s.format, s.width, s.height
        if s.invalid_reason is not None:
            out["reason"][i] = s.invalid_reason
        elif bh in settled or bh in pending:
            waiting.append((i, bh))
        else:
            pending.add(bh)
            to_decode.append((i, bh, np.frombuffer(data, dtype=np.uint8)))
    counts.s_sniff += t_sniff
    counts.s_read += time.perf_counter() - t0 - t_sniff
    return to_decode, waiting


def _batches(to_decode: list, out, size: int) -> list[tuple[list, bool]]:
    """Decode batches of up to ``size`` files: (batch, at_size), the files whose
    headers say THUMB x THUMB pixels (CIFAR's 32 px) apart from the others, so
    that theirs skip the resize (`gpupipe.dali.decode.Decoder.decode`)."""
    at = [(out["w"][e[0]], out["h"][e[0]]) == (THUMB, THUMB) for e in to_decode]
    batches = []
    for flag in (True, False):
        files = [e for e, a in zip(to_decode, at) if a is flag]
        batches += [(files[b:b + size], flag) for b in range(0, len(files), size)]
    return batches


def _hash_chunk(device: Device, queued, out, thumbs: np.ndarray, settled, pending: set, counts: HashCounts) -> None:
    """Hash a chunk whose batches were queued for decoding, then settle its rows and their byte twins."""
    _, to_decode, waiting, batches, futures = queued
    for batch, fut in zip(batches, futures):
        decoded, seconds = fut.result()
        counts.s_decode += seconds
        _hash_decoded(device, batch, decoded, settled, counts)
        counts.decoded += len(batch)
    for i, bh, _ in to_decode:
        pending.discard(bh)
        _settle(out, thumbs, i, settled[bh])
    for i, bh in waiting:
        counts.byte_twins += 1
        _settle(out, thumbs, i, settled[bh])


def _read_reason(err: OSError) -> str:
    if isinstance(err, ReadError):
        return err.reason
    return MISSING if isinstance(err, FileNotFoundError) else UNREADABLE


def _settle(out, thumbs: np.ndarray, i: int, result) -> None:
    pix, ph, sk, thumb, err = result
    if err is not None:
        out["reason"][i] = err
    else:
        out["pixels"][i], out["phash"][i], out["shift"][i] = pix, ph, sk
        thumbs[i] = thumb


def _decode(decoder, batch, at_size: bool = False):
    """Decode one batch (runs in the decode thread) -> (Decoded, seconds)."""
    t0 = time.perf_counter()
    decoded = decoder.decode([e for _, _, e in batch], at_size=at_size)
    return decoded, time.perf_counter() - t0


def image_keys(grays, xp):
    """The two candidate keys of a batch of 32x32 gray thumbnails: (pHash (B,), shift key (B,))
    uint64 on ``xp``'s device.  One definition for the hash stage and the recall probe."""
    return phash(grays, xp), shift_key(grays, xp)


def _hash_decoded(device: Device, batch, decoded, settled, counts: HashCounts) -> None:
    """Hash one decoded batch; record (pixel_hex, phash, shift key, thumb, error) per byte hash."""
    t1 = time.perf_counter()
    phashes, shifts = (device.to_host(k) for k in image_keys(decoded.grays, device.xp))
    thumbs_h = device.to_host(decoded.thumbs)
    ph_of = {p: (h, s, thumbs_h[k]) for k, (p, h, s) in
             enumerate(zip(decoded.ok.tolist(), phashes.tolist(), shifts.tolist()))}
    t2 = time.perf_counter()
    for pos, images in decoded.rgb_groups:
        hexes = to_hex(device.to_host(pixel_hash(images, device.xp)))
        for p, hx in zip(pos.tolist(), hexes):
            settled[batch[p][1]] = (hx, *ph_of[p], None)
    counts.s_phash += t2 - t1
    counts.s_pixels += time.perf_counter() - t2
    for p in decoded.errors:
        settled[batch[p][1]] = (None, None, None, None, UNDECODABLE)
