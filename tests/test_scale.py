"""The same ledger in-process and on a local Dask cluster."""

from __future__ import annotations

import logging
import os

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
    saved = dict(os.environ)
    try:
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster:
            summary = run_dedup(root, tmp_path, DedupOptions(device="cpu", scheduler=cluster.scheduler_address))
    finally:
        # the nanny's OMP_NUM_THREADS=1 (and more) left in os.environ put later tests'
        # BLAS on one thread, and their float sums rounded otherwise (see the last test)
        os.environ.clear()
        os.environ.update(saved)
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


def test_a_dedup_killed_after_some_partitions_resumes_them(digits_planted, digits_run, tmp_path):
    """kill -9 once a few partitions are written; the rerun hashes only the
    others and writes the ledger of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from gpupipe.runner import PARTS

    root, _ = digits_planted
    ledger, _ = digits_run
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpupipe.cli", "dedup", str(root), "--out", str(run), "--device", "cpu",
           "--quiet", "--recall-sample", "0", "--partition-rows", "120"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((run / PARTS).glob("hash-*.parquet"))) < 3:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list((run / PARTS).glob("hash-*.parquet")))
    assert 3 <= written < 16 and not (run / LEDGER).exists()
    summary = run_dedup(root, run, DedupOptions(device="cpu", partition_rows=120))
    assert summary.counts["partitions"] == 16 and summary.counts["partitions_resumed"] == written
    assert pq.read_table(run / LEDGER).equals(ledger)
    assert not (run / PARTS).exists()


def _rank_columns(run):
    from gpupipe import schema

    t = pq.read_table(run / LEDGER)
    return t.select([c.name for c in schema.RANK] + [c.name for c in schema.REVIEW])


def test_rank_gives_the_same_scores_in_process_and_on_2_workers(digits_noisy, tmp_path):
    """Out-of-fold (one model of a fold per worker, two models per fold) and
    certified scoring (partitions spread over workers): identical scores,
    flags and decisions with fixed torch threads."""
    import shutil

    from gpupipe.loop import RankOptions, run_rank
    from gpupipe.models.train import TrainConfig

    quick = TrainConfig(max_epochs=2, epoch_samples=512, patience=1)
    for mode, extra in (("oof", {"folds": 2, "models": 2}), ("certified", {"trust_seed": True})):
        runs = []
        for workers in (None, 2):
            run = tmp_path / f"{mode}-{workers}"
            shutil.copytree(digits_noisy["run"], run)
            run_rank(run, RankOptions(device="cpu", mode=mode, review="auto", max_rounds=1, train=quick,
                                      workers=workers, torch_threads=1, **extra))
            runs.append(_rank_columns(run))
        assert runs[0].column("rank_loss").null_count < runs[0].num_rows // 2
        assert runs[0].equals(runs[1]), mode


def test_progress_reaches_every_row_and_every_checked_pair(digits_planted, tmp_path):
    root, _ = digits_planted
    seen: dict[str, list[tuple[int, int]]] = {}
    s = run_dedup(root, tmp_path, DedupOptions(device="cpu", recall_sample=0, partition_rows=500),
                  progress=lambda stage, done, total: seen.setdefault(stage, []).append((done, total)))
    assert seen["hash"][-1] == (s.rows, s.rows) and len(seen["hash"]) == 4
    checked = s.counts["dedup_stage"]["checked"]
    assert checked > 0 and seen["check pairs"][-1] == (checked, checked)


def test_a_rerun_with_other_partitions_does_not_reuse_the_wrong_ones(digits_planted, digits_run, tmp_path):
    """Partition fingerprints hold the partition's own rows: left-over partitions of
    another size are not taken for these."""
    from gpupipe.runner import PARTS, _part_fingerprint, _partitions, _thumbs_file, hash_partition_to
    from gpupipe.stages import hashing
    from gpupipe.stages.ingest import ingest

    root, _ = digits_planted
    ledger, _ = digits_run
    table = ingest(root).table.select(list(hashing.READS) + ["ingest_file_bytes"])
    cfg = hashing.HashConfig(device="cpu")
    fps = {_part_fingerprint(p, cfg) for p in _partitions(table, 100)}
    assert len(fps) == len(_partitions(table, 100))              # every partition its own
    parts = [(k, p, _part_fingerprint(p, cfg)) for k, p in enumerate(_partitions(table, 100))]
    thumbs = _thumbs_file(tmp_path / PARTS, parts)
    for k, p, fp in parts[:3]:                                    # what a killed run at 100 rows left
        hash_partition_to((k, p, fp, 100 * k), cfg, str(tmp_path / PARTS), str(thumbs))
    s = run_dedup(root, tmp_path, DedupOptions(device="cpu", partition_rows=250))
    assert s.counts["partitions_resumed"] == 0
    assert pq.read_table(tmp_path / LEDGER).equals(ledger)


def test_partitions_hashed_in_two_threads_at_once_equal_one_at_a_time(digits_planted):
    """A Dask worker may run several partitions at once in threads: each thread
    gets its own DALI decoder, and the hashes are those of one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from gpupipe.runner import _partitions
    from gpupipe.stages import hashing
    from gpupipe.stages.ingest import ingest

    root, _ = digits_planted
    table = ingest(root).table.select(list(hashing.READS))
    cfg = hashing.HashConfig(device="cpu", batch_size=64)
    parts = _partitions(table, 200)[:4]
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    alone = [hashing.hash_partition(p, cfg) for p in parts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: hashing.hash_partition(p, cfg), parts))
    for (t1, _, th1), (t2, _, th2) in zip(alone, together):
        assert t1.equals(t2) and (th1 == th2).all()
    # the stage's one BLAS thread ends with the last partition: not left on one thread,
    # where later float sums (the same-picture check's) rounded otherwise
    assert blas_threads() == before


def test_a_local_cluster_leaves_this_process_environment_as_it_was():
    """distributed's nanny sets OMP_NUM_THREADS=1 (and more) for its workers in
    the parent's os.environ; a process started afterwards (a resumed run, a
    test's subprocess) ran torch on one thread and rounded differently."""
    import os

    from gpupipe.scale.executor import make_executor

    before = dict(os.environ)
    with make_executor(workers=1) as ex:
        assert ex.map(os.getenv, ["OMP_NUM_THREADS"]) == ["1"]      # the workers keep theirs
    assert dict(os.environ) == before
