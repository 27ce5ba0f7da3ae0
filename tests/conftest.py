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
