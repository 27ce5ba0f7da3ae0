"""Train an auxiliary classifier on certified samples, with DALI augmentation
and early stopping on the certified validation samples."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from gpupipe.dali.augment import AugmentConfig, file_pipeline
from gpupipe.dali.decoded import take
from gpupipe.device import Device
from gpupipe.models import nets
from gpupipe.models.score import score


#: The one-cycle schedule's regularisation (`TrainConfig.schedule`): the usual
#: CIFAR values, not tuned here; label smoothing 0.1 against 0 and 0.2 in
#: RESULTS.md §33 (benchmarks/bench_photo_recipe.py).
ONECYCLE_WEIGHT_DECAY = 5e-4
ONECYCLE_LABEL_SMOOTHING = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """How an auxiliary model is trained.

    model: a `gpupipe.models.nets.MODELS` name, ``"package.module:function"``, or
        "auto" (`nets.auto_model`: photo-cnn for colour images, else small-cnn).
    lr: the peak learning rate (None: the model's own for the schedule: Adam's 1e-3
        small-cnn, 1e-4 resnet50-layer1 on a plateau; SGD's 0.1 in one cycle).
    schedule: "plateau": Adam at a constant rate, early stopping on the validation
        loss, the best epoch's weights kept (the method's).  "onecycle": SGD with
        Nesterov momentum 0.9 and weight decay 5e-4, torch's ``OneCycleLR`` over
        ``max_epochs`` epochs (a quarter warming up), label smoothing 0.1, the
        last epoch's weights (validation only reported).  "auto" is resolved by
        the rank stage (`resolve_schedule`) and means "plateau" when `train` is
        called directly.
    image_size: side the images are resized to for the model (in memory).
    epoch_samples: an epoch shows at least this many (augmented) samples, repeating
        a small training set, so that a 180-image seed set still gets enough steps.
    max_epochs / patience: "plateau" stops when the validation loss has not improved
        for ``patience`` epochs and keeps the best epoch's weights; "onecycle" always
        trains ``max_epochs``.
    lr_decay: multiply the learning rate by this when the validation loss has
        not improved for ``max(1, patience // 2)`` epochs (torch's
        ``ReduceLROnPlateau``), so that a model early stopping would cut off
        at its plateau gets a few epochs at a lower rate first; 1.0 (the
        default): a constant rate.  Without validation the rate is constant;
        "onecycle" follows its cycle instead.
        Not the default: on CIFAR-10N's choose part (RESULTS.md §30) 0.1 ran
        more epochs (16-30 against 18-25) for a lower out-of-fold accuracy
        (0.592 against 0.604) and the same flag F1 (0.382 against 0.383).
    augment: None trains on plain images; "auto" is resolved by the rank stage
        (the method's set for a certified seed set, `AugmentConfig.light` out-of-fold)
        and means the method's set when `train` is called directly.
    init: a state_dict file whose tensors start the model (fine-tuning), e.g. the
        weights `gpupipe pretrain` learned from the run's own images; None: seeded init.
    """

    model: str = "auto"
    lr: float | None = None
    batch_size: int = 64
    image_size: int = 32
    epoch_samples: int = 2048
    max_epochs: int = 30
    patience: int = 5
    lr_decay: float = 1.0
    schedule: Literal["auto", "plateau", "onecycle"] = "auto"
    augment: AugmentConfig | None | Literal["auto"] = "auto"
    init: str | None = None     # a pretrained feature part to start from (`nets.load_init`), e.g. gpupipe pretrain's


@dataclass
class TrainResult:
    model: torch.nn.Module
    best_epoch: int
    epochs: int
    val_loss: list[float]
    val_accuracy: list[float]
    train_samples: int
    lr: list[float]             # the learning rate each epoch trained at
    margins: np.ndarray | None = None   # float32 (len(files),): each training row's area under the margin
    #                                     (`train`), NaN where no step after the warm-up saw it


def train(
    device: Device, files, labels: np.ndarray, val_files, val_labels: np.ndarray,
    *, num_classes: int, channels: int, config: TrainConfig, seed: int,
) -> TrainResult:
    """Train ``config.model`` on ``files`` with class indices ``labels (N,)`` in 0..num_classes-1.
    ``files`` and ``val_files``: what `file_pipeline` takes (file refs, or
    `gpupipe.dali.decoded.DecodedRefs`).

    Validation (no augmentation) runs after every epoch when ``val_files`` is
    non-empty; without it the model trains ``max_epochs`` epochs.

    Each training row's area under the margin (Pleiss et al., 2020, "Identifying
    mislabeled data using the area under the margin ranking") comes back in
    ``TrainResult.margins``: the mean, over the steps that showed the row after
    the first quarter of ``max_epochs`` (one cycle's warm-up), of the logit of
    its label minus the largest other logit.  A wrong label is one the model
    keeps failing to fit while it learns its class from the other images: out-of-fold,
    each row is trained on by the other folds' models, and their mean margin
    orders flags better than the held-out probabilities alone
    (`gpupipe.models.score.flag_order`, RESULTS.md §36).  It costs one gather
    and one max on logits the step computed anyway.
    """
    spec = nets.resolve_model(config.model, lr=config.lr, channels=channels, init=config.init)
    augment = AugmentConfig() if config.augment == "auto" else config.augment
    model = nets.build(spec, num_classes, channels, seed=seed)
    if config.init is not None:
        model = nets.load_init(model, config.init)
    model = model.to(device.torch_device)
    onecycle = config.schedule == "onecycle"
    repeat = max(1, math.ceil(config.epoch_samples / max(len(files), 1)))
    rows = np.tile(np.arange(len(files)), repeat)
    if onecycle:
        opt = torch.optim.SGD(model.parameters(), lr=spec.sgd_lr if config.lr is None else config.lr,
                              momentum=0.9, nesterov=True, weight_decay=ONECYCLE_WEIGHT_DECAY)
        steps = config.max_epochs * math.ceil(len(rows) / config.batch_size)
        cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=steps,
                                                    pct_start=0.25)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
        steps, cycle = 0, None
    smoothing = ONECYCLE_LABEL_SMOOTHING if onecycle else 0.0
    train_epochs = file_pipeline(device, take(files, rows), rows, size=config.image_size,
                                 channels=channels, batch_size=config.batch_size, augment=augment,
                                 shuffle=True, seed=seed)
    val_epochs = (file_pipeline(device, val_files, np.arange(len(val_files)), size=config.image_size,
                                channels=channels, batch_size=max(config.batch_size, 256))
                  if len(val_files) else None)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=device.torch_device)
    val_y = np.asarray(val_labels, np.int64)
    plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=config.lr_decay, patience=max(1, config.patience // 2) - 1, threshold=1e-4,
        threshold_mode="abs") if val_epochs is not None and config.lr_decay < 1.0 and not onecycle else None)
    best, best_state, best_epoch, stale = math.inf, None, 0, 0
    losses: list[float] = []
    accs: list[float] = []
    rates: list[float] = []
    step = 0
    warm = max(1, config.max_epochs // 4)
    margin_sum = torch.zeros(len(files), dtype=torch.float64, device=device.torch_device)
    margin_n = torch.zeros(len(files), dtype=torch.float64, device=device.torch_device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(1, config.max_epochs + 1):
            model.train()
            rates.append(float(opt.param_groups[0]["lr"]))
            for x, r in train_epochs:
                x = nets.as_input(x.to(device.torch_device, non_blocking=True))
                at = torch.as_tensor(r, device=device.torch_device)
                target = y[at]
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.is_gpu):
                    logits = model(x)
                    loss = F.cross_entropy(logits, target, label_smoothing=smoothing)
                if epoch > warm:
                    with torch.no_grad():
                        lo = logits.detach().double()
                        own = lo.gather(1, target[:, None])[:, 0]
                        other = lo.scatter(1, target[:, None], -math.inf).max(dim=1).values
                        margin_sum.index_add_(0, at, own - other)
                        margin_n.index_add_(0, at, torch.ones_like(own))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if cycle is not None and step < steps:
                    cycle.step()
            if val_epochs is None:
                continue
            s = score(model, val_epochs, val_y, torch_device=device.torch_device)
            losses.append(float(s.loss.mean()))
            accs.append(float((s.pred == val_y[s.rows]).mean()))
            if plateau is not None:
                plateau.step(losses[-1])
            if onecycle:                 # the cycle's end is the model: no early stop, no best epoch
                best_epoch = epoch
            elif losses[-1] < best - 1e-4:
                best, best_epoch, stale = losses[-1], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= config.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    seen = margin_n > 0
    margins = torch.where(seen, margin_sum / margin_n.clamp_min(1), torch.nan).float().cpu().numpy()
    return TrainResult(model, best_epoch or config.max_epochs, epoch, losses, accs, len(files), rates, margins)
