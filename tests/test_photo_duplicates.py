"""Real photographs: crop-rescale-recolour-JPEG copies of one shot are grouped by
``--verify photo`` and different shots of the same scenes are not.

Pictures: 80 crops (160x160 px, on a 64 px grid, so neighbours share up to 60%
of their area) of scikit-learn's two real photographs (427x640,
china.jpg and flower.jpg), saved as JPEG.  Each gets one copy with the edits
real near duplicates combine (ciFAIR's same-shot pairs in CIFAR-10): a crop of
6-14% of the side off-centre, rescaled to another size, a per-channel colour
gain, a contrast change, and JPEG at quality 55-90.  Different crops of one
photo share its colours and textures: the hard negatives.  The exact numbers
on CIFAR-10 with human ground truth are in benchmarks (bench_cifair.py)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from gpupipe import schema


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _composite(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    from PIL import Image

    h, w, _ = rgb.shape
    c = rng.uniform(0.06, 0.14)                       # fraction of the side cropped away, off-centre
    top, left = int(rng.uniform(0, c) * h), int(rng.uniform(0, c) * w)
    crop = rgb[top:top + int(h * (1 - c)), left:left + int(w * (1 - c))]
    size = int(rng.integers(120, 260))
    out = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    gain = rng.uniform(0.85, 1.15, size=3)             # colour shift
    contrast = rng.uniform(0.8, 1.2)
    out = (out - out.mean()) * contrast + out.mean()
    out = np.clip(out * gain, 0, 255).astype(np.uint8)
    return _jpeg(out, int(rng.integers(55, 91)))


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory):
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("photos") / "tree"
    shots = []
    for p, photo in enumerate(load_sample_images().images):
        h, w, _ = photo.shape
        for y in range(0, h - 160 + 1, 64):
            for x in range(0, w - 160 + 1, 64):
                shots.append((f"photo{p}", photo[y:y + 160, x:x + 160]))
    assert len(shots) >= 40
    for k, (label, rgb) in enumerate(shots):
        d = root / label
        d.mkdir(parents=True, exist_ok=True)
        (d / f"shot{k:03d}.jpg").write_bytes(_jpeg(rgb, 92))
        (d / f"shot{k:03d}_copy.jpg").write_bytes(_composite(rgb, rng))
    return root, len(shots)


def _groups(root, tmp_path, verify):
    from gpupipe.runner import LEDGER, DedupOptions, run_dedup

    run = tmp_path / verify
    run_dedup(root, run, DedupOptions(device="cpu", verify=verify, recall_sample=0))
    t = pq.read_table(run / LEDGER).to_pandas()
    shot = t[schema.REL_PATH].str.extract(r"(shot\d+)")[0]
    return t.assign(shot=shot)


def test_composite_copies_of_photos_are_grouped_and_other_shots_are_not(photo_tree, tmp_path):
    root, n = photo_tree
    t = _groups(root, tmp_path, "photo")
    together = t.groupby("shot")[schema.DEDUP_GROUP].nunique() == 1
    mixed = t.groupby(schema.DEDUP_GROUP)["shot"].nunique() > 1
    base = _groups(root, tmp_path, "pixels")
    base_together = base.groupby("shot")[schema.DEDUP_GROUP].nunique() == 1
    print(f"photo: {together.sum()}/{n} copies grouped, {mixed.sum()} groups of two shots; "
          f"pixels: {base_together.sum()}/{n}")
    assert together.mean() >= 0.8           # recall
    assert not mixed.any()                  # precision: no group holds two shots
    assert together.sum() >= base_together.sum() + 0.3 * n


def test_nearest_neighbour_candidates_find_the_shot_of_each_copy(photo_tree):
    """`gpupipe.hashing.knn`: over every view (zoom 1 and the zoomed queries), a copy's
    nearest image is its own shot for most copies, an image is never its own neighbour,
    flat images take no part, and the same input gives the same candidates."""
    from PIL import Image

    from gpupipe.hashing.knn import NearestIndex, dct_descriptor
    from gpupipe.stages.dedup import _nearest_candidates, _photo_views

    root, n = photo_tree
    files = sorted(root.rglob("*.jpg"))
    thumbs = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
                       for f in files] + [np.full((32, 32, 3), 128, np.uint8)])   # + one flat image
    shot = [f.stem.split("_")[0] for f in files] + ["flat"]
    m = len(thumbs)
    _, views = _photo_views(thumbs, np.arange(m), np)
    assert not views[1][m - 1]                      # the flat image has no descriptor
    near, _ = _nearest_candidates(views, m, None, 0, np)
    assert np.array_equal(near, _nearest_candidates(views, m, None, 0, np)[0])      # reproducible
    i, j = near // m, near % m
    assert (i != j).all() and not np.isin(m - 1, np.concatenate([i, j]))
    pairs = set(zip(i.tolist(), j.tolist()))
    copy_of = {s: [k for k in range(m) if shot[k] == s] for s in set(shot) - {"flat"}}
    found = sum(tuple(sorted(v)) in pairs for v in copy_of.values())
    print(f"nearest-neighbour candidates: {len(near)} pairs for {m} images; {found}/{n} shot-copy pairs proposed")
    assert found >= 0.85 * n
    assert len(near) <= 3 * m                       # bounded: one per view and image
    d, ok = dct_descriptor(np.zeros((2, 32, 32), np.uint8))
    assert not ok.any() and not d.any()
    idx = NearestIndex(views[0][:m], views[1][:m])
    rows, sims = idx.search(views[0][:m], np.arange(m), 2)
    assert not (rows == np.arange(m)[:, None]).any() and (np.diff(sims, axis=1) <= 1e-6).all()


def test_one_colour_map_is_the_same_picture_other_colours_in_one_place_are_not():
    """The photo route's colour test (`gpupipe.hashing.photo.colour_fit`): a copy whose
    colours went through one global map (gamma, channel gains, saturation) passes; the
    same crop with complementary colours at the same brightness inside a central disc
    (the structure the registered similarity compares is kept, as with a bay horse for a
    chestnut one of the same pose) is rejected though its r and z alone pass."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from gpupipe.hashing import photo
    from gpupipe.hashing.verify import PairCheck

    def thumb(a):
        return np.asarray(Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8)).resize(
            (32, 32), Image.Resampling.BILINEAR))

    rng = np.random.default_rng(0)
    thumbs = []
    for picture in load_sample_images().images:
        for y in range(0, picture.shape[0] - 160 + 1, 64):
            for x in range(0, picture.shape[1] - 160 + 1, 64):
                shot = picture[y:y + 160, x:x + 160].astype(np.float32) / 255
                c = rng.uniform(0.04, 0.1)
                t, left = int(rng.uniform(0, c) * 160), int(rng.uniform(0, c) * 160)
                crop = shot[t:t + int(160 * (1 - c)), left:left + int(160 * (1 - c))]
                one_map = crop ** rng.uniform(0.7, 1.4) * rng.uniform(0.8, 1.2, 3)
                m = one_map.mean(axis=2, keepdims=True)
                one_map = m + (one_map - m) * rng.uniform(0.6, 1.4)
                local = crop.copy()
                h, w, _ = local.shape
                yy, xx = np.mgrid[:h, :w]
                disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.35 * h) ** 2
                gray = local[disc] @ np.array([0.299, 0.587, 0.114], np.float32)
                local[disc] = gray[:, None] - 2 * (local[disc] - gray[:, None])
                thumbs += [thumb(shot), thumb(one_map), thumb(local)]
    thumbs = np.stack(thumbs)
    i = np.arange(len(thumbs) // 3) * 3
    check = PairCheck(thumbs, registered=True)
    accepted = {k: check(i, i + k).mean() for k in (1, 2)}
    reg = check.registered_similarity(i, i + 2)
    structure_alone = ((reg.r >= photo.REG_MIN_R) & (reg.z >= photo.DEFAULT_MIN_REGISTERED_Z)).mean()
    # measured: one map 0.95 accepted; other colours 0.925 by r and z alone, 0.35 with the colour test
    assert accepted[1] >= 0.85
    assert structure_alone >= 0.8
    assert accepted[2] <= 0.5 and accepted[2] < accepted[1] - 0.4
