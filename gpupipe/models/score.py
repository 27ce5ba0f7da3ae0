"""Batched per-sample scores: loss, predicted class, probability of the given
label, margin and the full probability vector.

`per_sample` is the pure kernel (torch, any device); `score` runs a model over
an epoch of model-input batches in inference mode (bf16 autocast on CUDA) and
returns host arrays aligned with the rows it was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Scores:
    """Per-sample results for ``rows`` (int64 (N,), positions the caller chose).

    loss: float32 (N,) cross-entropy of the given label (nats; higher = more suspect).
    pred: int64 (N,) the model's most probable class (the suggested label).
    prob_given: float32 (N,) probability of the given label, 0..1 (lower = more suspect).
    margin: float32 (N,) prob_given minus the largest other probability, -1..1
        (negative: the model prefers another label).
    probs: float32 (N, K) softmax probabilities.
    """

    rows: np.ndarray
    loss: np.ndarray
    pred: np.ndarray
    prob_given: np.ndarray
    margin: np.ndarray
    probs: np.ndarray


def per_sample(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``logits (B, K)`` float, ``labels (B,)`` int64 in 0..K-1 -> dict of (B,) tensors and probs (B, K)."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=1)
    probs = logp.exp()
    given = probs.gather(1, labels[:, None])[:, 0]
    other = probs.scatter(1, labels[:, None], -1.0).amax(dim=1)
    return {
        "loss": -logp.gather(1, labels[:, None])[:, 0],
        "pred": probs.argmax(dim=1),
        "prob_given": given,
        "margin": given - other,
        "probs": probs,
    }


FLUSH_BATCHES = 64   # batches of results kept on the device before one copy to the host


@torch.inference_mode()
def score(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, np.ndarray]], labels: np.ndarray,
          *, torch_device: str) -> Scores:
    """Score one epoch of ``(x (B, C, S, S), rows (B,))`` batches; ``labels[row]`` is each row's class.

    Results come back in the order the batches gave them.
    """
    model.eval().to(torch_device)
    cuda = torch_device.startswith("cuda")
    labels_t = torch.tensor(np.asarray(labels, np.int64), device=torch_device)
    parts: dict[str, list] = {k: [] for k in ("rows", "loss", "pred", "prob_given", "margin", "probs")}
    pending: dict[str, list] = {k: [] for k in parts if k != "rows"}

    def flush() -> None:
        # One device->host copy per column every FLUSH_BATCHES batches, not six
        # synchronising copies per batch: that cost 44% of a small CNN's
        # throughput on an H200 (benchmarks/gpu_check.py).
        for k, v in pending.items():
            if v:
                parts[k].append(torch.cat(v).cpu().numpy())
                v.clear()

    for b, (x, rows) in enumerate(batches):
        x = x.to(torch_device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
        out = per_sample(logits, labels_t[torch.as_tensor(rows, device=torch_device)])
        parts["rows"].append(np.asarray(rows, np.int64))
        for k, v in out.items():
            pending[k].append(v)
        if (b + 1) % FLUSH_BATCHES == 0:
            flush()
    flush()
    if not parts["rows"]:
        return Scores(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64),
                      np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 0), np.float32))
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Scores(cat["rows"], cat["loss"].astype(np.float32), cat["pred"].astype(np.int64),
                  cat["prob_given"].astype(np.float32), cat["margin"].astype(np.float32),
                  cat["probs"].astype(np.float32))


def flag_label_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Flag likely label errors: ``labels (N,)`` class indices, ``probs (N, K)``
    (out-of-sample probabilities) -> bool (N,), True = likely mislabeled.

    How many: as many as cleanlab's ``find_label_issues`` finds with its
    defaults (confident learning, pruned by the estimated noise rates).
    Which: that many rows with the lowest probability of their label (the
    highest loss) over the whole set, ties broken by the lower margin.

    cleanlab picks its rows within each (given, predicted) class pair; one
    global loss order picks better at the same count (F1 0.975 vs 0.901 on
    digits, 0.630 vs 0.590 on Fashion-MNIST, 10% planted flips: see
    benchmarks/RESULTS.md).
    """
    from cleanlab.filter import find_label_issues  # imported on use: it pulls scikit-learn

    n, k = probs.shape
    flags = np.zeros(n, bool)
    if n == 0 or k < 2 or len(np.unique(labels)) < 2:
        return flags
    count = int(find_label_issues(labels, probs, n_jobs=1).sum())
    given = probs[np.arange(n), labels]
    other = np.where(np.eye(k, dtype=bool)[labels], -1.0, probs).max(axis=1)
    order = np.lexsort((given - other, given))
    flags[order[:count]] = True
    return flags
