"""One trial's state, built once before its first epoch: settings, data, model, loss, optimizer.

    trial = setup({"task": "pneumonia", "model": "simple_cnn"}, data, Placement(device=cpu))
    trial.model, trial.optimizer, trial.step.loss_fn, trial.x_train   # what the epochs use

`Placement` says where one copy of the training loop runs (its rank among the trial's workers,
its device) and how it holds its images (copied to the device once, or streamed to it); `Step`
is how a batch goes through the model, the same in training and evaluation; `Trial` holds
both with everything else an epoch needs. `trainables.train` runs the epochs over a `Trial`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch

from trainables.config import TrainConfig
from trainables.data import STATS_KEY, channel_stats, make_augment, normaliser, to_device_images
from trainables.kinds import Kind
from trainables.models import PRETRAINED, Classifier, build_model, check_model
from trainables.stream import RESIDENT, STREAM, Streamed, as_rows, is_streamed
from trainables.tasks import Task, get_task

__all__ = ["DATA_PATHS", "Placement", "Step", "Trial", "pick_device", "setup"]
DATA_PATHS = ("auto", RESIDENT, STREAM)
log = logging.getLogger("medsweep")
Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


@dataclass(frozen=True)
class Placement:
    """Where one copy of the training loop runs, and how it holds its images."""

    rank: int = 0
    """This worker's rank among the trial's workers (DDP); 0 for a one-worker trial."""
    world_size: int = 1
    """How many workers train this trial together."""
    device: torch.device | None = None
    """The device to train on; None: CUDA when there is one, else the CPU (`pick_device`)."""
    data_path: str = "auto"
    """`resident` (images copied to the device once), `stream` (batches read from the data's
    arrays, memmaps or `trainables.stream.Rows` as they are needed), or `auto`: stream memmaps
    and `Rows`, keep arrays resident."""

    def __post_init__(self) -> None:
        if self.data_path not in DATA_PATHS:
            raise ValueError(
                f"data_path {self.data_path!r}: choose {', '.join(DATA_PATHS[:-1])} or {STREAM}"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} must lie in 0..{self.world_size - 1}")


@dataclass(frozen=True)
class Step:
    """How a batch goes through the model, the same in training and evaluation."""

    kind: Kind
    """The task kind: loss targets, probabilities and metrics."""
    loss_fn: torch.nn.Module
    """The kind's loss, with the class weights of this trial."""
    normalise: Callable[[torch.Tensor], torch.Tensor]
    """Float images in [0, 1] to the model's input (training mean and std)."""
    autocast: Callable[[], AbstractContextManager]
    """A fresh autocast context (bf16 or disabled) per forward pass."""
    batch_size: int
    """Training batch size per worker (evaluation uses at least 256)."""


@dataclass(frozen=True)
class Trial:
    """One trial's state, built once by `setup` before its first epoch."""

    cfg: TrainConfig
    task: Task
    placement: Placement
    """Where this copy of the loop runs; its device is resolved (never None)."""
    step: Step
    model: Classifier
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    augment: torch.nn.Module
    x_train: torch.Tensor | Streamed
    """uint8 (N, C, H, W) training images on the device (resident), or streamed to it."""
    y_train: torch.Tensor
    """Stored training labels on the device."""
    x_val: torch.Tensor | Streamed
    y_val: np.ndarray
    """Stored validation labels (numpy: the metrics are scikit-learn's)."""
    stats: tuple[list[float], list[float]]
    """Per-channel mean and std of the training images, saved in every checkpoint."""
    pretrained: bool
    """Whether the backbone starts from pretrained weights (only then can it be frozen)."""

    @property
    def device(self) -> torch.device:
        return self.placement.device


def setup(
    config: dict | TrainConfig,
    data: dict[str, np.ndarray],
    placement: Placement | None = None,
    resume_from: str | None = None,
    task: Task | None = None,
) -> Trial:
    """Config, data on (or streaming to) the device, model, loss, optimizer and scheduler of
    one trial, placed by `placement` (default: one worker, `pick_device`'s device). Seeds
    from `cfg.seed + rank` first, so initial weights follow the seed. With `resume_from` the
    model starts without pretrained weights: the checkpoint holds them.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    task = task or get_task(cfg.task)
    cfg = cfg.resolved(task)
    placement = placement or Placement()
    placement = dataclasses.replace(placement, device=pick_device(placement.device))
    device = placement.device
    place = _placer(data, placement)
    seed_everything(cfg.seed + placement.rank)
    mean, std = data.get(STATS_KEY) or channel_stats(data["train_images"])
    model = _model(cfg, task, "none" if resume_from else cfg.weights, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    kind = task.kind_ops
    augment = make_augment(task.augment, task.channels, cfg.image_size, kind.augment_keys())
    return Trial(
        cfg=cfg,
        task=task,
        placement=placement,
        step=_step(cfg, task, data["train_labels"], (mean, std), device),
        model=model,
        optimizer=optimizer,
        scheduler=_scheduler(optimizer, cfg),
        augment=augment.to(device),
        x_train=place(data["train_images"]),
        y_train=torch.from_numpy(np.asarray(data["train_labels"])).to(device),
        x_val=place(data["val_images"]),
        y_val=np.asarray(data["val_labels"]),
        stats=(mean, std),
        pretrained=cfg.model in PRETRAINED and cfg.weights != "none",
    )


def pick_device(device: torch.device | None = None) -> torch.device:
    """`device`, or CUDA when there is one; the CPU (said once, here) when Ray gave this trial
    a GPU that has no CUDA behind it (a fake autoscaling cluster's GPU)."""
    device = torch.device(device) if device is not None else None
    if torch.cuda.is_available():
        return device or torch.device("cuda")
    if (device is not None and device.type == "cuda") or os.environ.get("CUDA_VISIBLE_DEVICES"):
        log.warning(
            "this trial was given GPU %s (CUDA_VISIBLE_DEVICES=%r) but CUDA is not "
            "available; training on the CPU",
            device or "",
            os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed model initialisation (epochs reseed themselves: `trainables.train`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _model(cfg: TrainConfig, task: Task, weights: str, device: torch.device) -> Classifier:
    """The trial's model on `device` (channels-last on CUDA), starting from `weights`."""
    check_model(cfg.model, task.kind_ops)
    model = build_model(
        cfg.model,
        task.num_outputs,
        task.channels,
        cfg.image_size,
        cfg.dropout,
        weights,
        cfg.head_hidden,
    ).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _step(
    cfg: TrainConfig, task: Task, train_labels: np.ndarray, stats: tuple, device: torch.device
) -> Step:
    """The trial's `Step`: the kind's loss weighted by `class_weight_power` over the training
    labels, normalisation by the training images' `stats`, the precision's autocast."""
    kind = task.kind_ops
    class_w = kind.class_weights(train_labels, len(task.classes), cfg.class_weight_power)
    loss_fn = kind.make_loss(class_w.to(device), **kind.loss_settings(cfg))
    return Step(
        kind,
        loss_fn,
        normaliser(*stats, device),
        _autocast(cfg.precision, device),
        cfg.batch_size,
    )


def _placer(data: dict, placement: Placement) -> Callable:
    """How this trial holds its images: copied to the device once, or streamed to it."""
    path, device = placement.data_path, placement.device
    stream = path == STREAM or (path == "auto" and is_streamed(data["train_images"]))
    n = len(data["train_images"]) + len(data["val_images"])
    log.info("data: %s, %d train+val images, on %s", STREAM if stream else RESIDENT, n, device)
    if stream:
        return lambda images: Streamed(as_rows(images), device)
    return lambda images: to_device_images(np.asarray(images), device)


def _autocast(precision: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Scheduler:
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=2)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
