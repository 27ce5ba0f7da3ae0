"""Balance and splits on the real demo ledger (digits with planted duplicates
and invalid files): exact class counts, trust order, stratification, dedup
groups kept whole, seeded reproduction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gpupipe import schema
from gpupipe.device import cpu_device
from gpupipe.stages.balance import BalanceConfig, balance
from gpupipe.stages.split import SplitConfig, split
from gpupipe.table import Ledger

L = Ledger(cpu_device())


@pytest.fixture
def frame(digits_run):
    table, _ = digits_run
    return L.from_arrow(table)


def _pd(frame) -> pd.DataFrame:
    return L.to_arrow(frame).to_pandas()


def test_balance_keeps_the_smallest_class_count_of_every_class(frame, digits_planted):
    _, truth = digits_planted
    out, stats = balance(frame, L, BalanceConfig(per_class="min", max_ratio=1))
    d = _pd(out)
    usable = d[~d[schema.IS_INVALID] & d[schema.DEDUP_KEEP]]
    smallest = usable.groupby(schema.LABEL).size().min()
    kept = d[d[schema.BALANCE_STATUS] == schema.BAL_KEPT]
    assert stats.target == smallest
    assert (kept.groupby(schema.BALANCE_LABEL).size() == smallest).all() and len(kept) == 10 * smallest
    excluded = d[d[schema.BALANCE_STATUS] == schema.BAL_EXCLUDED]
    assert (excluded[schema.BALANCE_REASON] == "invalid").sum() == len(truth.invalid_paths())
    assert (excluded[schema.BALANCE_REASON] == "duplicate").sum() == (~d[schema.DEDUP_KEEP] & ~d[schema.IS_INVALID]).sum()
    surplus = d[d[schema.BALANCE_STATUS] == schema.BAL_SURPLUS]
    assert len(surplus) == len(usable) - len(kept) and (surplus[schema.BALANCE_REASON] == "over_target").all()
    for _, g in surplus.groupby(schema.BALANCE_LABEL):                 # 0..m-1 per class
        assert sorted(g[schema.BALANCE_SURPLUS_RANK]) == list(range(len(g)))
    assert len(d) == len(frame)                                         # nothing deleted


def test_balance_cuts_only_classes_much_bigger_than_the_smallest(frame):
    """The "min" target is 1.5 times the smallest class: the digits'
    classes, a few percent apart, keep every usable row; with one class cut
    to 40 rows by a review, every other class is cut to 60.  The default
    (no target) keeps every usable row of that long tail."""
    d = _pd(frame)
    usable = (~d[schema.IS_INVALID] & d[schema.DEDUP_KEEP]).to_numpy()
    counts = d[usable].groupby(schema.LABEL).size()
    assert counts.max() < 1.5 * counts.min()                            # as curation leaves a balanced set
    out, stats = balance(frame, L, BalanceConfig(per_class="min"))
    b = _pd(out)
    assert stats.target == int(1.5 * counts.min()) and (b[schema.BALANCE_STATUS] == schema.BAL_KEPT).sum() == usable.sum()

    small = np.flatnonzero(usable & (d[schema.LABEL] == "0").to_numpy())[40:]
    status = np.full(len(d), None, object)
    status[small] = schema.STATUS_REMOVED
    f = L.assign(frame, {schema.REVIEW_STATUS: (status, status != None),  # noqa: E711
                         schema.REVIEW_SOURCE: (np.full(len(d), "person", object), status != None)})  # noqa: E711
    out, stats = balance(f, L, BalanceConfig())
    assert stats.target is None and (_pd(out)[schema.BALANCE_STATUS] == schema.BAL_SURPLUS).sum() == 0
    assert (_pd(out)[schema.BALANCE_STATUS] == schema.BAL_KEPT).sum() == usable.sum() - len(small)
    out, stats = balance(f, L, BalanceConfig(per_class="min"))
    kept = _pd(out).query(f"{schema.BALANCE_STATUS} == '{schema.BAL_KEPT}'").groupby(schema.BALANCE_LABEL).size()
    assert stats.target == 60 and kept["0"] == 40 and (kept.drop("0") == 60).all()
    out, stats = balance(f, L, BalanceConfig(per_class="min", max_ratio=1))
    assert stats.target == 40 and (_pd(out)[schema.BALANCE_STATUS] == schema.BAL_KEPT).sum() == 400


def test_balance_keeps_the_most_trustworthy_first_and_caps(frame):
    d = _pd(frame)
    n = len(d)
    rng = np.random.default_rng(0)
    three = np.flatnonzero((d[schema.LABEL] == "3").to_numpy() & d[schema.DEDUP_KEEP].to_numpy())
    person = three[:30]
    loss = rng.random(n).astype(np.float32)
    status = np.full(n, None, object)
    status[person] = schema.STATUS_CERTIFIED
    f = L.assign(frame, {
        schema.REVIEW_STATUS: (status, status != None),  # noqa: E711
        schema.REVIEW_LABEL: (d[schema.LABEL].to_numpy(object), status != None),  # noqa: E711
        schema.REVIEW_SOURCE: (np.full(n, "person", object), status != None),  # noqa: E711
        schema.RANK_LOSS: (loss, ~np.isin(np.arange(n), person)),
        schema.RANK_FLAG: (np.zeros(n, bool), None),
    })
    out, stats = balance(f, L, BalanceConfig(per_class=50))
    b = _pd(out)
    kept3 = b[(b[schema.BALANCE_LABEL] == "3") & (b[schema.BALANCE_STATUS] == schema.BAL_KEPT)]
    assert len(kept3) == 50 and set(person) <= set(kept3.index)         # certified first ...
    others = b.loc[three].drop(index=person)
    others = others[others[schema.BALANCE_STATUS] != schema.BAL_EXCLUDED]
    lowest = others.sort_values(schema.RANK_LOSS).index[:20]
    assert set(lowest) == set(kept3.index) - set(person)                # ... then the lowest loss
    assert (b.loc[person, schema.BALANCE_TIER] == schema.TIER_REVIEWED).all()
    out, stats = balance(f, L, BalanceConfig(per_class="none", cap=400))
    b = _pd(out)
    assert stats.target == 40 and (b[schema.BALANCE_STATUS] == schema.BAL_KEPT).sum() == 400
    assert (b.loc[b[schema.BALANCE_STATUS] == schema.BAL_SURPLUS, schema.BALANCE_REASON] == "over_cap").all()


def test_balance_excludes_open_rows_far_from_every_class(frame):
    """A row the review left open whose outlier score is >= FAR is excluded as
    suspect, like a flagged one (the flags leave such rows out); a decided one
    and a row without a score are not."""
    from gpupipe.models.outlier import FAR

    d = _pd(frame)
    n = len(d)
    usable = np.flatnonzero(d[schema.DEDUP_KEEP].to_numpy() & ~d[schema.IS_INVALID].to_numpy())
    far_open, far_certified, no_score, near = usable[:5], usable[5:8], usable[8:12], usable[12:]
    score = np.zeros(n, np.float32)
    score[far_open] = FAR
    score[far_certified] = FAR + 3
    score[no_score] = np.nan
    status = np.full(n, None, object)
    status[far_certified] = schema.STATUS_CERTIFIED
    f = L.assign(frame, {
        schema.REVIEW_STATUS: (status, status != None),  # noqa: E711
        schema.REVIEW_LABEL: (d[schema.LABEL].to_numpy(object), status != None),  # noqa: E711
        schema.REVIEW_SOURCE: (np.full(n, "person", object), status != None),  # noqa: E711
        schema.RANK_LOSS: (np.full(n, 0.1, np.float32), None),
        schema.RANK_FLAG: (np.zeros(n, bool), None),
        schema.RANK_OUTLIER: (score, ~np.isin(np.arange(n), no_score)),
    })
    b = _pd(balance(f, L, BalanceConfig(per_class="none"))[0])
    assert (b.loc[far_open, schema.BALANCE_REASON] == "suspect").all()
    assert (b.loc[np.concatenate([far_certified, no_score, near]), schema.BALANCE_STATUS] == schema.BAL_KEPT).all()


def test_suspect_rows_pending_review_do_not_cut_every_class(frame):
    """Most of one class flagged and undecided (a class the model confuses):
    its suspects are excluded, but the "min" target counts them as the class's
    rows, so the other classes are not cut down to its few usable ones."""
    d = _pd(frame)
    n = len(d)
    usable = d[schema.DEDUP_KEEP].to_numpy() & ~d[schema.IS_INVALID].to_numpy()
    counts = d[usable].groupby(schema.LABEL).size()
    confused = counts.index[0]
    rows = np.flatnonzero(usable & (d[schema.LABEL] == confused).to_numpy())
    flagged = np.zeros(n, bool)
    flagged[rows[: int(0.8 * len(rows))]] = True
    f = L.assign(frame, {schema.RANK_LOSS: (np.full(n, 0.1, np.float32), None), schema.RANK_FLAG: (flagged, None)})
    b, stats = balance(f, L, BalanceConfig(per_class="min", max_ratio=1))
    b = _pd(b)
    assert (b.loc[flagged, schema.BALANCE_REASON] == "suspect").all()
    assert stats.classes[str(confused)] == {"usable": len(rows) - flagged.sum(), "suspect": flagged.sum(),
                                            "kept": len(rows) - flagged.sum(), "surplus": 0}
    assert stats.target == min(counts)                 # as without the flags: the pending rows count
    others = b[(b[schema.BALANCE_STATUS] == schema.BAL_KEPT) & (b[schema.BALANCE_LABEL] != str(confused))]
    assert others.groupby(schema.BALANCE_LABEL).size().min() == min(counts)


def test_splits_are_stratified_group_whole_and_seeded(frame):
    bal, _ = balance(frame, L, BalanceConfig(per_class="none"))
    out, stats = split(bal, L, SplitConfig(test=0.1, folds=8, seed=0))
    d = _pd(out)
    kept = d[d[schema.BALANCE_STATUS] == schema.BAL_KEPT]
    per_class = kept.groupby(schema.BALANCE_LABEL)
    for c, g in per_class:                                              # test ~10% of each class
        assert abs((g[schema.SPLIT_SET] == "test").sum() - 0.1 * len(g)) < 1
        folds = g.loc[g[schema.SPLIT_SET] == "train", schema.SPLIT_FOLD].value_counts()
        assert len(folds) == 8 and folds.max() - folds.min() <= 1     # each class spread evenly
    assert stats.test == round(0.1 * len(kept)) and stats.test + stats.train == len(kept)
    assert max(stats.folds) - min(stats.folds) <= 1
    assert kept.loc[kept[schema.SPLIT_SET] == "test", schema.SPLIT_FOLD].isna().all()
    # Dedup groups never straddle: every member of a group has its kept row's set and fold.
    grouped = d[d[schema.SPLIT_SET].notna()].groupby(schema.DEDUP_GROUP)
    assert (grouped[schema.SPLIT_SET].nunique() == 1).all()
    assert (grouped[schema.SPLIT_FOLD].nunique(dropna=False) == 1).all()
    dups = d[~d[schema.DEDUP_KEEP] & d[schema.DEDUP_GROUP].notna()]
    assert dups[schema.SPLIT_SET].notna().all() and len(dups) > 40
    # Seeds: the same seed reproduces exactly; another differs.
    again = _pd(split(bal, L, SplitConfig(test=0.1, folds=8, seed=0))[0])
    other = _pd(split(bal, L, SplitConfig(test=0.1, folds=8, seed=1))[0])
    cols = [schema.SPLIT_SET, schema.SPLIT_FOLD]
    assert again[cols].equals(d[cols]) and not other[cols].equals(d[cols])


def test_split_test_size_as_a_count_and_bad_settings(frame):
    bal, _ = balance(frame, L, BalanceConfig())
    _, stats = split(bal, L, SplitConfig(test=37, folds=3))
    assert stats.test == 37 and len(stats.folds) == 3
    with pytest.raises(ValueError):
        split(bal, L, SplitConfig(folds=1))
