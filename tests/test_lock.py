"""One process per run directory: a second one stops naming the first; a lock
left by a process killed with -9 is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from gpupipe.cli import main
from gpupipe.lock import LOCK_FILE, RunLocked, run_lock
from gpupipe.runner import LEDGER, DedupOptions, run_dedup


def test_reentrant_in_one_process_and_released(tmp_path):
    with run_lock(tmp_path):
        with run_lock(tmp_path):
            info = json.loads((tmp_path / LOCK_FILE).read_text())
            assert info["pid"] == os.getpid()
    assert (tmp_path / LOCK_FILE).read_text() == ""          # released: nobody named


def test_a_second_process_stops_and_a_killed_ones_lock_is_taken_over(digits_planted, digits_run, tmp_path, capsys):
    root, _ = digits_planted
    ledger, _ = digits_run
    run = tmp_path / "run"
    # A gpupipe process holding the lock for as long as the test needs (a real dedup of the
    # digits can finish before the second one starts).
    holder = ("import sys, time; from gpupipe.lock import run_lock\n"
              "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)")
    first = subprocess.Popen([sys.executable, "-c", holder, str(run)], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "locked"
    with pytest.raises(RunLocked, match=f"pid {first.pid} on "):
        run_dedup(root, run, DedupOptions(device="cpu"))
    # the CLI says the same, as an error, without a traceback
    assert main(["dedup", str(root), "--out", str(run), "--device", "cpu", "--quiet"]) == 2
    assert f"in use by another gpupipe process: pid {first.pid}" in capsys.readouterr().err
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == first.pid      # stale, left behind
    logged: list[str] = []
    with run_lock(run, log=logged.append):
        pass
    assert logged and f"pid {first.pid}" in logged[0] and "no longer running" in logged[0]
    run_dedup(root, run, DedupOptions(device="cpu", partition_rows=100))    # resumes the killed run's partitions
    assert pq.read_table(run / LEDGER).equals(ledger)
