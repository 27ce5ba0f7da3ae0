"""Label-error detection, review effort and scoring throughput, on real images
with planted label noise.

    python benchmarks/bench_rank.py --dataset digits|fashion [--n N] [--noise symmetric|pair]
        [--rate 0.1] [--folds 5] [--epochs 15] [--model small-cnn] [--skip-loop] [--skip-cleanlab]

1. Out-of-fold probabilities from gpupipe (``rank --mode oof``) over every image.
2. Flags from those probabilities: gpupipe's rules and
   ``cleanlab.filter.find_label_issues`` given the *same* probabilities:
   precision, recall and F1 against the planted flips (target: F1 >= cleanlab's).
3. Review effort: share of the planted errors found against the number of
   samples reviewed: (a) the out-of-fold loss order, (b) the certify/review
   loop with an oracle (seed set of 200 reviewed, then the L worst per round,
   retraining each round), (c) random order.  Target: 90% found after
   reviewing at most 2x as many samples as there are errors.
4. Throughput: scoring (DALI decode + resize + forward + per-sample scores)
   against the model's bare forward pass over the same batches held in memory
   (target: >= 80%).

Prints Markdown and writes JSON next to the data (``.bench/rank-...``).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from gpupipe import schema
from gpupipe.dali.augment import AugmentConfig
from gpupipe.datasets import FASHION_MNIST_CLASSES, flip_labels, load_digits_images, load_fashion_mnist, plant_dataset
from gpupipe.device import resolve_device
from gpupipe.loop import RankOptions, run_rank
from gpupipe.models.score import flag_label_issues
from gpupipe.models.train import TrainConfig
from gpupipe.runner import LEDGER, DedupOptions, run_dedup


AUGMENT = {"method": AugmentConfig(), "light": AugmentConfig.light(), "photo": AugmentConfig.photo(), "none": None}


def prepare(args) -> tuple[Path, dict]:
    data = Path(args.data) / f"rank-{args.dataset}-{args.n or 'all'}-{args.noise}-{args.rate}"
    meta_file = data / "meta.json"
    if meta_file.exists():
        return data, json.loads(meta_file.read_text())
    if args.dataset == "digits":
        images, labels = load_digits_images()
        names, upscale = [str(k) for k in range(10)], 4
    else:
        images, labels = load_fashion_mnist(split="train")
        names, upscale = list(FASHION_MNIST_CLASSES), 1
    if args.n:
        images, labels = images[:args.n], labels[:args.n]
    noisy, flipped = flip_labels(labels, rate=args.rate, mode=args.noise, seed=args.seed)
    if data.exists():
        shutil.rmtree(data)
    truth = plant_dataset(images, noisy, data / "tree", class_names=names, upscale=upscale, seed=args.seed)
    index = {p: int(p.rsplit("_", 1)[1].split(".")[0]) for p in truth.originals}
    with open(data / "oracle.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rel_path", "label"])
        w.writerows((p, names[labels[i]]) for p, i in sorted(index.items()))
    run_dedup(data / "tree", data / "dedup", DedupOptions(device="cpu"))
    meta = {"flipped": sorted(p for p, i in index.items() if flipped[i]), "n": len(labels),
            "classes": names}
    meta_file.write_text(json.dumps(meta))
    return data, meta


def prf(flag: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((flag & truth).sum())
    p = tp / max(int(flag.sum()), 1)
    r = tp / max(int(truth.sum()), 1)
    return {"flagged": int(flag.sum()), "precision": round(p, 3), "recall": round(r, 3),
            "f1": round(2 * p * r / max(p + r, 1e-12), 3)}


def fresh(data: Path, name: str) -> Path:
    run = data / name
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(data / "dedup", run)
    return run


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=("digits", "fashion"), default="digits")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--noise", choices=("symmetric", "pair"), default="symmetric")
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--augment", choices=tuple(AUGMENT), default="light",
                    help="training augmentation of the out-of-fold models: light (gpupipe's default "
                         "out-of-fold for gray images), the method's (its default for a certified seed set), "
                         "photo (the default for colour images), or none")
    ap.add_argument("--worst", type=int, default=None, help="L per loop round (default: errors / 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--data", default=".bench")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--skip-cleanlab", action="store_true")
    ap.add_argument("--throughput-only", action="store_true",
                    help="only the throughput part, over an earlier run's OOF ledger (run it on an idle machine)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    data, meta = prepare(args)
    flipped = set(meta["flipped"])
    train = TrainConfig(model=args.model, max_epochs=args.epochs, augment=AUGMENT[args.augment])
    out: dict = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                            f"{torch.get_num_threads()} torch threads",
                 "args": vars(args), "errors_planted": len(flipped), "n": meta["n"]}

    if args.throughput_only:
        d = pq.read_table(data / f"oof-{args.augment}" / LEDGER).to_pandas()
        d = d[d[schema.RANK_LOSS].notna()].reset_index(drop=True)
        t = throughput(data / f"oof-{args.augment}", d, sorted(d[schema.LABEL].unique()), train, args.device)
        print(f"throughput on {t['device']} (batch {t['batch']}, {t['model']}): scoring {t['score_images_per_s']} "
              f"img/s vs bare forward {t['forward_images_per_s']} img/s = {t['ratio']:.0%}")
        return 0

    # 1. out-of-fold probabilities
    run = fresh(data, f"oof-{args.augment}")
    t = time.perf_counter()
    res = run_rank(run, RankOptions(device=args.device, mode="oof",
                                    folds=args.folds, review="auto", max_rounds=1, train=train, seed=args.seed))
    out["oof_seconds"] = round(time.perf_counter() - t, 1)
    out["oof_round"] = res.rounds[0]
    d = pq.read_table(run / LEDGER).to_pandas()
    d = d[d[schema.RANK_LOSS].notna()].reset_index(drop=True)
    classes = res.rounds[0]["classes"]
    probs = np.stack(d[schema.RANK_PROBS].to_numpy()).astype(np.float64)
    labels = d[schema.LABEL].map(classes.index).to_numpy()
    truth = d[schema.REL_PATH].isin(flipped).to_numpy()
    out["scored"] = len(d)
    out["oof_accuracy_vs_given"] = round(float((probs.argmax(1) == labels).mean()), 4)

    # 2. flags from the same probabilities
    flags = {"gpupipe flag_label_issues (is_mislabeled_issue)": flag_label_issues(labels, probs),
             "argmax != given": probs.argmax(1) != labels}
    if not args.skip_cleanlab:
        from cleanlab.filter import find_label_issues

        t = time.perf_counter()
        flags["cleanlab find_label_issues (defaults)"] = find_label_issues(labels, probs)
        out["cleanlab_seconds"] = round(time.perf_counter() - t, 3)
        for fb in ("prune_by_class", "both", "confident_learning"):
            flags[f"cleanlab filter_by={fb}"] = find_label_issues(labels, probs, filter_by=fb)
    out["flags"] = {k: prf(v, truth) for k, v in flags.items()}

    # 3. review effort
    n_err = int(truth.sum())
    loss = d[schema.RANK_LOSS].to_numpy()
    order = np.argsort(-loss, kind="stable")
    found = np.cumsum(truth[order])
    effort = {}
    for mult in (1.0, 1.5, 2.0):
        k = int(mult * n_err)
        effort[f"oof loss order, {mult}x"] = round(found[min(k, len(found)) - 1] / n_err, 3)
        effort[f"random order, {mult}x"] = round(min(k, len(d)) / len(d), 3)
    need = int(np.searchsorted(found, 0.9 * n_err) + 1)
    effort["oof loss order: reviewed for 90%"] = f"{need} ({need / n_err:.2f}x errors)"
    out["effort"] = effort
    if not args.skip_loop:
        run = fresh(data, "loop")
        worst = args.worst or max(10, len(flipped) // 4)
        t = time.perf_counter()
        res = run_rank(run, RankOptions(device=args.device, review="oracle", oracle=str(data / "oracle.csv"), worst=worst, best=0,
                                        max_rounds=12, review_budget=200 + 2 * len(flipped), train=train,
                                        seed=args.seed))
        out["loop_seconds"] = round(time.perf_counter() - t, 1)
        log = pq.read_table(run / "decisions.parquet").to_pandas()
        log["error"] = log["rel_path"].isin(flipped)
        reviewed = log[log["source"] == schema.SOURCE_ORACLE]
        curve = []
        for r in sorted(reviewed["round"].unique()):
            upto = reviewed[reviewed["round"] <= r]
            curve.append({"round": int(r), "reviewed": len(upto),
                          "reviewed_x_errors": round(len(upto) / len(flipped), 2),
                          "found": int(upto["error"].sum()),
                          "found_share": round(upto["error"].sum() / len(flipped), 3),
                          "random_share": round(len(upto) / meta["n"], 3)})
        out["loop"] = {"worst_per_round": worst, "stopped": res.stopped, "curve": curve}

    # 4. throughput (same batches: decoded once into memory for the bare forward)
    out["throughput"] = throughput(run, d, classes, train, args.device)
    print(markdown(out))
    (data / "results.json").write_text(json.dumps(out, indent=2, default=str))
    return 0


def throughput(run: Path, d, classes, train: TrainConfig, device: str = "auto") -> dict:
    from gpupipe.dali.augment import file_pipeline
    from gpupipe.models import nets
    from gpupipe.models.score import score

    dev = resolve_device(device)
    model = nets.build(nets.resolve_model(train.model), len(classes), 1, seed=0).to(dev.torch_device).eval()
    paths = d[schema.PATH].tolist()
    rows = np.arange(len(paths))
    y = d[schema.LABEL].map(classes.index).to_numpy()
    batch = 4096 if dev.is_gpu else 1024
    best: dict[str, float] = {}
    for _ in range(3):
        ep = file_pipeline(dev, paths, rows, size=train.image_size, channels=1, batch_size=batch)
        t = time.perf_counter()
        score(model, ep, y, torch_device=dev.torch_device)
        best["score"] = max(best.get("score", 0), len(paths) / (time.perf_counter() - t))
        held = [x.to(dev.torch_device) for x, _ in ep]
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.is_gpu):
            model(held[0])
            if dev.is_gpu:
                torch.cuda.synchronize()
            t = time.perf_counter()
            for x in held:
                model(x)
            if dev.is_gpu:
                torch.cuda.synchronize()
        best["forward"] = max(best.get("forward", 0), len(paths) / (time.perf_counter() - t))
    return {"device": dev.torch_device, "batch": batch, "model": train.model,
            "score_images_per_s": round(best["score"]), "forward_images_per_s": round(best["forward"]),
            "ratio": round(best["score"] / best["forward"], 3)}


def markdown(o: dict) -> str:
    a = o["args"]
    lines = [f"### {a['dataset']} (n={o['n']}), {a['noise']} noise {a['rate']:.0%}: {o['errors_planted']} flipped",
             f"machine: {o['machine']}; model {a['model']}, {a['folds']}-fold OOF in {o['oof_seconds']} s; "
             f"OOF accuracy vs given labels {o['oof_accuracy_vs_given']}", "",
             "| flags from the same OOF probabilities | flagged | precision | recall | F1 |", "|---|---|---|---|---|"]
    for k, v in o["flags"].items():
        lines.append(f"| {k} | {v['flagged']} | {v['precision']} | {v['recall']} | {v['f1']} |")
    lines += ["", "| review effort | share of errors found |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in o["effort"].items()]
    if "loop" in o:
        lines += ["", f"loop (oracle; seed 200 then L={o['loop']['worst_per_round']} worst per round; "
                      f"{o['loop_seconds']} s; stopped: {o['loop']['stopped']})", "",
                  "| round | reviewed | x errors | found | share | random |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['round']} | {c['reviewed']} | {c['reviewed_x_errors']} | {c['found']} | "
                  f"{c['found_share']} | {c['random_share']} |" for c in o["loop"]["curve"]]
    t = o["throughput"]
    lines += ["", f"throughput on {t['device']} (batch {t['batch']}, {t['model']}): scoring "
                  f"{t['score_images_per_s']} img/s vs bare forward {t['forward_images_per_s']} img/s "
                  f"= {t['ratio']:.0%}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
