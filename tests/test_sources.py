"""Sharded inputs: WebDataset tar shards and Parquet files with image bytes give
the ledger an ImageFolder of the same images gives; malformed shards are
flagged rows, never a crash; sources are never written."""

from __future__ import annotations

import hashlib
import os
import tarfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gpupipe import schema
from gpupipe.datasets import add_tar_member, imagefolder_samples, write_parquet_images, write_webdataset
from gpupipe.io.sources import read_many
from gpupipe.runner import LEDGER, DedupOptions, run_dedup
from gpupipe.stages.ingest import NO_IMAGE_MEMBER, SourceError, ingest

# Everything but ids and paths.  Groups are compared as partitions of the samples.  Which
# of two byte-identical files represents their group falls to path order, which differs
# between layouts: each group's kept bytes and its multiset of kinds are compared instead.
SAME = [schema.LABEL, schema.SPLIT, schema.IMAGE_FORMAT, schema.IMAGE_WIDTH, schema.IMAGE_HEIGHT,
        schema.IS_INVALID, schema.INVALID_REASON, schema.BYTES_HASH, schema.PIXELS_HASH, schema.PHASH,
        schema.SHIFT_KEY, schema.FILE_BYTES, schema.DEDUP_GROUP_SIZE,
        schema.DEDUP_LABEL_CONFLICT, schema.DEDUP_SPLIT_LEAK]
EXTRA = ["_mates", "_kinds", "_kept_bytes"]


def _tree_digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _by_name(table, key):
    """Rows keyed by the sample's file name: ledger columns in SAME, and each
    row's group as the sorted names of its group mates."""
    t = table.to_pandas()
    t["_name"] = [key(r) for r in t[schema.REL_PATH]]
    assert t["_name"].is_unique
    g = t.groupby(schema.DEDUP_GROUP)
    mates = g["_name"].apply(lambda s: tuple(sorted(s)))
    kinds = g[schema.DEDUP_KIND].apply(lambda s: tuple(sorted(s)))
    kept = t[t[schema.DEDUP_KEEP]].set_index(schema.DEDUP_GROUP)[schema.BYTES_HASH]
    grp = [x if x == x and x is not None else None for x in t[schema.DEDUP_GROUP]]
    t["_mates"] = [mates.get(x, ()) if x is not None else () for x in grp]
    t["_kinds"] = [kinds.get(x, ()) if x is not None else () for x in grp]
    t["_kept_bytes"] = [kept.get(x) if x is not None else None for x in grp]
    t = t.set_index("_name").sort_index()[SAME + EXTRA].astype(object)
    return t.where(t.notna(), None)


@pytest.fixture(scope="module")
def three_layouts(digits_planted, tmp_path_factory):
    """The demo tree (planted copies, near duplicates, invalid files, splits) as an
    ImageFolder, as WebDataset shards (300 samples a shard) and as Hugging Face-style
    Parquet, each deduplicated on the CPU -> {layout: (ledger, summary)}, file names."""
    root, _ = digits_planted
    base = tmp_path_factory.mktemp("layouts")
    samples = imagefolder_samples(root)
    shards = write_webdataset(samples, base / "wds", shard_size=300)
    files = write_parquet_images(samples, base / "hf", class_names=[str(d) for d in range(10)])
    digests = {p: _tree_digest(p) for p in (base / "wds", base / "hf")}
    for p in shards + files:
        p.chmod(0o444)
    out = {}
    for name, src in (("imagefolder", root), ("webdataset", base / "wds"), ("parquet", base / "hf")):
        summary = run_dedup(src, base / f"run-{name}", DedupOptions(device="cpu", recall_sample=0))
        out[name] = (pq.read_table(base / f"run-{name}" / LEDGER), summary)
    for p, d in digests.items():
        assert _tree_digest(p) == d, "a source was written"
    row_names = {}
    for f in files:
        t = pq.read_table(f, columns=["image"]).column(0).combine_chunks()
        split = f.name.split("-")[0]
        row_names.update({f"{f.name}/{r:09d}": f"{split}/{n}" for r, n in enumerate(t.field("path").to_pylist())})
    return out, row_names


def test_webdataset_and_parquet_give_the_imagefolder_ledger(three_layouts):
    runs, row_names = three_layouts
    ref = _by_name(runs["imagefolder"][0], lambda r: f"{r.split('/')[0]}/{r.rsplit('/', 1)[1]}")
    wds = _by_name(runs["webdataset"][0], lambda r: f"{r.split('-')[0]}/{r.rsplit('/', 1)[1]}")
    hf = _by_name(runs["parquet"][0], lambda r: row_names[r])
    assert len(ref) == 1879 and ref[schema.IS_INVALID].sum() > 0 and (ref[schema.DEDUP_GROUP_SIZE] > 1).sum() > 100
    for other in (wds, hf):
        assert list(other.index) == list(ref.index)
        for col in SAME + EXTRA:
            a, b = ref[col].tolist(), other[col].tolist()
            assert a == b, (col, [(x, y) for x, y in zip(a, b) if x != y][:3])
    assert runs["webdataset"][1].layout == "webdataset" and runs["parquet"][1].layout == "parquet"
    # Labels of the Parquet files came from Hugging Face's ClassLabel names, not the integers.
    assert set(hf[schema.LABEL].dropna()) == {str(d) for d in range(10)}


def test_locators_read_the_same_bytes(three_layouts, digits_planted):
    runs, _ = three_layouts
    root, _ = digits_planted
    for name in ("webdataset", "parquet"):
        t = runs[name][0]
        sel = np.random.default_rng(0).choice(t.num_rows, 50, replace=False)
        paths = [t.column(schema.PATH)[int(i)].as_py() for i in sel]
        locs = [t.column(schema.LOCATOR)[int(i)].as_py() for i in sel]
        got = read_many(paths, locs)
        hashes = [t.column(schema.BYTES_HASH)[int(i)].as_py() for i in sel]
        import xxhash

        assert [xxhash.xxh3_128_hexdigest(g) if isinstance(g, bytes) else None for g in got] == hashes


def test_malformed_shards_are_flagged_not_fatal(tmp_path, digits_planted):
    root, _ = digits_planted
    pngs = sorted(root.rglob("img_*.png"))[:6]
    good = [p.read_bytes() for p in pngs]
    src = tmp_path / "shards"
    src.mkdir()
    with tarfile.open(src / "a-000.tar", "w") as tf:
        add_tar_member(tf, "ok.png", good[0])
        add_tar_member(tf, "ok.cls", b"3")
        add_tar_member(tf, "nolabel.png", good[1])                      # no label member: a row, label null
        add_tar_member(tf, "odd.xyz", b"\x00\x01 not an image")         # unknown extension: sniffed
        add_tar_member(tf, "odd.cls", b"1")
        add_tar_member(tf, "bad.png", good[2][:8] + b"\x00" * 40 + good[2][48:])   # corrupt image bytes
        add_tar_member(tf, "bad.cls", b"2")
        add_tar_member(tf, "onlylabel.cls", b"4")                       # a key with no image member
        add_tar_member(tf, "j.jpg", good[3])                            # PNG bytes named .jpg; label from JSON
        add_tar_member(tf, "j.json", b'{"label": "7", "other": 1}')
    with tarfile.open(src / "b-000.tar", "w") as tf:
        add_tar_member(tf, "first.png", good[4])
        add_tar_member(tf, "first.cls", b"5")
        add_tar_member(tf, "cut.png", good[5])
        add_tar_member(tf, "cut.cls", b"6")
    whole = (src / "b-000.tar").read_bytes()
    cut_at = whole.index(good[5]) + len(good[5]) // 2             # mid-way through cut.png's data
    (src / "b-000.tar").write_bytes(whole[:cut_at])
    (src / "c-000.tar").write_bytes(b"<html>not a tar</html>" * 40)
    run = tmp_path / "run"
    s = run_dedup(src, run, DedupOptions(device="cpu", recall_sample=0))
    t = pq.read_table(run / LEDGER).to_pandas().set_index(schema.REL_PATH)
    reason = {k: (v if isinstance(v, str) else None) for k, v in t[schema.INVALID_REASON].items()}
    label = {k: (v if isinstance(v, str) else None) for k, v in t[schema.LABEL].items()}
    assert reason == {
        "a-000.tar/ok.png": None, "a-000.tar/nolabel.png": None, "a-000.tar/odd.xyz": "not_an_image",
        "a-000.tar/bad.png": reason["a-000.tar/bad.png"], "a-000.tar/onlylabel": NO_IMAGE_MEMBER,
        "a-000.tar/j.jpg": None, "b-000.tar/first.png": None, "b-000.tar/cut.png": "truncated",
    }
    assert reason["a-000.tar/bad.png"] in ("undecodable", "truncated", "bad_header")
    assert label["a-000.tar/ok.png"] == "3" and label["a-000.tar/nolabel.png"] is None
    assert label["a-000.tar/j.jpg"] == "7" and label["a-000.tar/onlylabel"] == "4"
    assert t.loc["a-000.tar/j.jpg", schema.IMAGE_FORMAT] == "png"
    errors = s.counts["source_errors"]
    assert set(errors) == {"b-000.tar", "c-000.tar"} and "not a readable tar" in errors["c-000.tar"]


def test_brace_patterns_and_errors(tmp_path, digits_planted):
    root, _ = digits_planted
    samples = imagefolder_samples(root)[:50]
    write_webdataset(samples, tmp_path / "s", shard_size=10)
    ing = ingest(str(tmp_path / "s" / "test-{000000..000002}.tar"))
    assert ing.layout == "webdataset" and ing.table.num_rows == 30
    assert set(ing.table.column(schema.SPLIT).to_pylist()) == {"test"}
    with pytest.raises(SourceError, match="do not exist"):
        ingest(str(tmp_path / "s" / "test-{000000..000009}.tar"))


def test_shards_listed_in_processes_give_the_same_table(tmp_path, digits_planted):
    """From `PARALLEL_SHARDS` shards on, ingest lists them in worker processes: the
    same rows in the same order, the same skipped members and shard errors, as
    listing them here (good shards, one cut short, one not a tar)."""
    from gpupipe.stages.ingest import PARALLEL_SHARDS, _from_webdataset

    root, _ = digits_planted
    src = tmp_path / "s"
    shards = write_webdataset(imagefolder_samples(root)[:400], src, shard_size=40)
    with tarfile.open(src / "z-extra.tar", "w") as tf:
        add_tar_member(tf, "notes.txt.bak", b"skipped")              # a member that is no sample's image
        add_tar_member(tf, "k.png", shards[0].read_bytes()[512:600])
    shards[1].write_bytes(shards[1].read_bytes()[:600])               # cut short in its first member's data
    (src / "y-bad.tar").write_bytes(b"<html>not a tar</html>" * 40)
    tars = sorted(src.glob("*.tar"))
    assert len(tars) >= PARALLEL_SHARDS
    here = _from_webdataset(src, tars, None, processes=1)
    there = _from_webdataset(src, tars, None, processes=3)
    assert here.table.num_rows > 300 and here.table.equals(there.table)
    assert here.skipped_non_images == there.skipped_non_images
    assert here.source_errors == there.source_errors and len(here.source_errors) == 2


def test_curate_from_shards_exports_real_files(three_layouts, digits_planted, tmp_path):
    """`gpupipe curate` on WebDataset shards: models train and score from the
    shards (DALI external_source), the export holds real files whose bytes are
    the ledger's, and the report shows the images."""
    import xxhash

    from gpupipe.cli import main

    runs, _ = three_layouts
    src = runs["webdataset"][1].source
    run = tmp_path / "run"
    quick = ["--device", "cpu", "--quiet", "--mode", "oof", "--oof-folds", "3", "--max-rounds", "1",
             "--epochs", "2", "--epoch-samples", "256", "--patience", "1", "--recall-sample", "0"]
    assert main(["curate", src, "--out", str(run), *quick]) == 0
    ledger = pq.read_table(run / LEDGER).to_pandas()
    assert ledger[schema.RANK_LOSS].notna().sum() > 1000          # scored from inside the shards
    manifest = pd.read_parquet(run / "export" / "manifest.parquet")
    assert len(manifest) > 1000 and manifest["source_locator"].str.startswith("tar:").all()
    want = dict(zip(ledger[schema.SAMPLE_ID], ledger[schema.BYTES_HASH]))
    for p, i in zip(manifest["path"], manifest["sample_id"]):
        assert not os.path.islink(p)
        assert xxhash.xxh3_128_hexdigest(open(p, "rb").read()) == want[i]
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 20 and "unreadable" not in html


def test_tar_listing_matches_tarfile(tmp_path):
    from gpupipe.io.tarindex import _byte_sum, _fast, _slow, list_members

    long = "d/" + "x" * 150 + ".png"            # > 100 chars: a pax header, handled by tarfile
    for fmt, names in ((tarfile.USTAR_FORMAT, ["a.png", "a.cls", "sub/b.jpg", "sub/b.txt"]),
                       (tarfile.GNU_FORMAT, ["a.png", long]), (tarfile.PAX_FORMAT, ["é.png", long])):
        p = tmp_path / f"{fmt}.tar"
        with tarfile.open(p, "w", format=fmt) as tf:
            for k, n in enumerate(names):
                add_tar_member(tf, n, bytes([k]) * (100 + 700 * k))
            info = tarfile.TarInfo("adir")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        got = list_members(str(p))
        assert got.error is None and got.members == _slow(str(p)).members
        assert [m[0] for m in got.members] == names
    whole = (tmp_path / f"{tarfile.USTAR_FORMAT}.tar").read_bytes()
    # the plain ustar shard is listed by the fast reader itself (a wrong checksum sum would
    # hand it to tarfile, silently): its byte sums are Python's
    assert _fast(str(tmp_path / f"{tarfile.USTAR_FORMAT}.tar")).members == _slow(str(tmp_path / f"{tarfile.USTAR_FORMAT}.tar")).members
    blocks = [whole[i:i + 512] for i in range(0, len(whole), 512)] + [b"\xff" * 512, bytes(512)]
    assert [_byte_sum(b) for b in blocks] == [sum(b) for b in blocks]
    (tmp_path / "cut.tar").write_bytes(whole[:2 * 512 + 512 + 300])     # cut inside the 2nd member's data
    cut = list_members(str(tmp_path / "cut.tar"))
    assert [m[0] for m in cut.members] == ["a.png", "a.cls"] and "truncated" in cut.error
    (tmp_path / "no.tar").write_bytes(b"<html>" * 200)
    with pytest.raises(tarfile.ReadError):
        list_members(str(tmp_path / "no.tar"))


def test_parquet_row_groups_are_read_once_for_shuffled_rows(tmp_path, digits_planted, monkeypatch):
    from gpupipe.io import sources

    root, _ = digits_planted
    samples = imagefolder_samples(root)[:600]
    (f,) = write_parquet_images([(None, lab, n, d) for _, lab, n, d in samples], tmp_path, row_group_size=100)
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, g, **kw: reads.append(g) or real(self, g, **kw))
    monkeypatch.setattr(sources, "_ROW_GROUPS", sources._RowGroups(64 << 20))
    order = np.random.default_rng(0).permutation(600)
    for batch in np.array_split(order, 20):                 # shuffled batches, as training draws them
        got = read_many([str(f)] * len(batch), [f"parquet:{r}:image" for r in batch])
        assert [g for g in got] == [samples[r][3] for r in batch]
    assert sorted(reads) == list(range(6))                    # each row group read once


def test_the_decode_ceiling_reads_members_in_place(three_layouts):
    """`gpupipe bench`'s decode ceiling (`decode_only`) over samples inside shards and
    Parquet files: every valid one decoded, through the same locators the stages use."""
    from gpupipe.dali.decode import decode_only
    from gpupipe.device import cpu_device

    runs, _ = three_layouts
    for name in ("webdataset", "parquet"):
        t = runs[name][0]
        valid = np.flatnonzero(~t.column(schema.IS_INVALID).to_numpy(zero_copy_only=False))[:700]
        refs = [(t.column(schema.PATH)[int(i)].as_py(), t.column(schema.LOCATOR)[int(i)].as_py()) for i in valid]
        assert decode_only(cpu_device(), refs, batch_size=256) == len(refs) == 700      # 3 batches, the last padded
        # it really decodes each member: an invalid one (a corrupt file the hash stage flagged) fails it
        bad = int(np.flatnonzero(t.column(schema.INVALID_REASON).to_numpy(zero_copy_only=False) == "undecodable")[0])
        with pytest.raises(RuntimeError):
            decode_only(cpu_device(), refs[:10] + [(t.column(schema.PATH)[bad].as_py(),
                                                     t.column(schema.LOCATOR)[bad].as_py())], batch_size=256)
