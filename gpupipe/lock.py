"""One gpupipe process per run directory.

`run_lock(run_dir)` takes an exclusive ``flock`` on ``RUN_DIR/.gpupipe.lock``
and writes who holds it (pid, host, start time, command).  A second process
stops with `RunLocked`, naming the first.  The kernel drops the lock when its
holder dies, even by kill -9, so a stale lock file is simply taken over (the
new holder logs whose it was).  The file itself is never deleted: deleting it
would let two processes lock two different files of the same name.  Linux's
NFS client maps ``flock`` onto NFS locks, so this also holds across the
machines of a cluster sharing RUN_DIR.

The lock is re-entrant within a process (curate holds it while it calls
dedup and rank, which take it too).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

LOCK_FILE = ".gpupipe.lock"

_held: dict[str, int] = {}       # resolved run dir -> depth, in this process
_guard = threading.Lock()


class RunLocked(RuntimeError):
    """Another process holds the run directory."""


def _describe(info: dict) -> str:
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
            + (f" ({info['command']})" if info.get("command") else ""))


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, *, create: bool = True, log: Callable[[str], None] = lambda s: None):
    """Hold RUN_DIR's lock for the ``with`` block (``create``: make RUN_DIR if
    missing; commands that read an existing run pass False, and where it is
    missing there is nothing to lock: they say so themselves)."""
    run_dir = Path(run_dir)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        yield
        return
    key = str(run_dir.resolve())
    with _guard:
        if _held.get(key):
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{run_dir} is in use by another gpupipe process: {_describe(_read(fd))}; "
                            "wait for it to finish or stop it") from None
        previous = _read(fd)
        if previous.get("pid"):
            log(f"took over the lock of {run_dir} left by {_describe(previous)}, which is no longer running")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _guard:
                _held.pop(key, None)
            os.ftruncate(fd, 0)            # released: nobody holds it
    finally:
        os.close(fd)                       # closing drops the flock


def _read(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
