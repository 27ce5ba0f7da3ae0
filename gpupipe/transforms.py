"""What gpupipe calls a near duplicate: one picture after an edit, as code.

Each *kind* below turns a decoded image (uint8 ``(H, W)`` or ``(H, W, 3)``)
into the encoded bytes of an edited copy.  The same definitions plant near
duplicates in test data (`gpupipe.datasets.plant_dataset`) and make the
in-memory copies with which every dedup run measures its own recall on the
user's images (`gpupipe.stages.probe`), so "what we test" and "what we
measure on your data" are one thing.

Kinds (all stay "the same picture"; different photos of one object or two
writers' digits are not near duplicates):

- ``jpeg_q60``, ``jpeg_q75``: JPEG re-encode at that quality;
- ``brightness_+10``, ``brightness_-10``: pixel values x1.1 / x0.9 (clipped);
- ``contrast_-15``: values pulled 15% towards the mean;
- ``resize_90``: 90% of the side, bicubic; ``upscale_2x``: twice the side;
- ``shift_<n>px``: content moved by n pixels along one axis or diagonally,
  the edge replicated (the frame keeps its size); ``shift_<p>pct``: the same
  by p% of the shorter side (at least 1 px), for images of any size;
- ``crop_5``: a 95% x 95% window at a random position (a crop that also
  moves the content by up to 5%);
- ``blur``: Gaussian blur, radius 0.6 px; ``noise``: Gaussian noise, sigma 4;
- ``composite``: what real same-shot duplicates of photographs combine (ciFAIR's
  pairs in CIFAR-10): a crop of 0-20% of the side (aspect kept) at a random offset,
  rescaled back to the original size, a per-channel colour gain of 0.9-1.1, a
  contrast of 0.85-1.15 and a gamma of 0.8-1.25, then JPEG at quality 50-95.

Pillow encodes (the decode side is always gpupipe's own DALI path).  Every
random choice comes from the ``rng`` passed in.
"""

from __future__ import annotations

import io

import numpy as np

#: The kinds planted by the tests and measured by every run, in a fixed order.
NEAR_KINDS: tuple[str, ...] = (
    "jpeg_q60", "jpeg_q75", "brightness_+10", "brightness_-10", "resize_90", "upscale_2x",
    "shift_1px", "shift_2px", "crop_5",
)
#: Extra kinds the per-run recall probe also measures (not planted by default).
EXTRA_KINDS: tuple[str, ...] = ("contrast_-15", "blur", "noise")
#: The probe kind that stands for real duplicates of photographs (reported apart).
COMPOSITE_KIND = "composite"
#: Per-run probe kinds: shifts relative to the image size (1 and 2 px at 28 px).
PROBE_KINDS: tuple[str, ...] = (
    "jpeg_q60", "jpeg_q75", "brightness_+10", "brightness_-10", "contrast_-15", "resize_90", "upscale_2x",
    "shift_4pct", "shift_7pct", "crop_5", "blur", "noise", COMPOSITE_KIND,
)
_DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, 1), (1, -1), (-1, -1))


def _pil():  # Pillow: a base dependency (review sheets, planting, probes)
    from PIL import Image

    return Image


def encode(pixels: np.ndarray, fmt: str, **kw: object) -> bytes:
    """uint8 (H, W) or (H, W, 3) -> encoded bytes of ``fmt`` (a Pillow format name)."""
    buf = io.BytesIO()
    _pil().fromarray(np.ascontiguousarray(pixels)).save(buf, fmt, **kw)
    return buf.getvalue()


def resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    image = _pil()
    return np.asarray(image.fromarray(np.ascontiguousarray(img)).resize((w, h), image.Resampling.BICUBIC))


def shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move content by (dy, dx) pixels, replicating edges (no wrap); same size."""
    s = max(abs(dy), abs(dx))
    pad = ((s, s), (s, s)) + ((0, 0),) * (img.ndim - 2)
    p = np.pad(img, pad, mode="edge")
    h, w = img.shape[:2]
    return p[s - dy: s - dy + h, s - dx: s - dx + w]


def _shift_pixels(kind: str, img: np.ndarray) -> int:
    amount = kind.split("_", 1)[1]
    if amount.endswith("pct"):
        return max(1, int(round(min(img.shape[:2]) * float(amount[:-3]) / 100.0)))
    if amount.endswith("px"):
        return int(amount[:-2])
    raise ValueError(f"unknown shift kind {kind!r}")


def _composite(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ``composite`` kind's pixels before its JPEG encode."""
    h, w = img.shape[:2]
    c = rng.uniform(0.0, 0.2)                                  # crop fraction of the side, aspect kept
    ch, cw = max(1, round(h * (1 - c))), max(1, round(w * (1 - c)))
    y, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = resize(np.ascontiguousarray(img[y:y + ch, x0:x0 + cw]), w, h).astype(np.float32) / 255.0
    if out.ndim == 3:
        out = out * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    m = out.mean()
    out = np.clip((out - m) * rng.uniform(0.85, 1.15) + m, 0, 1) ** rng.uniform(0.8, 1.25)
    return np.ascontiguousarray(np.clip(np.rint(out * 255), 0, 255).astype(np.uint8))


def near_copy(img: np.ndarray, kind: str, rng: np.random.Generator, *,
              png_level: int | None = 6) -> tuple[bytes | None, np.ndarray | None]:
    """Encoded bytes of an edited copy of ``img`` and, for lossless outputs,
    its pixels (None for JPEG, whose pixels only its decoder knows).

    img: uint8 (H, W) or (H, W, 3).  Raises ValueError for an unknown kind.
    png_level: zlib level of the lossless (PNG) copies, 0-9 (Pillow's default 6);
    the pixels are the same at every level, only the bytes and the time differ.
    None: lossless copies are not encoded at all (bytes None, the pixels only).
    """
    x = img.astype(np.float32)
    h, w = img.shape[:2]
    if kind.startswith("jpeg_q"):
        q = int(kind[6:])
        if not 1 <= q <= 100:
            raise ValueError(f"unknown near-duplicate kind {kind!r}")
        return encode(img, "JPEG", quality=q), None
    if kind.startswith("brightness_"):
        out = np.clip(np.rint(x * (1.0 + int(kind[11:]) / 100.0)), 0, 255)
    elif kind.startswith("contrast_"):
        m = x.mean()
        out = np.clip(np.rint((x - m) * (1.0 + int(kind[9:]) / 100.0) + m), 0, 255)
    elif kind == "resize_90":
        out = resize(img, max(1, round(w * 0.9)), max(1, round(h * 0.9)))
    elif kind == "upscale_2x":
        out = resize(img, 2 * w, 2 * h)
    elif kind.startswith("shift_"):
        s = _shift_pixels(kind, img)
        dy, dx = _DIRECTIONS[int(rng.integers(len(_DIRECTIONS)))]
        out = shift(img, dy * s, dx * s)
    elif kind == "crop_5":
        ch, cw = max(1, round(h * 0.95)), max(1, round(w * 0.95))
        y, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out = img[y:y + ch, x0:x0 + cw]
    elif kind == "blur":
        from PIL import ImageFilter

        out = np.asarray(_pil().fromarray(np.ascontiguousarray(img)).filter(ImageFilter.GaussianBlur(0.6)))
    elif kind == "noise":
        out = np.clip(np.rint(x + rng.normal(0.0, 4.0, img.shape)), 0, 255)
    elif kind == COMPOSITE_KIND:
        return encode(_composite(img, rng), "JPEG", quality=int(rng.integers(50, 96))), None
    else:
        raise ValueError(f"unknown near-duplicate kind {kind!r}")
    out = np.ascontiguousarray(out.astype(np.uint8))
    return (None if png_level is None else encode(out, "PNG", compress_level=png_level)), out
