"""`rank --backbone`: a feature extractor the user brings, with weights the test
writes itself (no download), linear heads on its features, on real digits
with 10% planted label flips."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from gpupipe import schema
from gpupipe.cli import main
from gpupipe.loop import RankOptions, run_rank
from gpupipe.models.backbone import BackboneSpec, load

FACTORY = '''
from torch import nn


def features():
    """Three conv blocks, 1 channel in, 2x2-pooled maps out (512 features)."""
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(1, 32), *block(32, 64), *block(64, 128), nn.AdaptiveAvgPool2d(2), nn.Flatten())


def other():
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten())
'''


@pytest.fixture()
def backbone(tmp_path, monkeypatch):
    """A module ``mybackbone`` on sys.path and its seeded (untrained) weights in a file."""
    (tmp_path / "mybackbone.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import mybackbone

    importlib.reload(mybackbone)
    torch.manual_seed(0)
    weights = tmp_path / "weights.pt"
    torch.save(mybackbone.features().state_dict(), weights)
    return BackboneSpec("mybackbone:features", str(weights))


def test_label_flips_are_found_from_a_backbones_features(backbone, noisy_run, digits_noisy):
    """Out-of-fold linear heads on untrained conv features (measured: accuracy
    0.918 against the true digits, flags P 0.960 R 0.944 F1 0.952; the CNN the
    tool trains itself: 0.95-0.98 F1 in minutes), every kept row scored once,
    out-of-fold, with outlier scores and votes."""
    res = run_rank(noisy_run, RankOptions(device="cpu", mode="oof", review="auto", max_rounds=1,
                                          backbone=backbone))
    d = pq.read_table(noisy_run / "ledger.parquet").to_pandas()
    kept = d[d[schema.DEDUP_KEEP]]
    assert kept[schema.RANK_LOSS].notna().all() and kept[schema.RANK_OOF].all()
    assert kept[schema.RANK_OUTLIER].notna().all() and kept[schema.RANK_VOTE_GIVEN].notna().all()
    assert (kept[schema.RANK_EVIDENCE] == "backbone-gray").all()          # a brought backbone: a second opinion
    r = res.rounds[0]
    assert r["scored"] == len(kept) and r["trained_on"] == 4 * len(kept) and r["epochs"] == []
    flipped = kept[schema.REL_PATH].isin(digits_noisy["flipped"]).to_numpy()
    flag = kept[schema.RANK_FLAG].to_numpy(bool)
    assert r["flagged"] == flag.sum() == d[schema.RANK_FLAG].fillna(False).astype(bool).sum()   # rank.json says it
    p, rec = (flag & flipped).sum() / flag.sum(), (flag & flipped).sum() / flipped.sum()
    acc = (kept[schema.RANK_PRED] == kept[schema.REL_PATH].map(digits_noisy["truth"])).mean()
    print(f"backbone: accuracy {acc:.3f}, flags P {p:.3f} R {rec:.3f}, policy {r['policy']}")
    assert acc >= 0.85 and p >= 0.85 and rec >= 0.85


def test_a_backbone_that_cannot_be_had_is_a_clear_error(backbone, tmp_path, capsys):
    with pytest.raises(ValueError, match="do not fit mybackbone:other"):
        load(BackboneSpec("mybackbone:other", backbone.weights))
    with pytest.raises(ValueError, match="no such file"):
        load(BackboneSpec("mybackbone:features", str(tmp_path / "missing.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a torch state_dict"):
        load(BackboneSpec("mybackbone:features", str(tmp_path / "junk.pt")))
    with pytest.raises(ValueError, match="cannot import"):
        load(BackboneSpec("mybackbone:nothing"))
    assert load(BackboneSpec("mybackbone:features"))(torch.zeros(2, 1, 32, 32)).shape == (2, 512)
    # Through the command line: a message and exit status 2, before any work.
    run = tmp_path / "run"
    run.mkdir()
    assert main(["rank", str(run), "--backbone", "mybackbone:features", "--backbone-weights",
                 str(tmp_path / "junk.pt")]) == 2
    assert "not a torch state_dict" in capsys.readouterr().err
    assert main(["rank", str(run), "--backbone-weights", backbone.weights]) == 2
    assert "--backbone-weights needs --backbone" in capsys.readouterr().err


def test_with_cnn_averages_the_trained_cnn_and_the_backbones_heads_fold_by_fold(backbone, digits_noisy, tmp_path):
    """``--with-cnn``: the CNN a plain round trains and the heads a plain
    ``--backbone`` round fits, on the same folds, each kept as one opinion in
    rank_model_probs and averaged into rank_probs; the gate asks both."""
    from gpupipe.models.train import TrainConfig

    quick = TrainConfig(max_epochs=3, epoch_samples=512, patience=2)
    probs = {}
    for name, extra in (("cnn", {}), ("heads", {"backbone": backbone}),
                        ("both", {"backbone": backbone, "with_cnn": True})):
        run = tmp_path / name
        shutil.copytree(digits_noisy["run"], run)
        res = run_rank(run, RankOptions(device="cpu", mode="oof", folds=3, review="auto", max_rounds=1, train=quick,
                                        **extra))
        d = pq.read_table(run / "ledger.parquet").to_pandas().sort_values(schema.REL_PATH)
        kept = d[d[schema.DEDUP_KEEP]]
        probs[name] = np.stack(kept[schema.RANK_PROBS].to_numpy())
        if name == "both":
            each = np.stack(kept[schema.RANK_MODEL_PROBS].to_numpy()).reshape(len(kept), 2, -1)
            r = res.rounds[0]
            assert r["model"] == "small-cnn + heads on mybackbone:features" and r["policy"]["models"] == 2
    np.testing.assert_allclose(each[:, 0], probs["cnn"], atol=1e-6)
    np.testing.assert_allclose(each[:, 1], probs["heads"], atol=1e-6)
    np.testing.assert_allclose(probs["both"], each.mean(axis=1), atol=1e-5)


def test_with_cnn_needs_a_backbone_and_folds(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "gpupipe.cli", "rank", str(tmp_path), "--with-cnn"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--with-cnn needs --backbone and --mode oof" in p.stderr, p.stderr
