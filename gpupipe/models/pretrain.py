"""A backbone from the user's own images: self-supervised pretraining (SimCLR).

No labels and nothing downloaded: the run's own eligible images (labels are not
read), two random views of each (`gpupipe.dali.augment.AugmentConfig.contrastive`:
random resized crops of 20-100% of the area, flips, brightness, contrast and
saturation +-0.4), and the small CNN's feature part trained so that the two
views of one image are closer than any other image of the batch (SimCLR's
NT-Xent loss over a small projection head, Chen et al. 2020).  The feature part
is saved (its ``state_dict`` under "state_dict", beside what says it was learned
without labels from the run's images; `save`) for ``rank --backbone``::

    gpupipe pretrain RUN --epochs 30             # writes RUN/backbone-ssl.pt
    gpupipe rank RUN --backbone gpupipe.models.nets:small_cnn_features \\
        --backbone-weights RUN/backbone-ssl.pt

(``small_cnn_features_gray`` for gray images; the command prints the flags.)
Each epoch shows every image twice; views of one image sit side by side in a
batch (the pipeline's list is each epoch's seeded permutation, every row
repeated), so a batch of B views holds B/2 images and B - 2 negatives per view.
What it buys on CIFAR-10N against training from scratch: benchmarks/RESULTS.md §25.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpupipe.dali.augment import AugmentConfig, file_pipeline
from gpupipe.device import Device
from gpupipe.models import nets


PIPE_VIEWS = 200_000    # views per DALI pipeline: several small epochs share one


@dataclass(frozen=True)
class PretrainConfig:
    """epochs: passes over the images (each shows every image twice);
    batch_size: views per step (even: half as many images);
    temperature: NT-Xent's; projection: the head's output width (dropped after)."""

    epochs: int = 30
    batch_size: int = 256
    temperature: float = 0.2
    lr: float = 2e-3
    image_size: int = 32
    projection: int = 64
    augment: AugmentConfig = field(default_factory=AugmentConfig.contrastive)

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.batch_size < 4 or self.batch_size % 2:
            raise ValueError("batch_size must be an even number >= 4 (two views per image)")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")


@dataclass
class PretrainResult:
    backbone: nn.Module          # the feature part, (B, C, S, S) -> (B, 128), eval mode
    losses: list[float]          # mean NT-Xent loss per epoch
    images: int
    seconds: float


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for (N, D) projections of two views, row i of ``a`` and of ``b``
    one image: cross-entropy of picking the other view among the 2N - 1 others."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return F.cross_entropy(sim.float(), target)


def simclr(device: Device, refs: list, *, channels: int, config: PretrainConfig = PretrainConfig(), seed: int = 0,
           progress: Callable[[int, int, float], None] | None = None) -> PretrainResult:
    """Pretrain `nets.small_cnn_features` on the images ``refs`` (paths or (path,
    locator) pairs, as `file_pipeline` takes) with SimCLR; ``progress(epoch,
    epochs, loss)`` after each epoch."""
    n = len(refs)
    if n < config.batch_size // 2:
        raise ValueError(f"self-supervised pretraining needs at least {config.batch_size // 2} images "
                         f"(one batch of {config.batch_size} views); the run has {n}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _simclr(device, refs, channels=channels, config=config, seed=seed, progress=progress)


def _simclr(device: Device, refs: list, *, channels: int, config: PretrainConfig, seed: int,
            progress) -> PretrainResult:
    n = len(refs)
    body = nets.small_cnn_features(channels)
    width = body(torch.zeros(2, channels, config.image_size, config.image_size)).shape[1]
    head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, config.projection))
    model = nets.to_layout(nn.Sequential(body, head).to(device.torch_device))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=1e-6)
    steps = math.ceil(config.epochs * 2 * n / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(seed)
    sums, counts = np.zeros(config.epochs), np.zeros(config.epochs)
    t0 = time.perf_counter()
    model.train()
    # Several epochs per pipeline (building one costs seconds), at most ~PIPE_VIEWS views each.
    per_pipe = max(1, PIPE_VIEWS // (2 * n))
    for first in range(0, config.epochs, per_pipe):
        span = range(first, min(first + per_pipe, config.epochs))
        # every image twice, side by side (views 2k and 2k+1 of a batch are one image),
        # each epoch in a seeded order of its own
        order = np.concatenate([np.repeat(rng.permutation(n), 2) for _ in span])
        views = file_pipeline(device, [refs[i] for i in order], order, size=config.image_size, channels=channels,
                              batch_size=config.batch_size, augment=config.augment, seed=seed + 1000 * first)
        seen = 0
        for x, r in views:
            epoch = first + min(seen // (2 * n), len(span) - 1)
            seen += len(r)
            if len(r) % 2:                       # a short tail cannot split in pairs
                x, r = x[:len(r) - 1], r[:len(r) - 1]
            if len(r) < 4:
                continue
            x = nets.as_input(x.to(device.torch_device, non_blocking=True))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.is_gpu):
                p = model(x)
            loss = nt_xent(p[0::2], p[1::2], config.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched.last_epoch + 1 < steps:
                sched.step()
            sums[epoch] += float(loss.detach()) * len(r)
            counts[epoch] += len(r)
        if progress is not None:
            for e in span:
                progress(e + 1, config.epochs, sums[e] / max(counts[e], 1))
    losses = [float(v) for v in sums / np.maximum(counts, 1)]
    return PretrainResult(body.eval(), losses, n, time.perf_counter() - t0)


def save(backbone: nn.Module, path: str | os.PathLike, *, images: int, epochs: int) -> Path:
    """The backbone's state_dict at ``path``, written atomically (`gpupipe.table.atomic_file`),
    as ``{"state_dict": ..., "self_supervised": {"method": "simclr", "images": N, "epochs": E}}``:
    `rank` reads the second entry (`nets.read_weights`) so that the automatic policy
    does not take heads on these features for a second opinion of another kind."""
    from gpupipe.table import atomic_file

    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    how = {"method": "simclr", "images": int(images), "epochs": int(epochs)}
    with atomic_file(path, "wb") as fh:
        torch.save({"state_dict": state, nets.SELF_SUPERVISED: how}, fh)
    return Path(path)
