"""A corpus of real-world inputs, each with the outcome gpupipe must give it.

``build_corpus(root)`` writes an ImageFolder tree ``root/<class>/<file>``
(no binary blobs in the repository: every file is made here, with Pillow,
numpy and the standard library) and returns a :class:`Corpus` that says, for
every file, whether the dedup run must take it as a valid image or flag it
with one precise ``invalid_reason`` (`gpupipe.io.sniff.REASONS`, plus
``undecodable``, ``unreadable`` and ``missing`` from the hash stage).

Pixels come from real pictures: Fashion-MNIST's test images (the Debian
package ``dataset-fashion-mnist``, which ``make install`` installs), upscaled
to 96x64 and tinted for the colour formats, one distinct picture per file, so
the only duplicate groups are the planted ones (:attr:`Case.group`).

Besides the image files the tree holds things that must *not* become rows
(hidden files and folders, a folder named ``x.jpg``, a folder symlink loop,
non-image files) and, next to the class folders, manifests (``manifest.csv``,
``labels_int.parquet``, ``labels_float.parquet``) whose rows point into the
tree: missing files, empty and non-string labels, duplicated rows.  A folder
*outside* the root holds the targets of the symlinks that leave the root
(followed: their files are rows like any other).

Policies the corpus pins down (README, "What counts as invalid"):

* Bytes after a JPEG's EOI or a PNG's IEND are ignored (valid).
* Only still images are accepted: every GIF (animated or not: DALI has no GIF
  decoder) and animated WebP are ``unsupported_format``; so are HEIC/HEIF and
  AVIF, recognised from their ``ftyp`` box whatever their extension.
* EXIF orientation is applied at decode (DALI's ``adjust_orientation``): the
  same picture stored in all eight orientations is one duplicate group.
* A multi-page TIFF is its first page.
* Symbolic links are followed, outside the root too; a folder link to one of
  its own parents is not (listed in ``source_errors``); a link that leads
  nowhere (dangling, or a file link loop) is a row flagged ``missing`` or
  ``unreadable``.
* Manifests: a row naming a missing file is flagged ``missing``; an empty or
  NaN label is no label (the image stays valid, unlabelled); integer labels
  are their decimal text; a path listed twice is one row (with no label when
  the rows disagree), reported in ``source_errors``.

Run ``python tests/corpus.py DIR`` to write it and print the table.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VALID = None            # Case.expected for files that must be processed as valid images
W, H = 96, 64           # size of the pictures (not square: orientation shows)

# invalid_reason values (strings, as in the ledger)
EMPTY, NOT_AN_IMAGE, UNSUPPORTED, TRUNCATED = "empty", "not_an_image", "unsupported_format", "truncated"
BAD_HEADER, ABSURD, UNDECODABLE = "bad_header", "absurd_dimensions", "undecodable"
UNREADABLE, MISSING = "unreadable", "missing"


@dataclass(frozen=True)
class Case:
    """One row the source must produce.

    kind: what the file is (one name per kind of real-world input).
    rel: its rel_path (POSIX, relative to the source root or manifest folder).
    expected: None when it must be a valid image, else its invalid_reason.
    label: the label ingest must give it (None: unlabelled).
    group: rows sharing a group name must end in one dedup group; a valid row
        with no group must be alone in its group.
    size: (width, height) the header declares, where the test checks it.
    """

    kind: str
    rel: str
    expected: str | None
    label: str | None
    group: str | None = None
    size: tuple[int, int] | None = None


@dataclass
class Corpus:
    root: Path
    outside: Path
    cases: list[Case] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)        # entries under root that must not be rows
    source_errors: dict[str, str] = field(default_factory=dict)   # expected summary source_errors
    skipped_non_images: int = 0
    manifests: dict[str, list[Case]] = field(default_factory=dict)   # file name under root -> its rows
    manifest_errors: dict[str, dict[str, str]] = field(default_factory=dict)
    reads_mode_000: bool = False      # this process reads a mode-000 file (root: CAP_DAC_OVERRIDE)

    def by_rel(self) -> dict[str, Case]:
        return {c.rel: c for c in self.cases}


# --- pictures -----------------------------------------------------------------------
def pictures(n: int) -> list[np.ndarray]:
    """``n`` distinct real pictures, uint8 (H, W) grayscale: Fashion-MNIST test
    images spread over the set, upscaled bicubically to 96x64."""
    from PIL import Image

    from gpupipe.datasets import load_fashion_mnist

    images, _ = load_fashion_mnist(split="test")
    idx = np.linspace(0, len(images) - 1, n).astype(int)
    return [np.asarray(Image.fromarray(images[i]).resize((W, H), Image.BICUBIC)) for i in idx]


def tint(gray: np.ndarray) -> np.ndarray:
    """A colour version of a grayscale picture, uint8 (H, W, 3) (each channel a different ramp)."""
    g = gray.astype(np.float32)
    rgb = np.stack([g, 40 + 0.7 * g, 230 - 0.8 * g], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# --- encoders -----------------------------------------------------------------------
def _pil(arr: np.ndarray, mode: str | None = None):
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(arr))
    return im.convert(mode) if mode and im.mode != mode else im


def _save(im, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None = None) -> bytes:
    """A PNG from its filtered scanlines (each row: filter byte 0 + samples), CRCs correct.
    ``rows=None``: a tiny IDAT, for headers that declare more than they hold."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\x00" * 8)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png16(arr16: np.ndarray) -> bytes:
    """16-bit PNG of a uint16 (H, W) gray or (H, W, 3) RGB array (Pillow writes no 16-bit RGB)."""
    h, w = arr16.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr16)
    return raw_png(w, h, 16, 2 if arr16.ndim == 3 else 0, rows)


def _to16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.uint16) * 257 + np.arange(a.size, dtype=np.uint16).reshape(a.shape) % 7


def ycck_jpeg(rgb: np.ndarray) -> bytes:
    """A 4-component JPEG with Adobe transform 2 (YCCK), as Photoshop writes CMYK
    files: libjpeg decodes Y/Cb/Cr to RGB, inverts it to CMY and keeps K.

    Pillow writes only plain CMYK (transform 0), so the components are made
    here: YCC of the inverted picture, K = 0 ink; then the transform byte of
    the APP14 "Adobe" segment is set to 2.  Pillow's own decode of the result
    is the picture again (checked below)."""
    inv = 255.0 - rgb.astype(np.float64)
    r, g, b = inv[..., 0], inv[..., 1], inv[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    ycck = np.stack([y, cb, cr, np.full_like(y, 255.0)], axis=-1)      # K stored as 255 = no ink
    comps = np.clip(np.rint(ycck), 0, 255).astype(np.uint8)
    # Pillow stores CMYK inverted (Adobe's convention): give it 255 - what must be stored.
    from PIL import Image

    data = bytearray(_save(Image.frombytes("CMYK", (rgb.shape[1], rgb.shape[0]), (255 - comps).tobytes()),
                           "JPEG", quality=95))
    at = data.find(b"Adobe")
    assert at > 0 and data[at + 11] == 0, "Pillow wrote no Adobe segment with transform 0"
    data[at + 11] = 2
    back = np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"), dtype=np.int16)
    assert np.abs(back - rgb).mean() < 4, "the YCCK file does not decode to its picture"
    return bytes(data)


# EXIF orientation o: the transpose that turns the stored pixels upright
# (Pillow's ImageOps.exif_transpose); the stored pixels are its inverse of the picture.
_UPRIGHT = {1: None, 2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
            6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}
_INVERSE = {None: None, "ROTATE_270": "ROTATE_90", "ROTATE_90": "ROTATE_270"}


def exif_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    """JPEG whose stored pixels, turned upright by EXIF ``orientation``, are ``rgb``."""
    from PIL import Image

    im = _pil(rgb)
    op = _UPRIGHT[orientation]
    inv = _INVERSE.get(op, op)
    if inv is not None:
        im = im.transpose(getattr(Image.Transpose, inv))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(im, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())


def heic_header() -> bytes:
    """The start of an HEIC file (an ISO-BMFF ``ftyp`` box, brand ``heic``, then a
    ``meta`` box): no HEIC encoder is at hand; sniffing reads only this."""
    ftyp = b"ftyp" + b"heic" + struct.pack(">I", 0) + b"mif1heicmiaf"
    meta = b"meta" + b"\x00" * 4 + b"hdlr-and-more" * 20
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + struct.pack(">I", 4 + len(meta)) + meta


def _sof_dims(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with the frame header's declared size replaced (the scan is unchanged)."""
    data = bytearray(jpeg)
    for m in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(m)
        if at > 0:
            struct.pack_into(">HH", data, at + 5, height, width)
            return bytes(data)
    raise ValueError("no SOF0/SOF2 marker")


# --- the tree -------------------------------------------------------------------------
def build_corpus(root: str | os.PathLike, *, outside: str | os.PathLike | None = None) -> Corpus:
    """Write the corpus under ``root`` (created; must not exist or be empty) and the
    targets of its outward symlinks under ``outside`` (default: ``root`` + ``-outside``).
    Returns what each file must give.  Deterministic (seeded) but for the
    permission case, whose expectation depends on whether this process can read
    a mode-000 file (it can as root)."""
    from PIL import Image, ImageCms

    root = Path(root)
    outside = Path(outside) if outside is not None else root.with_name(root.name + "-outside")
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    c = Corpus(root, outside)
    rng = np.random.default_rng(10)
    pics = iter(pictures(64))

    def put(kind: str, rel: str, data: bytes, expected: str | None, *, group: str | None = None,
            size: tuple[int, int] | None = None, where: Path | None = None) -> Path:
        p = (where or root) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if where is None:
            c.cases.append(Case(kind, rel, expected, rel.split("/")[0], group, size))
        return p

    def pic() -> np.ndarray:
        return next(pics)

    # JPEG ------------------------------------------------------------------------
    base = tint(pic())
    jpeg_base = _save(_pil(base), "JPEG", quality=90)
    put("jpeg_baseline", "jpeg/baseline.jpg", jpeg_base, VALID, group="baseline", size=(W, H))
    # a motion photo: the video appended after EOI (an MP4 'ftyp' box, then data)
    trailer = struct.pack(">I", 24) + b"ftypmp42" + b"\x00" * 12 + rng.integers(0, 256, 6000, np.uint8).tobytes()
    put("jpeg_trailing_bytes", "jpeg/motion photo.jpg", jpeg_base + trailer, VALID, group="baseline")
    put("jpeg_progressive", "jpeg/progressive.jpg",
        _save(_pil(tint(pic())), "JPEG", quality=90, progressive=True), VALID)
    put("jpeg_restart_markers", "jpeg/restart.jpg",
        _save(_pil(tint(pic())), "JPEG", quality=90, restart_marker_blocks=2), VALID)
    put("jpeg_grayscale", "jpeg/gray.jpg", _save(_pil(pic()), "JPEG", quality=90), VALID)
    put("jpeg_cmyk", "jpeg/cmyk.jpg", _save(_pil(tint(pic()), "CMYK"), "JPEG", quality=90), VALID)
    put("jpeg_ycck", "jpeg/ycck.jpg", ycck_jpeg(tint(pic())), VALID)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    put("jpeg_icc_profile", "jpeg/icc.jpg", _save(_pil(tint(pic())), "JPEG", quality=90, icc_profile=icc), VALID)
    put("jpeg_1x1", "jpeg/one pixel.jpg", _save(_pil(tint(pic())[:1, :1]), "JPEG"), VALID, size=(1, 1))
    put("jpeg_uppercase_ext", "jpeg/UPPER.JPG", _save(_pil(tint(pic())), "JPEG", quality=90), VALID)
    put("jpeg_ext_jpeg_upper", "jpeg/Photo.JPEG", _save(_pil(tint(pic())), "JPEG", quality=90), VALID)
    # the same picture in all eight EXIF orientations: decoded upright, one group
    upright = tint(pic())
    for o in range(1, 9):
        put(f"jpeg_exif_orientation_{o}", f"exif/orientation-{o}.jpg", exif_jpeg(upright, o), VALID,
            group="orientation", size=(W, H) if o <= 4 else (H, W))

    # PNG -------------------------------------------------------------------------
    png_base = _save(_pil(tint(pic())), "PNG")
    put("png_rgb", "png/rgb.png", png_base, VALID, group="png_base")
    put("png_trailing_bytes", "png/trailing.png", png_base + rng.integers(0, 256, 3000, np.uint8).tobytes(),
        VALID, group="png_base")
    put("png_gray", "png/gray.png", _save(_pil(pic()), "PNG"), VALID)
    put("png_16bit_gray", "png/gray16.png", png16(_to16(pic())), VALID)
    put("png_16bit_rgb", "png/rgb16.png", png16(_to16(tint(pic()))), VALID)
    g = pic()
    put("png_gray_alpha", "png/gray_alpha.png",
        _save(_pil(np.dstack([g, np.where(g > 20, 255, 0).astype(np.uint8)])), "PNG"), VALID)
    rgba = np.dstack([tint(pic()), np.linspace(0, 255, W, dtype=np.uint8)[None, :].repeat(H, 0)])
    put("png_rgba", "png/rgba.png", _save(_pil(rgba), "PNG"), VALID)
    pal = _pil(tint(pic())).quantize(64)
    put("png_palette_transparency", "png/palette.png", _save(pal, "PNG", transparency=0), VALID)
    put("png_1x1", "png/1x1.png", _save(_pil(tint(pic())[:1, :1]), "PNG"), VALID, size=(1, 1))
    row = pic()[H // 2]                   # a real row (and column) of a picture, repeated
    wide = np.tile(row, 2048 // W + 1)[:2048]
    put("png_very_wide", "png/wide.png", _save(_pil(np.stack([wide, wide[::-1]])), "PNG"), VALID, size=(2048, 2))
    col = pic()[:, W // 2]
    tall = np.tile(col, 30000 // H + 1)[:30000]
    put("png_very_tall", "png/tall.png", _save(_pil(tall[:, None].repeat(3, 1)), "PNG"), VALID, size=(3, 30000))
    put("png_named_jpg", "png/really a png.jpg", _save(_pil(tint(pic())), "PNG"), VALID)
    put("png_uppercase_ext", "png/UPPER.PNG", _save(_pil(tint(pic())), "PNG"), VALID)

    # WebP, BMP, TIFF ---------------------------------------------------------------
    put("webp_lossy", "web images/lossy.webp", _save(_pil(tint(pic())), "WEBP", quality=80), VALID)
    put("webp_lossless", "web images/lossless.webp", _save(_pil(tint(pic())), "WEBP", lossless=True), VALID)
    rgba = np.dstack([tint(pic()), np.where(pic() > 30, 255, 0).astype(np.uint8)])
    put("webp_alpha", "web images/alpha.webp", _save(_pil(rgba), "WEBP", quality=80), VALID)
    put("bmp_1bit", "bmp/1bit.bmp", _save(_pil(pic()).convert("1"), "BMP"), VALID)
    put("bmp_8bit", "bmp/8bit.bmp", _save(_pil(pic()), "BMP"), VALID)
    put("bmp_24bit", "bmp/24bit.bmp", _save(_pil(tint(pic())), "BMP"), VALID)
    rgba = np.dstack([tint(pic()), np.full((H, W), 255, np.uint8)])
    put("bmp_32bit", "bmp/32bit.bmp", _save(_pil(rgba), "BMP"), VALID)
    put("tiff_8bit", "tiff/8bit.tif", _save(_pil(tint(pic())), "TIFF"), VALID)
    put("tiff_16bit", "tiff/16bit.tif", _save(Image.fromarray(_to16(pic())), "TIFF"), VALID)
    put("tiff_lzw", "tiff/lzw.TIFF", _save(_pil(tint(pic())), "TIFF", compression="tiff_lzw"), VALID)
    first = tint(pic())
    pages = [_pil(first), _pil(tint(pic())), _pil(tint(pic()))]
    put("tiff_multipage", "tiff/multipage.tiff", _save(pages[0], "TIFF", save_all=True, append_images=pages[1:]),
        VALID, group="multipage")
    put("tiff_multipage_first_page_as_png", "tiff/multipage first page.png", _save(pages[0], "PNG"),
        VALID, group="multipage")

    # names --------------------------------------------------------------------------
    put("non_ascii_names", "日本語 画像/café crème.jpg", _save(_pil(tint(pic())), "JPEG", quality=90), VALID)
    put("non_ascii_cyrillic", "日本語 画像/фото 1.png", _save(_pil(tint(pic())), "PNG"), VALID)
    put("image_in_folder_named_x_jpg", "png/x.jpg/inside.png", _save(_pil(tint(pic())), "PNG"), VALID)
    c.ignored.append("png/x.jpg")

    # ignored: hidden files and folders, non-images ------------------------------------
    hidden = _save(_pil(tint(pic())), "PNG")
    for rel in (".DS_Store", "png/.hidden.png", "jpeg/._baseline.jpg", ".thumbnails/t.png",
                "png/.cache/inside.png"):
        put("hidden", rel, hidden, None, where=root)        # written, not a Case
        c.ignored.append(rel)
    (root / "png" / "notes.txt").write_text("not an image: skipped for its extension\n")
    c.skipped_non_images += 1

    # flagged ------------------------------------------------------------------------
    jpeg = _save(_pil(tint(pic())), "JPEG", quality=90)
    png = _save(_pil(tint(pic())), "PNG")
    put("zero_bytes", "broken/zero.jpg", b"", EMPTY)
    put("jpeg_truncated_mid_scan", "broken/cut mid scan.jpg", jpeg[: len(jpeg) * 2 // 3], TRUNCATED)
    put("jpeg_truncated_header", "broken/cut header.jpg", jpeg[:60], TRUNCATED)
    put("png_truncated_mid_idat", "broken/cut idat.png", png[: len(png) // 2], TRUNCATED)
    put("png_truncated_header", "broken/cut header.png", png[:20], TRUNCATED)
    put("random_bytes_as_png", "broken/random.png", rng.integers(0, 256, 4096, np.uint8).tobytes(), NOT_AN_IMAGE)
    put("html_as_jpg", "broken/page.jpg",
        b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>no</body></html>\n",
        NOT_AN_IMAGE)
    put("jpeg_zero_width", "broken/zero width.jpg", _sof_dims(jpeg, 0, H), BAD_HEADER)
    put("png_garbage_idat", "broken/garbage idat.png",
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", b"\x00" + rng.integers(0, 256, 300, np.uint8).tobytes()) + _chunk(b"IEND", b""),
        UNDECODABLE)
    put("png_decompression_bomb", "broken/bomb.png", raw_png(30000, 30000, 8, 0), ABSURD, size=(30000, 30000))
    put("jpeg_decompression_bomb", "broken/bomb.jpg", _sof_dims(jpeg, 60000, 60000), ABSURD)
    frames = [_pil(tint(pic())) for _ in range(3)]
    put("gif_animated", "broken/animated.gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                                     duration=100, loop=0), UNSUPPORTED)
    put("gif_still", "broken/still.gif", _save(frames[0], "GIF"), UNSUPPORTED)
    put("webp_animated", "broken/animated.webp", _save(frames[0], "WEBP", save_all=True,
                                                       append_images=frames[1:], duration=100), UNSUPPORTED)
    put("avif", "broken/photo.avif", _save(_pil(tint(pic())), "AVIF", quality=60), UNSUPPORTED)
    put("avif_named_jpg", "broken/avif named.jpg", _save(_pil(tint(pic())), "AVIF", quality=60), UNSUPPORTED)
    put("heic", "broken/IMG_0001.HEIC", heic_header(), UNSUPPORTED)

    # permissions: unreadable for anyone but root
    locked = put("permission_000", "broken/locked.jpg", _save(_pil(tint(pic())), "JPEG"), None, where=root)
    os.chmod(locked, 0)
    try:            # root (os.geteuid() == 0) reads it all the same: then it is a valid image
        locked.read_bytes()
        readable = True
    except PermissionError:
        readable = False
    c.reads_mode_000 = readable
    c.cases.append(Case("permission_000", "broken/locked.jpg", VALID if readable else UNREADABLE, "broken"))

    # symbolic links -------------------------------------------------------------------
    links = root / "links"
    links.mkdir()
    out_file = put("outside", "outside.png", _save(_pil(tint(pic())), "PNG"), None, where=outside)
    os.symlink(out_file, links / "outside.png")
    c.cases.append(Case("symlink_file_outside_root", "links/outside.png", VALID, "links"))
    put("outside", "folder/in linked folder.png", _save(_pil(tint(pic())), "PNG"), None, where=outside)
    os.symlink(outside / "folder", links / "outside folder")
    c.cases.append(Case("symlink_folder_outside_root", "links/outside folder/in linked folder.png", VALID, "links"))
    os.symlink("../jpeg/baseline.jpg", links / "to baseline.jpg")
    c.cases.append(Case("symlink_inside_root", "links/to baseline.jpg", VALID, "links", group="baseline"))
    os.symlink("..", links / "loop")
    c.ignored.append("links/loop")
    c.source_errors["links/loop"] = "symlink loop: not followed"
    os.symlink("self loop.jpg", links / "self loop.jpg")
    c.cases.append(Case("symlink_file_loop", "links/self loop.jpg", UNREADABLE, "links"))
    os.symlink("gone.jpg", links / "dangling.jpg")
    c.cases.append(Case("symlink_dangling", "links/dangling.jpg", MISSING, "links"))

    _manifests(c)
    return c


def _manifests(c: Corpus) -> None:
    """Manifests next to the class folders (skipped as non-images by the ImageFolder run)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = c.root
    absolute = (root / "tiff" / "8bit.tif").absolute().as_posix()
    lines = [
        ("jpeg/baseline.jpg", "shoe"),
        ("jpeg/not there.jpg", "shoe"),           # missing file
        ("png/rgb.png", ""),                      # empty label
        ("png/gray.png", "   "),                  # blank label
        ("web images/lossy.webp", "bag"),         # listed twice, same label
        ("web images/lossy.webp", "bag"),
        ("bmp/24bit.bmp", "bag"),                 # listed twice, labels disagree
        ("bmp/24bit.bmp", "coat"),
        (absolute, "coat"),                       # absolute path
        ("png/x.jpg", "coat"),                    # a folder
        ("broken/zero.jpg", "coat"),
        ("日本語 画像/café crème.jpg", "外套"),
    ]
    text = "path,label\n" + "".join(f'"{p}","{lab}"\n' for p, lab in lines)
    (root / "manifest.csv").write_text(text, encoding="utf-8")
    c.manifests["manifest.csv"] = [
        Case("manifest_row", "jpeg/baseline.jpg", VALID, "shoe"),
        Case("manifest_missing_file", "jpeg/not there.jpg", MISSING, "shoe"),
        Case("manifest_empty_label", "png/rgb.png", VALID, None),
        Case("manifest_blank_label", "png/gray.png", VALID, None),
        Case("manifest_duplicate_row", "web images/lossy.webp", VALID, "bag"),
        Case("manifest_duplicate_conflicting_labels", "bmp/24bit.bmp", VALID, None),
        Case("manifest_absolute_path", absolute, VALID, "coat"),
        Case("manifest_row_is_a_folder", "png/x.jpg", UNREADABLE, "coat"),
        Case("manifest_zero_bytes", "broken/zero.jpg", EMPTY, "coat"),
        Case("manifest_non_ascii", "日本語 画像/café crème.jpg", VALID, "外套"),
    ]
    c.manifest_errors["manifest.csv"] = {
        "web images/lossy.webp": "listed 2 times (rows 5, 6)",
        "bmp/24bit.bmp": "listed 2 times (rows 7, 8) with different labels ('bag', 'coat'): no label",
    }
    # non-string labels: integers (with a null), and floats as pandas writes an
    # integer column with a gap (NaN)
    paths = ["jpeg/baseline.jpg", "png/rgb.png", "png/gray.png"]
    pq.write_table(pa.table({"path": paths, "label": pa.array([3, None, 7], pa.int64())}),
                   root / "labels_int.parquet")
    pq.write_table(pa.table({"path": paths, "label": pa.array([3.0, float("nan"), 7.0])}),
                   root / "labels_float.parquet")
    for name in ("labels_int.parquet", "labels_float.parquet"):
        c.manifests[name] = [Case("manifest_non_string_label", "jpeg/baseline.jpg", VALID, "3"),
                             Case("manifest_null_label", "png/rgb.png", VALID, None),
                             Case("manifest_non_string_label", "png/gray.png", VALID, "7")]
    c.skipped_non_images += 3          # the three manifests, in the ImageFolder run


def table(c: Corpus) -> list[tuple[str, str, str]]:
    """(kind, rel_path, expected outcome) of every row, for printing."""
    return [(x.kind, x.rel, x.expected or "valid") for x in c.cases]


if __name__ == "__main__":
    corpus = build_corpus(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    for kind, rel, exp in table(corpus):
        print(f"{kind:40s} {exp:20s} {rel}")
    print(f"{len(corpus.cases)} rows, {len({x.kind for x in corpus.cases})} kinds")
