"""Dedup stage: turn the hash columns into duplicate groups (global, cheap).

Stage 1 (identical bytes) already spared decoding in the hash stage; byte
twins are always pixel twins too, so grouping starts from the pixel hash:
- stage 2: rows with the same exact pixel hash form one node;
- stage 3: the pHash of one row per node goes to the bounded near-neighbour
  search (`gpupipe.hashing.neighbors`), pairs within ``max_distance`` bits are
  verified there, and connected components of those edges are the groups.
Candidates are then checked again on their 32x32 thumbnails
(`gpupipe.hashing.verify`: a 256-bit DCT hash by default), since 64 bits
alone match many unrelated small images.  Per group one representative is kept, chosen deterministically: most pixels,
then lossless before JPEG, then largest file, then first relative path.
Groups with more than one label are label conflicts; groups spanning more
than one split are split leaks.  Invalid rows get no group and are not kept.

Reads: sample_id, label, split, ingest_file_bytes and the hash columns.
Adds: `schema.DEDUP`.  Array math runs over the device's xp; only the small
edge list goes through SciPy's connected components on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from gpupipe import schema
from gpupipe.hashing.neighbors import hamming, near_pairs
from gpupipe.hashing.verify import (
    DEFAULT_MAX_FINE_DISTANCE, DEFAULT_MAX_THUMB_DISTANCE, VerifyMode, pair_check,
)
from gpupipe.table import Ledger, check_columns
from gpupipe.xputil import min_per_group, run_starts, unique

READS = (
    schema.SAMPLE_ID, schema.LABEL, schema.SPLIT, schema.FILE_BYTES, schema.IMAGE_FORMAT,
    schema.IMAGE_WIDTH, schema.IMAGE_HEIGHT, schema.IS_INVALID, schema.BYTES_HASH,
    schema.PIXELS_HASH, schema.PHASH,
)
DEFAULT_MAX_DISTANCE = 8
LOSSY_FORMATS = ("jpeg",)


@dataclass(frozen=True)
class DedupConfig:
    max_distance: int | None = None          # pHash Hamming threshold; None -> DEFAULT_MAX_DISTANCE
    verify: VerifyMode = "fine"              # second check of pHash candidates (gpupipe.hashing.verify)
    max_fine_distance: int | None = None     # for verify="fine": bits of 256
    max_thumb_distance: float | None = None  # for verify="thumbs"
    seed: int = 0                            # for the near-neighbour search's bit permutations

    def resolved_distance(self) -> int:
        return DEFAULT_MAX_DISTANCE if self.max_distance is None else int(self.max_distance)

    def resolved_verify(self) -> dict:
        """The verification actually applied, for the run summary."""
        if self.verify == "fine":
            return {"mode": "fine", "max_fine_distance":
                    DEFAULT_MAX_FINE_DISTANCE if self.max_fine_distance is None else self.max_fine_distance}
        if self.verify == "thumbs":
            return {"mode": "thumbs", "max_thumb_distance":
                    DEFAULT_MAX_THUMB_DISTANCE if self.max_thumb_distance is None else self.max_thumb_distance}
        return {"mode": "none"}


@dataclass
class DedupStats:
    nodes: int = 0            # distinct decoded pictures (after stages 1-2)
    candidates: int = 0       # pHash edges within max_distance (stage 3)
    verified: int = 0         # of those, passing the thumbnail check
    split_groups: int = 0     # extra groups from splitting chained components


def dedup(frame, ledger: Ledger, config: DedupConfig = DedupConfig(), *, thumbs=None):
    """Add the `schema.DEDUP` columns to ``frame`` (one row per sample).

    thumbs: optional (N, 32, 32) uint8 array aligned with ``frame``'s rows (the
    hash stage's thumbnails); when given and ``config.verify``, pHash candidates
    must also pass `gpupipe.hashing.verify.pair_check`.
    Returns (frame with the new columns, DedupStats).
    """
    check_columns(frame, READS, where="dedup")
    xp = ledger.xp
    n = len(frame)
    valid = ~ledger.array(frame, schema.IS_INVALID, fill=True, dtype=bool)
    pix = ledger.codes(frame, schema.PIXELS_HASH)
    valid &= pix >= 0
    byte = ledger.codes(frame, schema.BYTES_HASH)
    ph = ledger.array(frame, schema.PHASH, fill=0, dtype=np.uint64)

    # Stage 2: one node per distinct pixel hash; its first row stands for it.
    rows_valid = xp.nonzero(valid)[0]
    node_codes, node_first, node_of_valid = unique(pix[rows_valid], xp, return_index=True, return_inverse=True)
    first_rows = rows_valid[node_first]
    # Stage 3: bounded near-neighbour search over one pHash per node.
    ei, ej, _ = near_pairs(ph[first_rows], max_distance=config.resolved_distance(), xp=xp, seed=config.seed)
    m = int(node_codes.shape[0])
    stats = DedupStats(nodes=m, candidates=int(ei.shape[0]))
    # One check over the images that have a candidate (thumbnails moved and,
    # for "fine", 256-bit hashes computed once each); the chain split reuses it.
    mode = config.verify if thumbs is not None else "none"
    involved, pos = unique(xp.concatenate([ei, ej]), xp, return_inverse=True)
    check = pair_check(xp.asarray(thumbs[ledger.device.to_host(first_rows[involved])]) if mode != "none" else None,
                       mode=mode, max_fine_distance=config.max_fine_distance,
                       max_thumb_distance=config.max_thumb_distance, xp=xp)
    if stats.candidates:
        ok = check(pos[:stats.candidates], pos[stats.candidates:])
        ei, ej = ei[ok], ej[ok]
    stats.verified = int(ei.shape[0])
    ei_h, ej_h = ledger.device.to_host(ei), ledger.device.to_host(ej)
    graph = coo_matrix((np.ones(len(ei_h), np.int8), (ei_h, ej_h)), shape=(m, m))
    _, comp_of_node = connected_components(graph, directed=False)

    rank, row_of_rank = _representative_rank(frame, ledger)
    node_of_valid = node_of_valid.ravel()
    node_rank = min_per_group(rank[rows_valid], node_of_valid, m, xp)
    comp_node = _split_chains(xp.asarray(comp_of_node, dtype=xp.int64), node_rank, ph[first_rows],
                              involved, check, config.resolved_distance(), stats, xp)
    comp = xp.full(n, -1, dtype=xp.int64)
    comp[rows_valid] = comp_node[node_of_valid]
    # Representative: the best-ranked row of each group.
    n_labels = int(comp.max()) + 1 if int(rows_valid.shape[0]) else 0
    rep_of_comp = row_of_rank[min_per_group(rank[rows_valid], comp[rows_valid], n_labels, xp)]
    row = xp.arange(n, dtype=xp.int64)
    rep = xp.full(n, -1, dtype=xp.int64)
    rep[valid] = rep_of_comp[comp[valid]]

    ids = ledger.array(frame, schema.SAMPLE_ID, dtype=np.int64)
    size_of_comp = xp.bincount(comp[valid], minlength=n_labels)
    size = xp.zeros(n, dtype=xp.int64)
    size[valid] = size_of_comp[comp[valid]]
    is_rep = valid & (rep == row)
    safe_rep = xp.where(valid, rep, row)
    same_bytes = byte == byte[safe_rep]
    same_pix = pix == pix[safe_rep]
    kind_code = xp.where(size == 1, 0, xp.where(is_rep, 1, xp.where(same_bytes, 2, xp.where(same_pix, 3, 4))))
    kinds = np.asarray(schema.DEDUP_KINDS, dtype=object)[ledger.device.to_host(kind_code)]
    dist = hamming(ph, ph[safe_rep], xp=xp).astype(xp.int16)

    label_conflict = _spans(comp, ledger.codes(frame, schema.LABEL), valid, xp)
    split_leak = _spans(comp, ledger.codes(frame, schema.SPLIT), valid, xp)
    return (ledger.assign(frame, {
        schema.DEDUP_GROUP: (ids[safe_rep], valid),
        schema.DEDUP_DUPLICATE_OF: (ids[safe_rep], valid & ~is_rep),
        schema.DEDUP_KIND: (kinds, valid),
        schema.DEDUP_DISTANCE: (dist, valid),
        schema.DEDUP_GROUP_SIZE: (size.astype(xp.int32), valid),
        schema.DEDUP_KEEP: (is_rep, None),
        schema.DEDUP_LABEL_CONFLICT: (label_conflict, None),
        schema.DEDUP_SPLIT_LEAK: (split_leak, None),
    }), stats)


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


def _split_chains(comp, node_rank, node_ph, involved, check, limit: int, stats: DedupStats, xp):
    """Split connected components so that every node is itself within the
    thresholds of its group's leader: no chains of A~B~C where A and C differ.

    comp: (m,) component per node; node_rank: (m,) priority (lower is better);
    node_ph: (m,) pHashes; involved: sorted node ids that ``check`` indexes
    (every node of a 3+ component has a verified edge, so it is among them).
    Components of 3+ nodes are peeled leader by leader: the best-ranked node
    not yet placed leads, and every unplaced node of its component that passes
    the pHash threshold and the check against it joins it.  Returns (m,) labels.
    """
    m = int(comp.shape[0])
    if m == 0:
        return comp
    sizes = xp.bincount(comp)
    todo = xp.nonzero(sizes[comp] > 2)[0]
    if int(todo.shape[0]) == 0:
        return comp
    at = xp.searchsorted(involved, todo)                   # todo -> position in `check`
    c, r, ph = comp[todo], node_rank[todo], node_ph[todo]
    label = xp.full(int(todo.shape[0]), -1, dtype=xp.int64)
    pending = xp.arange(int(todo.shape[0]))
    while int(pending.shape[0]):
        order = pending[xp.lexsort(xp.stack([r[pending], c[pending]]))]
        leaders = order[run_starts(c[order], xp)]         # best pending node of each component
        lead = leaders[xp.searchsorted(c[leaders], c[pending])]
        ok = (hamming(ph[pending], ph[lead], xp=xp) <= limit) & check(at[pending], at[lead])
        ok |= pending == lead
        label[pending[ok]] = lead[ok]
        pending = pending[~ok]
    out = comp.copy()
    base = int(comp.max()) + 1                            # fresh labels after the old ones
    out[todo] = base + todo[label]
    stats.split_groups = int(unique(out[todo], xp).shape[0]) - int(unique(c, xp).shape[0])
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
