"""Two models per row instead of one: the flags and the gated policy of two
ranked rounds of the same rows (trained on different random streams) and of
their average, against the truth (issue 25).

    python benchmarks/studies/bench_two_streams.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]

RUN_*: ranked, undecided runs over the same rows (as `benchmarks/bench_cifar10n.py`
leaves ``oof-<tag>``), in pairs; their truth is read as
`benchmarks/bench_flag_count.py` reads it.  For A, B and the average of their
probabilities and neighbours' votes ("mean"), each read exactly as `rank`
and `review.auto_decisions` read one model's:

- flags (`score.flag_label_issues`, with ``models=2`` for the mean, as
  `rank --models 2` counts them): count, P, R, F1; cleanlab's
  ``find_label_issues`` on the same mix beside them;
- the gated policy's changes (default `AutoPolicy`): made, right (a relabel
  to the true class, a remove of a wrong label), clean rows changed;
- "mean, gate asks each": the mean's, with both models' probabilities in
  ``rank_model_probs``, as `rank --models 2` leaves them: the gate makes a
  change only where each model's own estimate reaches the bar too;
- "A and B alike": the changes A's and B's gates both make.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_flag_count import truth_of  # noqa: E402

from gpupipe import schema  # noqa: E402


def load(run: Path):
    from gpupipe.device import resolve_device
    from gpupipe.stages import review as rv
    from gpupipe.table import Ledger

    ledger = Ledger(resolve_device("cpu"))
    frame = rv.ensure_columns(ledger.read(run / "ledger.parquet"), ledger)
    return ledger, frame


def load_pair(a: Path, b: Path):
    """Two runs over the same rows -> (ledger A, frame A, ledger B, frame B in A's row
    order, A's rel_paths)."""
    la, fa = load(a)
    lb, fb = load(b)
    rel_a = la.host(fa, schema.REL_PATH)[0].astype(str)
    order = {r: i for i, r in enumerate(lb.host(fb, schema.REL_PATH)[0].astype(str))}
    return la, fa, lb, fb.iloc[[order[r] for r in rel_a]].reset_index(drop=True), rel_a


def pairs_from_argv(description: str):
    """RUN_A RUN_B [RUN_A2 RUN_B2 ...] from the command line -> for each pair,
    (path A, path B, `load_pair`'s five)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("runs", nargs="+")
    runs = ap.parse_args().runs
    for a, b in zip(runs[::2], runs[1::2]):
        yield (a, b, *load_pair(Path(a), Path(b)))


def with_probs(ledger, frame, probs: np.ndarray, votes: np.ndarray, has: np.ndarray, each=None):
    """``frame`` with its rank columns rebuilt from ``probs (N, K)`` / ``votes`` on rows ``has``
    (and ``each (N, M, K)``, the models' own, as `rank --models M` writes them)."""
    import pandas as pd

    from gpupipe.stages.rank import rows_of

    rows = rows_of(frame, ledger)
    n = len(frame)
    f = frame.copy()
    y = np.maximum(rows.y, 0)
    pg = np.where(has, probs[np.arange(n), y], np.nan)
    f[schema.RANK_PROBS] = pd.Series([list(map(float, p)) if h else None for p, h in zip(probs, has)],
                                     index=f.index, dtype=object)
    f[schema.RANK_VOTES] = pd.Series([list(map(float, v)) if h and np.isfinite(v).all() else None
                                      for v, h in zip(votes, has)], index=f.index, dtype=object)
    if each is not None:
        f[schema.RANK_MODEL_PROBS] = pd.Series([list(map(float, e.ravel())) if h else None
                                                for e, h in zip(each, has)], index=f.index, dtype=object)
    f[schema.RANK_PROB_GIVEN] = pg.astype(np.float32)
    f[schema.RANK_LOSS] = (-np.log(np.clip(pg, 1e-12, 1.0))).astype(np.float32)
    f[schema.RANK_PRED] = np.where(has, np.asarray(rows.classes, object)[probs.argmax(1)], None)
    return f


def arrays(ledger, frame, k: int):
    probs, has = ledger.host(frame, schema.RANK_PROBS)
    votes, has_v = ledger.host(frame, schema.RANK_VOTES)
    p = np.zeros((len(frame), k))
    p[has] = probs[has].astype(np.float64)
    v = np.full((len(frame), k), np.nan)
    v[has_v] = votes[has_v].astype(np.float64)
    return p, v, has


def flags_of(ledger, frame, err_of: dict, models: int = 1):
    from cleanlab.filter import find_label_issues

    from gpupipe.models.outlier import is_far
    from gpupipe.models.score import flag_label_issues, with_votes
    from gpupipe.stages.rank import rows_of

    rows = rows_of(frame, ledger)
    p, v, has = arrays(ledger, frame, len(rows.classes))
    use = has & rows.eligible & ~is_far(*ledger.host(frame, schema.RANK_OUTLIER))
    rel = ledger.host(frame, schema.REL_PATH)[0].astype(str)
    err = np.array([err_of[r] for r in rel[use]])
    y = rows.y[use]
    out = {}
    for name, fl in (("gpupipe", flag_label_issues(y, p[use], v[use], models=models)),
                     ("cleanlab", find_label_issues(y, with_votes(p[use], v[use]), n_jobs=1))):
        tp = int((fl & err).sum())
        pr, rc = tp / max(fl.sum(), 1), tp / max(err.sum(), 1)
        out[name] = (int(fl.sum()), pr, rc, 2 * pr * rc / max(pr + rc, 1e-12))
    return out


def changes(ledger, frame):
    from gpupipe.stages import review as rv

    # the gate alone, as before RESULTS.md §40 held colour relabels by default
    d = rv.auto_decisions(frame, ledger, rv.AutoPolicy(colour_relabels="always"), round_no=1)
    rel = ledger.host(frame, schema.REL_PATH)[0].astype(str)
    given = ledger.host(frame, schema.LABEL)[0]
    return {rel[p]: (a, n, str(given[p])) for p, a, n in zip(d.positions, d.action, d.new_label) if a != "confirm"}


def main() -> None:
    from gpupipe.stages.rank import rows_of

    for a, b, la, fa, lb, fb, rel_a in pairs_from_argv(__doc__.split("\n")[0]):
        rows = rows_of(fa, la)
        k = len(rows.classes)
        true, junk = truth_of(Path(a))
        given = la.host(fa, schema.LABEL)[0]
        err_of = {r: (r in junk or true.get(r, str(g)) != str(g)) for r, g in zip(rel_a, given)}
        pa_, va, ha = arrays(la, fa, k)
        pb, vb, hb = arrays(lb, fb, k)
        both = ha & hb
        vm = np.where(np.isnan(va) | np.isnan(vb), np.nan, (va + vb) / 2)
        fm = with_probs(la, fa, (pa_ + pb) / 2, vm, both)
        fe = with_probs(la, fa, (pa_ + pb) / 2, vm, both, each=np.stack([pa_, pb], axis=1))
        truth = {r: true.get(r, str(g)) for r, g in zip(rel_a, given)}
        print(f"## {a} + {b}")
        print("| model | flags: count, P, R, F1 | cleanlab: count, F1 | changes | right | clean changed |")
        print("|---|---|---|---|---|---|")
        ch = {}
        for name, lg, fr in (("A", la, fa), ("B", lb, fb), ("mean", la, fm), ("mean, gate asks each (--models 2)", la, fe)):
            fl = flags_of(lg, fr, err_of, models=1 if name in ("A", "B") else 2)
            ch[name] = changes(lg, fr)
            ok = sum((v[1] == truth[r]) if v[0] == "relabel" else err_of[r] for r, v in ch[name].items())
            clean = sum(not err_of[r] for r in ch[name])
            g, c = fl["gpupipe"], fl["cleanlab"]
            print(f"| {name} | {g[0]}, {g[1]:.3f}, {g[2]:.3f}, **{g[3]:.3f}** | {c[0]}, {c[3]:.3f} | "
                  f"{len(ch[name])} | {ok} | {clean} |")
        inter = {r: v for r, v in ch["A"].items() if ch["B"].get(r) == v}
        for name, c in (("A and B alike", inter),):
            ok = sum((v[1] == truth[r]) if v[0] == "relabel" else err_of[r] for r, v in c.items())
            print(f"| {name} | | | {len(c)} | {ok} | {sum(not err_of[r] for r in c)} |")
        print()


if __name__ == "__main__":
    main()
