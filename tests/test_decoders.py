"""Device independence: what changes when another decoder decodes a JPEG.

nvJPEG (DALI's ``mixed`` decoder on a GPU) and libjpeg-turbo (``cpu``) may
give a JPEG's pixels that differ by a level or two: other IDCT and chroma
upsampling arithmetic.  There is no GPU here, so the other decoder is
libjpeg-turbo's fast integer IDCT (DALI's ``use_fast_idct``), a real second
decoder whose pixels differ from the default's in the same way.  A JPEG and
the PNG of its other-decoder pixels ("its own re-decode on another device")
must land in one duplicate group; distinct pictures must not.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gpupipe import schema
from gpupipe.runner import LEDGER, DedupOptions, run_dedup

N = 120


def _fast_idct_decode(blobs: list[bytes]) -> list[np.ndarray]:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(blobs), num_threads=2, device_id=None)
    def pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8)
        return fn.decoders.image(enc, device="cpu", output_type=types.RGB, use_fast_idct=True)

    p = pipe()
    p.build()
    p.feed_input("enc", [np.frombuffer(b, np.uint8) for b in blobs])
    (out,) = p.run()
    return [np.array(out.at(i)) for i in range(len(blobs))]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """N colour JPEGs (Fashion-MNIST 2x2 mosaics, tinted, 4:2:0 at quality 85)
    with, beside each of the first N/2, a PNG of its fast-IDCT decode."""
    from gpupipe.datasets import load_fashion_mnist

    images, labels = load_fashion_mnist(split="test")
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("decoders") / "src"
    blobs, names = [], []
    for i in range(N):
        idx = rng.choice(len(images), 4, replace=False)
        tiles = [images[j][..., None] * rng.uniform(0.3, 1.0, 3)[None, None, :] for j in idx]
        mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
        buf = io.BytesIO()
        Image.fromarray(mosaic.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85, subsampling=2)
        blobs.append(buf.getvalue())
        names.append(f"c{labels[idx[0]]}/m{i:03d}")
    other = _fast_idct_decode(blobs[: N // 2])
    for i, (blob, name) in enumerate(zip(blobs, names)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.jpg").write_bytes(blob)
        if i < N // 2:
            Image.fromarray(other[i]).save(root / f"{name}_other_decoder.png")
    return root


def test_a_jpeg_and_its_other_decoder_pixels_group_and_nothing_else_does(tree, tmp_path):
    run_dedup(tree, tmp_path / "run", DedupOptions(device="cpu", recall_sample=0))
    t = pq.read_table(tmp_path / "run" / LEDGER).to_pandas()
    assert not t[schema.IS_INVALID].any() and len(t) == N + N // 2
    stem = t[schema.REL_PATH].str.replace("_other_decoder.png", "", regex=False).str.replace(".jpg", "", regex=False)
    group = dict(zip(t[schema.REL_PATH], t[schema.DEDUP_GROUP]))
    pairs = [(f"{s}.jpg", f"{s}_other_decoder.png") for s in sorted(set(stem)) if f"{s}_other_decoder.png" in group]
    assert len(pairs) == N // 2
    # Every pair is one group (recall 1.0), and every group is one source picture (precision 1.0).
    assert all(group[a] == group[b] for a, b in pairs)
    assert t.groupby(schema.DEDUP_GROUP)[schema.REL_PATH].apply(lambda s: stem[s.index].nunique()).max() == 1
    # The two decoders really differ: most pairs' exact pixel hashes do, so the
    # exact-pixel stage cannot be what groups them; the near stage does.
    ph = dict(zip(t[schema.REL_PATH], t[schema.PIXELS_HASH]))
    differ = sum(ph[a] != ph[b] for a, b in pairs)
    assert differ >= 0.9 * len(pairs), differ
    kind = dict(zip(t[schema.REL_PATH], t[schema.DEDUP_KIND]))
    assert {k for a, b in pairs if ph[a] != ph[b] for k in (kind[a], kind[b])} == {"near", "representative"}


def _sample_tiles(sizes: list[tuple[int, int]], fmt: str, seed: int) -> list[np.ndarray]:
    """Crops of scikit-learn's two sample photographs at (height, width) ``sizes``, encoded."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for k, (h, w) in enumerate(sizes):
        p = photos[k % len(photos)]
        y, x = rng.integers(0, p.shape[0] - h), rng.integers(0, p.shape[1] - w)
        buf = io.BytesIO()
        Image.fromarray(p[y:y + h, x:x + w]).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(np.frombuffer(buf.getvalue(), np.uint8))
    return out


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_32_px_image_is_its_own_thumbnail_and_other_sizes_fall_back_to_the_resize(fmt):
    """The hash stage decodes files whose headers say 32x32 (CIFAR's size) without
    the resize: the thumbnails, grays and pixels must be what the resize route
    gives, and a batch holding another size must come back as the resize route's."""
    from gpupipe.dali.decode import Decoder
    from gpupipe.device import cpu_device

    dec = Decoder(cpu_device(), batch_size=64).setup()
    tiles = _sample_tiles([(32, 32)] * 48, fmt, seed=1)
    mixed = tiles[:40] + _sample_tiles([(32, 40), (64, 64), (31, 32), (48, 32)] * 2, fmt, seed=2)
    for blobs in (tiles, mixed):
        fast, usual = dec.decode(blobs, at_size=True), dec.decode(blobs)
        assert np.array_equal(fast.ok, usual.ok) and not fast.errors
        assert np.array_equal(fast.thumbs, usual.thumbs)
        assert np.array_equal(fast.grays, usual.grays)
        assert len(fast.rgb_groups) == len(usual.rgb_groups)
        for (pa_, a), (pb, b) in zip(fast.rgb_groups, usual.rgb_groups):
            assert np.array_equal(pa_, pb) and np.array_equal(a, b)
    assert len(usual.rgb_groups) == 5       # the mixed batch did take the resize route


def test_thumbnails_of_pixels_are_those_of_decoding_their_png():
    """The recall probe gives its lossless copies' pixels to `Decoder.thumbnails`
    instead of encoding and decoding a PNG: the thumbnails and grays must be the
    decoded PNG's, at the thumbnail size and others, colour and gray."""
    from gpupipe.dali.decode import Decoder
    from gpupipe.device import cpu_device

    dec = Decoder(cpu_device(), batch_size=32).setup()
    sizes = [(32, 32), (33, 35), (64, 48), (200, 150)] * 3
    pixels = [np.asarray(Image.open(io.BytesIO(b.tobytes()))) for b in _sample_tiles(sizes, "PNG", seed=3)]
    pixels += [p[..., 1] for p in pixels[:4]]                                   # gray ones
    pngs = [np.frombuffer(_png(p), np.uint8) for p in pixels]
    rgb = [np.repeat(p[..., None], 3, axis=2) if p.ndim == 2 else p for p in pixels]
    direct, decoded = dec.thumbnails(rgb), dec.decode(pngs)
    assert np.array_equal(decoded.ok, np.arange(len(pixels)))
    assert np.array_equal(direct.thumbs, decoded.thumbs) and np.array_equal(direct.grays, decoded.grays)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()
