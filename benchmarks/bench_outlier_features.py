"""Which features and which distance rank images of no class best, and cleanlab's
Datalab beside gpupipe on the same out-of-fold models (issue 12, items 2 and
the Datalab comparison).  Small-cnn only (its blocks are read at its ReLUs).

    python benchmarks/bench_outlier_features.py --dataset digits|fashion [--noise symmetric|pair]
        [--reuse]

On the planted tree of ``bench_outlier.py`` (same options; built if missing),
trains the out-of-fold round's fold models the way ``rank --mode oof`` does
(same folds, seeds and settings) and keeps, for each fold model, every
scored row's and every reference row's

* ``emb``: the input of the last linear layer (what gpupipe's score used before §15),
* ``blocks``: the global average of each ReLU's output (one per conv block of
  small-cnn: what `score.feature_taps` reads, the input of each pooling layer),
* ``logits``;

saved in ``.bench/outlier-features-<dataset>-<noise>.npz`` (``--reuse``:
evaluate a saved file).  Then, per fold model (scores put on one scale by the
robust z-score among the rows it scored, as rank does), the average precision
of the planted outliers for:

* the k-th nearest reference distance in ``emb`` or in all blocks' averages
  (each block L2-normalised, side by side), over the whole reference or
  within each class (the smallest over the classes; gpupipe's score since
  §15: every block, within classes, k = `outlier.K`), and each block alone,
* the smallest class-conditional Mahalanobis distance (tied covariance),
* energy (minus the log-sum-exp of the logits) and the max logit,
* cleanlab's Datalab ``outlier`` issue score from ``emb`` or the blocks of
  the rows a fold model scored (its own k-NN among them), per fold,
* the entropy of the neighbours' votes (`outlier.knn_vote` over the blocks),
  and, read from the tree's files, an 8x8 thumbnail of each image (bilinear,
  its mean taken away, L2-normalised) as one more block beside the network's,
  alone and with the entropy added (sum of robust z; RESULTS.md §17; the
  same score through ``rank``: ``benchmarks/patches/outlier-thumbnail-entropy.diff``).

And the label flags F1 of gpupipe's rule against Datalab's ``label`` issues
(pred_probs and features) and ``find_label_issues``, on the same
out-of-fold probabilities.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_outlier import KINDS, add_data_args, average_precision, planted_of, prepare, set_name  # noqa: E402

from gpupipe.models.outlier import FAR, K, knn_distances, knn_vote, normalise, robust_z  # noqa: E402


def flag_label_issues_before(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """gpupipe's flags before §16: cleanlab's count of the highest-loss rows (ties: lower margin)."""
    from cleanlab.filter import find_label_issues

    n, k = probs.shape
    count = int(find_label_issues(labels, probs, n_jobs=1).sum())
    given = probs[np.arange(n), labels]
    other = np.where(np.eye(k, dtype=bool)[labels], -1.0, probs).max(axis=1)
    flags = np.zeros(n, bool)
    flags[np.lexsort((given - other, given))[:count]] = True
    return flags


def capture(model, batches, torch_device: str) -> dict:
    """rows, emb, blocks (list per block), logits of one pass."""
    from gpupipe.models.score import last_linear

    model.eval().to(torch_device)
    acts: list = []
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    hooks = [r.register_forward_hook(lambda m, i, o, j=j: acts.append((j, o.float().mean(dim=(2, 3)))))
             for j, r in enumerate(relus)]
    emb: list = []
    hooks.append(last_linear(model).register_forward_hook(lambda m, i, o: emb.append(i[0].float())))
    out = {"rows": [], "emb": [], "logits": [], "blocks": [[] for _ in relus]}
    try:
        with torch.inference_mode():
            for x, rows in batches:
                acts.clear(), emb.clear()
                logits = model(x.to(torch_device))
                out["rows"].append(np.asarray(rows))
                out["logits"].append(logits.float().cpu().numpy())
                out["emb"].append(emb[0].cpu().numpy())
                for j, a in acts:
                    out["blocks"][j].append(a.cpu().numpy())
    finally:
        for h in hooks:
            h.remove()
    return {"rows": np.concatenate(out["rows"]), "emb": np.concatenate(out["emb"]),
            "logits": np.concatenate(out["logits"]), "blocks": [np.concatenate(b) for b in out["blocks"]]}


def features(run: Path, args) -> dict:
    """Train the oof round's fold models as rank does; their features."""
    from gpupipe.dali.augment import AugmentConfig, file_pipeline
    from gpupipe.device import resolve_device
    from gpupipe.models.outlier import reference_rows
    from gpupipe.models.train import TrainConfig, train
    from gpupipe.runner import LEDGER
    from gpupipe.stages import review
    from gpupipe.stages.rank import _stratified_folds, probe_channels, rows_of
    from gpupipe.table import Ledger

    dev = resolve_device("cpu")
    ledger = Ledger(dev)
    # A tree this script planted has only been deduplicated: the review's columns as the loop adds them.
    rows = rows_of(review.ensure_columns(ledger.read(run / LEDGER), ledger), ledger)
    channels = probe_channels(dev, list(rows.paths[rows.eligible]))
    tcfg = replace(TrainConfig(max_epochs=args.epochs, lr_decay=args.lr_decay, schedule=args.schedule),
                   augment=AugmentConfig.light())
    rng = np.random.default_rng(args.seed)
    elig = np.flatnonzero(rows.eligible)
    fold = _stratified_folds(rows.y[elig], args.folds, rng)
    rel = np.asarray([str(p).rsplit("/tree/", 1)[-1] for p in rows.paths])
    out: dict = {"y": rows.y, "rel": rel, "classes": np.asarray(rows.classes)}
    for f in range(args.folds):
        rest = elig[fold != f]
        is_val = _stratified_folds(rows.y[rest], 10, rng) == 0
        tr, va, sc = rest[~is_val], rest[is_val], elig[fold == f]
        t = time.perf_counter()
        model = train(dev, list(rows.paths[tr]), rows.y[tr], list(rows.paths[va]), rows.y[va],
                      num_classes=len(rows.classes), channels=channels, config=tcfg, seed=args.seed + f).model
        t_train = time.perf_counter() - t
        ref = reference_rows(tr, args.seed + f)
        for part, pos in (("scored", sc), ("ref", ref)):
            c = capture(model, file_pipeline(dev, list(rows.paths[pos]), pos, size=tcfg.image_size,
                                             channels=channels, batch_size=1024), "cpu")
            order = np.argsort(c["rows"])
            out[f"f{f}_{part}_rows"] = c["rows"][order]
            out[f"f{f}_{part}_emb"] = c["emb"][order]
            out[f"f{f}_{part}_logits"] = c["logits"][order]
            for j, b in enumerate(c["blocks"]):
                out[f"f{f}_{part}_block{j}"] = b[order]
        print(f"fold {f}: trained on {len(tr)} in {t_train:.0f} s, scored {len(sc)}", flush=True)
    return out


def knn(q: np.ndarray, ref: np.ndarray, k: int, labels: np.ndarray | None = None) -> np.ndarray:
    return knn_distances(q, ref, labels, k=k)


def blockcat(z: dict, f: int, part: str, nblocks: int) -> np.ndarray:
    """All blocks' averages, each L2-normalised, side by side (`score.feature_taps`'s features)."""
    return np.concatenate([normalise(z[f"f{f}_{part}_block{j}"], "cpu").numpy() for j in range(nblocks)], axis=1)


def mahalanobis(q: np.ndarray, ref: np.ndarray, y_ref: np.ndarray) -> np.ndarray:
    """Smallest class-conditional Mahalanobis distance, one covariance shared by the classes (Lee et al. 2018)."""
    qn, rn = normalise(q, "cpu").numpy().astype(np.float64), normalise(ref, "cpu").numpy().astype(np.float64)
    classes = np.unique(y_ref)
    means = np.stack([rn[y_ref == c].mean(0) for c in classes])
    centred = rn - means[np.searchsorted(classes, y_ref)]
    prec = np.linalg.pinv(np.cov(centred, rowvar=False) + 1e-6 * np.eye(rn.shape[1]))
    d = np.stack([np.einsum("nd,de,ne->n", qn - m, prec, qn - m) for m in means], axis=1)
    return np.sqrt(np.maximum(d.min(1), 0))


GPUPIPE = f"gpupipe: blocks, within classes, k={K}"
THUMB_ENT = "thumbnail + blocks, + entropy of the votes (sum of z)"


def thumbnails(tree: Path, rel: np.ndarray, side: int = 8) -> np.ndarray:
    """float32 (N, side*side): each file's grey thumbnail, bilinear, its mean
    taken away, L2-normalised (NaN-free; a flat image gives zeros)."""
    from PIL import Image

    t = np.stack([np.asarray(Image.open(tree / r).convert("L").resize((side, side), Image.BILINEAR), np.float32)
                  .ravel() for r in rel])
    return normalise(t - t.mean(1, keepdims=True), "cpu").numpy()


def scores_per_fold(z: dict, folds: int, thumbs: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """rows scored (all folds) and each candidate's outlier score over them
    (higher = more outlying; z-scored per fold model, as rank does);
    ``thumbs`` (`thumbnails` of every row): the thumbnail candidates too."""
    nblocks = sum(1 for k in z if k.startswith("f0_scored_block"))
    rows, cand = [], {}

    def put(name, raw):
        cand.setdefault(name, []).append(raw)

    for f in range(folds):
        rows.append(z[f"f{f}_scored_rows"])
        y_ref = z["y"][z[f"f{f}_ref_rows"]]
        s, r = z[f"f{f}_scored_emb"], z[f"f{f}_ref_emb"]
        sb, rb = blockcat(z, f, "scored", nblocks), blockcat(z, f, "ref", nblocks)
        put("emb, global, k=50 (gpupipe before)", knn(s, r, 50))
        put("blocks, global, k=50", knn(sb, rb, 50))
        put("emb, within classes, k=20", knn(s, r, 20, y_ref))
        dist = {k: knn(sb, rb, k, y_ref) for k in sorted({5, 10, 20, 30, K})}
        for k, d in dist.items():
            put(GPUPIPE if k == K else f"blocks, within classes, k={k}", d)
        for j in range(nblocks):
            put(f"block {j} alone, within classes, k={K}",
                knn(z[f"f{f}_scored_block{j}"], z[f"f{f}_ref_block{j}"], K, y_ref))
        votes = knn_vote(sb, rb, y_ref, len(z["classes"]))
        entropy = -(votes * np.log(votes)).sum(1)            # neighbours of many classes: no class's?
        put("entropy of the neighbours' votes (k=30)", entropy)
        z_dist, z_ent = robust_z([dist[K]])[0], robust_z([entropy])[0]
        put("gpupipe + entropy of the votes (sum of z)", z_dist + z_ent)
        if thumbs is not None:
            ts, tr = thumbs[z[f"f{f}_scored_rows"]], thumbs[z[f"f{f}_ref_rows"]]
            d_thumb = knn(np.hstack([ts, sb]), np.hstack([tr, rb]), K, y_ref)
            z_thumb = robust_z([d_thumb])[0]
            put("thumbnail alone, within classes, k=20", knn(ts, tr, K, y_ref))
            put("thumbnail + blocks, within classes, k=20", d_thumb)
            put(THUMB_ENT, z_thumb + z_ent)
            # Neighbours outside the two most-voted classes: a clean image between two
            # classes has few, an image of no class among many classes has many.
            beyond = 1.0 - np.sort(votes, axis=1)[:, -2:].sum(1)
            z_beyond = robust_z([beyond])[0]
            put("votes beyond the top two classes", beyond)
            put("gpupipe + votes beyond the top two (sum of z)", z_dist + z_beyond)
            put("thumbnail + blocks, + votes beyond the top two (sum of z)", z_thumb + z_beyond)
        put("Mahalanobis (emb, tied covariance)", mahalanobis(s, r, y_ref))
        logits = torch.as_tensor(z[f"f{f}_scored_logits"])
        put("energy (logits)", (-torch.logsumexp(logits, 1)).numpy())
        put("max logit", (-logits.max(1).values).numpy())
        put("Datalab outlier (emb)", -datalab_outlier(s))
        put("Datalab outlier (blocks)", -datalab_outlier(sb))
    return np.concatenate(rows), {k: np.concatenate(v if k.startswith("Datalab") else [robust_z([x])[0] for x in v])
                                  for k, v in cand.items()}


def datalab_outlier(feats: np.ndarray) -> np.ndarray:
    """cleanlab Datalab's outlier issue score (1 typical .. 0 outlying) from features."""
    from cleanlab import Datalab

    lab = Datalab(data={"x": np.arange(len(feats))}, verbosity=0)
    lab.find_issues(features=feats, issue_types={"outlier": {}})
    return lab.get_issues("outlier")["outlier_score"].to_numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(ap)
    ap.add_argument("--reuse", action="store_true", help="evaluate the saved features")
    args = ap.parse_args()
    name = set_name(args)
    base = Path(args.data) / f"outlier-{name}"
    npz = Path(args.data) / f"outlier-features-{name}.npz"
    if not args.reuse:
        if not (base / "run" / "ledger.parquet").exists():
            planted, _ = prepare(args, base)
            (base / "planted.json").write_text(json.dumps(planted))
        t = time.perf_counter()
        np.savez_compressed(npz, **{k: v for k, v in features(base / "run", args).items()})
        print(f"features: {time.perf_counter() - t:.0f} s")
    planted = planted_of(args, base)
    z = dict(np.load(npz, allow_pickle=False))
    tree = base / "tree"
    rows, cand = scores_per_fold(z, args.folds, thumbnails(tree, z["rel"]) if tree.is_dir() else None)
    rel = z["rel"][rows]
    kind = np.asarray([planted["outliers"].get(r, "") for r in rel])
    is_out = kind != ""
    flips = set(planted["flipped"])
    is_flip = np.asarray([r in flips for r in rel])
    print(f"## {name}: {len(rows)} scored, {is_out.sum()} outliers, {is_flip.sum()} flips\n")
    print("| outlier score | outliers AP | " + " | ".join(KINDS) + " |")
    print("|---|---|" + "---|" * len(KINDS))
    res = {}
    for nm, sc in cand.items():
        by = {k: average_precision(sc[~is_out | (kind == k)], (kind == k)[~is_out | (kind == k)]) for k in KINDS}
        res[nm] = {"ap": round(average_precision(sc, is_out), 3), **{k: round(v, 3) for k, v in by.items()}}
        print(f"| {nm} | {res[nm]['ap']:.3f} | " + " | ".join(f"{by[k]:.3f}" for k in KINDS) + " |")
    out = {"set": name, "outlier_ap": res, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out["labels"] = label_flags(z, rows, cand[GPUPIPE] >= FAR, is_out, is_flip, args.folds)
    (Path(args.data) / f"outlier-features-{name}.json").write_text(json.dumps(out, indent=2))
    return 0


def label_flags(z: dict, rows, far, is_out, is_flip, folds: int) -> dict:
    """Precision, recall and F1 of the flags against the planted flips (the
    images of no class are not flips: flagging one counts as a false flag).

    gpupipe: its rule as rank applies it (`flag_label_issues` over the rows
    whose outlier score is below FAR, with the neighbours' votes from every
    block, `outlier.knn_vote`); before §16: the highest-loss rows at
    cleanlab's count over those rows, no votes; before §15: that over every
    row; cleanlab ``find_label_issues`` (defaults) and
    Datalab's ``label`` issue (pred_probs, and pred_probs with the features)
    over every row, as their users would run them; and cleanlab over the rows
    below FAR, for the rule's share of the difference."""
    from cleanlab import Datalab
    from cleanlab.filter import find_label_issues

    from gpupipe.models.score import flag_label_issues

    logits = np.concatenate([z[f"f{f}_scored_logits"] for f in range(folds)])
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy()
    emb = np.concatenate([normalise(z[f"f{f}_scored_emb"], "cpu").numpy() for f in range(folds)])
    y = z["y"][rows]
    nblocks = sum(1 for k in z if k.startswith("f0_scored_block"))
    votes = np.concatenate([knn_vote(blockcat(z, f, "scored", nblocks), blockcat(z, f, "ref", nblocks),
                                     z["y"][z[f"f{f}_ref_rows"]], len(z["classes"])) for f in range(folds)])

    def f1(flag):
        tp = (flag & is_flip).sum()
        p, r = tp / max(1, flag.sum()), tp / max(1, is_flip.sum())
        return {"precision": round(float(p), 3), "recall": round(float(r), 3),
                "f1": round(float(2 * p * r / max(p + r, 1e-9)), 3), "flagged": int(flag.sum()),
                "outliers_flagged": int((flag & is_out).sum())}

    def on_near(fn):
        flag = np.zeros(len(y), bool)
        flag[np.flatnonzero(~far)[fn(y[~far], probs[~far])]] = True
        return flag

    res = {"gpupipe": f1(on_near(lambda a, b: flag_label_issues(a, b, votes[~far]))),
           "gpupipe before §16 (the loss order, no votes)": f1(on_near(flag_label_issues_before)),
           "gpupipe before §15 (all rows)": f1(flag_label_issues_before(y, probs)),
           "cleanlab find_label_issues": f1(find_label_issues(y, probs))}
    for feats in (False, True):
        lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
        lab.find_issues(pred_probs=probs, features=emb if feats else None, issue_types={"label": {}})
        res["Datalab label" + (" (+features)" if feats else "")] = f1(lab.get_issues("label")["is_label_issue"]
                                                                      .to_numpy())
    res["cleanlab, rows below FAR"] = f1(on_near(lambda a, b: find_label_issues(a, b)))
    print("\n| label flags | precision | recall | F1 | flagged | of which images of no class |\n|---|---|---|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v['precision']} | {v['recall']} | {v['f1']} | {v['flagged']} | {v['outliers_flagged']} |")
    return res


if __name__ == "__main__":
    sys.exit(main())
