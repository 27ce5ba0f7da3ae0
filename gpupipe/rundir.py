"""A run directory: its files, its lock, and its one commit point.

    RUN_DIR/ledger.parquet      the per-sample table (every stage's columns)
    RUN_DIR/thumbs.npy          (N, 32, 32, 3) uint8 thumbnails aligned with the ledger's rows (dedup)
    RUN_DIR/summary.json        what dedup found and how fast
    RUN_DIR/rank.json           rank rounds so far, classes (order of rank_probs), pending review
    RUN_DIR/decisions.parquet   every decision ever applied (append-only history)
    RUN_DIR/group_decisions.parquet  a person's corrections of the duplicate groups (split / keep)
    RUN_DIR/curate.json         `gpupipe curate`'s record of each stage (fingerprint, ledger generation)
    RUN_DIR/run.json            the commit generation, and the generation that last wrote each file
    RUN_DIR/parts/              per-partition outputs while a stage is under way (the unit of resume)
    RUN_DIR/.commit/            a commit in flight (see `RunDir.commit`)
    RUN_DIR/.gpupipe.lock       who holds the directory (`gpupipe.lock`)

Files that change together are written together by `RunDir.commit`: each new
file goes to ``.commit/``, then ``.commit/COMMIT`` (renamed into place: the
commit point) lists them, then each is renamed over its final name and
COMMIT is removed.  Whoever opens the directory next, under its lock, finishes
a commit whose COMMIT exists and drops one whose COMMIT does not
(`RunDir.recover`).  So a process killed at any instruction leaves the files
of the old commit or of the new one, never a mix (a round's ledger with the
previous round's rank.json, say).  This is a redo log, the way databases
make several writes one; SQLite's rollback journal is the same idea turned
around.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from gpupipe.lock import run_lock
from gpupipe.table import atomic_file, crash_point, fsync_dir

LEDGER = "ledger.parquet"
THUMBS = "thumbs.npy"
SUMMARY = "summary.json"
RANK_STATE = "rank.json"
DECISIONS = "decisions.parquet"
GROUP_DECISIONS = "group_decisions.parquet"
CURATE_STATE = "curate.json"
RUN_STATE = "run.json"
PARTS = "parts"
DECODED = "decoded"          # images decoded once for rank (`gpupipe.dali.decoded`)
JOURNAL = ".commit"
COMMIT = "COMMIT"

#: What `RunDir.commit` takes per file: a JSON-able dict, a text, or a function
#: that writes the file at the path it is given (e.g. ``Ledger.write_ledger``).
Content = Union[dict, str, Callable[[Path], Any]]


class RunDir:
    """The files of one run directory (see the module doc).  Open it with
    `RunDir.open`, which holds its lock and finishes or drops a commit a
    killed process left."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: str | os.PathLike, *, create: bool = True,
             log: Callable[[str], None] = lambda s: None) -> Iterator["RunDir"]:
        """Hold the directory's lock for the ``with`` block (re-entrant within a
        process) and recover it first.  ``create``: make it if missing."""
        run = cls(path)
        with run_lock(run.path, create=create, log=log):
            if run.path.is_dir():
                run.recover()
            yield run

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # --- state ------------------------------------------------------------
    def read_json(self, name: str, default: dict | None = None) -> dict:
        p = self.path / name
        return json.loads(p.read_text()) if p.exists() else (dict(default) if default is not None else {})

    def generation(self, name: str | None = None) -> int:
        """The last commit's number (0: none yet), or the number of the commit
        that last wrote ``name`` (0: never written by a commit)."""
        state = self.read_json(RUN_STATE, {"generation": 0, "files": {}})
        return state["generation"] if name is None else state["files"].get(name, 0)

    # --- writing ----------------------------------------------------------
    def commit(self, files: dict[str, Content], *, moves: dict[str, str | os.PathLike] | None = None) -> int:
        """Write ``files`` (final name -> content) and rename ``moves`` (final
        name -> an existing file of this directory, e.g. one built in parts/)
        as one: after a kill at any point the directory holds all of them or
        none.  Returns the new generation.  The caller holds the lock."""
        journal = self.path / JOURNAL
        shutil.rmtree(journal, ignore_errors=True)
        journal.mkdir(parents=True)
        state = self.read_json(RUN_STATE, {"generation": 0, "files": {}})
        gen = state["generation"] + 1
        names = [*files, *(moves or {})]
        state = {"generation": gen, "files": {**state["files"], **{n: gen for n in names}}}
        missing = [str(src) for src in (moves or {}).values() if not Path(src).exists()]
        if missing:
            raise FileNotFoundError(f"commit: nothing to move at {missing}")
        for name, content in {**files, RUN_STATE: state}.items():
            _write(journal / name, content)
        fsync_dir(journal)
        plan = {"files": [*files, RUN_STATE],
                "moves": {n: os.path.relpath(Path(src).absolute(), self.path.absolute())
                          for n, src in (moves or {}).items()}}
        with atomic_file(journal / COMMIT, "w") as fh:     # the commit point
            fh.write(json.dumps(plan))
        self._apply(plan)
        return gen

    def recover(self) -> None:
        """Finish the commit a killed process left (its COMMIT exists) or drop
        it (COMMIT missing), and remove temporary files killed writers left."""
        journal = self.path / JOURNAL
        if (journal / COMMIT).exists():
            self._apply(json.loads((journal / COMMIT).read_text()))
        shutil.rmtree(journal, ignore_errors=True)
        for d in (self.path, *(p for p in self.path.iterdir() if p.is_dir() and not p.is_symlink())):
            for tmp in d.glob(".*.tmp"):       # atomic_file's and export's temporaries
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)

    def _apply(self, plan: dict) -> None:
        journal = self.path / JOURNAL
        for name, src in plan["moves"].items():
            if (self.path / src).exists():
                os.replace(self.path / src, self.path / name)
                crash_point(f"commit: moved {name}")
        for name in plan["files"]:             # run.json last: it names the generation
            if (journal / name).exists():
                os.replace(journal / name, self.path / name)
                crash_point(f"commit: renamed {name}")
        fsync_dir(self.path)
        (journal / COMMIT).unlink()
        shutil.rmtree(journal, ignore_errors=True)

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        """Forget everything earlier runs left (decisions included), under the lock.
        A person's group corrections go only when not in ``keep``: they are
        keyed by sample_id and hold over a new dedup of the same source."""
        for name in (LEDGER, SUMMARY, THUMBS, RANK_STATE, DECISIONS, GROUP_DECISIONS, CURATE_STATE, RUN_STATE,
                     "report.html"):
            if name not in keep:
                (self.path / name).unlink(missing_ok=True)
        for name in ("review", "models", "export", PARTS, DECODED):
            if name not in keep:
                shutil.rmtree(self.path / name, ignore_errors=True)
        fsync_dir(self.path)


def _write(path: Path, content: Content) -> None:
    if callable(content):
        content(path)
    else:
        text = content if isinstance(content, str) else json.dumps(content, indent=2, default=str)
        with atomic_file(path, "w") as fh:
            fh.write(text)


class PendingReview(RuntimeError):
    """A person's review of the last queue is still outstanding (`gpupipe.loop`)."""
