"""A backbone the user brings: its features once per image, and linear heads on them.

`rank --backbone package.module:function [--backbone-weights FILE]`: the
function returns a ``torch.nn.Module`` mapping model-input images (float
(B, C, S, S) in 0..1, `gpupipe.dali.augment.file_pipeline`'s batches) to
features (B, D, ...; flattened).  Its weights come from FILE (a state_dict
saved with ``torch.save``, or `gpupipe pretrain`'s file, `nets.read_weights`;
loaded with ``weights_only=True``, strictly) or
from the function itself; nothing is downloaded.  E.g. for torchvision's
ResNet-18 with a checkpoint of your own::

    def resnet18_features():
        m = torchvision.models.resnet18()
        m.fc = torch.nn.Identity()
        return m

The features of every eligible image are extracted once per round (one
batched, DALI-fed pass, no augmentation), then a multinomial logistic
regression per fold (out-of-fold) or on the certified rows is trained on them
in seconds, and its probabilities go where the auxiliary CNN's go: loss,
suggested label, flags, review order, policy.  The outlier score and the
neighbours' votes are read in the same feature space.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpupipe.dali.augment import file_pipeline
from gpupipe.device import Device
from gpupipe.models import nets


@dataclass(frozen=True)
class BackboneSpec:
    """``factory``: "package.module:function"; ``weights``: a state_dict file or None."""

    factory: str
    weights: str | None = None


def load(spec: BackboneSpec) -> torch.nn.Module:
    """The backbone, in eval mode, with its weights; a clear error when it cannot be had."""
    mod, sep, attr = spec.factory.partition(":")
    if not sep or not mod or not attr:
        raise ValueError(f"--backbone {spec.factory!r}: expected 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--backbone {spec.factory!r}: cannot import {attr!r} from {mod!r} ({e})") from None
    model = fn()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--backbone {spec.factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    if spec.weights is not None:
        path = Path(spec.weights)
        state, _ = nets.read_weights(path, "--backbone-weights")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"--backbone-weights {path} do not fit {spec.factory}: {e}") from None
    return model.eval()


def self_supervised(spec: BackboneSpec) -> bool:
    """Whether ``spec``'s weights are `gpupipe pretrain`'s: learned without labels
    from images of the run (`nets.read_weights`).  Their heads do not count as a
    second opinion for the automatic policy (`schema.RANK_EVIDENCE`
    'self-supervised-*'): on CIFAR-10N they shared the trained models' confident
    mistakes (benchmarks/RESULTS.md §25, §40)."""
    return spec.weights is not None and nets.read_weights(spec.weights, "--backbone-weights")[1] is not None


def features(device: Device, model: torch.nn.Module, refs: list, rows: np.ndarray, *, size: int, channels: int,
             batch_size: int) -> np.ndarray:
    """float32 (len(rows), D): the backbone's features of each image, in ``rows``' order."""
    model = nets.to_layout(model.to(device.torch_device))
    where = {int(r): i for i, r in enumerate(rows)}
    feats = np.zeros((len(rows), 0), np.float32)
    with torch.inference_mode():
        for x, r in file_pipeline(device, refs, rows, size=size, channels=channels, batch_size=batch_size):
            f = model(nets.as_input(x.to(device.torch_device))).reshape(len(r), -1).float().cpu().numpy()
            if feats.shape[1] != f.shape[1]:
                feats = np.zeros((len(rows), f.shape[1]), np.float32)
            feats[[where[int(v)] for v in r]] = f
    return feats


def linear_head(x: np.ndarray, y: np.ndarray, num_classes: int, *, weight_decay: float = 1e-3,
                iterations: int = 200) -> "LinearHead":
    """A multinomial logistic regression on standardised features, fitted by
    full-batch L-BFGS (torch's; a few hundred steps, seconds on CPU)."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    xs = (xt - mean) / std
    yt = torch.as_tensor(y, dtype=torch.int64)
    lin = torch.nn.Linear(xs.shape[1], num_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xs), yt) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearHead(lin.eval(), mean, std)


@dataclass
class LinearHead:
    linear: torch.nn.Linear
    mean: torch.Tensor
    std: torch.Tensor

    def logits(self, x: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.linear((torch.as_tensor(x, dtype=torch.float32) - self.mean) / self.std)
