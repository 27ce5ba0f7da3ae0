"""Images of no class among real ones: how well each score ranks them, and what
an outlier "remove" rule fixes and damages (issue 12, items 2-4).

    python benchmarks/bench_outlier.py --dataset digits|fashion [--n 10000] [--outliers 0.03]
        [--rate 0.1] [--noise symmetric|pair] [--folds 3] [--epochs 10] [--lr-decay D]

The tree: real images (scikit-learn digits upscaled to 32x32, or Fashion-MNIST
28x28) with ``--rate`` planted label flips and ``--outliers`` (share of N)
planted images of no class, each under a random class folder, in four kinds
dealt round-robin: ``other`` (an image of the other dataset: Fashion among
digits, a digit among Fashion), ``blank`` (a flat grey level with scanner
noise), ``noise`` (uniform random pixels), ``crop`` (a 3x3 corner of an 8x8
digit, blown up).  gpupipe dedup, then one round of ``rank --mode oof``.

Scores compared on the same out-of-fold round, by average precision of the
planted outliers among the scored rows:
- the loss of the given label (``rank_loss``),
- the outlier score (``rank_outlier_score``, models/outlier.py),
- the review order (`stages.review.suspicion`: loss percentile, or outlier
  percentile where the outlier score is past the policy threshold),
- cleanlab's ``OutOfDistribution`` score from the same out-of-fold
  probabilities (its pred_probs route; its features route, Datalab's outlier
  issue, is in bench_outlier_features.py).
And the AP of all planted errors (flips and outliers: what a person's review
should surface first).  And the policy table: for each outlier threshold T, the open rows with
``rank_outlier_score >= T``: planted outliers among them, planted flips, clean rows.

Prints Markdown; writes JSON to ``.bench/outlier-<dataset>-<noise>.json``.
``--reuse``: the tables again from the existing run's scores (the rules and
thresholds of today's code; the scores of the run's).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from gpupipe import schema
from gpupipe.datasets import FASHION_MNIST_CLASSES, flip_labels, load_digits_images, load_fashion_mnist, plant_dataset
from gpupipe.loop import RankOptions, run_rank
from gpupipe.models.train import TrainConfig
from gpupipe.runner import LEDGER, DedupOptions, run_dedup
from gpupipe.stages.review import label_suspicion, suspicion

KINDS = ("other", "blank", "noise", "crop")
THRESHOLDS = (2.0, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0)      # robust z-scores (models/outlier.py)


def average_precision(score: np.ndarray, positive: np.ndarray) -> float:
    order = np.argsort(-score, kind="stable")
    hits = positive[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / max(1, hits.sum()))


def build(args, root: Path) -> dict:
    digits, dlab = load_digits_images()
    fashion, flab = load_fashion_mnist(split="train" if args.dataset == "fashion" else "test")
    if args.dataset == "digits":
        images, labels, names, side, upscale = digits, dlab, [str(k) for k in range(10)], 32, 4
        other = fashion
    else:
        pick = slice(args.offset, args.offset + args.n)
        images, labels, names, side, upscale = fashion[pick], flab[pick], list(FASHION_MNIST_CLASSES), 28, 1
        other = digits
    noisy, flipped = flip_labels(labels, rate=args.rate, mode=args.noise, seed=args.seed)
    truth = plant_dataset(images, noisy, root, class_names=names, upscale=upscale, seed=args.seed)
    index = {p: int(p.rsplit("_", 1)[1].split(".")[0]) for p in truth.originals}
    rng = np.random.default_rng(args.seed + 1)
    outliers = {}
    for i in range(int(round(args.outliers * len(labels)))):
        kind = KINDS[i % len(KINDS)]
        if kind == "other":
            img = np.asarray(Image.fromarray(other[rng.integers(len(other))]).resize((side, side), Image.BICUBIC))
        elif kind == "blank":
            img = np.clip(rng.integers(20, 235) + rng.normal(0, 3, (side, side)), 0, 255)
        elif kind == "noise":
            img = rng.integers(0, 256, (side, side))
        else:
            d = digits[rng.integers(len(digits))]
            y, x = rng.integers(0, 5, 2)
            img = np.asarray(Image.fromarray(d[y:y + 3, x:x + 3]).resize((side, side), Image.BICUBIC))
        rel = f"{names[rng.integers(len(names))]}/outlier_{kind}_{i:05d}.png"
        Image.fromarray(np.asarray(img, np.uint8)).save(root / rel)
        outliers[rel] = kind
    return {"flipped": sorted(p for p, i in index.items() if flipped[i]), "outliers": outliers, "n": len(labels),
            "true": {p: names[labels[i]] for p, i in index.items() if flipped[i]}}


def tally(run: Path, planted: dict, threshold: float | None) -> dict:
    """One round of the automatic policy (defaults, ``remove_outlier=threshold``)
    on the ranked ledger: what it fixes, removes, leaves and damages."""
    from gpupipe.device import resolve_device
    from gpupipe.stages.rank import rows_of
    from gpupipe.stages.review import AutoPolicy, auto_decisions, ensure_columns
    from gpupipe.table import Ledger

    ledger = Ledger(resolve_device("cpu"))
    frame = ensure_columns(ledger.read(run / LEDGER), ledger)
    d = auto_decisions(frame, ledger, AutoPolicy(remove_outlier=threshold), round_no=1)
    rel = ledger.host(frame, schema.REL_PATH)[0]
    rows = rows_of(frame, ledger)
    outliers, flips, true = planted["outliers"], set(planted["flipped"]), planted["true"]
    act = dict(zip(rel[d.positions], d.action))
    new = dict(zip(rel[d.positions], d.new_label))
    scored = rel[rows.eligible & ~np.isnan(ledger.host(frame, schema.RANK_LOSS)[0].astype(float))]
    o = [r for r in scored if r in outliers]
    f = [r for r in scored if r in flips]
    c = [r for r in scored if r not in outliers and r not in flips]
    return {"threshold": threshold, "decided": len(d),
            "outliers_removed": sum(act.get(r) == "remove" for r in o),
            "outliers_left": sum(act.get(r) != "remove" for r in o),
            "flips_fixed": sum(act.get(r) == "relabel" and new.get(r) == true[r] for r in f),
            "flips_removed": sum(act.get(r) == "remove" for r in f),
            "flips_left": sum(not (act.get(r) == "remove" or (act.get(r) == "relabel" and new.get(r) == true[r]))
                              for r in f),
            "clean_damaged": sum(act.get(r) in ("remove", "relabel") for r in c)}


def cost(run: Path, rows: int = 10_000) -> dict:
    """CPU seconds the outlier score adds per ``rows`` scored rows, on this run's
    images: capturing embeddings in the scoring pass, the forward over a
    model's reference rows (``rows`` of them: oof's folds each have ~2/3 of
    the set, capped at REF_MAX), and the k-NN search against that reference.
    An untrained small CNN: time does not depend on its weights."""
    import torch

    from gpupipe.dali.augment import file_pipeline
    from gpupipe.device import resolve_device
    from gpupipe.models import nets
    from gpupipe.models.outlier import K, REF_MAX, knn_distances
    from gpupipe.models.score import score
    from gpupipe.stages.rank import rows_of
    from gpupipe.table import Ledger

    dev = resolve_device("cpu")
    ledger = Ledger(dev)
    frame = ledger.read(run / LEDGER)
    r = rows_of(frame, ledger)
    pos = np.flatnonzero(r.eligible)[:rows]
    model = nets.build(nets.resolve_model("small-cnn"), len(r.classes), 1, seed=0)
    y = np.where(r.y < 0, 0, r.y)

    def timed(embed: bool):
        t = time.perf_counter()
        s = score(model, file_pipeline(dev, list(r.paths[pos]), pos, size=32, channels=1, batch_size=1024), y,
                  torch_device="cpu", embed=embed)
        return time.perf_counter() - t, s

    timed(False)                                   # warm-up (DALI pipeline, torch)
    plain, _ = timed(False)
    with_emb, s = timed(True)
    ref = s.embedding[: min(REF_MAX, len(pos))]
    t = time.perf_counter()
    knn_distances(s.embedding, ref, y[pos][:len(ref)], k=K)
    knn = time.perf_counter() - t
    scale = 10_000 / len(pos)
    return {"rows": len(pos), "threads": torch.get_num_threads(),
            "score_seconds_per_10k": round(plain * scale, 2),
            "embedding_capture_seconds_per_10k": round((with_emb - plain) * scale, 2),
            "reference_forward_seconds_per_10k_reference_rows": round(with_emb * scale, 2),
            "knn_seconds_per_10k_vs_reference": round(knn * scale, 2), "reference_rows": len(ref)}


def planted_of(args, base: Path) -> dict:
    """The planted truth of an existing tree under ``base`` (`build` is seeded:
    rebuilt in a temporary folder when ``planted.json`` is missing)."""
    import tempfile

    saved = base / "planted.json"
    if saved.exists():
        return json.loads(saved.read_text())
    with tempfile.TemporaryDirectory() as d:
        planted = build(args, Path(d))
    saved.write_text(json.dumps(planted))
    return planted


def set_name(args) -> str:
    """``<dataset>-<noise>``, with the offset and the seed where they are not 0."""
    return (f"{args.dataset}-{args.noise}" + (f"-at{args.offset}" if getattr(args, "offset", 0) else "")
            + (f"-seed{args.seed}" if args.seed else ""))


def add_data_args(ap: argparse.ArgumentParser, *, outliers: float | None = 0.03) -> None:
    """The planted data (`build`) and the out-of-fold rounds' settings, shared by
    bench_outlier.py, bench_outlier_rounds.py and bench_rounds.py (``outliers``
    None: no --outliers option; the caller sets it)."""
    ap.add_argument("--dataset", choices=("digits", "fashion"), default="digits")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--offset", type=int, default=0, help="fashion: the first image (other images for a judge set)")
    if outliers is not None:
        ap.add_argument("--outliers", type=float, default=outliers)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--noise", choices=("symmetric", "pair"), default="symmetric")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr-decay", type=float, default=TrainConfig.lr_decay, help="TrainConfig.lr_decay (1: constant)")
    ap.add_argument("--schedule", default=TrainConfig.schedule, choices=("auto", "plateau", "onecycle"),
                    help="TrainConfig.schedule (a run with another than auto is kept under its own name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=".bench")


def prepare(args, base: Path) -> tuple[dict, Path]:
    """A fresh ``base``: the planted tree (`build`) deduplicated -> (planted, run dir)."""
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    planted = build(args, base / "tree")
    run_dedup(base / "tree", base / "run", DedupOptions(device="cpu", recall_sample=0))
    return planted, base / "run"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(ap)
    ap.add_argument("--tta", type=int, default=0, help="test-time augmentations averaged into the scores")
    ap.add_argument("--models", type=int, default=1, help="rank's --models: models per fold, averaged")
    ap.add_argument("--cost-only", action="store_true", help="only the CPU cost, on an existing run of this dataset")
    ap.add_argument("--reuse", action="store_true",
                    help="recompute the tables from the existing run's scores (after a change of threshold)")
    args = ap.parse_args()
    if args.cost_only:
        c = cost(Path(args.data) / f"outlier-{args.dataset}-{args.noise}" / "run")
        print(json.dumps(c, indent=2))
        (Path(args.data) / f"outlier-cost-{args.dataset}.json").write_text(json.dumps(c, indent=2))
        return 0
    name = (f"outlier-{args.dataset}-{args.noise}" + (f"-tta{args.tta}" if args.tta else "")
            + (f"-{args.schedule}" if args.schedule != "auto" else "")
            + (f"-models{args.models}" if args.models != 1 else ""))
    base = Path(args.data) / name
    if args.reuse:
        planted = planted_of(args, base)
        saved = Path(args.data) / f"{name}.json"
        if not (base / "run" / LEDGER).exists() or not saved.exists():
            sys.exit(f"--reuse: no earlier run in {base} (run without --reuse first)")
        before = json.loads(saved.read_text())     # the run's own times
        t_dedup, t_rank = before["seconds_dedup"], before["seconds_rank"]
    else:
        if base.exists():
            shutil.rmtree(base)
        base.mkdir(parents=True)
        planted = build(args, base / "tree")
        (base / "planted.json").write_text(json.dumps(planted))
        t0 = time.perf_counter()
        run_dedup(base / "tree", base / "run", DedupOptions(device="cpu", recall_sample=0))
        t_dedup = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_rank(base / "run", RankOptions(device="cpu", review="person", worst=10, best=10, mode="oof",
                                           folds=args.folds, max_rounds=1, tta=args.tta, seed=args.seed,
                                           models=args.models,
                                           train=TrainConfig(max_epochs=args.epochs, lr_decay=args.lr_decay,
                                                             schedule=args.schedule)))
        t_rank = time.perf_counter() - t0
    state = json.loads((base / "run" / "rank.json").read_text())
    t = pq.read_table(base / "run" / LEDGER).to_pandas()
    t = t[t[schema.RANK_LOSS].notna()].reset_index(drop=True)
    kind = t[schema.REL_PATH].map(planted["outliers"])
    is_out = kind.notna().to_numpy()
    is_flip = t[schema.REL_PATH].isin(set(planted["flipped"])).to_numpy()
    loss, score = t[schema.RANK_LOSS].to_numpy(float), t[schema.RANK_OUTLIER].to_numpy(float)
    order = suspicion(label_suspicion(loss, t[schema.RANK_PROB_GIVEN].to_numpy(float),
                                      t[schema.RANK_VOTE_GIVEN].to_numpy(float)
                                      if schema.RANK_VOTE_GIVEN in t.columns else None), score)
    probs = np.stack(t[schema.RANK_PROBS].to_numpy())
    classes = state["classes"]
    y = t[schema.REVIEW_LABEL].fillna(t[schema.LABEL]).map({c: i for i, c in enumerate(classes)}).to_numpy()
    from cleanlab.outlier import OutOfDistribution

    cl = -OutOfDistribution().fit_score(pred_probs=probs, labels=y)      # cleanlab: lower = more outlying
    scores = {"loss": loss, "outlier score": score, "review order (suspicion)": order, "cleanlab OOD (pred_probs)": cl}
    ap_out = {name: round(average_precision(s, is_out), 3) for name, s in scores.items()}
    ap_kind = {name: {k: round(average_precision(s[~is_out | (kind == k).to_numpy()],
                                                 (kind == k).to_numpy()[~is_out | (kind == k).to_numpy()]), 3)
                      for k in KINDS} for name, s in scores.items()}
    ap_flip = {name: round(average_precision(s[~is_out], is_flip[~is_out]), 3) for name, s in scores.items()}
    ap_all = {name: round(average_precision(s, is_out | is_flip), 3) for name, s in scores.items()}
    policy = [tally(base / "run", planted, th) for th in (None, *THRESHOLDS)]
    out = {"dataset": args.dataset, "n": planted["n"], "scored": len(t), "outliers_scored": int(is_out.sum()),
           "flips_scored": int(is_flip.sum()), "args": vars(args), "seconds_dedup": round(t_dedup, 1),
           "seconds_rank": round(t_rank, 1), "val_accuracy": state["rounds"][0]["val_accuracy"],
           "ap_outliers": ap_out, "ap_outliers_by_kind": ap_kind, "ap_flips_without_outliers": ap_flip,
           "ap_all_errors": ap_all,
           "policy": policy, "machine": f"{platform.node()} {platform.machine()}",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (Path(args.data) / f"{name}.json").write_text(json.dumps(out, indent=2))
    print(f"## {args.dataset}: {out['scored']} scored rows, {out['outliers_scored']} planted outliers, "
          f"{out['flips_scored']} flips; rank {out['seconds_rank']} s, val acc {out['val_accuracy']:.3f}\n")
    print("| score | outlier AP | " + " | ".join(KINDS) + " | flip AP (outliers left out) | AP of all errors |")
    print("|---|---|" + "---|" * len(KINDS) + "---|---|")
    for name in scores:
        print(f"| {name} | {ap_out[name]} | " + " | ".join(str(ap_kind[name][k]) for k in KINDS)
              + f" | {ap_flip[name]} | {ap_all[name]} |")
    print("\n| remove_outlier | outliers removed | outliers left | flips relabeled right | flips removed "
          "| flips left or wrong | clean rows damaged | rows decided |\n|---|---|---|---|---|---|---|---|")
    for p in policy:
        print(f"| {p['threshold']} | {p['outliers_removed']} of {out['outliers_scored']} | {p['outliers_left']} | "
              f"{p['flips_fixed']} of {out['flips_scored']} | {p['flips_removed']} | {p['flips_left']} | "
              f"{p['clean_damaged']} | {p['decided']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
