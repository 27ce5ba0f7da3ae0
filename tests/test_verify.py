"""The same-picture check and the shift key on real images with known ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from gpupipe.datasets import load_digits_images, load_fashion_mnist
from gpupipe.hashing.neighbors import hamming
from gpupipe.hashing.shiftkey import ring_code, shift_key
from gpupipe.hashing.verify import DEFAULT_MIN_SIMILARITY, PairCheck, band_pass, correlations
from gpupipe.transforms import EXTRA_KINDS, NEAR_KINDS, near_copy, resize


def _thumbs(images: list[np.ndarray]) -> np.ndarray:
    """32x32 RGB thumbnails through gpupipe's own DALI decoder (as the hash stage makes them)."""
    from gpupipe.dali.decode import Decoder
    from gpupipe.device import cpu_device
    from gpupipe.transforms import encode

    dec = Decoder(cpu_device(), batch_size=256).setup()
    out = []
    for s in range(0, len(images), 256):
        blobs = [np.frombuffer(b if isinstance(b, bytes) else encode(b, "PNG"), np.uint8) for b in images[s:s + 256]]
        d = dec.decode(blobs)
        assert len(d.ok) == len(blobs)
        out.append(np.asarray(d.thumbs))
    return np.concatenate(out)


@pytest.fixture(scope="module")
def digit_pairs():
    """120 real digits (32x32 as in the demo) and one edited copy of each per kind."""
    images, labels = load_digits_images()
    rng = np.random.default_rng(5)
    idx = rng.choice(len(images), 120, replace=False)
    originals = [resize(images[i], 32, 32) for i in idx]
    kinds = NEAR_KINDS + EXTRA_KINDS
    copies, src, kind = [], [], []
    for k, img in enumerate(originals):
        for name in kinds:
            copies.append(near_copy(img, name, rng)[0])
            src.append(k)
            kind.append(name)
    thumbs = _thumbs(originals + copies)
    return thumbs, len(originals), np.asarray(src), np.asarray(kind), labels[idx]


def test_every_kind_of_copy_is_the_same_picture(digit_pairs):
    thumbs, n0, src, kind, _ = digit_pairs
    check = PairCheck(thumbs)
    sim = check.similarity(n0 + np.arange(len(src)), src, gate=False, full=True)
    for name in np.unique(kind):
        got = sim[kind == name]
        # measured: every kind's 1st percentile >= 0.99 on digits (benchmarks/RESULTS.md)
        assert (got >= DEFAULT_MIN_SIMILARITY).mean() >= 0.98, (name, np.sort(got)[:5])


def test_different_digits_of_one_class_are_not(digit_pairs):
    """The hardest negatives: each original against the most correlated other
    original of its class; at most one of them reaches the threshold."""
    thumbs, n0, _, _, labels = digit_pairs
    g = thumbs[:n0].astype(np.float32).mean(axis=3).reshape(n0, -1)
    g -= g.mean(axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    corr = g @ g.T
    np.fill_diagonal(corr, -2)
    corr[labels[:, None] != labels[None, :]] = -2
    nearest = corr.argmax(axis=1)
    sim = PairCheck(thumbs).similarity(np.arange(n0), nearest, gate=False, full=True)
    assert corr.max(axis=1).mean() > 0.85                    # they do look alike
    assert int((sim >= DEFAULT_MIN_SIMILARITY).sum()) <= 1, np.sort(sim)[-5:]


def test_similarity_is_symmetric_in_brightness_and_bounded(digit_pairs):
    thumbs, n0, _, _, _ = digit_pairs
    check = PairCheck(thumbs)
    i = np.arange(n0)
    assert np.allclose(check.similarity(i, i, gate=False), 1.0, atol=1e-4)
    darker = np.clip(thumbs[:n0].astype(np.int16) // 2 + 10, 0, 255).astype(np.uint8)
    both = PairCheck(np.concatenate([thumbs[:n0], darker]))
    assert (both.similarity(i, n0 + i, gate=False) > 0.99).all()
    sim = check.similarity(i, np.roll(i, 1), gate=False)
    assert ((sim >= -1) & (sim <= 1)).all()


def test_colour_counts(digit_pairs):
    """A recoloured picture is not the same picture: channels are compared."""
    thumbs, n0, _, _, _ = digit_pairs
    red = thumbs[:n0].copy()
    red[..., 1:] = 0                                          # the same strokes, in red only
    green = thumbs[:n0].copy()
    green[..., ::2] = 0
    check = PairCheck(np.concatenate([red, green]))
    assert check.colour
    sim = check.similarity(np.arange(n0), n0 + np.arange(n0), gate=False)
    assert (sim < DEFAULT_MIN_SIMILARITY).all()


def test_correlations_find_a_known_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 1, 16, 16)).astype(np.float32)
    b = np.roll(a, (1, -2), axis=(2, 3))
    surf = correlations(a, b, 2, 2)
    assert np.unravel_index(surf[0].argmax(), surf[0].shape) == (3, 0)   # dy = +1, dx = -2
    assert surf[:, 3, 0].min() > 0.999


def test_shift_key_survives_shifts_that_break_phash():
    """Fashion-MNIST (28 px): 2 px shifts move a third of pHash's bits, far fewer of the shift key's."""
    from gpupipe.hashing.phash import phash

    images, _ = load_fashion_mnist(split="test")
    rng = np.random.default_rng(1)
    idx = rng.choice(len(images), 200, replace=False)
    originals = [images[i] for i in idx]
    shifted = [near_copy(im, "shift_2px", rng)[0] for im in originals]
    t = _thumbs(originals + shifted).astype(np.float32).mean(axis=3).round().astype(np.uint8)
    d_key = hamming(shift_key(t[:200]), shift_key(t[200:]))
    d_ph = hamming(phash(t[:200]), phash(t[200:]))
    assert np.median(d_key) < np.median(d_ph) / 2
    assert (d_key <= 8).mean() >= 0.8 > (d_ph <= 8).mean() + 0.5      # measured 0.88 vs 0.05
    codes = ring_code(t)
    assert codes.shape == (400, 4) and codes.dtype == np.uint64


def test_band_pass_ignores_brightness_and_contrast():
    rng = np.random.default_rng(2)
    t = rng.integers(0, 180, (3, 32, 32), dtype=np.uint8)
    f1 = band_pass(t, colour=False)
    f2 = band_pass(np.rint(t * 1.2 + 20).astype(np.uint8), colour=False)
    cos = (f1 * f2).sum(axis=(1, 2, 3)) / np.sqrt((f1 ** 2).sum(axis=(1, 2, 3)) * (f2 ** 2).sum(axis=(1, 2, 3)))
    assert (cos > 0.999).all()


@pytest.mark.gpu
def test_check_equal_on_gpu(digit_pairs):
    import cupy as cp

    thumbs, n0, src, _, _ = digit_pairs
    i, j = n0 + np.arange(len(src)), src
    cpu = PairCheck(thumbs).similarity(i, j, gate=False, full=True)
    gpu = PairCheck(cp.asarray(thumbs), xp=cp).similarity(cp.asarray(i), cp.asarray(j), gate=False, full=True)
    assert np.allclose(cpu, cp.asnumpy(gpu), atol=2e-3)
    assert np.array_equal(ring_code(thumbs[..., 0]), cp.asnumpy(ring_code(cp.asarray(thumbs[..., 0]), xp=cp)))


def test_a_full_cache_gives_the_same_similarities(digit_pairs, monkeypatch):
    """Past CACHE_BYTES nothing more is kept and the band-passes are computed
    again for each call: the same numbers as with room for every image, up to
    float32 rounding (the recomputed batches have other shapes, and on some
    CPUs other shapes take other SIMD paths: 149 of 1,800 similarities
    differed by up to 2.4e-7 on an AMD EPYC with AVX2, none on an AVX-512 Xeon)."""
    from gpupipe.hashing import verify

    thumbs, n0, src, _, _ = digit_pairs
    i = np.concatenate([n0 + np.arange(len(src)), np.repeat(np.arange(n0), 3)])     # originals in 1 + 3 pairs
    j = np.concatenate([src, np.random.default_rng(0).integers(0, len(thumbs), 3 * n0)])
    full = PairCheck(thumbs).similarity(i, j, gate=False, full=True)
    monkeypatch.setattr(verify, "CACHE_BYTES", 40 * 4 * (32 * 32 + 11 * 11))     # room for 40 gray images
    small = PairCheck(thumbs)
    np.testing.assert_allclose(small.similarity(i, j, gate=False, full=True), full, rtol=0, atol=1e-6)
    assert int((small._fine_cache.slot >= 0).sum()) <= 40
