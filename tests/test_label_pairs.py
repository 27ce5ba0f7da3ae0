"""Class-pair flips (class k labelled k+1: the realistic kind, a 3 called a 4)
on real digits: the flags' precision and recall against the planted flips,
beside cleanlab's `find_label_issues` on the same out-of-fold probabilities.
Measured F1 (seeded): gpupipe 0.948-0.980, cleanlab 0.929-0.946 on the same
probabilities, by CPU (the numbers per machine are in the test); before §16
of benchmarks/RESULTS.md, with the loss order, cleanlab was ahead."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from gpupipe import schema


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    """Real digits (32x32) with 10% class-pair flips; deduplicated, then one
    out-of-fold rank round (3 folds, no decisions)."""
    from gpupipe.datasets import flip_labels, load_digits_images, plant_dataset
    from gpupipe.loop import RankOptions, run_rank
    from gpupipe.models.train import TrainConfig
    from gpupipe.runner import DedupOptions, run_dedup

    images, labels = load_digits_images()
    noisy, flipped = flip_labels(labels, rate=0.1, mode="pair", seed=1)
    root = tmp_path_factory.mktemp("pairs") / "tree"
    truth = plant_dataset(images, noisy, root, upscale=4)
    flips = {p for p in truth.originals if flipped[int(p.rsplit("_", 1)[1].split(".")[0])]}
    run = tmp_path_factory.mktemp("pairs-run") / "run"
    run_dedup(root, run, DedupOptions(device="cpu", recall_sample=0))
    run_rank(run, RankOptions(device="cpu", review="person", worst=10, best=10, mode="oof", folds=3,
                              max_rounds=1, train=TrainConfig(max_epochs=10)))
    return run, flips


def _prf(flag: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = (flag & truth).sum()
    p, r = tp / max(1, flag.sum()), tp / max(1, truth.sum())
    return float(p), float(r), float(2 * p * r / max(p + r, 1e-9))


def test_class_pair_flips_are_flagged(pair_run):
    from cleanlab.filter import find_label_issues

    run, flips = pair_run
    t = pq.read_table(run / "ledger.parquet").to_pandas()
    t = t[t[schema.RANK_LOSS].notna()]
    is_flip = t[schema.REL_PATH].isin(flips).to_numpy()
    assert is_flip.sum() > 150
    ours = _prf(t[schema.RANK_FLAG].to_numpy(bool), is_flip)
    classes = json.loads((run / "rank.json").read_text())["classes"]
    probs = np.stack(t[schema.RANK_PROBS].to_numpy()).astype(np.float64)
    given = np.searchsorted(np.asarray(classes), t[schema.LABEL].to_numpy(str))
    theirs = _prf(find_label_issues(given, probs / probs.sum(1, keepdims=True)), is_flip)
    print(f"class-pair flips, digits: gpupipe P/R/F1 {np.round(ours, 3)}, cleanlab {np.round(theirs, 3)}")
    # Measured P/R/F1 (seeded; the same per machine, not across CPUs: other SIMD kernels round
    # differently and the trained model amplifies it):
    #   Xeon, AVX-512 kernels     gpupipe 1.000 / 0.961 / 0.980, cleanlab F1 0.936
    #   AMD EPYC, AVX2 kernels    gpupipe 0.988 / 0.939 / 0.963, cleanlab F1 0.946
    #   ATEN_CPU_CAPABILITY=default  0.982 / 0.917 / 0.948, cleanlab F1 0.929
    # The floors hold on each with margin; the comparison asserted is the one gpupipe wins on every
    # machine (ahead of cleanlab on the same probabilities), not the margin of one machine.  The loss
    # order alone reached 0.918 here: on class-pair flips the order by the odds that the label is
    # wrong under the estimated noise, over the model's and the neighbours' votes, is what overtakes
    # cleanlab (benchmarks/RESULTS.md §13, §16).
    assert ours[0] >= 0.95 and ours[1] >= 0.88
    assert ours[2] > theirs[2]
