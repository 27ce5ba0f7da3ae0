"""The DALI decode pipeline: encoded bytes -> RGB pixels + 32x32 RGB and grayscale thumbs.

This package is the only place that imports ``nvidia.dali``.  The same
pipeline definition runs on the CPU (``device_id=None``, ``cpu`` decoder) or
the GPU (``mixed`` decoder, GPU resize); `gpupipe.device.Device` decides.

Bytes are fed through ``external_source`` (the hash stage has already read
them to hash them, so they are not read twice).  The pipeline runs
synchronously (not pipelined) so that a file that fails to decode is reported
with its own batch: DALI then invalidates the pipeline, so `Decoder` rebuilds
it and bisects that batch to tell the bad file(s) from the good ones.  Files
are screened by `gpupipe.io.sniff` first, so this slow path is rare, and
bisection keeps it short.

What the C decoders print on a bad file (libpng's ``libpng error: IDAT:
incorrect header check``, libjpeg's ``Corrupt JPEG data: ...``) goes to the
process's stderr, below Python; `quiet_decoders` catches it while a batch
decodes: a failing file's message joins its error, and the run's output is
gpupipe's own.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from gpupipe.device import Device

try:  # keep the import error for a clear message at setup() time
    from nvidia.dali import fn, pipeline_def, types

    _DALI_ERROR: Exception | None = None
except Exception as e:  # pragma: no cover - exercised only without DALI
    _DALI_ERROR = e

THUMB = 32
RAW = "raw"         # `Decoder._build`'s route for decoded pixels (`Decoder.thumbnails`)


class DaliMissing(RuntimeError):
    pass


def default_threads() -> int:
    """DALI threads when none are asked for: this process's cores, up to 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def dali_version() -> str | None:
    try:
        import nvidia.dali as dali

        return dali.__version__
    except Exception:
        return None


@dataclass
class Decoded:
    """One decoded batch, on the decode device.

    rgb_groups: list of (positions, images) where images is a (b, H, W, 3) uint8
        xp array of same-shape images and positions their indices in the batch.
    thumbs: (B_ok, 32, 32, 3) uint8 xp array, RGB (the near-duplicate check
        compares colour), for the positions in ``ok``.
    grays: (B_ok, 32, 32) uint8 xp array, the same thumbnails in grayscale (hash input).
    ok: positions (into the fed batch) that decoded.
    errors: position -> decoder message, for the ones that did not.
    """

    rgb_groups: list[tuple[np.ndarray, Any]]
    thumbs: Any
    grays: Any
    ok: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)


class Decoder:
    """Decode batches of encoded images with DALI on the resolved device.

    Heavy state (the DALI pipeline) is built in `setup`, not in the constructor.
    """

    def __init__(self, device: Device, *, batch_size: int = 256, num_threads: int | None = None):
        self.device = device
        self.batch_size = int(batch_size)
        self.num_threads = num_threads
        self._pipes: dict[Any, Any] = {}       # route (`_build`) -> its pipeline

    def setup(self) -> "Decoder":
        if _DALI_ERROR is not None:
            raise DaliMissing(
                "NVIDIA DALI is not installed: install gpupipe with one of the extras "
                "[cpu], [cuda12] or [cuda13] (e.g. pip install 'gpupipe[cpu]'). "
                f"Import error: {_DALI_ERROR}"
            )
        self._pipes = {False: self._build(False)}
        return self

    def _build(self, route):
        """One of the decoder's pipelines, by ``route``: False, encoded files to
        (pixels, thumbnails, grays); True, encoded files already THUMB x THUMB,
        whose thumbnail is the image itself (no resampling); RAW, decoded pixels
        to (thumbnails, grays), the same resize without a decode."""
        dev = self.device
        threads = self.num_threads or default_threads()
        gpu = dev.decoder == "mixed"

        @pipeline_def(
            batch_size=self.batch_size, num_threads=threads, device_id=dev.dali_device_id,
            exec_async=False, exec_pipelined=False, prefetch_queue_depth=1,
        )
        def _pipeline():
            if route == RAW:
                rgb = fn.external_source(name="input", dtype=types.UINT8, device="cpu", layout="HWC")
                rgb = rgb.gpu() if gpu else rgb
            else:
                enc = fn.external_source(name="input", dtype=types.UINT8, device="cpu")
                rgb = fn.decoders.image(enc, device="mixed" if gpu else "cpu", output_type=types.RGB)
            if route is True:
                # DALI's CPU resize returns a 32x32 image unchanged (checked on all of CIFAR-10's
                # 60,000 and in tests/test_decoders.py) and cost about as much CPU as the decode,
                # ~12 us a sample (benchmarks/bench_read_decode.py; RESULTS.md §32).
                return rgb, fn.color_space_conversion(rgb, image_type=types.RGB, output_type=types.GRAY)
            thumb = fn.resize(rgb, size=[THUMB, THUMB], antialias=True, dtype=types.UINT8)
            gray = fn.color_space_conversion(thumb, image_type=types.RGB, output_type=types.GRAY)
            return (thumb, gray) if route == RAW else (rgb, thumb, gray)

        pipe = _pipeline()
        pipe.build()
        return pipe

    def _pipe(self, route):
        if route not in self._pipes:
            self._pipes[route] = self._build(route)
        return self._pipes[route]

    def thumbnails(self, images: list[np.ndarray]) -> Decoded:
        """The thumbnails and grays of up to ``batch_size`` decoded images ((H, W, 3)
        uint8 RGB numpy arrays), by the same resize as `decode`: what decoding a
        lossless file of these pixels would give, without encoding it first."""
        pipe = self._pipe(RAW)
        pipe.feed_input("input", [np.ascontiguousarray(a) for a in images], layout="HWC")
        thumb, gray = pipe.run()
        xp, n = self.device.xp, len(images)
        return Decoded([], _as_xp(thumb.as_tensor(), xp).reshape(n, THUMB, THUMB, 3),
                       _as_xp(gray.as_tensor(), xp).reshape(n, THUMB, THUMB), np.arange(n))

    def _run(self, encoded: list[np.ndarray], at_size: bool):
        pipe = self._pipe(at_size)
        pipe.feed_input("input", encoded)
        out = pipe.run()
        return (out[0], out[0], out[1]) if at_size else out

    def decode(self, encoded: list[np.ndarray], *, at_size: bool = False) -> Decoded:
        """Decode up to ``batch_size`` encoded files (1-D uint8 numpy arrays).

        ``at_size``: the files' headers say THUMB x THUMB pixels, so their
        thumbnails are the images themselves, not resampled (the same pixels,
        at half the cost on the CPU).  Should one decode to another size, the
        batch is decoded again the usual way."""
        if not self._pipes:
            self.setup()
        parts: list[Decoded] = []
        errors: dict[int, str] = {}
        self._decode_range(encoded, np.arange(len(encoded)), parts, errors, at_size)
        if at_size and any(tuple(g.shape[1:]) != (THUMB, THUMB, 3) for _, g in
                           (grp for d in parts for grp in d.rgb_groups)):
            return self.decode(encoded)
        if len(parts) == 1 and not errors:
            return parts[0]
        xp = self.device.xp
        groups = _regroup([g for d in parts for g in d.rgb_groups], xp)
        ok = np.concatenate([d.ok for d in parts]) if parts else np.zeros(0, np.int64)
        thumbs = xp.concatenate([d.thumbs for d in parts]) if parts else xp.zeros((0, THUMB, THUMB, 3), xp.uint8)
        grays = xp.concatenate([d.grays for d in parts]) if parts else xp.zeros((0, THUMB, THUMB), xp.uint8)
        return Decoded(groups, thumbs, grays, ok, errors)

    def _decode_range(self, encoded, positions: np.ndarray, parts: list, errors: dict, at_size: bool) -> None:
        """Decode ``encoded[positions]``; on failure bisect to find the bad
        files: O(k log n) pipeline runs for k bad files among n."""
        try:
            with quiet_decoders() as said:
                rgb, thumb, gray = self._run([encoded[i] for i in positions], at_size)
            parts.append(self._collect(rgb, thumb, gray, positions, at_size))
            return
        except RuntimeError as err:
            # One bad file fails the whole batch and invalidates the pipeline.
            self._pipes[at_size] = self._build(at_size)
            if len(positions) == 1:
                errors[int(positions[0])] = _short(err) + (f" ({said[-1]})" if said else "")
                return
        half = len(positions) // 2
        self._decode_range(encoded, positions[:half], parts, errors, at_size)
        self._decode_range(encoded, positions[half:], parts, errors, at_size)

    def _collect(self, rgb, thumb, gray, positions: np.ndarray, at_size: bool = False) -> Decoded:
        xp = self.device.xp
        if at_size:
            # The images are the thumbnails: one copy out of DALI.  A size other than
            # THUMB x THUMB (a header that lied) makes `decode` run the batch again.
            if not rgb.is_dense_tensor() or tuple(rgb.as_tensor().shape()[1:]) != (THUMB, THUMB, 3):
                return Decoded([(positions, xp.zeros((len(positions), 0, 0, 3), xp.uint8))], None, None, positions)
            images = _as_xp(rgb.as_tensor(), xp)
            grays = _as_xp(gray.as_tensor(), xp).reshape(len(positions), THUMB, THUMB)
            return Decoded([(positions, images)], images, grays, positions)
        grays = _as_xp(gray.as_tensor(), xp).reshape(len(positions), THUMB, THUMB)
        thumbs = _as_xp(thumb.as_tensor(), xp).reshape(len(positions), THUMB, THUMB, 3)
        if rgb.is_dense_tensor():
            groups = [(positions, _as_xp(rgb.as_tensor(), xp))]
        else:
            items = [_as_xp(rgb[i], xp) for i in range(len(positions))]
            groups = _regroup([(positions[i:i + 1], it[None]) for i, it in enumerate(items)], xp)
        return Decoded(groups, thumbs, grays, positions)


def _as_xp(t, xp):
    """A DALI tensor -> xp array.  CPU: a numpy copy; GPU: a CuPy copy (DALI
    reuses its buffers on the next run)."""
    if xp is np:
        return np.array(t)
    return xp.array(t, copy=True)  # TensorGPU exposes __cuda_array_interface__


def _regroup(groups: list[tuple[np.ndarray, Any]], xp) -> list[tuple[np.ndarray, Any]]:
    """Merge (positions, images) groups of equal image shape into one each."""
    by_shape: dict[tuple, list] = {}
    for pos, imgs in groups:
        by_shape.setdefault(tuple(imgs.shape[1:]), []).append((pos, imgs))
    out = []
    for parts in by_shape.values():
        pos = np.concatenate([p for p, _ in parts])
        imgs = parts[0][1] if len(parts) == 1 else xp.concatenate([i for _, i in parts])
        out.append((pos, imgs))
    return out


_NOISE = re.compile(r"^\s*(libpng|libjpeg|libtiff|libwebp|nvjpeg|\[?nvimgcodec|corrupt jpeg|premature end of jpeg|"
                    r"invalid sos|bogus|warning: )", re.I)
_capturing = threading.Lock()


@contextlib.contextmanager
def quiet_decoders() -> Iterator[list[str]]:
    """Catch what C libraries write to file descriptor 2 in the ``with`` block
    and yield the list that receives the decoders' lines (libpng, libjpeg,
    libtiff, nvJPEG, nvImageCodec); any other line caught (another thread's
    log, a progress bar) is written back to stderr afterwards.  One capture
    at a time per process: a second thread's block runs uncaptured."""
    said: list[str] = []
    if not _capturing.acquire(blocking=False):
        yield said
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield said
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                other = []
                for line in tmp.read().decode("utf-8", "replace").splitlines():
                    if _NOISE.match(line):
                        said.append(line.strip())
                    else:
                        other.append(line)
                if other:
                    os.write(2, ("\n".join(other) + "\n").encode())
    finally:
        _capturing.release()


def _short(err: Exception) -> str:
    msg = str(err)
    for line in msg.splitlines():
        if "nvImageCodec" in line or "Unsupported" in line or "failed" in line.lower():
            return line.strip()[:200]
    return msg.splitlines()[0][:200] if msg else type(err).__name__


def decode_only(device: Device, refs: list, *, batch_size: int = 512, num_threads: int | None = None) -> int:
    """The decode ceiling: read and decode every one of ``refs`` once, and
    nothing else (the pixels are dropped), in DALI's pipelined executor with a
    prefetch queue, with the decoder the hash stage uses on ``device``.

    refs: paths of loose files (DALI's file reader), or (path, locator) pairs
    for samples inside shards or Parquet files (read by
    `gpupipe.io.sources.read_many` into an ``external_source``, as
    `gpupipe.dali.augment.file_pipeline` does).  Every ref must decode: pass
    the rows the hash stage found valid.  Returns the number of images decoded.
    ``gpupipe bench`` times it beside the stages.
    """
    from gpupipe.dali.augment import READER, _ByteBatches

    if _DALI_ERROR is not None:
        raise DaliMissing(f"NVIDIA DALI is not installed ({_DALI_ERROR})")
    if not refs:
        return 0
    files = [r[0] if isinstance(r, tuple) else r for r in refs]
    locs = [r[1] if isinstance(r, tuple) else None for r in refs]
    inside = any(loc is not None for loc in locs)
    threads = num_threads or default_threads()

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device.dali_device_id,
                  prefetch_queue_depth=2)
    def _pipeline():
        if inside:
            enc, row = fn.external_source(source=_ByteBatches(files, locs, list(range(len(files))), batch_size,
                                                              False, 0),
                                          num_outputs=2, batch=True, cycle="raise", dtype=[types.UINT8, types.INT64])
        else:
            enc, row = fn.readers.file(files=files, name=READER, pad_last_batch=True)
        # the rows are returned too (unused): DALI warns about an external source output left unused
        return fn.decoders.image(enc, device="mixed" if device.decoder == "mixed" else "cpu",
                                 output_type=types.RGB), row

    pipe = _pipeline()
    pipe.build()
    batches = -(-len(files) // batch_size)
    try:
        for _ in range(batches):
            pipe.run()
    except StopIteration:   # the external source's epoch ended (its last batch was padded)
        pass
    return len(files)
