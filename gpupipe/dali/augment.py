"""The DALI model-input pipeline: files -> decoded, resized, (augmented) float tensors.

One pipeline definition for CPU and GPU (`gpupipe.device.Device` decides the
decoder and the operator placement), used three ways:

* scoring: every file once, in order, resized to ``size x size`` and scaled to
  0..1, no augmentation;
* training: shuffled, with the method's augmentations (`AugmentConfig`);
* showing: an in-memory batch through the same augmentation graph, with the
  random parameters as extra outputs (tests and the augmentation grid).

Images are resized for the model in memory, never on disk.  Augmentations, in
order: a random resized crop and a horizontal flip (the photo set), rotation
and translation (one ``warp_affine``; areas moved in from outside repeat the
border pixel), contrast around each channel's mean (as Keras
``RandomContrast``) and brightness, saturation (colour images), then pen-stroke
black and white spots and dashed lines from `gpupipe.dali.strokes`.  Every random draw is seeded: the same seed
and the same inputs give the same batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from gpupipe.dali.decode import _DALI_ERROR, DaliMissing
from gpupipe.dali.strokes import StrokeMasks, StrokeSpec
from gpupipe.device import Device

if _DALI_ERROR is None:
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, pipeline_def, types

READER = "reader"


@dataclass(frozen=True)
class AugmentConfig:
    """The method's augmentations, each with its parameter (0 turns one off),
    and the photo set's (off in the method's set).

    rotation: angle uniform in +-``rotation`` of a full turn (0.05 -> +-18 degrees).
    contrast: factor uniform in [1 - contrast, 1 + contrast], around each channel's mean.
    translation: offset uniform in +-``translation`` of the side, per axis.
    strokes: how many black spots, white spots and dashed lines (0..max each).
    crop_area: random resized crop keeping ``crop_area``..1 of the area (aspect
        3/4..4/3), resized back to the side; 1: off.
    flip: a horizontal flip with probability 1/2.
    brightness / saturation: factors uniform in 1 +- each (saturation: colour
        images only).
    """

    rotation: float = 0.05
    contrast: float = 0.5
    translation: float = 0.2
    strokes: StrokeSpec = field(default_factory=StrokeSpec)
    crop_area: float = 1.0
    flip: bool = False
    brightness: float = 0.0
    saturation: float = 0.0

    @classmethod
    def light(cls) -> "AugmentConfig":
        """A milder set for models trained on most of the data (out-of-fold
        mode), where the method's heavy set, made for a 180-image seed set,
        costs accuracy: on Fashion-MNIST 10k out-of-fold, accuracy vs the given
        labels 0.717 (method) -> 0.765 (light), flag F1 0.63 -> 0.73."""
        return cls(rotation=0.02, contrast=0.2, translation=0.08,
                   strokes=StrokeSpec(black_spots=1, white_spots=1, dashed_lines=0))

    @classmethod
    def photo(cls) -> "AugmentConfig":
        """The standard set of photo classifiers, mild: random resized crop
        (80-100% of the area), horizontal flip, brightness, contrast and
        saturation +-0.2; no rotation, no strokes (a photo is not a page).
        `--augment auto` picks it for colour images.  On CIFAR-10N ``aggre``
        (choose part, one out-of-fold round, small-cnn on 2 cores) out-of-fold
        accuracy 0.641 against 0.589 with `light`; a heavier crop (50-100%,
        jitter 0.3) 0.532 in the same epochs (benchmarks/bench_cifar10n.py,
        RESULTS.md §19)."""
        return cls(rotation=0.0, contrast=0.2, translation=0.0,
                   strokes=StrokeSpec(black_spots=0, white_spots=0, dashed_lines=0),
                   crop_area=0.8, flip=True, brightness=0.2, saturation=0.2)

    @classmethod
    def contrastive(cls) -> "AugmentConfig":
        """Self-supervised pretraining's views (`gpupipe.models.pretrain`, SimCLR's
        recipe within what this graph has): random resized crop of 20-100% of
        the area, horizontal flip, brightness, contrast and saturation +-0.4 (no
        hue jitter nor random gray, which SimCLR adds)."""
        return cls(rotation=0.0, contrast=0.4, translation=0.0,
                   strokes=StrokeSpec(black_spots=0, white_spots=0, dashed_lines=0),
                   crop_area=0.2, flip=True, brightness=0.4, saturation=0.4)

    @classmethod
    def auto(cls, *, channels: int, mode: str) -> "AugmentConfig":
        """``--augment auto``: `photo` for colour images; for gray ones (digits,
        characters, documents) the method's set for a certified seed set and
        `light` out-of-fold."""
        if channels == 3:
            return cls.photo()
        return cls.light() if mode == "oof" else cls()

    def __post_init__(self):
        if not 0 < self.crop_area <= 1:
            raise ValueError("crop_area is a fraction of the area in (0, 1]")
        if not (0 <= self.brightness < 1 and 0 <= self.saturation < 1):
            raise ValueError("brightness and saturation must be in [0, 1)")
        if not 0 <= self.rotation <= 0.5:
            raise ValueError("rotation is a fraction of a full turn in 0..0.5")
        if not 0 <= self.contrast < 1:
            raise ValueError("contrast must be in [0, 1)")
        if not 0 <= self.translation <= 0.5:
            raise ValueError("translation is a fraction of the side in 0..0.5")


def _require_dali() -> None:
    if _DALI_ERROR is not None:
        raise DaliMissing("NVIDIA DALI is not installed: install gpupipe with one of the extras "
                          f"[cpu], [cuda12] or [cuda13]. Import error: {_DALI_ERROR}")


def _threads(n: int | None) -> int:
    return n or max(1, min(os.cpu_count() or 1, 4))


def _augment(img, cfg: AugmentConfig, *, size: int, batch_size: int, seed: int, gpu: bool, channels: int):
    """The augmentation graph over uint8 HWC ``size x size`` images.
    Returns (images uint8, mask, angle degrees, offset px (2,), contrast factor)."""
    if cfg.crop_area < 1:
        img = fn.random_resized_crop(img, size=[size, size], random_area=[cfg.crop_area, 1.0],
                                     random_aspect_ratio=[0.75, 4.0 / 3.0])
    if cfg.flip:
        img = fn.flip(img, horizontal=fn.random.coin_flip())
    if cfg.saturation > 0 and channels == 3:
        img = fn.hsv(img, saturation=_uniform(cfg.saturation, centre=1.0))
    half = size / 2.0
    angle = _uniform(360.0 * cfg.rotation, centre=0.0)
    offset = _uniform(cfg.translation * size, centre=0.0, shape=2)
    mt = fn.transforms.rotation(angle=angle, center=[half, half])
    mt = fn.transforms.translation(mt, offset=offset)
    img = fn.warp_affine(img, matrix=mt, inverse_map=False)    # no fill_value: border pixels repeat
    factor = _uniform(cfg.contrast, centre=1.0)
    mean = fn.reductions.mean(img, axes=(0, 1), keep_dims=True)
    img = mean + (factor.gpu() if gpu else factor) * (fn.cast(img, dtype=types.FLOAT) - mean)
    if cfg.brightness > 0:
        bright = _uniform(cfg.brightness, centre=1.0)
        img = img * (bright.gpu() if gpu else bright)
    img = fn.cast(dmath.clamp(img, 0.0, 255.0), dtype=types.UINT8)
    mask = fn.external_source(source=StrokeMasks(cfg.strokes, size=size, batch_size=batch_size, seed=seed),
                              batch=True, device="cpu", layout="HWC")
    m = mask.gpu() if gpu else mask
    img = fn.cast(img * (m == 0) + 255 * (m == 2), dtype=types.UINT8)
    return img, mask, angle, offset, factor


def _uniform(half_width: float, *, centre: float, shape: int | None = None):
    """Uniform in centre +- half_width per sample (exactly ``centre`` when the width is 0)."""
    kw = {} if shape is None else {"shape": shape}
    if half_width <= 0:
        return fn.random.uniform(values=[float(centre)], **kw)
    return fn.random.uniform(range=(centre - half_width, centre + half_width), **kw)


def _to_model(img):
    # HWC floats: `Epochs` hands them on as NCHW views with channels-last strides, the
    # models' layout (gpupipe.models.nets.MEMORY_FORMAT), so no transpose is made at all.
    return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="HWC", mean=[0.0], std=[255.0])


def file_pipeline(
    device: Device, files, rows: np.ndarray, *, size: int, channels: int,
    batch_size: int, augment: AugmentConfig | None = None, shuffle: bool = False, seed: int = 0,
    num_threads: int | None = None, as_uint8: bool = False,
):
    """`Epochs` over ``files``: batches of (x float (B, C, size, size) in 0..1, rows (B,)),
    ``rows[i]`` returned with ``files[i]``; shuffled anew each epoch when ``shuffle``.

    ``files``: paths of loose image files, or (path, locator) pairs
    (`gpupipe.io.sources`) for samples inside a tar shard or a Parquet file, or
    a `gpupipe.dali.decoded.DecodedRefs` (images decoded once at ``size``).
    Loose files go through DALI's file reader; samples inside shards through an
    ``external_source`` fed by `gpupipe.io.sources.read_many`, decoded ones
    through an ``external_source`` over their array, in the same graph.
    ``as_uint8``: x is the resized pixels, uint8 0..255 (no augmentation).
    """
    from gpupipe.dali.decoded import ArrayBatches, DecodedRefs

    _require_dali()
    gpu = device.decoder == "mixed"
    decoded = files if isinstance(files, DecodedRefs) else None
    if decoded is not None and (decoded.images.size, decoded.images.channels) != (size, channels):
        raise ValueError(f"decoded images are {decoded.images.size} px, {decoded.images.channels} channel(s); "
                         f"the pipeline wants {size} px, {channels}")
    rows = [int(r) for r in rows]
    locs: list[str | None] = [None] * len(files)
    if decoded is None:
        files = list(files)
        for i, f in enumerate(files):
            if isinstance(f, tuple):
                files[i], locs[i] = f
    if shuffle:  # exact epochs: a seeded permutation first, DALI reshuffles the whole list after each
        order = np.random.default_rng(seed).permutation(len(files))
        rows, locs = [rows[i] for i in order], [locs[i] for i in order]
        files = decoded.take(order) if decoded is not None else [files[i] for i in order]
    inside = any(loc is not None for loc in locs)

    @pipeline_def(batch_size=batch_size, num_threads=_threads(num_threads), device_id=device.dali_device_id,
                  seed=seed, prefetch_queue_depth=2)
    def _pipe():
        if decoded is not None:
            img, row = fn.external_source(source=ArrayBatches(files, rows, batch_size, shuffle, seed),
                                          num_outputs=2, batch=True, cycle="raise", layout=["HWC", ""],
                                          dtype=[types.UINT8, types.INT64])
            img = img.gpu() if gpu else img
        else:
            if inside:
                enc, row = fn.external_source(source=_ByteBatches(files, locs, rows, batch_size, shuffle, seed),
                                              num_outputs=2, batch=True, cycle="raise",
                                              dtype=[types.UINT8, types.INT64])
            else:
                enc, row = fn.readers.file(files=files, labels=rows, shuffle_after_epoch=shuffle, seed=seed,
                                           name=READER, pad_last_batch=True)
            img = fn.decoders.image(enc, device="mixed" if gpu else "cpu",
                                    output_type=types.GRAY if channels == 1 else types.RGB)
            img = fn.resize(img, size=[size, size], antialias=True, dtype=types.UINT8)
        if as_uint8:
            return img, row
        if augment is not None:
            img = _augment(img, augment, size=size, batch_size=batch_size, seed=seed + 1, gpu=gpu,
                           channels=channels)[0]
        return _to_model(img), row

    pipe = _pipe()
    pipe.build()
    return Epochs(pipe, reader=not inside and decoded is None)


class SeededBatches:
    """Base of the ``external_source`` feeds: full batches over ``n`` samples,
    the last one padded (with row -1, as the file reader's ``pad_last_batch``;
    `Epochs` drops them), StopIteration at each epoch's end, a seeded
    reshuffle after each epoch when ``shuffle``.  A subclass's ``batch(idx,
    pad)`` returns the outputs for the samples ``idx`` and ``pad`` padding."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self._epoch, self._order, self._pos = -1, np.arange(n), 0

    def __iter__(self):
        self._epoch += 1
        self._order = (np.random.default_rng([self.seed, self._epoch]).permutation(self.n)
                       if self.shuffle and self._epoch > 0 else np.arange(self.n))
        self._pos = 0
        return self

    def __next__(self):
        if self._pos >= len(self._order):
            raise StopIteration
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return self.batch(idx, self.batch_size - len(idx))

    def batch(self, idx: np.ndarray, pad: int):
        raise NotImplementedError


class _ByteBatches(SeededBatches):
    """Samples inside shards or Parquet files: batches of (encoded bytes, row)."""

    def __init__(self, files, locators, rows, batch_size: int, shuffle: bool, seed: int):
        super().__init__(len(files), batch_size, shuffle, seed)
        self.files, self.locators, self.rows = files, locators, rows

    def batch(self, idx: np.ndarray, pad: int):
        from gpupipe.io.sources import read_many

        idx = idx.tolist()
        data = read_many([self.files[i] for i in idx], [self.locators[i] for i in idx])
        for i, d in zip(idx, data):
            if isinstance(d, OSError):    # rows reach models only once the hash stage read them
                raise RuntimeError(f"cannot read {self.files[i]} ({self.locators[i]}): {d}")
        enc = [np.frombuffer(d, np.uint8) for d in data]
        rows = [np.array([self.rows[i]], np.int64) for i in idx]
        return enc + [enc[-1]] * pad, rows + [np.array([-1], np.int64)] * pad


class Epochs:
    """Iterate a `file_pipeline` epoch by epoch: each ``iter()`` is one epoch of
    (x torch tensor on the pipeline's device, rows int64 numpy).  One DALI
    iterator serves every epoch, so prefetching never shifts an epoch's start."""

    def __init__(self, pipe, *, reader: bool = True):
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        if reader:
            self._it = DALIGenericIterator(pipe, ["x", "row"], reader_name=READER,
                                           last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)
        else:     # an external source: the epoch ends at its StopIteration; padding rows are -1
            self._it = DALIGenericIterator(pipe, ["x", "row"], auto_reset=True)

    def __iter__(self) -> Iterator[tuple["object", np.ndarray]]:
        for batch in self._it:
            b = batch[0]
            x = b["x"].permute(0, 3, 1, 2)      # (B, H, W, C) -> (B, C, H, W), channels-last strides
            rows = b["row"].reshape(-1).cpu().numpy().astype(np.int64)
            if rows.size and rows[-1] < 0:
                keep = rows >= 0
                yield x[np.flatnonzero(keep)], rows[keep]
            else:
                yield x, rows


@dataclass
class Shown:
    """An augmented in-memory batch and the random parameters that made it."""

    images: np.ndarray      # uint8 (B, S, S, C)
    masks: np.ndarray       # uint8 (B, S, S): 0 none, 1 black, 2 white
    angles: np.ndarray      # float (B,) degrees
    offsets: np.ndarray     # float (B, 2) pixels (x, y)
    contrast: np.ndarray    # float (B,)


def show(device: Device, images: np.ndarray, augment: AugmentConfig, *, seed: int = 0) -> Shown:
    """Augment ``images uint8 (B, S, S, C)`` (square, already at model size) once."""
    _require_dali()
    images = np.ascontiguousarray(images)
    b, size = images.shape[0], images.shape[1]
    gpu = device.decoder == "mixed"

    @pipeline_def(batch_size=b, num_threads=_threads(None), device_id=device.dali_device_id, seed=seed,
                  exec_async=False, exec_pipelined=False)
    def _pipe():
        img = fn.external_source(name="images", layout="HWC", device="gpu" if gpu else "cpu")
        return _augment(img, augment, size=size, batch_size=b, seed=seed + 1, gpu=gpu, channels=images.shape[3])

    pipe = _pipe()
    pipe.build()
    pipe.feed_input("images", list(images))
    out = pipe.run()

    def host(t):
        t = t.as_cpu() if hasattr(t, "as_cpu") else t
        return np.array(t.as_tensor())

    img, mask, angle, offset, factor = (host(t) for t in out)
    return Shown(img, mask[..., 0], angle.reshape(b), offset.reshape(b, 2), factor.reshape(b))
