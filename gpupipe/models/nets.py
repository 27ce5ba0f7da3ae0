"""Auxiliary classifiers: a registry of model factories.

A factory is ``f(num_classes: int, channels: int) -> torch.nn.Module`` taking
``float (B, channels, S, S)`` images in 0..1 and returning ``(B, num_classes)``
logits, for any ``S`` (both built-ins end in global average pooling).  Users
plug in their own as ``"package.module:function"``.  The auxiliary models are
tools for curation only; nothing downstream depends on their weights.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

Factory = Callable[[int, int], nn.Module]

# NHWC activations: in this layout oneDNN ran the small CNN's training step 1.5x
# and its scoring forward 1.8x faster on cpu-vm's AVX-512 Xeon (about even under
# ATEN_CPU_CAPABILITY=default; benchmarks/RESULTS.md §22), and GPU tensor cores
# prefer it.  Every model goes through `build` or `to_layout`, every batch through
# `as_input`: the one place the layout is decided.
MEMORY_FORMAT = torch.channels_last


def to_layout(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D parameters in `MEMORY_FORMAT` (in place; returned)."""
    keep_host_blocks()
    return model.to(memory_format=MEMORY_FORMAT)


_HOST_BLOCKS_KEPT: bool | None = None


def keep_host_blocks() -> bool:
    """Keep large freed host blocks in glibc's heap in this process, once
    (``mallopt``: M_MMAP_THRESHOLD 1 GiB, M_TRIM_THRESHOLD 2 GiB).  A batch's
    activations above glibc's mmap ceiling (32 MiB at most; photo-cnn's first
    block at batch 1024 is 100 MB) were fresh mappings every batch, faulted in
    4 KiB pages where transparent huge pages are ``madvise`` only, and freed
    heap tops went back to the system: which model and batch size ran slow
    moved between runs (photo-cnn's forward 8,045-9,155 vs 14,724-15,481
    images/s, peak RSS the same; RESULTS.md §34.3).  Called where models are
    made (`to_layout`); dedup makes none.  -> whether it was set (False off
    glibc)."""
    global _HOST_BLOCKS_KEPT
    if _HOST_BLOCKS_KEPT is None:
        import ctypes

        try:
            mallopt = ctypes.CDLL(None).mallopt
            _HOST_BLOCKS_KEPT = bool(mallopt(-3, 1 << 30)) and bool(mallopt(-1, (1 << 31) - 1))  # MMAP, TRIM
        except (AttributeError, OSError):
            _HOST_BLOCKS_KEPT = False
    return _HOST_BLOCKS_KEPT


def as_input(x: torch.Tensor) -> torch.Tensor:
    """A batch (B, C, H, W) in `MEMORY_FORMAT` (no copy when it already is)."""
    return x.contiguous(memory_format=MEMORY_FORMAT) if x.dim() == 4 else x


def small_cnn(num_classes: int, channels: int, widths: tuple[int, ...] = (16, 32, 64, 128)) -> nn.Module:
    """Four 3x3 conv blocks (16-32-64-128 filters, batch norm, a 2x2 pool after
    each of the first three), global average pooling, dropout 0.3, a dense
    layer: ~0.1 M parameters, ~4 M multiply-adds per 32x32 image (fast on CPU).
    ``widths``: the blocks' filters (benchmarks/backbones.py's wider variant)."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers: list[nn.Module] = []
    for k, (cin, cout) in enumerate(zip((channels, *widths[:-1]), widths)):
        layers += block(cin, cout) + ([nn.MaxPool2d(2)] if k < len(widths) - 1 else [])
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                         nn.Linear(widths[-1], num_classes))


def photo_cnn(num_classes: int, channels: int) -> nn.Module:
    """`small_cnn` at 1.5x the width (24-48-96-192 filters): ~0.22 M parameters,
    ~2.2x the multiply-adds.  ``--model auto``'s choice for colour images: on
    CIFAR-10N photos it was 2 points more accurate out-of-fold than small-cnn
    for 1.4x the round's time (RESULTS.md §33)."""
    return small_cnn(num_classes, channels, widths=(24, 48, 96, 192))


def small_cnn_features(channels: int = 3) -> nn.Module:
    """`small_cnn` up to its global average pooling: (B, channels, S, S) -> (B, 128).
    A ``rank --backbone`` factory (colour images); its weights from ``gpupipe
    pretrain`` (`gpupipe.models.pretrain`) or from a small-cnn trained elsewhere."""
    return small_cnn(1, channels)[:-2]


def small_cnn_features_gray() -> nn.Module:
    """`small_cnn_features` for gray images (one input channel)."""
    return small_cnn_features(1)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (1x1, 3x3, 1x1 convolutions, expansion 4), as in
    torchvision's ``Bottleneck``."""

    def __init__(self, cin: int, width: int, *, downsample: bool):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
                     if downsample else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.skip(x))


def resnet50_layer1(num_classes: int, channels: int) -> nn.Module:
    """The Data-Centric AI competition's fixed model: ResNet-50 (random init) cut
    after its first residual stage (Keras ``conv2_block3_out``, torchvision
    ``layer1``), global average pooling, a dense layer; ~0.23 M parameters.
    The competition fed it 32x32 images and trained it with Adam at 1e-4.

    Written out here rather than taken from ``torchvision.models.resnet50``:
    torchvision wheels are built against one exact torch build, and a
    mismatched pair fails at import ("operator torchvision::nms does not
    exist", seen with torchvision 0.28.0 beside the CPU torch 2.13.0); these
    two blocks are not worth that coupling.  The layer shapes and the weight
    initialisation (Kaiming normal, fan_out) match torchvision's.
    """
    model = nn.Sequential(
        nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
        Bottleneck(64, 64, downsample=True), Bottleneck(256, 64, downsample=False),
        Bottleneck(256, 64, downsample=False),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, num_classes),
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


@dataclass(frozen=True)
class ModelSpec:
    """A factory and the optimiser settings that go with it."""

    factory: Factory
    lr: float              # Adam's rate (`TrainConfig.schedule` "plateau")
    sgd_lr: float = 0.1    # SGD's peak rate in one cycle ("onecycle")


MODELS: dict[str, ModelSpec] = {
    "small-cnn": ModelSpec(small_cnn, lr=1e-3),
    "photo-cnn": ModelSpec(photo_cnn, lr=1e-3),
    "resnet50-layer1": ModelSpec(resnet50_layer1, lr=1e-4),
}


AUTO = "auto"


def auto_model(channels: int, *, init: str | None = None) -> str:
    """``--model auto``: photo-cnn for colour images, small-cnn for gray ones
    (digits, characters, documents), and small-cnn wherever a model starts
    from given weights (``--init-weights``: ``gpupipe pretrain`` writes
    small-cnn's feature part)."""
    return "photo-cnn" if channels == 3 and init is None else "small-cnn"


def resolve_model(name: str, *, lr: float | None = None, channels: int | None = None,
                  init: str | None = None) -> ModelSpec:
    """A registry name, ``"auto"`` (`auto_model`; needs ``channels``), or
    ``"package.module:function"`` naming a factory ``f(num_classes, channels)
    -> nn.Module`` (learning rates 1e-3 Adam, 0.1 SGD unless given)."""
    if name == AUTO:
        if channels is None:
            raise ValueError("model 'auto' is chosen by the images' channels, which are not known here")
        name = auto_model(channels, init=init)
    if name in MODELS:
        spec = MODELS[name]
    elif ":" in name:
        mod, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"model {name!r}: cannot import {attr!r} from {mod!r} ({e})") from None
        if not callable(factory):
            raise ValueError(f"model {name!r} is not callable")
        spec = ModelSpec(factory, lr=1e-3)
    else:
        raise ValueError(f"unknown model {name!r}: use auto, one of {sorted(MODELS)} or 'package.module:function'")
    return spec if lr is None else ModelSpec(spec.factory, lr=lr, sgd_lr=lr)


def build(spec: ModelSpec, num_classes: int, channels: int, *, seed: int) -> nn.Module:
    """The factory's model with seeded initial weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.factory(num_classes, channels)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory returned {type(model).__name__}, not a torch.nn.Module")
    return to_layout(model)


#: The entry of a `gpupipe pretrain` weights file that says how they were learned
#: (`read_weights`); `rank` reads it to tell the automatic policy (`schema.RANK_EVIDENCE`).
SELF_SUPERVISED = "self_supervised"


def read_weights(path: str | os.PathLike, flag: str) -> tuple[dict, dict | None]:
    """A weights file: a plain ``state_dict`` (``torch.save(model.state_dict())``),
    or `gpupipe pretrain`'s ``{"state_dict": ..., "self_supervised": {...}}``.
    -> (the state_dict, what pretrain wrote of how it was learned, or None).
    ``flag`` names the option in the clear error a missing or foreign file gets."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: say which
        raise ValueError(f"{flag} {path}: not a torch state_dict ({e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        how = obj.get(SELF_SUPERVISED)
        return obj["state_dict"], how if isinstance(how, dict) else None
    if not isinstance(obj, dict):
        raise ValueError(f"{flag} {path}: not a torch state_dict (a {type(obj).__name__})")
    return obj, None


def load_init(model: nn.Module, path: str) -> nn.Module:
    """Start ``model`` from a pretrained feature part: the state_dict in ``path``
    (e.g. ``gpupipe pretrain``'s, `small_cnn_features`' keys; `read_weights`) loaded
    where its names and shapes match ``model``'s; every one of its tensors must find a
    place (the classifier layer it lacks keeps its seeded init).  -> model."""
    state, _ = read_weights(path, "--init-weights")
    own = model.state_dict()
    misfit = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if misfit or not state:
        raise ValueError(f"--init-weights {path} do not fit the model: {misfit[:3] or 'no tensors'} "
                         f"(it needs the model's own layer names, as gpupipe pretrain writes for small-cnn)")
    model.load_state_dict(state, strict=False)
    return model
