"""Shared fixtures: real images with planted defects, written once per session."""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=1)
def _gpu_available() -> bool:
    from gpupipe.device import resolve_device

    return resolve_device("auto").is_gpu


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a working CUDA GPU (none found on this host)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits_planted(tmp_path_factory):
    """The demo dataset: real digits (32x32) in train/val/test with planted
    copies, re-encodes, near duplicates and invalid files.  -> (root, truth)."""
    from gpupipe.demo import build_demo_dataset

    root = tmp_path_factory.mktemp("digits") / "tree"
    return root, build_demo_dataset(root)


@pytest.fixture(scope="session")
def digits_run(digits_planted, tmp_path_factory):
    """One in-process CPU dedup run over `digits_planted` -> (ledger table, summary)."""
    import pyarrow.parquet as pq

    from gpupipe.runner import LEDGER, DedupOptions, run_dedup

    root, _ = digits_planted
    run = tmp_path_factory.mktemp("run")
    summary = run_dedup(root, run, DedupOptions(device="cpu"))
    return pq.read_table(run / LEDGER), summary


@pytest.fixture(scope="session")
def digits_noisy(tmp_path_factory):
    """Real digits (32x32 PNGs, no split folders) with 10% of the labels flipped
    to another class (seeded), deduplicated on the CPU.

    -> dict(root, run (a dedup run dir: copy it before changing it), flipped
    (set of rel_paths whose folder label is wrong), truth (rel_path -> true
    class name), oracle (CSV path of the true labels)).
    """
    import csv

    import numpy as np

    from gpupipe.datasets import flip_labels, load_digits_images, plant_dataset
    from gpupipe.runner import DedupOptions, run_dedup

    images, labels = load_digits_images()
    noisy, flipped = flip_labels(labels, rate=0.1, mode="symmetric", seed=0)
    base = tmp_path_factory.mktemp("noisy")
    truth_tree = plant_dataset(images, noisy, base / "tree", upscale=4)
    true = {p: str(labels[int(p.rsplit("_", 1)[1].split(".")[0])]) for p in truth_tree.originals}
    wrong = {p for p in truth_tree.originals if flipped[int(p.rsplit("_", 1)[1].split(".")[0])]}
    oracle = base / "oracle.csv"
    with open(oracle, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rel_path", "label"])
        w.writerows(sorted(true.items()))
    run = base / "run"
    run_dedup(base / "tree", run, DedupOptions(device="cpu"))
    assert np.isclose(len(wrong) / len(true), 0.1, atol=0.01)
    return {"root": base / "tree", "run": run, "flipped": wrong, "truth": true, "oracle": oracle}


@pytest.fixture
def noisy_run(digits_noisy, tmp_path):
    """A private copy of `digits_noisy`'s dedup run directory."""
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(digits_noisy["run"], dst)
    return dst
