"""The command line: summary output, files written, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

from gpupipe.cli import main


def test_dedup_command_writes_ledger_and_summary(digits_planted, tmp_path, capsys):
    root, truth = digits_planted
    assert main(["dedup", str(root), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "invalid:      6" in out and "duplicates:" in out and "label conflicts:" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rows"] == len(truth.originals) + len(truth.items)
    assert summary["counts"]["invalid"] == 6
    assert summary["counts"]["hash_stage"]["byte_twins"] > 0        # stage 1 spared decodes
    assert pq.read_table(tmp_path / "run" / "ledger.parquet").num_rows == summary["rows"]


def test_bad_input_is_a_message_not_a_traceback(tmp_path):
    cases = [
        (["dedup", str(tmp_path / "missing"), "--out", str(tmp_path / "r")], "does not exist"),
        (["dedup", str(tmp_path), "--out", str(tmp_path / "r"), "--max-distance", "99"], "between 0 and 64"),
        # the ratio is the cut's: alone it would be ignored (the default keeps every usable row)
        (["curate", str(tmp_path), "--out", str(tmp_path / "r"), "--balance-ratio", "1"], "--balance min only"),
        (["rank", str(tmp_path), "--models", "0"], "expected at least 1"),
        (["rank", str(tmp_path), "--models", "two"], "a whole number or 'auto'"),
    ]
    for args, message in cases:
        p = subprocess.run([sys.executable, "-m", "gpupipe.cli", *args], capture_output=True, text=True)
        assert p.returncode == 2, p.stderr
        assert message in p.stderr and "Traceback" not in p.stderr


def test_gpu_request_without_gpu_fails_clearly(digits_planted, tmp_path):
    from gpupipe.device import resolve_device

    if resolve_device("auto").is_gpu:
        return                                            # this host has a GPU: nothing to refuse
    root, _ = digits_planted
    p = subprocess.run([sys.executable, "-m", "gpupipe.cli", "dedup", str(root), "--out", str(tmp_path),
                        "--device", "gpu"], capture_output=True, text=True)
    assert p.returncode == 2 and "no working GPU" in p.stderr and "Traceback" not in p.stderr
