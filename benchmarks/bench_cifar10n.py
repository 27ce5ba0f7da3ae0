"""Label errors in real photographs with real human noise: CIFAR-10N.

    python benchmarks/bench_cifar10n.py --cifar /tmp/cifar10 \
        --labels ../shared/data/cifar10/cifar10n_labels_dev.csv --part choose|judge|third \
        [--noise aggre|worse|random1] [--augment auto|light|photo|method] [--n 10000]
        [--backbone backbones:small_cnn_features --backbone-weights W.pt] [--init-weights W.pt]
        [--lr-decay D] [--tag NAME]

10,000 CIFAR-10 training images filed under the labels Mechanical Turk workers
gave them (CIFAR-10N ``aggre``: the majority of three, 9% differ from the
original label; ``random1``: one worker's, ~17%; ``worse``: ~40%).  The
original label is the truth.  Parts of
the development labels (images 0-29,999): ``choose`` = images 0-9,999 (where
rules and defaults are chosen), ``judge`` = 10,000-19,999 (where they are
reported), ``third`` = 20,000-29,999 (a second part to report on).

1. ``gpupipe dedup`` on the folder, then one out-of-fold round of ``rank``
   (``--mode oof``, the CLI's defaults otherwise); its ledger is kept so the
   automatic policy can be re-read without retraining (``--policy-only``).
2. Out-of-fold accuracy against the truth; flags (``is_mislabeled_issue``)
   P/R/F1 beside cleanlab's ``find_label_issues`` on the same probabilities;
   the share of errors in the top 1x of the review order; how often the
   suggested label is the true one on the errors.
3. The automatic policy (``--review auto``'s decisions of round 1, the
   defaults; with ``--colour-relabels always``: the gate alone; and with
   ``--min-precision off`` as well: the thresholds alone): errors
   fixed (relabeled to the truth), errors removed, clean rows relabeled or
   removed (damage), and damage as a share of the rows it changed.

With ``--backbone`` the round is linear heads on that backbone's features
(`gpupipe.models.backbone`) instead of the small CNN trained per fold; with
``--init-weights`` the small CNN of each fold starts from those weights (e.g.
``gpupipe pretrain``'s, self-supervised on the part's own images).

Prints Markdown and writes ``results-<augment|backbone>.json`` next to the data
(``--data``, default ``.bench``).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gpupipe import schema
from gpupipe.loop import run_rank
from gpupipe.runner import LEDGER, DedupOptions, run_dedup

# third: the rest of the development labels, a second part to report on.  Not for rounds
# with `.bench/cifar-test-dev20k-small-cnn.pt` (RESULTS.md §30.1), which trained on it.
PARTS = {"choose": (0, 10_000), "judge": (10_000, 20_000), "third": (20_000, 30_000)}


def prepare(args) -> Path:
    """The ImageFolder of the part's images under their noisy labels, deduplicated."""
    lo, hi = PARTS[args.part]
    hi = min(hi, lo + args.n)
    data = Path(args.data) / f"cifar10n-{args.noise}-{args.part}-{hi - lo}"
    if (data / "dedup" / LEDGER).exists():
        return data
    if data.exists():
        shutil.rmtree(data)
    truth = {}
    with open(args.labels, newline="") as fh:
        for row in csv.DictReader(fh):
            i = int(row["index"])
            if lo <= i < hi:
                src = Path(args.cifar) / row["path"]
                rel = f"{row[args.noise]}/{i:05d}.jpg"
                (data / "tree" / row[args.noise]).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, data / "tree" / rel)
                truth[rel] = row["clean"]
    (data / "truth.json").write_text(json.dumps(truth))
    run_dedup(data / "tree", data / "dedup", DedupOptions(device="cpu"))
    return data


def prf(flag: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((flag & truth).sum())
    p, r = tp / max(int(flag.sum()), 1), tp / max(int(truth.sum()), 1)
    return {"flagged": int(flag.sum()), "precision": round(p, 3), "recall": round(r, 3),
            "f1": round(2 * p * r / max(p + r, 1e-12), 3)}


def evaluate(run: Path, truth: dict) -> dict:
    """Flags, review order and the automatic policy's round-1 decisions on a
    ranked (not yet decided) ledger, against the original labels."""
    from cleanlab.filter import find_label_issues

    from gpupipe.device import resolve_device
    from gpupipe.stages.rank import evidence_of, rows_of
    from gpupipe.stages.review import AutoPolicy, auto_decisions, ensure_columns, label_suspicion
    from gpupipe.table import Ledger

    ledger = Ledger(resolve_device("cpu"))
    frame = ensure_columns(ledger.read(run / LEDGER), ledger)
    state = json.loads((run / "rank.json").read_text())
    classes = state["classes"]
    if schema.RANK_EVIDENCE not in frame.columns:     # a round kept from before the column: from rank.json
        last = state["rounds"][-1]
        heads = last["schedule"] == "linear heads" or " heads on " in last["model"]
        ev = evidence_of(backbone="brought" if heads else None, channels=last["channels"])
        scored_rows = ~np.isnan(ledger.host(frame, schema.RANK_LOSS)[0].astype(float))
        frame = ledger.assign(frame, {schema.RANK_EVIDENCE: (np.full(len(frame), ev, object), scored_rows)})
    rel = ledger.host(frame, schema.REL_PATH)[0].astype(str)
    loss = ledger.host(frame, schema.RANK_LOSS)[0].astype(float)
    rows = rows_of(frame, ledger)
    scored = rows.eligible & ~np.isnan(loss)
    given = ledger.host(frame, schema.LABEL)[0].astype(str)
    true = np.array([truth.get(r, "") for r in rel])
    err = given != true
    probs = ledger.host(frame, schema.RANK_PROBS)[0].astype(np.float64)      # (N, K), NaN where unscored
    s = np.flatnonzero(scored)
    lab = np.array([classes.index(g) for g in given[s]])
    pred = np.array(classes)[probs[s].argmax(1)]
    flag = ledger.host(frame, schema.RANK_FLAG)[0][s].astype(bool)
    out = {"scored": len(s), "errors": int(err[s].sum()),
           "oof_accuracy_vs_truth": round(float((pred == true[s]).mean()), 4),
           "oof_accuracy_vs_given": round(float((pred == given[s]).mean()), 4),
           "flags": prf(flag, err[s]),
           "cleanlab": prf(find_label_issues(lab, probs[s], n_jobs=1), err[s])}
    votes = ledger.host(frame, schema.RANK_VOTE_GIVEN)[0].astype(float)[s]
    margin = None                   # rank_train_margin (RESULTS.md §36): kept runs before it lack the column
    if schema.RANK_TRAIN_MARGIN in frame.columns:
        m, has_m = ledger.host(frame, schema.RANK_TRAIN_MARGIN)
        margin = np.where(has_m, m, np.nan)[s].astype(float)
    order = np.argsort(-label_suspicion(loss[s], probs[s, :][np.arange(len(s)), lab], votes, margin),
                       kind="stable")
    k = int(err[s].sum())
    out["review_top_1x_recall"] = round(float(err[s][order[:k]].mean() * 1.0 if k else 0), 3)
    out["suggested_right_on_errors"] = round(float((pred[err[s]] == true[s][err[s]]).mean()), 3)

    out["policy"] = _policy(auto_decisions(frame, ledger, AutoPolicy(), round_no=1), err, true)
    out["policy_gate_alone"] = _policy(auto_decisions(frame, ledger, AutoPolicy(colour_relabels="always"),
                                                      round_no=1), err, true)
    out["policy_thresholds_only"] = _policy(auto_decisions(frame, ledger, AutoPolicy(
        min_precision=None, colour_relabels="always"), round_no=1), err, true)
    return out


def _policy(d, err: np.ndarray, true: np.ndarray) -> dict:
    """One round of automatic decisions against the truth."""
    pos, act = d.positions, d.action
    new = np.array([x if x is not None else "" for x in d.new_label], dtype=object).astype(str)
    ch = act != "confirm"
    fixed = int(((act == "relabel") & err[pos] & (new == true[pos])).sum())
    wrong_relabel = int(((act == "relabel") & err[pos] & (new != true[pos])).sum())
    err_removed = int(((act == "remove") & err[pos]).sum())
    damaged = int((ch & ~err[pos]).sum())
    out = {"confirmed": int((act == "confirm").sum()), "confirmed_errors": int(((act == "confirm") & err[pos]).sum()),
                     "relabeled": int((act == "relabel").sum()), "removed": int((act == "remove").sum()),
                     "errors_fixed": fixed, "errors_relabeled_wrong": wrong_relabel, "errors_removed": err_removed,
                     "clean_damaged": damaged,
                     "damage_share_of_changes": round(damaged / max(int(ch.sum()), 1), 3)}
    if d.summary:
        out["summary"] = d.summary
    return out


def markdown(out: dict) -> str:
    f, c, p = out["flags"], out["cleanlab"], out["policy"]
    lines = [f"CIFAR-10N {out['args']['noise']}, part {out['args']['part']} ({out['scored']} scored, "
             f"{out['errors']} errors), "
             + (f"backbone {out['args']['backbone']}" if out["args"].get("backbone") else
                f"augment {out['args']['augment']}"),
             f"- out-of-fold accuracy vs truth {out['oof_accuracy_vs_truth']}, vs given {out['oof_accuracy_vs_given']}",
             f"- flags: P {f['precision']} R {f['recall']} F1 {f['f1']} ({f['flagged']} flagged); "
             f"cleanlab same probabilities: P {c['precision']} R {c['recall']} F1 {c['f1']} ({c['flagged']})",
             f"- review order top 1x: {out['review_top_1x_recall']} of errors; suggested label right on "
             f"{out['suggested_right_on_errors']} of errors",
             *(f"- {name}: confirmed {p['confirmed']} ({p['confirmed_errors']} errors), relabeled {p['relabeled']}, "
               f"removed {p['removed']}: fixed {p['errors_fixed']}, errors relabeled wrong "
               f"{p['errors_relabeled_wrong']}, errors removed {p['errors_removed']}, clean damaged "
               f"{p['clean_damaged']} ({p['damage_share_of_changes']:.1%} of changes)"
               for name, p in (("policy (default)", out["policy"]),
                               ("the gate alone (--colour-relabels always)", out.get("policy_gate_alone")),
                               ("thresholds alone (--min-precision off --colour-relabels always)",
                                out["policy_thresholds_only"])) if p is not None)]
    if "summary" in p:
        lines.append(f"- policy summary: {json.dumps(p['summary'])}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cifar", default="/tmp/cifar10", help="the extracted cifar10-jpeg.tar.gz")
    ap.add_argument("--labels", default="../shared/data/cifar10/cifar10n_labels_dev.csv")
    ap.add_argument("--part", choices=tuple(PARTS), default="choose")
    ap.add_argument("--noise", choices=("aggre", "worse", "random1"), default="aggre")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--augment", default="auto", help="rank's --augment (auto, light, photo, method, none)")
    ap.add_argument("--data", default=".bench")
    ap.add_argument("--policy-only", action="store_true", help="re-read the policy on the kept ledger")
    ap.add_argument("--backbone", default=None, help="rank's --backbone (see benchmarks/backbones.py)")
    ap.add_argument("--backbone-weights", default=None)
    ap.add_argument("--init-weights", default=None, help="rank's --init-weights (e.g. gpupipe pretrain's)")
    ap.add_argument("--lr-decay", default=None, help="rank's --lr-decay (default: the CLI's)")
    ap.add_argument("--tta", default=None, help="rank's --tta (default: the CLI's)")
    ap.add_argument("--schedule", default=None, help="rank's --schedule (default: the CLI's)")
    ap.add_argument("--model", default=None, help="rank's --model (default: the CLI's), e.g. backbones:wide_cnn")
    ap.add_argument("--decode-cache", default=None, help="rank's --decode-cache (default: the CLI's)")
    ap.add_argument("--epochs", default=None, help="rank's --epochs (default: the CLI's)")
    ap.add_argument("--with-cnn", action="store_true", help="rank's --with-cnn (with --backbone)")
    ap.add_argument("--models", default=None, help="rank's --models (default: the CLI's)")
    ap.add_argument("--seed", default=None, help="rank's --seed (default: the CLI's): folds and streams")
    ap.add_argument("--tag", default=None, help="name of the run and results (default: the augment set, or "
                                                "'backbone')")
    args = ap.parse_args()
    data = prepare(args)
    truth = json.loads((data / "truth.json").read_text())
    run = data / f"oof-{args.tag or (args.augment if args.backbone is None else 'backbone')}"
    out = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                      f"{torch.get_num_threads()} torch threads", "args": vars(args),
           "date": time.strftime("%Y-%m-%d")}
    if not args.policy_only:
        from gpupipe.cli import _rank_options, build_parser

        cli = build_parser().parse_args(["rank", str(run), "--mode", "oof", "--augment", args.augment,
                                         "--device", "cpu", "--max-rounds", "1"]
                                        + (["--backbone", args.backbone] if args.backbone else [])
                                        + (["--backbone-weights", args.backbone_weights]
                                           if args.backbone_weights else [])
                                        + (["--init-weights", args.init_weights] if args.init_weights else [])
                                        + (["--lr-decay", args.lr_decay] if args.lr_decay else [])
                                        + (["--schedule", args.schedule] if args.schedule else [])
                                        + (["--model", args.model] if args.model else [])
                                        + (["--tta", args.tta] if args.tta else [])
                                        + (["--decode-cache", args.decode_cache] if args.decode_cache else [])
                                        + (["--epochs", args.epochs] if args.epochs else [])
                                        + (["--seed", args.seed] if args.seed else [])
                                        + (["--models", args.models] if args.models else [])
                                        + (["--with-cnn"] if args.with_cnn else []))
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(data / "dedup", run)
        t = time.perf_counter()
        # the CLI's options; a person's review, so that round 1 is scored and left undecided
        res = run_rank(run, replace(_rank_options(cli), review="person", worst=0, best=0))
        out["oof_seconds"] = round(time.perf_counter() - t, 1)
        out["round"] = res.rounds[0]
    out.update(evaluate(run, truth))
    print(markdown(out))
    (data / f"results-{run.name[4:]}.json").write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
