"""`gpupipe curate` killed with SIGKILL at 10 seeded moments, run again each
time: the final ledger, decisions and export equal an uninterrupted run's.

The moments are write steps (`gpupipe.table.crash_point`: just before and
just after every atomic write becomes visible, and between the renames of a
commit), found by counting them in an uninterrupted run and drawing one at
random from each tenth of the run (and one of each stage's writes that no
tenth drew), so every stage is hit, including between
any two writes of a rank round.  Real images: 420 of scikit-learn's digits
with planted duplicates, invalid files and 10% label flips.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gpupipe import schema

# Small trainings (3 epochs of 256 images per fold, a higher learning rate)
# with thresholds a weak model can meet, so both rounds still confirm,
# relabel and remove (what is killed and resumed is every write step, not the
# model's quality): ~9.7 s of work per curate instead of ~13 s with 4 epochs
# of 512 and the default policy (AMD EPYC, 2 cores), for 21 curates.
QUICK = ["--device", "cpu", "--quiet", "--mode", "oof", "--oof-folds", "3", "--max-rounds", "2",
         "--epochs", "3", "--epoch-samples", "256", "--lr", "0.003", "--image-size", "16", "--patience", "2",
         "--partition-rows", "256", "--recall-sample", "20",
         "--accept-prob", "0.5", "--relabel-prob", "0.6", "--remove-prob", "0.05", "--min-precision", "off"]
KILLS = 10
STAGE_WRITES = ("thumbs-|hash-", "rank.json", "ledger.parquet", "curate.json")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    from gpupipe.datasets import flip_labels, load_digits_images, plant_dataset

    images, labels = load_digits_images()
    images, labels = images[:420], labels[:420]
    noisy, _ = flip_labels(labels, rate=0.1, seed=3)
    root = tmp_path_factory.mktemp("kill") / "digits"
    plant_dataset(images, noisy, root, class_names=[str(d) for d in range(10)], upscale=4, n_byte_copies=8,
                  n_cross_class_copies=2, n_reencodes=6, n_near=8, n_corrupt=4, seed=3)
    return root


# Each curate is a real process, killed by a real SIGKILL, but forked from a
# forkserver that imported gpupipe, torch (with torch._dynamo, which the first
# optimizer imports), cleanlab and DALI once: ~4 s of imports per process
# otherwise, 21 processes in the first test.  The forkserver never runs a torch
# op or a DALI pipeline, so its children start with no thread pools to inherit.
_PRELOAD = ["gpupipe.cli", "gpupipe.runner", "gpupipe.loop", "gpupipe.stages.rank", "torch", "torch._dynamo",
            "cleanlab", "nvidia.dali"]


def _curate_child(argv: list[str], env: dict, out: str, err: str) -> None:
    """Body of one forked curate: the CLI in this process, its output to files."""
    for k in [k for k in os.environ if k.startswith("GPUPIPE_")]:
        del os.environ[k]
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    from gpupipe.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _curate(root: Path, run: Path, **env) -> subprocess.CompletedProcess:
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    argv = ["curate", str(root), "--out", str(run), *QUICK]
    out, err = run.parent / f".{run.name}.out", run.parent / f".{run.name}.err"
    child = ctx.Process(target=_curate_child, args=(argv, env, str(out), str(err)))
    child.start()
    child.join(900)
    assert child.exitcode is not None, "curate ran for 15 minutes"
    done = subprocess.CompletedProcess(argv, child.exitcode, out.read_text(), err.read_text())
    out.unlink()
    err.unlink()
    return done


def _outputs(run: Path) -> dict:
    ledger = pq.read_table(run / "ledger.parquet").to_pandas()
    decisions = pq.read_table(run / "decisions.parquet").to_pandas().drop(columns=["unix_time"])
    manifest = pd.read_parquet(run / "export" / "manifest.parquet")
    files = sorted((str(p.relative_to(run / "export")), os.readlink(p) if p.is_symlink() else p.stat().st_size)
                   for p in (run / "export").rglob("*") if not p.is_dir())
    return {"ledger": ledger, "decisions": decisions, "manifest": manifest, "files": files}


def test_killed_at_ten_seeded_write_steps_a_rerun_ends_identical(tree, tmp_path):
    ref = tmp_path / "ref"
    steps_log = tmp_path / "steps.txt"
    done = _curate(tree, ref, GPUPIPE_CRASH_LOG=str(steps_log))
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [line.split("\t") for line in steps_log.read_text().splitlines()]
    assert all(pid == steps[0][1] for _, pid, _ in steps), "the run is in-process: one process makes every write"
    expected = _outputs(ref)
    # One step drawn from each tenth of the run, and one of each kind of write a
    # tenth missed (drawn the same way): every stage gets hit, whatever the count.
    rng = np.random.default_rng(20261128)
    edges = np.linspace(0, len(steps), KILLS + 1).astype(int)
    picks = [int(rng.integers(lo, hi)) + 1 for lo, hi in zip(edges[:-1], edges[1:])]
    for what in STAGE_WRITES:
        if not any(w in steps[k - 1][2] for k in picks for w in what.split("|")):
            some = [k + 1 for k, (_, _, step) in enumerate(steps) if any(w in step for w in what.split("|"))]
            picks.append(int(rng.choice(some)))
    hit = []
    for i, k in enumerate(picks):
        run = tmp_path / f"run-{i}"
        killed = _curate(tree, run, GPUPIPE_KILL_AT=str(k))
        assert killed.returncode == -signal.SIGKILL, (k, steps[k - 1], killed.stderr[-2000:])
        again = _curate(tree, run)
        assert again.returncode == 0, (k, steps[k - 1], again.stderr[-3000:])
        got = _outputs(run)
        pd.testing.assert_frame_equal(got["ledger"], expected["ledger"])
        pd.testing.assert_frame_equal(got["decisions"], expected["decisions"])
        pd.testing.assert_frame_equal(got["manifest"].drop(columns=["path", "source_path"]),
                                      expected["manifest"].drop(columns=["path", "source_path"]))
        assert [f for f, _ in got["files"]] == [f for f, _ in expected["files"]]
        assert not list(run.glob(".*.tmp")) and not (run / ".commit").exists() and not (run / "parts").exists()
        hit.append(steps[k - 1][2])
    print("killed at:", "; ".join(f"step {k} of {len(steps)} ({w})" for k, w in zip(picks, hit)))
    # The kills fell in every stage: hashing partitions, dedup's commit, rank rounds, balance/split, export.
    text = " | ".join(hit)
    for what in STAGE_WRITES:
        assert any(w in text for w in what.split("|")), (what, hit)
    assert len(set(picks)) == len(picks) >= KILLS
    assert {schema.BALANCE_STATUS, schema.SPLIT_SET} <= set(expected["ledger"].columns)


def test_two_curates_on_one_run_dir_and_a_killed_ones_lock_taken_over(tree, tmp_path):
    """The second curate stops with a message naming the first; after a kill -9
    of the first, a new curate takes the lock over and finishes."""
    import json
    import time

    run = tmp_path / "run"
    slow = [*QUICK, "--epochs", "200", "--patience", "200"]             # runs for minutes (the last flag wins)
    cmd = [sys.executable, "-m", "gpupipe.cli", "curate", str(tree), "--out", str(run), *slow]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = run / ".gpupipe.lock"
        deadline = time.time() + 120
        while time.time() < deadline:
            info = json.loads(lock.read_text() or "{}") if lock.exists() else {}
            if info.get("pid") == first.pid:
                break
            time.sleep(0.1)
        second = _curate(tree, run)
        assert first.poll() is None, "the first curate ended before the second started"
        assert second.returncode == 2
        assert f"in use by another gpupipe process: pid {first.pid}" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    third = _curate(tree, run)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"took over the lock of {run} left by pid {first.pid}" in third.stdout
    assert (run / "export" / "manifest.parquet").exists()
