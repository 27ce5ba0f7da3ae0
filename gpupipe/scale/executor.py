"""Where per-partition work runs: in this process, or on a Dask cluster.

The same function runs everywhere; an executor only decides where.  Results
come back in submission order, so the ledger never depends on which executor
ran it or in which order partitions finished.

- `InProcess`: the default; partitions run one after another here.
- `DaskExecutor`: ``workers=N`` starts a local cluster of N single-threaded
  worker processes (a dask-cuda ``LocalCUDACluster``, one worker per GPU, when
  the device is a GPU); ``scheduler=ADDRESS`` joins an existing cluster.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence


class InProcess:
    name = "in-process"
    n_workers = 1

    def map(self, fn: Callable, items: Sequence, *args, on_done: Callable[[Any], None] | None = None) -> list:
        out = []
        for item in items:
            r = fn(item, *args)
            if on_done is not None:
                on_done(r)
            out.append(r)
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DaskExecutor(InProcess):
    def __init__(self, *, workers: int | None = None, scheduler: str | None = None, gpu: bool = False):
        from distributed import Client

        self._cluster = None
        if scheduler:
            self.client = Client(scheduler)
            self.name = f"dask scheduler {scheduler}"
        else:
            # distributed's nanny writes its workers' settings (OMP_NUM_THREADS=1,
            # MKL_NUM_THREADS=1, ...) into this process's os.environ and leaves them there:
            # every process started from here afterwards would run torch on one thread.
            saved = dict(os.environ)
            try:
                if gpu:
                    from dask_cuda import LocalCUDACluster

                    self._cluster = LocalCUDACluster(n_workers=workers, threads_per_worker=1)
                else:
                    from distributed import LocalCluster

                    self._cluster = LocalCluster(
                        n_workers=workers, threads_per_worker=1, processes=True,
                        dashboard_address=None, silence_logs=logging.ERROR,
                    )
                self.client = Client(self._cluster)
            finally:
                os.environ.clear()
                os.environ.update(saved)
            self.name = f"dask local {'CUDA ' if gpu else ''}cluster, {workers} workers"
        self.n_workers = max(1, len(self.client.scheduler_info().get("workers", {})) or (workers or 1))

    def map(self, fn, items, *args, on_done=None) -> list:
        from distributed import as_completed

        futures = [self.client.submit(fn, item, *args, pure=False) for item in items]
        index = {f.key: i for i, f in enumerate(futures)}
        out: list = [None] * len(futures)
        for fut in as_completed(futures):
            r = fut.result()
            out[index[fut.key]] = r
            if on_done is not None:
                on_done(r)
        return out

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_executor(*, workers: int | None = None, scheduler: str | None = None, gpu: bool = False) -> InProcess:
    """``workers`` None/0 and no scheduler -> in-process."""
    if scheduler or (workers and workers > 0):
        return DaskExecutor(workers=workers, scheduler=scheduler, gpu=gpu)
    return InProcess()


def threads_per_worker(n_workers: int) -> int:
    """DALI threads for each of ``n_workers`` processes sharing this host."""
    return max(1, (os.cpu_count() or 1) // max(1, n_workers))
