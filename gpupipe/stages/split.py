"""The split stage: a class-stratified random test set, then N folds over the rest.

Reads: ingest, dedup, balance columns.  Adds: `schema.SPLITS`.

The unit of assignment is the dedup group: its kept row is drawn, and every
other member (a duplicate, excluded from the curated set) gets the same set
and fold, so a group never straddles test and train, nor a fold's train and
validation, even for someone who adds the duplicates back.  Fold f's
validation set is the train rows with ``split_fold == f``; its training set,
the train rows with any other fold.  Per class, rows are shuffled with a
seeded hash of their sample id (independent of row order) and dealt: the
first ``round(test * n_class)`` to test, the rest round-robin to the folds,
so every fold and the test set hold each class in proportion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gpupipe import schema
from gpupipe.table import Ledger
from gpupipe.xputil import apportion, splitmix64


@dataclass(frozen=True)
class SplitConfig:
    """test: a fraction (0 <= test < 1) or a number of rows (>= 1) for the test set.
    folds: N >= 2 folds over the train rows."""

    test: float = 0.1
    folds: int = 8
    seed: int = 0


@dataclass
class SplitStats:
    test: int
    train: int
    folds: list[int]                       # validation rows per fold
    per_class: dict[str, dict[str, int]]   # class -> test, train


def split(frame, ledger: Ledger, cfg: SplitConfig):
    """-> (frame with the SPLIT columns, SplitStats)."""
    if cfg.folds < 2:
        raise ValueError("folds must be at least 2")
    if cfg.test < 0:
        raise ValueError("test must be >= 0")
    n = len(frame)
    ids, _ = ledger.host(frame, schema.SAMPLE_ID)
    status, _ = ledger.host(frame, schema.BALANCE_STATUS)
    label, _ = ledger.host(frame, schema.BALANCE_LABEL)
    group, in_group = ledger.host(frame, schema.DEDUP_GROUP)
    kept = status == schema.BAL_KEPT
    total = int(kept.sum())
    test_total = int(round(cfg.test * total)) if cfg.test < 1 else min(int(cfg.test), total)

    classes = sorted({str(v) for v in label[kept]})
    counts = np.array([(label[kept] == c).sum() for c in classes], np.int64)
    quota = apportion(test_total, counts)
    key = splitmix64(ids, cfg.seed)
    is_test = np.zeros(n, bool)
    fold = np.full(n, -1, np.int64)
    offset = 0
    for c, q in zip(classes, quota):
        members = np.flatnonzero(kept & (label == c))
        members = members[np.argsort(key[members], kind="stable")]
        is_test[members[:q]] = True
        rest = members[q:]
        fold[rest] = (np.arange(len(rest)) + offset) % cfg.folds   # continue the deal across classes
        offset += len(rest)

    # Every member of a kept row's dedup group follows it.
    sets = np.full(n, None, object)
    sets[kept] = np.where(is_test[kept], schema.SET_TEST, schema.SET_TRAIN)
    rep = pd.Series(np.flatnonzero(kept), index=ids[kept])
    follow = in_group & ~kept
    src = rep.reindex(group[follow]).to_numpy()
    has_src = ~np.isnan(src)
    tgt = np.flatnonzero(follow)[has_src]
    src = src[has_src].astype(np.int64)
    sets[tgt], fold[tgt] = sets[src], fold[src]
    is_train = sets == schema.SET_TRAIN

    frame = ledger.assign(frame, {
        schema.SPLIT_SET: (sets, sets != None),  # noqa: E711
        schema.SPLIT_FOLD: (np.where(is_train, fold, 0).astype(np.int16), is_train),
    })
    stats = SplitStats(
        test=int((kept & is_test).sum()), train=int((kept & ~is_test).sum()),
        folds=[int((kept & ~is_test & (fold == f)).sum()) for f in range(cfg.folds)],
        per_class={c: {"test": int(q), "train": int(k - q)} for c, q, k in zip(classes, quota, counts)},
    )
    return frame, stats

