"""How the automatic policy should estimate the precision of its decisions:
four estimates of P(true class | image, given label), each read as "make the
decisions the thresholds propose whose estimate reaches the bar", against
the truth.

    python benchmarks/bench_policy_estimators.py RUN_DIR TRUTH.json [RUN_DIR TRUTH.json ...]
    python benchmarks/bench_policy_estimators.py --digits DIR        # builds two digits runs first

RUN_DIR: a run directory whose last round was scored and not yet decided (as
`bench_cifar10n.py` leaves ``oof-<augment>``); TRUTH.json: rel_path -> true
class.  ``--digits DIR`` writes scikit-learn's digits with 10% symmetric flips
(the tests' fixture), ranks them once out-of-fold and once from a trusted
200-image seed set, and adds both runs.

Estimates (all over the scored rows, the model's out-of-sample probabilities):
- ``cleanlab-joint``: probabilities as they are, cleanlab's calibrated
  confident joint as the noise (`label_error_odds`'s posterior, even=0);
- ``temp-then-em``: one temperature fitted to the given labels, then a full
  noise transition by EM under it;
- ``joint-full``: temperature and a full transition fitted together;
- ``joint-rate`` (what `gpupipe.models.score.label_posterior` does):
  temperature, one noise rate and a confusion shape fitted together;
- ``joint-rate on the mix``: the same on the model's probabilities mixed with
  the neighbours' votes (`score.with_votes`, what the flags read), where the
  run has votes.
For each: the estimated noise rate, and at bars 0.8 / 0.9 / 0.99 the relabels
and removes made (among those the default thresholds propose), how many were
right, and how many clean rows they changed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from gpupipe import schema


def load(run: Path, truth_file: Path):
    from gpupipe.device import resolve_device
    from gpupipe.stages.rank import rows_of
    from gpupipe.stages.review import ensure_columns
    from gpupipe.table import Ledger

    truth = json.loads(Path(truth_file).read_text())
    ledger = Ledger(resolve_device("cpu"))
    frame = ensure_columns(ledger.read(run / "ledger.parquet"), ledger)
    classes = json.loads((run / "rank.json").read_text())["classes"]
    rows = rows_of(frame, ledger)
    open_ = rows.eligible & ~rows.certified
    rel = ledger.host(frame, schema.REL_PATH)[0].astype(str)
    probs = ledger.host(frame, schema.RANK_PROBS)[0]
    s = np.flatnonzero(open_ & np.array([p is not None and np.isfinite(np.asarray(p, float)).all()
                                         for p in probs]))
    p = np.stack([np.asarray(probs[i], np.float64) for i in s])
    given = np.array([classes.index(x) for x in rows.label[s].astype(str)])
    true = np.array([classes.index(truth.get(r, c)) for r, c in zip(rel[s], rows.label[s].astype(str))])
    votes = np.full_like(p, np.nan)
    if schema.RANK_VOTES in frame.columns:
        v, has = ledger.host(frame, schema.RANK_VOTES)
        votes[has[s]] = np.stack([np.asarray(v[i], np.float64) for i in s[has[s]]])
    return p, given, true, votes


def softmax(logp: np.ndarray, log_t: float) -> np.ndarray:
    z = logp / np.exp(log_t)
    z -= z.max(axis=1, keepdims=True)
    q = np.exp(z)
    return q / q.sum(axis=1, keepdims=True)


def estimates(p: np.ndarray, y: np.ndarray, votes: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
    """name -> (posterior (N, K), estimated noise rate)."""
    from cleanlab.count import estimate_joint

    from gpupipe.models.score import label_posterior, with_votes

    n, k = p.shape
    logp = np.log(np.clip(p, 1e-12, 1.0))
    onehot = np.eye(k)[y]
    out = {}

    joint = estimate_joint(y, p)
    t = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-12)
    post = p * t[y]
    out["cleanlab-joint"] = (post / post.sum(1, keepdims=True), float(1 - np.trace(joint)))

    def em(q, t, iters):
        for _ in range(iters):
            r = q * t[y]
            r /= r.sum(1, keepdims=True)
            t = onehot.T @ r
            t /= np.maximum(t.sum(0, keepdims=True), 1e-300)
        return t

    def start():
        t = np.full((k, k), 0.05 / (k - 1))
        np.fill_diagonal(t, 0.95)
        return t

    lt = minimize_scalar(lambda x: -np.log(softmax(logp, x)[np.arange(n), y]).mean(),
                         bounds=(-2, 2), method="bounded").x
    q = softmax(logp, lt)
    t = em(q, start(), 100)
    post = q * t[y]
    out["temp-then-em"] = (post / post.sum(1, keepdims=True), float(1 - (np.diag(t) * q.mean(0)).sum()))

    t, lt = start(), 0.0
    for _ in range(8):
        tt = t
        lt = minimize_scalar(lambda x: -np.log((softmax(logp, x) * tt[y]).sum(1)).mean(),
                             bounds=(-2, 2), method="bounded").x
        q = softmax(logp, lt)
        t = em(q, t, 50)
    post = q * t[y]
    out["joint-full"] = (post / post.sum(1, keepdims=True), float(1 - (np.diag(t) * q.mean(0)).sum()))

    lp = label_posterior(y, p)
    out["joint-rate (shipped)"] = (lp.post, lp.noise_rate)
    if np.isfinite(votes).all(axis=1).any():
        lm = label_posterior(y, with_votes(p, votes))
        out["joint-rate on the model-and-votes mix"] = (lm.post, lm.noise_rate)
    return out


def gated(p, y, post, bar, remove_bar=None):
    """bool (N,) x 2: the relabels and removes the default thresholds propose
    (`AutoPolicy`'s 0.9 / 0.01) whose estimated precision under ``post``
    reaches ``bar`` (removes: ``remove_bar``, default the same)."""
    n = len(y)
    pred, top, pg = p.argmax(1), p.max(1), p[np.arange(n), y]
    relabel = (pred != y) & (top >= 0.9) & (post[np.arange(n), pred] >= bar)
    remove = (pred != y) & (top < 0.9) & (pg <= 0.01) & (1 - post[np.arange(n), y] >= (remove_bar or bar))
    return relabel, remove


def decisions(p, y, true, post, bar):
    pred = p.argmax(1)
    relabel, remove = gated(p, y, post, bar)
    err = y != true
    return {"relabel": int(relabel.sum()), "relabel_right": int((relabel & (pred == true)).sum()),
            "remove": int(remove.sum()), "remove_right": int((remove & err).sum()),
            "clean_changed": int(((relabel | remove) & ~err).sum())}


def build_digits(base: Path) -> list[tuple[Path, Path]]:
    from gpupipe.datasets import flip_labels, load_digits_images, plant_dataset
    from gpupipe.loop import RankOptions, run_rank
    from gpupipe.models.train import TrainConfig
    from gpupipe.runner import DedupOptions, run_dedup

    images, labels = load_digits_images()
    noisy, _ = flip_labels(labels, rate=0.1, mode="symmetric", seed=0)
    if not (base / "dedup").exists():
        tree = plant_dataset(images, noisy, base / "tree", upscale=4)
        true = {p: str(labels[int(p.rsplit("_", 1)[1].split(".")[0])]) for p in tree.originals}
        (base / "truth.json").write_text(json.dumps(true))
        run_dedup(base / "tree", base / "dedup", DedupOptions(device="cpu"))
    runs = []
    for mode, epochs in (("oof", 30), ("certified", 15)):
        run = base / mode
        if not (run / "rank.json").exists():
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(base / "dedup", run)
            run_rank(run, RankOptions(device="cpu", mode=mode, review="person", trust_seed=True, max_rounds=1,
                                      train=TrainConfig(max_epochs=epochs), worst=0, best=0))
        runs.append((run, base / "truth.json"))
    return runs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", nargs="*", help="RUN_DIR TRUTH.json, repeated")
    ap.add_argument("--digits", default=None, help="build and add the two digits runs under this folder")
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error("give RUN_DIR TRUTH.json pairs")
    runs = [(Path(a), Path(b)) for a, b in zip(args.pairs[::2], args.pairs[1::2])]
    if args.digits:
        runs += build_digits(Path(args.digits))
    print("| run | estimate | noise est. (true) | bar | relabels (right) | removes (right) | clean changed |")
    print("|---|---|---|---|---|---|---|")
    for run, truth in runs:
        p, y, true, votes = load(run, truth)
        for name, (post, noise) in estimates(p, y, votes).items():
            for bar in (0.8, 0.9, 0.99):
                d = decisions(p, y, true, post, bar)
                print(f"| {run.parent.name}/{run.name} | {name} | {noise:.3f} ({(y != true).mean():.3f}) | {bar} | "
                      f"{d['relabel']} ({d['relabel_right']}) | {d['remove']} ({d['remove_right']}) | "
                      f"{d['clean_changed']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
