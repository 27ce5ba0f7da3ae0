"""The outlier ("no class") score: how far a sample lies from the images the
auxiliary model was trained on, in that model's own embedding.

Deep nearest neighbours (Sun, Ming, Zhu and Li, "Out-of-distribution
detection with deep nearest neighbors", ICML 2022): the embedding is the
input of the model's last linear layer, L2-normalised; a sample's distance
is the one to its ``k``-th nearest reference embedding (the reference: the
model's training rows, at most `REF_MAX` of them, drawn with a seed).  The
score is that distance's robust z-score among all the rows the same model
scored (`robust_z`: minus their median, over 1.4826 x their median absolute
deviation), so the scores of different models (the folds of ``oof`` mode,
the rounds) share one scale, whatever the size of the reference (a
200-image seed set makes every unseen image "far" in absolute terms) and
however spread the embedding is:

    ~0    as typical as the rows scored
    >= 4  far from every class: blank or cropped scans, scribbles, images of
          another dataset (`stages.review.FAR`, chosen on digits and judged
          on Fashion-MNIST: benchmarks/RESULTS.md §10)

The loss of the given label cannot see these: a blank image's loss is
middling whatever its label.  Brute force in chunks of queries on the
model's device (torch ``mm`` + ``topk``), against a reference capped at
`REF_MAX` rows: time is linear in the rows scored, memory bounded by
``chunk x REF_MAX``.  (A library index such as faiss would add a dependency
for what a capped brute-force does exactly and deterministically.)
"""

from __future__ import annotations

import numpy as np
import torch

REF_MAX = 16384      # reference rows per model (a seeded random subset of its training rows)
# k: 50, as Sun et al. use on CIFAR.  Measured on digits with planted outliers
# (benchmarks/bench_outlier.py): k=10 let 15 random-noise images find each
# other as neighbours (noise AP 0.47); with k=50 a cluster of fewer than 50
# look-alike outliers cannot hide itself (noise AP 1.0).
K = 50


def kth_distance(queries: torch.Tensor, ref: torch.Tensor, k: int, *, exclude_self: bool = False,
                 chunk: int = 2048) -> torch.Tensor:
    """``queries (Q, D)``, ``ref (R, D)``, both L2-normalised float32 on one
    device -> ``(Q,)`` Euclidean distance to each query's ``k``-th nearest
    row of ``ref`` (``exclude_self``: queries are ``ref`` itself, in order,
    and a row is not its own neighbour).  k is capped at the rows available."""
    r = ref.shape[0]
    k = max(1, min(k, r - 1 if exclude_self else r))
    out = torch.empty(queries.shape[0], dtype=torch.float32, device=queries.device)
    for i in range(0, queries.shape[0], chunk):
        sim = queries[i:i + chunk] @ ref.T                     # cosine similarity (Q_chunk, R)
        if exclude_self:
            idx = torch.arange(i, min(i + chunk, queries.shape[0]), device=sim.device)
            sim[idx - i, idx] = -2.0
        kth = sim.topk(k, dim=1).values[:, -1]
        out[i:i + chunk] = (2.0 - 2.0 * kth).clamp_min(0).sqrt()
    return out


def normalise(emb: np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(emb, np.float32) if isinstance(emb, np.ndarray) else emb.float(), device=device)
    return torch.nn.functional.normalize(t, dim=1)


def knn_distances(scored: np.ndarray, ref: np.ndarray, *, k: int = K, device: str = "cpu") -> np.ndarray:
    """``scored (N, D)`` and ``ref (R, D)`` embeddings of one model -> float32
    ``(N,)`` distance of each scored row to its k-th nearest reference row
    (NaN without a reference)."""
    if len(ref) == 0 or len(scored) == 0:
        return np.full(len(scored), np.nan, np.float32)
    with torch.inference_mode():
        return kth_distance(normalise(scored, device), normalise(ref, device), k).cpu().numpy().astype(np.float32)


def robust_z(distances: list[np.ndarray]) -> list[np.ndarray]:
    """The distances of the rows one model scored (in parts) -> the outlier
    scores: each distance's robust z-score among them all (minus the median,
    over 1.4826 x the median absolute deviation; higher = farther from every
    class).  A ratio to the median was tried first: a threshold of 2 chosen
    on digits removed 174 more clean Fashion-MNIST rows than without it, the
    z-score's 4 removed 40 (the embedding of a weaker model is more spread)."""
    pooled = np.concatenate(distances) if distances else np.zeros(0, np.float32)
    ok = pooled[np.isfinite(pooled)]
    if len(ok) < 2:
        return [np.full(len(d), np.nan, np.float32) for d in distances]
    median = np.median(ok)
    spread = 1.4826 * np.median(np.abs(ok - median))
    if not spread > 0:
        return [np.full(len(d), np.nan, np.float32) for d in distances]
    return [((d - median) / spread).astype(np.float32) for d in distances]


def reference_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """At most `REF_MAX` of ``rows``, a seeded random subset in their order."""
    if len(rows) <= REF_MAX:
        return rows
    pick = np.random.default_rng(seed).choice(len(rows), REF_MAX, replace=False)
    return rows[np.sort(pick)]
