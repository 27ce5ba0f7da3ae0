"""Where does the curated set lose accuracy?  Other choices of rows from the
curate runs ``bench_downstream.py`` left, trained and tested the same way
(same fixed model, epochs, seed and clean test set).

    python benchmarks/bench_downstream_variants.py [--dataset digits|fashion] [--seeds 0 1 2]
        [--test-images 10000] [--fits 2] [--only NAME ...]

Per seed, from ``<data>/seed<N>/run/ledger.parquet``:

* curated: the kept rows with their curated labels (what the benchmark trains on);
* no balance: every usable row (kept and surplus) with its curated label;
* no balance, suspects in: and the suspect rows (flagged or far, left open)
  with their given labels;
* odds gate: the balance stage re-run with an open flagged row left out only
  when the odds that its label is wrong (`models.score.label_error_odds` of
  the model-and-votes mix, over the rows rank flags, with their current
  labels) are above 0.5; the rest usable, ordered by their loss;
* suspects last: the balance stage re-run with the open flagged rows usable
  but ordered after every other open row of their class, so they are kept
  only to fill a class short of the target (rows far from every class stay
  out);
* balance, seeded order: the balance stage re-run with the open rows of a
  class in the seeded hash's order instead of lowest loss first (the
  surplus then holds a random share of them, not the hardest ones);
* balance 1.5: the balance stage re-run with classes cut to 1.5 times the
  smallest (``--balance min``, curate's default from RESULTS.md §5.2 to
  §5.4; the variants above re-run it with 1, the rule before §5.2; since
  §5.4 curate cuts nothing by default, and "curated" is "no balance");
* balance 1: the balance stage re-run with every class cut to the smallest
  (the method's exact balance, ``--balance min --balance-ratio 1``);
* curated, true labels (a diagnostic): the curated rows with their true
  labels: what the label errors left in them cost;
* later relabels reviewed (a diagnostic): the curated rows, with the
  relabels the automatic policy made after its first round given their
  true labels, as a person reviewing just those rows would (their count
  is printed): what such a review would buy;
* audit queue reviewed: as many reviews as the line above, taken from the
  top of the audit queue curate writes (`review.audit_queue`: the automatic
  relabels and removes, most doubtful first); originals among them get their
  true labels, removed ones come back with them;
* clean, as many rows (a diagnostic, with raw and clean): a seeded random
  subset of the clean originals, as many as the curated rows: what the
  curated set's size costs;
* removed relabeled: the curated rows plus the rows the automatic policy
  removed (its remove_prob: the label's probability <= 0.01) whose top
  class has p >= 0.8 (`RELABEL_REMOVED`), relabeled to that class.

``--test-images N`` (Fashion-MNIST only): test on the first N images of
Fashion-MNIST's own test split instead of the seed's 20% (500 images at
``--n 2500``, where one image is 0.2 points and a seed's whole raw-to-clean
gap can be 5 images); raw and clean are then trained again and tested on
them.  ``--fits K``: each accuracy is the mean of K trainings (seeds
seed*100 .. seed*100+K-1 of the model), against the training noise.

Reports accuracy for each choice and the share of the raw-to-clean gap it
recovers per seed, and how the open flagged rows' odds match the truth (the
planted flips): per odds bin, how many rows and the share truly mislabeled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_downstream import (fits_and_test, labelled_files, load, official_test, original_positions,  # noqa: E402
                              train_positions)

from gpupipe import schema  # noqa: E402
from gpupipe.device import resolve_device  # noqa: E402
from gpupipe.models.outlier import is_far  # noqa: E402
from gpupipe.models.score import label_error_odds, with_votes  # noqa: E402
from gpupipe.stages.balance import BalanceConfig, balance  # noqa: E402
from gpupipe.stages.rank import rows_of  # noqa: E402
from gpupipe.stages.review import audit_queue  # noqa: E402
from gpupipe.table import Ledger  # noqa: E402

BINS = (0.0, 0.25, 0.5, 0.75, 1.0001)
CHOICES = ("curated", "no balance", "no balance, suspects in", "odds gate", "suspects last", "balance, seeded order",
           "balance 1.5", "balance 1", "removed relabeled", "curated, true labels", "later relabels reviewed",
           "audit queue reviewed")
CLEAN_AS_MANY = "clean, as many rows"
RELABEL_REMOVED = 0.8


def odds_of(ledger: Ledger, frame) -> np.ndarray:
    """float (N,): `label_error_odds` of the model-and-votes mix, as the flags
    order rows (over the rows rank flags; NaN elsewhere)."""
    rows = rows_of(frame, ledger)
    probs, has = ledger.host(frame, schema.RANK_PROBS)
    votes, has_votes = ledger.host(frame, schema.RANK_VOTES)
    use = has & rows.eligible & ~is_far(*ledger.host(frame, schema.RANK_OUTLIER))
    odds = np.full(len(frame), np.nan)
    mix = with_votes(probs[use], np.where(has_votes[use, None], votes[use], np.nan))
    odds[use] = label_error_odds(rows.y[use], mix)
    return odds


def rebalanced(ledger: Ledger, frame, seed: int, *, unflag: np.ndarray, last: bool = False,
               unordered: bool = False, ratio: float = 1.0):
    """The balance stage re-run with the rows ``unflag`` no longer flagged
    (``last``: and ordered after every other open row; ``unordered``: every
    scored row's loss the same, so rows are ordered by tier, then by the
    seeded hash), classes cut to ``ratio`` times the smallest (1: the rule
    before RESULTS.md §5.2) -> pandas frame."""
    flags, _ = ledger.host(frame, schema.RANK_FLAG)
    changes = {schema.RANK_FLAG: (flags.astype(bool) & ~unflag, np.ones(len(frame), bool))}
    loss, has = ledger.host(frame, schema.RANK_LOSS)
    if last:
        changes[schema.RANK_LOSS] = (np.where(unflag, np.float32(1e30), loss).astype(np.float32), has | unflag)
    if unordered:
        changes[schema.RANK_LOSS] = (np.zeros(len(frame), np.float32), has)
    out, _ = balance(ledger.assign(frame, changes), ledger, BalanceConfig(per_class="min", seed=seed, max_ratio=ratio))
    return ledger.to_arrow(out).to_pandas()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("digits", "fashion"), default="fashion")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--n", type=int, default=2500, help="fashion: the first N training images (as the run)")
    ap.add_argument("--test-images", type=int, default=0, help="fashion: test on this many of its test split")
    ap.add_argument("--fits", type=int, default=1, help="trainings averaged per accuracy")
    ap.add_argument("--only", nargs="+", choices=CHOICES + ("raw", "clean", CLEAN_AS_MANY), default=None,
                    help="train only these (the rest: not trained)")
    ap.add_argument("--data", default=None, help="default: .bench/downstream[-fashion]")
    args = ap.parse_args()
    if args.test_images and args.dataset != "fashion":
        ap.error("--test-images: Fashion-MNIST only (digits has no other images)")
    work = Path(args.data or (".bench/downstream" + ("" if args.dataset == "digits" else "-fashion")))
    all_labels = load(args.dataset, args.n)[1]
    results = json.loads((work / "results.json").read_text())
    recorded = {r["seed"]: r for r in results["runs"]}
    imbalance = results.get("args", {}).get("imbalance", 1.0)      # the runs' long tail, if any
    dev = resolve_device("cpu")
    ledger = Ledger(dev)
    retrain = bool(args.test_images) or args.fits > 1
    names = (("raw",) if retrain else ()) + CHOICES + (("clean", CLEAN_AS_MANY) if retrain else ())
    print(f"test: {'Fashion-MNIST test split, first %d' % args.test_images if args.test_images else 'the seed' + chr(39) + 's 20%'}; "
          f"{args.fits} fit(s) per accuracy\n")
    print("| seed | " + " | ".join(names) + (" | raw (recorded) | clean (recorded)" if not retrain else "")
          + " | rows: " + " / ".join(CHOICES) + " | label errors in them |")
    print("|---" * (len(names) + (3 if not retrain else 1) + 2) + "|")
    out, calibration = [], []
    if args.test_images:
        test_files, test_y = official_test(work, args.test_images)
    for seed in args.seeds:
        root = work / f"seed{seed}"
        if not args.test_images:
            test_files, test_y = labelled_files(root / "test")
        path = root / "run" / "ledger.parquet"
        d = pq.read_table(path).to_pandas()
        frame = ledger.read(path)
        # The truth: an original's name holds its position among the seed's
        # training images (planted files are numbered after them).
        true_label = all_labels[train_positions(all_labels, seed, imbalance)]
        index = original_positions(d[schema.REL_PATH], len(true_label))
        orig = index >= 0
        truth = np.where(orig, true_label[np.where(orig, index, 0)].astype(str), None)
        wrong = orig & (truth != d[schema.BALANCE_LABEL].astype(str).to_numpy())

        open_flagged = d[schema.RANK_FLAG].fillna(False).to_numpy(bool) & d[schema.REVIEW_STATUS].isna().to_numpy()
        odds = odds_of(ledger, frame)
        gate = rebalanced(ledger, frame, seed, unflag=open_flagged & ~(odds > 0.5), last=False)
        last = rebalanced(ledger, frame, seed, unflag=open_flagged, last=True)
        unordered = rebalanced(ledger, frame, seed, unflag=np.zeros(len(d), bool), unordered=True)
        ratio = rebalanced(ledger, frame, seed, unflag=np.zeros(len(d), bool), ratio=1.5)
        exact = rebalanced(ledger, frame, seed, unflag=np.zeros(len(d), bool), ratio=1.0)
        status, reason = d[schema.BALANCE_STATUS], d[schema.BALANCE_REASON]
        usable = status.isin([schema.BAL_KEPT, schema.BAL_SURPLUS]).to_numpy()
        picks = {"curated": (d, (status == schema.BAL_KEPT).to_numpy()), "no balance": (d, usable),
                 "no balance, suspects in": (d, usable | (reason == "suspect").to_numpy()),
                 "odds gate": (gate, (gate[schema.BALANCE_STATUS] == schema.BAL_KEPT).to_numpy()),
                 "suspects last": (last, (last[schema.BALANCE_STATUS] == schema.BAL_KEPT).to_numpy()),
                 "balance, seeded order": (unordered, (unordered[schema.BALANCE_STATUS] == schema.BAL_KEPT).to_numpy()),
                 "balance 1.5": (ratio, (ratio[schema.BALANCE_STATUS] == schema.BAL_KEPT).to_numpy()),
                 "balance 1": (exact, (exact[schema.BALANCE_STATUS] == schema.BAL_KEPT).to_numpy())}
        # Rows the automatic policy removed (their label's probability <= its
        # remove_prob) whose top class has p >= RELABEL_REMOVED: relabeled to it
        # and added to the curated rows instead.
        top = np.array([np.max(p) if p is not None and len(p) else np.nan for p in d[schema.RANK_PROBS]])
        back = ((d[schema.REVIEW_STATUS] == schema.STATUS_REMOVED) & (d[schema.REVIEW_SOURCE] == schema.SOURCE_AUTO)
                & d[schema.DEDUP_KEEP].astype(bool) & ~d[schema.IS_INVALID].astype(bool)).to_numpy() \
            & (top >= RELABEL_REMOVED)
        relabeled = d.copy()
        relabeled.loc[back, schema.BALANCE_LABEL] = d.loc[back, schema.RANK_PRED]
        picks["removed relabeled"] = (relabeled, (status == schema.BAL_KEPT).to_numpy() | back)
        # Diagnostics: what the curated set's label errors cost (its rows with
        # their true labels) and what its size costs (CLEAN_AS_MANY below).
        fixed = d.copy()
        fixed.loc[orig, schema.BALANCE_LABEL] = truth[orig]
        picks["curated, true labels"] = (fixed, (status == schema.BAL_KEPT).to_numpy())
        # A person checks each relabel the automatic policy made after its
        # first round (the least precise ones, RESULTS.md §5.5) and gives the
        # true label: the curated rows, those relabels with their true labels.
        later = orig & (d[schema.REVIEW_STATUS] == schema.STATUS_RELABELED).to_numpy() \
            & (d[schema.REVIEW_SOURCE] == schema.SOURCE_AUTO).to_numpy() & (d[schema.REVIEW_ROUND] >= 2).to_numpy()
        audited = d.copy()
        audited.loc[later, schema.BALANCE_LABEL] = truth[later]
        picks["later relabels reviewed"] = (audited, (status == schema.BAL_KEPT).to_numpy())
        print(f"seed {seed}: {int(later.sum())} relabels after round 1 to review "
              f"({int((wrong & later).sum())} of them wrong)", flush=True)
        # As many reviews, in the audit queue's order (`review.audit_queue`, what
        # curate writes to review/audit.csv): each original among its first rows
        # gets its true label, a removed one comes back with it (no image of
        # no class is planted here); other files (copies) are left as they are.
        classes = json.loads((root / "run" / "rank.json").read_text())["classes"]
        q = audit_queue(frame, ledger, classes).iloc[:int(later.sum())]
        first = np.isin(d[schema.SAMPLE_ID].to_numpy(), q["sample_id"].to_numpy()) & orig
        reviewed = d.copy()
        reviewed.loc[first, schema.BALANCE_LABEL] = truth[first]
        picks["audit queue reviewed"] = (reviewed, (status == schema.BAL_KEPT).to_numpy() | first)
        print(f"seed {seed}: the audit queue's first {len(q)} rows: {int((wrong & first).sum())} wrong labels "
              f"fixed, {int((first & (status != schema.BAL_KEPT).to_numpy()).sum())} removed rows back", flush=True)
        sets = {name: (f[schema.PATH][p].tolist(), f[schema.BALANCE_LABEL][p].astype(int).tolist())
                for name, (f, p) in picks.items()}
        if retrain:
            sets = {"raw": labelled_files(root / "raw", decodable=True), **sets,
                    "clean": labelled_files(root / "clean")}
            # The clean originals, a seeded random subset as large as the curated set.
            files, ys = sets["clean"]
            pick = np.sort(np.random.default_rng(seed).permutation(len(files))[:len(sets["curated"][0])])
            sets[CLEAN_AS_MANY] = ([files[i] for i in pick], [ys[i] for i in pick])
        fits = {name: fits_and_test(dev, files, ys, test_files, test_y, epochs=args.epochs, seed=seed, fits=args.fits)
                if args.only is None or name in args.only else [float("nan")]
                for name, (files, ys) in sets.items()}
        acc = {name: float(np.mean(a)) for name, a in fits.items()}
        if not retrain:
            acc.update(raw=recorded[seed]["accuracy"]["raw"], clean=recorded[seed]["accuracy"]["clean"])
        rows = {name: int(p.sum()) for name, (_, p) in picks.items()}
        errors = {name: int((orig & (truth != f[schema.BALANCE_LABEL].astype(str).to_numpy()))[p].sum())
                  for name, (f, p) in picks.items()}
        for lo, hi in zip(BINS[:-1], BINS[1:]):
            inbin = open_flagged & orig & (odds >= lo) & (odds < hi)
            calibration.append({"seed": seed, "odds": f"{lo:.2f}-{min(hi, 1):.2f}", "rows": int(inbin.sum()),
                                "mislabeled": int(wrong[inbin].sum())})
        out.append({"seed": seed, "accuracy": acc, "fits": fits, "rows": rows, "label_errors": errors})
        cells = [f"{acc[k]:.4f}" for k in names] + ([f"{acc['raw']:.4f}", f"{acc['clean']:.4f}"] if not retrain else [])
        print(f"| {seed} | " + " | ".join(cells) + f" | {' / '.join(str(rows[k]) for k in CHOICES)} | "
              f"{' / '.join(str(errors[k]) for k in CHOICES)} |", flush=True)
        if args.fits > 1:
            print("  per fit: " + "; ".join(f"{k} " + " ".join(f"{a:.4f}" for a in fits[k])
                                            for k in names if not np.isnan(acc[k])), flush=True)
    print("\ngap recovered per seed (and of the mean gap):")
    for name in CHOICES:
        per = [(o["accuracy"][name] - o["accuracy"]["raw"]) / (o["accuracy"]["clean"] - o["accuracy"]["raw"])
               for o in out]
        mean = {k: np.mean([o["accuracy"][k] for o in out]) for k in ("raw", name, "clean")}
        print(f"- {name}: " + ", ".join(f"{x:.1%}" for x in per)
              + f" ({(mean[name] - mean['raw']) / (mean['clean'] - mean['raw']):.1%})")
    print("\nopen flagged originals by their label_error_odds, all seeds:\n| odds | rows | truly mislabeled |\n|---|---|---|")
    for b in dict.fromkeys(c["odds"] for c in calibration):
        r = sum(c["rows"] for c in calibration if c["odds"] == b)
        m = sum(c["mislabeled"] for c in calibration if c["odds"] == b)
        print(f"| {b} | {r} | {m} ({m / max(r, 1):.0%}) |")
    name = "variants" + (f"-test{args.test_images}" if args.test_images else "") + (f"-fits{args.fits}" if args.fits > 1 else "")
    (work / f"{name}.json").write_text(json.dumps({"runs": out, "calibration": calibration,
                                                   "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
