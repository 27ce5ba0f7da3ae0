"""Pixel hash and pHash kernels on real digits: exactness, sensitivity, CPU == GPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gpupipe.datasets import load_digits_images
from gpupipe.hashing.phash import dct_matrix, phash
from gpupipe.hashing.pixels import pixel_hash, to_hex


@pytest.fixture(scope="module")
def digits_rgb():
    images, _ = load_digits_images()
    big = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)        # (N, 32, 32)
    return np.repeat(big[..., None], 3, axis=3)                     # (N, 32, 32, 3)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.astype(np.uint64))


def test_pixel_hash_separates_every_distinct_digit(digits_rgb):
    digests = to_hex(pixel_hash(digits_rgb))
    distinct_images = len({d.tobytes() for d in digits_rgb})
    assert len(set(digests)) == distinct_images


def test_pixel_hash_sees_one_bit_and_shape(digits_rgb):
    a = digits_rgb[:50].copy()
    h = pixel_hash(a)
    a[np.arange(50), np.arange(50) % 32, 7, np.arange(50) % 3] ^= 1
    assert (pixel_hash(a) != h).any(axis=1).all()
    flat = digits_rgb[:2].reshape(2, 3072)
    assert to_hex(pixel_hash(flat.reshape(2, 32, 32, 3))) != to_hex(pixel_hash(flat.reshape(2, 64, 16, 3)))
    # hashing in a batch or alone gives the same digest
    assert to_hex(pixel_hash(digits_rgb[3:4])) == to_hex(pixel_hash(digits_rgb[:8]))[3:4]


def test_pixel_hash_digests_are_stable():
    """The digests are part of every ledger (hash_pixels): the kernel may get faster,
    its values may not change.  Pinned on a photo-sized batch (hashed a few images at a
    time on the CPU) and on the last image of a 600-image batch of 32 px ones."""
    a = (np.arange(2 * 256 * 256 * 3, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8).reshape(2, 256, 256, 3)
    assert to_hex(pixel_hash(a)) == ["b0bd9121de0b0861dd89dcd285e9b213", "6ac5faf2d29bde96fe25caf066980a7f"]
    b = (np.arange(600 * 32 * 32 * 3, dtype=np.uint64) * 40503 % 253).astype(np.uint8).reshape(600, 32, 32, 3)
    assert to_hex(pixel_hash(b))[599] == "0a969c7c9779f9b23ecc15170eafc0be"


def test_dct_matrix_is_orthonormal():
    d = dct_matrix()
    assert np.allclose(d @ d.T, np.eye(32))


def test_phash_close_for_near_duplicates_far_for_others(digits_rgb):
    gray = digits_rgb[..., 0]
    h = phash(gray)
    # JPEG q75 round trip of each digit: small distance
    jpeg = []
    for g in gray[:200]:
        b = io.BytesIO()
        Image.fromarray(g).save(b, format="JPEG", quality=75)
        jpeg.append(np.asarray(Image.open(b)))
    near = _popcount(h[:200] ^ phash(np.stack(jpeg)))
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(gray), size=(2000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    distinct = [(i, j) for i, j in pairs if not np.array_equal(gray[i], gray[j])]
    far = _popcount(h[[i for i, _ in distinct]] ^ h[[j for _, j in distinct]])
    assert np.median(near) <= 4
    assert np.percentile(near, 95) <= 8
    assert np.median(far) >= 20
    assert np.mean(far <= 8) < 0.02


@pytest.mark.gpu
def test_kernels_equal_on_gpu(digits_rgb):
    import cupy as cp

    assert to_hex(cp.asnumpy(pixel_hash(cp.asarray(digits_rgb), cp))) == to_hex(pixel_hash(digits_rgb))
    gray = digits_rgb[..., 0]
    cpu = phash(gray)
    gpu = cp.asnumpy(phash(cp.asarray(gray), cp))
    assert np.mean(cpu == gpu) >= 0.999      # float ties at the median may flip a bit, rarely
