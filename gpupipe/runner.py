"""Runs the stages in order over one ledger and writes the run directory.

The runner knows the order of stages, checks each stage's column contract
(what it reads is there before; what it adds is there after, with the declared
dtypes), hands per-partition work to an executor, and writes
``RUN_DIR/ledger.parquet``, ``RUN_DIR/thumbs.npy`` and ``RUN_DIR/summary.json``
atomically.  While a run is under way each partition's outputs sit in
``RUN_DIR/parts/`` (the unit of resume), removed once the ledger is written.
It knows nothing about hashes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from gpupipe import __version__, schema
from gpupipe.device import Device, DeviceRequest, resolve_device
from gpupipe.hashing.verify import VerifyMode
from gpupipe.io.rows import NpyRows
from gpupipe.lock import run_lock
from gpupipe.scale.executor import make_executor, threads_per_worker
from gpupipe.stages import dedup as dedup_stage
from gpupipe.stages import hashing
from gpupipe.stages import probe as probe_stage
from gpupipe.stages.ingest import ingest
from gpupipe.table import Ledger, atomic_file, fsync_dir, write_npy_atomic, write_parquet_atomic, write_text_atomic

LEDGER = "ledger.parquet"
THUMBS = "thumbs.npy"        # (N, 32, 32, 3) uint8 RGB, aligned with the ledger's rows
PARTS = "parts"              # per-partition hash outputs while a run is under way (resume)
SUMMARY = "summary.json"


@dataclass(frozen=True)
class DedupOptions:
    device: DeviceRequest = "auto"
    max_distance: int | None = None
    shift_distance: int | None = None      # shift-key threshold; -1 turns that search off
    verify: VerifyMode = "pixels"
    min_similarity: float | None = None
    recall_sample: int = probe_stage.DEFAULT_SAMPLE   # images whose edited copies measure recall; 0: off
    workers: int | None = None
    scheduler: str | None = None
    batch_size: int = 512
    partition_rows: int | None = None   # None: N/8 rows, 256..16384 (independent of the executor: resumable)
    seed: int = 0
    image_column: str | None = None     # Parquet sources: the image-bytes column
    label_column: str | None = None     # Parquet: label column; WebDataset: label member's extension


@dataclass
class RunSummary:
    source: str
    run_dir: str
    device: str
    executor: str
    device_note: str
    layout: str
    rows: int
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    max_distance: int = 0
    shift_distance: int = 0
    verify: dict[str, Any] = field(default_factory=dict)
    recall: dict[str, Any] = field(default_factory=dict)    # per kind, from the probes
    versions: dict[str, Any] = field(default_factory=dict)

    def images_per_second(self) -> dict[str, float]:
        return {k: (self.rows / v if v > 0 else float("inf")) for k, v in self.seconds.items()}


def _check(frame, stage: str, when: str) -> None:
    cols = schema.columns(stage)
    missing = [c.name for c in cols if c.name not in frame.columns]
    if missing:
        raise RuntimeError(f"stage {stage!r} {when}: columns {missing} are missing")


def _partitions(table: pa.Table, rows: int) -> list[pa.Table]:
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)] or [table]


def run_dedup(
    src: str | os.PathLike,
    run_dir: str | os.PathLike,
    options: DedupOptions = DedupOptions(),
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> RunSummary:
    """ingest -> hash (per partition) -> dedup; writes the ledger and summary.

    ``progress(stage, done, total)`` is called as partitions finish.  Holds
    RUN_DIR's lock (`gpupipe.lock`): a second process stops with `RunLocked`.
    """
    with run_lock(run_dir):
        return _run_dedup(src, run_dir, options, progress)


def _run_dedup(src, run_dir, options: DedupOptions, progress) -> RunSummary:
    t_all = time.perf_counter()
    run_dir = Path(run_dir)
    device: Device = resolve_device(options.device)
    ledger = Ledger(device)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    ing = ingest(src, image_column=options.image_column, label_column=options.label_column)
    seconds["ingest"] = time.perf_counter() - t
    n = ing.table.num_rows

    t = time.perf_counter()
    parts_dir = run_dir / PARTS
    with make_executor(workers=options.workers, scheduler=options.scheduler, gpu=device.is_gpu) as ex:
        # Partitions do not depend on the executor, so a rerun with other workers reuses them.
        per_part = options.partition_rows or max(256, min(16384, -(-n // 8)))
        dali_threads = None if ex.name == "in-process" else threads_per_worker(ex.n_workers)
        config = hashing.HashConfig(device=device.kind, batch_size=options.batch_size, dali_threads=dali_threads)
        parts = [(k, p, _part_fingerprint(p, config)) for k, p in
                 enumerate(_partitions(ing.table.select(list(hashing.READS) + [schema.FILE_BYTES]), per_part))]
        done_files = {f.name for f in parts_dir.glob("hash-*.parquet")} if parts_dir.is_dir() else set()
        todo = [(k, p, fp) for k, p, fp in parts if _part_name(k, fp) not in done_files]
        resumed = len(parts) - len(todo)
        done = [sum(p.num_rows for k, p, fp in parts if _part_name(k, fp) in done_files)]
        if progress is not None and done[0]:
            progress("hash", done[0], n)

        def on_done(rows: int) -> None:
            done[0] += rows
            if progress is not None:
                progress("hash", done[0], n)

        ex.map(hash_partition_to, todo, config, str(parts_dir), on_done=on_done)
        executor_name = ex.name
    hashed, counts = _read_parts(parts_dir, parts)
    thumbs_file = parts_dir / "thumbs-joined.npy"      # renamed to thumbs.npy once the ledger is written
    thumbs = _join_thumbs(parts_dir, parts, thumbs_file)
    seconds["hash"] = time.perf_counter() - t

    joined = ing.table
    for name in hashed.column_names[1:]:
        joined = joined.append_column(hashed.schema.field(name), hashed.column(name))
    frame = ledger.from_arrow(joined)
    _check(frame, "ingest", "output")
    _check(frame, "hash", "output")

    t = time.perf_counter()
    probes = None
    if options.recall_sample > 0 and options.verify != "none":
        probes = probe_stage.make_probes(joined, device, probe_stage.ProbeConfig(
            sample=options.recall_sample, seed=options.seed), batch_size=options.batch_size)
    seconds["probe"] = time.perf_counter() - t

    t = time.perf_counter()
    cfg = dedup_stage.DedupConfig(
        max_distance=options.max_distance, shift_distance=options.shift_distance, verify=options.verify,
        min_similarity=options.min_similarity, seed=options.seed)
    frame, dstats = dedup_stage.dedup(frame, ledger, cfg, thumbs=thumbs, probes=probes, progress=progress)
    _check(frame, "dedup", "output")
    seconds["dedup"] = time.perf_counter() - t

    t = time.perf_counter()
    out = ledger.to_arrow(frame).cast(schema.arrow_schema("ingest", "hash", "dedup"))
    write_parquet_atomic(out, run_dir / LEDGER)
    thumbs.close()
    os.replace(thumbs_file, run_dir / THUMBS)
    fsync_dir(run_dir)
    shutil.rmtree(parts_dir, ignore_errors=True)      # the ledger and thumbs.npy now hold everything
    seconds["write"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_all

    summary = RunSummary(
        source=str(src) if "{" in str(src) else str(Path(src).absolute()), run_dir=str(run_dir.absolute()),
        device=device.kind, device_note=device.note,
        executor=executor_name, layout=ing.layout, rows=n, seconds=seconds,
        counts={"hash_stage": asdict(counts), "partitions": len(parts), "partitions_resumed": resumed, "dedup_stage": {k: v for k, v in asdict(dstats).items() if k != "probe"},
                "skipped_non_images": ing.skipped_non_images, "source_errors": ing.source_errors,
                **_counts(out)},
        max_distance=cfg.resolved_distance(), shift_distance=cfg.resolved_shift_distance(),
        verify=cfg.resolved_verify(), recall=_recall_summary(dstats.probe, options.recall_sample),
        versions=_versions(),
    )
    write_text_atomic(json.dumps(asdict(summary), indent=2, default=str), run_dir / SUMMARY)
    return summary


def _part_fingerprint(part: pa.Table, config: hashing.HashConfig) -> str:
    """What a partition's hash output depends on: its rows (ids, paths,
    locators, sizes), the settings that change hashes, and the version."""
    # The IPC stream of the slice: its own rows only (a slice's buffers() are its
    # parent table's, the same for every partition).
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, part.schema) as writer:
        writer.write_table(part)
    h = xxhash.xxh3_64(memoryview(sink.getvalue()))
    h.update(repr((__version__, config.max_pixels, config.min_side)).encode())
    return h.hexdigest()


def _part_name(k: int, fp: str, kind: str = "hash", ext: str = "parquet") -> str:
    return f"{kind}-{k:05d}-{fp}.{ext}"


def hash_partition_to(item: tuple[int, pa.Table, str], config: hashing.HashConfig, parts_dir: str) -> int:
    """Hash one partition where it runs and write its outputs under ``parts_dir``
    (thumbnails first, then the hash table: the table's presence marks the
    partition done).  Returns its row count; only that travels back, so a Dask
    worker ships no thumbnails (RUN_DIR must be on a filesystem the workers share)."""
    k, part, fp = item
    table, counts, thumbs = hashing.hash_partition(part.select(list(hashing.READS)), config)
    d = Path(parts_dir)
    write_npy_atomic(thumbs, d / _part_name(k, fp, "thumbs", "npy"))
    meta = {b"gpupipe.counts": json.dumps(asdict(counts)).encode()}
    write_parquet_atomic(table.replace_schema_metadata(meta), d / _part_name(k, fp))
    return part.num_rows


def _read_parts(parts_dir: Path, parts) -> tuple[pa.Table, hashing.HashCounts]:
    tables, counts = [], hashing.HashCounts()
    for k, _, fp in parts:
        t = pq.read_table(parts_dir / _part_name(k, fp))
        counts = counts.add(hashing.HashCounts(**json.loads(t.schema.metadata[b"gpupipe.counts"])))
        tables.append(t.replace_schema_metadata(None))
    return (pa.concat_tables(tables) if tables else hashing.OUTPUT_SCHEMA.empty_table()), counts


def _join_thumbs(parts_dir: Path, parts, out: Path) -> NpyRows:
    """Concatenate the partitions' thumbnails into ``out`` (.npy) one partition
    at a time, and return a reader of its rows: the dedup stage reads only the
    rows its candidate pairs need."""
    n = sum(p.num_rows for _, p, _ in parts)
    with atomic_file(out, "wb") as fh:     # streamed: no N-sized array in memory
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (n, 32, 32, 3)})
        for k, p, fp in parts:
            fh.write(np.ascontiguousarray(np.load(parts_dir / _part_name(k, fp, "thumbs", "npy"))).tobytes())
    return NpyRows(out)


def _counts(t: pa.Table) -> dict[str, Any]:
    import pyarrow.compute as pc

    def col(name):
        return t.column(name)

    kinds = pc.value_counts(col(schema.DEDUP_KIND)).to_pylist()
    reasons = pc.value_counts(col(schema.INVALID_REASON)).to_pylist()
    non_unique = pc.and_(pc.greater(col(schema.DEDUP_GROUP_SIZE), 1), col(schema.DEDUP_KEEP))
    return {
        "invalid": int(pc.sum(col(schema.IS_INVALID)).as_py() or 0),
        "invalid_by_reason": {r["values"]: r["counts"] for r in reasons if r["values"] is not None},
        "kept": int(pc.sum(col(schema.DEDUP_KEEP)).as_py() or 0),
        "duplicates": int(pc.sum(pc.is_valid(col(schema.DEDUP_DUPLICATE_OF))).as_py() or 0),
        "duplicate_groups": int(pc.sum(non_unique).as_py() or 0),
        "duplicates_by_kind": {k["values"]: k["counts"] for k in kinds if k["values"] is not None},
        "label_conflict_groups": int(pc.sum(pc.and_(col(schema.DEDUP_LABEL_CONFLICT), col(schema.DEDUP_KEEP))).as_py() or 0),
        "split_leak_groups": int(pc.sum(pc.and_(col(schema.DEDUP_SPLIT_LEAK), col(schema.DEDUP_KEEP))).as_py() or 0),
    }


def _recall_summary(per_kind: dict, sample: int) -> dict[str, Any]:
    if not per_kind:
        return {}
    copies = sum(v["copies"] for v in per_kind.values())
    found = sum(v["found"] for v in per_kind.values())
    return {"sample": sample, "copies": copies, "recall": round(found / copies, 4) if copies else None,
            "false_matches": sum(v["false_matches"] for v in per_kind.values()), "by_kind": per_kind}


def _versions() -> dict[str, Any]:
    from gpupipe.dali.decode import dali_version

    return {"gpupipe": __version__, "python": sys.version.split()[0], "dali": dali_version(),
            "pyarrow": pa.__version__}
