"""`gpupipe curate` end to end on the embedded default (real digits with
planted duplicates, invalid files and label flips): outputs, resume after a
kill, and the HTML report in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gpupipe import schema
from gpupipe.cli import main
from gpupipe.rundir import CURATE_STATE as STATE

QUICK = ["--device", "cpu", "--quiet", "--mode", "oof", "--oof-folds", "3", "--max-rounds", "2",
         "--epochs", "4", "--epoch-samples", "512", "--patience", "2"]


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory):
    from gpupipe.demo import DEMO_FLIP_RATE, build_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "digits"
    return root, build_demo_dataset(root, flip_rate=DEMO_FLIP_RATE)


@pytest.fixture(scope="module")
def curated(demo_tree, tmp_path_factory):
    root, truth = demo_tree
    run = tmp_path_factory.mktemp("curate") / "run"
    assert main(["curate", str(root), "--out", str(run), *QUICK]) == 0
    return run, truth


def test_curate_writes_every_stage_and_a_usable_export(curated):
    run, truth = curated
    d = pq.read_table(run / "ledger.parquet").to_pandas()
    for stage in schema.STAGES:
        assert all(c.name in d.columns for c in schema.STAGES[stage]), stage
    kept = d[d[schema.BALANCE_STATUS] == schema.BAL_KEPT]
    # No target by default: every usable row kept, none surplus; suspects (flagged, open) excluded.
    target = json.loads((run / "curate.json").read_text())["stages"]["balance"]["stats"]["target"]
    assert target is None and (d[schema.BALANCE_STATUS] == schema.BAL_SURPLUS).sum() == 0
    excluded = d[d[schema.BALANCE_STATUS] == schema.BAL_EXCLUDED]
    assert set(excluded[schema.BALANCE_REASON]) <= {"invalid", "duplicate", "removed", "suspect", "unlabelled"}
    suspect = excluded[excluded[schema.BALANCE_REASON] == "suspect"]
    assert len(suspect) and suspect[schema.REVIEW_STATUS].isna().all()      # open rows, pending a person
    assert not kept[schema.IS_INVALID].any() and kept[schema.DEDUP_KEEP].all()
    flips = truth.params["label_flips"]
    fixed = kept[schema.REL_PATH].isin(flips) & (kept[schema.BALANCE_LABEL] == kept[schema.REL_PATH].map(flips))
    still_wrong = kept[schema.REL_PATH].isin(flips) & ~fixed
    assert still_wrong.sum() <= 0.5 * len(flips)      # most planted flips fixed or left out
    # The export: ImageFolder trees that gpupipe's own ImageFolder reader reads back, and manifests.
    from gpupipe.stages.ingest import ingest

    exp = run / "export"
    m = pd.read_parquet(exp / "manifest.parquet")
    assert len(m) == len(kept) and pd.read_csv(exp / "manifest.csv")["sample_id"].tolist() == m["sample_id"].tolist()
    back = ingest(exp / "train").table.to_pandas()
    train = m[m["set"] == "train"]
    assert len(back) == len(train)
    assert sorted(zip(back[schema.LABEL], back[schema.PATH])) == sorted(zip(train["label"], train["path"]))
    assert all(os.path.islink(p) and os.path.realpath(p) == os.path.realpath(s)
               for p, s in zip(m["path"], m["source_path"]))
    assert (exp / "test").is_dir() and (m["set"] == "test").sum() > 0
    for f in range(8):
        fold = pd.read_parquet(exp / "folds" / f"fold-{f}.parquet")
        assert set(fold["subset"]) == {"train", "val"} and len(fold) == len(train)
        assert set(fold.loc[fold["subset"] == "val", "sample_id"]) == set(train.loc[train["fold"] == f, "sample_id"])
    assert (run / "report.html").stat().st_size > 20_000


def test_a_rerun_skips_every_stage_and_changes_nothing(curated, capsys):
    run, truth = curated
    before = (run / "ledger.parquet").read_bytes()
    state = (run / STATE).read_text()
    root = Path(pq.read_table(run / "ledger.parquet").column(schema.PATH)[0].as_py()).parents[2]
    assert main(["curate", str(root), "--out", str(run), *QUICK]) == 0
    assert (run / "ledger.parquet").read_bytes() == before and (run / STATE).read_text() == state
    assert main(["curate", str(root), "--out", str(run), *QUICK, "--max-distance", "4"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_a_run_killed_mid_rank_resumes_to_the_same_ledger(demo_tree, curated, tmp_path):
    root, _ = demo_tree
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpupipe.cli", "curate", str(root), "--out", str(run), *QUICK]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        rank = run / "rank.json"
        if rank.exists() and '"round": 1' in rank.read_text():       # round 1 saved, round 2 running
            os.killpg(p.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-rank"
    assert not (run / "report.html").exists()
    assert main(["curate", str(root), "--out", str(run), *QUICK]) == 0
    a = pq.read_table(run / "ledger.parquet").to_pandas()
    b = pq.read_table(curated[0] / "ledger.parquet").to_pandas()
    pd.testing.assert_frame_equal(a, b)
    log = pq.read_table(run / "decisions.parquet").to_pandas()
    assert not log.duplicated(["sample_id", "round", "source"]).any()


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_the_report_renders_in_a_headless_browser_with_every_image(curated, tmp_path):
    run, _ = curated
    browser = _chromium()
    assert browser, "Chromium is needed (Debian package 'chromium'; `make install` installs it)"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           (run / "report.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    import re

    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert loaded and total, dom[:500]
    assert int(total.group(1)) >= 40 and loaded.group(1) == total.group(1)
    for heading in ("Counts per stage", "Duplicate groups", "Most suspicious samples", "Loss distribution",
                    "Class balance", "Split and fold sizes"):
        assert f"<h2>{heading}</h2>" in dom
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p2'}",
                    f"--screenshot={shot}", "--window-size=1200,2000", (run / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as im:
        px = np.asarray(im.convert("L"))
    assert px.std() > 20          # not a blank page
