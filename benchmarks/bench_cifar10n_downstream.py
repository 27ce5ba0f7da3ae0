"""Downstream effect of curation on real label noise: CIFAR-10N (issue 25, item 5).

    python benchmarks/bench_cifar10n_downstream.py --part choose|judge [--tag auto]
        [--cifar /tmp/cifar10] [--epochs 20] [--fits 2] [--review 1000] [--only NAME ...]

Reads the out-of-fold round `bench_cifar10n.py` kept for the part
(``.bench/cifar10n-aggre-<part>-10000/oof-<tag>``: its ledger is scored and
left undecided) and trains one fixed model, the same recipe every time, on
the part's 10,000 training images labelled seven ways:

* raw: the CIFAR-10N ``aggre`` labels as given (9% wrong);
* automatic (gated): ``--review auto``'s round-1 decisions with the defaults
  (relabels and removes the policy expects to be right >= 90% of the time);
* thresholds alone: the same round with ``--min-precision off`` (the policy
  before issue 25: fixed probability thresholds);
* curated: gated, suspects out: what curate's balance stage keeps after that
  round: the rows it leaves open yet flags ``is_mislabeled_issue`` (or finds
  far from every class) are left out as suspects (`balance.suspects`), the
  flags recomputed from the kept probabilities (and margins, where the run
  has `rank_train_margin`) by the code at hand (`score.flag_label_issues`,
  as `rank` writes them);
* the same with the flags counted as before RESULTS.md §29 (as many as
  cleanlab's ``find_label_issues`` on the same mix);
* reviewed, gpupipe order: a person checks the first ``--review`` rows of
  gpupipe's review order (`review.label_suspicion`, with the margins where
  the run has them) and gives each its true
  label (every CIFAR-10 image is a valid picture of one class);
* reviewed, cleanlab order: the same effort spent on cleanlab's order
  (``find_label_issues(..., return_indices_ranked_by="self_confidence")`` on
  the same out-of-fold probabilities, the rows it does not flag after them in
  self-confidence order);
* cleanlab pruned: cleanlab's usual recipe without a person, the rows
  ``find_label_issues`` flags left out;
* clean: the original labels (the truth).

The fixed model: small-cnn (the auxiliary models' network), Adam 1e-3 on a
cosine decay to 0, the photo augmentation set, ``--epochs`` passes over the
training rows, no early stopping; tested on CIFAR-10's 10,000 test images (JPEGs under
``<cifar>/test``).  Each accuracy is the mean of ``--fits`` trainings (model
seeds 0..fits-1, the same for every set).  Results accumulate in
``<data>/downstream-<tag>.json`` (a set already trained there is not trained
again unless its rows or labels changed), then print as Markdown: accuracy,
the share of the raw-to-clean gap recovered, label errors left and rows kept.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cifar10n import PARTS  # noqa: E402

from gpupipe import schema  # noqa: E402
from gpupipe.dali.augment import AugmentConfig, file_pipeline  # noqa: E402
from gpupipe.device import resolve_device  # noqa: E402
from gpupipe.models.score import score  # noqa: E402
from gpupipe.runner import LEDGER  # noqa: E402

SETS = ("raw", "automatic (gated)", "thresholds alone", "curated: gated, suspects out",
        "curated: gated, suspects out (cleanlab's count)", "reviewed, gpupipe order", "reviewed, cleanlab order",
        "cleanlab pruned", "clean")


def training_sets(run: Path, truth: dict, review: int) -> tuple[dict, list[str], dict]:
    """{set name: (files, labels as class names)} for the part's scored rows,
    the class names, and per set the label errors left and the rows changed."""
    from cleanlab.filter import find_label_issues

    from gpupipe.models.outlier import is_far
    from gpupipe.models.score import flag_label_issues, with_votes
    from gpupipe.stages.rank import rows_of
    from gpupipe.stages.review import AutoPolicy, auto_decisions, each_model, ensure_columns, label_suspicion
    from gpupipe.table import Ledger

    ledger = Ledger(resolve_device("cpu"))
    frame = ensure_columns(ledger.read(run / LEDGER), ledger)
    classes = json.loads((run / "rank.json").read_text())["classes"]
    rel = ledger.host(frame, schema.REL_PATH)[0].astype(str)
    path = ledger.host(frame, schema.PATH)[0].astype(str)
    given = ledger.host(frame, schema.LABEL)[0].astype(str)
    loss = ledger.host(frame, schema.RANK_LOSS)[0].astype(float)
    probs = ledger.host(frame, schema.RANK_PROBS)[0].astype(np.float64)
    votes = ledger.host(frame, schema.RANK_VOTE_GIVEN)[0].astype(float)
    s = np.flatnonzero(rows_of(frame, ledger).eligible & ~np.isnan(loss))
    true = np.array([truth[r] for r in rel[s]])
    lab = np.array([classes.index(g) for g in given[s]])
    p = probs[s]

    def decided(policy, suspects: np.ndarray | None = None) -> np.ndarray:
        d = auto_decisions(frame, ledger, policy, round_no=1)
        where = {int(q): i for i, q in enumerate(s)}
        out = given[s].astype(object)
        settled = np.zeros(len(s), bool)
        for q, act, new in zip(d.positions, d.action, d.new_label):
            i = where[int(q)]
            settled[i] = True
            if act == "relabel":
                out[i] = new
            elif act == "remove":
                out[i] = None
        if suspects is not None:
            out[suspects & ~settled] = None
        return out

    def reviewed(order: np.ndarray) -> np.ndarray:
        out = given[s].astype(object)
        out[order[:review]] = true[order[:review]]
        return out

    # The flags as rank writes them (its rows: scored, eligible, not far), with
    # today's count and with cleanlab's (the rule before RESULTS.md §29).
    has_votes = ledger.host(frame, schema.RANK_VOTES)[1][s]
    far = is_far(*ledger.host(frame, schema.RANK_OUTLIER))[s]
    mix = with_votes(p, np.where(has_votes[:, None], ledger.host(frame, schema.RANK_VOTES)[0][s], np.nan))
    now, before = np.zeros(len(s), bool), np.zeros(len(s), bool)
    each = each_model(frame, ledger, p.shape[1])          # rank --models M: the count reads M
    models = each[0].shape[1] if each is not None and each[1][s].all() else 1
    margin = np.full(len(s), np.nan)          # rank_train_margin (RESULTS.md §36; older runs lack it)
    if schema.RANK_TRAIN_MARGIN in frame.columns:
        m, has_m = ledger.host(frame, schema.RANK_TRAIN_MARGIN)
        margin = np.where(has_m, m, np.nan)[s].astype(np.float64)
    now[~far] = flag_label_issues(lab[~far], mix[~far], models=models, margins=margin[~far])
    before[~far] = flags_cleanlab_count(lab[~far], mix[~far])
    ours = np.argsort(-label_suspicion(loss[s], p[np.arange(len(s)), lab], votes[s], margin), kind="stable")
    flagged = find_label_issues(lab, p, return_indices_ranked_by="self_confidence", n_jobs=1)
    rest = np.setdiff1d(np.arange(len(s)), flagged)
    rest = rest[np.argsort(p[rest, lab[rest]], kind="stable")]      # least self-confident first
    pruned = given[s].astype(object)
    pruned[flagged] = None
    labels = {"raw": given[s].astype(object),
              "automatic (gated)": decided(AutoPolicy()),
              "thresholds alone": decided(AutoPolicy(min_precision=None)),
              "curated: gated, suspects out": decided(AutoPolicy(), now | far),
              "curated: gated, suspects out (cleanlab's count)": decided(AutoPolicy(), before | far),
              "reviewed, gpupipe order": reviewed(ours),
              "reviewed, cleanlab order": reviewed(np.concatenate([flagged, rest])),
              "cleanlab pruned": pruned,
              "clean": true.astype(object)}
    print(f"flags: {int(now.sum())} ({int((now & (given[s] != true)).sum())} wrong labels); with cleanlab's "
          f"count {int(before.sum())} ({int((before & (given[s] != true)).sum())}); far {int(far.sum())}", flush=True)
    sets, info = {}, {}
    for name, y in labels.items():
        keep = np.array([v is not None for v in y])
        sets[name] = (path[s][keep].tolist(), y[keep].astype(str).tolist())
        changed = keep & (y != given[s]) | ~keep
        info[name] = {"rows": int(keep.sum()), "label_errors_left": int((y[keep] != true[keep]).sum()),
                      "rows_changed_or_removed": int(changed.sum()),
                      "clean_rows_changed_or_removed": int((changed & (given[s] == true)).sum())}
    return sets, classes, info


def flags_cleanlab_count(labels: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """`score.flag_label_issues` before RESULTS.md §29: the same order, as many
    rows as cleanlab's ``find_label_issues`` flags in the same mix."""
    from cleanlab.filter import find_label_issues

    from gpupipe.models.score import flag_order

    flags = np.zeros(len(labels), bool)
    flags[flag_order(labels, mix)[:int(find_label_issues(labels, mix, n_jobs=1).sum())]] = True
    return flags


def test_files(cifar: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    files = sorted((cifar / "test").glob("*/*.jpg"))
    if len(files) != 10_000:
        raise SystemExit(f"{cifar / 'test'}: expected CIFAR-10's 10,000 test JPEGs, found {len(files)}")
    return [str(f) for f in files], np.array([classes.index(f.parent.name) for f in files])


def fit_and_test(dev, files, y, test, test_y, *, epochs: int, seed: int) -> float:
    """One training of the fixed model, then its accuracy on ``test``.

    The network and the data pipeline are the auxiliary models' (small-cnn,
    `file_pipeline` with the photo set), but not `models.train.train`'s
    constant learning rate: Adam 1e-3 decayed to 0 on a cosine over the
    epochs, so that where training stops does not move the accuracy (with the
    constant rate two fits on one set differed by 2 points, and ten rows
    changed in 9,997 moved a fit by 2-4 points)."""
    from gpupipe.models import nets

    torch.manual_seed(seed)
    model = nets.build(nets.resolve_model("small-cnn"), 10, 3, seed=seed).to(dev.torch_device)
    batches = file_pipeline(dev, files, np.arange(len(files)), size=32, channels=3, batch_size=64,
                            augment=AugmentConfig.photo(), shuffle=True, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * -(-len(files) // 64)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + np.cos(np.pi * min(i, steps) / steps)))
    target = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    for _ in range(epochs):
        model.train()
        for x, r in batches:
            loss = torch.nn.functional.cross_entropy(model(nets.as_input(x)), target[torch.as_tensor(r)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    s = score(model, file_pipeline(dev, test, np.arange(len(test)), size=32, channels=3, batch_size=512),
              test_y, torch_device=dev.torch_device)
    return float((s.pred == test_y[s.rows]).mean())


def markdown(out: dict) -> str:
    acc = {k: float(np.mean(v)) for k, v in out["fits"].items()}
    gap = acc.get("clean", np.nan) - acc.get("raw", np.nan)
    a = out["args"]
    lines = [f"CIFAR-10N aggre, part {a['part']}, round oof-{a['tag']}; small-cnn, photo set, cosine, {a['epochs']} epochs, "
             f"mean of {a['fits']} fit(s); tested on CIFAR-10's 10,000 test images; a person reviews "
             f"{a['review']} rows in the reviewed sets", "",
             "| training set | rows | label errors left | rows changed (clean among them) | accuracy (fits) "
             "| gap recovered |", "|---|---|---|---|---|---|"]
    for name in SETS:
        if name not in acc:
            continue
        i = out["sets"][name]
        rec = (acc[name] - acc["raw"]) / gap if np.isfinite(gap) and gap > 0 else np.nan
        lines.append(f"| {name} | {i['rows']} | {i['label_errors_left']} | {i['rows_changed_or_removed']} "
                     f"({i['clean_rows_changed_or_removed']}) | {acc[name]:.4f} "
                     f"({', '.join(f'{x:.4f}' for x in out['fits'][name])}) | {rec:.0%} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cifar", default="/tmp/cifar10", help="the extracted cifar10-jpeg.tar.gz")
    ap.add_argument("--part", choices=tuple(PARTS), default="judge")
    ap.add_argument("--tag", default="auto", help="which kept round: <data>/cifar10n-aggre-<part>-10000/oof-<tag>")
    ap.add_argument("--data", default=".bench")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--fits", type=int, default=2)
    ap.add_argument("--review", type=int, default=1000, help="rows a person reviews in the reviewed sets")
    ap.add_argument("--only", nargs="+", choices=SETS, default=None, help="train only these sets")
    args = ap.parse_args()
    part = Path(args.data) / f"cifar10n-aggre-{args.part}-10000"
    run = part / f"oof-{args.tag}"
    if not (run / LEDGER).exists():
        ap.error(f"{run}: no kept round; run benchmarks/bench_cifar10n.py --part {args.part} first")
    truth = json.loads((part / "truth.json").read_text())
    sets, classes, info = training_sets(run, truth, args.review)
    test, test_y = test_files(Path(args.cifar), classes)
    dev = resolve_device("cpu")
    store = part / f"downstream-{args.tag}.json"
    out = json.loads(store.read_text()) if store.exists() else {"fits": {}, "seconds": {}}
    same = {"schedule": "cosine", **{k: v for k, v in vars(args).items() if k in ("epochs", "fits", "review")}}
    if out.get("recipe", same) != same:
        out = {"fits": {}, "seconds": {}}          # another recipe: start again
    out.update(recipe=same, args=vars(args), sets=info, date=time.strftime("%Y-%m-%d"),
               machine=f"{platform.node()} {platform.processor() or platform.machine()}, "
                       f"{torch.get_num_threads()} torch threads")
    digests = out.setdefault("set_digests", {})
    for name in args.only or SETS:
        files, y = sets[name]
        # a kept fit counts only for the same rows and labels (the code at hand may flag other rows)
        digest = xxhash.xxh3_64_hexdigest("\n".join(f"{f}\t{c}" for f, c in zip(files, y)).encode())
        if name in out["fits"] and digests.get(name) == digest:
            continue
        digests[name] = digest
        t = time.perf_counter()
        out["fits"][name] = [fit_and_test(dev, files, np.array([classes.index(c) for c in y]), test, test_y,
                                          epochs=args.epochs, seed=f) for f in range(args.fits)]
        out["seconds"][name] = round(time.perf_counter() - t, 1)
        print(f"{name}: {out['fits'][name]} ({out['seconds'][name]} s)", flush=True)
        tmp = store.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2))
        tmp.replace(store)
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
