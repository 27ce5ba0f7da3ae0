"""The outlier ("no class") score: how far a sample lies from the images the
auxiliary model was trained on, in that model's own features.

Deep nearest neighbours (Sun, Ming, Zhu and Li, "Out-of-distribution
detection with deep nearest neighbors", ICML 2022), with two changes
measured on planted images of no class (benchmarks/RESULTS.md §15):

* the features are not only the classifier's input but every resolution of
  the network (`gpupipe.models.score.feature_taps`: each pooling layer's
  input, averaged over space, L2-normalised, concatenated);
* the neighbours are counted *within each class* of the reference: a
  sample's distance is, over the classes, the smallest distance to its
  ``k``-th nearest reference row of that class.  The reference is the
  model's training rows (at most `REF_MAX`, drawn with a seed), and those
  hold images of no class too, filed under random classes.  With one global
  k-NN, any kind of junk with more than ``k`` copies in the reference finds
  its own kind and looks typical (Fashion-MNIST, 10,000 images with 3% of
  four kinds of junk: ~45 of each kind in a fold's reference; random-noise
  AP 0.75 at k=50).  Within a class it takes ``k`` copies in *one* class
  folder: ``k x classes`` in all.

The score is that distance's robust z-score among all the rows the same
model scored (`robust_z`: minus their median, over 1.4826 x their median
absolute deviation), so the scores of different models (the folds of
``oof`` mode, the rounds) share one scale, whatever the size of the
reference (a 200-image seed set makes every unseen image "far" in absolute
terms) and however spread the features are:

    ~0    as typical as the rows scored
    >= 5  far from every class: blank or cropped scans, scribbles, images of
          another dataset (`FAR`; RESULTS.md §15)

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

#: The score from which a row counts as far from every class: in the review
#: order and the suggested action a person sees, and a row this far is not
#: flagged as mislabeled (`gpupipe.stages.rank`).  Chosen on digits (the
#: lowest threshold at which one round's "remove" rule damaged no clean digit:
#: 51 of 54 planted images of no class, 0 clean), judged on Fashion-MNIST
#: (160 of 298, 3 clean rows more than without the rule; the score before
#: §15 at its threshold 4: 149 and 25): benchmarks/RESULTS.md §15.
FAR = 5.0
REF_MAX = 16384      # reference rows per model (a seeded random subset of its training rows)
# k: 20 neighbours within a class.  Chosen on Fashion-MNIST with planted junk
# (benchmarks/bench_outlier_features.py, symmetric flips: k=5 0.45, 10 0.81,
# 20 0.86, 30 0.85 outlier AP; digits scored 0.99 at every k from 5 to 30),
# judged on the class-pair sets (RESULTS.md §15).  Before, one global k-NN
# with k=50: a look-alike cluster hid below 50 copies in the whole reference.
# Measured in oof mode only: in certified mode a 200-image seed set has ~18
# rows per class, fewer than k, and a class counts its farthest seed row.
K = 20


def is_far(score: np.ndarray, valid: np.ndarray | None = None, *, threshold: float = FAR) -> np.ndarray:
    """bool (N,): the outlier ``score`` is at least ``threshold`` (`FAR`), where
    it is known (NaN, or ``valid`` False: not far)."""
    far = np.nan_to_num(np.asarray(score, np.float64), nan=-np.inf) >= threshold
    return far if valid is None else far & np.asarray(valid, bool)


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


def knn_distances(scored: np.ndarray, ref: np.ndarray, ref_labels: np.ndarray | None = None, *, k: int = K,
                  device: str = "cpu") -> np.ndarray:
    """``scored (N, D)`` and ``ref (R, D)`` features of one model, ``ref_labels
    (R,)`` the reference rows' classes -> float32 ``(N,)``: over the classes,
    the smallest distance of each scored row to its k-th nearest reference row
    of that class (``ref_labels`` None: one class).  NaN without a reference.
    A class with fewer than k reference rows counts its farthest one."""
    if len(ref) == 0 or len(scored) == 0:
        return np.full(len(scored), np.nan, np.float32)
    labels = np.zeros(len(ref), np.int64) if ref_labels is None else np.asarray(ref_labels)
    with torch.inference_mode():
        q, r = normalise(scored, device), normalise(ref, device)
        best = None
        for c in np.unique(labels):
            d = kth_distance(q, r[torch.as_tensor(np.flatnonzero(labels == c), device=r.device)], k)
            best = d if best is None else torch.minimum(best, d)
        return best.cpu().numpy().astype(np.float32)


#: Neighbours in the reference that vote for a row's class (`knn_vote`), in the
#: outlier score's features (every block); capped at half a class's average
#: reference rows (a 200-image seed set: 10).  benchmarks/bench_flag_signals.py
#: tried k=10 and 30 on every block and on the classifier's input: on digits
#: they were level (F1 within 0.01 mixed with the model), and every block is
#: what rank already holds; judged on Fashion-MNIST and on other images and
#: seeds: RESULTS.md §16.
VOTE_K = 30


def knn_vote(scored: np.ndarray, ref: np.ndarray, ref_labels: np.ndarray, num_classes: int, *, k: int = VOTE_K,
             device: str = "cpu", chunk: int = 2048) -> np.ndarray:
    """``scored (N, D)`` and ``ref (R, D)`` features of one model, ``ref_labels
    (R,)`` the reference rows' current classes -> float32 ``(N, num_classes)``:
    each class's share among the row's ``k`` nearest reference rows (cosine),
    with one vote of each class added (never 0).  A second opinion on the
    label beside the model's probabilities, from the images the model trained
    on rather than from its last layer (`gpupipe.models.score.flag_label_issues`).
    NaN without a reference."""
    if len(ref) == 0 or len(scored) == 0:
        return np.full((len(scored), num_classes), np.nan, np.float32)
    k = max(1, min(k, len(ref) // (2 * num_classes)))
    out = np.empty((len(scored), num_classes), np.float32)
    with torch.inference_mode():
        q, r = normalise(scored, device), normalise(ref, device)
        yr = torch.as_tensor(np.asarray(ref_labels, np.int64), device=r.device)
        for i in range(0, len(q), chunk):
            idx = (q[i:i + chunk] @ r.T).topk(k, dim=1).indices
            votes = torch.nn.functional.one_hot(yr[idx], num_classes).sum(1).float()
            out[i:i + chunk] = ((votes + 1.0) / (k + num_classes)).cpu().numpy()
    return out


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
