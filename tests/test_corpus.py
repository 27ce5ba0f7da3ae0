"""The corpus of real-world inputs (tests/corpus.py) through `gpupipe dedup` and
`gpupipe curate`: every file's outcome exactly (valid, or its invalid_reason),
the duplicate groups, the summary's counts, no traceback, and a read-only
source tree left byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from corpus import VALID, build_corpus

from gpupipe import schema
from gpupipe.runner import LEDGER, SUMMARY, DedupOptions, run_dedup
from gpupipe.stages.ingest import ingest

# The fastest settings that still run every stage of curate (rank included).
CURATE_FAST = ["--device", "cpu", "--quiet", "--recall-sample", "0", "--mode", "oof", "--oof-folds", "2",
               "--max-rounds", "1", "--epochs", "1", "--epoch-samples", "64", "--patience", "1"]


def _snapshot(*tops: Path) -> dict[str, tuple]:
    """Every entry under ``tops`` (links not followed): its kind, mode and
    content (sha256 of a file's bytes, a link's target).  A file this process
    cannot read (mode 000, not root) is compared by size and mtime instead."""
    out: dict[str, tuple] = {}
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    out[str(p)] = ("link", os.readlink(p))
                elif stat.S_ISDIR(st.st_mode):
                    out[str(p)] = ("dir", st.st_mode)
                else:
                    try:
                        content = hashlib.sha256(p.read_bytes()).hexdigest()
                    except PermissionError:
                        content = (st.st_size, st.st_mtime_ns)
                    out[str(p)] = ("file", st.st_mode, content)
            out[str(Path(dirpath))] = ("dir", Path(dirpath).lstat().st_mode)
    return out


def _chmod_tree(top: Path, remove: int) -> None:
    """Clear (remove > 0) or restore (remove < 0) write bits of every file and
    folder under ``top``; links themselves are left alone, mode-000 files too."""
    for dirpath, dirnames, filenames in os.walk(top):
        for p in [Path(dirpath)] + [Path(dirpath) / n for n in dirnames + filenames]:
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) == 0:
                continue
            mode = st.st_mode & ~remove if remove > 0 else st.st_mode | -remove
            os.chmod(p, stat.S_IMODE(mode))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus, made read-only; -> (Corpus, snapshot taken before any run)."""
    base = tmp_path_factory.mktemp("corpus")
    c = build_corpus(base / "source tree", outside=base / "elsewhere")
    for top in (c.root, c.outside):
        _chmod_tree(top, stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    try:
        yield c, _snapshot(c.root, c.outside)
    finally:
        for top in (c.root, c.outside):
            _chmod_tree(top, -stat.S_IWUSR)
        os.chmod(c.root / "broken" / "locked.jpg", 0o644)


@pytest.fixture(scope="module")
def dedup_run(corpus, tmp_path_factory):
    c, _ = corpus
    run = tmp_path_factory.mktemp("dedup") / "run"
    summary = run_dedup(c.root, run, DedupOptions(device="cpu", recall_sample=0))
    return _ledger(run), summary


@pytest.fixture(scope="module")
def curate_run(corpus, tmp_path_factory):
    c, _ = corpus
    run = tmp_path_factory.mktemp("curate") / "run"
    p = subprocess.run([sys.executable, "-m", "gpupipe.cli", "curate", str(c.root), "--out", str(run), *CURATE_FAST],
                       capture_output=True, text=True, timeout=600)
    return p, run


@pytest.fixture(scope="module")
def manifest_run(corpus, tmp_path_factory):
    c, _ = corpus
    run = tmp_path_factory.mktemp("manifest") / "run"
    summary = run_dedup(c.root / "manifest.csv", run, DedupOptions(device="cpu", recall_sample=0))
    return _ledger(run), summary


def _ledger(run: Path):
    """The run's ledger, indexed by rel_path, missing values as None (not NaN)."""
    d = pq.read_table(run / LEDGER).to_pandas().set_index(schema.REL_PATH)
    return d.astype(object).where(d.notna(), None)


def _assert_outcomes(ledger, cases) -> None:
    assert sorted(ledger.index) == sorted(x.rel for x in cases)
    got = {rel: (r[schema.INVALID_REASON], bool(r[schema.IS_INVALID]), r[schema.LABEL])
           for rel, r in ledger.iterrows()}
    want = {x.rel: (x.expected, x.expected is not VALID, x.label) for x in cases}
    assert got == want


def test_every_file_gets_its_exact_outcome(corpus, dedup_run):
    c, _ = corpus
    ledger, _ = dedup_run
    assert len({x.kind for x in c.cases}) >= 30
    _assert_outcomes(ledger, c.cases)
    for x in c.cases:          # the declared size, and pixels hashed for every valid row
        r = ledger.loc[x.rel]
        if x.size is not None:
            assert (r[schema.IMAGE_WIDTH], r[schema.IMAGE_HEIGHT]) == x.size, x.kind
        assert (r[schema.PIXELS_HASH] is not None) == (x.expected is VALID), x.kind
    fmt = ledger[schema.IMAGE_FORMAT]
    assert fmt["png/really a png.jpg"] == "png" and fmt["broken/avif named.jpg"] == "avif"
    assert fmt["broken/IMG_0001.HEIC"] == "heic" and fmt["broken/animated.webp"] == "webp"
    # links are followed, out of the source tree too; the ledger keeps the link's own path
    assert ledger.loc["links/outside.png", schema.PATH] == str((c.root / "links" / "outside.png").absolute())
    if c.reads_mode_000:      # root reads a mode-000 file: it is a valid image then
        assert ledger.loc["broken/locked.jpg", schema.INVALID_REASON] is None


def test_ignored_entries_are_not_rows(corpus, dedup_run):
    c, _ = corpus
    ledger, _ = dedup_run
    assert not set(c.ignored) & set(ledger.index)
    assert not any(Path(rel).name.startswith(".") for rel in ledger.index)


def test_duplicate_groups_are_the_planted_ones(corpus, dedup_run):
    """Planted groups (the same picture in eight EXIF orientations, a JPEG and
    a copy with a video after EOI, a PNG with bytes after IEND, a multi-page
    TIFF and its first page) are one group each; every other valid file,
    each a different picture, is alone."""
    c, _ = corpus
    ledger, _ = dedup_run
    planted: dict[str, set[str]] = {}
    for x in c.cases:
        if x.group is not None:
            planted.setdefault(x.group, set()).add(x.rel)
    for name, rels in planted.items():
        assert ledger.loc[sorted(rels), schema.DEDUP_GROUP].nunique() == 1, name
        assert set(ledger.loc[sorted(rels), schema.DEDUP_GROUP_SIZE]) == {len(rels)}, name
    alone = [x.rel for x in c.cases if x.expected is VALID and x.group is None]
    assert (ledger.loc[alone, schema.DEDUP_GROUP_SIZE] == 1).all()


def test_summary_counts(corpus, dedup_run):
    c, _ = corpus
    _, summary = dedup_run
    want = Counter(x.expected for x in c.cases if x.expected is not VALID)
    planted = Counter(x.group for x in c.cases if x.group is not None)
    counts = summary.counts
    assert summary.rows == len(c.cases)
    assert counts["invalid"] == sum(want.values())
    assert counts["invalid_by_reason"] == dict(want)
    assert counts["duplicates"] == sum(n - 1 for n in planted.values())
    assert counts["duplicate_groups"] == len(planted)
    assert counts["skipped_non_images"] == c.skipped_non_images
    assert counts["source_errors"] == c.source_errors


def test_curate_runs_the_corpus_to_the_end(corpus, dedup_run, curate_run):
    c, _ = corpus
    ledger, _ = dedup_run
    p, run = curate_run
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr + p.stdout
    n_invalid = sum(x.expected is not VALID for x in c.cases)
    assert f"dedup: {len(c.cases)} images, {n_invalid} invalid" in p.stdout
    cur = _ledger(run)
    _assert_outcomes(cur, c.cases)
    assert cur[schema.DEDUP_GROUP].equals(ledger[schema.DEDUP_GROUP].loc[cur.index])
    invalid = cur[schema.IS_INVALID]
    assert (cur.loc[invalid, schema.BALANCE_STATUS] == schema.BAL_EXCLUDED).all()
    assert (cur.loc[invalid, schema.BALANCE_REASON] == "invalid").all()
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["counts"]["invalid_by_reason"] == dict(Counter(x.expected for x in c.cases if x.expected))
    assert (run / "report.html").is_file()


def test_manifest_rows(corpus, manifest_run):
    """Missing files, empty/blank labels, a path listed twice (the same label,
    or two labels: then none), an absolute path, a folder, non-ASCII."""
    c, _ = corpus
    ledger, summary = manifest_run
    _assert_outcomes(ledger, c.manifests["manifest.csv"])
    assert summary.counts["source_errors"] == c.manifest_errors["manifest.csv"]


@pytest.mark.parametrize("name", ["labels_int.parquet", "labels_float.parquet"])
def test_manifest_non_string_labels(corpus, name):
    """Integer labels are their decimal text; null and NaN are no label."""
    c, _ = corpus
    t = ingest(c.root / name).table
    got = dict(zip(t.column(schema.REL_PATH).to_pylist(), t.column(schema.LABEL).to_pylist()))
    assert got == {x.rel: x.label for x in c.manifests[name]}


def test_source_tree_is_unchanged(corpus, dedup_run, curate_run, manifest_run):
    """Runs over a read-only tree leave every byte, name, link and mode as it was."""
    c, before = corpus
    assert _snapshot(c.root, c.outside) == before
