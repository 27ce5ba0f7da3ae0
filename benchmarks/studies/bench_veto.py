"""A second opinion that may only say no: the gated policy's changes of one
round (A), each kept or vetoed by another round's probabilities over the same
rows (B: e.g. linear heads on `gpupipe pretrain`'s self-supervised features),
against the truth (issue 25).

    python benchmarks/studies/bench_veto.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]

RUN_*: ranked, undecided runs over the same rows (``oof-<tag>`` of
`benchmarks/bench_cifar10n.py`), in pairs.  A's changes are those of the
default `AutoPolicy` on A alone.  Each rule below keeps a change only where B
agrees in the way it names:

- "B's top": B's most likely class is A's new label (a relabel), or is not
  the given label (a remove);
- "B doubts": B gives the given label less than a half;
- "B prefers": B gives A's new label more than the given one (a relabel), or
  doubts the given label (a remove).

Prints each change (B's probabilities of the given and the new label, whether
the change is right, whether the row was clean) and a line per rule: changes
kept, right, clean.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_flag_count import truth_of  # noqa: E402
from bench_two_streams import arrays, pairs_from_argv  # noqa: E402

from gpupipe import schema  # noqa: E402


def main() -> None:
    from gpupipe.stages import review as rv
    from gpupipe.stages.rank import rows_of

    for a, b, la, fa, lb, fb, rel_a in pairs_from_argv(__doc__.split("\n")[0]):
        rows = rows_of(fa, la)
        cls = {c: i for i, c in enumerate(rows.classes)}
        pb, _, hb = arrays(lb, fb, len(rows.classes))
        true, junk = truth_of(Path(a))
        given = la.host(fa, schema.LABEL)[0].astype(str)
        # the gate alone, as before RESULTS.md §40 held colour relabels by default
        d = rv.auto_decisions(fa, la, rv.AutoPolicy(colour_relabels="always"), round_no=1)
        print(f"## {a} vetoed by {b}\n")
        print("| row | action | given -> new | B: given, new, top | right | clean |")
        print("|---|---|---|---|---|---|")
        keep = {"B's top": [], "B doubts": [], "B prefers": []}
        for p, act, new in zip(d.positions, d.action, d.new_label):
            if act == "confirm":
                continue
            r, g = rel_a[p], given[p]
            err = r in junk or true.get(r, g) != g
            right = (new == true.get(r)) if act == "relabel" else err
            pg = pb[p, cls[g]] if hb[p] else np.nan
            pn = pb[p, cls[new]] if act == "relabel" and hb[p] else np.nan
            top = rows.classes[int(pb[p].argmax())] if hb[p] else "-"
            print(f"| {r} | {act} | {g} -> {new or '-'} | {pg:.3f}, {pn:.3f}, {top} | {int(right)} | {int(not err)} |")
            rule = {"B's top": (top == new) if act == "relabel" else (top != g),
                    "B doubts": pg < 0.5,
                    "B prefers": (pn > pg) if act == "relabel" else (pg < 0.5)}
            for name, ok in rule.items():
                if ok:
                    keep[name].append((right, not err))
        print()
        print("| rule | changes kept | right | clean |")
        print("|---|---:|---:|---:|")
        for name, kept in keep.items():
            print(f"| {name} | {len(kept)} | {sum(k[0] for k in kept)} | {sum(k[1] for k in kept)} |")
        print()


if __name__ == "__main__":
    main()
