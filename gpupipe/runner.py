"""The one runner: stage order, column contracts, fingerprints, checkpoints,
resume, and where each stage's work runs.

``gpupipe curate`` runs every stage in this order over one run directory
(`gpupipe.rundir` lists its files); ``gpupipe dedup``, ``rank`` and ``review``
run one of them.

==========  ===================================  ===========================  =====================================
stage       function (plain, table in/out)       runs where                   checkpoint / resume
==========  ===================================  ===========================  =====================================
ingest      `stages.ingest.ingest`               here                         redone (a listing; cheap)
hash        `stages.hashing.hash_partition`      executor, per partition      parts/hash-K-FP.parquet per partition,
                                                                              its rows of parts/thumbs-LAYOUT.npy
                                                                              (`hash_partition_to`)
dedup       `stages.dedup.dedup`                 here (CuPy/numpy)            commit: ledger, thumbs.npy, summary
rank        `stages.rank.rank` in rounds         executor, one job per fold   commit per round: ledger, rank.json,
            (`gpupipe.loop`)                     or per 65,536 scored rows    decisions.parquet
review      `stages.review.apply`                here                         commit: ledger, rank.json, decisions
balance     `stages.balance.balance`             here                         commit: ledger + curate.json
split       `stages.split.split`                 here                         commit: ledger + curate.json
export      `stages.export.export`               here (threads)               export dir swapped in, then curate.json
report      `gpupipe.report.write`               here                         report.html, then curate.json
==========  ===================================  ===========================  =====================================

Every stage's columns are declared in `gpupipe.schema` (``schema.STAGES``);
the runner checks them after the stage.  A stage's fingerprint is the
previous stage's, its own settings and the gpupipe version (never settings
that only change speed, like workers or batch sizes); ``curate.json`` keeps
each stage's fingerprint and the ledger generation (`RunDir.commit`) it left.
A rerun skips a stage whose fingerprint matches; a ledger changed since by
another command (a ``gpupipe rank`` or ``review``) makes curate redo the
stages after rank.  Every write that must go with another goes through one
`RunDir.commit`, so a run killed at any instruction and run again ends with
the same ledger, decisions and export as a run never interrupted
(tests/test_kill.py kills it at seeded write steps).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from gpupipe import __version__, report, schema
from gpupipe import summary as summ
from gpupipe.device import Device, DeviceRequest, resolve_device
from gpupipe.hashing.verify import VerifyMode
from gpupipe.io.rows import NpyRows
from gpupipe.rundir import (CURATE_STATE, DECISIONS, GROUP_DECISIONS, LEDGER, PARTS, RANK_STATE, SUMMARY, THUMBS,
                            Content, RunDir)
from gpupipe.scale.executor import make_executor, threads_per_worker
from gpupipe.stages import dedup as dedup_stage
from gpupipe.stages import hashing
from gpupipe.stages import probe as probe_stage
from gpupipe.stages.balance import BalanceConfig, balance
from gpupipe.stages.export import ExportConfig, export
from gpupipe.stages.ingest import IngestResult, ingest
from gpupipe.stages.split import SplitConfig, split
from gpupipe.summary import RunSummary
from gpupipe.table import Ledger, atomic_file, crash_point, write_parquet_atomic

if TYPE_CHECKING:
    from gpupipe.loop import RankOptions

__all__ = ["LEDGER", "THUMBS", "PARTS", "SUMMARY", "DedupOptions", "CurateOptions", "RunSummary", "StaleRun",
           "run_dedup", "run_curate"]

REPORT = "report.html"
EXPORT = "export"
# Settings that change how fast a stage runs, never what it writes.
_SPEED_ONLY = {"device", "workers", "scheduler", "batch_size", "partition_rows", "score_batch", "torch_threads"}
# Stages after dedup whose record a ledger changed by another command makes stale.
_AFTER_RANK = ("balance", "split", "export", "report")


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


def _rank_options(**kw) -> "RankOptions":
    # gpupipe.loop imports torch (a second on start-up): `gpupipe dedup` does not need it
    from gpupipe.loop import RankOptions

    return RankOptions(**kw)


class StaleRun(RuntimeError):
    """RUN_DIR holds a dedup or rank stage made with other settings."""


@dataclass(frozen=True)
class CurateOptions:
    dedup: DedupOptions = field(default_factory=DedupOptions)
    rank: RankOptions | None = field(default_factory=lambda: _rank_options(review="auto", mode="oof", max_rounds=3))
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    export_dir: str | None = None          # None: RUN_DIR/export
    restart: bool = False                  # redo from dedup when settings changed (drops rank decisions)


@dataclass
class CurateResult:
    stopped: str                           # "done" or "awaiting review"
    stages: dict[str, dict]                # per stage: fingerprint, skipped, seconds, stats
    queue: str | None = None



def _policy_totals(rounds: list[dict]) -> dict:
    """The automatic policy's account over the rounds (`stages.review.auto_decisions`):
    decisions it declined (estimated precision too low; left open for a person),
    relabels it held for a person (`AutoPolicy.colour_relabels`), and the
    decisions it made that it expected to be wrong."""
    pol = [r["policy"] for r in rounds if "declined" in r.get("policy", {}) or "held" in r.get("policy", {})]
    if not pol:
        return {}
    declined = {a: sum(p.get("declined", {}).get(a, 0) for p in pol) for a in ("confirm", "relabel", "remove")}
    return {"auto_declined": declined,
            "auto_held_relabels": sum(p.get("held", {}).get("relabel", 0) for p in pol),
            "auto_expected_wrong": round(sum(p.get("expected_wrong", 0.0) for p in pol), 1)}

def _check(frame, stage: str, when: str) -> None:
    cols = schema.columns(stage)
    missing = [c.name for c in cols if c.name not in frame.columns]
    if missing:
        raise RuntimeError(f"stage {stage!r} {when}: columns {missing} are missing")


def run_dedup(
    src: str | os.PathLike,
    run_dir: str | os.PathLike,
    options: DedupOptions = DedupOptions(),
    *,
    progress: Callable[[str, int, int], None] | None = None,
    ingested: IngestResult | None = None,
    executor=None,
) -> RunSummary:
    """ingest -> hash (per partition) -> dedup; commits the ledger, thumbs.npy
    and summary.json.  ``progress(stage, done, total)`` is called as
    partitions finish.  Holds RUN_DIR's lock (`gpupipe.lock`): a second
    process stops with `RunLocked`.  A run directory that holds rank
    decisions is refused (they would no longer match the new ledger).

    ``ingested``: SRC's rows as `ingest` listed them (or a sample of them),
    used instead of listing SRC again; ``executor``: a started executor
    (`gpupipe.scale.executor`) used instead of starting one from
    ``options.workers``/``options.scheduler``.  `gpupipe.bench` passes both,
    so that its timings hold neither the listing nor a cluster's start."""
    with RunDir.open(run_dir) as run:
        if (run / RANK_STATE).exists() or (run / DECISIONS).exists():
            raise StaleRun(f"{run_dir} holds rank/review decisions; deduplicating again would drop them: "
                           "use a new --out (or `gpupipe curate --restart`)")
        summary, files, moves = _dedup(run, src, options, progress, ingested, executor)
        run.commit(files, moves=moves)
        shutil.rmtree(run / PARTS, ignore_errors=True)      # the ledger and thumbs.npy now hold everything
        return summary


def _dedup(run: RunDir, src, options: DedupOptions, progress, ingested: IngestResult | None = None,
           executor=None) -> tuple[RunSummary, dict[str, Content], dict]:
    """The dedup stages up to their commit: -> (summary, files, moves) for `RunDir.commit`."""
    t_all = time.perf_counter()
    device: Device = resolve_device(options.device)
    ledger = Ledger(device)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    ing = ingested if ingested is not None else ingest(src, image_column=options.image_column,
                                                       label_column=options.label_column)
    seconds["ingest"] = time.perf_counter() - t
    n = ing.table.num_rows

    t = time.perf_counter()
    parts_dir = run / PARTS
    owned = executor is None
    with (make_executor(workers=options.workers, scheduler=options.scheduler, gpu=device.is_gpu) if owned
          else contextlib.nullcontext(executor)) as ex:
        # Partitions do not depend on the executor, so a rerun with other workers reuses them.
        per_part = partition_rows(n, options.partition_rows)
        dali_threads = None if ex.name == "in-process" else threads_per_worker(ex.n_workers)
        config = hashing.HashConfig(device=device.kind, batch_size=options.batch_size, dali_threads=dali_threads)
        parts = [(k, p, _part_fingerprint(p, config)) for k, p in
                 enumerate(_partitions(ing.table.select(list(hashing.READS) + [schema.FILE_BYTES]), per_part))]
        thumbs_file = _thumbs_file(parts_dir, parts)      # moved to thumbs.npy by the commit
        done_files = {f.name for f in parts_dir.glob("hash-*.parquet")}
        firsts = np.cumsum([0] + [p.num_rows for _, p, _ in parts]).tolist()
        todo = [(k, p, fp, firsts[k]) for k, p, fp in parts if _part_name(k, fp) not in done_files]
        resumed = len(parts) - len(todo)
        done = [sum(p.num_rows for k, p, fp in parts if _part_name(k, fp) in done_files)]
        if progress is not None and done[0]:
            progress("hash", done[0], n)

        def on_done(rows: int) -> None:
            done[0] += rows
            if progress is not None:
                progress("hash", done[0], n)

        ex.map(hash_partition_to, todo, config, str(parts_dir), str(thumbs_file), on_done=on_done)
        executor_name = ex.name
    hashed, counts = _read_parts(parts_dir, parts)
    thumbs = NpyRows(thumbs_file)
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
    # A person's corrections of earlier groups (gpupipe review --serve) hold over a new grouping.
    group_log = pq.read_table(run / GROUP_DECISIONS) if (run / GROUP_DECISIONS).exists() else None
    frame, group_decisions = dedup_stage.apply_group_decisions(frame, ledger, group_log)
    _check(frame, "dedup", "output")
    thumbs.close()
    out = ledger.to_arrow(frame).cast(schema.arrow_schema("ingest", "hash", "dedup"))
    seconds["dedup"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_all      # the commit's write time is not in it

    summary = RunSummary(
        source=str(src) if "{" in str(src) else str(Path(src).absolute()), run_dir=str(run.path.absolute()),
        device=device.kind, device_note=device.note,
        executor=executor_name, layout=ing.layout, rows=n, seconds=seconds,
        counts={"hash_stage": asdict(counts), "partitions": len(parts), "partitions_resumed": resumed,
                "dedup_stage": {k: v for k, v in asdict(dstats).items() if k != "probe"},
                "group_decisions": group_decisions, "skipped_non_images": ing.skipped_non_images,
                "source_errors": ing.source_errors,
                **summ.counts(out)},
        max_distance=cfg.resolved_distance(), shift_distance=cfg.resolved_shift_distance(),
        verify=cfg.resolved_verify(), recall=summ.recall_summary(dstats.probe, options.recall_sample),
        versions=summ.versions(),
    )
    files: dict[str, Content] = {LEDGER: lambda p: write_parquet_atomic(out, p), SUMMARY: asdict(summary)}
    return summary, files, {THUMBS: thumbs_file}


def _fingerprint(previous: str, stage: str, settings) -> str:
    raw = asdict(settings) if hasattr(settings, "__dataclass_fields__") else dict(settings)
    kept = {k: v for k, v in raw.items() if k not in _SPEED_ONLY}
    blob = json.dumps([previous, stage, __version__, kept], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_curate(src: str | os.PathLike, run_dir: str | os.PathLike, options: CurateOptions | None = None, *,
               progress: Callable | None = None, log: Callable[[str], None] = lambda s: None) -> CurateResult:
    """Every stage, in order, on RUN_DIR (see the module doc), holding its lock.
    When a person reviews (``--review person``), it stops at each queue;
    `gpupipe review` applies the decisions and the next `run_curate` carries on.
    ``options``: None = `CurateOptions()`."""
    options = CurateOptions() if options is None else options
    with RunDir.open(run_dir, log=log) as run:
        return _run_curate(run, Path(src), options, progress, log)


def _run_curate(run: RunDir, src: Path, options: CurateOptions, progress, log) -> CurateResult:
    if options.restart:
        run.clear()
    state = run.read_json(CURATE_STATE, {"stages": {}, "ledger_generation": 0})
    done: dict[str, dict] = state["stages"]
    out: dict[str, dict] = {}

    def record(stage: str, rec: dict, files: dict[str, Content] | None = None, moves=None) -> None:
        """Commit the stage's record with its outputs; the record names the ledger generation they leave."""
        files = dict(files or {})
        writes_ledger = LEDGER in files
        done[stage] = rec
        state["ledger_generation"] = run.generation() + 1 if writes_ledger else run.generation(LEDGER)
        run.commit({**files, CURATE_STATE: state}, moves=moves)

    if done and state["ledger_generation"] != run.generation(LEDGER) and (run / LEDGER).exists():
        stale = [s for s in ("rank", *_AFTER_RANK) if s in done]
        for s in stale:
            done[s].pop("done", None)
            if s != "rank":
                del done[s]
        if stale:
            log(f"the ledger changed since curate last ran (gpupipe rank / review?): redoing {', '.join(stale)}")

    # dedup (ingest + hash + dedup)
    fp = _fingerprint(str(src.absolute()), "dedup", options.dedup)
    if done.get("dedup", {}).get("fingerprint") not in (None, fp):
        raise StaleRun(f"{run.path} was deduplicated with other settings or another source: use a new "
                       "--out, or --restart to redo it from the start (this drops its rank decisions)")
    if "dedup" not in done or not (run / LEDGER).exists():
        # What was built on another ledger goes; finished partitions and a person's group corrections stay.
        run.clear(keep=(PARTS, GROUP_DECISIONS))
        done.clear()
        t = time.perf_counter()
        summary, files, moves = _dedup(run, src, options.dedup, progress)
        record("dedup", {"fingerprint": fp, "seconds": round(time.perf_counter() - t, 2),
                         "stats": {k: summary.counts[k] for k in ("invalid", "kept", "duplicates", "duplicate_groups")}},
               files, moves)
        shutil.rmtree(run / PARTS, ignore_errors=True)
        log(f"dedup: {summary.rows} images, {summary.counts['invalid']} invalid, "
            f"{summary.counts['duplicates']} duplicates")
    else:
        shutil.rmtree(run / PARTS, ignore_errors=True)     # left by a kill just after dedup's commit
        out["dedup"] = {"skipped": True}
    prev = fp

    # rank / review rounds (`gpupipe.loop`): each round is its own commit, so this resumes at the last one
    if options.rank is not None:
        fp = _fingerprint(prev, "rank", options.rank)
        rec = done.get("rank", {})
        if rec.get("fingerprint") not in (None, fp):
            raise StaleRun(f"{run.path} was ranked with other settings: use a new --out, or --restart "
                           "(this drops its rank decisions)")
        if not rec.get("done"):
            t = time.perf_counter()
            from gpupipe.loop import run_rank

            res = run_rank(run.path, options.rank, log=log, progress=progress)
            if res.stopped == "awaiting review":
                return CurateResult("awaiting review", {**done, **out}, res.queue)
            rank_state = run.read_json(RANK_STATE)
            record("rank", {"fingerprint": fp, "done": True, "seconds": round(time.perf_counter() - t, 2),
                            "stats": {"stopped": res.stopped, "rounds": len(rank_state["rounds"]), **res.counts,
                                      **_policy_totals(rank_state["rounds"])}})
        else:
            out["rank"] = {"skipped": True}
        prev = fp

    ledger = Ledger(resolve_device("cpu"))       # bookkeeping from here on: host pandas
    frame = ledger.read(run / LEDGER)
    for stage, cfg, fn in (("balance", options.balance, balance), ("split", options.split, split)):
        fp = _fingerprint(prev, stage, cfg)
        if done.get(stage, {}).get("fingerprint") == fp and all(c.name in frame.columns for c in schema.STAGES[stage]):
            out[stage] = {"skipped": True}
        else:
            t = time.perf_counter()
            frame, stats = fn(frame, ledger, cfg)
            _check(frame, stage, "output")
            for later in _AFTER_RANK[_AFTER_RANK.index(stage) + 1:]:
                done.pop(later, None)
            record(stage, {"fingerprint": fp, "seconds": round(time.perf_counter() - t, 2), "stats": asdict(stats)},
                   {LEDGER: lambda p, f=frame: ledger.write_ledger(f, p)})
            log(f"{stage}: {summ.brief(stage, stats)}")
        prev = fp

    export_dir = Path(options.export_dir) if options.export_dir else run / EXPORT
    fp = _fingerprint(prev, "export", {**asdict(options.export), "dir": str(export_dir.absolute())})
    if done.get("export", {}).get("fingerprint") != fp or not (export_dir / "manifest.parquet").exists():
        t = time.perf_counter()
        stats = export(frame, ledger, export_dir, options.export)
        done.pop("report", None)
        record("export", {"fingerprint": fp, "seconds": round(time.perf_counter() - t, 2), "stats": asdict(stats)})
        how = options.export.mode if not stats.written_from_shards else (
            "written from the shards" if stats.written_from_shards == stats.files
            else f"{options.export.mode}; {stats.written_from_shards} written from the shards")
        log(f"export: {stats.files} files ({how}) in {stats.out}")
    prev = fp

    fp = _fingerprint(prev, "report", {})
    if done.get("report", {}).get("fingerprint") != fp or not (run / REPORT).exists():
        t = time.perf_counter()
        report.write(ledger.to_arrow(frame).to_pandas(), run / REPORT, title=f"gpupipe curate: {src}",
                     stages=summ.report_counts(run.path, done))
        record("report", {"fingerprint": fp, "seconds": round(time.perf_counter() - t, 2)})
        log(f"report: {run / REPORT}")
    return CurateResult("done", {**done, **out})


# --- per-partition checkpoints (hash) -------------------------------------------
def partition_rows(n: int, asked: int | None = None) -> int:
    """Rows per hash partition: ``asked``, else N/8 within 256..16384."""
    return asked or max(256, min(16384, -(-n // 8)))


def _partitions(table: pa.Table, rows: int) -> list[pa.Table]:
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)] or [table]


def _part_fingerprint(part: pa.Table, config: hashing.HashConfig) -> str:
    """What a partition's hash output depends on: its rows (ids, paths,
    locators, sizes), the settings that change hashes, and the version."""
    # The IPC stream of the slice: its own rows only (a slice's buffers() are its
    # parent table's, the same for every partition).
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, part.schema) as writer:
        writer.write_table(part)
    h = xxhash.xxh3_64(memoryview(sink.getvalue()))
    # The device too: nvJPEG and libjpeg-turbo decode a JPEG to slightly other pixels
    # (README, "CPU and GPU runs"), so a run resumed on another device rehashes.
    h.update(repr((__version__, config.device, config.max_pixels, config.min_side)).encode())
    return h.hexdigest()


def _part_name(k: int, fp: str, kind: str = "hash", ext: str = "parquet") -> str:
    return f"{kind}-{k:05d}-{fp}.{ext}"


def hash_partition_to(item: tuple[int, pa.Table, str, int], config: hashing.HashConfig, parts_dir: str,
                      thumbs_file: str) -> int:
    """Hash one partition where it runs and write its outputs: its thumbnails
    into their rows of ``thumbs_file`` (`_thumbs_file`), then its hash table
    under ``parts_dir``, whose presence marks the partition done.  Returns its
    row count; only that travels back, so a Dask worker ships no thumbnails
    (RUN_DIR must be on a filesystem the workers share)."""
    k, part, fp, first = item
    table, counts, thumbs = hashing.hash_partition(part.select(list(hashing.READS)), config)
    _write_rows(thumbs_file, first, thumbs)
    crash_point(f"wrote thumbs-{k:05d}")
    meta = {b"gpupipe.counts": json.dumps(asdict(counts)).encode()}
    write_parquet_atomic(table.replace_schema_metadata(meta), Path(parts_dir) / _part_name(k, fp))
    return part.num_rows


THUMB_SHAPE = (hashing.THUMB, hashing.THUMB, 3)


def _thumbs_file(parts_dir: Path, parts) -> Path:
    """The thumbnails of every partition of this layout, (N, 32, 32, 3) uint8 .npy:
    ``parts_dir/thumbs-<layout>.npy``, made (zeros, sparse) when absent, each
    partition writing its own rows into it.  Written once, not per partition
    and then joined (CIFAR-10's 60,000: the join cost 0.1-0.6 s of a 4 s run).
    A new layout (other rows or settings) starts ``parts_dir`` afresh: the
    partitions done for another one have their thumbnails in another file."""
    layout = xxhash.xxh3_64(repr([(k, fp, p.num_rows) for k, p, fp in parts]).encode()).hexdigest()
    path = parts_dir / f"thumbs-{layout}.npy"
    if path.exists():
        return path
    shutil.rmtree(parts_dir, ignore_errors=True)
    n = sum(p.num_rows for _, p, _ in parts)
    with atomic_file(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (n, *THUMB_SHAPE)})
        fh.truncate(fh.tell() + n * int(np.prod(THUMB_SHAPE)))
    return path


def _write_rows(path: str, first: int, rows: np.ndarray) -> None:
    """Write ``rows`` at row ``first`` of the .npy file ``path`` and fsync it."""
    reader = NpyRows(path)
    offset, row_bytes = reader.offset, reader.row_bytes
    reader.close()
    data = memoryview(np.ascontiguousarray(rows, dtype=np.uint8)).cast("B")
    if len(data) != len(rows) * row_bytes:
        raise ValueError(f"{path}: rows of {row_bytes} bytes expected")
    fd = os.open(path, os.O_WRONLY)
    try:
        at = offset + first * row_bytes
        while len(data):
            done = os.pwrite(fd, data, at)
            data, at = data[done:], at + done
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_parts(parts_dir: Path, parts) -> tuple[pa.Table, hashing.HashCounts]:
    tables, counts = [], hashing.HashCounts()
    for k, _, fp in parts:
        t = pq.read_table(parts_dir / _part_name(k, fp))
        counts = counts.add(hashing.HashCounts(**json.loads(t.schema.metadata[b"gpupipe.counts"])))
        tables.append(t.replace_schema_metadata(None))
    return (pa.concat_tables(tables) if tables else hashing.OUTPUT_SCHEMA.empty_table()), counts


