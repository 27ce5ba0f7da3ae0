"""Auxiliary models: the per-sample score kernel, the flag rule, the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpupipe.models.nets import MODELS, build, resolve_model
from gpupipe.models.score import flag_label_issues, per_sample


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


def test_flags_take_the_estimated_count_of_highest_loss_rows():
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
    given = probs[np.arange(n), labels]
    assert 50 <= flags.sum() <= 70                         # the count is estimated, near 60
    assert given[flags].max() <= given[~flags].min()       # and they are the lowest-probability rows
    assert np.isin(np.flatnonzero(flags), wrong).mean() > 0.95
    assert flag_label_issues(np.zeros(0, np.int64), np.zeros((0, 3))).shape == (0,)
    assert not flag_label_issues(np.zeros(5, np.int64), np.full((5, 2), 0.5)).any()   # one class: nothing


def test_resnet50_layer1_has_the_competition_models_shape():
    m = build(resolve_model("resnet50-layer1"), 10, 3, seed=0)
    # torchvision resnet50: conv1 9,408 + bn1 128 + layer1 215,808 parameters; dense 256*10+10.
    assert sum(p.numel() for p in m.parameters()) == 9408 + 128 + 215808 + 2570
    assert resolve_model("resnet50-layer1").lr == 1e-4
    for channels, size in ((1, 32), (3, 48)):
        m = build(resolve_model("resnet50-layer1"), 4, channels, seed=0).eval()
        assert m(torch.zeros(2, channels, size, size)).shape == (2, 4)


def test_registry_and_plugged_in_factories():
    assert set(MODELS) == {"small-cnn", "resnet50-layer1"}
    a = build(resolve_model("small-cnn"), 3, 1, seed=1)
    b = build(resolve_model("small-cnn"), 3, 1, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))     # seeded init
    spec = resolve_model("gpupipe.models.nets:small_cnn", lr=0.01)
    assert spec.lr == 0.01 and build(spec, 5, 3, seed=0)(torch.zeros(1, 3, 20, 20)).shape == (1, 5)
    with pytest.raises(ValueError, match="unknown model"):
        resolve_model("vgg")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_model("no_such_module:f")
