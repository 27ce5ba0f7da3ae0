"""Images decoded once (`gpupipe.dali.decoded`): the pixels the pipelines read
from the decoded array are the file path's, bit for bit (loose files of mixed
sizes and samples inside WebDataset shards, colour and gray); the array is
reused while its rows' refs, size and channels are the same, made anew
otherwise; past the budget nothing is cached; training epochs over it show
every row once per epoch, reshuffled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gpupipe import schema
from gpupipe.dali import decoded
from gpupipe.dali.augment import AugmentConfig, file_pipeline
from gpupipe.datasets import imagefolder_samples, load_digits_images, write_webdataset
from gpupipe.device import cpu_device
from gpupipe.stages.ingest import ingest


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """120 real digits as colour PNGs of two sizes, and the same as WebDataset shards -> (folder refs, shard refs)."""
    base = tmp_path_factory.mktemp("decoded")
    images, labels = load_digits_images()
    tint = np.array([[255, 90, 60], [60, 255, 90], [90, 60, 255]], np.float32) / 255
    for n in range(120):
        rgb = (images[n][..., None] * tint[n % 3]).astype(np.uint8)
        folder = base / "src" / str(labels[n])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).resize((20, 28) if n % 2 else (40, 40), Image.Resampling.BICUBIC).save(
            folder / f"{n}.png")
    write_webdataset(imagefolder_samples(base / "src"), base / "wds", shard_size=50)

    def refs(src):
        t = ingest(src).table
        paths = t.column(schema.PATH).to_pylist()
        locs = (t.column(schema.LOCATOR).to_pylist() if schema.LOCATOR in t.column_names
                else [None] * len(paths))
        out = np.empty(len(paths), object)
        out[:] = [p if loc is None else (p, loc) for p, loc in zip(paths, locs)]
        return out

    return refs(base / "src"), refs(base / "wds")


def _by_row(epochs) -> dict[int, torch.Tensor]:
    return {int(r): x.clone() for xb, rb in epochs for x, r in zip(xb, rb)}


@pytest.mark.parametrize("layout", ["folder", "shards"])
@pytest.mark.parametrize("channels", [3, 1])
def test_decoded_pixels_are_the_files_pixels(photos, tmp_path, layout, channels):
    refs = photos[0] if layout == "folder" else photos[1]
    assert isinstance(refs[0], tuple) == (layout == "shards")
    dev = cpu_device()
    use = np.ones(len(refs), bool)
    use[::9] = False                                   # rows that are not decoded (invalid ones): left out
    images = decoded.decode_once(dev, refs, use, size=24, channels=channels, directory=tmp_path)
    arr = images.array()
    assert arr.shape == (len(refs), 24, 24, channels) and arr.dtype == np.uint8
    assert not arr[~use].any() and arr[use].any()
    pos = np.flatnonzero(use)[::-1].copy()             # any order of any rows
    files = _by_row(file_pipeline(dev, list(refs[pos]), pos, size=24, channels=channels, batch_size=32))
    cached = _by_row(file_pipeline(dev, images.take(pos), pos, size=24, channels=channels, batch_size=32))
    assert sorted(files) == sorted(cached) == sorted(pos.tolist())
    assert all(torch.equal(files[r], cached[r]) for r in files)


def test_the_array_is_reused_while_the_key_holds_and_made_anew_when_it_changes(photos, tmp_path, monkeypatch):
    refs, dev = photos[0], cpu_device()
    use = np.ones(len(refs), bool)
    a = decoded.decode_once(dev, refs, use, size=24, channels=3, directory=tmp_path)
    stamp = (tmp_path / a.path).stat().st_mtime_ns
    assert decoded.decode_once(dev, refs, use, size=24, channels=3, directory=tmp_path) == a
    assert (tmp_path / a.path).stat().st_mtime_ns == stamp                           # not decoded again
    b = decoded.decode_once(dev, refs, use, size=16, channels=3, directory=tmp_path)   # another size
    c = decoded.decode_once(dev, refs[::-1].copy(), use, size=16, channels=3, directory=tmp_path)  # other rows
    assert len({a.path, b.path, c.path}) == 3
    assert [p.name for p in tmp_path.iterdir()] == [c.path.rsplit("/", 1)[1]]      # the old ones removed
    with pytest.raises(ValueError, match="decoded images are 16 px"):
        file_pipeline(dev, c.take([0]), [0], size=24, channels=3, batch_size=4)
    monkeypatch.setattr(decoded, "CACHE_BUDGET", 1000)
    assert decoded.decode_once(dev, refs, use, size=24, channels=3, directory=tmp_path / "small") is None
    monkeypatch.undo()
    # the disk fills between the free-space check and the array's blocks: decoded from the files, nothing left
    import errno
    import os

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert decoded.decode_once(dev, refs, use, size=20, channels=3, directory=tmp_path / "full") is None
    assert list((tmp_path / "full").iterdir()) == []


def test_training_epochs_over_decoded_images_show_every_row_once_reshuffled(photos, tmp_path):
    refs, dev = photos[0], cpu_device()
    images = decoded.decode_once(dev, refs, np.ones(len(refs), bool), size=24, channels=3, directory=tmp_path)
    rows = np.arange(len(refs))
    epochs = file_pipeline(dev, images.take(rows), rows, size=24, channels=3, batch_size=16, shuffle=True,
                           seed=5, augment=AugmentConfig.auto(channels=3, mode="oof"))
    seen = [np.concatenate([r for _, r in epochs]) for _ in range(3)]
    for s in seen:
        assert sorted(s.tolist()) == rows.tolist()
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])
    again = file_pipeline(dev, images.take(rows), rows, size=24, channels=3, batch_size=16, shuffle=True,
                          seed=5, augment=AugmentConfig.auto(channels=3, mode="oof"))
    x1, r1 = next(iter(again))
    epochs = file_pipeline(dev, images.take(rows), rows, size=24, channels=3, batch_size=16, shuffle=True,
                           seed=5, augment=AugmentConfig.auto(channels=3, mode="oof"))
    x0, r0 = next(iter(epochs))
    assert np.array_equal(r0, r1) and torch.equal(x0, x1)                           # seeded


def test_rank_scores_the_same_from_decoded_images(digits_noisy, tmp_path):
    """Gray digits (the light set draws pen strokes, so training reads the files,
    `gpupipe.stages.rank.rank`'s ``refs``): every score, probability and flag is
    the same whether the scoring reads the decoded images or the files."""
    import shutil

    import pyarrow.parquet as pq

    from gpupipe.loop import RankOptions, run_rank
    from gpupipe.models.train import TrainConfig

    ledgers = {}
    for cache in (True, False):
        run = tmp_path / f"run-{cache}"
        shutil.copytree(digits_noisy["run"], run)
        run_rank(run, RankOptions(device="cpu", mode="oof", folds=2, review="person", worst=5, best=5,
                                  max_rounds=1, train=TrainConfig(max_epochs=2, epoch_samples=512),
                                  decode_cache=cache))
        assert (run / "decoded").exists() == cache
        ledgers[cache] = pq.read_table(run / "ledger.parquet").to_pandas()
    cols = [schema.RANK_LOSS, schema.RANK_PRED, schema.RANK_OUTLIER, schema.RANK_VOTE_GIVEN, schema.RANK_FLAG]
    a, b = ledgers[True], ledgers[False]
    assert a[schema.RANK_LOSS].notna().sum() > 1500
    assert a[cols].equals(b[cols])
    assert all(np.array_equal(x, y) for x, y in zip(a[schema.RANK_PROBS], b[schema.RANK_PROBS]) if x is not None)
