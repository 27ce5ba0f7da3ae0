"""Dedup stage: turn the hash columns into duplicate groups (global, cheap).

Stage 1 (identical bytes) already spared decoding in the hash stage; byte
twins are always pixel twins too, so grouping starts from the pixel hash:
- stage 2: rows with the same exact pixel hash form one node;
- stage 3: one row per node goes to two bounded near-neighbour searches
  (`gpupipe.hashing.neighbors`, each pair reported directly): its 64-bit
  pHash (re-encodes, resizes, photometric edits) and its 64-bit shift key
  (`gpupipe.hashing.shiftkey`: shifts and crops, which move pHash bits).
  Their union are the candidates; each candidate is then verified on the
  two 32x32 thumbnails (`gpupipe.hashing.verify`: is it the same picture?),
  and connected components of the verified pairs are the groups, split so
  that every member is verified against its group's representative directly
  (no chains A~B~C with A and C different pictures).
Per group one representative is kept, chosen deterministically: most pixels,
then lossless before JPEG, then largest file, then first relative path.
Groups with more than one label are label conflicts; groups spanning more
than one split are split leaks.  Invalid rows get no group and are not kept.

Optional *probes* (`gpupipe.stages.probe`): edited copies of a sample of the
input's own images, searched against the same index (as queries: they never
take a place in the real images' search) and verified the same way, to
measure the recall per kind and the false matches on this input.  They never
join a group and never reach the ledger.

Reads: sample_id, label, split, ingest_file_bytes and the hash columns.
Adds: `schema.DEDUP`.  Array math runs over the device's xp; only the small
edge list goes through SciPy's connected components on the host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from gpupipe import schema
from gpupipe.hashing.neighbors import hamming, near_pairs
from gpupipe.hashing.verify import GATE_UNITS, VerifyMode, pair_check, to_gray
from gpupipe.table import Ledger, check_columns
from gpupipe.xputil import min_per_group, run_starts, top_k_pairs, unique

READS = (
    schema.SAMPLE_ID, schema.LABEL, schema.SPLIT, schema.FILE_BYTES, schema.IMAGE_FORMAT,
    schema.IMAGE_WIDTH, schema.IMAGE_HEIGHT, schema.IS_INVALID, schema.BYTES_HASH,
    schema.PIXELS_HASH, schema.PHASH, schema.SHIFT_KEY,
)
DEFAULT_MAX_DISTANCE = 8
DEFAULT_SHIFT_DISTANCE = 8
DEFAULT_MAX_CHECKS = 8
MAX_PER_HASH = 32          # each key's search keeps the 32 closest partners per distinct hash
LOSSY_FORMATS = ("jpeg",)


@dataclass(frozen=True)
class DedupConfig:
    max_distance: int | None = None          # pHash Hamming threshold; None -> DEFAULT_MAX_DISTANCE
    shift_distance: int | None = None        # shift-key threshold; None -> DEFAULT_SHIFT_DISTANCE; -1: off
    verify: VerifyMode = "pixels"            # check of each candidate (gpupipe.hashing.verify); "photo": + zoom
    max_checks: int | None = None            # pairs checked per image, closest first; None -> DEFAULT_MAX_CHECKS; 0: all
    min_similarity: float | None = None      # for verify="pixels"|"photo"; None -> verify.DEFAULT_MIN_SIMILARITY
    min_registered: float | None = None      # for verify="photo": z; None -> photo.DEFAULT_MIN_REGISTERED_Z
    seed: int = 0                            # for the near-neighbour search's bit permutations

    def resolved_distance(self) -> int:
        return DEFAULT_MAX_DISTANCE if self.max_distance is None else int(self.max_distance)

    def resolved_shift_distance(self) -> int:
        return DEFAULT_SHIFT_DISTANCE if self.shift_distance is None else int(self.shift_distance)

    def resolved_verify(self) -> dict:
        """The verification actually applied, for the run summary."""
        from gpupipe.hashing import photo, verify

        if self.verify == "none":
            return {"mode": "none"}
        t = verify.DEFAULT_MIN_SIMILARITY if self.min_similarity is None else float(self.min_similarity)
        out = {"mode": self.verify, "min_similarity": t, "min_similarity_moved": round(t + verify.MOVED_MARGIN, 6),
               "max_checks_per_image": _max_checks(self)}
        if self.verify == "photo":
            out["min_registered_z"] = (photo.DEFAULT_MIN_REGISTERED_Z if self.min_registered is None
                                       else float(self.min_registered))
            out["zoom_queries"] = list(ZOOM_QUERIES)
            from gpupipe.hashing import knn
            out["nearest_neighbours"] = knn.KNN_NEIGHBOURS
            out["min_registered_z_nearest_only"] = max(out["min_registered_z"], knn.MIN_Z_NEAREST_ONLY)
        return out


@dataclass(frozen=True)
class Probes:
    """Edited copies of sampled input images, to measure recall (`gpupipe.stages.probe`).

    phash, shift: (P,) uint64 keys; thumbs: (P, 32, 32, 3) uint8; source_row: (P,) int64
    ledger row each copy was made from; kind: (P,) str, one of `gpupipe.transforms` kinds.
    """

    phash: np.ndarray
    shift: np.ndarray
    thumbs: np.ndarray
    source_row: np.ndarray
    kind: np.ndarray


@dataclass
class DedupStats:
    nodes: int = 0            # distinct decoded pictures (after stages 1-2)
    candidates: int = 0       # pairs proposed by pHash or the shift key (stage 3)
    candidates_phash: int = 0
    candidates_shift: int = 0
    candidates_knn: int = 0   # pairs proposed by the nearest-neighbour search (--verify photo)
    checked: int = 0          # candidates among each image's DEFAULT_MAX_CHECKS closest (by the gate's hashes)
    gated: int = 0            # of the candidates checked, passing the hash gate of the check
    coarse: int = 0           # of those, passing the check's 16 px correlation (the 32 px step sees these)
    verified: int = 0         # candidates the check calls the same picture
    split_groups: int = 0     # extra groups from splitting chained components
    seconds: dict[str, float] = field(default_factory=dict)
    probe: dict = field(default_factory=dict)    # per-run recall (gpupipe.stages.probe)


CHECK_SLICE = 1 << 18      # pairs per progress report (the check's results do not depend on it)


def dedup(frame, ledger: Ledger, config: DedupConfig = DedupConfig(), *, thumbs=None, probes: Probes | None = None,
          progress=None):
    """Add the `schema.DEDUP` columns to ``frame`` (one row per sample).

    thumbs: (N, 32, 32, 3) (or (N, 32, 32) gray) uint8 array aligned with
    ``frame``'s rows (the hash stage's thumbnails); when given and
    ``config.verify`` is not "none", candidates must pass
    `gpupipe.hashing.verify.PairCheck`.  probes: see `Probes`.  progress:
    ``f(step, done, total)`` as pair checks finish.
    Returns (frame with the new columns, DedupStats).
    """
    check_columns(frame, READS, where="dedup")
    xp = ledger.xp
    host = ledger.device.to_host
    n = len(frame)
    t0 = time.perf_counter()
    valid = ~ledger.array(frame, schema.IS_INVALID, fill=True, dtype=bool)
    pix = ledger.codes(frame, schema.PIXELS_HASH)
    valid &= pix >= 0
    byte = ledger.codes(frame, schema.BYTES_HASH)
    ph = ledger.array(frame, schema.PHASH, fill=0, dtype=np.uint64)
    sk = ledger.array(frame, schema.SHIFT_KEY, fill=0, dtype=np.uint64)

    # Stage 2: one node per distinct pixel hash; its first row stands for it.
    rows_valid = xp.nonzero(valid)[0]
    node_codes, node_first, node_of_valid = unique(pix[rows_valid], xp, return_index=True, return_inverse=True)
    m = int(node_codes.shape[0])
    # Nodes numbered in row order (the ledger's, and thumbs.npy's), not in pixel-hash order:
    # the check then reads the thumbnails of a run of nodes from one stretch of the file.
    by_row = xp.argsort(node_first)
    renumber = xp.empty(m, dtype=xp.int64)
    renumber[by_row] = xp.arange(m, dtype=xp.int64)
    node_first, node_of_valid = node_first[by_row], renumber[node_of_valid]
    first_rows = rows_valid[node_first]
    stats = DedupStats(nodes=m)
    # Stage 3: candidates from both keys, as direct pairs (each one is verified on its own).
    views = _photo_views(thumbs, host(first_rows), xp) if config.verify == "photo" and thumbs is not None else None
    ei, ej, qi, qj, strict, qstrict = _candidates(ph[first_rows], sk[first_rows], probes, config, stats, xp,
                                                  views=views)
    stats.seconds["search"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    mode = config.verify if thumbs is not None else "none"
    # Thumbnails of every node with a candidate, then of the probes: one check over them all.
    ends = xp.concatenate([ei, ej, qj])
    seen = xp.zeros(m, dtype=bool)           # node ids are < m: a table instead of a sort of 2E ends
    seen[ends] = True
    involved = xp.nonzero(seen)[0]
    pos = (xp.cumsum(seen, dtype=xp.int64) - 1)[ends]
    del ends, seen
    n_real = int(involved.shape[0])
    if mode != "none":
        t_all = _Thumbs(thumbs, host(first_rows[involved]), None if probes is None else probes.thumbs, xp)
    else:
        t_all = None
    check = pair_check(t_all, mode=mode, min_similarity=config.min_similarity,
                       min_registered=config.min_registered, xp=xp)
    e = int(ei.shape[0])
    if e and hasattr(check, "gate_units"):
        score = check.gate_units(pos[:e], pos[e:2 * e])
        if mode == "photo":        # the registered route sees every candidate, the closest first
            score = xp.minimum(score, GATE_UNITS)
        keep = _closest(ei, ej, score, _max_checks(config), xp)
        stats.checked = int(keep.sum())
        ei, ej, pos = ei[keep], ej[keep], xp.concatenate([pos[:e][keep], pos[e:2 * e][keep], pos[2 * e:]])
        strict = None if strict is None else strict[keep]
        e = int(ei.shape[0])
        del score, keep                      # E-sized (28M at a million mosaics)
    if e:                      # an order in which each image's pairs come close together (caches)
        order = xp.asarray(_cache_order(host(pos[:e]), host(pos[e:2 * e]), n_real))
        ei, ej = ei[order], ej[order]
        pos = xp.concatenate([pos[:e][order], pos[e:2 * e][order], pos[2 * e:]])
        strict = None if strict is None else strict[order]
    floor = _registered_floor(check, strict, xp)
    if e and hasattr(check, "warm"):
        check.warm(pos[:e], pos[e:2 * e])
    if e:
        ok = xp.zeros(e, dtype=bool)
        for a in range(0, e, CHECK_SLICE):
            b = min(e, a + CHECK_SLICE)
            ok[a:b] = check(pos[a:b], pos[e + a:e + b], *(() if floor is None else (floor[a:b],)))
            if progress is not None:
                progress("check pairs", b, e)
        ei, ej = ei[ok], ej[ok]
    stats.verified = int(ei.shape[0])
    ei_h, ej_h = host(ei), host(ej)
    graph = coo_matrix((np.ones(len(ei_h), np.int8), (ei_h, ej_h)), shape=(m, m))
    _, comp_of_node = connected_components(graph, directed=False)

    rank, row_of_rank = _representative_rank(frame, ledger)
    node_of_valid = node_of_valid.ravel()
    node_of_row = xp.full(n, -1, dtype=xp.int64)          # -1 for invalid rows
    node_of_row[rows_valid] = node_of_valid
    node_rank = min_per_group(rank[rows_valid], node_of_valid, m, xp)
    comp_node = _split_chains(xp.asarray(comp_of_node, dtype=xp.int64), node_rank, involved, check, stats, xp)
    stats.gated = check.stats.gated
    stats.coarse = check.stats.coarse
    stats.seconds["verify"] = time.perf_counter() - t1
    if probes is not None:
        t2 = time.perf_counter()
        stats.probe = _probe_results(probes, qi, qj, pos[2 * e:], comp_node, node_of_row, n_real, check, xp, host,
                                     floor=_registered_floor(check, qstrict, xp))
        stats.seconds["probe"] = time.perf_counter() - t2
    comp = xp.full(n, -1, dtype=xp.int64)
    comp[rows_valid] = comp_node[node_of_valid]
    # Representative: the best-ranked row of each group.
    n_labels = int(comp.max()) + 1 if int(rows_valid.shape[0]) else 0
    rep_of_comp = row_of_rank[min_per_group(rank[rows_valid], comp[rows_valid], n_labels, xp)]
    row = xp.arange(n, dtype=xp.int64)
    rep = xp.full(n, -1, dtype=xp.int64)
    rep[valid] = rep_of_comp[comp[valid]]

    ids = ledger.array(frame, schema.SAMPLE_ID, dtype=np.int64)
    # CuPy's bincount fails on an empty input (it takes the max first).
    size_of_comp = xp.bincount(comp[valid], minlength=n_labels) if n_labels else xp.zeros(0, xp.int64)
    size = xp.zeros(n, dtype=xp.int64)
    size[valid] = size_of_comp[comp[valid]]
    is_rep = valid & (rep == row)
    safe_rep = xp.where(valid, rep, row)
    same_bytes = byte == byte[safe_rep]
    same_pix = pix == pix[safe_rep]
    kind_code = xp.where(size == 1, 0, xp.where(is_rep, 1, xp.where(same_bytes, 2, xp.where(same_pix, 3, 4))))
    kinds = np.asarray(schema.DEDUP_KINDS, dtype=object)[host(kind_code)]
    dist = hamming(ph, ph[safe_rep], xp=xp).astype(xp.int16)
    similarity = _similarity_to_rep(kind_code, rep, node_of_row, involved, check, xp)

    label_conflict = _spans(comp, ledger.codes(frame, schema.LABEL), valid, xp)
    split_leak = _spans(comp, ledger.codes(frame, schema.SPLIT), valid, xp)
    return (ledger.assign(frame, {
        schema.DEDUP_GROUP: (ids[safe_rep], valid),
        schema.DEDUP_DUPLICATE_OF: (ids[safe_rep], valid & ~is_rep),
        schema.DEDUP_KIND: (kinds, valid),
        schema.DEDUP_DISTANCE: (dist, valid),
        schema.DEDUP_SIMILARITY: (similarity, valid & ~is_rep & (size > 1)),
        schema.DEDUP_GROUP_SIZE: (size.astype(xp.int32), valid),
        schema.DEDUP_KEEP: (is_rep, None),
        schema.DEDUP_LABEL_CONFLICT: (label_conflict, None),
        schema.DEDUP_SPLIT_LEAK: (split_leak, None),
    }), stats)


def _cache_order(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """(E,) order of the pairs (a, b) (host arrays of image ids < n) in which the
    check's caches compute each image about once: sorted by the earlier end's place
    in a reverse Cuthill-McKee numbering of the pair graph (SciPy; a bandwidth-reducing
    order, so an image's partners are numbered close to it).  On the 2,973,661 pairs
    of a million mosaics the 32 px cache (room for 234,441 images) computed 2.74M
    band-passes in the pairs' first order and 1.00M in this one, of 831,507 images
    involved (benchmarks/RESULTS.md §27)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    g = csr_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    perm = reverse_cuthill_mckee((g + g.T).tocsr(), symmetric_mode=True)
    rank = np.empty(n, np.int64)
    rank[perm] = np.arange(n)
    return np.argsort(np.minimum(rank[a], rank[b]), kind="stable")


def _registered_floor(check, strict, xp):
    """(E,) float32 z floor of the photo route per candidate: ``check``'s own, and
    `gpupipe.hashing.knn.MIN_Z_NEAREST_ONLY` where only the nearest-neighbour search proposed
    the pair (None when there is no such candidate)."""
    if strict is None or not int(strict.sum()):
        return None
    from gpupipe.hashing import knn

    base = check.min_registered
    return xp.where(strict, xp.float32(max(base, knn.MIN_Z_NEAREST_ONLY)), xp.float32(base))


def _max_checks(config: DedupConfig) -> int:
    return DEFAULT_MAX_CHECKS if config.max_checks is None else int(config.max_checks)


def _closest(ei, ej, score, k: int, xp):
    """(E,) bool: pairs that pass the gate (``score``, `PairCheck.gate_units`, <=
    GATE_UNITS) and are among the k closest (lowest score) of either of their
    images.  Bounds the pixel checks to 2k per image however dense the hash
    neighbourhoods are (k <= 0: no bound).  Integer scores: top_k_pairs sorts
    one packed int64 key (a stable argsort of float keys took 16 s at 28M pairs)."""
    ok = score <= GATE_UNITS
    if k <= 0:
        return ok
    return ok & top_k_pairs(ei, ej, xp.where(ok, score, GATE_UNITS + 1), k, xp)


class _Thumbs:
    """The thumbnails the check reads: rows ``rows`` of ``source`` (an array, or a
    `gpupipe.io.rows.NpyRows` over thumbs.npy), then the probes', fetched when
    indexed (an xp array of positions, or a slice) and returned on ``xp``'s device.
    Only what the check asks for is ever in memory: nothing N-sized is copied."""

    def __init__(self, source, rows: np.ndarray, extra, xp):
        self.source, self.rows, self.xp = source, np.asarray(rows, np.int64), xp
        self.n_real = len(self.rows)
        self.extra = None if extra is None else _as_rgb(np.asarray(extra), source)
        n = self.n_real + (0 if extra is None else len(self.extra))
        self.shape = (n, *source.shape[1:])
        self.ndim = len(self.shape)

    def __getitem__(self, k):
        idx = np.arange(*k.indices(self.shape[0])) if isinstance(k, slice) else np.asarray(
            k.get() if hasattr(k, "get") else k, np.int64)
        real = idx < self.n_real
        if real.all():
            return self.xp.asarray(self.source[self.rows[idx]])
        out = np.empty((len(idx), *self.shape[1:]), np.uint8)
        out[real] = self.source[self.rows[idx[real]]]
        out[~real] = self.extra[idx[~real] - self.n_real]
        return self.xp.asarray(out)


def _as_rgb(probe_thumbs, like):
    """Probe thumbnails in the layout of the real ones ((P,32,32,3) or gray (P,32,32))."""
    if like.ndim == probe_thumbs.ndim:
        return probe_thumbs
    if like.ndim == 3:
        return to_gray(probe_thumbs)
    return np.repeat(probe_thumbs[..., None], 3, axis=-1)


ZOOM_QUERIES = (1.08, 1.15)    # --verify photo: each image zoomed in by these also queries both keys


def _photo_views(thumbs, rows: np.ndarray, xp, chunk: int = 16384):
    """The photo route's queries of the thumbnails ``rows``: ((pHash (Z*m,), shift key (Z*m,))
    of the thumbnails zoomed in about their centre by each of ZOOM_QUERIES (zoom-major):
    queries that find the crop-and-rescale copies of real photographs (ciFAIR's pairs: 70%
    proposed by the two keys at zoom 1, 88% with these two zooms as well; benchmarks/RESULTS.md
    "Real duplicates"), and ((1 + Z) * m, 63) float32 host `gpupipe.hashing.knn.dct_descriptor` of each view, zoom 1
    then each zoom of ZOOM_QUERIES (view-major), with its (V * m,) bool "takes part": a colour
    image with structure (on gray Fashion-MNIST the nearest neighbours brought 4 pairs of
    different trousers per 10,000 images past the pixel check: RESULTS.md §21)."""
    from gpupipe.hashing.knn import dct_descriptor
    from gpupipe.hashing.verify import _sandwich, _to_host, _zoom, is_colour
    from gpupipe.stages.hashing import image_keys

    out_p, out_s, desc, ok = [], [], [], []
    for z in (1.0, *ZOOM_QUERIES):
        for s in range(0, len(rows), chunk):
            t = xp.asarray(np.asarray(thumbs[rows[s:s + chunk]]))
            g = (to_gray(t, xp) if t.ndim == 4 else t).astype(xp.float32)[:, None]
            colour = is_colour(t, xp) if t.ndim == 4 else xp.zeros(int(t.shape[0]), dtype=bool)
            if z != 1.0:
                g = xp.clip(xp.rint(_sandwich(g, _zoom(g.shape[-1], z), xp)), 0, 255)
            g = g[:, 0].astype(xp.uint8)
            if z != 1.0:
                p, k = image_keys(g, xp)
                out_p.append(p)
                out_s.append(k)
            d, o = dct_descriptor(g, xp)
            desc.append(_to_host(d))
            ok.append(_to_host(o & colour))       # colour photographs only, as the registered route
    empty = xp.zeros(0, dtype=xp.uint64)
    keys = ((xp.concatenate(out_p) if out_p else empty), (xp.concatenate(out_s) if out_s else empty))
    return keys, ((np.concatenate(desc) if desc else np.zeros((0, 63), np.float32)),
                  (np.concatenate(ok) if ok else np.zeros(0, bool)))


def _nearest_candidates(views, m: int, probe_views, n_probe: int, xp):
    """The photo route's bounded candidates (`gpupipe.hashing.knn`): node pairs (i, j) where
    one view of i has j among its KNN_NEIGHBOURS nearest nodes; probe pairs (probe, node)
    found as if each probe were one more indexed image: the node is among the probe's
    views' nearest, or the probe is at least as close to a node's view as that view's
    KNN_NEIGHBOURS-th nearest node.  -> (node codes i * m + j, probe codes p * m + node), xp."""
    from gpupipe.hashing.knn import KNN_NEIGHBOURS, NearestIndex

    desc, ok = views
    k = KNN_NEIGHBOURS
    index = NearestIndex(desc[:m], ok[:m])
    n_views = len(desc) // max(m, 1)
    own = np.tile(np.arange(m, dtype=np.int64), n_views)
    live = np.flatnonzero(ok)
    nbr, sim = index.search(desc[live], own[live], k)
    a, b = np.repeat(own[live], k), nbr.ravel()
    hit = b >= 0
    a, b = a[hit], b[hit]
    node = np.unique(np.minimum(a, b) * max(m, 1) + np.maximum(a, b))
    probe = np.zeros(0, np.int64)
    if n_probe:
        pdesc, pok = probe_views
        plive = np.flatnonzero(pok)
        pn, _ = index.search(pdesc[plive], None, k)
        pa, pb = np.repeat(plive % n_probe, k), pn.ravel()
        parts = [(pa * m + pb)[pb >= 0]]
        base = pdesc[:n_probe][pok[:n_probe]]                 # probes at zoom 1, as indexed images are
        base_id = np.flatnonzero(pok[:n_probe])
        kth = sim[:, k - 1]
        for s in range(0, len(live), 1 << 16):
            close = desc[live[s:s + (1 << 16)]] @ base.T >= kth[s:s + (1 << 16), None]
            qi, pj = np.nonzero(close)
            parts.append(base_id[pj] * m + own[live[s + qi]])
        probe = np.unique(np.concatenate(parts))
    return xp.asarray(node), xp.asarray(probe)


def _candidates(ph, sk, probes, config: DedupConfig, stats: DedupStats, xp, views=None):
    """Node pairs (i < j) proposed by either key, each once; and probe pairs
    (probe index, node) proposed by either key.  views: the nodes'
    `_photo_views` (``--verify photo``): their zoomed keys are searched as queries
    whose pairs join the node pairs, and each view's nearest nodes by descriptor
    (`_nearest_candidates`) join them too; the probes then take part as a real image
    would: their own zoomed keys query the nodes, the nodes' zoomed keys query the
    probes, and both take part in the nearest-neighbour proposals."""
    m = max(int(ph.shape[0]), 1)
    n_probe = 0 if probes is None else len(probes.phash)
    parts, qparts = [], []
    pz = zoomed = None
    if views is not None:
        zoomed = views[0]
        pviews = _photo_views(probes.thumbs, np.arange(n_probe), xp) if n_probe else None
        pz = pviews[0] if n_probe else None
        near, qnear = _nearest_candidates(views[1], m, None if pviews is None else pviews[1],
                                          n_probe, xp)
        stats.candidates_knn = int(near.shape[0])
    keys = [(ph, 0, "candidates_phash", config.resolved_distance())]
    if config.resolved_shift_distance() >= 0:
        keys.append((sk, 1, "candidates_shift", config.resolved_shift_distance()))
    for key, which, name, dist in keys:
        # queries: the probes (at zoom 1, then zoomed), then the zoomed nodes
        q = ([] if probes is None else [xp.asarray(probes.phash if which == 0 else probes.shift)]) + \
            ([] if pz is None else [pz[which]]) + ([] if zoomed is None else [zoomed[which]])
        n_pq = n_probe * (1 + (0 if pz is None else len(ZOOM_QUERIES)))
        out = near_pairs(key, max_distance=dist, xp=xp, seed=config.seed, direct=True, max_per_hash=MAX_PER_HASH,
                         queries=xp.concatenate(q) if q else None)
        setattr(stats, name, int(out[0].shape[0]))
        parts.append(out[0] * m + out[1])
        if not q:
            continue
        probe = out[3] < n_pq
        qparts.append((out[3][probe] % max(n_probe, 1)) * m + out[4][probe])
        zi, zj = (out[3][~probe] - n_pq) % m, out[4][~probe]               # zoomed node -> node
        other = zi != zj
        parts.append(xp.minimum(zi[other], zj[other]) * m + xp.maximum(zi[other], zj[other]))
        if zoomed is not None and n_probe:                                   # zoomed node -> probe
            back = near_pairs(xp.asarray(probes.phash if which == 0 else probes.shift), max_distance=dist, xp=xp,
                              seed=config.seed, direct=True, queries=zoomed[which])
            qparts.append(back[4] * m + back[3] % m)
    key = unique(xp.concatenate(parts), xp) if parts else xp.empty(0, dtype=xp.int64)
    qkey = unique(xp.concatenate(qparts), xp) if qparts else xp.empty(0, dtype=xp.int64)
    strict = qstrict = None
    if views is not None:      # pairs only the nearest-neighbour search proposed: the stricter floor
        key, strict = _with_only(key, near, xp)
        qkey, qstrict = _with_only(qkey, qnear, xp)
    stats.candidates = int(key.shape[0])
    return key // m, key % m, qkey // m, qkey % m, strict, qstrict


def _with_only(keys, extra, xp):
    """(sorted union of ``keys`` and ``extra``, (U,) bool: the code is in ``extra`` only)."""
    both = unique(xp.concatenate([keys, extra]), xp)
    return both, ~xp.isin(both, keys)


def _representative_rank(frame, ledger: Ledger):
    """Each row's priority as a representative, 0 = best: most pixels, lossless
    before JPEG, largest file, first path (ledger order).
    Returns (rank (n,), row_of_rank (n,)), inverse permutations of each other."""
    xp = ledger.xp
    n = len(frame)
    pixels = ledger.array(frame, schema.IMAGE_WIDTH, fill=0, dtype=np.int64) * \
        ledger.array(frame, schema.IMAGE_HEIGHT, fill=0, dtype=np.int64)
    lossy = ledger.series_array(frame[schema.IMAGE_FORMAT].isin(list(LOSSY_FORMATS)), fill=False, dtype=bool)
    fsize = ledger.array(frame, schema.FILE_BYTES, fill=0, dtype=np.int64)
    row = xp.arange(n, dtype=xp.int64)          # ledger order = relative-path order
    row_of_rank = xp.lexsort(xp.stack([row, -fsize, lossy.astype(xp.int64), -pixels]))
    rank = xp.empty(n, dtype=xp.int64)
    rank[row_of_rank] = row
    return rank, row_of_rank


def _split_chains(comp, node_rank, involved, check, stats: DedupStats, xp):
    """Split connected components so that every node is itself the same picture
    as its group's leader: no chains of A~B~C where A and C differ.

    comp: (m,) component per node; node_rank: (m,) priority (lower is better);
    involved: sorted node ids that ``check`` indexes (every node of a 3+
    component has a verified edge, so it is among them).  Components of 3+
    nodes are peeled leader by leader: the best-ranked node not yet placed
    leads, and every unplaced node of its component that passes the check
    against it joins it.  Returns (m,) labels.
    """
    m = int(comp.shape[0])
    if m == 0:
        return comp
    sizes = xp.bincount(comp)
    todo = xp.nonzero(sizes[comp] > 2)[0]
    if int(todo.shape[0]) == 0:
        return comp
    at = xp.searchsorted(involved, todo)                   # todo -> position in `check`
    c, r = comp[todo], node_rank[todo]
    label = xp.full(int(todo.shape[0]), -1, dtype=xp.int64)
    pending = xp.arange(int(todo.shape[0]))
    while int(pending.shape[0]):
        order = pending[xp.lexsort(xp.stack([r[pending], c[pending]]))]
        leaders = order[run_starts(c[order], xp)]         # best pending node of each component
        lead = leaders[xp.searchsorted(c[leaders], c[pending])]
        ok = pending == lead
        other = xp.nonzero(~ok)[0]
        if int(other.shape[0]):
            ok[other] = check(at[pending[other]], at[lead[other]])
        label[pending[ok]] = lead[ok]
        pending = pending[~ok]
    out = comp.copy()
    base = int(comp.max()) + 1                            # fresh labels after the old ones
    out[todo] = base + todo[label]
    stats.split_groups = int(unique(out[todo], xp).shape[0]) - int(unique(c, xp).shape[0])
    return out


def _similarity_to_rep(kind_code, rep, node_of_row, involved, check, xp):
    """(n,) float32: 1 for byte and pixel twins of their representative, the
    check's similarity for near duplicates (NaN without a check), 0 elsewhere
    (masked out by the caller)."""
    out = xp.where((kind_code == 2) | (kind_code == 3), xp.float32(1.0), xp.float32(0.0)).astype(xp.float32)
    near = xp.nonzero(kind_code == 4)[0]
    if int(near.shape[0]) == 0:
        return out
    if not hasattr(check, "similarity"):
        out[near] = xp.nan
        return out
    a = xp.searchsorted(involved, node_of_row[near])
    b = xp.searchsorted(involved, node_of_row[rep[near]])
    out[near] = check.similarity(a, b, gate=False)
    return out


def _probe_results(probes: Probes, qi, qj, qpos, comp_node, node_of_row, n_real: int, check, xp, host,
                   floor=None) -> dict:
    """Recall per kind and false matches of the probes (see `gpupipe.stages.probe`).

    qi, qj: candidate (probe, node) pairs; qpos: position of each node among
    the nodes the check indexes; the probes' thumbnails follow at n_real + p.
    A probe is *found* when a verified pair links it to a node of its source's
    final group; every verified pair to any other node is a *false match*.
    """
    src_comp = comp_node[node_of_row[xp.asarray(probes.source_row)]]
    ok = check(n_real + qi, qpos, *(() if floor is None else (floor,))) if int(qi.shape[0]) \
        else xp.zeros(0, dtype=bool)
    same = comp_node[qj] == src_comp[qi]
    found = np.zeros(len(probes.kind), bool)
    proposed = np.zeros(len(probes.kind), bool)
    false = np.zeros(len(probes.kind), np.int64)
    qi_h, ok_h, same_h = host(qi), host(ok), host(same)
    found[qi_h[ok_h & same_h]] = True
    proposed[qi_h[same_h]] = True
    np.add.at(false, qi_h[ok_h & ~same_h], 1)
    out = {}
    for kind in dict.fromkeys(probes.kind.tolist()):
        sel = probes.kind == kind
        out[kind] = {"copies": int(sel.sum()), "found": int(found[sel].sum()),
                     "recall": round(float(found[sel].mean()), 4) if sel.any() else None,
                     "candidate_recall": round(float(proposed[sel].mean()), 4) if sel.any() else None,
                     "false_matches": int(false[sel].sum())}
    return out


def _spans(comp, codes, valid, xp):
    """Per row: does its component hold more than one distinct non-null code?"""
    n = comp.shape[0]
    keep = valid & (codes >= 0)
    if not bool(keep.any()):
        return xp.zeros(n, dtype=bool)
    k = int(codes.max()) + 1
    pairs = unique(comp[keep] * k + codes[keep], xp)
    distinct = xp.bincount(pairs // k, minlength=int(comp.max()) + 1)
    out = xp.zeros(n, dtype=bool)
    out[valid] = distinct[comp[valid]] > 1
    return out


# ----------------------------------------------------------------------------- a person's group decisions
GROUP_ACTIONS = ("split", "keep")

GROUP_LOG_SCHEMA = pa.schema([
    ("sample_id", pa.int64()), ("rel_path", pa.string()), ("action", pa.string()),
    ("group_before", pa.int64()), ("source", pa.string()), ("unix_time", pa.float64()),
])


def apply_group_decisions(frame, ledger: Ledger, log: pa.Table | None):
    """A person's corrections of the groups, applied over the dedup columns
    (``group_decisions.parquet``, in the order they were made):

    * ``split``: the row was wrongly merged; it leaves its group and stands
      alone (unique, kept).  Its old group keeps its other members (a new
      representative if it was the kept one).
    * ``keep``: the row becomes its group's kept representative.

    Decisions are keyed by sample_id, so they hold across a new dedup run
    (`gpupipe.runner` applies them after every dedup): a split row stays out of
    whatever group the hashes put it in; a kept row leads whatever group it is
    in.  Rows no longer in the ledger or now invalid are ignored.  Only the
    groups a decision touches are recomputed (host numpy: decisions are few).
    Returns (frame, {"applied": n, "ignored": m})."""
    if log is None or log.num_rows == 0:
        return frame, {"applied": 0, "ignored": 0}
    ids, _ = ledger.host(frame, schema.SAMPLE_ID)
    group, valid = ledger.host(frame, schema.DEDUP_GROUP)
    pos = pd.Index(ids).get_indexer(np.asarray(log.column("sample_id").to_numpy(), np.int64))
    actions = log.column("action").to_pylist()
    comp = np.full(len(ids), -1, np.int64)            # group codes 0..G-1; split rows get G, G+1, ...
    codes, uniq = pd.factorize(group[valid])
    comp[valid] = codes
    forced: dict[int, int] = {}
    touched: set[int] = set()
    fresh = len(uniq)
    applied = 0
    for p, action in zip(pos, actions):
        if p < 0 or not valid[p] or action not in GROUP_ACTIONS:
            continue
        applied += 1
        touched.add(int(comp[p]))
        if action == "split":
            if forced.get(int(comp[p])) == p:
                del forced[int(comp[p])]
            comp[p] = fresh
            fresh += 1
        else:
            forced[int(comp[p])] = int(p)
        touched.add(int(comp[p]))
    ignored = log.num_rows - applied
    if not touched:
        return frame, {"applied": 0, "ignored": ignored}
    rank, _ = _representative_rank(frame, ledger)
    rank = ledger.device.to_host(rank)
    cols = {c: list(ledger.host(frame, c)) for c in (
        schema.DEDUP_GROUP, schema.DEDUP_DUPLICATE_OF, schema.DEDUP_KIND, schema.DEDUP_DISTANCE,
        schema.DEDUP_SIMILARITY, schema.DEDUP_GROUP_SIZE, schema.DEDUP_KEEP, schema.DEDUP_LABEL_CONFLICT,
        schema.DEDUP_SPLIT_LEAK)}
    byte, _ = ledger.host(frame, schema.BYTES_HASH)
    pix, _ = ledger.host(frame, schema.PIXELS_HASH)
    ph, _ = ledger.host(frame, schema.PHASH)
    label, _ = ledger.host(frame, schema.LABEL)
    split, _ = ledger.host(frame, schema.SPLIT)
    old_rep = np.where(cols[schema.DEDUP_GROUP][1], cols[schema.DEDUP_GROUP][0], 0)
    for key in touched:
        members = np.flatnonzero(valid & (comp == key))
        if len(members) == 0:
            continue
        rep = forced.get(key)
        if rep is None or rep not in members:
            rep = int(members[np.argmin(rank[members])])
        n = len(members)
        others = members[members != rep]

        def put(name, where, value, ok=True):
            cols[name][0][where] = value
            cols[name][1][where] = ok

        put(schema.DEDUP_GROUP, members, ids[rep])
        put(schema.DEDUP_GROUP_SIZE, members, n)
        put(schema.DEDUP_KEEP, members, False)
        put(schema.DEDUP_KEEP, rep, True)
        put(schema.DEDUP_DUPLICATE_OF, rep, 0, False)
        put(schema.DEDUP_DUPLICATE_OF, others, ids[rep])
        put(schema.DEDUP_KIND, rep, schema.KIND_UNIQUE if n == 1 else schema.KIND_REPRESENTATIVE)
        put(schema.DEDUP_DISTANCE, rep, 0)
        put(schema.DEDUP_SIMILARITY, rep, 0.0, False)
        if len(others):
            twin = np.where(byte[others] == byte[rep], schema.KIND_BYTES,
                            np.where(pix[others] == pix[rep], schema.KIND_PIXELS, schema.KIND_NEAR))
            put(schema.DEDUP_KIND, others, twin.astype(object))
            put(schema.DEDUP_DISTANCE, others,
                np.array([bin(int(h) ^ int(ph[rep])).count("1") for h in ph[others]], np.int16))
            # A near row's similarity was measured against the old representative; unknown after a change.
            same_rep = old_rep[others] == ids[rep]
            sim = cols[schema.DEDUP_SIMILARITY][0]
            put(schema.DEDUP_SIMILARITY, others,
                np.where(twin == schema.KIND_NEAR, np.where(same_rep, sim[others], np.nan), 1.0).astype(np.float32),
                (twin != schema.KIND_NEAR) | same_rep)
        for name, values in ((schema.DEDUP_LABEL_CONFLICT, label), (schema.DEDUP_SPLIT_LEAK, split)):
            distinct = {v for v in values[members] if v is not None}
            put(name, members, len(distinct) > 1)
    return ledger.assign(frame, {name: (v, m) for name, (v, m) in cols.items()}), \
        {"applied": applied, "ignored": ignored}
