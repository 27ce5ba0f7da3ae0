"""The review stage: decisions on rows, the review queue, and who decides.

Reads: ingest, dedup, rank columns.  Adds: `schema.REVIEW`.

A decision is ``confirm`` (valid, label right), ``relabel`` (valid, label is
``new_label``) or ``remove`` (invalid or unusable).  Every decision carries
its round and its source (person, oracle, automatic policy, seed); the ledger
holds each row's latest decision and `apply` returns log rows for the full
history (``decisions.parquet``).  Decision-makers:

* a person, through a CSV (`read_decisions_csv`);
* an oracle of known labels standing in for the person (`oracle_decisions`),
  for benchmarks;
* the automatic policy (`auto_decisions`) with explicit thresholds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from gpupipe import schema
from gpupipe.models.outlier import FAR, is_far
from gpupipe.models.score import label_posterior, with_margin, with_votes
from gpupipe.stages.balance import suspects
from gpupipe.stages.rank import Rows, rows_of
from gpupipe.table import Ledger
from gpupipe.xputil import apportion, splitmix64

Action = Literal["confirm", "relabel", "remove"]
ACTIONS: tuple[str, ...] = ("confirm", "relabel", "remove")
_STATUS = {"confirm": schema.STATUS_CERTIFIED, "relabel": schema.STATUS_RELABELED, "remove": schema.STATUS_REMOVED}
HOLDOUT_FRACTION = 0.1

LOG_SCHEMA = pa.schema([
    ("sample_id", pa.int64()), ("rel_path", pa.string()), ("round", pa.int32()), ("action", pa.string()),
    ("label_before", pa.string()), ("label_after", pa.string()), ("source", pa.string()),
    ("unix_time", pa.float64()),
])


@dataclass
class Decisions:
    """Column-wise decisions: ``positions`` (rows of the ledger), ``action`` and
    ``new_label`` (object arrays; new_label only for relabel), one source and round."""

    positions: np.ndarray
    action: np.ndarray
    new_label: np.ndarray
    source: str
    round: int
    holdout: np.ndarray | None = None   # bool per decision; None: by hash of sample_id
    summary: dict | None = None         # the automatic policy's account of itself (`auto_decisions`)
    held: np.ndarray | None = None      # rows whose relabel the policy held for a person (`AutoPolicy.colour_relabels`)

    def __len__(self) -> int:
        return len(self.positions)

    @classmethod
    def empty(cls, source: str, round_no: int) -> "Decisions":
        return cls(np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, object), source, round_no)


def ensure_columns(frame, ledger: Ledger):
    """The frame with the REVIEW columns, all null, if it lacks them."""
    if schema.REVIEW_STATUS in frame.columns:
        return frame
    n = len(frame)
    none = np.full(n, None, object)
    return ledger.assign(frame, {
        schema.REVIEW_STATUS: (none, np.zeros(n, bool)), schema.REVIEW_LABEL: (none, np.zeros(n, bool)),
        schema.REVIEW_ROUND: (np.zeros(n, np.int32), np.zeros(n, bool)),
        schema.REVIEW_SOURCE: (none, np.zeros(n, bool)), schema.REVIEW_HOLDOUT: (np.zeros(n, bool), np.zeros(n, bool)),
    })


def holdout_by_hash(sample_ids: np.ndarray, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """A fixed ``fraction`` of sample ids, chosen by a splitmix64 hash of the id
    (independent of row order and of when a row was certified)."""
    z = splitmix64(sample_ids)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def apply(frame, ledger: Ledger, d: Decisions) -> tuple[object, pa.Table]:
    """Apply decisions (trusted: positions valid, relabels carry a label) ->
    (frame, log rows).  A later decision on a row replaces its earlier one."""
    if len(d) == 0:
        return frame, LOG_SCHEMA.empty_table()
    frame = ensure_columns(frame, ledger)
    cols = {c.name: ledger.host(frame, c.name) for c in schema.REVIEW}
    ids, _ = ledger.host(frame, schema.SAMPLE_ID)
    rel, _ = ledger.host(frame, schema.REL_PATH)
    given, _ = ledger.host(frame, schema.LABEL)
    before = np.where(cols[schema.REVIEW_LABEL][1], cols[schema.REVIEW_LABEL][0], given)
    p = d.positions
    after = np.where(d.action == "relabel", d.new_label, before[p])
    holdout = d.holdout if d.holdout is not None else holdout_by_hash(ids[p])
    keep_holdout = cols[schema.REVIEW_HOLDOUT][1][p] & (d.action != "remove")
    holdout = np.where(keep_holdout, cols[schema.REVIEW_HOLDOUT][0][p], holdout)
    for name, values in ((schema.REVIEW_STATUS, np.array([_STATUS[a] for a in d.action], object)),
                         (schema.REVIEW_LABEL, after), (schema.REVIEW_ROUND, d.round),
                         (schema.REVIEW_SOURCE, d.source), (schema.REVIEW_HOLDOUT, holdout & (d.action != "remove"))):
        cols[name][0][p] = values
        cols[name][1][p] = True
    frame = ledger.assign(frame, cols)
    log = pa.table({
        "sample_id": ids[p], "rel_path": rel[p].tolist(), "round": np.full(len(p), d.round, np.int32),
        "action": d.action.tolist(), "label_before": before[p].tolist(), "label_after": after.tolist(),
        "source": [d.source] * len(p), "unix_time": np.full(len(p), time.time()),
    }, schema=LOG_SCHEMA)
    return frame, log


# ----------------------------------------------------------------------------- what to review
def seed_set(rows: Rows, *, size: int, val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random, class-stratified seed set -> (positions, holdout bool).

    ``size`` rows are split among classes in proportion to their counts (at
    least 2 per class where the class has them); ``val`` of them, dealt one
    class at a time, are held out for validation.
    """
    rng = np.random.default_rng(seed)
    elig = np.flatnonzero(rows.eligible)
    k = len(rows.classes)
    # Eligible rows grouped by class (one stable sort, not a scan per class).
    by_class = np.split(elig[np.argsort(rows.y[elig], kind="stable")],
                        np.cumsum(np.bincount(rows.y[elig], minlength=k))[:-1])
    if len(elig) <= size:
        picks_by_class = [rng.permutation(m) for m in by_class]
    else:
        quota = apportion(size, np.bincount(rows.y[elig], minlength=k), minimum=2)
        picks_by_class = [rng.permutation(m)[:q] for m, q in zip(by_class, quota)]
    # Deal: the first pick of every class, then the second of every class, ...
    dealt = [(j, c, p) for c, picks in enumerate(picks_by_class) for j, p in enumerate(picks)]
    dealt.sort(key=lambda t: (t[0], rng.random()))
    positions = np.array([p for _, _, p in dealt], np.int64)
    holdout = np.zeros(len(positions), bool)
    holdout[:min(val, max(len(positions) - 1, 0))] = True
    return positions, holdout


#: The automatic policy's default ``remove_outlier``: higher than `FAR`, because
#: the policy acts without a person, over several rounds.  The lowest value
#: that removed no clean row over three automatic rounds on two digits sets:
#: the benchmark's, with and without planted images of no class (7 would do
#: there), and the demo's (where 7 removed an odd 9 scoring 7.2 in round 3).
#: 45 of 54 images of no class removed instead of 25; judged on
#: Fashion-MNIST: 123 of 298 instead of 19, no clean row
#: (benchmarks/bench_outlier_rounds.py, RESULTS.md §15).
AUTO_REMOVE_OUTLIER = 8.0

#: The automatic policy makes a decision only where it expects it to be right
#: at least this often (`gpupipe.models.score.label_posterior`); the rest stay
#: open, in the review order, for a person.  On CIFAR-10N ``aggre`` (real
#: annotator mistakes, a model 59-64% right) the thresholds alone relabeled
#: or removed 152 clean images of 336 changed (choose part) and 125 of 271
#: (judge part); with this gate 1 of 14 and 0 of 10
#: (benchmarks/bench_cifar10n.py, RESULTS.md §19.2).
AUTO_MIN_PRECISION = 0.9


def label_suspicion(loss: np.ndarray, prob_given: np.ndarray, vote_given: np.ndarray | None,
                    margin: np.ndarray | None = None) -> np.ndarray:
    """The label's part of the review order, float (N,), higher = more suspect:
    minus the log of the model's probability of the current label mixed with
    the neighbours' vote for it (`gpupipe.models.score.with_votes`), the loss
    of the two opinions; where there is no vote (NaN, or None: an older
    ledger), the model's ``loss``.  Over the model's loss alone it lowered the
    reviews needed for 90% of the errors on 6 of 8 planted sets and tied on 2
    (Fashion-MNIST 1.14x -> 1.09x; benchmarks/bench_flag_signals.py, RESULTS.md
    §16).  Not the flags' order (`score.label_error_odds`): within the first
    1x of reviews that one lost on Fashion-MNIST with symmetric flips.

    ``margin`` (N,): `rank_train_margin` (NaN where none; None: an older
    ledger): then the mean of the rows' percentiles by that loss and by the
    margin (`gpupipe.models.score.with_margin`), a third opinion, as in the
    flags' order (RESULTS.md §36)."""
    loss = np.asarray(loss, np.float64)
    if vote_given is not None:
        vote = np.asarray(vote_given, np.float64)
        mixed = with_votes(prob_given, vote)
        loss = np.where(np.isnan(vote), loss, -np.log(np.clip(mixed, 1e-12, None)))
    if margin is None or not np.isfinite(margin).any():
        return loss
    return with_margin(loss, margin)


def suspicion(loss: np.ndarray, outlier: np.ndarray, *, outlier_from: float = FAR) -> np.ndarray:
    """The review order.  ``loss`` (N,) of each row's current label
    (`label_suspicion`: the loss of the model and the neighbours' votes) and
    ``outlier`` (N,) `rank_outlier_score` (NaN where none) -> float (N,) in
    0..1, higher = reviewed first: the row's percentile among the given rows
    by loss, or by outlier score where that is at least ``outlier_from`` and
    higher.  A mislabeled image is caught by its loss, an image of no class
    by its outlier score (its loss can be middling).  Below ``outlier_from``
    (`FAR`) the outlier score is left
    out: on a set without such images its top percentiles would only push
    ordinary rows into the queue."""

    def percentile(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        ok = ~np.isnan(x)
        out = np.zeros(len(x))
        out[ok] = (np.argsort(np.argsort(x[ok], kind="stable"), kind="stable") + 1) / max(1, ok.sum())
        return out

    far = is_far(outlier, threshold=outlier_from)
    return np.maximum(percentile(loss), np.where(far, percentile(outlier), 0.0))


def queue(frame, ledger: Ledger, *, worst: int, best: int, policy: "AutoPolicy | None" = None) -> pd.DataFrame:
    """The review queue: the ``worst`` most and ``best`` least suspicious rows
    (`suspicion`: loss of the current label and outlier score) among the
    eligible, scored, not yet certified ones.  Columns: queue (worst|best),
    sample_id, rel_path, path, label, suggested_label, loss, prob_given,
    prob_suggested, margin, neighbour_vote (the share of the nearest
    training images whose label is this row's), outlier_score, suggested_action (remove: an image
    of no class: outlier score >= `FAR`, unless the model confirms the label;
    relabel: the model prefers another class; confirm), decision (blank),
    new_label (the suggestion, used if the decision is ``relabel``).
    ``policy``: whose ``accept_prob`` says "confirms" (default: `AutoPolicy`'s)."""
    rows = rows_of(frame, ledger)
    loss, scored = ledger.host(frame, schema.RANK_LOSS)
    open_ = np.flatnonzero(rows.eligible & ~rows.certified & scored)
    key = label_suspicion(loss, ledger.host(frame, schema.RANK_PROB_GIVEN)[0], _vote_given(frame, ledger),
                          _float_column(frame, ledger, schema.RANK_TRAIN_MARGIN))
    order = open_[np.argsort(-suspicion(key[open_], _outlier(frame, ledger)[open_]), kind="stable")]
    w = order[:worst]
    b = order[::-1][:best]
    b = b[~np.isin(b, w)]
    return _queue_frame(frame, ledger, rows, np.concatenate([w, b]), ["worst"] * len(w) + ["best"] * len(b),
                        policy)


def _float_column(frame, ledger: Ledger, name: str) -> np.ndarray | None:
    """float (N,) column ``name``, NaN where null; None for an older ledger without it."""
    if name not in frame.columns:
        return None
    values, has = ledger.host(frame, name)
    return np.where(has, values.astype(np.float64), np.nan)


def _vote_given(frame, ledger: Ledger) -> np.ndarray | None:
    """`rank_vote_given` (`_float_column`)."""
    return _float_column(frame, ledger, schema.RANK_VOTE_GIVEN)


def _outlier(frame, ledger: Ledger) -> np.ndarray:
    """float (N,) `rank_outlier_score`, NaN where none (or an older ledger without it)."""
    score = _float_column(frame, ledger, schema.RANK_OUTLIER)
    return np.full(len(frame), np.nan) if score is None else score


def _queue_frame(frame, ledger: Ledger, rows: Rows, pos: np.ndarray, kinds: list[str],
                 policy: "AutoPolicy | None" = None) -> pd.DataFrame:
    ids, _ = ledger.host(frame, schema.SAMPLE_ID)
    rel, _ = ledger.host(frame, schema.REL_PATH)
    paths, _ = ledger.host(frame, schema.PATH)
    locs = (ledger.host(frame, schema.LOCATOR)[0][pos] if schema.LOCATOR in frame.columns
            else np.full(len(pos), None, object))
    out = pd.DataFrame({"queue": kinds, "sample_id": ids[pos], "rel_path": rel[pos], "path": paths[pos],
                        "locator": locs, "label": rows.label[pos]})
    if schema.RANK_LOSS in frame.columns:
        pred, has = ledger.host(frame, schema.RANK_PRED)
        probs, _ = ledger.host(frame, schema.RANK_PROBS)
        loss, _ = ledger.host(frame, schema.RANK_LOSS)
        pg, _ = ledger.host(frame, schema.RANK_PROB_GIVEN)
        margin, _ = ledger.host(frame, schema.RANK_MARGIN)
        outlier = _outlier(frame, ledger)[pos]
        out["suggested_label"] = np.where(has[pos], pred[pos], None)
        out["loss"] = np.where(has[pos], loss[pos], np.nan)
        out["prob_given"] = np.where(has[pos], pg[pos], np.nan)
        out["prob_suggested"] = np.where(has[pos], np.nanmax(probs[pos], axis=1) if probs.size else np.nan, np.nan)
        out["margin"] = np.where(has[pos], margin[pos], np.nan)
        vote = _vote_given(frame, ledger)
        out["neighbour_vote"] = np.full(len(pos), np.nan) if vote is None else vote[pos]
        out["outlier_score"] = outlier
        policy = policy or AutoPolicy()
        agree = out["suggested_label"].to_numpy(object) == rows.label[pos]
        confident = agree & (out["prob_given"].to_numpy() >= policy.accept_prob)
        far = is_far(outlier)
        out["suggested_action"] = np.where(far & ~confident, "remove", np.where(agree, "confirm", "relabel"))
    out["decision"] = ""
    out["new_label"] = out["suggested_label"] if "suggested_label" in out else None
    return out


def seed_queue(frame, ledger: Ledger, positions: np.ndarray) -> pd.DataFrame:
    return _queue_frame(frame, ledger, rows_of(frame, ledger), positions, ["seed"] * len(positions))


def given_label_support(frame, ledger: Ledger, classes: list[str]) -> np.ndarray:
    """float (N,): how much the latest scores back each row's *given* label
    (the one in the source): the model's probability of it mixed with its
    neighbours' vote for it (`with_votes`), NaN where the row was not scored or
    the label is not among ``classes`` (the order of `rank_probs`)."""
    n = len(frame)
    if schema.RANK_PROBS not in frame.columns or not classes:
        return np.full(n, np.nan)
    given, _ = ledger.host(frame, schema.LABEL)
    probs, scored = ledger.host(frame, schema.RANK_PROBS)
    cls = np.asarray(classes, dtype=str)
    names = np.asarray(given, dtype=object).astype(str)
    j = np.clip(np.searchsorted(cls, names), 0, len(cls) - 1)
    known = scored & (cls[j] == names) & (probs.shape[1:] == (len(cls),))
    out = np.full(n, np.nan)
    if not known.any():
        return out
    r = np.flatnonzero(known)
    p = probs[r, j[r]]
    v = np.full(len(r), np.nan)                   # no vote: the model's probability alone
    if schema.RANK_VOTES in frame.columns:
        votes, has_votes = ledger.host(frame, schema.RANK_VOTES)
        if votes.shape[1:] == (len(cls),):
            v = np.where(has_votes[r], votes[r, j[r]], np.nan)
    out[r] = with_votes(p, v)
    return out


def _alternate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a[0], b[0], a[1], b[1], ... then the longer one's rest."""
    n = min(len(a), len(b))
    head = np.empty(2 * n, np.int64)
    head[0::2], head[1::2] = a[:n], b[:n]
    return np.concatenate([head, a[n:], b[n:]])


#: The undecided rows the audit queue lists: as many as the automatic
#: relabels, and at least this many.
AUDIT_OPEN_MIN = 100


def audit_queue(frame, ledger: Ledger, classes: list[str], *, open_rows: int | None = None,
                held: np.ndarray | None = None) -> pd.DataFrame:
    """What an unattended run (``--review auto``) leaves in the curated set that a
    person should check first, the most doubtful first:

    * first the relabels the policy **held** for a person (``held``: positions,
      `Decisions.held` of the last round; those still open), most suspect
      first, ``auto_action`` held, ``new_label`` and ``suggested_action``
      pre-filled with the relabel it would have made: on CIFAR-10N 46 of 55
      such relabels were right (RESULTS.md §40).  They are flagged, so
      curate leaves them out as suspects until a person decides;
    * its **relabels**, each by how much the latest round's scores still back
      the given label (`given_label_support`, highest first: the evidence
      for undoing it);
    * in turn with them, one for one, the **open** rows the curated set keeps
      with their given label (undecided, not `balance.suspects`: neither
      flagged nor far from every class), by the review order's label key
      (`label_suspicion`); ``open_rows`` of them (default: as many as the
      relabels, at least `AUDIT_OPEN_MIN`);
    * then its **removes**, by the support for their given label (a wrong
      remove loses one row; a wrong label stays in the set).

    Measured on the downstream benchmark's curate runs (RESULTS.md §5.6,
    benchmarks/bench_audit_order.py): as many reviews as the policy made
    relabels after its first round (64-82 rows per seed) fix 88 of the 134
    label errors the curated Fashion-MNIST sets keep and 24 of 25 on
    digits; those later relabels themselves hold 69 and 3.

    The queue's columns (``queue`` is ``audit``): ``label`` is the row's
    label now (the automatic one for a relabel), ``given_label`` the
    source's, ``auto_action`` (held / relabel / open / remove) and
    ``auto_round`` (0 for held and open rows), ``given_support``;
    ``new_label`` is pre-filled with the label a ``relabel`` most likely
    means (for a relabel its given label, an undo; else the suggested
    label).  Decisions mean what they always
    mean: ``confirm`` = valid with ``label`` (keeps a relabel; brings a
    removed row back with its given label), ``relabel`` = valid with
    ``new_label``, ``remove``; blank rows change nothing."""
    rows = rows_of(frame, ledger)
    status, _ = ledger.host(frame, schema.REVIEW_STATUS)
    source, has_source = ledger.host(frame, schema.REVIEW_SOURCE)
    rnd, _ = ledger.host(frame, schema.REVIEW_ROUND)
    given, _ = ledger.host(frame, schema.LABEL)
    auto = has_source & (source == schema.SOURCE_AUTO)
    relabeled, removed = auto & (status == schema.STATUS_RELABELED), auto & (status == schema.STATUS_REMOVED)
    support = given_label_support(frame, ledger, classes)

    def by_support(pos: np.ndarray) -> np.ndarray:                # unscored rows (NaN) last
        return pos[np.argsort(-np.nan_to_num(support[pos], nan=-1.0), kind="stable")]

    relabels, removes = by_support(np.flatnonzero(relabeled)), by_support(np.flatnonzero(removed))
    open_ = np.zeros(0, np.int64)
    if schema.RANK_LOSS in frame.columns:
        loss, scored = ledger.host(frame, schema.RANK_LOSS)
        keep = rows.eligible & ~rows.certified & scored & ~suspects(frame, ledger, rows.certified)
        key = label_suspicion(loss, ledger.host(frame, schema.RANK_PROB_GIVEN)[0], _vote_given(frame, ledger),
                              _float_column(frame, ledger, schema.RANK_TRAIN_MARGIN))
        open_ = np.flatnonzero(keep)
        open_ = open_[np.argsort(-key[open_], kind="stable")]
        open_ = open_[:max(len(relabels), AUDIT_OPEN_MIN) if open_rows is None else open_rows]
    held = np.zeros(0, np.int64) if held is None else np.asarray(held, np.int64)
    held = held[rows.eligible[held] & ~rows.certified[held]]
    is_held = np.zeros(len(rows.y), bool)
    is_held[held] = True
    open_ = open_[~is_held[open_]]
    pos = np.concatenate([held, _alternate(relabels, open_), removes])
    out = _queue_frame(frame, ledger, rows, pos, ["audit"] * len(pos))
    action = np.where(is_held[pos], "held",
                      np.where(relabeled[pos], "relabel", np.where(removed[pos], "remove", "open")))
    out["label"] = np.where(removed[pos], given[pos], rows.label[pos])
    out.insert(out.columns.get_loc("label") + 1, "given_label", given[pos])
    out["auto_action"] = action
    out["auto_round"] = np.where((action == "open") | (action == "held"), 0, rnd[pos])
    out["given_support"] = support[pos]
    out["suggested_action"] = np.where(action == "held", "relabel", "")
    sugg = out["suggested_label"].to_numpy(object) if "suggested_label" in out else np.full(len(pos), None)
    out["new_label"] = np.where(action == "relabel", given[pos], sugg)
    return out


# ----------------------------------------------------------------------------- who decides
@dataclass(frozen=True)
class AutoPolicy:
    """The unattended policy (``--review auto``), applied to scored, not yet
    certified rows.  Probabilities are the model's, 0..1.

    accept_prob: confirm a row when the model's top class is its label with at
        least this probability.
    relabel_prob: relabel a row to the model's top class when that is another
        class with at least this probability.
    remove_prob: remove a row (as unusable) when its label's probability is at
        most this and it was not relabeled.
    remove_outlier: remove a row (as an image of no class) when its
        `rank_outlier_score` is at least this, unless the model confirms its
        label (accept_prob); such a row is never relabeled.  None: off.
        Default `AUTO_REMOVE_OUTLIER` (8).  At `FAR` (5) it removed more
        images of no class but also clean rows, more each round, as each
        round's open rows are the harder ones: over three automatic rounds
        13 clean digits of a set without such images, and 14 clean
        Fashion-MNIST rows (RESULTS.md §15).
    relabel_rounds: relabel only in the first this many rounds of the loop
        (None, the default: every round).  A row a later round would
        relabel stays open, flagged, with the model's suggestion, for a
        person.  Later rounds relabel less precisely on Fashion-MNIST (94%,
        78%, 55% right in rounds 1-3), yet relabeling in round 1 only lost
        0.55-0.68 points downstream: the rows it drops are the hard ones
        (RESULTS.md §5.5), so it is not the default.
    max_accept / max_change: caps per round (lowest loss accepted first,
        highest loss changed first); None = no cap.
    min_precision: of the confirms and relabels the thresholds above
        propose, make only those whose estimated chance of being right
        (`label_posterior`: calibrated probabilities and the label noise
        estimated from them) is at least this; of the removes, those whose
        estimated chance of being wrong is at most a tenth of ``1 -
        min_precision`` (0.99 at the default: the estimate is overconfident
        there on real annotators' mistakes).  The rest stay open, with their
        count in the round's summary.  Default `AUTO_MIN_PRECISION` (0.9);
        None: the thresholds alone (the policy before the gate).  Outlier
        removals are not gated: their evidence is the outlier score.
    colour_relabels: "with-backbone" (default): no relabel of a row whose
        probabilities come from models trained on the run's own labels on
        colour images (`schema.RANK_EVIDENCE` 'trained-colour'); the row
        stays open, flagged, with the model's suggestion, for a person, and
        the round's summary counts it under ``held``.  Heads on a backbone
        the user brought (``rank --backbone``, alone or ``--with-cnn``) lift
        it, unless that backbone is `gpupipe pretrain`'s, learned without
        labels from the same images ('self-supervised-colour'): the gate on
        its heads alone changed 4 clean photos of 11 and 10 of 19 (100
        epochs, CIFAR-10N choose and judge, RESULTS.md §25), 1 of 10 and 6
        of 11 (30 epochs, §40), and as a veto on the CNNs' relabels left 4
        clean of 12 (judge, §40).  Why: on real annotators' mistakes in
        photos the gate's estimate does not see the confident mistakes the
        models share (a bird against the sky read as an airplane by both).
        On CIFAR-10N `aggre`, three parts of 10,000 photos, the default
        photo models' gated relabels were right 46 of 55 times and
        relabeled 7 clean images (0, 4 and 3 per part: 13% of the changes,
        above the 10% this policy allows itself); with heads on a brought
        backbone as a second opinion, 2 clean of 38
        (benchmarks/bench_cifar10n.py, RESULTS.md §40).  Judged on labels it
        was not chosen on (one worker's, `random1`, two parts), the gate
        alone relabeled 121, 3 clean (§41): conservative there.  Gray
        images (digits, Fashion-MNIST) are not held: 0 clean relabels there
        (§15, §33).  "always": the gate alone decides, as before.

    Measured on out-of-fold probabilities with 10% planted flips (see
    benchmarks/RESULTS.md): relabel_prob 0.9 relabels 358 rows on
    Fashion-MNIST 10k, 344 to the true class (13 clean rows damaged), and 106
    of 212 flips on digits with none damaged; 0.8 relabels more but damages
    72 clean Fashion rows.  remove_prob 0.01 removes 617 Fashion rows, 604 of
    them flips.
    """

    accept_prob: float = 0.9
    relabel_prob: float = 0.9
    remove_prob: float = 0.01
    remove_outlier: float | None = AUTO_REMOVE_OUTLIER
    relabel_rounds: int | None = None
    max_accept: int | None = None
    max_change: int | None = None
    min_precision: float | None = AUTO_MIN_PRECISION
    colour_relabels: Literal["with-backbone", "always"] = "with-backbone"


#: `schema.RANK_EVIDENCE` whose relabels `AutoPolicy.colour_relabels` holds for a person.
HELD_EVIDENCE = ("trained-colour", "self-supervised-colour")


def auto_decisions(frame, ledger: Ledger, policy: AutoPolicy, *, round_no: int) -> Decisions:
    """The automatic policy's decisions on the scored, open rows (`AutoPolicy`).
    The returned `Decisions` carry a ``summary``: what the policy made, what it
    declined and why, and how many of its decisions it expects to be wrong."""
    rows = rows_of(frame, ledger)
    loss, scored = ledger.host(frame, schema.RANK_LOSS)
    pred, _ = ledger.host(frame, schema.RANK_PRED)
    probs, _ = ledger.host(frame, schema.RANK_PROBS)
    pg, _ = ledger.host(frame, schema.RANK_PROB_GIVEN)
    open_ = rows.eligible & ~rows.certified & scored
    top = np.where(scored, np.nan_to_num(probs, nan=0.0).max(axis=1, initial=0.0), 0.0)
    agree = pred == rows.label
    confirm = open_ & agree & (pg >= policy.accept_prob)
    far = np.zeros(len(open_), bool)
    if policy.remove_outlier is not None and schema.RANK_OUTLIER in frame.columns:
        far = open_ & is_far(*ledger.host(frame, schema.RANK_OUTLIER), threshold=policy.remove_outlier) & ~confirm
    may_relabel = policy.relabel_rounds is None or round_no <= policy.relabel_rounds
    relabel = open_ & ~agree & ~far & (top >= policy.relabel_prob) & may_relabel
    unusable = open_ & ~agree & ~far & (top < policy.relabel_prob) & (pg <= policy.remove_prob)
    summary: dict = {"proposed": {"confirm": int(confirm.sum()), "relabel": int(relabel.sum()),
                                  "remove": int(unusable.sum()), "remove_outlier": int(far.sum())}}
    hold = np.zeros(len(open_), bool)      # rows whose relabels wait for a person (`AutoPolicy.colour_relabels`)
    if policy.colour_relabels == "with-backbone" and schema.RANK_EVIDENCE in frame.columns:
        evidence, has = ledger.host(frame, schema.RANK_EVIDENCE)
        hold = has & np.isin(evidence.astype(str), HELD_EVIDENCE)
    if policy.min_precision is not None:
        confirm, relabel, unusable, gate, held = _gate(rows, scored, probs, pred, confirm, relabel, unusable,
                                                       policy.min_precision,
                                                       each_model(frame, ledger, len(rows.classes)), hold=hold)
        summary.update(gate)
    else:
        held, relabel = relabel & hold, relabel & ~hold
        summary.update(_held(held))
    accept = np.flatnonzero(confirm)
    relabel = np.flatnonzero(relabel)
    remove = np.flatnonzero(far | unusable)
    accept = accept[np.argsort(loss[accept], kind="stable")][:policy.max_accept]
    change = np.concatenate([relabel, remove])
    change = change[np.argsort(-loss[change], kind="stable")][:policy.max_change]
    pos = np.concatenate([accept, change])
    action = np.concatenate([np.full(len(accept), "confirm", object),
                             np.where(np.isin(change, relabel), "relabel", "remove").astype(object)])
    new = np.where(action == "relabel", pred[pos], None)
    outlier_removed = (action == "remove") & far[pos]
    summary["made"] = {"confirm": int((action == "confirm").sum()), "relabel": int((action == "relabel").sum()),
                       "remove": int(((action == "remove") & ~outlier_removed).sum()),
                       "remove_outlier": int(outlier_removed.sum())}
    held = np.flatnonzero(held)
    return Decisions(pos, action, new, schema.SOURCE_AUTO, round_no, summary=summary,
                     held=held[np.argsort(-loss[held], kind="stable")])


def each_model(frame, ledger: Ledger, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``rank --models M``'s `schema.RANK_MODEL_PROBS` over ``k`` classes:
    (each model's probabilities (N, M, K), rows holding them), or None where
    the round averaged no models."""
    if schema.RANK_MODEL_PROBS not in frame.columns or k < 1:
        return None
    mp, has = ledger.host(frame, schema.RANK_MODEL_PROBS)
    if not has.any() or mp.shape[1] % k or mp.shape[1] <= k:
        return None
    return mp.reshape(len(mp), -1, k), has


def _held(held: np.ndarray) -> dict:
    """The summary's part for the relabels `AutoPolicy.colour_relabels` holds for a person."""
    if not held.any():
        return {}
    return {"held": {"relabel": int(held.sum())},
            "held_because": "colour images scored by models trained on these labels alone, or by heads on "
                            "gpupipe pretrain's backbone from these images: relabels wait for a person, or for "
                            "the heads of a backbone you bring as a second opinion (--backbone; "
                            "--colour-relabels always: the gate alone)"}


def _gate(rows: Rows, scored: np.ndarray, probs: np.ndarray, pred: np.ndarray, confirm: np.ndarray,
          relabel: np.ndarray, unusable: np.ndarray, min_precision: float, each=None, hold=None):
    """`AutoPolicy.min_precision`: keep the proposed decisions whose estimated
    precision reaches ``min_precision``.  Returns the three masks and the
    summary's part: what was declined, the expected wrong decisions, and the
    noise the estimate rests on, and the (N,) mask of the relabels it held.
    ``hold`` (N,) bool: rows whose relabels the gate passes but that wait for
    a person (`AutoPolicy.colour_relabels`), counted under ``held``, not
    made, not in the expected wrong decisions.

    ``each``: (probabilities (N, M, K), rows holding them) of the M models
    whose mean ``probs`` is (``rank --models M``): a decision is then made
    only where each model's own estimate (`label_posterior` of its
    probabilities) reaches the bar too, as well as the mean's.  It catches
    the confident mistakes one random stream makes and another does not,
    not those both share: on CIFAR-10N two models' gated changes were 0 of
    19 clean rows (choose part) but 4 of 13 (judge part: birds in the sky
    relabeled airplane, dogs relabeled horse by both models), against 1-7
    of 23-42 for one model (RESULTS.md §35)."""
    k = len(rows.classes)
    s = np.flatnonzero(scored & rows.eligible & (rows.y >= 0))
    p = probs[s].astype(np.float64)                      # the ledger's (N, K) probabilities, scored rows
    if k < 2 or len(s) < 2 or p.shape[1] != k:
        return confirm & False, relabel & False, unusable & False, {
            "declined": {"confirm": int(confirm.sum()), "relabel": int(relabel.sum()), "remove": int(unusable.sum())},
            "declined_because": "no posterior: fewer than two classes or scored rows"}, relabel & False
    lp = label_posterior(rows.y[s], p)
    right = {"confirm": np.zeros(len(scored)), "relabel": np.zeros(len(scored)), "remove": np.zeros(len(scored))}
    index = {c: i for i, c in enumerate(rows.classes)}
    pj = np.array([index.get(x, -1) for x in pred[s]], np.int64)
    right["confirm"][s] = lp.post[np.arange(len(s)), rows.y[s]]
    right["relabel"][s] = np.where(pj >= 0, lp.post[np.arange(len(s)), np.maximum(pj, 0)], 0.0)
    right["remove"][s] = 1.0 - right["confirm"][s]
    estimate = {a: v.copy() for a, v in right.items()}
    if each is not None:
        mp, has = each
        sm, pjm = s[has[s]], pj[has[s]]                  # the scored rows holding each model's probabilities
        for m in range(mp.shape[1] if len(sm) >= 2 else 0):
            lpm = label_posterior(rows.y[sm], mp[sm, m].astype(np.float64))
            post_given = lpm.post[np.arange(len(sm)), rows.y[sm]]
            right["confirm"][sm] = np.minimum(right["confirm"][sm], post_given)
            right["relabel"][sm] = np.minimum(right["relabel"][sm], np.where(
                pjm >= 0, lpm.post[np.arange(len(sm)), np.maximum(pjm, 0)], 0.0))
            right["remove"][sm] = np.minimum(right["remove"][sm], 1.0 - post_given)
    masks = {"confirm": confirm, "relabel": relabel, "remove": unusable}
    bar = {"confirm": min_precision, "relabel": min_precision, "remove": 1.0 - (1.0 - min_precision) / 10}
    passed = {a: m & (right[a] >= bar[a]) for a, m in masks.items()}
    held = passed["relabel"] & hold if hold is not None else np.zeros(len(scored), bool)
    kept = {**passed, "relabel": passed["relabel"] & ~held}
    gate = {"min_precision": min_precision,
            "declined": {a: int((masks[a] & ~passed[a]).sum()) for a in masks},
            "declined_because": f"estimated precision below {min_precision:g} (removes: {bar['remove']:g}); "
                                "left open, in the review order",
            "expected_wrong": round(float(sum((1.0 - estimate[a][kept[a]]).sum() for a in masks)), 1),
            "estimated_noise_rate": round(lp.noise_rate, 4), "temperature": round(lp.temperature, 3)}
    gate.update(_held(held))
    if each is not None:
        gate["models"] = int(each[0].shape[1])
        gate["declined_by_a_model"] = {a: int((masks[a] & (estimate[a] >= bar[a]) & ~passed[a]).sum()) for a in masks}
        gate["declined_because"] += f"; or below it by one of the {gate['models']} models' own estimates"
    return kept["confirm"], kept["relabel"], kept["remove"], gate, held


def load_oracle(path: str | Path) -> dict[str, str | None]:
    """``LABELS.csv`` with columns rel_path,label (an empty label: the file is
    invalid) -> rel_path -> true label or None."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"oracle {path}: cannot read it as CSV ({e})") from None
    if not {"rel_path", "label"} <= set(df.columns):
        raise ValueError(f"oracle {path}: needs columns rel_path,label; has {list(df.columns)}")
    return {r: (lab or None) for r, lab in zip(df["rel_path"], df["label"])}


def oracle_decisions(q: pd.DataFrame, truth: dict[str, str | None], frame, *, round_no: int) -> Decisions:
    """What a careful person with the true labels would decide for each queued row."""
    missing = [r for r in q["rel_path"] if r not in truth]
    if missing:
        raise ValueError(f"the oracle has no label for {len(missing)} queued rows, e.g. {missing[:3]}")
    true = np.array([truth[r] for r in q["rel_path"]], dtype=object)
    given = q["label"].to_numpy(dtype=object)
    action = np.where(true == None, "remove", np.where(true == given, "confirm", "relabel")).astype(object)  # noqa: E711
    return Decisions(_positions(frame, q["sample_id"].to_numpy(np.int64)), action,
                     np.where(action == "relabel", true, None), schema.SOURCE_ORACLE, round_no)


def _positions(frame, sample_ids: np.ndarray) -> np.ndarray:
    index = pd.Index(np.asarray(frame[schema.SAMPLE_ID].to_numpy(dtype=np.int64)))
    pos = index.get_indexer(sample_ids)
    if (pos < 0).any():
        raise ValueError(f"{int((pos < 0).sum())} sample ids are not in the ledger, e.g. {sample_ids[pos < 0][:3].tolist()}")
    return pos.astype(np.int64)


def read_decisions_csv(path: str | Path, frame, ledger: Ledger, *, round_no: int,
                       source: str = schema.SOURCE_PERSON) -> Decisions:
    """A person's decisions: a CSV with ``decision`` (confirm | relabel | remove;
    blank rows are skipped), ``sample_id`` or ``rel_path``, and ``new_label``
    for relabels (a class already in the data).  Every row is checked before
    any is applied; all problems are reported together."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"decisions {path}: cannot read it as CSV ({e})") from None
    if "decision" not in df.columns or not ({"sample_id", "rel_path"} & set(df.columns)):
        raise ValueError(f"decisions {path}: needs a 'decision' column and 'sample_id' or 'rel_path'")
    df = df[df["decision"].str.strip() != ""].reset_index(drop=True)
    problems: list[str] = []
    action = df["decision"].str.strip().str.lower().to_numpy(dtype=object)
    for i in np.flatnonzero(~np.isin(action, ACTIONS))[:5]:
        problems.append(f"line {i + 2}: decision {df['decision'][i]!r} is not one of {', '.join(ACTIONS)}")
    rows = rows_of(frame, ledger)
    if "sample_id" in df.columns and (df["sample_id"] != "").all():
        try:
            ids = df["sample_id"].astype(np.int64).to_numpy()
        except ValueError:
            raise ValueError(f"decisions {path}: sample_id must be integers") from None
        index = pd.Index(np.asarray(frame[schema.SAMPLE_ID].to_numpy(dtype=np.int64)))
    else:
        ids = df["rel_path"].to_numpy(dtype=object)
        rel, _ = ledger.host(frame, schema.REL_PATH)
        index = pd.Index(rel)
    pos = index.get_indexer(ids)
    for i in np.flatnonzero(pos < 0)[:5]:
        problems.append(f"line {i + 2}: {ids[i]!r} is not in the ledger")
    new = df["new_label"].str.strip().to_numpy(dtype=object) if "new_label" in df.columns \
        else np.full(len(df), "", object)
    classes = set(rows.classes)
    bad = (action == "relabel") & ~np.isin(new, sorted(classes))
    for i in np.flatnonzero(bad)[:5]:
        problems.append(f"line {i + 2}: relabel needs new_label, one of the classes {sorted(classes)[:10]}; "
                        f"got {new[i]!r}")
    dup = pd.Series(pos[pos >= 0]).duplicated()
    if dup.any():
        problems.append(f"{int(dup.sum())} rows decide a sample twice")
    if problems:
        raise ValueError(f"decisions {path}: nothing applied; " + "; ".join(problems))
    return Decisions(pos.astype(np.int64), action, np.where(action == "relabel", new, None), source, round_no)
