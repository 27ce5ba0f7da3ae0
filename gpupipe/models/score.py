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

from gpupipe.models import nets


@dataclass
class Scores:
    """Per-sample results for ``rows`` (int64 (N,), positions the caller chose).

    loss: float32 (N,) cross-entropy of the given label (nats; higher = more suspect).
    pred: int64 (N,) the model's most probable class (the suggested label).
    prob_given: float32 (N,) probability of the given label, 0..1 (lower = more suspect).
    margin: float32 (N,) prob_given minus the largest other probability, -1..1
        (negative: the model prefers another label).
    probs: float32 (N, K) softmax probabilities.
    embedding: float32 (N, D) the outlier score's features (`feature_taps`), when
        asked for (``score(embed=True)``); else None.
    outlier: float32 (N,) `gpupipe.models.outlier` score, when the caller
        computed it; else None.
    votes: float32 (N, K) `gpupipe.models.outlier.knn_vote`, when the caller
        computed it; else None.
    model_probs: float32 (N, M, K) each model's own probabilities where
        ``probs`` is the mean of M models' (`gpupipe.stages.rank`'s
        ``--models``); else None.
    """

    rows: np.ndarray
    loss: np.ndarray
    pred: np.ndarray
    prob_given: np.ndarray
    margin: np.ndarray
    probs: np.ndarray
    embedding: np.ndarray | None = None
    outlier: np.ndarray | None = None
    votes: np.ndarray | None = None
    model_probs: np.ndarray | None = None


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


FLUSH_BATCHES = 64   # batches of logits kept on the device before one pass of result kernels and one copy


def last_linear(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's last ``nn.Linear`` (its classifier head), or None."""
    found = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            found = m
    return found


POOLS = (torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)


def feature_taps(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Where the outlier score's features are read: the input of every pooling
    layer (the activations at each resolution, just before they are pooled:
    small-cnn's four blocks, resnet50-layer1's stem and residual stage), or,
    in a model without one, its last linear layer.

    Each tap's input is averaged over its height and width and L2-normalised,
    and the taps are concatenated, so every resolution weighs the same.  Only
    the last tap (the classifier's input) was used at first: the earlier
    blocks see what the classes share (strokes, texture, contrast), and a
    blank scan or random noise lies far from all of it whatever the labels
    (outlier AP on digits 0.90 -> 0.99, Fashion-MNIST 0.67 -> 0.77 with one
    global k-NN; benchmarks/RESULTS.md §15)."""
    taps = [m for m in model.modules() if isinstance(m, POOLS)]
    head = last_linear(model)
    return taps or ([head] if head is not None else [])


@torch.inference_mode()
def score(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, np.ndarray]], labels: np.ndarray,
          *, torch_device: str, embed: bool = False) -> Scores:
    """Score one epoch of ``(x (B, C, S, S), rows (B,))`` batches; ``labels[row]`` is each row's class.

    ``embed``: also return each row's features for the outlier score
    (`feature_taps`; None where the model has no tap).  Results come back in the
    order the batches gave them.
    """
    model.eval().to(torch_device)
    cuda = torch_device.startswith("cuda")
    labels_t = torch.tensor(np.asarray(labels, np.int64), device=torch_device)
    names = ("rows", "loss", "pred", "prob_given", "margin", "probs", "embedding")
    parts: dict[str, list] = {k: [] for k in names}
    logits_q: list[torch.Tensor] = []
    rows_q: list[np.ndarray] = []
    captured: list[torch.Tensor] = []
    tapped: list[torch.Tensor] = []          # this batch's tap features, in the order the taps ran

    def tap(_m, inp, _out) -> None:
        x = inp[0].float()
        tapped.append(F.normalize(x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1), dim=1))

    taps = feature_taps(model) if embed else []
    hooks = [t.register_forward_hook(tap) for t in taps]

    def flush() -> None:
        # The result kernels and the device->host copies once per FLUSH_BATCHES
        # batches, over their logits together: per batch, their fixed cost was
        # as large as a small CNN's forward on an H200 (benchmarks/gpu_check.py).
        if not logits_q:
            return
        rows = np.concatenate(rows_q)
        out = per_sample(torch.cat(logits_q), labels_t[torch.as_tensor(rows, device=torch_device)])
        parts["rows"].append(rows)
        for k, v in out.items():
            parts[k].append(v.cpu().numpy())
        if captured:
            parts["embedding"].append(torch.cat(captured).float().cpu().numpy())
        logits_q.clear(), rows_q.clear(), captured.clear()

    try:
        for b, (x, rows) in enumerate(batches):
            x = nets.as_input(x.to(torch_device, non_blocking=True))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits_q.append(model(x))
            if tapped:
                captured.append(torch.cat(tapped, dim=1))
                tapped.clear()
            rows_q.append(np.asarray(rows, np.int64))
            if (b + 1) % FLUSH_BATCHES == 0:
                flush()
        flush()
    finally:
        for h in hooks:
            h.remove()
    if not parts["rows"]:
        return Scores(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64),
                      np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 0), np.float32),
                      np.zeros((0, 0), np.float32) if taps else None)
    cat = {k: np.concatenate(v) for k, v in parts.items() if v}
    return Scores(cat["rows"], cat["loss"].astype(np.float32), cat["pred"].astype(np.int64),
                  cat["prob_given"].astype(np.float32), cat["margin"].astype(np.float32),
                  cat["probs"].astype(np.float32), cat.get("embedding"))


#: The neighbours' votes' share in what the flags read (`flag_label_issues`),
#: and how much of the estimated noise is spread evenly over the classes.
#: Chosen on digits (symmetric and class-pair flips) and on Fashion-MNIST
#: with symmetric flips (the even share: without it, the order lost 0.02 F1
#: there), judged on Fashion-MNIST with class-pair flips and on other images
#: and seeds of both: benchmarks/bench_flag_signals.py, RESULTS.md §16.
VOTE_SHARE = 0.5
EVEN_NOISE = 0.5


def with_votes(probs: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """The model's probabilities mixed with the neighbours' votes (`VOTE_SHARE`),
    element by element (float64; where a vote is NaN: the probability alone).
    Whole vectors ``(N, K)`` for the flags, or the current label's ``(N,)``
    for the review order (`gpupipe.stages.review.label_suspicion`)."""
    p, v = np.asarray(probs, np.float64), np.asarray(votes, np.float64)
    return np.where(np.isnan(v), p, (1 - VOTE_SHARE) * p + VOTE_SHARE * v)


def flag_label_issues(labels: np.ndarray, probs: np.ndarray, votes: np.ndarray | None = None, *,
                      models: int = 1, margins: np.ndarray | None = None) -> np.ndarray:
    """Flag likely label errors: ``labels (N,)`` class indices, ``probs (N, K)``
    (out-of-sample probabilities), ``votes (N, K)`` the neighbours' votes
    (`gpupipe.models.outlier.knn_vote`; None or NaN rows: none) -> bool (N,),
    True = likely mislabeled.

    What is read: the probabilities mixed with the votes (`VOTE_SHARE`), two
    opinions on the class: the model's last layer and the images it trained on.
    Which: the rows whose label is most likely wrong (`label_error_odds`), ties
    broken by the lower margin.  How many: `expected_f1_count`, with each row's
    probability of a wrong label from `label_posterior` (the estimate the
    automatic policy's gate reads), scaled to sum to `wrong_label_count`'s
    estimate of how many labels are wrong (``models``: how many models'
    probabilities ``probs`` averages, which that estimate reads).
    ``margins (N,)``: the rows' area under the margin while other models
    trained on them (`gpupipe.models.train.train`; NaN: none), a third
    opinion in the order (`flag_order`); the count is the expected-F1 count
    along that order, as without them.

    One global order picks better than cleanlab's choice within each (given,
    predicted) cell, and the noise-aware order better than the loss alone on
    class-pair flips (benchmarks/RESULTS.md §13, §16).  The count was
    cleanlab's ``find_label_issues``'s until RESULTS.md §29: from a model
    59-64% right that one flagged 25-29% of 10,000 CIFAR-10N photos with 9%
    wrong labels (precision 0.23-0.27), and curate leaves flagged rows out.
    Until §31 the posterior's probabilities were not scaled: on confident
    models they undercount the noise, and flag F1 on CIFAR-10N's judge part
    was 0.394 with a brought backbone (cleanlab 0.435), 0.488 now; 0.362
    with the default CNN, 0.403 now.
    """
    n, k = probs.shape
    flags = np.zeros(n, bool)
    if n == 0 or k < 2 or len(np.unique(labels)) < 2:
        return flags
    p = np.asarray(probs, np.float64) if votes is None else with_votes(probs, votes)
    order = flag_order(labels, p, margins)
    lp = label_posterior(labels, p)
    wrong = scaled_to(1.0 - lp.post[np.arange(n), labels],
                      wrong_label_count(labels, p, lp.noise_rate, models=models))
    flags[order[:expected_f1_count(wrong[order])]] = True
    return flags


def wrong_label_count(labels: np.ndarray, mix: np.ndarray, posterior_rate: float, *, models: int = 1) -> float:
    """How many of the rows' labels are wrong: the geometric mean of two
    estimates that err in opposite directions, ``labels (N,)``, ``mix (N, K)``
    the probabilities mixed with the votes, ``posterior_rate`` the noise rate
    `label_posterior` fitted to them; the larger of the two where ``mix``
    averages ``models >= 2`` models' probabilities (below).

    - `label_posterior`'s rate undercounts where the model has learned the
      noise: out-of-fold models trained on the noisy labels put mass on a
      wrong label of an ambiguous image, and its temperature reads that as
      the model's uncertainty.  The more confident and calibrated the model,
      the worse: linear heads on a brought backbone estimate 2.7-3.7% for
      8.9-9.1% real annotator mistakes on CIFAR-10N.
    - cleanlab's count (``cleanlab.count.num_label_issues``, its calibrated
      confident joint) counts the model's own mistakes as wrong labels: 21%
      from a model 58-59% right there, 13% from one 69-70% right.

    Neither is identifiable from the probabilities alone (real annotators err
    where the image is ambiguous, where the model errs too).  Chosen on
    CIFAR-10N's choose part and judged on its judge part, ``worse``, digits
    and Fashion-MNIST: benchmarks/bench_noise_rate.py, RESULTS.md §31.

    The mean of two models is more accurate and less sure of itself where
    they disagree, and the posterior's rate falls further (CIFAR-10N:
    3.9-4.3% for 8.9-9.1% wrong, against 4.8-5.1% from one model) while
    cleanlab's count falls towards the truth (10.2-10.6%, against
    11.6-12.6%): there the larger of the two is the count.  Chosen on
    CIFAR-10N's choose part (F1 0.491 -> 0.515), judged on its judge part
    (0.459 -> 0.502); with two models on the gray sets even on digits
    (0.976, 0.989), on Fashion-MNIST -0.011 with symmetric flips (0.777 ->
    0.766) and +0.002 with class-pair flips (RESULTS.md §35)."""
    from cleanlab.count import num_label_issues

    n = len(labels)
    cl = float(num_label_issues(labels, mix))
    if models >= 2:
        return max(max(posterior_rate, 0.0) * n, cl)
    return float(np.sqrt(max(posterior_rate, 0.0) * n * cl))


def scaled_to(wrong: np.ndarray, total: float) -> np.ndarray:
    """``wrong (N,)`` probabilities times the one factor that makes their sum,
    each clipped at 1, ``total`` (found by bisection; the shape of ``wrong``
    along the flags' order is kept, so `expected_f1_count` still cuts where it
    falls; where fewer than ``total`` rows have any chance of a wrong label,
    those rows at 1).  Unchanged when ``wrong`` sums to 0 or ``total`` is not
    below N."""
    w = np.asarray(wrong, np.float64)
    if w.sum() <= 0 or total >= len(w):
        return w
    lo, hi = 0.0, len(w) / w.sum() + 1.0        # unclipped, w * hi would sum past N >= total
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(w * mid, 1.0).sum() < total else (lo, mid)
    return np.minimum(w * lo, 1.0)


def flag_order(labels: np.ndarray, mix: np.ndarray, margins: np.ndarray | None = None) -> np.ndarray:
    """The order rows are flagged in (`flag_label_issues`): ``mix (N, K)`` the
    probabilities mixed with the votes -> positions, the likeliest wrong label
    first (`label_error_odds`), ties broken by the lower margin.

    ``margins (N,)``: each row's area under the margin while the other folds'
    models trained on it (NaN: none).  Then the order is by the mean of the
    rows' percentiles by the odds and by the margin (`with_margin`).  On CIFAR-10N (one fold model each,
    outside the pipeline, F1 at the true count): the held-out probability
    0.518 / 0.487 (choose / judge), the margin 0.533 / 0.510, the mean of
    ranks 0.538 / 0.516 (benchmarks/bench_photo_recipe.py --save, RESULTS.md
    §36)."""
    n, k = mix.shape
    given = mix[np.arange(n), labels]
    other = np.where(np.eye(k, dtype=bool)[labels], -1.0, mix).max(axis=1)
    odds = label_error_odds(labels, mix)
    if margins is None:
        return np.lexsort((given - other, -odds))
    return np.lexsort((given - other, -odds, -with_margin(odds, margins)))


def with_margin(suspect: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """(N,) in (0, 1], higher = more suspect: the mean of each row's percentile
    by ``suspect`` (higher = more suspect; NaN: unscored, NaN out) and by its
    area under the margin ``margins`` (lower = more suspect; NaN: none, and
    the row's ``suspect`` percentile counts twice).  Percentiles, not values:
    the two share no scale, and an even mean has no parameter to fit."""
    from scipy.stats import rankdata

    s = np.asarray(suspect, np.float64)
    m = np.asarray(margins, np.float64)
    ok = np.isfinite(s)
    ps = np.full(len(s), np.nan)
    ps[ok] = rankdata(s[ok]) / max(int(ok.sum()), 1)
    has = ok & np.isfinite(m)
    pm = ps.copy()
    pm[has] = rankdata(-m[has]) / max(int(has.sum()), 1)
    return (ps + pm) / 2


def expected_f1_count(wrong: np.ndarray) -> int:
    """How many rows to flag: ``wrong (N,)`` the probability that each row's
    label is wrong, in the order rows would be flagged -> the count c that
    maximises the flags' expected F1, 2 * sum(wrong[:c]) / (c + sum(wrong))
    (the expected true positives over the mean of flagged and wrong rows),
    0 when no row is likely wrong at all.

    Measured against cleanlab's count on 14 ranked runs with known truth
    (`benchmarks/bench_flag_count.py`, RESULTS.md §29): CIFAR-10N
    ``aggre`` with the default CNN 0.400 -> 0.399 (choose) and 0.347 -> 0.375
    (judge); digits 0.966 -> 0.981 and 0.989 -> 0.992; Fashion-MNIST 0.703 ->
    0.756; it loses where the estimate undercounts the noise: linear heads on
    a backbone (judge 0.424 -> 0.408) and CIFAR-10N ``worse`` (40% wrong,
    estimated 24%: 0.748 -> 0.709)."""
    w = np.asarray(wrong, np.float64)
    if len(w) == 0 or w.sum() <= 0:
        return 0
    expected = 2.0 * np.cumsum(w) / (np.arange(1, len(w) + 1) + w.sum())
    return int(np.argmax(expected)) + 1


def label_error_odds(labels: np.ndarray, probs: np.ndarray, *, even: float = EVEN_NOISE) -> np.ndarray:
    """(N,): the probability that each given label is wrong, under the label
    noise cleanlab estimates from these probabilities: P(true j | x, given i)
    proportional to p(j | x) P(given i | true j).

    A model that often mistakes one class for another (a shirt for a
    T-shirt) makes a given label of the other class plausible; a label that
    no estimated noise leads to is more likely the model's mistake.  The loss
    alone reads only p(i | x).  ``even``: that share of each class's estimated
    noise rate is spread evenly over the other classes (1: symmetric noise,
    the order close to the loss's), a hedge against a joint estimated from a
    weak model's confusions.  The joint is cleanlab's ``estimate_joint``
    (calibrated confident joint)."""
    from cleanlab.count import estimate_joint

    p = np.asarray(probs, np.float64)
    k = p.shape[1]
    joint = estimate_joint(labels, p)                                   # [given i, true j]
    t = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-12)     # P(given i | true j)
    stay = np.diag(t)
    spread = np.where(np.eye(k, dtype=bool), stay[None, :], ((1.0 - stay) / (k - 1))[None, :])
    t = (1.0 - even) * t + even * spread
    post = p * t[labels]                                                # (N, K) ~ P(true j | x, given)
    post /= np.maximum(post.sum(axis=1, keepdims=True), 1e-300)
    return 1.0 - post[np.arange(len(labels)), labels]


@dataclass
class LabelPosterior:
    """`label_posterior`'s result: ``post`` float64 (N, K), P(true class j | image,
    given label) per row; the ``temperature`` the probabilities were calibrated
    with; ``noise_rate`` the estimated share of wrong labels."""

    post: np.ndarray
    temperature: float
    noise_rate: float


def label_posterior(labels: np.ndarray, probs: np.ndarray, *, rounds: int = 8, iterations: int = 50) -> LabelPosterior:
    """How likely each row's true class is each class, given its image (the
    model's out-of-sample ``probs (N, K)``) and its given label (``labels (N,)``):
    the precision the automatic policy expects of a decision
    (`gpupipe.stages.review.auto_decisions`).

    The given label is modelled as the true class, drawn from the model's
    probabilities calibrated by one temperature, kept with probability 1 -
    rate and otherwise replaced by another class, j -> i in proportion to an
    estimated confusion shape.  Temperature, rate and shape are fitted
    together by maximum likelihood of the given labels (``rounds`` of: the
    temperature by scipy's bounded scalar search, then ``iterations`` of EM
    for the rate and shape: the noise-adaptation estimate); then P(true j |
    x, given i) is proportional to q(j | x) P(given i | true j).  One rate for
    every class, not one per class: with one per class the fit hid model
    errors in some classes' noise, and 3 of its 14 CIFAR-10N relabels were
    not to the true class, against 1 of 12.

    Measured (benchmarks/bench_policy_estimators.py, RESULTS.md §19.3): the
    estimated noise rate on digits with 10.0% / 10.4% planted flips
    (out-of-fold / certified seed) 10.2% / 10.8%; on CIFAR-10N ``aggre``
    (8.9-9.1% real annotator mistakes) 4.5-8.5%.  Not cleanlab's confident
    joint (`label_error_odds`): from a model 59-64% right that one counts the
    model's mistakes as noise (29-35% there) and trusts the model's
    disagreements far too much.  Not the temperature fitted first and the
    noise after: the temperature absorbs the noise (digits: 4.5-6.9%) and
    78-86% of the right relabels there are declined.  The class-conditional
    noise it assumes is kinder than real annotators, who err on ambiguous
    images, where the model errs too: on CIFAR-10N a label it calls wrong
    with 0.9 was wrong 63-74% of the time (0.99: 5 of 5), which is why the
    policy asks more of a remove than of a relabel
    (`gpupipe.stages.review.AutoPolicy.min_precision`)."""
    from scipy import sparse
    from scipy.optimize import minimize_scalar

    y = np.asarray(labels, np.int64)
    n, k = probs.shape
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0))

    def softmax(log_t: float) -> np.ndarray:
        z = logp / np.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        q = np.exp(z)
        return q / q.sum(axis=1, keepdims=True)

    eye = np.eye(k)
    given = sparse.csr_matrix((np.ones(n), (y, np.arange(n))), shape=(k, n))   # one-hot, transposed
    rate = 0.05                                          # the share of wrong labels, start at 5%
    shape = (1.0 - eye) / max(k - 1, 1)                  # [given i, true j], i != j: where a wrong label goes

    def transition() -> np.ndarray:
        return (1.0 - rate) * eye + rate * shape

    log_t = 0.0
    for _ in range(rounds if n else 0):
        t = transition()
        before = log_t
        log_t = float(minimize_scalar(
            lambda lt: -np.log(np.clip((softmax(lt) * t[y]).sum(axis=1), 1e-300, None)).mean(),
            bounds=(-2.0, 2.0), method="bounded", options={"xatol": 1e-3}).x)
        q = softmax(log_t)
        for _ in range(iterations):
            r = q * transition()[y]
            r /= np.maximum(r.sum(axis=1, keepdims=True), 1e-300)
            last, rate = rate, float(1.0 - r[np.arange(n), y].mean())
            off = np.asarray(given @ r)                  # [given i, true j]: expected counts
            np.fill_diagonal(off, 0.0)
            shape = off / np.maximum(off.sum(axis=0, keepdims=True), 1e-300)
            if abs(rate - last) < 1e-5:
                break
        if abs(log_t - before) < 1e-3:
            break
    q = softmax(log_t)
    post = q * transition()[y]
    post /= np.maximum(post.sum(axis=1, keepdims=True), 1e-300)
    return LabelPosterior(post, float(np.exp(log_t)), rate)
