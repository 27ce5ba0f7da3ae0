"""Baselines that gpupipe's duplicate finder is measured against.

Two building blocks for the benchmark scripts, each returning a plain dict of
timings (seconds, images/s) so a script can print or tabulate them:

- `run_imagededup_phash`: imagededup 0.3.3's `PHash` -- `encode_images` over an
  image tree, then `find_duplicates` on the encoding map -- the widely used
  CPU reference for perceptual-hash deduplication.
- `run_dali_decode_only`: a DALI CPU pipeline that only reads and decodes every
  file once.  No duplicate finder that has to look at pixels can be faster
  than this on the same CPU, so it is the practical ceiling.

Installing imagededup (see benchmarks/requirements*.txt): its wheel requires
torch *and* torchvision, but only its `CNN` method uses them.  PyPI's
torchvision does not import beside this project's CPU torch build, so
imagededup is installed with ``--no-deps`` plus its light dependencies, and --
because ``import imagededup.methods`` imports the CNN module, which imports
torchvision at import time -- `run_imagededup_phash` puts a stub module for
torchvision into ``sys.modules`` when no working torchvision is installed
(`_ensure_torchvision`).  The stub lets the CNN module's class bodies run;
calling any torchvision model constructor (i.e. using ``imagededup.methods.CNN``)
raises ImportError.  Hash methods never touch it, so PHash results and timings
are those of stock imagededup.  Where a real torchvision imports, it is used
and no stub is installed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import multiprocessing
import os
import sys
import time
import types
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

# DALI's default `file_filters` for fn.readers.file, as lower-case suffixes.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".pnm", ".ppm", ".pgm", ".pbm", ".jp2", ".webp"}
)

SearchMethod = Literal["brute_force_cython", "bktree", "brute_force"]

_STUB_FLAG = "__gpupipe_torchvision_stub__"


# --------------------------------------------------------------------------- #
# torchvision stub (only for importing imagededup's hash methods)
# --------------------------------------------------------------------------- #
class _Placeholder:
    """Stands in for any torchvision object that imagededup touches at import
    time (``transforms.Compose([...])``, ``ViT_B_16_Weights.X.transforms()``):
    every attribute and every call yields another placeholder."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __repr__(self) -> str:
        return "<torchvision stub placeholder>"


def _unavailable(name: str):
    def raiser(*args, **kwargs):
        raise ImportError(
            f"torchvision.models.{name}: torchvision is a stub inserted by "
            "benchmarks/baselines.py so that imagededup's hash methods import; "
            "imagededup.methods.CNN needs a real torchvision."
        )

    raiser.__name__ = name
    return raiser


def _stub_module(name: str, getattr_fn) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    mod.__path__ = []  # a package, so submodule imports resolve via sys.modules
    mod.__getattr__ = getattr_fn  # PEP 562 module-level __getattr__
    setattr(mod, _STUB_FLAG, True)
    return mod


def _install_torchvision_stub() -> None:
    placeholder = _Placeholder()

    def any_placeholder(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder

    def models_attr(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        # Lower-case names are model constructors (mobilenet_v3_small,
        # vit_b_16, efficientnet_b4): called only when a CNN is built.
        # CamelCase names are weight enums read in class bodies at import.
        return _unavailable(name) if name[:1].islower() else placeholder

    tv = _stub_module("torchvision", any_placeholder)
    models = _stub_module("torchvision.models", models_attr)
    vit = _stub_module("torchvision.models.vision_transformer", models_attr)
    tfm = _stub_module("torchvision.transforms", any_placeholder)
    tfm_inner = _stub_module("torchvision.transforms.transforms", any_placeholder)
    tv.models, tv.transforms = models, tfm
    models.vision_transformer = vit
    tfm.transforms = tfm_inner
    for mod in (tv, models, vit, tfm, tfm_inner):
        sys.modules[mod.__name__] = mod


def _ensure_torchvision() -> Literal["real", "stub"]:
    """Make ``import torchvision`` succeed; say whether it is real or our stub."""
    existing = sys.modules.get("torchvision")
    if existing is not None:
        return "stub" if getattr(existing, _STUB_FLAG, False) else "real"
    if importlib.util.find_spec("torchvision") is not None:
        try:
            import torchvision.models  # noqa: F401
            import torchvision.transforms  # noqa: F401

            return "real"
        except Exception:  # an installed torchvision built for another torch
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]
    _install_torchvision_stub()
    return "stub"


# --------------------------------------------------------------------------- #
# imagededup PHash
# --------------------------------------------------------------------------- #
def _components(dup_map: dict[str, list[str]]) -> list[frozenset[str]]:
    """Connected components (size >= 2) of imagededup's {file: [dups]} map."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    names = sorted(set(dup_map) | {o for dups in dup_map.values() for o in dups})
    index = {name: i for i, name in enumerate(names)}
    src = [index[k] for k, dups in dup_map.items() for _ in dups]
    dst = [index[o] for dups in dup_map.values() for o in dups]
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(len(names), len(names)))
    _, label = connected_components(graph, directed=False)
    groups: dict[int, set[str]] = {}
    for name, lab in zip(names, label.tolist()):
        groups.setdefault(lab, set()).add(name)
    return sorted((frozenset(g) for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), min(g)))


def run_imagededup_phash(
    image_dir: str | os.PathLike,
    *,
    max_distance: int,
    num_workers: int | None = None,
    search_method: SearchMethod = "brute_force_cython",
    return_maps: bool = False,
) -> dict:
    """Run imagededup's PHash end to end on every image under ``image_dir``.

    The tree is walked recursively (``recursive=True``), so an ImageFolder tree
    ``root/<class>/x.png`` works; imagededup then keys every image by its path
    relative to ``image_dir`` (``"<class>/x.png"``), and so do the groups here.
    Files that are not decodable images are skipped by imagededup.

    Args:
        image_dir: root directory of the images.
        max_distance: imagededup's ``max_distance_threshold``: two images are
            duplicates when the Hamming distance of their 64-bit pHashes is
            <= this (0..64; imagededup's default is 10; lower = stricter).
        num_workers: processes for encoding and for the search
            (``num_enc_workers`` / ``num_dist_workers``); None -> the CPUs this
            process may use.
        search_method: imagededup's search backend; its default on Linux is
            ``"brute_force_cython"`` (all pairs).
        return_maps: also return imagededup's raw outputs, so a caller can
            re-threshold without re-running: ``encodings`` ({relative path:
            16-hex-digit pHash}) and ``dup_map`` ({relative path: [relative
            paths within max_distance]}, symmetric).

    Returns:
        dict with ``n_images`` (images hashed), ``encode_seconds``,
        ``search_seconds`` (find_duplicates), ``total_seconds`` (their sum),
        ``images_per_s`` (n_images / total_seconds), ``encode_images_per_s``,
        ``search_images_per_s``, ``duplicates`` (list of frozensets of relative
        paths: the connected components of the duplicate map, largest first;
        pairs are not transitive, so at loose thresholds components chain
        into large groups), ``n_pairs`` (unordered pairs within
        max_distance), ``n_groups``, ``n_images_in_groups``, and the settings used
        (``max_distance``, ``num_workers``, ``search_method``, ``torchvision``:
        "real" or "stub").
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise ValueError(f"image_dir is not a directory: {root}")
    if isinstance(max_distance, bool) or not isinstance(max_distance, int) or not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be an int in 0..64, got {max_distance!r}")
    workers = len(os.sched_getaffinity(0)) if num_workers is None else int(num_workers)
    if workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers!r}")

    torchvision_kind = _ensure_torchvision()
    if torchvision_kind == "stub" and multiprocessing.get_start_method() != "fork":
        # imagededup's worker pools use the default start method; only forked
        # children inherit the stub in sys.modules.
        raise RuntimeError(
            "the torchvision stub needs the 'fork' multiprocessing start method "
            f"(current: {multiprocessing.get_start_method()!r}); install a working torchvision instead"
        )
    from imagededup.methods import PHash

    phasher = PHash(verbose=False)

    t0 = time.perf_counter()
    encodings = phasher.encode_images(image_dir=str(root), recursive=True, num_enc_workers=workers)
    t1 = time.perf_counter()
    if not encodings:
        raise ValueError(f"imagededup found no decodable images under {root}")
    with warnings.catch_warnings():
        # "num_enc_workers has no effect since encodings are already provided"
        warnings.simplefilter("ignore", RuntimeWarning)
        dup_map = phasher.find_duplicates(
            encoding_map=encodings,
            max_distance_threshold=max_distance,
            search_method=search_method,
            num_dist_workers=workers,
        )
    t2 = time.perf_counter()

    groups = _components(dup_map)
    n_pairs = sum(len(v) for v in dup_map.values()) // 2  # the map is symmetric
    n = len(encodings)
    encode_s, search_s = t1 - t0, t2 - t1
    result = {
        "tool": "imagededup PHash",
        "n_images": n,
        "encode_seconds": encode_s,
        "search_seconds": search_s,
        "total_seconds": encode_s + search_s,
        "images_per_s": n / (encode_s + search_s),
        "encode_images_per_s": n / encode_s,
        "search_images_per_s": n / search_s,
        "duplicates": groups,
        "n_pairs": n_pairs,
        "n_groups": len(groups),
        "n_images_in_groups": sum(len(g) for g in groups),
        "max_distance": max_distance,
        "num_workers": workers,
        "search_method": search_method,
        "torchvision": torchvision_kind,
    }
    if return_maps:
        result["encodings"] = encodings
        result["dup_map"] = dup_map
    return result


# --------------------------------------------------------------------------- #
# DALI decode-only ceiling
# --------------------------------------------------------------------------- #
def _list_images(image_dir_or_file_list: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    if isinstance(image_dir_or_file_list, (str, os.PathLike)):
        root = Path(image_dir_or_file_list)
        if not root.is_dir():
            raise ValueError(f"not a directory: {root} (pass a directory or a list of files)")
        files = sorted(
            str(p) for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    else:
        files = [str(p) for p in image_dir_or_file_list]
    if not files:
        raise ValueError("no image files to decode")
    return files


def run_dali_decode_only(
    image_dir_or_file_list: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    batch_size: int = 256,
    num_threads: int = 2,
    warmup: bool = True,
) -> dict:
    """Read and decode every file once with a CPU-only DALI pipeline.

    Pipeline: ``fn.readers.file(files=..., random_shuffle=False)`` ->
    ``fn.decoders.image(device="cpu", output_type=types.RGB)``, built with
    ``device_id=None``.  A directory is walked recursively for DALI's default
    image suffixes, sorted; a list of files is used as given.

    Args:
        image_dir_or_file_list: a directory, or a sequence of image paths.
        batch_size: images per pipeline run.
        num_threads: DALI CPU worker threads (this is the decode parallelism).
        warmup: first build and run a throwaway one-batch pipeline, so that
            one-time start-up costs of the first DALI pipeline in a process
            (measured: the first full pass ran at about half speed) stay
            out of ``seconds``.

    Returns:
        dict with ``n_images`` (files), ``seconds`` (first ``run()`` to last
        batch, build and warm-up excluded), ``images_per_s`` (n_images /
        seconds), ``build_seconds``, ``warmup_seconds``, ``n_batches``,
        ``n_decoded`` (n_batches * batch_size: the last batch is padded by
        repeating the last file), and the settings used.
    """
    files = _list_images(image_dir_or_file_list)
    if batch_size < 1 or num_threads < 1:
        raise ValueError(f"batch_size and num_threads must be >= 1, got {batch_size}, {num_threads}")

    import nvidia.dali as dali
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def
    def decode_only(paths):
        encoded, _ = fn.readers.file(files=paths, random_shuffle=False, pad_last_batch=True, name="reader")
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    tw = time.perf_counter()
    if warmup:
        warm = decode_only(files[:batch_size], batch_size=batch_size, num_threads=num_threads, device_id=None)
        warm.build()
        warm.run()
        del warm
    t0 = time.perf_counter()
    pipe = decode_only(files, batch_size=batch_size, num_threads=num_threads, device_id=None)
    pipe.build()
    t1 = time.perf_counter()
    n_batches = math.ceil(len(files) / batch_size)
    # Ceiling measurement: the loop only pulls batches and drops them.  No
    # Python work per image here (no .as_array(), no per-sample iteration),
    # or the number stops being DALI's decode throughput.
    for _ in range(n_batches):
        pipe.run()
    t2 = time.perf_counter()
    del pipe

    n = len(files)
    return {
        "tool": "DALI decode-only (cpu)",
        "dali_version": dali.__version__,
        "n_images": n,
        "seconds": t2 - t1,
        "images_per_s": n / (t2 - t1),
        "build_seconds": t1 - t0,
        "warmup_seconds": t0 - tw,
        "n_batches": n_batches,
        "n_decoded": n_batches * batch_size,
        "batch_size": batch_size,
        "num_threads": num_threads,
        "warmup": warmup,
    }
