"""Which training recipe gives the most accurate out-of-fold model per CPU-second
on real noisy photos?  A study outside the pipeline (issue 25).

    python benchmarks/bench_photo_recipe.py --cifar /tmp/cifar10 \
        --labels ../shared/data/cifar10/cifar10n_labels_dev.csv --part choose \
        --recipe base-es sgd-cos mid-sgd ... [--fold 0] [--no-val] [--flip-tta]

One fold of `rank --mode oof`'s split (5 folds, 10% of the rest for
validation) of a CIFAR-10N part under `aggre` labels: each recipe trains on the
fold's ~7,200 images with their noisy labels and is scored on the fold's held-out
2,000 against the original labels (the truth).  Images are decoded once into
memory and augmented in torch (a crop of 80-100% of the area resized back,
a horizontal flip: the photo set's geometry, no colour jitter), so that the
recipes, not DALI, are compared.  Prints one line per recipe: wall seconds,
epochs, held-out accuracy vs truth and vs the given labels.

Recipes (`RECIPES`): ``base-es`` is `rank`'s training before one cycle (Adam
at 1e-3, early stopping after 5 epochs without a better validation loss);
``sgd-cos`` is `TrainConfig.schedule = "onecycle"` (SGD, Nesterov, one
cycle to 0.1, weight decay 5e-4, label smoothing 0.1, 30 epochs); the
others vary one thing of it (``-ls0``/``-ls2`` label smoothing, ``-lr05``/
``-lr2`` the peak rate, ``-wd1e3``, ``-45``/``-60`` epochs) or the network
(``mid-sgd``: small-cnn at 1.5x the width, registered as ``photo-cnn``;
``wide-sgd``: 2x; ``res*``: a compact ResNet).  ``--no-val`` trains on the
validation rows too (what one cycle does in `rank`), ``--flip-tta`` scores
each image as the mean of it and its mirror.

Batch-level variants of photo-cnn's recipe (`EXTRA`, RESULTS.md §36):
``mid-mixup02`` / ``mid-mixup1`` (mixup, Beta(0.2) / Beta(1)), ``mid-cutmix1``,
``mid-ema`` (the weights' exponential average, decay 0.999).  ``--aum`` also
prints the F1 at the true count of the training rows' area under the margin
(the given label's logit minus the largest other, averaged over the steps
after the first quarter of the epochs; Pleiss et al. 2020); ``--save F.npz``
trains the first recipe on each of the 5 folds in turn (no validation rows)
and saves every row's out-of-fold probabilities and its margins in the four
folds that trained on it, for an offline reading of the two orders
(RESULTS.md §36).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from gpupipe.models import nets

PARTS = {"choose": (0, 10_000), "judge": (10_000, 20_000)}


def load(args):
    lo, hi = PARTS[args.part]
    xs, noisy, truth, names = [], [], [], {}
    with open(args.labels, newline="") as fh:
        for row in csv.DictReader(fh):
            i = int(row["index"])
            if lo <= i < hi:
                xs.append(np.asarray(Image.open(Path(args.cifar) / row["path"]).convert("RGB")))
                for c in (row["clean"], row[args.noise]):
                    names.setdefault(c, len(names))
                noisy.append(row[args.noise])
                truth.append(row["clean"])
    classes = sorted(names)
    idx = {c: k for k, c in enumerate(classes)}
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div_(255)
    return x, np.array([idx[c] for c in noisy]), np.array([idx[c] for c in truth])


def folds(y, k, rng):
    out = np.empty(len(y), np.int64)
    for c in np.unique(y):
        at = rng.permutation(np.flatnonzero(y == c))
        out[at] = np.arange(len(at)) % k
    return out


def augment(x, gen):
    """Crop 80-100% of the area (aspect 3/4-4/3), resize back to 32, flip half."""
    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(0.8, 1.0, generator=gen)
    ratio = torch.exp(torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen))
    cw = (torch.sqrt(area * ratio) * w).clamp(max=w)
    ch = (torch.sqrt(area / ratio) * h).clamp(max=h)
    x0 = torch.rand(b, generator=gen) * (w - cw)
    y0 = torch.rand(b, generator=gen) * (h - ch)
    # affine grid: output [-1,1] -> crop box in input coords
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cw / w
    theta[:, 1, 1] = ch / h
    theta[:, 0, 2] = (x0 + cw / 2) / w * 2 - 1
    theta[:, 1, 2] = (y0 + ch / 2) / h * 2 - 1
    flip = torch.rand(b, generator=gen) < 0.5
    theta[flip, 0, 0] *= -1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def res_cnn(num_classes, channels, widths=(32, 64, 128), blocks=1):
    """A compact ResNet-ish net: stem conv, per stage [conv-bn-relu, pool, residual of 2 convs]."""
    def cbr(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class Res(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.f = nn.Sequential(cbr(c, c), cbr(c, c))

        def forward(self, x):
            return x + self.f(x)

    layers = [cbr(channels, widths[0])]
    cin = widths[0]
    for k, w in enumerate(widths):
        layers += [cbr(cin, w), nn.MaxPool2d(2)] + [Res(w) for _ in range(blocks)]
        cin = w
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


RECIPES = {
    # name: (factory, optimiser, epochs, lr, label smoothing, schedule, wd, batch)
    "base": (nets.small_cnn, "adam", 30, 1e-3, 0.0, "const", 0.0, 64),
    "base-es": (nets.small_cnn, "adam", 30, 1e-3, 0.0, "const-es", 0.0, 64),
    "adam-cos": (nets.small_cnn, "adam", 30, 2e-3, 0.0, "onecycle", 0.0, 64),
    "adam-cos-ls": (nets.small_cnn, "adam", 30, 2e-3, 0.1, "onecycle", 0.0, 64),
    "sgd-cos": (nets.small_cnn, "sgd", 30, 0.1, 0.1, "onecycle", 5e-4, 64),
    "sgd-cos-128": (nets.small_cnn, "sgd", 30, 0.2, 0.1, "onecycle", 5e-4, 128),
    "res-sgd": (res_cnn, "sgd", 20, 0.1, 0.1, "onecycle", 5e-4, 128),
    "res-sgd-10": (res_cnn, "sgd", 10, 0.1, 0.1, "onecycle", 5e-4, 128),
    "res16-sgd": (lambda k, c: res_cnn(k, c, (16, 32, 64)), "sgd", 20, 0.1, 0.1, "onecycle", 5e-4, 128),
    "res16-sgd-30": (lambda k, c: res_cnn(k, c, (16, 32, 64)), "sgd", 30, 0.1, 0.1, "onecycle", 5e-4, 128),
    "res-adam": (res_cnn, "adam", 20, 2e-3, 0.1, "onecycle", 0.0, 128),
    "wide-sgd": (lambda k, c: nets.small_cnn(k, c, (32, 64, 128, 256)), "sgd", 20, 0.1, 0.1, "onecycle", 5e-4, 128),
    "sgd-cos-60": (nets.small_cnn, "sgd", 60, 0.1, 0.1, "onecycle", 5e-4, 64),
    "sgd-cos-ls0": (nets.small_cnn, "sgd", 30, 0.1, 0.0, "onecycle", 5e-4, 64),
    "sgd-cos-ls2": (nets.small_cnn, "sgd", 30, 0.1, 0.2, "onecycle", 5e-4, 64),
    "res-sgd-30": (res_cnn, "sgd", 30, 0.1, 0.1, "onecycle", 5e-4, 128),
    "sgd-cos-45": (nets.small_cnn, "sgd", 45, 0.1, 0.1, "onecycle", 5e-4, 64),
    "sgd-cos-lr05": (nets.small_cnn, "sgd", 30, 0.05, 0.1, "onecycle", 5e-4, 64),
    "sgd-cos-lr2": (nets.small_cnn, "sgd", 30, 0.2, 0.1, "onecycle", 5e-4, 64),
    "sgd-cos-wd1e3": (nets.small_cnn, "sgd", 30, 0.1, 0.1, "onecycle", 1e-3, 64),
    "mid-sgd": (lambda k, c: nets.small_cnn(k, c, (24, 48, 96, 192)), "sgd", 30, 0.1, 0.1, "onecycle", 5e-4, 64),
    "small-sgd-20": (nets.small_cnn, "sgd", 20, 0.1, 0.1, "onecycle", 5e-4, 64),
}
_MID = RECIPES["mid-sgd"]
#: Variants of photo-cnn's recipe with a batch-level regulariser (issue 25, RESULTS.md §36):
#: name -> (recipe, {"mixup": Beta alpha, "cutmix": Beta alpha, "ema": weight-average decay}).
EXTRA = {
    "mid-mixup02": (_MID, {"mixup": 0.2}),
    "mid-mixup1": (_MID, {"mixup": 1.0}),
    "mid-cutmix1": (_MID, {"cutmix": 1.0}),
    "mid-ema": (_MID, {"ema": 0.999}),
    "mid-mixup02-45": ((*_MID[:2], 45, *_MID[3:]), {"mixup": 0.2}),
}


def evaluate(model, x, batch=512):
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(nets.as_input(x[i:i + batch])).softmax(1))
    return torch.cat(out)


def run(name, x, y, truth, tr, va, te, seed, flip_tta=False, aum=False):
    recipe, extra = EXTRA.get(name, (RECIPES.get(name), {}))
    factory, opt_name, epochs, lr, ls, sched, wd, batch = recipe
    torch.manual_seed(seed)
    model = nets.to_layout(factory(10, 3))
    params = model.parameters()
    opt = (torch.optim.Adam(params, lr=lr, weight_decay=wd) if opt_name == "adam"
           else torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd))
    steps = epochs * math.ceil(len(tr) / batch)
    sch = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
           if sched == "onecycle" else None)
    gen = torch.Generator().manual_seed(seed)
    yt = torch.as_tensor(y)
    t0 = time.perf_counter()
    best, best_state, stale, ran = math.inf, None, 0, 0
    margin_sum = torch.zeros(len(y), dtype=torch.float64)      # --aum: the given label's margin on its
    margin_n = torch.zeros(len(y), dtype=torch.float64)        # training steps (Pleiss et al. 2020)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(extra["ema"]),
        use_buffers=True) if "ema" in extra else None
    for ep in range(epochs):
        model.train()
        perm = torch.as_tensor(tr)[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(perm), batch):
            at = perm[i:i + batch]
            xb = augment(x[at], gen)
            yb, mix = yt[at], None
            if "mixup" in extra or "cutmix" in extra:
                a = extra.get("mixup", extra.get("cutmix"))
                lam = float(torch.distributions.Beta(a, a).sample())
                perm_b = torch.randperm(len(at), generator=gen)
                if "mixup" in extra:
                    xb = lam * xb + (1 - lam) * xb[perm_b]
                else:
                    h = w = xb.shape[-1]
                    rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
                    cy, cx = int(torch.randint(h, (1,), generator=gen)), int(torch.randint(w, (1,), generator=gen))
                    y0, y1, x0, x1 = max(cy - rh // 2, 0), min(cy + rh // 2, h), max(cx - rw // 2, 0), min(cx + rw // 2, w)
                    xb = xb.clone()
                    xb[:, :, y0:y1, x0:x1] = xb[perm_b][:, :, y0:y1, x0:x1]
                    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
                mix = (yb[perm_b], lam)
            out = model(nets.as_input(xb))
            if aum and mix is None and ep >= epochs // 4:     # after the warm-up
                with torch.no_grad():
                    lo = out.detach().double()
                    given = lo.gather(1, yb[:, None])[:, 0]
                    other = lo.scatter(1, yb[:, None], -math.inf).max(1).values
                    margin_sum.index_add_(0, at, given - other)
                    margin_n.index_add_(0, at, torch.ones(len(at), dtype=torch.float64))
            loss = F.cross_entropy(out, yb, label_smoothing=ls)
            if mix is not None:
                loss = mix[1] * loss + (1 - mix[1]) * F.cross_entropy(out, mix[0], label_smoothing=ls)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sch is not None:
                sch.step()
            if ema is not None:
                ema.update_parameters(model)
        ran = ep + 1
        if sched == "const-es":
            p = evaluate(model, x[va])
            vl = float(F.nll_loss(p.clamp_min(1e-12).log(), yt[va]))
            if vl < best - 1e-4:
                best, stale = vl, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= 5:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    if ema is not None:
        model = ema.module
    secs = time.perf_counter() - t0
    p = evaluate(model, x[te])
    if flip_tta:
        p = (p + evaluate(model, x[te].flip(3))) / 2
    p = p.numpy()
    pred = p.argmax(1)
    acc_t = float((pred == truth[te]).mean())
    acc_n = float((pred == y[te]).mean())
    nll = float(-np.log(np.clip(p[np.arange(len(te)), y[te]], 1e-12, 1)).mean())
    err = y[te] != truth[te]
    worst = np.argsort(p[np.arange(len(te)), y[te]], kind="stable")[:int(err.sum())]
    f1_true = float(err[worst].mean())     # precision = recall = F1 when as many are flagged as are wrong
    if aum:
        m = (margin_sum[tr] / margin_n[tr].clamp_min(1)).numpy()
        e_tr = y[tr] != truth[tr]
        low = np.argsort(m, kind="stable")[:int(e_tr.sum())]
        print(f"    AUM on the {len(tr)} training rows ({int(e_tr.sum())} wrong): F1 at true count "
              f"{float(e_tr[low].mean()):.3f}", flush=True)
    nparam = sum(q.numel() for q in model.parameters())
    print(f"{name:14s}{' no-val' if len(tr) + len(va) == len(y) - len(te) and len(tr) > 7500 else ''}"
          f"{' flip-tta' if flip_tta else ''} params {nparam:8d} epochs {ran:3d} {secs:7.1f} s  acc vs truth {acc_t:.3f}  "
          f"vs given {acc_n:.3f}  nll(given) {nll:.3f}  F1 at true count {f1_true:.3f}", flush=True)
    run.margins = (margin_sum / margin_n.clamp_min(1)).numpy(), margin_n.numpy() > 0
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar", default="/tmp/cifar10")
    ap.add_argument("--labels", default="../shared/data/cifar10/cifar10n_labels_dev.csv")
    ap.add_argument("--part", default="choose", choices=sorted(PARTS))
    ap.add_argument("--noise", default="aggre")
    ap.add_argument("--recipe", nargs="+", default=["base"])
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-val", action="store_true", help="train on the validation rows too")
    ap.add_argument("--flip-tta", action="store_true", help="score as the mean of the image and its mirror")
    ap.add_argument("--save", default=None,
                    help="every fold in turn (one recipe): save the out-of-fold probabilities and each "
                         "row's training margins per fold to this .npz")
    ap.add_argument("--aum", action="store_true",
                    help="also the training rows' area under the margin: F1 of its order on them")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y, truth = load(args)
    rng = np.random.default_rng(args.seed)
    fold = folds(y, 5, rng)
    rest = np.flatnonzero(fold != args.fold)
    is_val = folds(y[rest], 10, rng) == 0
    tr, va, te = rest[~is_val], rest[is_val], np.flatnonzero(fold == args.fold)
    if args.no_val:
        tr = rest
    print(f"{args.part}: train {len(tr)}, val {len(va)}, held out {len(te)}; "
          f"noise in held out {(y[te] != truth[te]).mean():.3f}", flush=True)
    if args.save:
        probs = np.zeros((len(y), 10))
        margins = np.full((5, len(y)), np.nan)
        for f in range(5):
            rest = np.flatnonzero(fold != f)
            te = np.flatnonzero(fold == f)
            probs[te] = run(args.recipe[0], x, y, truth, rest, rest[:0], te, args.seed + f, args.flip_tta, True)
            m, has = run.margins
            margins[f, has] = m[has]
        np.savez(args.save, probs=probs, margins=margins, y=y, truth=truth)
        return
    for name in args.recipe:
        if name not in RECIPES and name not in EXTRA:
            raise SystemExit(f"unknown recipe {name!r}")
        run(name, x, y, truth, tr, va, te, args.seed, args.flip_tta, args.aum)


if __name__ == "__main__":
    main()
