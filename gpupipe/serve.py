"""``gpupipe review RUN_DIR --serve``: the review queue in the browser.

A local web server (the standard library's ``http.server``: a page, a few
JSON calls and PNG thumbnails need nothing more) over one run directory:

* the pending queue (``rank.json``'s ``queue`` CSV), worst and best sections,
  each row with its image, given and suggested label, probability, loss,
  outlier score and its duplicate-group mates;
* the duplicate groups (label conflicts first, then the largest), where a
  person splits a wrongly merged row out of its group or picks the kept row;
* ``/report``: the run's HTML report, its images linked to the page.

Every decision is appended to ``review/draft.jsonl`` (fsynced) as it is
made, so a closed tab or a killed server loses at most the one in flight;
reloading the page replays it.  *Apply* writes the label decisions as the
queue CSV filled in (``review/round-NNN.decisions.csv``) and hands it, with
the group corrections, to `gpupipe.loop.run_review`: the same checks, the
same ``decisions.parquet`` history and the same next round as a CSV review.

Security: it binds 127.0.0.1 unless told otherwise (`check_host`); every
request needs the token printed in the URL (a cookie set from it, or the
``X-Gpupipe-Token`` header, which every change must carry), so another
user of the machine, or a web page in the same browser, cannot decide.
"""

from __future__ import annotations

import functools
import hmac
import io
import ipaddress
import json
import os
import secrets
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gpupipe import schema
from gpupipe.lock import RunLocked
from gpupipe.rundir import GROUP_DECISIONS, LEDGER, RANK_STATE, RunDir
from gpupipe.stages.dedup import GROUP_ACTIONS, GROUP_LOG_SCHEMA
from gpupipe.stages.review import ACTIONS
from gpupipe.table import write_text_atomic

DRAFT = "review/draft.jsonl"
TOKEN_HEADER = "X-Gpupipe-Token"
COOKIE = "gpupipe_token"
MATES = 6                 # group mates shown beside a queued row
MAX_GROUPS = 2000         # groups listed in the groups view (label conflicts, then the largest)
THUMB = 160               # the page's image size; full size on demand
_LEDGER_COLUMNS = (schema.SAMPLE_ID, schema.REL_PATH, schema.PATH, schema.LOCATOR, schema.LABEL,
                   schema.DEDUP_GROUP, schema.DEDUP_GROUP_SIZE, schema.DEDUP_KIND, schema.DEDUP_KEEP,
                   schema.DEDUP_SIMILARITY, schema.DEDUP_LABEL_CONFLICT)


class ReviewError(ValueError):
    """A request the review cannot take (HTTP 400 / 409 with this message)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def check_host(host: str, allow_remote: bool) -> int:
    """The address family to bind ``host`` with; refuses an address that is
    not loopback unless ``allow_remote``."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: cannot resolve it ({e})") from None
    addrs = {info[4][0].split("%")[0] for info in infos}
    if not allow_remote and not all(ipaddress.ip_address(a).is_loopback for a in addrs):
        raise ValueError(f"refusing to serve on {host} ({', '.join(sorted(addrs))}): not a loopback address. "
                         "Anyone who can reach it and has the URL could decide; pass --allow-remote to do it anyway")
    return infos[0][0]


class ReviewSession:
    """What the page shows and changes, for one run directory (thread-safe)."""

    def __init__(self, run_dir: str | os.PathLike, *, max_groups: int = MAX_GROUPS):
        self.run = RunDir(run_dir)
        self.max_groups = max_groups
        self.lock = threading.RLock()
        if not (self.run / LEDGER).exists():
            raise FileNotFoundError(f"{self.run / LEDGER} not found: run `gpupipe dedup` or `gpupipe curate` first")
        self.reload()

    # --- what is under review ------------------------------------------------
    def reload(self) -> None:
        with self.lock:
            self.generation = self.run.generation()
            self.state = self.run.read_json(RANK_STATE, {"rounds": [], "pending": None})
            present = set(pq.read_schema(self.run / LEDGER).names)
            table = pq.read_table(self.run / LEDGER, columns=[c for c in _LEDGER_COLUMNS if c in present])
            # Nullable integers stay integers (sample ids are 64-bit: a float would round them).
            self.ledger = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype(),
                                                        pa.bool_(): pd.BooleanDtype()}.get)
            self.by_id = pd.Index(self.ledger[schema.SAMPLE_ID].to_numpy(np.int64))
            self.round = self.state.get("pending")
            self.queue_named = self.state.get("queue") if self.round is not None else None
            self.queue_path = None
            if self.queue_named:          # rank.json names it absolutely; the run directory may have moved
                here = self.run / "review" / Path(self.queue_named).name
                self.queue_path = here if here.exists() else Path(self.queue_named)
            self.queue = (pd.read_csv(self.queue_path, dtype=str, keep_default_na=False)
                          if self.queue_path is not None and self.queue_path.exists() else pd.DataFrame())
            self.queue_ids = (set(self.queue[schema.SAMPLE_ID].astype(np.int64).tolist())
                              if len(self.queue) else set())
            labels = self.ledger[schema.LABEL].dropna().unique().tolist()
            self.classes = [str(c) for c in (self.state.get("classes") or sorted(labels, key=_natural))]
            self.applied_groups = self._applied_group_keys()

    def _applied_group_keys(self) -> set:
        p = self.run / GROUP_DECISIONS
        if not p.exists():
            return set()
        t = pq.read_table(p, columns=["sample_id", "action", "unix_time"]).to_pydict()
        return set(zip(t["sample_id"], t["action"], t["unix_time"]))

    # --- the draft: every change, in order, fsynced --------------------------
    def _journal(self) -> list[dict]:
        p = self.run / DRAFT
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:      # the line in flight when a server was killed
                continue
        return out

    def _append(self, entry: dict) -> None:
        p = self.run / DRAFT
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _replay(self) -> tuple[dict[int, dict], list[dict]]:
        """-> (label decision per sample_id of the pending round, group ops in
        order), after undos; ops already applied to the ledger are dropped."""
        stack: list[dict] = []
        for e in self._journal():
            if e.get("op") == "undo":
                if stack:
                    stack.pop()
            else:
                stack.append(e)
        labels: dict[int, dict] = {}
        groups: list[dict] = []
        for e in stack:
            for item in e["items"]:
                if e["op"] == "label" and e.get("round") == self.round and item["sample_id"] in self.queue_ids:
                    if item["decision"]:
                        labels[item["sample_id"]] = item
                    else:
                        labels.pop(item["sample_id"], None)
                elif e["op"] == "group" and (item["sample_id"], item["action"], e["t"]) not in self.applied_groups:
                    groups.append({**item, "t": e["t"]})
        return labels, groups

    def _stale(self) -> bool:
        """Has another command committed to the run directory since the page loaded?"""
        return self.run.generation() != self.generation

    def _refuse_if_stale(self) -> None:
        if self._stale():
            raise ReviewError("the run directory changed since the page loaded (a rank round or another "
                              "review); reload the page", 409)

    def decide(self, items: list[dict]) -> dict:
        """Label decisions on queued rows: [{sample_id, decision, new_label}];
        decision "" clears.  Checked as the CSV's are, before anything is saved."""
        with self.lock:
            self._refuse_if_stale()
            if self.round is None:
                raise ReviewError("no queue is pending: nothing to decide (run gpupipe rank)", 409)
            clean = []
            for it in items:
                sid = _int(it.get("sample_id"))
                decision = str(it.get("decision") or "").strip().lower()
                new = it.get("new_label")
                new = None if new is None else str(new).strip()
                if sid not in self.queue_ids:
                    raise ReviewError(f"sample {sid} is not in round {self.round}'s queue")
                if decision and decision not in ACTIONS:
                    raise ReviewError(f"decision {decision!r} is not one of {', '.join(ACTIONS)}")
                if decision == "relabel" and new not in self.classes:
                    raise ReviewError(f"relabel needs new_label, one of the classes; got {new!r}")
                clean.append({"sample_id": sid, "decision": decision,
                              "new_label": new if decision == "relabel" else None})
            self._append({"op": "label", "round": self.round, "t": time.time(), "items": clean})
            return self.progress()

    def group(self, sample_id, action: str) -> dict:
        """A group correction: ``split`` the row out of its group, or ``keep`` it as the kept row."""
        with self.lock:
            self._refuse_if_stale()
            sid = _int(sample_id)
            pos = self.by_id.get_indexer([sid])[0]
            if pos < 0:
                raise ReviewError(f"sample {sid} is not in the ledger")
            row = self.ledger.iloc[pos]
            if action not in GROUP_ACTIONS:
                raise ReviewError(f"group action {action!r} is not one of {', '.join(GROUP_ACTIONS)}")
            if pd.isna(row[schema.DEDUP_GROUP]):
                raise ReviewError(f"sample {sid} is invalid: it is in no group")
            self._append({"op": "group", "t": time.time(), "items": [{
                "sample_id": sid, "action": action, "rel_path": row[schema.REL_PATH],
                "group_before": int(row[schema.DEDUP_GROUP])}]})
            return self.progress()

    def undo(self) -> dict:
        with self.lock:
            self._append({"op": "undo", "t": time.time()})
            return self.progress()

    def progress(self) -> dict:
        labels, groups = self._replay()
        return {"round": self.round, "queued": len(self.queue), "decided": len(labels),
                "pending": len(self.queue) - len(labels), "group_edits": len(groups),
                "decisions": {str(k): {"decision": v["decision"], "new_label": v["new_label"]}
                              for k, v in labels.items()},
                "groups_draft": [{"sample_id": str(g["sample_id"]), "action": g["action"]} for g in groups]}

    # --- what the page loads -------------------------------------------------
    def payload(self) -> dict:
        with self.lock:
            if self._stale():
                self.reload()
            return {"run_dir": str(self.run.path.absolute()), "classes": self.classes,
                    "queue": self._queue_items(), "groups": self._groups(), **self.progress()}

    def _queue_items(self) -> list[dict]:
        if not len(self.queue):
            return []
        q = self.queue
        mates = self._mates(q[schema.SAMPLE_ID].astype(np.int64).to_numpy())
        out = []
        for i, r in enumerate(q.to_dict("records")):
            out.append({"sample_id": r[schema.SAMPLE_ID], "queue": r["queue"], "rel_path": r[schema.REL_PATH],
                        "label": r["label"], "suggested_label": r.get("suggested_label") or None,
                        "prob_given": _num(r.get("prob_given")), "prob_suggested": _num(r.get("prob_suggested")),
                        "loss": _num(r.get("loss")), "neighbour_vote": _num(r.get("neighbour_vote")),
                        "outlier_score": _num(r.get("outlier_score")),
                        "suggested_action": r.get("suggested_action") or None, "mates": mates[i]})
        return out

    def _mates(self, ids: np.ndarray) -> list[list[dict]]:
        d = self.ledger
        pos = self.by_id.get_indexer(ids)
        group = d[schema.DEDUP_GROUP]
        size = d[schema.DEDUP_GROUP_SIZE].fillna(1).to_numpy()
        out: list[list[dict]] = [[] for _ in ids]
        want = [i for i, p in enumerate(pos) if p >= 0 and size[p] > 1]
        if not want:
            return out
        gids = group.iloc[pos[want]].to_numpy()
        members = d[group.isin(gids)]
        by_group = {g: m for g, m in members.groupby(schema.DEDUP_GROUP)}
        for i, g in zip(want, gids):
            m = by_group[g]
            m = m[m[schema.SAMPLE_ID] != ids[i]].head(MATES)
            out[i] = [_member(r) for r in m.to_dict("records")]
        return out

    def _groups(self) -> list[dict]:
        d = self.ledger
        multi = d[d[schema.DEDUP_GROUP_SIZE].fillna(1) > 1]
        if multi.empty:
            return []
        head = multi.groupby(schema.DEDUP_GROUP).agg(size=(schema.DEDUP_GROUP_SIZE, "first"),
                                                   conflict=(schema.DEDUP_LABEL_CONFLICT, "any"))
        head = head.sort_values(["conflict", "size"], ascending=[False, False], kind="stable").head(self.max_groups)
        members = multi[multi[schema.DEDUP_GROUP].isin(head.index)]
        by_group = {g: m for g, m in members.groupby(schema.DEDUP_GROUP)}
        return [{"group": str(g), "size": int(h["size"]), "label_conflict": bool(h["conflict"]),
                 "members": [_member(r) for r in
                             by_group[g].sort_values(schema.DEDUP_KEEP, ascending=False, kind="stable")
                             .to_dict("records")]}
                for g, h in head.iterrows()]

    def image(self, sample_id, size: int | None) -> bytes:
        pos = self.by_id.get_indexer([_int(sample_id)])[0]
        if pos < 0:
            raise ReviewError(f"sample {sample_id} is not in the ledger", 404)
        r = self.ledger.iloc[pos]
        loc = r.get(schema.LOCATOR)
        return _png(r[schema.PATH], loc if isinstance(loc, str) else None, size)

    # --- apply ---------------------------------------------------------------
    def apply(self) -> dict:
        """Apply the draft to the ledger (`gpupipe.loop.run_review`, holding the run's lock)."""
        from gpupipe.loop import run_review

        with self.lock:
            self._refuse_if_stale()
            labels, groups = self._replay()
            csv = None
            if self.round is not None and labels:
                q = self.queue.copy()
                ids = q[schema.SAMPLE_ID].astype(np.int64)
                q["decision"] = [labels[i]["decision"] if i in labels else "" for i in ids]
                q["new_label"] = [labels[i]["new_label"] or "" if i in labels else "" for i in ids]
                csv = self.queue_path.with_name(self.queue_path.stem + ".decisions.csv")
                buf = io.StringIO()
                q.to_csv(buf, index=False)
                write_text_atomic(buf.getvalue(), csv)
            if csv is None and not groups:
                raise ReviewError("nothing to apply: no decision made yet")
            table = None
            if groups:
                table = pa.table({"sample_id": [g["sample_id"] for g in groups],
                                  "rel_path": [g["rel_path"] for g in groups],
                                  "action": [g["action"] for g in groups],
                                  "group_before": [g["group_before"] for g in groups],
                                  "source": [schema.SOURCE_PERSON] * len(groups),
                                  "unix_time": [g["t"] for g in groups]}, schema=GROUP_LOG_SCHEMA)
            try:
                out = run_review(self.run.path, csv, groups=table)
            except ValueError as e:
                raise ReviewError(str(e)) from None
            except RunLocked as e:             # another gpupipe process works on the run directory
                raise ReviewError(str(e), 409) from None
            # Applied: the draft is spent (group ops are also recognised by their time if this is lost).
            archive = self.run / f"review/draft-applied-{int(time.time() * 1000)}.jsonl"
            os.replace(self.run / DRAFT, archive)
            self.reload()
            return {**out, "decisions_csv": None if csv is None else str(csv)}


def _natural(s) -> tuple:
    s = str(s)
    return (0, int(s), s) if s.isdigit() else (1, 0, s)


def _int(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ReviewError(f"sample_id {v!r} is not an integer") from None


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else round(f, 4)


def _member(r: dict) -> dict:
    sim = r.get(schema.DEDUP_SIMILARITY)
    return {"sample_id": str(r[schema.SAMPLE_ID]), "label": r[schema.LABEL], "kind": r[schema.DEDUP_KIND],
            "keep": bool(r[schema.DEDUP_KEEP]), "rel_path": r[schema.REL_PATH],
            "similarity": None if sim is None or pd.isna(sim) else round(float(sim), 3)}


@functools.lru_cache(maxsize=4096)
def _png(path: str, locator: str | None, size: int | None) -> bytes:
    """The image as PNG, its longer side scaled to ``size``; None: as stored."""
    from gpupipe.sheets import scaled_image

    try:
        im = scaled_image(path, locator, size)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    except Exception as e:        # unreadable or undecodable: the page shows a broken image, the reason here
        raise ReviewError(f"cannot show {path}: {e}", 404) from None
    return buf.getvalue()


def _page() -> bytes:
    return resources.files("gpupipe").joinpath("web/review.html").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: "ReviewServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):     # quiet: the terminal shows the URL, not every thumbnail
        if self.server.verbose:
            super().log_message(fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", {"Cache-Control": "no-store"})

    def _token_ok(self, *, header_only: bool) -> bool:
        want = self.server.token
        given = [self.headers.get(TOKEN_HEADER, "")]
        if not header_only:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            given += query.get("token", [])
            for part in (self.headers.get("Cookie") or "").split(";"):
                k, _, v = part.strip().partition("=")
                if k == COOKIE:
                    given.append(v)
        return any(hmac.compare_digest(g.encode(), want.encode()) for g in given if g)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if not self._token_ok(header_only=False):
            return self._send(403, b"gpupipe review: missing or wrong token (use the URL the server printed)\n",
                              "text/plain")
        s = self.server.session
        try:
            if url.path == "/":
                cookie = f"{COOKIE}={self.server.token}; HttpOnly; SameSite=Strict; Path=/"
                page = _page().replace(b"__GPUPIPE_TOKEN__", self.server.token.encode())
                return self._send(200, page, "text/html; charset=utf-8",
                                  {"Set-Cookie": cookie, "Cache-Control": "no-store"})
            if url.path == "/favicon.ico":
                return self._send(204, b"", "image/x-icon")
            if url.path == "/api/state":
                return self._json(200, s.payload())
            if url.path.startswith("/img/"):
                q = urllib.parse.parse_qs(url.query)
                size = None if q.get("full") else int(q.get("s", [THUMB])[0])
                return self._send(200, s.image(url.path[5:], size), "image/png",
                                  {"Cache-Control": "private, max-age=3600"})
            if url.path == "/report":
                p = s.run / "report.html"
                if not p.exists():
                    return self._send(404, b"no report.html in this run directory (gpupipe curate writes it)\n",
                                      "text/plain")
                return self._send(200, p.read_bytes(), "text/html; charset=utf-8", {"Cache-Control": "no-store"})
        except ReviewError as e:
            return self._send(e.status, str(e).encode(), "text/plain")
        self._send(404, b"not found\n", "text/plain")

    def do_POST(self):
        if not self._token_ok(header_only=True):
            return self._json(403, {"error": f"missing or wrong {TOKEN_HEADER} header"})
        s = self.server.session
        try:
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}") if n else {}
            path = urllib.parse.urlsplit(self.path).path
            if path == "/api/decide":
                return self._json(200, s.decide(body.get("items") or [body]))
            if path == "/api/group":
                return self._json(200, s.group(body.get("sample_id"), body.get("action")))
            if path == "/api/undo":
                return self._json(200, s.undo())
            if path == "/api/apply":
                return self._json(200, {"applied": s.apply(), **s.payload()})
        except ReviewError as e:
            return self._json(e.status, {"error": str(e)})
        except (json.JSONDecodeError, AttributeError, TypeError) as e:
            return self._json(400, {"error": f"bad request: {e}"})
        self._json(404, {"error": "not found"})


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, session: ReviewSession, host: str = "127.0.0.1", port: int = 0, *,
                 token: str | None = None, allow_remote: bool = False, verbose: bool = False):
        self.address_family = check_host(host, allow_remote)
        self.session = session
        self.token = token or secrets.token_urlsafe(18)
        self.verbose = verbose
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/?token={self.token}"


def serve(run_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False,
          log=print) -> None:
    """Serve RUN_DIR's review until interrupted (Ctrl+C)."""
    server = ReviewServer(ReviewSession(run_dir), host, port, allow_remote=allow_remote)
    log(f"gpupipe review: open {server.url}  (Ctrl+C to stop; decisions are saved as you make them)")
    if (Path(run_dir) / "report.html").exists():
        log(f"gpupipe review: the report, linked to the page: {server.url.replace('/?', '/report?')}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log("gpupipe review: stopped")
    finally:
        server.server_close()
