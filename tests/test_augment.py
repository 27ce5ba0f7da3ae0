"""DALI augmentation on real digits: each augmentation does what it claims,
and seeded runs repeat exactly."""

from __future__ import annotations

import numpy as np
import pytest

from gpupipe.dali.augment import AugmentConfig, file_pipeline, show
from gpupipe.dali.strokes import BLACK, NONE, WHITE, StrokeSpec, draw_masks
from gpupipe.datasets import load_digits_images
from gpupipe.device import cpu_device

S = 32
OFF = StrokeSpec(black_spots=0, white_spots=0, dashed_lines=0)
DEV = cpu_device()


@pytest.fixture(scope="module")
def digits32():
    images, _ = load_digits_images()
    return np.kron(images[:64], np.ones((4, 4), np.uint8))[..., None]      # (64, 32, 32, 1) uint8


def _centroid(img: np.ndarray) -> np.ndarray:
    w = img.astype(np.float64)
    return np.array([(w.sum(0) * np.arange(S)).sum(), (w.sum(1) * np.arange(S)).sum()]) / w.sum()   # (x, y)


def _blobs(n: int, x0: int = 23) -> np.ndarray:
    img = np.zeros((n, S, S, 1), np.uint8)
    img[:, 14:18, x0:x0 + 4] = 255      # a 4x4 blob centred at (x0 + 1.5, 15.5)
    return img


def test_seeded_runs_repeat_and_seeds_differ(digits32):
    a = show(DEV, digits32, AugmentConfig(), seed=7)
    b = show(DEV, digits32, AugmentConfig(), seed=7)
    c = show(DEV, digits32, AugmentConfig(), seed=8)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)
    assert (a.images != digits32).any(axis=(1, 2, 3)).all()          # every image changed


def test_translation_is_bounded_by_20_percent_and_exact():
    s = show(DEV, _blobs(64, x0=14), AugmentConfig(rotation=0, contrast=0, translation=0.2, strokes=OFF), seed=1)
    assert np.abs(s.offsets).max() <= 0.2 * S + 1e-5
    assert np.abs(s.offsets).max() > 0.15 * S                        # and uses the range
    assert (s.angles == 0).all() and (s.contrast == 1).all()
    for img, off in zip(s.images, s.offsets):
        assert np.allclose(_centroid(img[..., 0]) - (15.5, 15.5), off, atol=0.05)


def test_rotation_is_bounded_by_005_turn_about_the_centre():
    s = show(DEV, _blobs(64), AugmentConfig(rotation=0.05, contrast=0, translation=0, strokes=OFF), seed=2)
    assert np.abs(s.angles).max() <= 18.0 + 1e-4 and np.abs(s.angles).max() > 14
    c = S / 2 - 0.5
    for img, deg in zip(s.images, s.angles):
        a = np.deg2rad(deg)
        expect = (c + np.cos(a) * (24.5 - c) - np.sin(a) * (15.5 - c), c + np.sin(a) * (24.5 - c) + np.cos(a) * (15.5 - c))
        assert np.allclose(_centroid(img[..., 0]), expect, atol=0.05)


def test_contrast_scales_around_the_image_mean(digits32):
    s = show(DEV, digits32, AugmentConfig(rotation=0, contrast=0.5, translation=0, strokes=OFF), seed=3)
    assert s.contrast.min() >= 0.5 and s.contrast.max() <= 1.5 and s.contrast.std() > 0.2
    x = digits32.astype(np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    expect = np.clip(mean + s.contrast[:, None, None, None] * (x - mean), 0, 255)
    assert np.abs(s.images - expect).max() <= 1.0


def test_spots_and_lines_only_touch_the_pixels_they_claim(digits32):
    grey = np.full_like(digits32, 128)
    grey[:, ::3] = digits32[:, ::3]                                   # neither 0 nor 255 in most places
    s = show(DEV, grey, AugmentConfig(rotation=0, contrast=0, translation=0,
                                      strokes=StrokeSpec(black_spots=3, white_spots=3, dashed_lines=2)), seed=4)
    img, m = s.images[..., 0], s.masks
    assert (img[m == BLACK] == 0).all() and (img[m == WHITE] == 255).all()
    assert np.array_equal(img[m == NONE], grey[..., 0][m == NONE])
    assert (m != NONE).any(axis=(1, 2)).mean() > 0.8                  # most images got marks
    assert (m != NONE).mean() < 0.15                                  # marks are strokes, not floods


def test_dashed_lines_are_dashed_and_masks_are_seeded():
    spec = StrokeSpec(black_spots=0, white_spots=0, dashed_lines=1)
    a = draw_masks(np.random.default_rng(5), 200, 64, spec)
    b = draw_masks(np.random.default_rng(5), 200, 64, spec)
    assert np.array_equal(a, b)
    # A dashed line is several separate pieces: count runs of marked pixels along rows or columns.
    from scipy import ndimage

    pieces = [ndimage.label(m != NONE)[1] for m in a if (m != NONE).sum() > 40]
    assert len(pieces) > 30 and np.median(pieces) >= 3


def test_file_pipeline_scores_every_row_once_in_order_and_trains_in_permutations(tmp_path, digits32):
    from PIL import Image

    files = []
    for i, img in enumerate(digits32[:50]):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img[..., 0]).save(files[-1])
    rows = np.arange(100, 150)
    plain = file_pipeline(DEV, files, rows, size=16, channels=1, batch_size=16)
    for _ in range(2):                                                # epochs stay aligned
        got = [(x, r) for x, r in plain]
        assert np.array_equal(np.concatenate([r for _, r in got]), rows)
    x = np.concatenate([x.numpy() for x, _ in got])
    assert x.shape == (50, 1, 16, 16) and x.min() >= 0 and x.max() <= 1
    train = file_pipeline(DEV, files, rows, size=16, channels=1, batch_size=16, augment=AugmentConfig(),
                          shuffle=True, seed=1)
    epochs = [np.concatenate([r for _, r in train]) for _ in range(2)]
    assert all(np.array_equal(np.sort(e), rows) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[0], rows)


def test_the_photo_set_flips_crops_and_jitters_real_photos():
    """The photo set on tiles of scikit-learn's two real photos: about half the
    images come back mirrored left-right, the rest are crops of at least half
    the area (a zoom in, never out), colours change, shapes stay."""
    from sklearn.datasets import load_sample_images

    from PIL import Image

    photos = load_sample_images().images                      # two 427x640 RGB photos
    tiles = np.stack([np.asarray(Image.fromarray(p[y:y + 128, x:x + 128]).resize((S, S), Image.Resampling.BOX))
                      for p in photos for y in (0, 150, 290) for x in (0, 200, 400, 510)])       # (24, 32, 32, 3)
    tiles = np.concatenate([tiles] * 4)                                                       # 96
    s = show(DEV, tiles, AugmentConfig.photo(), seed=5)
    assert s.images.shape == tiles.shape and s.images.dtype == np.uint8
    assert (s.angles == 0).all() and (s.offsets == 0).all() and (s.masks == 0).all()          # no page edits
    a, b = s.images.astype(np.float64), tiles.astype(np.float64)

    def corr(x, y):                                 # structure only: each image's gray, mean-free
        x, y = x.mean(-1), y.mean(-1)
        x, y = x - x.mean((1, 2), keepdims=True), y - y.mean((1, 2), keepdims=True)
        return (x * y).sum((1, 2)) / np.sqrt((x * x).sum((1, 2)) * (y * y).sum((1, 2)) + 1e-9)

    mirrored = corr(a, b[:, :, ::-1]) > corr(a, b)
    assert 0.3 <= mirrored.mean() <= 0.7, mirrored.mean()
    same = np.where(mirrored, corr(a, b[:, :, ::-1]), corr(a, b))
    assert np.median(same) > 0.6                    # still the same picture
    assert (np.abs(a - np.where(mirrored[:, None, None, None], b[:, :, ::-1], b)).mean((1, 2, 3)) > 1).mean() > 0.9
    again = show(DEV, tiles, AugmentConfig.photo(), seed=5)
    assert np.array_equal(again.images, s.images)
