"""`gpupipe demo`: the embedded default dataset, curated end to end, found vs planted.

The dataset is scikit-learn's 1,797 real handwritten digits (8x8, upscaled 4x
to 32x32 so that near-duplicate edits are meaningful), written as PNG files in
``train/val/test`` ImageFolder splits, with planted byte copies (some across
splits: leakage), cross-class copies (label conflicts), lossless re-encodes,
near duplicates of twelve kinds (`gpupipe.transforms`), one invalid file of each kind, and (for the
curate demo) 8% of the labels flipped to another class.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from gpupipe import schema
from gpupipe.datasets import INVALID_KINDS, NEAR_KINDS
from gpupipe.evaluate import score_invalid, score_pairs
from gpupipe.runner import LEDGER

PLANT = dict(
    upscale=4, n_byte_copies=12, n_cross_class_copies=4, n_reencodes=12,
    n_near={kind: 4 for kind in NEAR_KINDS}, n_corrupt={kind: 1 for kind in INVALID_KINDS},
    split_fractions={"train": 0.8, "val": 0.1, "test": 0.1}, seed=0,
)


DEMO_FLIP_RATE = 0.08


def build_demo_dataset(root: Path, *, flip_rate: float = 0.0):
    """Write the demo tree under ``root`` (replacing it) and return its GroundTruth.

    ``flip_rate``: share of the originals written under a wrong class folder;
    their paths and true classes are in ``truth.params["label_flips"]``.
    """
    from gpupipe.datasets import flip_labels, load_digits_images, plant_dataset

    if root.exists():
        shutil.rmtree(root)
    images, labels = load_digits_images()
    noisy, flipped = flip_labels(labels, rate=flip_rate, seed=1) if flip_rate else (labels, labels < 0)
    truth = plant_dataset(images, noisy, root, class_names=[str(d) for d in range(10)], **PLANT)
    truth.params["label_flips"] = {p: str(labels[i]) for p, i in _original_index(truth).items() if flipped[i]}
    return truth


def _original_index(truth) -> dict[str, int]:
    return {p: int(p.rsplit("_", 1)[1].split(".")[0]) for p in truth.originals}


def run_demo(out: Path, options, progress: Callable | None = None) -> int:
    """Curate the demo dataset into ``out/run``; print found vs planted."""
    from gpupipe.runner import run_curate

    data, run = out / "digits", out / "run"
    truth = build_demo_dataset(data, flip_rate=DEMO_FLIP_RATE)
    truth.to_json(out / "planted.json")
    res = run_curate(data, run, options, progress=progress, log=lambda m: print(m, flush=True))
    ledger = pq.read_table(run / LEDGER)
    from gpupipe.cli import format_summary
    from gpupipe.runner import SUMMARY, RunSummary

    print()
    print(format_summary(RunSummary(**json.loads((run / SUMMARY).read_text()))))
    print()
    print(report(ledger, truth))
    print(label_report(ledger, truth))
    if (run / "review" / "audit.csv").exists():
        print(audit_report(run / "review" / "audit.csv", truth))
    print(f"\nwrote {run / 'ledger.parquet'}, {run / 'report.html'} and the export in {run / 'export'}"
          if res.stopped == "done" else f"\nawaiting review: {res.queue}")
    return 0


def label_report(ledger, truth) -> str:
    """Planted label flips vs what the rank/review stage did with them."""
    d = ledger.to_pandas()
    if schema.REVIEW_STATUS not in d.columns:
        return "  label flips: not ranked"
    flips = truth.params.get("label_flips", {})
    d = d[d[schema.REL_PATH].isin(truth.originals)]
    is_flip = d[schema.REL_PATH].isin(flips)
    fixed = is_flip & (d[schema.REVIEW_LABEL] == d[schema.REL_PATH].map(flips))
    removed = is_flip & (d[schema.REVIEW_STATUS] == schema.STATUS_REMOVED)
    flagged = is_flip & d[schema.REVIEW_STATUS].isna() & d[schema.RANK_FLAG]
    changed_clean = ~is_flip & d[schema.REVIEW_STATUS].isin([schema.STATUS_RELABELED, schema.STATUS_REMOVED])
    kept_wrong = is_flip & (d.get(schema.BALANCE_STATUS, "kept") == schema.BAL_KEPT) & ~fixed
    return (f"  label flips planted: {int(is_flip.sum())}; relabeled to the true class {int(fixed.sum())}, "
            f"removed {int(removed.sum())}, left open but flagged {int(flagged.sum())}; still wrong in the "
            f"curated set {int(kept_wrong.sum())}; clean samples relabeled or removed {int(changed_clean.sum())}")


def audit_report(path: Path, truth) -> str:
    """Where the label errors the curated set keeps (an automatic relabel to a
    wrong class, a flip left open) and the clean samples the policy removed
    sit in the audit queue (1 = its first row)."""
    import pandas as pd

    q = pd.read_csv(path, dtype=str, keep_default_na=False)
    flips = truth.params.get("label_flips", {})
    true = q["rel_path"].map(lambda r: flips.get(r)).fillna(q["given_label"])
    original = q["rel_path"].isin(list(truth.originals))
    error = original & (q["auto_action"] != "remove") & (q["label"] != true)
    lost = original & (q["auto_action"] == "remove") & ~q["rel_path"].isin(list(flips))
    at = [int(i) + 1 for i in error.to_numpy().nonzero()[0]]
    gone = [int(i) + 1 for i in lost.to_numpy().nonzero()[0]]
    counts = q["auto_action"].value_counts()
    return (f"  audit queue ({path.name}): {int(counts.get('relabel', 0))} relabels, {int(counts.get('open', 0))} "
            f"open rows, {int(counts.get('remove', 0))} removes; label errors at rows {at}, clean samples "
            f"removed at rows {gone}")


def report(ledger, truth) -> str:
    """Found vs planted, one line per planted kind, then pair precision/recall."""
    rows = {p: i for i, p in enumerate(ledger.column(schema.REL_PATH).to_pylist())}
    group = ledger.column(schema.DEDUP_GROUP).to_pylist()
    kind = ledger.column(schema.DEDUP_KIND).to_pylist()
    reason = ledger.column(schema.INVALID_REASON).to_pylist()
    conflict = ledger.column(schema.DEDUP_LABEL_CONFLICT).to_pylist()
    leak = ledger.column(schema.DEDUP_SPLIT_LEAK).to_pylist()
    planted: Counter = Counter()
    found: Counter = Counter()
    notes: dict[str, Counter] = defaultdict(Counter)
    for it in truth.items:
        key = (it.category, it.kind)
        planted[key] += 1
        r = rows[it.path]
        if it.category == "invalid":
            found[key] += reason[r] is not None
            notes[key][reason[r] or "missed"] += 1
        else:
            s = rows[it.source]
            ok = group[r] is not None and group[r] == group[s]
            found[key] += ok
            notes[key][kind[r] if ok else "missed"] += 1
            if it.kind == "cross_class_copy":
                notes[key]["label conflict flagged"] += bool(conflict[r])
            if it.kind == "cross_split_copy":
                notes[key]["split leak flagged"] += bool(leak[r])
    lines = ["planted vs found", f"  {'category':9} {'kind':20} {'planted':>7} {'found':>6}  how"]
    for key in sorted(planted):
        how = ", ".join(f"{k} {v}" for k, v in sorted(notes[key].items()))
        lines.append(f"  {key[0]:9} {key[1]:20} {planted[key]:7d} {found[key]:6d}  {how}")
    pairs = score_pairs(ledger, truth.expected_groups("near"))
    planted = score_pairs(ledger, truth.expected_groups("near"), only={it.path for it in truth.items if it.category != "invalid"})
    inv = score_invalid(ledger, truth.invalid_paths())
    lines.append(
        f"  duplicate pairs: precision {pairs.precision:.3f}, recall {pairs.recall:.3f} "
        f"({pairs.correct_pairs}/{pairs.true_pairs} true pairs, {pairs.predicted_pairs} predicted); "
        f"groups found exactly {pairs.exact_groups}/{pairs.expected_groups}"
    )
    lines.append(
        f"  pairs that touch a planted file: precision {planted.precision:.3f} "
        f"({planted.correct_pairs}/{planted.predicted_pairs}); the others are near-identical "
        f"images already in the raw data, which no ground truth lists"
    )
    lines.append(f"  invalid files: {inv.flagged_planted}/{inv.planted} flagged, {inv.flagged_other} other rows flagged")
    if truth.preexisting_groups:
        lines.append(f"  (the raw digits already hold {len(truth.preexisting_groups)} groups of identical images)")
    return "\n".join(lines)
