"""Real images, and datasets with planted defects whose ground truth is known.

:func:`load_digits_images` (scikit-learn's 1,797 8x8 digits) and
:func:`load_fashion_mnist` (the IDX files of the Debian package
``dataset-fashion-mnist``) give real images; :func:`plant_dataset` writes them
as an ImageFolder tree of PNGs, plants duplicates (byte copies, cross-class
copies, lossless re-encodes, near duplicates) and invalid files, and returns a
:class:`GroundTruth`.  Duplicates already present among the originals are found
by exact pixel comparison and recorded, so precision measured against the
truth is honest.  Used by the tests, the demo and the benchmarks; Pillow (a
dev/test dependency) encodes.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from gpupipe import transforms as _transforms

__all__ = [
    "COPY_KINDS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DEBIAN_PACKAGE", "GroundTruth",
    "INVALID_KINDS", "NEAR_KINDS", "PlantedItem", "REENCODE_KINDS", "flip_labels", "load_digits_images",
    "load_fashion_mnist", "plant_dataset", "imagefolder_samples", "write_webdataset", "write_parquet_images", "add_tar_member",
]

#: Fashion-MNIST label names, folder-safe ("T-shirt/top" -> "tshirt_top"), index = label.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
COPY_KINDS: tuple[str, ...] = ("byte_copy", "cross_split_copy", "cross_class_copy")
REENCODE_KINDS: tuple[str, ...] = ("bmp", "tiff", "webp_lossless", "png_text")
#: Near-duplicate kinds planted: one definition with the per-run probe (`gpupipe.transforms`).
NEAR_KINDS: tuple[str, ...] = _transforms.NEAR_KINDS + _transforms.EXTRA_KINDS
INVALID_KINDS: tuple[str, ...] = (
    "empty", "truncated", "not_an_image", "undecodable", "absurd_dimensions", "unsupported_format",
)
Category = Literal["copy", "reencode", "near", "invalid"]
Level = Literal["bytes", "pixels", "near"]
_LEVEL_CATEGORIES: dict[str, tuple[str, ...]] = {
    "bytes": ("copy",), "pixels": ("copy", "reencode"), "near": ("copy", "reencode", "near"),
}
_EXT = {"bmp": "bmp", "tiff": "tiff", "webp_lossless": "webp", "jpeg_q60": "jpg", "jpeg_q75": "jpg",
        "unsupported_format": "gif"}


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``images uint8 (1797, 8, 8)`` in 0..255, ``labels int64 (1797,)`` 0..9.

    The 0..16 intensities are scaled by 255/16 and rounded.
    """
    from sklearn.datasets import load_digits  # dev dependency: imported on use

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, d.target.astype(np.int64)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    got, = struct.unpack_from(">I", raw, 0)
    if got != magic:
        raise ValueError(f"{path}: IDX magic {got:#x}, expected {magic:#x}")
    ndim = magic & 0xFF
    dims = struct.unpack_from(f">{ndim}I", raw, 4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(
    root: str | Path = "/usr/share/datasets/fashion-mnist",
    *,
    split: Literal["train", "test", "all"] = "train",
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from its IDX files (``*-idx3-ubyte`` / ``*-idx1-ubyte``, gzipped or not).

    Returns ``images uint8 (N, 28, 28)`` and ``labels int64 (N,)`` in 0..9
    (names: :data:`FASHION_MNIST_CLASSES`); N = 60,000 (train), 10,000 (test)
    or 70,000 (all: train then test).  Raises ``FileNotFoundError`` naming the
    Debian package when the files are missing.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    root = Path(root)
    arrays: dict[str, list[np.ndarray]] = {"images": [], "labels": []}
    for part in {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]:
        for what, magic in (("images", 0x803), ("labels", 0x801)):
            stem = f"{part}-{what}-idx{magic & 0xFF}-ubyte"
            path = next((p for p in (root / f"{stem}.gz", root / stem) if p.is_file()), None)
            if path is None:
                raise FileNotFoundError(
                    f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install the Debian "
                    f"package: `apt-get install {FASHION_MNIST_DEBIAN_PACKAGE}` (files land in "
                    "/usr/share/datasets/fashion-mnist), or pass root= to a folder holding them."
                )
            arrays[what].append(_read_idx(path, magic))
        if len(arrays["images"][-1]) != len(arrays["labels"][-1]):
            raise ValueError(f"{root}: {part} has unequal numbers of images and labels")
    return np.concatenate(arrays["images"]), np.concatenate(arrays["labels"]).astype(np.int64)


def flip_labels(
    labels: np.ndarray, *, rate: float, mode: Literal["symmetric", "pair"] = "symmetric",
    n_classes: int | None = None, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Plant label noise: ``labels int (N,)`` -> (noisy labels, flipped bool (N,)).

    Exactly ``round(rate * N)`` samples, chosen at random, get a wrong label:
    ``symmetric``: uniformly one of the other classes; ``pair``: class k becomes
    class (k + 1) mod K (the class-pair flips of the label-noise literature).
    """
    labels = np.asarray(labels, np.int64)
    if not 0 <= rate <= 1:
        raise ValueError("rate must be in 0..1")
    if mode not in ("symmetric", "pair"):
        raise ValueError(f"mode must be 'symmetric' or 'pair', got {mode!r}")
    k = int(n_classes if n_classes is not None else labels.max() + 1)
    if k < 2:
        raise ValueError("flipping labels needs at least two classes")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(labels), int(round(rate * len(labels))), replace=False)
    noisy = labels.copy()
    step = rng.integers(1, k, len(pick)) if mode == "symmetric" else np.ones(len(pick), np.int64)
    noisy[pick] = (labels[pick] + step) % k
    flipped = np.zeros(len(labels), bool)
    flipped[pick] = True
    return noisy, flipped


@dataclass(frozen=True)
class PlantedItem:
    """One planted file.  ``path``: relative POSIX path under the tree's root.
    ``category``: copy | reencode | near | invalid; ``kind``: one of COPY_KINDS,
    REENCODE_KINDS, NEAR_KINDS or INVALID_KINDS.  ``source``: relative path of the
    original it duplicates (``None`` for invalid files)."""

    path: str
    category: Category
    kind: str
    source: str | None


@dataclass
class GroundTruth:
    """What :func:`plant_dataset` wrote.  Paths are relative POSIX paths under its ``out_dir``.

    ``originals``: path -> label index for every original image.
    ``preexisting_groups``: sorted path lists of originals with identical pixels
    (possibly across classes: label conflicts already in the raw data).
    """

    class_names: list[str]
    splits: list[str] | None
    originals: dict[str, int]
    items: list[PlantedItem]
    preexisting_groups: list[list[str]]
    params: dict[str, object] = field(default_factory=dict)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, path: str | Path) -> GroundTruth:
        d = json.loads(Path(path).read_text())
        d["items"] = [PlantedItem(**it) for it in d["items"]]
        return cls(**d)

    def expected_groups(self, level: Level = "near") -> list[frozenset[str]]:
        """Sets of paths that a deduplicator must put in one group, at ``level``:

        ``"bytes"``: identical file bytes (copies + pre-existing identical originals,
        which encode to identical PNGs); ``"pixels"``: identical decoded pixels
        (adds lossless re-encodes); ``"near"``: adds near duplicates.  Linked
        groups are merged (a near dup of a pre-existing duplicate joins that group).
        Sorted by smallest path; every set has >= 2 members.
        """
        if level not in _LEVEL_CATEGORIES:
            raise ValueError(f"level must be one of {list(_LEVEL_CATEGORIES)}, got {level!r}")
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def union(a: str, b: str) -> None:
            parent[find(a)] = find(b)

        for group in self.preexisting_groups:
            for p in group[1:]:
                union(group[0], p)
        for it in self.items:
            if it.category in _LEVEL_CATEGORIES[level] and it.source is not None:
                union(it.path, it.source)
        comps: dict[str, set[str]] = {}
        for p in parent:
            comps.setdefault(find(p), set()).add(p)
        return sorted((frozenset(c) for c in comps.values() if len(c) > 1), key=min)

    def invalid_paths(self) -> dict[str, str]:
        """Path -> invalid kind (one of INVALID_KINDS) for every planted invalid file."""
        return {it.path: it.kind for it in self.items if it.category == "invalid"}

    @staticmethod
    def class_of(path: str) -> str:
        """Class folder name of a relative path (``[split/]class/name``)."""
        return path.rsplit("/", 2)[-2]


# --------------------------------------------------------------------------- encoding helpers
def _pil():  # noqa: ANN202 -- Pillow is a dev/test dependency: imported on first use
    from PIL import Image

    return Image


def _encode(pixels: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    _pil().fromarray(pixels).save(buf, fmt, **kw)
    return buf.getvalue()


def _upscale(img: np.ndarray, k: int, method: str) -> np.ndarray:
    if k == 1 or method == "nearest":
        return img.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else img
    return _transforms.resize(img, img.shape[1] * k, img.shape[0] * k)


def _raw_png(w: int, h: int, idat: bytes) -> bytes:
    """A grayscale 8-bit PNG with the given IHDR size and IDAT payload (CRCs correct)."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _near(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """Encoded bytes and decoded pixels of a near duplicate of ``img`` (`gpupipe.transforms`)."""
    data, out = _transforms.near_copy(img, kind, rng)
    if out is None:                 # JPEG: its pixels are what a decoder makes of it
        out = np.asarray(_pil().open(io.BytesIO(data)))
    return data, out


def _reencode(img: np.ndarray, kind: str) -> bytes:
    if kind == "png_text":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Comment", "re-encoded by gpupipe.datasets")
        return _encode(img, "PNG", pnginfo=info, compress_level=9)
    if kind == "webp_lossless":  # WebP has no grayscale: store RGB (decodes to R=G=B)
        rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
        return _encode(rgb, "WEBP", lossless=True, quality=100, method=4)
    return _encode(img, {"bmp": "BMP", "tiff": "TIFF"}[kind])


def _invalid(kind: str, img: np.ndarray, j: int, rng: np.random.Generator) -> bytes:
    if kind == "empty":
        return b""
    if kind == "truncated":
        png = _encode(img, "PNG")
        return png[: len(png) // 2]
    if kind == "not_an_image":
        return f"This is not an image (planted file #{j}).\n".encode() * 4
    if kind == "undecodable":  # zlib header byte 0x00 is never valid: inflate must fail
        h, w = img.shape[:2]
        return _raw_png(w, h, b"\x00" + rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    if kind == "absurd_dimensions":
        return _raw_png(100_000, 100_000, zlib.compress(b"\x00" * 8))
    if kind == "unsupported_format":
        return _encode(img, "GIF")
    raise ValueError(f"unknown invalid kind {kind!r}")


def _counts(n: int | dict[str, int], kinds: tuple[str, ...], what: str) -> list[str]:
    """Expand a count into a kind per planted file: an int is spread round-robin over ``kinds``."""
    if isinstance(n, dict):
        bad = set(n) - set(kinds)
        if bad:
            raise ValueError(f"{what}: unknown kinds {sorted(bad)}; valid: {list(kinds)}")
        return [k for k in kinds for _ in range(int(n.get(k, 0)))]
    return [kinds[i % len(kinds)] for i in range(int(n))]


def _preexisting(images: np.ndarray) -> list[np.ndarray]:
    """Index arrays of originals with identical pixels (exact: rows compared as bytes)."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    rows = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    dup = np.flatnonzero(counts[inverse.ravel()] > 1)
    order = dup[np.argsort(inverse.ravel()[dup], kind="stable")]
    return np.split(order, np.flatnonzero(np.diff(inverse.ravel()[order])) + 1) if len(order) else []


def _assign_splits(labels: np.ndarray, fractions: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Stratified split index per sample (int64 (N,)), in the order of ``fractions``."""
    cuts = np.cumsum(list(fractions.values()), dtype=np.float64)
    out = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out[idx] = np.searchsorted(np.rint(cuts / cuts[-1] * len(idx)), np.arange(len(idx)), side="right")
    return out


def _validate(images: np.ndarray, labels: np.ndarray, names: list[str], fractions: dict[str, float] | None,
              upscale: int, method: str) -> None:
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.ndim == 4 and images.shape[3] != 3:
        raise ValueError(f"images must be uint8 (N,H,W) or (N,H,W,3), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(f"labels must be non-negative integers of shape ({len(images)},), got {labels.shape}")
    if len(names) <= labels.max() or any(not c or "/" in c or "\\" in c or c in (".", "..") for c in names):
        raise ValueError(f"class_names must be {labels.max() + 1} folder-safe names, got {names}")
    if upscale < 1 or method not in ("nearest", "bicubic"):
        raise ValueError("upscale must be >= 1 and upscale_method 'nearest' or 'bicubic'")
    if fractions and (min(fractions.values()) <= 0 or abs(sum(fractions.values()) - 1) > 1e-6):
        raise ValueError(f"split_fractions must be positive and sum to 1, got {fractions}")


def plant_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path,
    *,
    class_names: list[str] | tuple[str, ...] | None = None,
    seed: int = 0,
    upscale: int = 1,
    upscale_method: Literal["nearest", "bicubic"] = "bicubic",
    n_byte_copies: int = 0,
    n_cross_class_copies: int = 0,
    n_reencodes: int | dict[str, int] = 0,
    n_near: int | dict[str, int] = 0,
    n_corrupt: int | dict[str, int] = 0,
    split_fractions: dict[str, float] | None = None,
    workers: int = 2,
) -> GroundTruth:
    """Write an ImageFolder tree of PNGs with planted duplicates and invalid files.

    ``images``: ``uint8 (N, H, W)`` or ``(N, H, W, 3)``; ``labels``: integers ``(N,)`` in
    ``0..K-1``.  Tree: ``out_dir/<class>/img_<i>.png``, or ``out_dir/<split>/<class>/...``
    with ``split_fractions`` (e.g. ``{"train": 0.8, "val": 0.1, "test": 0.1}``, stratified).
    ``class_names``: folder per label (default: the label as a string).  ``upscale``: integer
    factor for every original (8x8 digits -> 32x32 makes near-duplicate transforms meaningful).
    ``n_byte_copies``: same bytes, new name, same class; with splits every second one goes
    to another split (``cross_split_copy``: leakage).  ``n_cross_class_copies``: same bytes
    in another class (label conflict).  ``n_reencodes`` / ``n_near`` / ``n_corrupt``: an int
    is a *total* spread round-robin over REENCODE_KINDS / NEAR_KINDS / INVALID_KINDS; a dict
    gives a count per kind.  ``workers``: threads writing the originals.

    Every duplicate has its own source original (N must exceed their number); near
    duplicates are never pixel-identical to their source; planted files are named like
    originals (``img_<n>.<ext>``).  Every random choice derives from ``seed``: equal
    arguments give byte-identical trees and equal ground truths.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    n_classes = int(labels.max()) + 1 if labels.size else 0
    names = [str(k) for k in range(n_classes)] if class_names is None else [str(c) for c in class_names]
    _validate(images, labels, names, split_fractions, upscale, upscale_method)
    splits = list(split_fractions) if split_fractions else None
    n_splits = len(splits) if splits else 1
    plan: list[tuple[str, str]] = [  # (category, kind) of each duplicate, in planting order
        *(("copy", "cross_split_copy" if n_splits > 1 and j % 2 else "byte_copy") for j in range(n_byte_copies)),
        *(("copy", "cross_class_copy") for _ in range(n_cross_class_copies)),
        *(("reencode", k) for k in _counts(n_reencodes, REENCODE_KINDS, "n_reencodes")),
        *(("near", k) for k in _counts(n_near, NEAR_KINDS, "n_near")),
    ]
    invalid_kinds = _counts(n_corrupt, INVALID_KINDS, "n_corrupt")
    if len(plan) >= len(images):
        raise ValueError(f"{len(plan)} duplicates need distinct sources; only {len(images)} images")
    if n_cross_class_copies and n_classes < 2:
        raise ValueError("cross-class copies need at least two classes")

    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    split_of = _assign_splits(labels, split_fractions, rng) if split_fractions else np.zeros(len(labels), np.int64)

    def folder(split: int, label: int) -> str:
        return f"{splits[split]}/{names[label]}" if splits else names[label]

    def pixels(i: int) -> np.ndarray:
        return _upscale(images[i], upscale, upscale_method)

    orig = [f"{folder(s, y)}/img_{i:06d}.png" for i, (s, y) in enumerate(zip(split_of.tolist(), labels.tolist()))]
    for d in {folder(s, y) for s in range(n_splits) for y in range(n_classes)}:
        (root / d).mkdir(parents=True, exist_ok=True)

    def write_chunk(idx: np.ndarray) -> None:
        for i in idx.tolist():
            (root / orig[i]).write_bytes(_encode(pixels(i), "PNG"))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(write_chunk, np.array_split(np.arange(len(images)), max(1, len(images) // 512))))

    # Planted files: every random choice is drawn here, in a fixed order.
    sources = iter(rng.permutation(len(images)).tolist())
    items: list[PlantedItem] = []

    def plant(split: int, label: int, data: bytes, category: str, kind: str, source: str | None) -> None:
        path = f"{folder(split, label)}/img_{len(images) + len(items):06d}.{_EXT.get(kind, 'png')}"
        (root / path).write_bytes(data)
        items.append(PlantedItem(path, category, kind, source))

    for category, kind in plan:
        for i in sources:  # near: skip sources the transform leaves unchanged (e.g. flat images)
            s, y, src = int(split_of[i]), int(labels[i]), pixels(i)
            if category == "copy":
                data = _encode(src, "PNG")
                if kind == "cross_split_copy":
                    s = (s + int(rng.integers(1, n_splits))) % n_splits
                elif kind == "cross_class_copy":
                    y = (y + int(rng.integers(1, n_classes))) % n_classes
            elif category == "reencode":
                data = _reencode(src, kind)
            else:
                data, out = _near(src, kind, rng)
                if out.shape == src.shape and np.array_equal(out, src):
                    continue
            plant(s, y, data, category, kind, orig[i])
            break
        else:
            raise ValueError("ran out of distinct source images for planting")
    for j, kind in enumerate(invalid_kinds):
        donor = pixels(int(rng.integers(len(images))))  # content only; not a duplicate
        s, y = int(rng.integers(n_splits)), int(rng.integers(n_classes))
        plant(s, y, _invalid(kind, donor, j, rng), "invalid", kind, None)

    return GroundTruth(
        class_names=names, splits=splits, originals=dict(zip(orig, labels.tolist())), items=items,
        preexisting_groups=sorted(sorted(orig[i] for i in g) for g in _preexisting(images)),
        params={"seed": seed, "upscale": upscale, "upscale_method": upscale_method,
                "n_originals": len(images), "split_fractions": split_fractions},
    )


# --- the same samples as WebDataset shards or Parquet files ------------------------------
def plant_no_class_images(root: str | Path, digits: np.ndarray, *, count: int = 60, seed: int = 7
                          ) -> dict[str, str]:
    """Write ``count`` images of no class among an ImageFolder of 32x32 digits
    (folders 0-9), what a person removes as "not a valid image of any class":
    in turn a Fashion-MNIST test image, a blank scan (a flat grey level with
    scanner noise), random noise, and a heavy crop (a 3x3 corner of one of
    ``digits``, uint8 (N, 8, 8) or (N, 8, 8, 3), blown up), each gray, under a
    random digit folder.  -> {rel_path: kind} (kinds "fashion", "blank",
    "noise", "crop").  Seeded; tests/test_outlier.py's planted set."""
    Image = _pil()
    rng = np.random.default_rng(seed)
    fashion, _ = load_fashion_mnist(split="test")
    out = {}
    for i in range(count):
        kind = ("fashion", "blank", "noise", "crop")[i % 4]
        if kind == "fashion":
            img = np.asarray(Image.fromarray(fashion[rng.integers(len(fashion))]).resize((32, 32), Image.BICUBIC))
        elif kind == "blank":
            img = np.clip(rng.integers(20, 235) + rng.normal(0, 3, (32, 32)), 0, 255)
        elif kind == "noise":
            img = rng.integers(0, 256, (32, 32))
        else:
            d = digits[rng.integers(len(digits))]
            d = d.mean(axis=-1).astype(np.uint8) if d.ndim == 3 else d
            y, x = rng.integers(0, 5, 2)
            img = np.asarray(Image.fromarray(d[y:y + 3, x:x + 3]).resize((32, 32), Image.BICUBIC))
        rel = f"{rng.integers(10)}/outlier_{kind}_{i:03d}.png"
        Image.fromarray(np.asarray(img, np.uint8)).save(Path(root) / rel)
        out[rel] = kind
    return out


def imagefolder_samples(root: str | Path) -> list[tuple[str, str | None, str, bytes]]:
    """Every image of an ImageFolder tree (``root/[split/]label/file``) in sorted
    order as (split or None, label, file name, bytes), for rewriting it as shards."""
    root = Path(root)
    out = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        parts = p.relative_to(root).parts
        split = parts[0] if len(parts) == 3 else None
        out.append((split, parts[-2], parts[-1], p.read_bytes()))
    return out


def _by_split(samples, default: str, out_dir: str | Path) -> list[tuple[str, list]]:
    """(split, [(label, name, bytes), ...]) per split of (split, label, name, bytes)
    samples, in split order, a split of None named ``default``; makes ``out_dir``."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list] = {}
    for split, label, name, data in samples:
        by_split.setdefault(split or default, []).append((label, name, data))
    return sorted(by_split.items())


def add_tar_member(tf, name: str, data: bytes) -> None:
    """Add a regular file ``name`` holding ``data`` to the open tarfile ``tf`` (mtime 0)."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tf.addfile(info, io.BytesIO(data))


def write_webdataset(samples, out_dir: str | Path, *, shard_size: int = 1000,
                     label_ext: str = "cls") -> list[Path]:
    """Write (split, label, name, bytes) samples as WebDataset tar shards
    ``out_dir/<split or data>-NNNNNN.tar``: member ``KEY.<ext>`` with the
    bytes (KEY = the name's stem, ext its extension) and ``KEY.<label_ext>``
    holding the label (skipped when the label is None).  Returns the shards."""
    import tarfile

    shards = []
    for split, items in _by_split(samples, "data", out_dir):
        for k in range(0, len(items), shard_size):
            path = Path(out_dir) / f"{split}-{k // shard_size:06d}.tar"
            with tarfile.open(path, "w") as tf:
                for label, name, data in items[k:k + shard_size]:
                    stem, _, ext = name.partition(".")
                    members = [(f"{stem}.{ext}", data)]
                    if label is not None:
                        members.append((f"{stem}.{label_ext}", str(label).encode()))
                    for member, payload in members:
                        add_tar_member(tf, member, payload)
            shards.append(path)
    return shards


def write_parquet_images(samples, out_dir: str | Path, *, class_names: list[str] | None = None,
                         row_group_size: int = 256) -> list[Path]:
    """Write (split, label, name, bytes) samples as Parquet files the way
    Hugging Face datasets does: ``out_dir/<split or train>-00000-of-00001.parquet``
    with ``image: struct<bytes: binary, path: string>`` and ``label: int64``
    (ClassLabel names in the ``huggingface`` schema metadata) when
    ``class_names`` is given, else ``label: string``.  Rows keep the given order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = []
    for split, items in _by_split(samples, "train", out_dir):
        image = pa.StructArray.from_arrays(
            [pa.array([d for _, _, d in items], pa.binary()), pa.array([n for _, n, _ in items], pa.string())],
            names=["bytes", "path"])
        if class_names is not None:
            labels = pa.array([None if lab is None else class_names.index(lab) for lab, _, _ in items], pa.int64())
            meta = {"huggingface": json.dumps({"info": {"features": {
                "image": {"_type": "Image"}, "label": {"names": list(class_names), "_type": "ClassLabel"}}}})}
        else:
            labels = pa.array([lab for lab, _, _ in items], pa.string())
            meta = None
        table = pa.table({"image": image, "label": labels}).replace_schema_metadata(meta)
        path = Path(out_dir) / f"{split}-00000-of-00001.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        files.append(path)
    return files
