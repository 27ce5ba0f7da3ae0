"""Do two rounds of the same data, trained on different random streams, agree
on the automatic policy's changes, and are the changes both make more often
right?

    python benchmarks/studies/bench_gate_agreement.py TRUTH.json RUN_A RUN_B [RUN_A2 RUN_B2 ...]

RUN_*: run directories whose last round was scored and not yet decided (as
`benchmarks/bench_cifar10n.py` leaves ``oof-<tag>``), in pairs over the same
rows; TRUTH.json: rel_path -> true class.  For each pair: the gated policy's
relabels and removes (`gpupipe.stages.review.auto_decisions`, defaults) in
each run, how many are right (a relabel to the true class; a remove of a
wrong label), and the same for the changes both runs make alike.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gpupipe import schema


def changes(run: Path) -> dict[str, tuple[str, str | None, str]]:
    """rel_path -> (action, new label, given label) of the changes the default gated policy makes."""
    from gpupipe.device import resolve_device
    from gpupipe.stages import review as rv
    from gpupipe.table import Ledger

    ledger = Ledger(resolve_device("cpu"))
    frame = rv.ensure_columns(ledger.read(run / "ledger.parquet"), ledger)
    # the gate alone, as before RESULTS.md §40 held colour relabels by default
    d = rv.auto_decisions(frame, ledger, rv.AutoPolicy(colour_relabels="always"), round_no=1)
    rel = ledger.host(frame, schema.REL_PATH)[0].astype(str)
    given = ledger.host(frame, schema.LABEL)[0]
    return {rel[p]: (a, n, str(given[p])) for p, a, n in zip(d.positions, d.action, d.new_label)
            if a != "confirm"}


def right(change: tuple[str, str | None, str], truth: str) -> bool:
    action, new, given = change
    return new == truth if action == "relabel" else given != truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("truth")
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    truth = json.loads(Path(args.truth).read_text())
    for a, b in zip(args.runs[::2], args.runs[1::2]):
        ca, cb = changes(Path(a)), changes(Path(b))
        both = {k: v for k, v in ca.items() if cb.get(k) == v}
        for name, c in ((a, ca), (b, cb), ("both", both)):
            ok = sum(right(v, truth[k]) for k, v in c.items())
            print(f"{name}: {len(c)} changes, {ok} right, {len(c) - ok} wrong")


if __name__ == "__main__":
    main()
