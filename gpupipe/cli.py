"""Command line: one subcommand per stage.

    gpupipe dedup SRC --out RUN_DIR [--device auto|cpu|gpu] [--max-distance D]
                      [--workers N | --scheduler ADDRESS]
    gpupipe rank RUN_DIR [--mode certified|oof] [--review person|auto|oracle] ...
    gpupipe review RUN_DIR DECISIONS.csv | --serve [--port N]
    gpupipe augment RUN_DIR --out GRID.png
    gpupipe curate SRC --out RUN_DIR    all of it: dedup, rank, balance, split, export, report
    gpupipe demo [--out DIR]        the embedded default dataset, found vs planted
    gpupipe bench SRC [--limit N] [--json FILE]   each stage's speed here, against the decode ceiling

Bad input ends with a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpupipe.device import DeviceError


def _add_executor_options(p: argparse.ArgumentParser, workers_help: str, scheduler_help: str) -> None:
    """--workers N | --scheduler ADDRESS, one or the other."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, metavar="N", help=workers_help)
    g.add_argument("--scheduler", default=None, metavar="ADDRESS", help=scheduler_help)


def _add_dedup_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where to decode and hash (auto: a working GPU if there is one)")
    p.add_argument("--max-distance", type=int, default=None, metavar="BITS",
                   help="pHash Hamming distance (0-64) under which two images are near duplicates "
                        "(default: %(default)s -> 8)")
    p.add_argument("--shift-distance", type=int, default=None, metavar="BITS",
                   help="shift-key Hamming distance for the second candidate search, which finds shifted "
                        "and cropped copies (default: %(default)s -> 8; -1 turns it off)")
    p.add_argument("--verify", choices=("pixels", "photo", "none"), default="pixels",
                   help="check of each candidate pair: 'pixels' (default) the same-picture similarity of "
                        "the two thumbnails (aligned, band-passed correlation); 'photo' that, or else, for "
                        "colour images, the registered similarity (zoom 0.8-1.25, shift, colour shift "
                        "absorbed) >= 0.85 and significant at z >= 6, with zoomed queries for candidates: "
                        "real photographs' crop-rescale-recolour copies (on CIFAR-10's ciFAIR pairs, "
                        "benchmarks/RESULTS.md); 'none' accept every "
                        "candidate as hash-only tools do")
    p.add_argument("--min-similarity", type=float, default=None, metavar="S",
                   help="for --verify pixels: similarity (-1..1) from which two images are the same "
                        "picture where their 256-bit DCT hashes agree; 0.005 more where they do not (a shift "
                        "or crop was needed). Default 0.99: benchmarks/RESULTS.md shows the ROC on real "
                        "digits and Fashion-MNIST")
    p.add_argument("--recall-sample", type=int, default=100, metavar="N",
                   help="images whose edited copies (made in memory) measure this run's recall per kind "
                        "of near duplicate (default: %(default)s; 0 turns it off)")
    _add_executor_options(p, "start a local Dask cluster of N worker processes (GPU: one per GPU)",
                          "run on an existing Dask cluster, e.g. tcp://host:8786")
    p.add_argument("--batch-size", type=int, default=512, help="images per DALI batch")
    p.add_argument("--partition-rows", type=int, default=None, metavar="N",
                   help="rows per partition, the unit of work and of resume (default: N/8, 256..16384)")
    p.add_argument("--image-column", default=None, metavar="NAME",
                   help="Parquet sources: the column holding the image bytes, binary or a struct with a 'bytes' "
                        "field (default: 'image', else the first such column)")
    p.add_argument("--label-column", default=None, metavar="NAME",
                   help="Parquet sources: the label column (default: 'label'); WebDataset shards: the label "
                        "member's extension (default: cls, then txt, then json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("auxiliary model")
    g.add_argument("--model", default="auto",
                   help="small-cnn (fast on CPU), photo-cnn (small-cnn at 1.5x the width), resnet50-layer1 (the "
                        "Data-Centric AI competition's model), or package.module:function returning a "
                        "torch.nn.Module; auto: photo-cnn for colour images, small-cnn for gray ones and with "
                        "--init-weights (default: %(default)s)")
    g.add_argument("--backbone", default=None, metavar="package.module:function",
                   help="a feature extractor of your own instead of training a CNN: the function returns a "
                        "torch.nn.Module mapping images (float B,C,S,S in 0..1, S = --image-size) to features; "
                        "each image's features are extracted once per round and linear heads (per fold, or on "
                        "the certified rows) trained on them")
    g.add_argument("--backbone-weights", default=None, metavar="FILE",
                   help="a state_dict (torch.save) or gpupipe pretrain's file, loaded into --backbone strictly; "
                        "nothing is downloaded")
    g.add_argument("--with-cnn", action="store_true",
                   help="with --backbone and --mode oof: train the CNN(s) too (--model, --models) and average "
                        "them with the backbone's heads per fold; the automatic policy's gate asks both")
    g.add_argument("--init-weights", default=None, metavar="FILE",
                   help="start each auxiliary model from these weights and fine-tune it (a state_dict with the "
                        "model's layer names, e.g. what `gpupipe pretrain` writes for small-cnn); default: a "
                        "seeded random init")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: the model's own for --schedule: Adam's 1e-3 for small-cnn "
                        "on a plateau, SGD's 0.1 in one cycle)")
    g.add_argument("--image-size", type=int, default=32, help="side images are resized to, in memory (default: 32)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="model input channels (default: 1 if the images are grayscale, else 3)")
    g.add_argument("--epochs", type=int, default=30, help="most epochs per training (default: 30)")
    g.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (default: 5)")
    g.add_argument("--lr-decay", type=float, default=1.0,
                   help="multiply the learning rate by this after patience/2 epochs without a better validation "
                        "loss (e.g. 0.1); 1 keeps it constant (default: 1)")
    g.add_argument("--schedule", choices=("auto", "plateau", "onecycle"), default="auto",
                   help="plateau: Adam at a constant rate, early stopping on the validation loss (the method's); "
                        "onecycle: SGD with momentum in one cycle of --epochs epochs, label smoothing 0.1, the "
                        "last epoch's model; auto: onecycle for colour images out-of-fold, else plateau "
                        "(default: auto)")
    g.add_argument("--epoch-samples", type=int, default=2048,
                   help="an epoch shows at least this many augmented samples (default: 2048)")
    g.add_argument("--train-batch", type=int, default=64, help="training batch size (default: 64)")
    g.add_argument("--score-batch", type=int, default=None, help="scoring batch (default: 1024 CPU, 4096 GPU)")
    g.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="CPU threads per training/scoring job (default: torch's in-process, cores/workers on "
                        "Dask); fix it for bitwise-equal scores across executors")
    g.add_argument("--tta", type=int, default=0, metavar="N",
                   help="average each score over N seeded test-time augmentations too (models trained with "
                        "flips, as the photo set: the exact mirror first, then flips and crops of 90-100%%; "
                        "others: small rotations, shifts, contrast; each costs one more scoring pass) (default: 0)")
    g.add_argument("--models", type=_auto_or_count, default="auto", metavar="M|auto",
                   help="train M models per fold (per seed set), each from its own seed, and average their "
                        "probabilities; the automatic policy then makes a change only where each model's own "
                        "estimate reaches --min-precision too.  Costs M times the training.  auto: 2 for colour "
                        "images out-of-fold, else 1 (default: auto)")
    g.add_argument("--decode-cache", choices=("auto", "off"), default="auto",
                   help="auto: decode each image once per run at --image-size into RUN_DIR/decoded (uint8, "
                        "memory-mapped; skipped past 8 GiB or without twice that free on the disk) and train "
                        "and score from it; off: decode from the files every epoch (default: auto)")
    _add_augment_options(p)


def _add_augment_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("augmentation (DALI; 0 turns one off)")
    a.add_argument("--augment", choices=("auto", "method", "light", "photo", "none"), default="auto",
                   help="the set to start from: method (rotation 0.05, contrast 0.5, translation 0.2, 2 black "
                        "and 2 white spots, 1 dashed line), light (0.02, 0.2, 0.08, 1, 1, 0), photo (random "
                        "resized crop 80-100%% of the area, horizontal flip, brightness, contrast and saturation "
                        "+-0.2), none; auto: photo for colour images, else method for a certified seed set and "
                        "light out-of-fold (default: auto)")
    a.add_argument("--rotation", type=float, default=None, help="fraction of a full turn (method: 0.05 = 18 deg)")
    a.add_argument("--contrast", type=float, default=None, help="factor range 1 +- this (method: 0.5)")
    a.add_argument("--translation", type=float, default=None, help="fraction of each side (method: 0.2)")
    a.add_argument("--black-spots", type=int, default=None, help="most pen-stroke black spots (method: 2)")
    a.add_argument("--white-spots", type=int, default=None, help="most pen-stroke white spots (method: 2)")
    a.add_argument("--dashed-lines", type=int, default=None, help="most dashed lines (method: 1)")
    a.add_argument("--no-augment", action="store_true", help="train on plain images (= --augment none)")


def _augment_config(args, *, mode: str = "certified"):
    """The augmentation from --augment and the per-parameter overrides: an
    AugmentConfig, None (plain images) or "auto" (the rank stage picks by mode)."""
    from dataclasses import replace

    from gpupipe.dali.augment import AugmentConfig

    preset = "none" if args.no_augment else args.augment
    overrides = {k: getattr(args, k) for k in ("rotation", "contrast", "translation")
                 if getattr(args, k) is not None}
    strokes = {k: getattr(args, k) for k in ("black_spots", "white_spots", "dashed_lines")
               if getattr(args, k) is not None}
    if any(v < 0 for v in strokes.values()):
        raise ValueError("--black-spots, --white-spots and --dashed-lines must be >= 0")
    if preset == "none":
        return None
    if preset == "auto" and not overrides and not strokes:
        return "auto"
    base = {"method": AugmentConfig(), "light": AugmentConfig.light(), "photo": AugmentConfig.photo(),
            "auto": AugmentConfig.light() if mode == "oof" else AugmentConfig()}[preset]
    return replace(base, **overrides, strokes=replace(base.strokes, **strokes))


def _rank_options(args):
    from gpupipe.loop import RankOptions
    from gpupipe.models.nets import resolve_model
    from gpupipe.models.train import TrainConfig
    from gpupipe.stages.review import AutoPolicy

    resolve_model(args.model, channels=3)        # a bad name or import fails here, before any work
    for name in ("image_size", "epochs", "epoch_samples", "train_batch", "seed_size", "max_rounds", "oof_folds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.tta < 0:
        raise ValueError("--tta must be at least 0")
    if args.image_size < 8:
        raise ValueError("--image-size must be at least 8")
    if args.min_precision is not None and not 0 <= args.min_precision <= 1:
        raise ValueError("--min-precision must be a probability in 0..1, or off")
    if not 0 < args.lr_decay <= 1:
        raise ValueError("--lr-decay must be in (0, 1]")
    for name in ("accept_prob", "relabel_prob", "remove_prob"):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a probability in 0..1")
    review = "oracle" if args.oracle else args.review
    train = TrainConfig(model=args.model, lr=args.lr, batch_size=args.train_batch, image_size=args.image_size,
                        epoch_samples=args.epoch_samples, max_epochs=args.epochs, patience=args.patience,
                        lr_decay=args.lr_decay, schedule=args.schedule,
                        augment=_augment_config(args, mode=args.mode), init=args.init_weights)
    if args.init_weights is not None:  # a missing or misfit file fails here, before any work
        from gpupipe.models.nets import build, load_init

        fits = []
        for ch in [args.channels] if args.channels else [3, 1]:       # colour or gray: decided later, by the images
            try:
                load_init(build(resolve_model(args.model, channels=ch, init=args.init_weights), 2, ch, seed=0),
                          args.init_weights)
                break
            except ValueError as e:
                fits.append(e)
        else:
            raise fits[0]
    return RankOptions(
        device=args.device, mode=args.mode, folds=args.oof_folds, review=review, oracle=args.oracle,
        trust_seed=args.trust_seed, seed_size=args.seed_size, seed_val=args.seed_val, seed_dir=args.seed_dir,
        worst=args.worst, best=args.best, max_rounds=args.max_rounds, review_budget=args.review_budget,
        policy=AutoPolicy(accept_prob=args.accept_prob, relabel_prob=args.relabel_prob,
                          remove_prob=args.remove_prob,
                          remove_outlier=args.remove_outlier, min_precision=args.min_precision,
                          colour_relabels=args.colour_relabels),
        train=train, channels=args.channels, score_batch=args.score_batch, seed=args.seed,
        workers=args.workers, scheduler=args.scheduler, torch_threads=args.torch_threads, tta=args.tta,
        backbone=_backbone(args), decode_cache=args.decode_cache == "auto", models=args.models,
        with_cnn=_with_cnn(args))


def _with_cnn(args) -> bool:
    if args.with_cnn and (args.backbone is None or args.mode != "oof"):
        raise ValueError("--with-cnn needs --backbone and --mode oof")
    return args.with_cnn


def _backbone(args):
    from gpupipe.models.backbone import BackboneSpec, load

    if args.backbone is None:
        if args.backbone_weights is not None:
            raise ValueError("--backbone-weights needs --backbone")
        return None
    spec = BackboneSpec(args.backbone, args.backbone_weights)
    load(spec)                       # a bad name, import or weights file fails here, before any work
    return spec


def _add_curate_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("balance, split, export")
    g.add_argument("--no-rank", action="store_true", help="skip the rank/review stage")
    g.add_argument("--balance", default="none", metavar="none|min|N",
                   help="per-class target: none (keep every usable row), min (--balance-ratio times the smallest "
                        "class's count: the method's cut), or a number; the rest of a class is surplus (default: "
                        "none: on long-tailed data the cut cost the fixed model 1-4 points)")
    g.add_argument("--balance-ratio", type=float, default=None, metavar="R",
                   help="with --balance min: classes are cut to R times the smallest class's count; 1: all the "
                        "same size (default: 1.5)")
    g.add_argument("--cap", type=int, default=None, help="at most this many kept samples in all")
    g.add_argument("--test", type=float, default=0.1,
                   help="test set: a fraction (<1) or a number of samples (default: 0.1)")
    g.add_argument("--folds", type=int, default=8, help="folds over the rest (default: 8)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the balance and split draws (default: 0)")
    g.add_argument("--copy", action="store_true", help="export copies instead of symlinks")
    g.add_argument("--export-dir", default=None, help="where to export (default: RUN_DIR/export)")
    g.add_argument("--restart", action="store_true",
                   help="redo everything in RUN_DIR from the start (drops its rank decisions)")


def _curate_options(args):
    from gpupipe.runner import CurateOptions
    from gpupipe.stages.balance import BalanceConfig
    from gpupipe.stages.export import ExportConfig
    from gpupipe.stages.split import SplitConfig

    per_class = args.balance
    if per_class not in ("min", "none"):
        try:
            per_class = int(per_class)
        except ValueError:
            raise ValueError("--balance must be min, none or a number") from None
        if per_class < 1:
            raise ValueError("--balance must be at least 1")
    if args.balance_ratio is not None and per_class != "min":
        raise ValueError("--balance-ratio applies to --balance min only (the default, none, keeps every usable row)")
    if args.balance_ratio is not None and not args.balance_ratio >= 1:
        raise ValueError("--balance-ratio must be at least 1")
    ratio = {} if args.balance_ratio is None else {"max_ratio": args.balance_ratio}
    if args.cap is not None and args.cap < 1:
        raise ValueError("--cap must be at least 1")
    if args.folds < 2:
        raise ValueError("--folds must be at least 2")
    if args.test < 0 or (args.test >= 1 and args.test != int(args.test)):
        raise ValueError("--test must be a fraction in [0, 1) or a whole number of samples")
    rank = None if args.no_rank else _rank_options(args)
    return CurateOptions(
        dedup=_options(args), rank=rank,
        balance=BalanceConfig(per_class=per_class, cap=args.cap, seed=args.split_seed, **ratio),
        split=SplitConfig(test=args.test, folds=args.folds, seed=args.split_seed),
        export=ExportConfig(mode="copy" if args.copy else "symlink"), export_dir=args.export_dir,
        restart=args.restart)


def _add_rank_options(p: argparse.ArgumentParser, *, folds_flag: str, review_default: str,
                      mode_default: str = "certified", rounds_default: int = 10) -> None:
    p.add_argument("--mode", choices=("certified", "oof"), default=mode_default,
                   help="certified: train on the certified set, score the rest (the method); oof: K-fold "
                        "out-of-fold scores over everything, for data without a trustworthy seed set "
                        "(default: %(default)s)")
    p.add_argument(folds_flag, dest="oof_folds", type=int, default=5, help="folds for --mode oof (default: 5)")
    p.add_argument("--review", choices=("person", "auto", "oracle"), default=review_default,
                   help="who decides: person (write the queue and stop; apply with gpupipe review), auto "
                        "(the thresholds below), oracle (known labels from --oracle) (default: %(default)s)")
    p.add_argument("--oracle", default=None, metavar="LABELS.csv",
                   help="rel_path,label of the true labels (empty label: invalid); implies --review oracle")
    p.add_argument("--seed-size", type=int, default=200, help="random class-stratified seed set (default: 200)")
    p.add_argument("--seed-val", type=int, default=20, help="of which held out for validation (default: 20)")
    p.add_argument("--seed-dir", default=None, metavar="DIR",
                   help="certify the images whose bytes match an ImageFolder of known-good images instead")
    p.add_argument("--trust-seed", action="store_true",
                   help="take the random seed set's labels as given, without a review (auto does)")
    p.add_argument("--worst", type=int, default=100, metavar="L", help="highest-loss samples per queue (default: 100)")
    p.add_argument("--best", type=int, default=500, metavar="K", help="lowest-loss samples per queue (default: 500)")
    p.add_argument("--max-rounds", type=int, default=rounds_default,
                   help="rounds in total, counting earlier calls on RUN_DIR (default: %(default)s)")
    p.add_argument("--review-budget", type=int, default=None, help="most samples a person/oracle reviews in total")
    p.add_argument("--accept-prob", type=float, default=0.9,
                   help="auto: confirm when the model's top class is the label with at least this (default: 0.9)")
    p.add_argument("--relabel-prob", type=float, default=0.9,
                   help="auto: relabel to the model's top class when it has at least this (default: 0.9)")
    p.add_argument("--remove-prob", type=float, default=0.01,
                   help="auto: remove when the label's probability is at most this (default: 0.01)")
    p.add_argument("--remove-outlier", type=_off_or_float, default=8.0, metavar="Z|off",
                   help="auto: also remove as an image of no class a row whose rank_outlier_score (a robust "
                        "z-score) is at least Z, unless the model confirms its label (default: 8; 5, the value "
                        "the review order uses, removes clean rows too over several rounds)")
    p.add_argument("--min-precision", type=_off_or_float, default=0.9, metavar="P|off",
                   help="auto: of the decisions the thresholds above propose, make only those expected to be "
                        "right at least this often (calibrated probabilities and the label noise estimated "
                        "from them); the rest stay open for a person (default: 0.9; off: the thresholds alone)")
    p.add_argument("--colour-relabels", choices=("with-backbone", "always"), default="with-backbone",
                   help="auto: relabel colour images only where heads on a --backbone (not gpupipe pretrain's) "
                        "are part of the scores (default: with-backbone; on real photos the models trained on the "
                        "labels alone relabeled 7 clean images in 55 gated relabels, RESULTS.md §40); always: the "
                        "gate alone decides")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    _add_train_options(p)


def _auto_or_count(v: str) -> int | str:
    if v.strip().lower() == "auto":
        return "auto"
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {n}")
    return n


def _off_or_float(v: str) -> float | None:
    if v.strip().lower() in ("off", "none"):
        return None
    try:
        return float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {v!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpupipe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dedup", help="find invalid images and duplicate groups; write RUN_DIR/ledger.parquet")
    d.add_argument("src", help="an ImageFolder tree (root/<label>/img or root/<split>/<label>/img), "
                               "a manifest .csv/.parquet with path,label[,split], WebDataset .tar shards "
                               "(a folder, a shard, or a brace pattern 'shards/train-{000000..000099}.tar'), "
                               "or Parquet files holding the image bytes (Hugging Face datasets layout)")
    d.add_argument("--out", required=True, help="run directory to write (created if missing)")
    _add_dedup_options(d)
    r = sub.add_parser("rank", help="train auxiliary models on certified samples, score and rank the rest by "
                                    "loss, and run the review loop (person, oracle or automatic)")
    r.add_argument("run_dir", help="a run directory written by gpupipe dedup")
    r.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    _add_executor_options(r, "run the folds (oof) or scoring partitions on a local Dask cluster of N processes "
                             "(GPU: one per GPU)", "run them on an existing Dask cluster")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_rank_options(r, folds_flag="--folds", review_default="person")
    v = sub.add_parser("review", help="apply a person's decisions (confirm / relabel / remove) to the ledger, "
                                      "or review in the browser (--serve)")
    v.add_argument("run_dir")
    v.add_argument("decisions", nargs="?", help="CSV: decision (confirm|relabel|remove, blank = skip), sample_id "
                   "or rel_path, new_label for relabel; the review/round-NNN.csv queue, filled in")
    v.add_argument("--serve", action="store_true", help="serve the queue and the duplicate groups as a local web "
                   "page reviewed with the keyboard; prints its URL (with a token)")
    v.add_argument("--port", type=int, default=0, help="port for --serve (default: a free one)")
    v.add_argument("--host", default="127.0.0.1", help="address for --serve (default 127.0.0.1; another "
                   "address needs --allow-remote)")
    v.add_argument("--allow-remote", action="store_true", help="let --serve bind an address that is not loopback")
    a = sub.add_parser("augment", help="write a PNG grid of augmented samples: what the model trains on")
    a.add_argument("run_dir")
    a.add_argument("--out", required=True, help="PNG file to write")
    a.add_argument("--samples", type=int, default=8, help="rows (default: 8)")
    a.add_argument("--variants", type=int, default=8, help="augmented copies per row (default: 8)")
    a.add_argument("--image-size", type=int, default=32)
    a.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    a.add_argument("--seed", type=int, default=0)
    _add_augment_options(a)
    pt = sub.add_parser("pretrain", help="self-supervised pretraining (SimCLR) of a backbone on the run's own "
                                         "images, labels unread, nothing downloaded; writes weights for "
                                         "`rank --backbone`")
    pt.add_argument("run_dir")
    pt.add_argument("--out", default=None, help="weights file to write (default: RUN_DIR/backbone-ssl.pt)")
    pt.add_argument("--epochs", type=int, default=30, help="passes over the images (default: 30)")
    pt.add_argument("--batch", type=int, default=256, help="views per step, two per image (default: 256)")
    pt.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature (default: 0.2)")
    pt.add_argument("--image-size", type=int, default=32, help="side images are resized to (default: 32)")
    pt.add_argument("--channels", type=int, choices=(1, 3), default=None,
                    help="input channels (default: 1 if the images are grayscale, else 3)")
    pt.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    pt.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("curate", help="the whole curation: dedup, rank/review, balance, split, export, report")
    c.add_argument("src", help="an ImageFolder tree, a manifest, WebDataset shards or Parquet files (as for dedup)")
    c.add_argument("--out", required=True, help="run directory (created if missing; a rerun resumes it)")
    _add_dedup_options(c)
    _add_curate_options(c)
    _add_rank_options(c, folds_flag="--oof-folds", review_default="auto", mode_default="oof", rounds_default=3)
    m = sub.add_parser("demo", help="write the embedded default dataset (real digits with planted "
                                    "defects and label flips), curate it, print found vs planted")
    m.add_argument("--out", default="demo", help="directory for the dataset and the run (default: %(default)s)")
    _add_dedup_options(m)
    _add_curate_options(m)
    _add_rank_options(m, folds_flag="--oof-folds", review_default="auto", mode_default="oof", rounds_default=3)
    b = sub.add_parser("bench", help="time each stage on a sample of SRC on this hardware, against the decode "
                                     "ceiling (a DALI decode-only pass); reads SRC, writes nothing but --json")
    b.add_argument("src", help="a dataset as for dedup")
    b.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    _add_executor_options(b, "hash and decode on a local Dask cluster of N processes (rates per worker and in total)",
                          "an existing Dask cluster (its workers must see --scratch)")
    b.add_argument("--limit", type=int, default=None, metavar="N",
                   help="time a seeded sample of N images (default: all of SRC)")
    b.add_argument("--seed", type=int, default=0, help="the sample's seed (default: 0)")
    b.add_argument("--repeat", type=int, default=1, metavar="R",
                   help="alternate the dedup run and the decode ceiling R times; rows are the median round")
    b.add_argument("--model", default="auto", help="the auxiliary model scored and trained (as rank's --model)")
    b.add_argument("--image-size", type=int, default=32, help="the model's input side (default: 32)")
    b.add_argument("--train-limit", type=int, default=8192, metavar="N",
                   help="most images in the timed training epoch (default: %(default)s)")
    b.add_argument("--no-rank", action="store_true", help="time dedup only, not scoring and training")
    b.add_argument("--batch-size", type=int, default=512, help="images per DALI batch (default: 512)")
    b.add_argument("--recall-sample", type=int, default=100, metavar="N",
                   help="as for dedup; 0 times dedup without the recall probe (default: 100)")
    b.add_argument("--verify", choices=("pixels", "photo", "none"), default="pixels", help="as for dedup")
    b.add_argument("--image-column", default=None, metavar="NAME", help="as for dedup")
    b.add_argument("--label-column", default=None, metavar="NAME", help="as for dedup")
    b.add_argument("--scratch", default=None, metavar="DIR",
                   help="where the temporary run directory goes (default: the system's temp; removed after)")
    b.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    b.add_argument("--quiet", action="store_true", help="print the table only")
    return parser


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        unit = "img" if stage == "hash" else ("pair" if "pair" in stage else "job")
        bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=total, desc=stage, unit=unit, leave=False))
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _options(args):
    from gpupipe.runner import DedupOptions

    if args.max_distance is not None and not 0 <= args.max_distance <= 64:
        raise ValueError("--max-distance must be between 0 and 64")
    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be at least 1")
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if args.partition_rows is not None and args.partition_rows < 1:
        raise ValueError("--partition-rows must be at least 1")
    if args.shift_distance is not None and not -1 <= args.shift_distance <= 64:
        raise ValueError("--shift-distance must be between 0 and 64, or -1 (off)")
    if args.min_similarity is not None and not -1.0 <= args.min_similarity <= 1.0:
        raise ValueError("--min-similarity must be between -1 and 1")
    if args.recall_sample < 0:
        raise ValueError("--recall-sample must be 0 or more")
    return DedupOptions(device=args.device, max_distance=args.max_distance, shift_distance=args.shift_distance,
                        verify=args.verify, min_similarity=args.min_similarity, recall_sample=args.recall_sample,
                        workers=args.workers, scheduler=args.scheduler, batch_size=args.batch_size,
                        image_column=args.image_column, label_column=args.label_column,
                        partition_rows=args.partition_rows)


def _recall_lines(r: dict) -> list[str]:
    if not r:
        return []
    kinds = ", ".join(f"{k} {v['recall']:.2f}" for k, v in r["by_kind"].items())
    out = [f"  recall measured on this input ({r['sample']} of its images, edited copies in memory), "
           f"false matches {r['false_matches']}:",
           f"    single edits ({r['copies']} copies, one edit each): {r['recall']:.3f}"]
    if r.get("composite_recall") is not None:
        out.append(f"    real-photo edits (crop 0-20% + rescale, colour, contrast, gamma, JPEG 50-95 at once; "
                   f"the nearest to real same-shot duplicates): {r['composite_recall']:.3f}")
    return out + [f"    by kind: {kinds}"]


def format_summary(s) -> str:
    c = s.counts
    h = c["hash_stage"]
    ips = s.images_per_second()
    lines = [
        f"gpupipe dedup: {s.rows} images from {s.source} ({s.layout}) on {s.device}, {s.executor}",
        f"  invalid:      {c['invalid']}" + (f"  {c['invalid_by_reason']}" if c["invalid"] else ""),
        f"  duplicates:   {c['duplicates']} in {c['duplicate_groups']} groups "
        f"{ {k: v for k, v in c['duplicates_by_kind'].items() if k in ('bytes', 'pixels', 'near')} }",
        f"  kept:         {c['kept']}",
        f"  label conflicts: {c['label_conflict_groups']} groups; split leaks: {c['split_leak_groups']} groups",
        f"  work: read {h['read']}, decoded {h['decoded']}, byte twins not decoded {h['byte_twins']}; "
        f"near candidates {c['dedup_stage']['candidates']} (pHash within {s.max_distance} bits or shift key "
        f"within {s.shift_distance}), {c['dedup_stage']['verified']} verified the same picture"
        + f" ({', '.join(f'{k} {v}' for k, v in s.verify.items())})",
        *_recall_lines(getattr(s, "recall", {}) or {}),
        f"  time: {s.seconds['total']:.2f} s ({ips['total']:.0f} images/s; hash stage "
        f"{s.seconds['hash']:.2f} s, dedup {s.seconds['dedup']:.2f} s)",
        f"  wrote {Path(s.run_dir) / 'ledger.parquet'} and summary.json",
    ]
    return "\n".join(lines)


def _bench(args) -> int:
    import json

    from gpupipe.bench import BenchOptions, bench, format_table
    from gpupipe.table import atomic_file

    for name in ("limit", "workers", "repeat", "batch_size", "train_limit"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.recall_sample < 0:
        raise ValueError("--recall-sample must be 0 or more")
    options = BenchOptions(device=args.device, workers=args.workers, scheduler=args.scheduler, limit=args.limit,
                           seed=args.seed, repeat=args.repeat, batch_size=args.batch_size,
                           recall_sample=args.recall_sample, verify=args.verify, image_column=args.image_column,
                           label_column=args.label_column, rank=not args.no_rank, model=args.model,
                           image_size=args.image_size, train_limit=args.train_limit, scratch=args.scratch)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    result = bench(args.src, options, log=log)
    print(format_table(result))
    if args.json:
        with atomic_file(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gpupipe.dali.decode import DaliMissing
    from gpupipe.stages.ingest import SourceError

    from gpupipe.runner import StaleRun
    from gpupipe.lock import RunLocked
    from gpupipe.rundir import PendingReview

    try:
        if args.command == "rank":
            from gpupipe.loop import run_rank

            res = run_rank(args.run_dir, _rank_options(args), log=lambda m: print(m, flush=True),
                           progress=_progress(args.quiet))
            print(f"gpupipe rank: {res.stopped}; " + ", ".join(f"{k} {v}" for k, v in res.counts.items()))
            return 0
        if args.command == "review":
            if args.serve == bool(args.decisions):
                raise ValueError("gpupipe review: give either DECISIONS.csv or --serve")
            if args.serve:
                from gpupipe.serve import serve

                serve(args.run_dir, host=args.host, port=args.port, allow_remote=args.allow_remote,
                      log=lambda m: print(m, flush=True))
                return 0
            from gpupipe.loop import run_review

            out = run_review(args.run_dir, args.decisions)
            print("gpupipe review: " + ", ".join(f"{k} {v}" for k, v in out.items()))
            return 0
        if args.command == "curate":
            from gpupipe.runner import run_curate

            res = run_curate(args.src, args.out, _curate_options(args), progress=_progress(args.quiet),
                             log=lambda m: print(m, flush=True))
            if res.stopped == "awaiting review":
                print(f"gpupipe curate: review {res.queue} and apply it with `gpupipe review {args.out} FILE`, "
                      f"or review in the browser with `gpupipe review {args.out} --serve`; "
                      f"then run this command again")
            else:
                print(f"gpupipe curate: done; {Path(args.out) / 'report.html'}")
                audit = Path(args.out) / "review" / "audit.csv"
                if audit.exists():
                    print(f"gpupipe curate: what the automatic rounds relabeled, left open or removed, the most "
                          f"doubtful first: {audit}; check its first rows, apply it with `gpupipe review {args.out} "
                          f"{audit}`, then run this command again")
            return 0
        if args.command == "augment":
            from gpupipe.loop import write_augment_grid

            if args.samples < 1 or args.variants < 1 or args.image_size < 8:
                raise ValueError("--samples and --variants must be >= 1, --image-size >= 8")
            aug = _augment_config(args)
            if aug is None:
                raise ValueError("--no-augment leaves nothing to show")
            path = write_augment_grid(args.run_dir, args.out, augment=aug, image_size=args.image_size,
                                      samples=args.samples, variants=args.variants, seed=args.seed,
                                      device=args.device)
            print(f"gpupipe augment: wrote {path}")
            return 0
        if args.command == "pretrain":
            from gpupipe.loop import run_pretrain
            from gpupipe.models.pretrain import PretrainConfig

            cfg = PretrainConfig(epochs=args.epochs, batch_size=args.batch, temperature=args.temperature,
                                 image_size=args.image_size)
            path, res = run_pretrain(args.run_dir, args.out, config=cfg, channels=args.channels, seed=args.seed,
                                     device=args.device, log=lambda m: print(m, flush=True))
            gray = res.backbone[0].in_channels == 1
            print(f"gpupipe pretrain: wrote {path} ({res.images} images, {res.seconds:.0f} s); use it with "
                  f"`gpupipe rank {args.run_dir} --backbone gpupipe.models.nets:small_cnn_features"
                  f"{'_gray' if gray else ''} --backbone-weights {path}`"
                  + ("" if gray else " (on colour images the automatic policy holds the relabels its heads "
                     "suggest for a person, as without a backbone)"))
            return 0
        if args.command == "bench":
            return _bench(args)
        options = _options(args)
        if args.command == "dedup":
            from gpupipe.runner import run_dedup

            summary = run_dedup(args.src, args.out, options, progress=_progress(args.quiet))
            print(format_summary(summary))
            return 0
        if args.command == "demo":
            from gpupipe.demo import run_demo

            return run_demo(Path(args.out), _curate_options(args), progress=_progress(args.quiet))
    except (SourceError, DeviceError, DaliMissing, ValueError, OSError, PendingReview, StaleRun, RunLocked) as e:
        print(f"gpupipe: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
