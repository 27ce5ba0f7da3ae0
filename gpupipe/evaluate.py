"""Score a dedup ledger against planted ground truth (demo, tests, benchmarks).

Pair metrics count unordered pairs of samples put in one group: a true pair is
two paths in one expected group, a predicted pair two rows with the same
``dedup_group``.  Counts come from group-size contingencies, so a large
(wrong) group costs O(size), not O(size**2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import pyarrow as pa

from gpupipe import schema


@dataclass(frozen=True)
class PairScore:
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int
    exact_groups: int        # expected groups found with exactly their members
    expected_groups: int

    @property
    def precision(self) -> float:
        return self.correct_pairs / self.predicted_pairs if self.predicted_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.correct_pairs / self.true_pairs if self.true_pairs else 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "precision": round(self.precision, 4), "recall": round(self.recall, 4)}


@dataclass(frozen=True)
class InvalidScore:
    planted: int
    flagged_planted: int
    flagged_other: int           # flagged rows that were not planted as invalid
    reasons: dict[str, str]      # planted path -> reason found ("" when missed)

    @property
    def recall(self) -> float:
        return self.flagged_planted / self.planted if self.planted else 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "recall": round(self.recall, 4)}


def _c2(n: int) -> int:
    return n * (n - 1) // 2


def found_groups(ledger: pa.Table) -> dict[str, int]:
    """rel_path -> dedup_group for every valid row."""
    paths = ledger.column(schema.REL_PATH).to_pylist()
    groups = ledger.column(schema.DEDUP_GROUP).to_pylist()
    return {p: g for p, g in zip(paths, groups) if g is not None}


def score_pairs(ledger: pa.Table, expected: Iterable[frozenset[str]], *,
                only: set[str] | None = None) -> PairScore:
    """Pair precision/recall of ``ledger``'s groups against ``expected`` groups.

    only: when given, count just the pairs with at least one member in it (e.g.
    the planted files), leaving out pairs among raw-data images whose truth is
    unknown.
    """
    return score_group_map(found_groups(ledger), expected, only=only)


def score_group_map(group_of: dict[str, int], expected: Iterable[frozenset[str]], *,
                    only: set[str] | None = None) -> PairScore:
    """As `score_pairs`, from a rel_path -> group id map (any tool's output)."""
    expected = [g for g in expected if len(g) > 1]
    truth_of = {p: i for i, g in enumerate(expected) for p in g}

    def pairs(members: Iterable[str]) -> int:
        members = list(members)
        if only is None:
            return _c2(len(members))
        return _c2(len(members)) - _c2(sum(1 for p in members if p not in only))

    found: dict[int, list[str]] = {}
    for p, g in group_of.items():
        found.setdefault(g, []).append(p)
    cells: dict[tuple[int, int], list[str]] = {}
    for p, t in truth_of.items():
        if p in group_of:
            cells.setdefault((group_of[p], t), []).append(p)
    exact = sum(1 for g in expected if all(p in group_of for p in g)
                and len({group_of[p] for p in g}) == 1 and set(found[group_of[next(iter(g))]]) == set(g))
    return PairScore(
        true_pairs=sum(pairs(g) for g in expected),
        predicted_pairs=sum(pairs(m) for m in found.values()),
        correct_pairs=sum(pairs(m) for m in cells.values()),
        exact_groups=exact,
        expected_groups=len(expected),
    )


def score_invalid(ledger: pa.Table, planted: dict[str, str]) -> InvalidScore:
    paths = ledger.column(schema.REL_PATH).to_pylist()
    bad = ledger.column(schema.IS_INVALID).to_pylist()
    reason = ledger.column(schema.INVALID_REASON).to_pylist()
    flagged = {p: r for p, b, r in zip(paths, bad, reason) if b}
    return InvalidScore(
        planted=len(planted),
        flagged_planted=sum(1 for p in planted if p in flagged),
        flagged_other=sum(1 for p in flagged if p not in planted),
        reasons={p: flagged.get(p, "") for p in sorted(planted)},
    )
