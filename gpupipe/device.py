"""Where gpupipe runs, decided once.

`resolve_device` probes for a *working* GPU by doing a tiny operation (CuPy
and cuDF import fine on hosts without a driver and fail only at the first real
call) and returns a `Device` holding everything the rest of the code needs:
the DALI device id and decoder backend, the torch device, the array module
``xp`` (numpy or CuPy) and the dataframe module ``df`` (pandas or cuDF).
No other module checks for CUDA.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

DeviceRequest = Literal["auto", "cpu", "gpu"]


class DeviceError(RuntimeError):
    """A GPU was asked for and none works."""


@dataclass(frozen=True)
class Device:
    kind: Literal["cpu", "gpu"]
    dali_device_id: int | None       # None -> DALI runs CPU-only pipelines
    decoder: Literal["cpu", "mixed"]  # DALI decoder backend
    torch_device: str                # "cpu" or "cuda:0"
    xp: types.ModuleType             # numpy | cupy
    df: types.ModuleType             # pandas | cudf
    gpu_id: int = 0
    note: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"

    def to_host(self, array) -> np.ndarray:
        """Any xp array -> numpy (a no-op on CPU)."""
        return array.get() if hasattr(array, "get") else np.asarray(array)

    def memory_in_use(self) -> int | None:
        """Bytes in use on the GPU (every process and allocator: DALI, CuPy,
        torch), None on the CPU."""
        if not self.is_gpu:
            return None
        with self.xp.cuda.Device(self.gpu_id):
            free, total = self.xp.cuda.runtime.memGetInfo()
        return int(total - free)

    def name(self) -> str:
        """The GPU's name and memory ("NVIDIA H200, 139.8 GiB"), or "cpu"."""
        if not self.is_gpu:
            return "cpu"
        props = self.xp.cuda.runtime.getDeviceProperties(self.gpu_id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return f"{name}, {props['totalGlobalMem'] / 2**30:.1f} GiB"


@functools.lru_cache(maxsize=None)
def _probe_cupy(gpu_id: int) -> tuple[types.ModuleType | None, str]:
    try:
        import cupy

        with cupy.cuda.Device(gpu_id):
            if int(cupy.arange(4).sum()) != 6:
                return None, "CuPy returned a wrong result"
        return cupy, ""
    except Exception as e:  # ImportError, CUDARuntimeError, driver errors...
        return None, f"CuPy not usable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


@functools.lru_cache(maxsize=None)
def _probe_cudf() -> tuple[types.ModuleType | None, str]:
    try:
        import cudf

        if int(cudf.Series([1, 2, 3]).sum()) != 6:
            return None, "cuDF returned a wrong result"
        return cudf, ""
    except Exception as e:
        return None, f"cuDF not usable: {type(e).__name__}"


def cpu_device(note: str = "") -> Device:
    return Device("cpu", None, "cpu", "cpu", np, pd, note=note)


def resolve_device(request: DeviceRequest = "auto", *, gpu_id: int = 0) -> Device:
    """Probe once and return the device to use.

    ``auto`` picks the GPU when CuPy can run on it, else the CPU; ``gpu`` raises
    `DeviceError` with the reason when no working GPU is found; ``cpu`` never
    touches CUDA.  On a GPU without a working cuDF the table stays in pandas
    (noted in ``Device.note``): hashing still runs on the GPU.
    """
    if request not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu, not {request!r}")
    if request == "cpu":
        return cpu_device()
    cupy, why = _probe_cupy(gpu_id)
    if cupy is None:
        if request == "gpu":
            raise DeviceError(f"--device gpu was asked for but no working GPU was found ({why})")
        return cpu_device(note=f"no working GPU ({why})")
    cudf, why_df = _probe_cudf()
    return Device(
        "gpu", gpu_id, "mixed", f"cuda:{gpu_id}", cupy, cudf if cudf is not None else pd,
        gpu_id=gpu_id, note="" if cudf is not None else f"tables stay in pandas ({why_df})",
    )
