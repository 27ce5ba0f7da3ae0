"""The same ledger in-process and on a local Dask cluster."""

from __future__ import annotations

import logging

import pyarrow.parquet as pq

from gpupipe.runner import LEDGER, DedupOptions, run_dedup


def test_local_dask_cluster_gives_the_same_ledger(digits_planted, digits_run, tmp_path):
    root, _ = digits_planted
    ledger, _ = digits_run
    summary = run_dedup(root, tmp_path, DedupOptions(device="cpu", workers=2, partition_rows=300))
    assert summary.executor.startswith("dask local cluster, 2 workers")
    assert pq.read_table(tmp_path / LEDGER).equals(ledger)


def test_joining_an_existing_scheduler(digits_planted, digits_run, tmp_path):
    from distributed import LocalCluster

    root, _ = digits_planted
    ledger, _ = digits_run
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        summary = run_dedup(root, tmp_path, DedupOptions(device="cpu", scheduler=cluster.scheduler_address))
    assert summary.executor.startswith("dask scheduler tcp://")
    assert pq.read_table(tmp_path / LEDGER).equals(ledger)


def test_1_3_and_7_partitions_give_the_same_ledger(digits_planted, digits_run, tmp_path):
    import numpy as np

    root, _ = digits_planted
    ledger, _ = digits_run
    n = ledger.num_rows
    for parts in (1, 3, 7):
        rows = -(-n // parts)
        summary = run_dedup(root, tmp_path / str(parts), DedupOptions(device="cpu", partition_rows=rows))
        assert pq.read_table(tmp_path / str(parts) / LEDGER).equals(ledger), parts
        thumbs = np.load(tmp_path / str(parts) / "thumbs.npy")
        assert summary.rows == n and thumbs.shape == (n, 32, 32, 3)
