"""Auxiliary models: the per-sample score kernel, the flag rule, the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpupipe.models.nets import MODELS, build, resolve_model
from gpupipe.models.score import (expected_f1_count, flag_label_issues, flag_order, label_error_odds, label_posterior,
                                  per_sample, scaled_to, with_margin, wrong_label_count)


def test_per_sample_scores_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g) * 3
    labels = torch.randint(0, 7, (50,), generator=g)
    out = per_sample(logits, labels)
    p = torch.softmax(logits, 1).numpy()
    y = labels.numpy()
    given = p[np.arange(50), y]
    other = np.where(np.eye(7, dtype=bool)[y], -1, p).max(1)
    assert np.allclose(out["loss"].numpy(), -np.log(given), atol=1e-5)
    assert np.array_equal(out["pred"].numpy(), p.argmax(1))
    assert np.allclose(out["prob_given"].numpy(), given, atol=1e-6)
    assert np.allclose(out["margin"].numpy(), given - other, atol=1e-6)
    assert ((out["margin"] < 0).numpy() == (out["pred"] != labels).numpy()).all()
    assert np.allclose(out["probs"].sum(1).numpy(), 1, atol=1e-5)


def test_flags_take_the_estimated_count_of_rows_whose_label_is_most_likely_wrong():
    rng = np.random.default_rng(0)
    n, k = 600, 3
    labels = rng.integers(0, k, n)
    true = labels.copy()
    wrong = rng.choice(n, 60, replace=False)
    labels[wrong] = (labels[wrong] + 1) % k
    # A decent model: 0.8 on the true class (noisy), the rest spread.
    probs = rng.dirichlet(np.ones(k), n) * 0.4
    probs[np.arange(n), true] += 0.6
    probs /= probs.sum(1, keepdims=True)
    flags = flag_label_issues(labels, probs)
    odds = label_error_odds(labels, probs)
    assert 50 <= flags.sum() <= 70                         # the count is estimated, near 60
    assert odds[flags].min() >= odds[~flags].max()         # and they are the likeliest wrong
    assert np.isin(np.flatnonzero(flags), wrong).mean() > 0.95
    # The neighbours' votes count half: votes for the true class of every row make the flags surer.
    votes = np.full((n, k), 0.05)
    votes[np.arange(n), true] = 0.9
    assert np.isin(np.flatnonzero(flag_label_issues(labels, probs, votes)), wrong).mean() == 1.0
    votes[:] = np.nan                                      # no votes: the probabilities alone
    assert np.array_equal(flag_label_issues(labels, probs, votes), flags)
    assert flag_label_issues(np.zeros(0, np.int64), np.zeros((0, 3))).shape == (0,)
    assert not flag_label_issues(np.zeros(5, np.int64), np.full((5, 2), 0.5)).any()   # one class: nothing


def test_expected_f1_count_maximises_the_f1_its_probabilities_expect():
    # 2 * sum(w[:c]) / (c + sum(w)), sum(w) = 2: c=1 0.6, c=2 0.9, c=3 0.76, c=4 0.67.
    assert expected_f1_count(np.array([0.9, 0.9, 0.1, 0.1])) == 2
    assert expected_f1_count(np.zeros(5)) == 0 and expected_f1_count(np.zeros(0)) == 0
    # Labels wrong with calibrated probabilities: the count's F1 is within a few
    # points of the best count's, and far above flagging every row that may be wrong.
    rng = np.random.default_rng(0)
    w = np.sort(rng.beta(0.3, 3.0, 20_000))[::-1]        # ~9% wrong, most rows nearly sure
    wrong = rng.random(len(w)) < w
    f1 = 2 * np.cumsum(wrong) / (np.arange(1, len(w) + 1) + wrong.sum())
    c = expected_f1_count(w)
    assert f1[c - 1] >= f1.max() - 0.02
    assert f1[c - 1] >= f1[np.flatnonzero(w > 0.05)[-1]] + 0.1


def test_the_count_of_wrong_labels_lies_between_the_posteriors_and_cleanlabs():
    """`wrong_label_count`: the geometric mean of `label_posterior`'s rate (low
    where the model learned the noise) and cleanlab's count (high where the
    model errs); `scaled_to` brings the posterior's probabilities to that sum."""
    from cleanlab.count import num_label_issues

    rng = np.random.default_rng(2)
    n, k = 3000, 4
    true = rng.integers(0, k, n)
    labels = true.copy()
    wrong = rng.choice(n, 300, replace=False)
    labels[wrong] = (labels[wrong] + 1) % k
    probs = rng.dirichlet(np.ones(k) * 0.7, n) * 0.6          # a weak model: 0.4 on the true class
    probs[np.arange(n), true] += 0.4
    lp = label_posterior(labels, probs)
    low, high = sorted([lp.noise_rate * n, float(num_label_issues(labels, probs))])
    count = wrong_label_count(labels, probs, lp.noise_rate)
    assert low < high and count == pytest.approx(np.sqrt(low * high))
    w = 1.0 - lp.post[np.arange(n), labels]
    s = scaled_to(w, count)
    assert s.sum() == pytest.approx(count, rel=1e-6) and s.max() <= 1.0
    kept = (s < 1.0) & (w > 1e-9)                           # one factor: the order and ratios stay
    assert np.allclose(s[kept] / w[kept], (s[kept] / w[kept])[0])
    assert np.array_equal(np.argsort(-w, kind="stable")[:50], np.argsort(-s, kind="stable")[:50])
    assert np.array_equal(scaled_to(w, n), w) and np.array_equal(scaled_to(np.zeros(5), 2.0), np.zeros(5))
    few = np.array([0.5, 0.0, 0.0, 0.0])                    # one row can be wrong, two asked for: it, at 1
    assert np.allclose(scaled_to(few, 2.0), [1.0, 0, 0, 0])


def test_label_error_odds_follow_the_estimated_noise():
    """Class-pair noise (0 labelled 1, never 2 labelled 1): a row labelled 1 that
    the model calls 0 is likelier wrong than one, equally doubtful, it calls 2."""
    rng = np.random.default_rng(1)
    n, k = 3000, 3
    true = rng.integers(0, k, n)
    labels = true.copy()
    flip = (true == 0) & (rng.random(n) < 0.2)
    labels[flip] = 1
    probs = rng.dirichlet(np.ones(k), n) * 0.3
    probs[np.arange(n), true] += 0.7
    probs /= probs.sum(1, keepdims=True)
    doubt = np.array([[0.6, 0.4, 0.0], [0.0, 0.4, 0.6]]) + 1e-3      # label 1: to 0, or to 2
    y, p = np.concatenate([labels, np.ones(2, np.int64)]), np.concatenate([probs, doubt / doubt.sum(1, keepdims=True)])
    gap = [(lambda o: o[n] - o[n + 1])(label_error_odds(y, p, even=e)) for e in (0.0, 0.5, 1.0)]
    assert gap[0] > 0.1
    # Spreading the estimated noise evenly over the classes brings the two closer (the loss order: equal).
    assert gap[0] > gap[1] > gap[2]


def test_the_margin_is_a_third_opinion_by_percentile():
    """`with_margin`: the mean of the percentiles by suspicion (higher first) and
    by the area under the margin (lower first); a row without a margin counts
    its suspicion twice, an unscored row stays unscored."""
    suspect = np.array([0.1, 0.2, 0.3, 0.4, np.nan])
    margin = np.array([-2.0, 1.0, np.nan, 3.0, -9.0])
    out = with_margin(suspect, margin)
    # suspicion percentiles 1/4..4/4; margins among the three rows that have one: -2 -> 3/3, 1 -> 2/3, 3 -> 1/3
    np.testing.assert_allclose(out[:4], [(0.25 + 1) / 2, (0.5 + 2 / 3) / 2, 0.75, (1 + 1 / 3) / 2])
    assert np.isnan(out[4])
    # in the flags' order the margin breaks the odds' hold: two rows the odds rank alike, apart by margin
    labels = np.array([0, 0, 1, 1] * 10)
    probs = np.tile([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]], (10, 1))
    probs[:2] = [[0.2, 0.8], [0.2, 0.8]]
    order = list(flag_order(labels, probs, np.r_[5.0, -5.0, np.zeros(38)]))
    assert order[0] == 1 and order.index(1) < order.index(0)
    assert list(flag_order(labels, probs)[:2]) == [0, 1]         # without margins: the odds, then the index


def test_resnet50_layer1_has_the_competition_models_shape():
    m = build(resolve_model("resnet50-layer1"), 10, 3, seed=0)
    # torchvision resnet50: conv1 9,408 + bn1 128 + layer1 215,808 parameters; dense 256*10+10.
    assert sum(p.numel() for p in m.parameters()) == 9408 + 128 + 215808 + 2570
    assert resolve_model("resnet50-layer1").lr == 1e-4
    for channels, size in ((1, 32), (3, 48)):
        m = build(resolve_model("resnet50-layer1"), 4, channels, seed=0).eval()
        assert m(torch.zeros(2, channels, size, size)).shape == (2, 4)


def test_registry_and_plugged_in_factories():
    assert set(MODELS) == {"small-cnn", "photo-cnn", "resnet50-layer1"}
    # auto: by the images' channels, and the pretrained feature part's model wherever weights are given
    assert resolve_model("auto", channels=3).factory is MODELS["photo-cnn"].factory
    assert resolve_model("auto", channels=1).factory is MODELS["small-cnn"].factory
    assert resolve_model("auto", channels=3, init="w.pt").factory is MODELS["small-cnn"].factory
    with pytest.raises(ValueError, match="channels"):
        resolve_model("auto")
    widths = [m.out_channels for m in build(resolve_model("photo-cnn"), 10, 3, seed=0).modules()
              if isinstance(m, torch.nn.Conv2d)]
    assert widths == [24, 48, 96, 192]
    a = build(resolve_model("small-cnn"), 3, 1, seed=1)
    b = build(resolve_model("small-cnn"), 3, 1, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))     # seeded init
    spec = resolve_model("gpupipe.models.nets:small_cnn", lr=0.01)
    assert spec.lr == 0.01 and build(spec, 5, 3, seed=0)(torch.zeros(1, 3, 20, 20)).shape == (1, 5)
    with pytest.raises(ValueError, match="unknown model"):
        resolve_model("vgg")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_model("no_such_module:f")


def test_making_a_model_keeps_large_host_blocks_in_glibcs_heap():
    """`nets.keep_host_blocks`: once a model is made, glibc keeps freed blocks
    of up to 1 GiB in the heap (a 100 MB activation is reused, not mapped and
    faulted in afresh each batch: RESULTS.md §34.3); elsewhere a no-op."""
    import platform

    from gpupipe.models import nets

    build(resolve_model("small-cnn"), 3, 1, seed=0)
    assert nets.keep_host_blocks() is (platform.libc_ver()[0] == "glibc")
