"""Ingest: ImageFolder trees (with and without splits) and manifests."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpupipe import schema
from gpupipe.stages.ingest import SourceError, ingest, sample_id_of


def _write(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def test_imagefolder_labels_and_ids(tmp_path):
    for rel in ("cat/a.png", "cat/b.JPG", "dog/c.webp", "dog/notes.txt", "dog/.hidden.png"):
        _write(tmp_path / rel)
    res = ingest(tmp_path)
    t = res.table
    assert res.layout == "imagefolder"
    assert t.column(schema.REL_PATH).to_pylist() == ["cat/a.png", "cat/b.JPG", "dog/c.webp"]
    assert t.column(schema.LABEL).to_pylist() == ["cat", "cat", "dog"]
    assert t.column(schema.SPLIT).to_pylist() == [None, None, None]
    assert t.column(schema.SAMPLE_ID).to_pylist() == [sample_id_of(p) for p in ("cat/a.png", "cat/b.JPG", "dog/c.webp")]
    # ids are stable across versions (decisions and resumed runs are keyed by them): xxh3-64 of the path
    assert (sample_id_of("cat/a.png"), sample_id_of("dog/c.webp")) == (-3000830432792074227, 2319578786352722467)
    assert res.skipped_non_images == 1
    assert t.schema == schema.arrow_schema("ingest")


def test_imagefolder_with_splits(digits_planted):
    root, truth = digits_planted
    t = ingest(root).table
    splits = set(t.column(schema.SPLIT).to_pylist())
    assert splits == {"train", "val", "test"}
    labels = set(t.column(schema.LABEL).to_pylist())
    assert labels == {str(d) for d in range(10)}
    assert t.num_rows == len(truth.originals) + len(truth.items)


def test_sample_id_is_stable_under_additions(tmp_path):
    _write(tmp_path / "a" / "1.png")
    first = ingest(tmp_path).table.column(schema.SAMPLE_ID).to_pylist()
    _write(tmp_path / "a" / "0.png")
    second = dict(zip(*(ingest(tmp_path).table.column(c).to_pylist() for c in (schema.REL_PATH, schema.SAMPLE_ID))))
    assert second["a/1.png"] == first[0]


def test_manifest_csv_and_parquet(tmp_path):
    _write(tmp_path / "imgs" / "x.png")
    _write(tmp_path / "imgs" / "y.png")
    (tmp_path / "m.csv").write_text("path,label,split\nimgs/x.png,3,Train\nimgs/y.png,4,validation\nimgs/missing.png,5,test\n")
    t = ingest(tmp_path / "m.csv").table
    assert t.column(schema.LABEL).to_pylist() == ["5", "3", "4"]       # sorted by rel_path
    assert t.column(schema.SPLIT).to_pylist() == ["test", "train", "val"]
    assert t.column(schema.FILE_BYTES).to_pylist() == [None, 1, 1]     # missing: flagged later
    pq.write_table(t.select([schema.REL_PATH, schema.LABEL]).rename_columns(["path", "label"]), tmp_path / "m.parquet")
    t2 = ingest(tmp_path / "m.parquet").table
    assert t2.column(schema.SAMPLE_ID).to_pylist() == t.column(schema.SAMPLE_ID).to_pylist()


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no class folders"),
    (lambda p: (p / "m.csv").write_text("file,label\na,1\n") and p / "m.csv", "no 'path' column"),
    (lambda p: pq.write_table(pa.table({"path": ["a.png"], "label": [[1, 2]]}), p / "m.parquet")
     or p / "m.parquet", "cannot be read as text"),
    (lambda p: (p / "m.json").write_text("{}") and p / "m.json", "must be .csv"),
])
def test_bad_sources_give_clear_errors(tmp_path, make, message):
    with pytest.raises(SourceError, match=message):
        ingest(make(tmp_path))


def test_manifest_repeated_rows_are_one_sample_and_reported(tmp_path):
    (tmp_path / "m.csv").write_text("path,label,split\na.png,1,train\nb.png,1,train\na.png,1,train\n"
                                    "b.png,2,train\nc.png,,\n")
    res = ingest(tmp_path / "m.csv")
    t = res.table
    assert dict(zip(t.column(schema.REL_PATH).to_pylist(), t.column(schema.LABEL).to_pylist())) == {
        "a.png": "1", "b.png": None, "c.png": None}
    assert res.source_errors == {"a.png": "listed 2 times (rows 1, 3)",
                                 "b.png": "listed 2 times (rows 2, 4) with different labels ('1', '2'): no label"}


def test_symlink_loops_are_reported_not_followed_and_outside_links_are_followed(tmp_path):
    from gpupipe.stages.ingest import ingest

    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "a" / "up").symlink_to(root)                  # a loop: a -> root -> a ...
    (root / "a" / "self").symlink_to(root / "a")
    (root / "b").symlink_to(outside)                      # a class folder that lives elsewhere
    (root / "a" / "loop.png").symlink_to("loop.png")      # a file link to itself: a row, flagged when read
    (root / "a" / "gone.png").symlink_to("nowhere.png")   # dangling: the same
    res = ingest(root)
    rels = sorted(res.table.column("rel_path").to_pylist())
    assert rels == ["a/gone.png", "a/loop.png", "a/x.png", "b/y.png"]
    assert res.source_errors == {"a/up": "symlink loop: not followed", "a/self": "symlink loop: not followed"}
