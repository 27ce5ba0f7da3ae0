"""The certify / rank / review loop over a run directory (steps 2 and 3 of the
method): the rank stage of `gpupipe.runner`.

    RUN_DIR/ledger.parquet     the per-sample table
    RUN_DIR/rank.json          rounds so far, classes (order of rank_probs), pending review
    RUN_DIR/decisions.parquet  every decision ever applied (append-only history)
    RUN_DIR/review/round-NNN.csv / .png   the queue a person reviews, and its thumbnail sheet
    RUN_DIR/review/audit.csv / .png       --review auto: its relabels, rows left open, removes: doubtful first
    RUN_DIR/models/round-NNN.pt           the round's auxiliary model (state_dict)

The first three change together: each round (and each applied review) is one
`RunDir.commit` of all three, so a run killed at any point resumes at the
last committed round, with no decision counted twice.

A round: train on the certified rows (or out-of-fold), score the rest, queue
the L worst and K best, decide (person, oracle or automatic policy), apply.
With a person, `run_rank` stops after writing the queue and `run_review`
applies the person's CSV; the next `run_rank` continues from the ledger.  The
loop ends when every eligible row is decided, or a round or review budget is
spent, or an automatic round decides nothing.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gpupipe import schema
from gpupipe.device import DeviceRequest, resolve_device
from gpupipe.models.backbone import BackboneSpec
from gpupipe.models.train import TrainConfig
from gpupipe.rundir import DECISIONS, DECODED, GROUP_DECISIONS, LEDGER, RANK_STATE, PendingReview, RunDir
from gpupipe.scale.executor import make_executor
from gpupipe.stages import rank as rank_stage
from gpupipe.stages import review as rv
from gpupipe.stages.dedup import GROUP_LOG_SCHEMA, apply_group_decisions
from gpupipe.table import Ledger, write_parquet_atomic, write_text_atomic

REVIEW_DIR = "review"
AUDIT = "audit"                  # RUN_DIR/review/audit.csv (`stages.review.audit_queue`)
MODELS_DIR = "models"
ReviewMode = Literal["person", "auto", "oracle"]
NOTHING_DECIDED = "a round decided nothing"


@dataclass(frozen=True)
class RankOptions:
    """Options of `run_rank` (see ``gpupipe rank --help`` for each)."""

    device: DeviceRequest = "auto"
    mode: rank_stage.RankMode = "certified"
    folds: int = 5
    review: ReviewMode = "person"
    oracle: str | None = None
    trust_seed: bool = False
    seed_size: int = 200
    seed_val: int = 20
    seed_dir: str | None = None
    worst: int = 100
    best: int = 500
    max_rounds: int = 10         # in total, over every call on the run directory
    review_budget: int | None = None
    policy: rv.AutoPolicy = field(default_factory=rv.AutoPolicy)
    train: TrainConfig = field(default_factory=TrainConfig)
    channels: int | None = None
    score_batch: int | None = None
    seed: int = 0
    workers: int | None = None       # a local Dask cluster of N processes runs the folds / scoring jobs
    scheduler: str | None = None     # or an existing Dask cluster
    torch_threads: int | None = None
    tta: int = 0                     # test-time augmentations averaged into each score (stages.rank.tta_set)
    backbone: BackboneSpec | None = None  # a user's feature extractor (models.backbone): linear heads, no CNN
    decode_cache: bool = True        # decode each image once per run, into RUN_DIR/decoded (gpupipe.dali.decoded)
    models: int | str = "auto"       # models per fold / seed set, probabilities averaged (stages.rank.resolve_models)
    with_cnn: bool = False           # with a backbone: the CNN(s) too, averaged with its heads (stages.rank.RankConfig)


@dataclass
class LoopResult:
    stopped: str                 # why the loop stopped
    rounds: list[dict]           # this call's rounds (also appended to rank.json)
    counts: dict[str, int]       # eligible / certified / relabeled / removed / open
    queue: str | None = None     # the CSV awaiting a person, if any
    audit: str | None = None     # --review auto: the CSV of its decisions to check (`stages.review.audit_queue`)


def _state(run_dir: Path) -> dict:
    return RunDir(run_dir).read_json(RANK_STATE, {"rounds": [], "pending": None, "reviewed": 0})


def _load(run_dir: Path, ledger: Ledger, *, review_columns: bool = True):
    path = run_dir / LEDGER
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `gpupipe dedup SRC --out {run_dir}` first")
    frame = ledger.read(path)
    missing = [n for n in schema.names("ingest", "hash", "dedup") if n not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}: was it written by gpupipe dedup?")
    return rv.ensure_columns(frame, ledger) if review_columns else frame


def _save(run_dir: Path, ledger: Ledger, frame, state: dict | None, log: pa.Table | None,
          group_log: pa.Table | None = None) -> None:
    """Commit the round: the ledger, rank.json and the decisions log (with this
    round's rows appended; and the group decisions' log with ``group_log``'s)
    as one (`RunDir.commit`; the caller holds the lock)."""
    run = RunDir(run_dir)
    files: dict = {LEDGER: lambda p: ledger.write_ledger(frame, p)}
    if state is not None:
        files[RANK_STATE] = state
    for name, new, empty in ((DECISIONS, log, rv.LOG_SCHEMA), (GROUP_DECISIONS, group_log, GROUP_LOG_SCHEMA)):
        if new is not None and new.num_rows:
            p = run / name
            old = pq.read_table(p) if p.exists() else empty.empty_table()
            files[name] = lambda path, t=pa.concat_tables([old, new.cast(empty)]): write_parquet_atomic(t, path)
    run.commit(files)


def counts(frame, ledger: Ledger) -> dict[str, int]:
    rows = rank_stage.rows_of(frame, ledger)
    status, _ = ledger.host(frame, schema.REVIEW_STATUS)
    return {
        "rows": len(rows.y), "eligible": int(rows.eligible.sum()),
        "certified": int((status == schema.STATUS_CERTIFIED).sum()),
        "relabeled": int((status == schema.STATUS_RELABELED).sum()),
        "removed": int((status == schema.STATUS_REMOVED).sum()),
        "open": int((rows.eligible & ~rows.certified).sum()),
    }


def _write_queue(run_dir: Path, q, round_no: int | str) -> Path:
    """``round_no``: a round's queue, or `AUDIT`."""
    from gpupipe.sheets import queue_sheet

    csv = run_dir / REVIEW_DIR / (f"round-{round_no:03d}.csv" if isinstance(round_no, int) else f"{round_no}.csv")
    buf = io.StringIO()
    q.to_csv(buf, index=False)
    write_text_atomic(buf.getvalue(), csv)
    queue_sheet(q, csv.with_suffix(".png"))
    return csv


def _seed_dir_decisions(seed_dir: str, frame, ledger: Ledger) -> rv.Decisions:
    """Rows whose file bytes equal an image of ``seed_dir`` (an ImageFolder of
    known-good images): confirmed, or relabeled to the seed image's folder."""
    import xxhash

    from gpupipe.stages.ingest import ingest

    from gpupipe.io.sources import read_many

    seeds = ingest(seed_dir).table
    known = {}
    data = read_many(seeds.column(schema.PATH).to_pylist(), seeds.column(schema.LOCATOR).to_pylist())
    for d, lab in zip(data, seeds.column(schema.LABEL).to_pylist()):
        if isinstance(d, OSError):
            raise OSError(f"--seed-dir {seed_dir}: {d}") from d
        known[xxhash.xxh3_128_hexdigest(d)] = lab
    bh, has = ledger.host(frame, schema.BYTES_HASH)
    rows = rank_stage.rows_of(frame, ledger)
    pos = np.flatnonzero(has & rows.eligible & np.isin(bh, list(known)))
    true = np.array([known[h] for h in bh[pos]], dtype=object)
    action = np.where(true == rows.label[pos], "confirm", "relabel").astype(object)
    return rv.Decisions(pos, action, np.where(action == "relabel", true, None), schema.SOURCE_SEED_DIR, 0)


def run_rank(run_dir: str | os.PathLike, options: RankOptions = RankOptions(), *,
             log: Callable[[str], None] = lambda s: None, progress: Callable | None = None) -> LoopResult:
    """Run rounds until the loop stops or a person must review (see module doc),
    holding RUN_DIR's lock (`gpupipe.lock`)."""
    with RunDir.open(run_dir, create=False, log=log):
        return _run_rank(run_dir, options, log, progress)


def _run_rank(run_dir, options: RankOptions, log: Callable[[str], None], progress: Callable | None) -> LoopResult:
    run_dir = Path(run_dir)
    if options.review == "oracle" and not options.oracle:
        raise ValueError("--review oracle needs --oracle LABELS.csv")
    device = resolve_device(options.device)
    ledger = Ledger(device)
    frame = _load(run_dir, ledger)
    state = _state(run_dir)
    if state["pending"] is not None:
        raise PendingReview(f"round {state['pending']}'s queue ({state.get('queue')}) awaits decisions: "
                            f"run `gpupipe review {run_dir} DECISIONS.csv` first")
    truth = rv.load_oracle(options.oracle) if options.oracle else None
    cfg = rank_stage.RankConfig(mode=options.mode, folds=options.folds, train=options.train,
                                channels=options.channels, score_batch=options.score_batch,
                                torch_threads=options.torch_threads, tta=options.tta, backbone=options.backbone,
                                decode_cache=str(run_dir / DECODED) if options.decode_cache else None,
                                models=options.models, with_cnn=options.with_cnn)
    with make_executor(workers=options.workers, scheduler=options.scheduler, gpu=device.is_gpu) as executor:
        return _rounds(run_dir, options, cfg, device, ledger, frame, state, truth, executor, log, progress)


def _rounds(run_dir: Path, options: RankOptions, cfg, device, ledger: Ledger, frame, state: dict, truth,
            executor, log: Callable[[str], None], progress: Callable | None) -> LoopResult:
    rounds: list[dict] = []

    def budget_left() -> int | None:
        return None if options.review_budget is None else options.review_budget - state["reviewed"]

    # Round 0: the certified seed set.
    rows = rank_stage.rows_of(frame, ledger)
    if options.mode == "certified" and not rows.certified.any():
        if options.seed_dir:
            d = _seed_dir_decisions(options.seed_dir, frame, ledger)
            if len(d) == 0:
                raise ValueError(f"no image of --seed-dir {options.seed_dir} matches a kept image of the ledger")
        else:
            pos, hold = rv.seed_set(rows, size=options.seed_size, val=options.seed_val, seed=options.seed)
            if options.review == "person" and not options.trust_seed:
                csv = _write_queue(run_dir, rv.seed_queue(frame, ledger, pos), 0)
                ids, _ = ledger.host(frame, schema.SAMPLE_ID)
                state.update(pending=0, queue=str(csv), seed_holdout=ids[pos[hold]].tolist())
                _save(run_dir, ledger, frame, state, None)
                log(f"round 0: certify the {len(pos)} seed samples in {csv}, then run `gpupipe review "
                    f"{run_dir} FILE`; or in the browser: `gpupipe review {run_dir} --serve`")
                return LoopResult("awaiting review", rounds, counts(frame, ledger), str(csv))
            if options.review == "oracle" and not options.trust_seed:
                d = rv.oracle_decisions(rv.seed_queue(frame, ledger, pos), truth, frame, round_no=0)
                state["reviewed"] += len(pos)
            else:
                n = len(pos)
                d = rv.Decisions(pos, np.full(n, "confirm", object), np.full(n, None, object), schema.SOURCE_SEED, 0)
            d.holdout = hold
        frame, entries = rv.apply(frame, ledger, d)
        state["seed"] = {"size": len(d), "source": d.source, **_tally(d)}
        _save(run_dir, ledger, frame, state, entries)
        log(f"round 0: seed set of {len(d)} ({d.source}) {_tally(d)}")

    def stop_reason() -> str | None:
        """Why the loop must stop now (None: run another round); saved with each round."""
        if state.get("stopped") == NOTHING_DECIDED and options.review == "auto":
            return NOTHING_DECIDED       # the same policy on the same ledger would decide nothing again
        if counts(frame, ledger)["open"] == 0:
            return "all eligible rows decided"
        if len(state["rounds"]) >= options.max_rounds:
            return "max rounds"
        left = budget_left()
        if left is not None and left <= 0:
            return "review budget spent"
        return None

    held = None                  # the last automatic round's held relabels (`AutoPolicy.colour_relabels`)
    while (stopped := stop_reason()) is None:
        left = budget_left()
        r = len(state["rounds"]) + 1
        frame, stats, model = rank_stage.rank(frame, ledger, device, cfg, round_no=r, seed=options.seed + 1000 * r,
                                              executor=executor, progress=progress)
        if model is not None:
            _save_model(run_dir / MODELS_DIR / f"round-{r:03d}.pt", model)
        entry = {"round": r, "mode": stats.mode, "classes": stats.classes, "channels": stats.channels,
                 "scored": stats.scored, "trained_on": stats.trained_on, "validated_on": stats.validated_on,
                 "model": stats.model, "schedule": stats.schedule, "models": stats.models,
                 "val_accuracy": stats.val_accuracy, "epochs": stats.epochs,
                 "seconds_decode": round(stats.seconds_decode, 3),
                 "seconds_train": round(stats.seconds_train, 3), "seconds_score": round(stats.seconds_score, 3),
                 "score_images_per_second": round(stats.score_images_per_second, 1),
                 # rows flagged likely mislabeled after this round's scores (`models.score.flag_label_issues`),
                 # before its decisions: the tool's estimate of how many labels are wrong
                 "flagged": int(ledger.host(frame, schema.RANK_FLAG)[0].sum())}
        state["classes"] = stats.classes
        if options.review == "person":
            q = rv.queue(frame, ledger, worst=options.worst, best=options.best, policy=options.policy)
            if left is not None:
                q = q.iloc[:left]
            csv = _write_queue(run_dir, q, r)
            entry["queued"] = len(q)
            state["rounds"].append(entry)
            state.update(pending=r, queue=str(csv), stopped=None)
            rounds.append(entry)
            _save(run_dir, ledger, frame, state, None)
            log(f"round {r}: scored {stats.scored}, {entry['flagged']} flagged as likely mislabeled; review {len(q)} "
                f"samples in {csv}, then run `gpupipe review "
                f"{run_dir} FILE`; or in the browser: `gpupipe review {run_dir} --serve`")
            return LoopResult("awaiting review", rounds, counts(frame, ledger), str(csv))
        if options.review == "oracle":
            q = rv.queue(frame, ledger, worst=options.worst, best=options.best, policy=options.policy)
            if left is not None:
                q = q.iloc[:left]
            d = rv.oracle_decisions(q, truth, frame, round_no=r)
            state["reviewed"] += len(q)
        else:
            d = rv.auto_decisions(frame, ledger, options.policy, round_no=r)
            held = d.held
        frame, entries = rv.apply(frame, ledger, d)
        entry.update(decided=len(d), source=d.source, **_tally(d))
        if d.summary is not None:
            entry["policy"] = d.summary
        state["rounds"].append(entry)
        rounds.append(entry)
        state["stopped"] = NOTHING_DECIDED if len(d) == 0 else None
        if state["stopped"] is None:
            state["stopped"] = stop_reason()
        _save(run_dir, ledger, frame, state, entries)        # the round and its stop reason together
        log(f"round {r}: scored {stats.scored} ({stats.score_images_per_second:.0f} img/s), "
            f"val acc {stats.val_accuracy if stats.val_accuracy is None else round(stats.val_accuracy, 3)}, "
            f"{entry['flagged']} flagged as likely mislabeled; {d.source} decided {len(d)} {_tally(d)}{_declined(d)}")
    if state.get("stopped") != stopped:
        state["stopped"] = stopped
        RunDir(run_dir).commit({RANK_STATE: state})
    audit = None
    if options.review == "auto":
        q = rv.audit_queue(frame, ledger, state.get("classes") or [], held=held)
        audit = str(_write_queue(run_dir, q, AUDIT))
        n_held = int((q["auto_action"] == "held").sum())
        first = f"the {n_held} relabels held for you, then " if n_held else ""
        log(f"for a person to check, the most doubtful first: {audit} ({len(q)} rows: {first}the automatic relabels "
            f"in turn with rows left open, then the removes; apply with `gpupipe review {run_dir} FILE`)")
    return LoopResult(stopped, rounds, counts(frame, ledger), audit=audit)


def _declined(d: rv.Decisions) -> str:
    """The automatic policy's declined decisions, for the round's log line."""
    g = d.summary or {}
    held = f"; held {g['held']['relabel']} relabels for a person ({g['held_because']})" if "held" in g else ""
    if "declined" not in g:
        return held
    wrong = f", expected wrong {g['expected_wrong']}" if "expected_wrong" in g else ""
    if not any(g["declined"].values()):
        return f"; declined none{wrong}{held}"
    return f"; declined {g['declined']} ({g['declined_because']}){wrong}{held}"


def _tally(d: rv.Decisions) -> dict[str, int]:
    return {a: int((d.action == a).sum()) for a in rv.ACTIONS}


def _save_model(path: Path, model: torch.nn.Module) -> None:
    from gpupipe.table import atomic_file

    with atomic_file(path, "wb") as fh:
        torch.save(model.state_dict(), fh)


def run_review(run_dir: str | os.PathLike, decisions_csv: str | os.PathLike | None, *,
               groups: pa.Table | None = None, device: DeviceRequest = "auto") -> dict:
    """Apply a person's decisions to the pending round -> the applied tally and counts
    (holding RUN_DIR's lock).  ``groups``: corrections of the duplicate groups
    (`GROUP_LOG_SCHEMA` rows, in the order made), applied first, in the same
    commit.  ``decisions_csv`` None: only the group corrections (a pending
    queue stays pending)."""
    with RunDir.open(run_dir, create=False):
        return _run_review(run_dir, decisions_csv, groups, device)


def _run_review(run_dir, decisions_csv, groups: pa.Table | None, device: DeviceRequest) -> dict:
    run_dir = Path(run_dir)
    ledger = Ledger(resolve_device(device))
    frame = _load(run_dir, ledger, review_columns=decisions_csv is not None)
    state = _state(run_dir)
    out: dict = {}
    if groups is not None and groups.num_rows:
        frame, g = apply_group_decisions(frame, ledger, groups)
        out["groups_applied"] = g["applied"]
    round_no = state["pending"] if state["pending"] is not None else len(state["rounds"])
    if decisions_csv is None:
        if out:
            _save(run_dir, ledger, frame, state if (run_dir / RANK_STATE).exists() else None, None, groups)
        return {**out, "applied": 0, **counts(rv.ensure_columns(frame, ledger), ledger)}
    d = rv.read_decisions_csv(decisions_csv, frame, ledger, round_no=round_no)
    if state["pending"] == 0 and state.get("seed_holdout"):   # keep the seed set's stratified holdout
        ids, _ = ledger.host(frame, schema.SAMPLE_ID)
        d.holdout = np.isin(ids[d.positions], np.asarray(state["seed_holdout"], np.int64))
    frame, entries = rv.apply(frame, ledger, d)
    state["reviewed"] += len(d)
    state.update(pending=None, queue=None, stopped=None)
    _save(run_dir, ledger, frame, state, entries, groups)
    return {"round": round_no, **out, "applied": len(d), **_tally(d), **counts(frame, ledger)}


def write_augment_grid(run_dir: str | os.PathLike, out: str | os.PathLike, *, augment, image_size: int = 32,
                       channels: int | None = None, samples: int = 8, variants: int = 8, seed: int = 0,
                       device: DeviceRequest = "auto") -> Path:
    """A PNG: one row per sample (random eligible rows of the run), the model's
    input first, then ``variants`` augmentations of it, as the model trains on them
    (``augment="auto"``: the set a certified seed set of these images gets)."""
    from gpupipe.dali.augment import AugmentConfig, file_pipeline, show
    from gpupipe.sheets import image_grid

    dev = resolve_device(device)
    ledger = Ledger(dev)
    frame = _load(Path(run_dir), ledger)
    rows = rank_stage.rows_of(frame, ledger)
    elig = np.flatnonzero(rows.eligible)
    if len(elig) == 0:
        raise ValueError(f"{run_dir}: no eligible (valid, kept, labelled) images to show")
    pick = np.sort(np.random.default_rng(seed).choice(elig, min(samples, len(elig)), replace=False))
    ch = channels or rank_stage.probe_channels(dev, list(rows.paths[elig]))
    if augment == "auto":                        # what a certified seed set trains on
        augment = AugmentConfig.auto(channels=ch, mode="certified")
    x, _ = next(iter(file_pipeline(dev, list(rows.paths[pick]), pick, size=image_size, channels=ch,
                                   batch_size=len(pick))))
    base = np.rint(x.float().cpu().numpy().transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    cols = [base] + [show(dev, base, augment, seed=seed + v).images for v in range(1, variants + 1)]
    return image_grid([[c[i] for c in cols] for i in range(len(pick))], out, scale=max(1, 64 // image_size))


def run_pretrain(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, config=None,
                 channels: int | None = None, seed: int = 0, device: DeviceRequest = "auto",
                 log: Callable[[str], None] = lambda m: None) -> tuple[Path, "object"]:
    """Self-supervised pretraining (`gpupipe.models.pretrain.simclr`) on the images
    `rank` would score (valid, kept, labelled, not removed; what the labels say is not
    used); the backbone's weights written atomically to ``out`` (default
    RUN_DIR/backbone-ssl.pt).
    -> (the weights' path, `~gpupipe.models.pretrain.PretrainResult`)."""
    from gpupipe.models import pretrain

    config = config or pretrain.PretrainConfig()
    dev = resolve_device(device)
    ledger = Ledger(dev)
    run = Path(run_dir)
    frame = _load(run, ledger)
    rows = rank_stage.rows_of(frame, ledger)
    elig = np.flatnonzero(rows.eligible)
    if len(elig) == 0:
        raise ValueError(f"{run_dir}: no eligible (valid, kept, labelled) images to pretrain on")
    ch = channels or rank_stage.probe_channels(dev, list(rows.paths[elig]))
    log(f"pretrain: SimCLR on {len(elig)} images ({'colour' if ch == 3 else 'gray'}), {config.epochs} epochs, "
        f"{config.batch_size} views a step, on {dev.kind}")
    res = pretrain.simclr(dev, list(rows.paths[elig]), channels=ch, config=config, seed=seed,
                          progress=lambda e, n, loss: log(f"pretrain: epoch {e}/{n}, loss {loss:.3f}"))
    path = pretrain.save(res.backbone, out or run / "backbone-ssl.pt", images=len(elig), epochs=config.epochs)
    return path, res
