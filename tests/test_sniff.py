"""gpupipe.io.sniff: formats and sizes of real encoded digits, every invalid reason,
a fuzz that it never raises, and that everything it accepts DALI (CPU) decodes."""

from __future__ import annotations

import io
import random
import struct
import timeit
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from gpupipe.datasets import INVALID_KINDS, load_digits_images, plant_dataset
from gpupipe.io import sniff as sniff_mod
from gpupipe.io.sniff import REASONS, Sniff, sniff

W, H = 32, 24  # non-square, so a width/height swap is caught
_EXIF = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00"


def _enc(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def digit() -> Image.Image:
    images, _ = load_digits_images()
    return Image.fromarray(images[3]).resize((W, H), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def files(digit: Image.Image) -> dict[str, tuple[str, bytes]]:
    """name -> (expected format, bytes): one real digit in many encodings."""
    rgb, g16 = digit.convert("RGB"), np.asarray(digit).astype(np.uint16) * 257
    return {
        "png_L": ("png", _enc(digit, "PNG")),
        "png_RGBA": ("png", _enc(digit.convert("RGBA"), "PNG")),
        "png_P": ("png", _enc(digit.convert("P"), "PNG")),
        "png_16bit": ("png", _enc(Image.frombytes("I;16", (W, H), g16.astype("<u2").tobytes()), "PNG")),
        "jpeg": ("jpeg", _enc(digit, "JPEG", quality=75)),
        "jpeg_progressive": ("jpeg", _enc(rgb, "JPEG", progressive=True, quality=90)),
        "jpeg_exif": ("jpeg", _enc(rgb, "JPEG", exif=Image.Exif().tobytes() + b"\xff\xd9" * 8)),
        "jpeg_cmyk": ("jpeg", _enc(digit.convert("CMYK"), "JPEG")),
        "bmp_L": ("bmp", _enc(digit, "BMP")),
        "bmp_RGB": ("bmp", _enc(rgb, "BMP")),
        "bmp_1bit": ("bmp", _enc(digit.convert("1"), "BMP")),
        "tiff": ("tiff", _enc(digit, "TIFF")),
        "tiff_lzw": ("tiff", _enc(rgb, "TIFF", compression="tiff_lzw")),
        "tiff_big_endian": ("tiff", _enc(Image.frombytes("I;16B", (W, H), g16.astype(">u2").tobytes()), "TIFF")),
        "bigtiff": ("tiff", _enc(digit, "TIFF", big_tiff=True)),
        "webp_lossless": ("webp", _enc(rgb, "WEBP", lossless=True)),
        "webp_lossy": ("webp", _enc(rgb, "WEBP", quality=80)),
        "webp_vp8x": ("webp", _enc(digit.convert("RGBA"), "WEBP", lossless=True, icc_profile=b"abcd")),
    }


class DaliCpuDecoder:
    """Decodes one encoded file at a time with DALI's CPU decoder (``device_id=None``)."""

    def __init__(self) -> None:
        dali = pytest.importorskip("nvidia.dali")
        self._fn, self._types, self._pipeline_def = dali.fn, dali.types, dali.pipeline_def
        self._feed: list[np.ndarray] = []
        self._pipe = self._build()

    def _build(self):  # noqa: ANN202
        fn, types = self._fn, self._types

        @self._pipeline_def(batch_size=1, num_threads=1, device_id=None, exec_async=False,
                            exec_pipelined=False, prefetch_queue_depth=1)
        def pipe():  # noqa: ANN202
            enc = fn.external_source(source=lambda: list(self._feed), batch=True, dtype=types.UINT8)
            return fn.decoders.image(enc, device="cpu", output_type=types.RGB)

        p = pipe()
        p.build()
        return p

    def __call__(self, data: bytes) -> np.ndarray | None:
        """``uint8 (H, W, 3)`` pixels, or ``None`` when DALI fails on the file."""
        self._feed[:] = [np.frombuffer(data, np.uint8)]
        try:
            (out,) = self._pipe.run()
        except RuntimeError:
            self._pipe = self._build()  # a failed run leaves the pipeline unusable
            return None
        return np.asarray(out[0])


@pytest.fixture(scope="module")
def dali_decode() -> Callable[[bytes], np.ndarray | None]:
    return DaliCpuDecoder()


def test_real_digits_give_format_and_size(files: dict[str, tuple[str, bytes]]) -> None:
    for name, (fmt, data) in files.items():
        assert sniff(data) == Sniff(fmt, W, H, None), name
        assert sniff(memoryview(np.frombuffer(data, np.uint8))) == sniff(data), name
        assert sniff(bytearray(data)) == sniff(data), name


def test_gif_is_recognised_but_unsupported(digit: Image.Image) -> None:
    assert sniff(_enc(digit, "GIF")) == Sniff("gif", W, H, "unsupported_format")


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    """An ISO-BMFF file's start: the ftyp box (major brand, minor version, compatible brands), then more."""
    body = major + b"\0\0\0\0" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\0\0\0\x10meta" + b"\0" * 60


def test_animated_webp_heic_and_avif_are_recognised_but_unsupported(digit: Image.Image, dali_decode) -> None:  # noqa: ANN001
    """Only still images are taken (DALI would decode an animated WebP's first
    frame: a policy, not a limit); HEIC/HEIF and AVIF are known by their ftyp
    box's brands, and DALI decodes neither."""
    rgb = digit.convert("RGB")
    anim = _enc(rgb, "WEBP", save_all=True, append_images=[rgb.transpose(Image.Transpose.ROTATE_180)], duration=50)
    assert sniff(anim) == Sniff("webp", W, H, "unsupported_format")
    avif = _enc(rgb, "AVIF")
    assert sniff(avif) == Sniff("avif", None, None, "unsupported_format") and dali_decode(avif) is None
    assert sniff(_ftyp(b"heic", b"mif1", b"heic")) == Sniff("heic", None, None, "unsupported_format")
    assert sniff(_ftyp(b"mif1", b"mif1", b"avif")).format == "avif"
    assert sniff(_ftyp(b"mif1", b"mif1")).format == "heif"
    assert sniff(_ftyp(b"isom", b"isom", b"mp42")) == Sniff(None, None, None, "not_an_image")   # an MP4 video


def test_planted_invalid_files_get_their_reason(tmp_path) -> None:  # noqa: ANN001
    images, labels = load_digits_images()
    gt = plant_dataset(images[:60], labels[:60], tmp_path, upscale=4, n_corrupt={k: 2 for k in INVALID_KINDS})
    # "undecodable" has a sane header and IEND: only decoding can tell (checked below with DALI).
    expected = {k: (None if k == "undecodable" else k) for k in INVALID_KINDS}
    for path, kind in gt.invalid_paths().items():
        assert sniff((tmp_path / path).read_bytes()).invalid_reason == expected[kind], (path, kind)
    assert set(expected.values()) - {None} <= set(REASONS)


def _png(w: int, h: int, *, iend: bool = True) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 9))
    return b"\x89PNG\r\n\x1a\n" + body + (chunk(b"IEND", b"") if iend else b"")


def test_each_reason(files: dict[str, tuple[str, bytes]]) -> None:
    png, jpeg, bmp, tiff = (files[k][1] for k in ("png_L", "jpeg", "bmp_L", "tiff"))
    r = lambda data, **kw: sniff(data, **kw).invalid_reason  # noqa: E731
    assert r(b"") == "empty"
    assert r(b"hello, world" * 10) == r(b"\x00" * 100) == "not_an_image"
    assert r(png[:20]) == r(png[:-12]) == r(_png(4, 4, iend=False)) == "truncated"
    assert r(jpeg[:5]) == r(jpeg[:-2]) == r(jpeg[: len(jpeg) // 2]) == "truncated"
    assert r(jpeg + b"\x00" * 40) is None  # padding after EOI
    # bytes after EOI / IEND (a motion photo's video, maker data) leave the image valid
    trailer = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    assert r(jpeg + trailer) is None and r(png + trailer) is None
    sos = jpeg.index(b"\xff\xda")
    cut = jpeg[: sos + (len(jpeg) - sos) // 2]
    assert r(cut) == r(cut + b"\x00" * 5000) == "truncated"                # cut mid-scan (then padding)
    assert r(bmp[:-1]) == r(tiff[:-1]) == r(files["webp_lossless"][1][:-1]) == "truncated"
    assert r(_png(0, 4)) == r(png[:12] + b"IHDX" + png[16:]) == "bad_header"
    sof = jpeg.index(b"\xff\xc0")
    assert r(jpeg[: sof + 7] + b"\x00\x00" + jpeg[sof + 9:]) == "bad_header"  # width 0
    assert r(jpeg[: sof + 1] + b"\xc5" + jpeg[sof + 2:]) == "unsupported_format"  # hierarchical
    assert r(bmp[:18] + struct.pack("<i", 0) + bmp[22:]) == "bad_header"
    assert r(bmp[:22] + struct.pack("<i", -H) + bmp[26:]) is None  # top-down BMP
    assert r(_png(100_000, 100_000)) == r(_png(70_000, 1)) == "absurd_dimensions"
    assert r(png, max_pixels=W * H - 1) == r(png, min_side=H + 1) == "absurd_dimensions"
    assert r(png, max_pixels=W * H, min_side=H) is None


def _fuzz_inputs(files: dict[str, tuple[str, bytes]], seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    out = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80))) for _ in range(3000)]
    magics = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ",
              b"RIFF\0\0\0\0WEBPVP8L", b"RIFF\0\0\0\0WEBPVP8X", b"II*\0", b"MM\0*", b"II+\0",
              b"\0\0\0\x18ftyp", b"\xff\xff\xff\xffftypmif1"]
    out += [m + bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 60))) for m in magics for _ in range(300)]
    for _, data in files.values():
        for _ in range(150):  # a few random byte flips in a real file
            b = bytearray(data)
            for _ in range(rng.randrange(1, 6)):
                b[rng.randrange(len(b))] = rng.getrandbits(8)
            out.append(bytes(b))
    return out


def test_fuzz_never_raises(files: dict[str, tuple[str, bytes]]) -> None:
    inputs = _fuzz_inputs(files)
    for name in ("png_L", "jpeg", "jpeg_progressive"):  # every prefix of a real PNG / JPEG
        data = files[name][1]
        inputs += [data[:i] for i in range(len(data) + 1)]
    for data in inputs:
        s = sniff_mod._sniff(data, 178_956_970, 1)  # without the safety net
        assert s.invalid_reason is None or s.invalid_reason in REASONS


def test_accepted_files_decode_with_dali(files: dict[str, tuple[str, bytes]], dali_decode) -> None:  # noqa: ANN001
    accepted = 0
    for name, (_, data) in files.items():
        for i in range(len(data) + 1):  # every prefix: only the whole file may be accepted
            if sniff(data[:i]).invalid_reason is None:
                assert i == len(data), f"{name}: prefix {i}/{len(data)} accepted"
                out = dali_decode(data)
                assert out is not None and out.shape == (H, W, 3), name
                accepted += 1
    assert accepted == len(files)


def test_undecodable_png_passes_sniff_but_not_dali(tmp_path, dali_decode) -> None:  # noqa: ANN001
    images, labels = load_digits_images()
    gt = plant_dataset(images[:30], labels[:30], tmp_path, n_corrupt={"undecodable": 1})
    (path,) = gt.invalid_paths()
    data = (tmp_path / path).read_bytes()
    assert sniff(data) == Sniff("png", 8, 8, None)
    assert dali_decode(data) is None


def test_webp_exif_after_padded_chunk_is_unsupported(digit: Image.Image, dali_decode) -> None:  # noqa: ANN001
    """DALI's WebP parser ignores RIFF padding while looking for the EXIF chunk."""
    data = _enc(digit.convert("RGBA"), "WEBP", lossless=True, exif=_EXIF, icc_profile=b"abc")
    assert sniff(data) == Sniff("webp", W, H, "unsupported_format")
    assert dali_decode(data) is None


def test_sniff_is_cheap(files: dict[str, tuple[str, bytes]]) -> None:
    """A few microseconds per file; Pillow's header-only open is several times slower."""
    per_file = {}
    for name in ("png_L", "jpeg", "bmp_L", "tiff", "webp_lossless"):
        data = files[name][1]
        per_file[name] = min(timeit.repeat(lambda: sniff(data), number=2000, repeat=3)) / 2000 * 1e6
    pil = min(timeit.repeat(lambda: Image.open(io.BytesIO(files["png_L"][1])).size, number=300, repeat=3)) / 300 * 1e6
    print({k: f"{v:.1f} us" for k, v in per_file.items()}, f"Pillow open png: {pil:.1f} us")
    assert per_file["png_L"] < pil
    assert max(per_file.values()) < 100  # generous: shared CI machines are noisy
