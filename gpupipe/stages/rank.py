"""The rank stage: train an auxiliary model, score rows, write the ``rank_*`` columns.

Reads: ingest, hash, dedup and review columns.  Adds: `schema.RANK`.

Eligible rows are valid, kept by dedup (duplicates are not scored twice),
labelled, and not removed by review; their *current* label is the reviewed one
when there is one.  Two modes:

* ``certified`` (the method): train on the certified rows (those with
  ``review_holdout`` validate), score every eligible row not yet certified.
* ``oof``: out-of-fold over all eligible rows, for datasets without a
  trustworthy seed set: K stratified folds, each scored by a model trained on
  the other K-1 (a tenth of those held out for early stopping).  Each row
  also gets ``rank_train_margin``: its area under the margin while the
  models of the other folds trained on it (`gpupipe.models.train.train`),
  which the flags' and the review's order read beside the held-out scores.

The scores of a row are those of the latest round that scored it; the class
order of ``rank_probs`` is returned in `RankStats.classes` (and kept in
``rank.json`` by the caller).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from gpupipe import schema
from gpupipe.dali import decoded
from gpupipe.dali.augment import AugmentConfig, file_pipeline
from gpupipe.dali.strokes import StrokeSpec
from gpupipe.device import Device
from gpupipe.models import nets, outlier
from gpupipe.models.backbone import BackboneSpec, self_supervised
from gpupipe.models.score import Scores, flag_label_issues, per_sample, score
from gpupipe.models.train import TrainConfig, train
from gpupipe.table import Ledger

RankMode = Literal["certified", "oof"]


@dataclass(frozen=True)
class RankConfig:
    mode: RankMode = "certified"
    folds: int = 5
    train: TrainConfig = field(default_factory=TrainConfig)
    channels: int | None = None      # None: 1 when the images are grayscale, else 3
    score_batch: int | None = None   # None: 1024 on CPU, 4096 on GPU
    score_partition: int = 65536     # rows scored per job (certified mode): the unit spread over workers
    torch_threads: int | None = None  # CPU threads per job (None: torch's default in-process, cores/workers on Dask)
    tta: int = 0                     # test-time augmentations averaged with the plain pass (seeded; 0: off)
    backbone: BackboneSpec | None = None  # a user's feature extractor: linear heads on its features, no CNN trained
    decode_cache: str | None = None  # a directory: every image decoded once per run there (`gpupipe.dali.decoded`)
    models: int | str = "auto"       # models per fold (per seed set), each from its own seed (`resolve_models`)
    with_cnn: bool = False           # with ``backbone``, out-of-fold: the CNN(s) too, averaged with its heads per fold


#: Seed offset between the models of one fold (`RankConfig.models`): apart from
#: the folds' (+1 each) and the loop's rounds' (+1000 each).
MODEL_SEED_STEP = 100_003


@dataclass
class RankStats:
    mode: str
    classes: list[str]
    channels: int
    scored: int
    trained_on: int
    validated_on: int
    val_accuracy: float | None       # against the given labels: the validation rows' (out-of-fold, one
    #                                  cycle: the held-out folds'); None when nothing was validated
    epochs: list[int]
    seconds_train: float
    seconds_score: float
    model: str = ""                  # what trained: the model's name and schedule ("auto" resolved), or the backbone
    schedule: str = ""
    seconds_decode: float = 0.0      # decoding the images once (`RankConfig.decode_cache`; 0 when reused or off)
    models: int = 1                  # models whose probabilities each row's scores average (`RankConfig.models`)

    @property
    def score_images_per_second(self) -> float:
        return self.scored / self.seconds_score if self.seconds_score > 0 else float("inf")


class NothingCertified(RuntimeError):
    """``certified`` mode was asked for but no row is certified yet."""


@dataclass
class Rows:
    """The frame's rows as the rank stage sees them (host arrays, length N)."""

    paths: np.ndarray        # object (N,): the file path, or (path, locator) for a sample inside a shard
    label: np.ndarray        # object (N,) current label (reviewed if reviewed), None if none
    eligible: np.ndarray     # bool (N,)
    certified: np.ndarray    # bool (N,) certified or relabeled
    holdout: np.ndarray      # bool (N,)
    classes: list[str]
    y: np.ndarray            # int64 (N,) index of the current label in classes, -1 if ineligible


def rows_of(frame, ledger: Ledger) -> Rows:
    """Eligibility, current labels and class indices of every row."""
    paths = sample_refs(frame, ledger)
    given, has_label = ledger.host(frame, schema.LABEL)
    invalid, _ = ledger.host(frame, schema.IS_INVALID)
    keep, _ = ledger.host(frame, schema.DEDUP_KEEP)
    status, _ = ledger.host(frame, schema.REVIEW_STATUS)
    reviewed, has_review = ledger.host(frame, schema.REVIEW_LABEL)
    holdout, has_holdout = ledger.host(frame, schema.REVIEW_HOLDOUT)
    label = np.where(has_review, reviewed, given)
    eligible = ~invalid.astype(bool) & keep.astype(bool) & (has_label | has_review) \
        & (status != schema.STATUS_REMOVED)
    certified = eligible & np.isin(status, [schema.STATUS_CERTIFIED, schema.STATUS_RELABELED])
    names = label[eligible].astype(str)
    classes = sorted(set(names))
    y = np.full(len(label), -1, np.int64)
    y[eligible] = np.searchsorted(np.asarray(classes, dtype=str), names)
    return Rows(paths, label, eligible, certified, holdout.astype(bool) & has_holdout & certified, classes, y)


def sample_refs(frame, ledger: Ledger) -> np.ndarray:
    """Object (N,): each row's path, or (path, locator) where the row sits inside
    a shard or Parquet file: what `file_pipeline` and `read_many` take."""
    paths, _ = ledger.host(frame, schema.PATH)
    if schema.LOCATOR not in frame.columns:
        return paths
    locs, has = ledger.host(frame, schema.LOCATOR)
    out = paths.copy()
    for i in np.flatnonzero(has):
        out[i] = (paths[i], locs[i])
    return out


def default_score_batch(device: Device) -> int:
    """Images per scoring batch when none is asked for."""
    return 4096 if device.is_gpu else 1024


def probe_channels(device: Device, paths: list[str]) -> int:
    """1 when up to 64 of ``paths`` all decode with equal R, G and B; else 3."""
    sample = paths[:64]
    if not sample:
        return 1
    for x, _ in file_pipeline(device, sample, np.arange(len(sample)), size=32, channels=3, batch_size=len(sample)):
        if not (bool((x[:, 0] == x[:, 1]).all()) and bool((x[:, 1] == x[:, 2]).all())):
            return 3
        break
    return 1


@dataclass
class Job:
    """One unit of rank work, run where the executor puts it (this process or a
    Dask worker): train a model (when ``train_refs`` is given, else load
    ``state``) and score ``score_refs``.  Holds only picklable data; the device
    is resolved where the job runs (a dask-cuda worker sees its own GPU)."""

    device: str                        # "cpu" | "gpu"
    config: TrainConfig
    num_classes: int
    channels: int
    seed: int
    y: np.ndarray                      # int64 (N,) class of every row (labels for training and scoring)
    score_rows: np.ndarray             # positions to score
    score_refs: list                   # file refs, or `gpupipe.dali.decoded.DecodedRefs` (as every *_refs)
    score_batch: int | None
    train_rows: np.ndarray | None = None
    train_refs: list | None = None
    val_rows: np.ndarray | None = None
    val_refs: list | None = None
    state: dict | None = None          # a trained model's state_dict (scoring-only jobs)
    torch_threads: int | None = None
    ref_rows: np.ndarray | None = None  # the outlier score's reference: rows the model trained on (capped)
    ref_refs: list | None = None
    tta: int = 0


@dataclass
class JobResult:
    scores: Scores
    epochs: int = 0
    val_accuracy: list[float] = field(default_factory=list)
    seconds_train: float = 0.0
    seconds_score: float = 0.0
    train_margins: np.ndarray | None = None   # float32, aligned with ``job.train_rows`` (`TrainResult.margins`)


def run_job(job: Job) -> JobResult:
    """Train (if asked) and score one job; the same function in-process and on workers."""
    import torch

    from gpupipe.device import resolve_device

    device = resolve_device(job.device)
    threads = torch.get_num_threads()
    if job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    try:
        out = JobResult(scores=None)  # type: ignore[arg-type]
        if job.train_refs is not None:
            t = time.perf_counter()
            res = train(device, job.train_refs, job.y[job.train_rows], job.val_refs, job.y[job.val_rows],
                        num_classes=job.num_classes, channels=job.channels, config=job.config, seed=job.seed)
            model = res.model
            out.epochs = res.epochs
            out.val_accuracy = res.val_accuracy[res.best_epoch - 1:res.best_epoch]
            out.seconds_train = time.perf_counter() - t
            out.train_margins = res.margins
        else:
            spec = nets.resolve_model(job.config.model, lr=job.config.lr, channels=job.channels,
                                      init=job.config.init)
            model = nets.build(spec, job.num_classes, job.channels, seed=0)
            model.load_state_dict(job.state)
        t = time.perf_counter()
        batch = job.score_batch or default_score_batch(device)
        epochs = file_pipeline(device, job.score_refs, job.score_rows, size=job.config.image_size,
                               channels=job.channels, batch_size=batch)
        out.scores = score(model, epochs, job.y, torch_device=device.torch_device, embed=job.ref_refs is not None)
        if job.ref_refs is not None and out.scores.embedding is not None:
            ref = score(model, file_pipeline(device, job.ref_refs, job.ref_rows, size=job.config.image_size,
                                             channels=job.channels, batch_size=batch),
                        job.y, torch_device=device.torch_device, embed=True)
            out.scores.outlier = outlier.knn_distances(out.scores.embedding, ref.embedding, job.y[ref.rows],
                                                       device=device.torch_device)   # scaled by rank()
            out.scores.votes = outlier.knn_vote(out.scores.embedding, ref.embedding, job.y[ref.rows],
                                                job.num_classes, device=device.torch_device)
        if job.tta:
            out.scores = _with_tta(model, job, device, batch, out.scores)
        out.scores.embedding = None        # (N, D): not worth shipping back from a worker
        out.seconds_score = time.perf_counter() - t
        return out
    finally:
        torch.set_num_threads(threads)


#: Test-time augmentations: small moves of the training set's kinds, no strokes
#: (a spot can hide what tells two classes apart).
TTA = AugmentConfig(rotation=0.02, contrast=0.1, translation=0.05,
                    strokes=StrokeSpec(black_spots=0, white_spots=0, dashed_lines=0))


#: Photos' test-time augmentations: a horizontal flip and a crop of 90-100% of the area.
TTA_PHOTO = AugmentConfig(rotation=0.0, contrast=0.0, translation=0.0,
                          strokes=StrokeSpec(black_spots=0, white_spots=0, dashed_lines=0),
                          crop_area=0.9, flip=True)


def tta_set(augment) -> AugmentConfig:
    """The test-time augmentations for a model trained with ``augment``: the
    photo kinds (`TTA_PHOTO`) for one trained with flips, else `TTA` (a photo
    model never saw rotations); `_with_tta` makes the first view of a model
    trained with flips the exact mirror.  Not on by default: on CIFAR-10N, 4
    of them raised out-of-fold accuracy 0.620 -> 0.635 and flag F1 0.426 ->
    0.443 on the choose part, 0.603 -> 0.608 and 0.403 -> 0.392 on the judge
    part, for 11 s more per round (RESULTS.md §31.2); with today's photo
    default the mirror alone (``--tta 1``) read 0.728 -> 0.736 and F1 0.505
    -> 0.500 on the choose part (§33)."""
    return TTA_PHOTO if isinstance(augment, AugmentConfig) and augment.flip else TTA


def _with_tta(model, job: Job, device, batch: int, plain: Scores) -> Scores:
    """``plain``'s scores with the probabilities averaged over it and
    ``job.tta`` seeded augmentations of each image (`tta_set`, seeds job.seed+1..);
    loss, prediction, probability of the label and margin recomputed from the
    average.  The embedding, outlier score and neighbours' votes stay the plain pass's."""
    order = np.argsort(plain.rows, kind="stable")
    total = plain.probs.astype(np.float64)
    mirror = isinstance(job.config.augment, AugmentConfig) and job.config.augment.flip
    for t in range(1, job.tta + 1):
        exact_mirror = mirror and t == 1
        views = file_pipeline(device, job.score_refs, job.score_rows, size=job.config.image_size,
                              channels=job.channels, batch_size=batch, seed=job.seed + t,
                              augment=None if exact_mirror else tta_set(job.config.augment))
        if exact_mirror:
            # A model trained with flips: the first extra view is the exact mirror.  Flipped
            # here, on the decoded batch: the DALI graph's flip is a per-sample coin.
            views = ((x.flip(-1), r) for x, r in views)
        s = score(model, views, job.y, torch_device=device.torch_device)
        at = order[np.searchsorted(plain.rows[order], s.rows)]
        total[at] += s.probs
    return _from_probs(plain.rows, total / (job.tta + 1), job.y, plain.embedding, plain.outlier, plain.votes)


def _from_probs(rows: np.ndarray, probs: np.ndarray, y: np.ndarray, embedding=None, outlier=None, votes=None,
                model_probs=None) -> Scores:
    """`Scores` of ``rows`` from averaged probabilities ``probs (N, K)``: as
    logits (log p), through the one definition of loss, prediction,
    probability of the label and margin (`per_sample`)."""
    import torch

    logp = torch.from_numpy(np.log(np.clip(np.asarray(probs, np.float64), 1e-12, None)))
    out = {k: v.numpy() for k, v in per_sample(logp, torch.from_numpy(y[rows])).items()}
    return Scores(rows, out["loss"].astype(np.float32), out["pred"].astype(np.int64),
                  out["prob_given"].astype(np.float32), out["margin"].astype(np.float32),
                  out["probs"].astype(np.float32), embedding, outlier, votes, model_probs)


def _ensemble(parts: list[Scores], y: np.ndarray) -> Scores:
    """One `Scores` from M models' scores of the same rows (`RankConfig.models`;
    or, with ``with_cnn``, the CNNs' mean and the backbone's heads): the mean
    of their probabilities (and of their neighbours' votes), each one's own
    kept in ``model_probs``; the outlier score is the first's (its threshold
    was measured on one CNN's distances)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    order = np.argsort(first.rows, kind="stable")
    aligned = []
    for p in parts:
        o = np.argsort(p.rows, kind="stable")
        if not np.array_equal(p.rows[o], first.rows[order]):
            raise RuntimeError("the models of one fold scored different rows")
        at = np.empty_like(o)
        at[order] = o                      # p's position of each of first's rows
        aligned.append(at)
    stack = np.stack([p.probs[at].astype(np.float64) for p, at in zip(parts, aligned)], axis=1)   # (N, M, K)
    votes = None
    if all(p.votes is not None for p in parts):
        votes = np.mean([p.votes[at] for p, at in zip(parts, aligned)], axis=0).astype(np.float32)
    return _from_probs(first.rows, stack.mean(axis=1), y, first.embedding, first.outlier, votes,
                       stack.astype(np.float32))


def resolve_models(models: int | str, *, channels: int, mode: str) -> int:
    """``--models auto``: 2 for colour images out-of-fold, else 1: models per
    fold, each from its own seed, their probabilities averaged
    (`_ensemble`); the flags count as `score.wrong_label_count` says for
    them, and the automatic policy's gate asks each model too
    (`gpupipe.stages.review.AutoPolicy.min_precision`).  On CIFAR-10N two
    photo-cnns per fold were 1.5 points more accurate out-of-fold and
    flagged with F1 0.515 / 0.502 (choose / judge part) against one's
    0.489-0.505 / 0.447-0.461, for twice the training (15.7-17.5 min a
    10,000-image round on 2 cores instead of 7.3); their gated changes were
    0 of 19 and 4 of 13 clean rows, one model's 1-7 of 23-42
    (RESULTS.md §35).  Gray images keep one: two flagged as well on digits
    (F1 0.976 / 0.989 both ways) and better on Fashion-MNIST (0.745 ->
    0.766, 0.750 -> 0.786), but the gate asking each model let the
    automatic policy fix fewer flips there (Fashion-MNIST 240 -> 143,
    digits with class-pair flips 98 -> 73, none wrong either way)."""
    if models == "auto":
        return 2 if channels == 3 and mode == "oof" else 1
    if isinstance(models, bool) or not isinstance(models, (int, np.integer)) or models < 1:
        raise ValueError(f"models must be a whole number >= 1 or 'auto', not {models!r}")
    return int(models)


def resolve_schedule(*, channels: int, mode: str) -> str:
    """``--schedule auto``: "onecycle" for colour images out-of-fold, else
    "plateau" (the method's early stopping).  On CIFAR-10N photos one cycle
    made the out-of-fold models 8 points more accurate in the same time
    (RESULTS.md §33).  On gray digits and Fashion-MNIST its flags were better
    too (+0.008, +0.054 F1), but it trains every epoch where early stopping
    ends soon (the demo's first round: 97 s against 43 s) and its smoothed
    probabilities let the automatic policy decide a third fewer rows per
    round (790 against 1,172): not the default there.  Certified seed sets:
    not measured."""
    return "onecycle" if mode == "oof" and channels == 3 else "plateau"


def _torch_threads(cfg: RankConfig, executor) -> int | None:
    if cfg.torch_threads or executor is None or executor.name == "in-process":
        return cfg.torch_threads
    from gpupipe.scale.executor import threads_per_worker

    return threads_per_worker(executor.n_workers)


def _stratified_folds(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold (0..k-1) of each element of ``y``: each class dealt round-robin in random order."""
    fold = np.empty(len(y), np.int64)
    offset = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return fold


def rank(frame, ledger: Ledger, device: Device, cfg: RankConfig, *, round_no: int, seed: int, executor=None,
         progress=None):
    """Train and score; returns (frame with the RANK columns, RankStats, trained model or None).

    ``executor`` (`gpupipe.scale.executor`; None: in this process) runs the
    jobs: one per fold in ``oof`` mode (each trains its model and scores its
    fold), one per ``score_partition`` rows in ``certified`` mode.  Jobs do not
    depend on the executor, so neither do the scores, given the same
    ``torch_threads``.  ``progress(step, done, total)`` is called as jobs finish."""
    from gpupipe.scale.executor import InProcess

    ex = executor or InProcess()

    def mapped(jobs: list, step: str) -> list:
        count = [0]

        def on_done(_r) -> None:
            count[0] += 1
            if progress is not None:
                progress(step, count[0], len(jobs))

        return ex.map(run_job, jobs, on_done=on_done)

    threads = _torch_threads(cfg, executor)
    rows = rows_of(frame, ledger)
    if not rows.classes:
        raise NothingCertified("no eligible rows: every row is invalid, a duplicate, unlabelled or removed")
    channels = cfg.channels or probe_channels(device, list(rows.paths[rows.eligible]))
    tcfg, k = cfg.train, len(rows.classes)
    if tcfg.augment == "auto":
        tcfg = replace(tcfg, augment=AugmentConfig.auto(channels=channels, mode=cfg.mode))
    if tcfg.schedule == "auto":
        tcfg = replace(tcfg, schedule=resolve_schedule(channels=channels, mode=cfg.mode))
    if tcfg.model == nets.AUTO:
        tcfg = replace(tcfg, model=nets.auto_model(channels, init=tcfg.init))
    heads_only = cfg.backbone is not None and not cfg.with_cnn
    if cfg.with_cnn and (cfg.backbone is None or cfg.mode != "oof"):
        raise ValueError("with_cnn needs a backbone and oof mode")
    if heads_only and cfg.models not in ("auto", 1):
        raise ValueError("--models applies to the models rank trains, not to --backbone's linear heads")
    models = 1 if heads_only else resolve_models(cfg.models, channels=channels, mode=cfg.mode)
    t_train = t_score = t_decode = 0.0
    images = None
    if cfg.decode_cache is not None and not heads_only:
        t = time.perf_counter()
        invalid, _ = ledger.host(frame, schema.IS_INVALID)
        images = decoded.decode_once(device, rows.paths, ~invalid.astype(bool), size=tcfg.image_size,
                                     channels=channels, directory=cfg.decode_cache)
        t_decode = time.perf_counter() - t

    strokes = isinstance(tcfg.augment, AugmentConfig) and tcfg.augment.strokes.any

    def refs(pos: np.ndarray, *, training: bool = False):
        """What the jobs' pipelines read for rows ``pos``: the decoded images, else the files.
        Training with pen strokes reads the files: fed from memory (as samples inside shards
        are), those models flagged worse on digits in 11 of 12 seeds (F1 0.963 -> 0.953) with
        equal pixels, draws and per-epoch statistics, cause not found; without strokes (5
        seeds) and on colour digits (5) no worse (benchmarks/studies/bench_decoded_seeds.py,
        RESULTS.md §34).  Scores do not depend on where their pixels come from."""
        if images is None or (training and strokes):
            return list(rows.paths[pos])
        return images.take(pos)
    parts: list[Scores] = []
    train_margin = None
    epochs: list[int] = []
    val_acc: list[float] = []
    trained = validated = 0
    model = None
    heads: list[Scores] = []
    if cfg.backbone is not None:
        heads, trained, t_train, t_score, oof = _backbone_scores(device, cfg, rows, channels, seed)
    if heads_only:
        parts = heads
    elif cfg.mode == "certified":
        tr = np.flatnonzero(rows.certified & ~rows.holdout)
        va = np.flatnonzero(rows.holdout)
        if len(tr) == 0:
            raise NothingCertified("no certified rows to train on: certify a seed set first")
        todo = np.flatnonzero(rows.eligible & ~rows.certified)
        ref = outlier.reference_rows(tr, seed)
        per_model: list[list[Scores]] = []
        for m in range(models):
            t = time.perf_counter()
            res = train(device, refs(tr, training=True), rows.y[tr], refs(va), rows.y[va],
                        num_classes=k, channels=channels, config=tcfg, seed=seed + MODEL_SEED_STEP * m)
            t_train += time.perf_counter() - t
            if model is None:                            # the round's saved model: the first
                model = res.model
            epochs.append(res.epochs)
            val_acc += res.val_accuracy[res.best_epoch - 1:res.best_epoch]
            t = time.perf_counter()
            state = {k: v.detach().cpu() for k, v in res.model.state_dict().items()}
            jobs = [Job(device.kind, tcfg, k, channels, seed, rows.y, todo[i:i + cfg.score_partition],
                        refs(todo[i:i + cfg.score_partition]), cfg.score_batch, state=state,
                        torch_threads=threads, ref_rows=ref, ref_refs=refs(ref), tta=cfg.tta)
                    for i in range(0, len(todo), cfg.score_partition)]
            per_model.append([r.scores for r in mapped(jobs, f"round {round_no}: score jobs")])
            t_score += time.perf_counter() - t
        trained, validated = len(tr), len(va)
        parts += [_ensemble(list(ps), rows.y) for ps in zip(*per_model)]
        oof = False
    elif cfg.mode == "oof":
        if cfg.folds < 2:
            raise ValueError("oof mode needs at least 2 folds")
        rng = np.random.default_rng(seed)
        elig = np.flatnonzero(rows.eligible)
        fold = _stratified_folds(rows.y[elig], cfg.folds, rng)
        jobs = []
        for f in range(cfg.folds):
            rest = elig[fold != f]
            if tcfg.schedule == "onecycle":   # no early stopping to feed: every other row trains
                tr, va = rest, rest[:0]
            else:
                is_val = _stratified_folds(rows.y[rest], 10, rng) == 0
                tr, va = rest[~is_val], rest[is_val]
            sc = elig[fold == f]
            ref = outlier.reference_rows(tr, seed + f)
            jobs += [Job(device.kind, tcfg, k, channels, seed + f + MODEL_SEED_STEP * m, rows.y, sc, refs(sc),
                         cfg.score_batch, train_rows=tr, train_refs=refs(tr, training=True), val_rows=va,
                         val_refs=refs(va), torch_threads=threads, ref_rows=ref,
                         ref_refs=refs(ref), tta=cfg.tta) for m in range(models)]
            trained, validated = trained + len(tr), validated + (len(va) or len(sc))
        results = mapped(jobs, f"round {round_no}: folds")             # one model of one fold per worker
        for res in results:
            t_train += res.seconds_train
            t_score += res.seconds_score
            epochs.append(res.epochs)
            val_acc += res.val_accuracy
        parts += [_ensemble([r.scores for r in results[i:i + models]], rows.y)
                  for i in range(0, len(results), models)]
        train_margin = _mean_margins(len(rows.y), jobs, results)
        if not val_acc:                   # one cycle: the held-out folds against their given labels
            val_acc = [float(np.mean([(p.pred == rows.y[p.rows]).mean() for p in parts]))]
        oof = True
        if heads:                         # --with-cnn: the same folds (the same draw), two opinions per fold
            parts = [_ensemble([c, h], rows.y) for c, h in zip(parts, heads)]
    else:
        raise ValueError(f"mode must be 'certified' or 'oof', not {cfg.mode!r}")

    # Outlier scores: the distances' robust z-scores among the rows the same model scored
    # (each fold's model in oof mode, the one model's parts in certified mode).
    groups = [[p] for p in parts] if oof else [parts]
    for g in groups:
        if all(p.outlier is not None for p in g):
            for p, scaled in zip(g, outlier.robust_z([p.outlier for p in g])):
                p.outlier = scaled
    frame = _merge(frame, ledger, rows, parts, k, round_no=round_no, oof=oof, train_margin=train_margin,
                   evidence=evidence_of(backbone=None if cfg.backbone is None else
                                        "self-supervised" if self_supervised(cfg.backbone) else "brought",
                                        channels=channels))
    stats = RankStats(cfg.mode, rows.classes, channels, sum(len(p.rows) for p in parts), trained, validated,
                      float(np.mean(val_acc)) if val_acc else None, epochs, t_train, t_score,
                      model=(cfg.backbone.factory if heads_only else
                             f"{tcfg.model} + heads on {cfg.backbone.factory}" if heads else tcfg.model),
                      schedule="linear heads" if heads_only else tcfg.schedule,
                      seconds_decode=t_decode, models=models)
    return frame, stats, model


def _backbone_scores(device, cfg: RankConfig, rows: Rows, channels: int, seed: int):
    """`RankConfig.backbone`: the backbone's features of every eligible row, once
    (`gpupipe.models.backbone`), then linear heads: one per fold out-of-fold
    (each scores its held-out fold), or one on the certified rows that scores
    the rest.  Outlier distances and votes from each head's training rows, in
    feature space.  -> (parts, rows trained on, seconds training, seconds
    scoring incl. extraction, oof)."""
    import torch

    from gpupipe.models import backbone as bb

    k = len(rows.classes)
    elig = np.flatnonzero(rows.eligible)
    t = time.perf_counter()
    model = bb.load(cfg.backbone)
    feats = bb.features(device, model, list(rows.paths[elig]), elig, size=cfg.train.image_size, channels=channels,
                        batch_size=cfg.score_batch or (4096 if device.is_gpu else 256))
    t_score = time.perf_counter() - t
    at = np.full(len(rows.y), -1, np.int64)
    at[elig] = np.arange(len(elig))
    if cfg.mode == "oof":
        if cfg.folds < 2:
            raise ValueError("oof mode needs at least 2 folds")
        fold = _stratified_folds(rows.y[elig], cfg.folds, np.random.default_rng(seed))
        splits = [(elig[fold != f], elig[fold == f]) for f in range(cfg.folds)]
    else:
        tr = np.flatnonzero(rows.certified)
        if len(tr) == 0:
            raise NothingCertified("no certified rows to train on: certify a seed set first")
        splits = [(tr, np.flatnonzero(rows.eligible & ~rows.certified))]
    parts, trained, t_train = [], 0, 0.0
    for f, (tr, sc) in enumerate(splits):
        t = time.perf_counter()
        head = bb.linear_head(feats[at[tr]], rows.y[tr], k)
        t_train += time.perf_counter() - t
        trained += len(tr)
        t = time.perf_counter()
        out = per_sample(head.logits(feats[at[sc]]), torch.as_tensor(rows.y[sc], dtype=torch.int64))
        s = Scores(sc, *(out[n].numpy() for n in ("loss", "pred", "prob_given", "margin", "probs")))
        ref = outlier.reference_rows(tr, seed + f)
        s.outlier = outlier.knn_distances(feats[at[sc]], feats[at[ref]], rows.y[ref], device=device.torch_device)
        s.votes = outlier.knn_vote(feats[at[sc]], feats[at[ref]], rows.y[ref], k, device=device.torch_device)
        t_score += time.perf_counter() - t
        parts.append(s)
    return parts, trained, t_train, t_score, cfg.mode == "oof"


def _mean_margins(n: int, jobs: list[Job], results: list[JobResult]) -> np.ndarray:
    """float32 (n,): each row's area under the margin (`TrainResult.margins`)
    averaged over the models that trained on it (out-of-fold: the other folds'),
    NaN where none did."""
    total, count = np.zeros(n), np.zeros(n)
    for job, res in zip(jobs, results):
        if res.train_margins is None or job.train_rows is None:
            continue
        ok = np.isfinite(res.train_margins)
        np.add.at(total, job.train_rows[ok], res.train_margins[ok])
        np.add.at(count, job.train_rows[ok], 1.0)
    return np.where(count > 0, total / np.maximum(count, 1.0), np.nan).astype(np.float32)


def evidence_of(*, backbone: Literal["brought", "self-supervised"] | None, channels: int) -> str:
    """`schema.RANK_EVIDENCE` of a round: 'backbone' when heads on a backbone the
    user brought are part of its probabilities (alone or with ``--with-cnn``),
    'self-supervised' when that backbone is `gpupipe pretrain`'s
    (`backbone.self_supervised`), 'trained' without one (models trained on the
    run's own labels); '-colour' or '-gray'."""
    kind = {None: "trained", "brought": "backbone", "self-supervised": "self-supervised"}[backbone]
    return f"{kind}-{'colour' if channels == 3 else 'gray'}"


def _merge(frame, ledger: Ledger, rows: Rows, parts: list[Scores], k: int, *, round_no: int, oof: bool,
           evidence: str, train_margin: np.ndarray | None = None):
    """Write this round's scores into the RANK columns (other rows keep theirs).
    ``train_margin`` (N,): `_mean_margins` of an out-of-fold round, for the rows it scored.
    ``evidence``: `schema.RANK_EVIDENCE` of the rows it scored (`evidence_of`)."""
    n = len(rows.y)
    m = max((p.model_probs.shape[1] for p in parts if p.model_probs is not None), default=1)
    fresh = {
        schema.RANK_ROUND: lambda: np.zeros(n, np.int32),
        schema.RANK_LOSS: lambda: np.zeros(n, np.float32),
        schema.RANK_PRED: lambda: np.full(n, None, object),
        schema.RANK_PROB_GIVEN: lambda: np.zeros(n, np.float32),
        schema.RANK_MARGIN: lambda: np.zeros(n, np.float32),
        schema.RANK_PROBS: lambda: np.full((n, k), np.nan, np.float32),
        schema.RANK_OOF: lambda: np.zeros(n, bool),
        schema.RANK_OUTLIER: lambda: np.full(n, np.nan, np.float32),
        schema.RANK_VOTES: lambda: np.full((n, k), np.nan, np.float32),
        schema.RANK_VOTE_GIVEN: lambda: np.zeros(n, np.float32),
        schema.RANK_FLAG: lambda: np.zeros(n, bool),
        schema.RANK_MODEL_PROBS: lambda: np.full((n, m * k), np.nan, np.float32),
        schema.RANK_TRAIN_MARGIN: lambda: np.full(n, np.nan, np.float32),
        schema.RANK_EVIDENCE: lambda: np.full(n, None, object),
    }
    # Earlier rounds' scores are kept, but all of them go when the classes
    # changed (the probability vectors' length); a column an older ledger
    # lacks, or a list column with no value yet, starts empty.
    keep = schema.RANK_PROBS in frame.columns and ledger.host(frame, schema.RANK_PROBS)[0].shape[1:] == (k,)
    cols = {}
    for c in schema.RANK:
        held = ledger.host(frame, c.name) if keep and c.name in frame.columns else None
        empty = fresh[c.name]()
        cols[c.name] = held if held is not None and held[0].shape == empty.shape else (empty, np.zeros(n, bool))
    classes = np.asarray(rows.classes, dtype=object)
    for s in parts:
        r = s.rows
        for name, values in ((schema.RANK_ROUND, round_no), (schema.RANK_LOSS, s.loss),
                             (schema.RANK_PRED, classes[s.pred]), (schema.RANK_PROB_GIVEN, s.prob_given),
                             (schema.RANK_MARGIN, s.margin), (schema.RANK_PROBS, s.probs),
                             (schema.RANK_OOF, oof), (schema.RANK_EVIDENCE, evidence)):
            cols[name][0][r] = values
            cols[name][1][r] = True
        has_outlier = s.outlier is not None and len(r) > 0 and not np.isnan(s.outlier).all()
        cols[schema.RANK_OUTLIER][0][r] = s.outlier if has_outlier else np.nan
        cols[schema.RANK_OUTLIER][1][r] = has_outlier
        has_votes = s.votes is not None and len(r) > 0 and not np.isnan(s.votes).all()
        cols[schema.RANK_VOTES][0][r] = s.votes if has_votes else np.nan
        cols[schema.RANK_VOTES][1][r] = has_votes
        cols[schema.RANK_VOTE_GIVEN][0][r] = s.votes[np.arange(len(r)), rows.y[r]] if has_votes else 0.0
        cols[schema.RANK_VOTE_GIVEN][1][r] = has_votes
        width = cols[schema.RANK_MODEL_PROBS][0].shape[1]
        has_models = s.model_probs is not None and s.model_probs.shape[1] * k == width
        cols[schema.RANK_MODEL_PROBS][0][r] = s.model_probs.reshape(len(r), -1) if has_models else np.nan
        cols[schema.RANK_MODEL_PROBS][1][r] = has_models
        tm = train_margin[r] if train_margin is not None else np.full(len(r), np.nan, np.float32)
        cols[schema.RANK_TRAIN_MARGIN][0][r] = tm
        cols[schema.RANK_TRAIN_MARGIN][1][r] = np.isfinite(tm)
    # Flags over every row holding probabilities, against its current label, but
    # for the images of no class (outlier score >= FAR): they are not mislabeled,
    # and their losses are high under any label, so among the rows they crowded
    # out flips (flag F1 0.79 -> 0.91 on digits with class-pair flips and 3%
    # planted images of no class; RESULTS.md §15).  They are neither flagged
    # nor counted; the review shows them as "remove".
    probs, has = cols[schema.RANK_PROBS]
    votes, has_votes = cols[schema.RANK_VOTES]
    use = has & rows.eligible & ~outlier.is_far(*cols[schema.RANK_OUTLIER])
    flags = np.zeros(n, bool)
    margin, has_margin = cols[schema.RANK_TRAIN_MARGIN]
    flags[use] = flag_label_issues(rows.y[use], probs[use].astype(np.float64),
                                   np.where(has_votes[use, None], votes[use], np.nan).astype(np.float64),
                                   models=m if bool(cols[schema.RANK_MODEL_PROBS][1][use].all()) else 1,
                                   margins=np.where(has_margin[use], margin[use], np.nan).astype(np.float64))
    cols[schema.RANK_FLAG] = (flags, np.ones(n, bool))
    return ledger.assign(frame, {name: (v, valid) for name, (v, valid) in cols.items()})
