"""`gpupipe pretrain`: self-supervised pretraining (SimCLR) on the run's own images,
no labels, nothing downloaded; and `rank --init-weights` starting a model from it.
What it buys on real photos with real label noise (CIFAR-10N) is a benchmark
(benchmarks/bench_cifar10n.py, RESULTS.md §25), not a test."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from gpupipe.cli import main


def _views_gap(backbone, images: np.ndarray) -> float:
    """Two seeded photo-set views of each image: mean cosine similarity of an image's
    two views minus that of two different images' (backbone features)."""
    from gpupipe.dali.augment import AugmentConfig, show
    from gpupipe.device import resolve_device
    from gpupipe.models import nets

    dev = resolve_device("cpu")
    views = [show(dev, images, AugmentConfig.photo(), seed=7 + k).images for k in (1, 2)]
    with torch.inference_mode():
        f = [torch.nn.functional.normalize(backbone(nets.as_input(
            torch.as_tensor(v, dtype=torch.float32).permute(0, 3, 1, 2) / 255)), dim=1) for v in views]
    s = f[0] @ f[1].T
    same = s.diag().mean()
    return float(same - (s.sum() - s.diag().sum()) / (s.numel() - len(s)))


def test_pretraining_tells_views_of_one_image_from_other_images(digits_noisy):
    """SimCLR on 256 real digits, 6 epochs: the loss falls, and two views of one
    image end up closer than two images (measured: the gap in mean cosine similarity
    0.003 with the seeded random init, 0.116 after; the loss 4.12 -> 3.75)."""
    from PIL import Image

    from gpupipe.device import resolve_device
    from gpupipe.models import nets
    from gpupipe.models.pretrain import PretrainConfig, simclr

    files = sorted(digits_noisy["root"].rglob("*.png"))
    pick = [str(files[i]) for i in np.random.default_rng(0).choice(len(files), 256, replace=False)]
    res = simclr(resolve_device("cpu"), pick, channels=1, config=PretrainConfig(epochs=6, batch_size=64), seed=0)
    images = np.stack([np.asarray(Image.open(f).convert("L").resize((32, 32)))[..., None] for f in pick])
    torch.manual_seed(0)
    before, after = _views_gap(nets.small_cnn_features_gray().eval(), images), _views_gap(res.backbone, images)
    print(f"losses {np.round(res.losses, 3).tolist()}; views' gap: random init {before:.3f}, pretrained {after:.3f}")
    assert res.losses[-1] < res.losses[0] - 0.2
    assert after >= before + 0.05


def test_the_pretrain_command_writes_weights_the_backbone_factory_takes(noisy_run, capsys):
    import pyarrow.parquet as pq

    from gpupipe import schema
    from gpupipe.loop import RankOptions, run_rank
    from gpupipe.models import nets
    from gpupipe.models.backbone import BackboneSpec, load, self_supervised
    from gpupipe.stages.rank import evidence_of

    out = noisy_run / "ssl.pt"
    assert main(["pretrain", str(noisy_run), "--out", str(out), "--epochs", "1", "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "--backbone gpupipe.models.nets:small_cnn_features_gray" in said and out.is_file()
    spec = BackboneSpec("gpupipe.models.nets:small_cnn_features_gray", str(out))
    assert len(load(spec)(torch.zeros(2, 1, 32, 32))[0]) == 128
    # the file says how it was learned, so rank tells the automatic policy (rank_evidence)
    state, how = nets.read_weights(out, "--backbone-weights")
    images = int(re.search(r"\((\d+) images", said).group(1))       # the eligible rows, as the command says
    assert how == {"method": "simclr", "images": images, "epochs": 1} and images > 1700 and "0.weight" in state
    assert self_supervised(spec) and evidence_of(backbone="self-supervised", channels=3) == "self-supervised-colour"
    plain = noisy_run / "plain.pt"
    torch.save(state, plain)                      # a user's own state_dict: a brought backbone
    assert not self_supervised(BackboneSpec(spec.factory, str(plain)))
    nets.load_init(nets.build(nets.resolve_model("small-cnn"), 10, 1, seed=0), str(out))   # both kinds start a CNN
    run_rank(noisy_run, RankOptions(device="cpu", mode="oof", review="auto", max_rounds=1, backbone=spec))
    d = pq.read_table(noisy_run / "ledger.parquet").to_pandas()
    assert set(d.loc[d[schema.RANK_LOSS].notna(), schema.RANK_EVIDENCE]) == {"self-supervised-gray"}
    assert main(["pretrain", str(noisy_run), "--batch", "8192", "--device", "cpu"]) == 2
    assert "needs at least 4096 images" in capsys.readouterr().err


def test_init_weights_start_the_model_and_a_misfit_is_a_clear_error(tmp_path, noisy_run, capsys):
    from gpupipe.models import nets

    body = nets.small_cnn_features(3)
    torch.nn.init.constant_(body[0].weight, 0.5)
    w = tmp_path / "body.pt"
    torch.save(body.state_dict(), w)
    model = nets.load_init(nets.build(nets.resolve_model("small-cnn"), 10, 3, seed=0), str(w))
    assert torch.equal(model[0].weight, body[0].weight) and model[-1].weight.shape == (10, 128)
    with pytest.raises(ValueError, match="do not fit"):
        nets.load_init(nets.build(nets.resolve_model("resnet50-layer1"), 10, 3, seed=0), str(w))
    assert main(["rank", str(noisy_run), "--init-weights", str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
