"""`gpupipe curate`: ingest -> dedup -> rank/review -> balance -> split -> export -> report.

Each stage checkpoints the ledger (``RUN_DIR/ledger.parquet``) and records in
``RUN_DIR/curate.json`` a fingerprint of what produced it: the previous
stage's fingerprint, the stage's own settings and the gpupipe version (not
the settings that only change speed, like workers or batch sizes).  A rerun
skips every stage whose fingerprint matches, and resumes the rank loop at its
last finished round (`gpupipe.loop` checkpoints each round), so a run killed
at any point and run again ends with the same ledger as one never
interrupted.  When a person reviews (``--review person``), curate stops at
each queue; `gpupipe review` applies the decisions and the next `curate`
carries on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from gpupipe import __version__, report, schema
from gpupipe.device import resolve_device
from gpupipe.lock import run_lock
from gpupipe.loop import RANK_STATE, RankOptions, run_rank
from gpupipe.runner import LEDGER, SUMMARY, DedupOptions, run_dedup
from gpupipe.stages.balance import BalanceConfig, balance
from gpupipe.stages.export import ExportConfig, export
from gpupipe.stages.split import SplitConfig, split
from gpupipe.table import Ledger, write_text_atomic

STATE = "curate.json"
REPORT = "report.html"
EXPORT = "export"
# Settings that change how fast a stage runs, never what it writes.
_SPEED_ONLY = {"device", "workers", "scheduler", "batch_size", "partition_rows", "score_batch"}


class StaleRun(RuntimeError):
    """RUN_DIR holds a dedup or rank stage made with other settings."""


@dataclass(frozen=True)
class CurateOptions:
    dedup: DedupOptions = field(default_factory=DedupOptions)
    rank: RankOptions | None = field(default_factory=lambda: RankOptions(review="auto", mode="oof", max_rounds=3))
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


def _fingerprint(previous: str, stage: str, settings) -> str:
    raw = asdict(settings) if hasattr(settings, "__dataclass_fields__") else dict(settings)
    kept = {k: v for k, v in raw.items() if k not in _SPEED_ONLY}
    blob = json.dumps([previous, stage, __version__, kept], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_curate(src: str | os.PathLike, run_dir: str | os.PathLike, options: CurateOptions = CurateOptions(), *,
               progress: Callable | None = None, log: Callable[[str], None] = lambda s: None) -> CurateResult:
    """The whole curation on RUN_DIR, holding its lock (see `gpupipe.lock`)."""
    with run_lock(run_dir, log=log):
        return _run_curate(src, run_dir, options, progress, log)


def _run_curate(src, run_dir, options: CurateOptions, progress, log) -> CurateResult:
    run_dir = Path(run_dir)
    src = Path(src)
    state_path = run_dir / STATE
    state = json.loads(state_path.read_text()) if state_path.exists() else {"stages": {}}
    done = state["stages"]
    out: dict[str, dict] = {}

    def save() -> None:
        write_text_atomic(json.dumps(state, indent=2, default=str), state_path)

    if options.restart:
        _clear(run_dir)
        done.clear()

    # dedup (ingest + hash + dedup)
    fp = _fingerprint(str(src.absolute()), "dedup", options.dedup)
    if done.get("dedup", {}).get("fingerprint") not in (None, fp):
        raise StaleRun(f"{run_dir} was deduplicated with other settings or another source: use a new "
                       "--out, or --restart to redo it from the start (this drops its rank decisions)")
    if "dedup" not in done or not (run_dir / LEDGER).exists():
        _clear(run_dir)
        t = time.perf_counter()
        summary = run_dedup(src, run_dir, options.dedup, progress=progress)
        done["dedup"] = {"fingerprint": fp, "seconds": round(time.perf_counter() - t, 2),
                         "stats": {k: summary.counts[k] for k in ("invalid", "kept", "duplicates", "duplicate_groups")}}
        save()
        log(f"dedup: {summary.rows} images, {summary.counts['invalid']} invalid, "
            f"{summary.counts['duplicates']} duplicates")
    else:
        out["dedup"] = {"skipped": True}
    prev = fp

    # rank / review loop: resumes at its last finished round
    if options.rank is not None:
        fp = _fingerprint(prev, "rank", options.rank)
        rec = done.get("rank", {})
        if rec.get("fingerprint") not in (None, fp):
            raise StaleRun(f"{run_dir} was ranked with other settings: use a new --out, or --restart "
                           "(this drops its rank decisions)")
        if not rec.get("done"):
            done["rank"] = {"fingerprint": fp, "done": False}
            save()
            t = time.perf_counter()
            res = run_rank(run_dir, options.rank, log=log, progress=progress)
            if res.stopped == "awaiting review":
                return CurateResult("awaiting review", {**done, **out}, res.queue)
            rank_state = json.loads((run_dir / RANK_STATE).read_text())
            done["rank"] = {"fingerprint": fp, "done": True, "seconds": round(time.perf_counter() - t, 2),
                            "stats": {"stopped": res.stopped, "rounds": len(rank_state["rounds"]), **res.counts}}
            save()
        else:
            out["rank"] = {"skipped": True}
        prev = fp

    ledger = Ledger(resolve_device("cpu"))       # bookkeeping from here on: host pandas
    frame = ledger.read(run_dir / LEDGER)
    for stage, cfg, fn in (("balance", options.balance, balance), ("split", options.split, split)):
        fp = _fingerprint(prev, stage, cfg)
        if done.get(stage, {}).get("fingerprint") == fp and all(c.name in frame.columns for c in schema.STAGES[stage]):
            out[stage] = {"skipped": True}
        else:
            t = time.perf_counter()
            frame, stats = fn(frame, ledger, cfg)
            ledger.write_ledger(frame, run_dir / LEDGER)
            done[stage] = {"fingerprint": fp, "seconds": round(time.perf_counter() - t, 2), "stats": asdict(stats)}
            save()
            log(f"{stage}: {_brief(stage, stats)}")
        prev = fp

    export_dir = Path(options.export_dir) if options.export_dir else run_dir / EXPORT
    fp = _fingerprint(prev, "export", {**asdict(options.export), "dir": str(export_dir.absolute())})
    if done.get("export", {}).get("fingerprint") != fp or not (export_dir / "manifest.parquet").exists():
        t = time.perf_counter()
        stats = export(frame, ledger, export_dir, options.export)
        done["export"] = {"fingerprint": fp, "seconds": round(time.perf_counter() - t, 2), "stats": asdict(stats)}
        save()
        how = options.export.mode if not stats.written_from_shards else (
            "written from the shards" if stats.written_from_shards == stats.files
            else f"{options.export.mode}; {stats.written_from_shards} written from the shards")
        log(f"export: {stats.files} files ({how}) in {stats.out}")
    prev = fp

    fp = _fingerprint(prev, "report", {})
    if done.get("report", {}).get("fingerprint") != fp or not (run_dir / REPORT).exists():
        t = time.perf_counter()
        report.write(ledger.to_arrow(frame).to_pandas(), run_dir / REPORT, title=f"gpupipe curate: {src}",
                     stages=_report_counts(run_dir, done))
        done["report"] = {"fingerprint": fp, "seconds": round(time.perf_counter() - t, 2)}
        save()
        log(f"report: {run_dir / REPORT}")
    return CurateResult("done", {**done, **out})


def _clear(run_dir: Path) -> None:
    """Forget everything an earlier run left in ``run_dir`` (decisions included)."""
    import shutil

    for name in (LEDGER, SUMMARY, "thumbs.npy", RANK_STATE, "decisions.parquet", STATE, REPORT):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("review", "models", EXPORT):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _brief(stage: str, stats) -> str:
    if stage == "balance":
        kept = sum(c["kept"] for c in stats.classes.values())
        surplus = sum(c["surplus"] for c in stats.classes.values())
        return f"{kept} kept ({stats.target} per class), {surplus} surplus, excluded {stats.excluded}"
    return f"test {stats.test}, train {stats.train} in {len(stats.folds)} folds {stats.folds}"


def _report_counts(run_dir: Path, done: dict) -> dict[str, dict]:
    summary = json.loads((run_dir / SUMMARY).read_text())
    c = summary["counts"]
    counts = {"ingest": {"images": summary["rows"], "layout": summary["layout"]},
              "dedup": {"invalid": c["invalid"], **{f"invalid: {k}": v for k, v in c["invalid_by_reason"].items()},
                        "duplicates": c["duplicates"], "duplicate groups": c["duplicate_groups"],
                        "label-conflict groups": c["label_conflict_groups"],
                        "split-leak groups": c["split_leak_groups"]}}
    recall = summary.get("recall") or {}
    if recall:
        counts[f"dedup recall, measured on {recall['sample']} of these images"] = {
            "all kinds": f"{recall['recall']:.3f}", "false matches": recall["false_matches"],
            **{k: f"{v['recall']:.2f} ({v['found']}/{v['copies']})" for k, v in recall["by_kind"].items()}}
    if "rank" in done:
        counts["rank / review"] = dict(done["rank"].get("stats", {}))
    if "balance" in done:
        b = done["balance"]["stats"]
        counts["balance"] = {"target per class": b["target"],
                             "kept": sum(v["kept"] for v in b["classes"].values()),
                             "surplus": sum(v["surplus"] for v in b["classes"].values()),
                             **{f"excluded: {k}": v for k, v in b["excluded"].items()}}
    if "split" in done:
        s = done["split"]["stats"]
        counts["split"] = {"test": s["test"], "train": s["train"], "folds": len(s["folds"]),
                           "validation rows per fold": ", ".join(map(str, s["folds"]))}
    return counts
