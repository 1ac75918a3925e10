"""The one training loop every launcher runs: Ray Train workers, a plain Tune function, a test.

    def report(metrics: dict, checkpoint_dir: str | None) -> None: ...
    train_loop({"task": "pneumonia", "model": "simple_cnn", "epochs": 3, "lr": 1e-3}, report,
               data=load_npz(path, get_task("pneumonia")))

`train_loop` knows nothing of who called it: after every epoch it evaluates the validation
split and calls `report(metrics, checkpoint_dir)`. On rank 0 the directory holds a fresh
self-describing checkpoint of that epoch, every epoch (the launcher keeps what it needs: Ray
keeps the best by the task metric plus the latest, so a retried trial resumes where it stopped
and the best is never lost); other ranks pass `None`. The directory is temporary: Ray Train
wraps `report` around `ray.train.report`, which copies it; a plain caller copies it away.
Launchers live in `search/`. `TrainConfig` lists every setting; `KNOBS` names the five
searched ones.

The loop is flat: `setup` builds a `Trial` once, `run_epoch` trains and evaluates one epoch
(`train_one_epoch`, `evaluate`, both over a `Step`), `save_and_report` checkpoints.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch

from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import KNOBS, SCHEDULES, TrainConfig
from trainables.data import (
    STATS_KEY,
    batch_indices,
    channel_stats,
    make_augment,
    normaliser,
    to_device_images,
)
from trainables.kinds import Kind
from trainables.models import PRETRAINED, Classifier, build_model, set_backbone_frozen, train_mode
from trainables.scores import improves
from trainables.stream import RESIDENT, STREAM, Streamed, as_rows, device_batches, is_streamed
from trainables.tasks import Task, get_task

__all__ = [
    "KNOBS",
    "SCHEDULES",
    "Step",
    "TrainConfig",
    "Trial",
    "evaluate",
    "train_loop",
    "train_one_epoch",
]
Report = Callable[[dict, "str | None"], None]
log = logging.getLogger("medsweep")


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
    """Seed model initialisation (epochs reseed themselves, see `_seed_epoch`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    step: Step
    model: Classifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
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
    device: torch.device
    rank: int = 0
    world_size: int = 1


def train_loop(
    config: dict | TrainConfig,
    report: Report,
    data: dict[str, np.ndarray],
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    resume_from: str | None = None,
    task: Task | None = None,
    data_path: str = "auto",
) -> None:
    """Train one trial, reporting after every epoch. See the module docstring.

    `resume_from` is a checkpoint directory this trial wrote before (a retried trial or a
    restarted worker): model, optimizer, scheduler, epoch and best score continue from it.
    `task` overrides the registry's record (a `folder` task's classes come from its data).
    `data_path`: `resident` (images copied to the device once), `stream` (batches read from
    `data`'s arrays, memmaps or `trainables.stream.Rows` as they are needed), or `auto`:
    stream memmaps and `Rows`, keep arrays resident.
    """
    trial = setup(config, data, rank, world_size, device, resume_from, task, data_path)
    cfg, metric, mode = trial.cfg, trial.task.metric, trial.task.mode
    start, best = _restore(resume_from, trial)
    net, net_frozen = None, None
    for epoch in range(start, cfg.epochs):
        generator = _seed_epoch(cfg.seed, rank, epoch)  # a resumed epoch draws the same
        frozen = trial.pretrained and epoch < cfg.unfreeze_epoch
        set_backbone_frozen(trial.model, frozen)
        if frozen != net_frozen:  # DDP fixes its set of trained parameters when it is built
            net, net_frozen = _maybe_ddp(trial.model, world_size, trial.device), frozen
        train_mode(trial.model, frozen)
        result = run_epoch(trial, net, epoch, generator, frozen)
        if improves(result[metric], best, mode):
            best = result[metric]
        result[f"best_{metric}"] = best if best is not None else float("nan")
        save_and_report(trial, epoch, result, report)


def setup(
    config: dict | TrainConfig,
    data: dict[str, np.ndarray],
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    resume_from: str | None = None,
    task: Task | None = None,
    data_path: str = "auto",
) -> Trial:
    """Config, data on (or streaming to) the device, model, loss, optimizer and scheduler of
    one trial. Seeds from `cfg.seed + rank` first, so initial weights follow the seed.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    task = task or get_task(cfg.task)
    cfg = cfg.resolved(task)
    device = pick_device(device)
    place = _placer(data, data_path, device)
    seed_everything(cfg.seed + rank)
    mean, std = data.get(STATS_KEY) or channel_stats(data["train_images"])
    weights = "none" if resume_from else cfg.weights  # the checkpoint holds the weights
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
    kind = task.kind_ops
    class_w = kind.class_weights(data["train_labels"], len(task.classes), cfg.class_weight_power)
    loss_fn = kind.make_loss(class_w.to(device), **kind.loss_settings(cfg))
    step = Step(
        kind,
        loss_fn,
        normaliser(mean, std, device),
        _autocast(cfg.precision, device),
        cfg.batch_size,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return Trial(
        cfg=cfg,
        task=task,
        step=step,
        model=model,
        optimizer=optimizer,
        scheduler=_scheduler(optimizer, cfg),
        augment=make_augment(task.augment, task.channels, cfg.image_size, kind.dense).to(device),
        x_train=place(data["train_images"]),
        y_train=torch.from_numpy(np.asarray(data["train_labels"])).to(device),
        x_val=place(data["val_images"]),
        y_val=np.asarray(data["val_labels"]),
        stats=(mean, std),
        pretrained=cfg.model in PRETRAINED and cfg.weights != "none",
        device=device,
        rank=rank,
        world_size=world_size,
    )


def _placer(data: dict, data_path: str, device: torch.device) -> Callable:
    """How this trial holds its images: copied to the device once, or streamed to it."""
    if data_path not in ("auto", RESIDENT, STREAM):
        raise ValueError(f"data_path {data_path!r}: choose auto, {RESIDENT} or {STREAM}")
    stream = data_path == STREAM or (data_path == "auto" and is_streamed(data["train_images"]))
    n = len(data["train_images"]) + len(data["val_images"])
    log.info("data: %s, %d train+val images, on %s", STREAM if stream else RESIDENT, n, device)
    if stream:
        return lambda images: Streamed(as_rows(images), device)
    return lambda images: to_device_images(np.asarray(images), device)


def run_epoch(
    trial: Trial, net: torch.nn.Module, epoch: int, generator: torch.Generator, frozen: bool
) -> dict[str, float]:
    """Train `net` (the model, or its DDP wrapper) for one epoch, evaluate the validation
    split, step the scheduler; the epoch's flat metrics. A non-finite loss raises."""
    cfg, step = trial.cfg, trial.step
    augmenting = epoch < cfg.aug_cutoff_epoch
    started = time.perf_counter()
    train_loss, seen = train_one_epoch(
        net,
        step,
        trial.x_train,
        trial.y_train,
        optimizer=trial.optimizer,
        generator=generator,
        augment=trial.augment if augmenting else None,
        max_batches=cfg.max_batches,
        rank=trial.rank,
        world_size=trial.world_size,
    )
    elapsed = time.perf_counter() - started
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"training loss is {train_loss} at epoch {epoch + 1} (lr={cfg.lr:g}); "
            "the trial stops here and is recorded as errored"
        )
    val = evaluate(trial.model, step, trial.x_val, trial.y_val)
    if isinstance(trial.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        trial.scheduler.step(val["loss"])
    else:
        trial.scheduler.step()
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        **{f"val_{k}": v for k, v in val.items()},
        "lr_now": trial.optimizer.param_groups[0]["lr"],
        "frozen": int(frozen),
        "augmented": int(augmenting),
        "images_per_s": seen * trial.world_size / max(elapsed, 1e-9),
        "streamed": int(isinstance(trial.x_train, Streamed)),
    }


def save_and_report(trial: Trial, epoch: int, result: dict, report: Report) -> None:
    """Rank 0: write this epoch's checkpoint to a temporary directory and report it there
    (every epoch; see the module docstring). Other ranks report the metrics alone."""
    if trial.rank != 0:
        report(result, None)
        return
    with tempfile.TemporaryDirectory(prefix="medsweep-ckpt-") as tmp:
        save_checkpoint(tmp, _payload(trial, epoch, result))
        report(result, tmp)


def _restore(path: str | None, trial: Trial) -> tuple[int, float | None]:
    """Load a checkpoint of this trial into the training state; (next epoch, best score)."""
    if not path:
        return 0, None
    ckpt = load_checkpoint(path)
    trial.model.load_state_dict(ckpt["state_dict"])
    trial.optimizer.load_state_dict(ckpt["optimizer"])
    if "scheduler" in ckpt:
        trial.scheduler.load_state_dict(ckpt["scheduler"])
    best = ckpt["metrics"].get(f"best_{ckpt['metric']}") if "metric" in ckpt else None
    return int(ckpt["epoch"]), best


def _seed_epoch(seed: int, rank: int, epoch: int) -> torch.Generator:
    """Seed every generator from (seed, rank, epoch): epochs replay identically on resume."""
    mixed = (seed * 1_000_003 + rank * 7919 + epoch) % 2**31
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)
    return torch.Generator().manual_seed(mixed)


def train_one_epoch(
    net: torch.nn.Module,
    step: Step,
    x: torch.Tensor | Streamed,
    y: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None = None,
    augment: torch.nn.Module | None = None,
    max_batches: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[float, int]:
    """One pass over this rank's shard of uint8 images `x` (on the device, or `Streamed`) and
    stored labels `y` (at most `max_batches` batches when it is > 0); (mean loss, images seen).
    """
    total, seen = 0.0, 0
    batches = batch_indices(len(x), step.batch_size, True, generator, rank, world_size)
    batches = list(itertools.islice(batches, max_batches or None))
    for idx, images in zip(batches, device_batches(x, batches), strict=True):
        idx = idx.to(y.device)
        images = images.float().div_(255.0)
        targets = step.kind.loss_targets(y[idx])
        if augment is not None:  # a mask moves with its image (the kind knows)
            images, targets = step.kind.augment_batch(augment, images, targets)
        images = step.normalise(images)
        with step.autocast():
            logits = net(images)
        loss = step.loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / max(seen, 1), seen


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, step: Step, x: torch.Tensor, labels: np.ndarray
) -> dict[str, float]:
    """Loss (the kind's unweighted loss, so trials with different class weights compare) and
    the kind's metrics over the whole split of uint8 images `x` (on the device, or `Streamed`)
    and stored `labels` (every rank evaluates all of it); the mode is restored."""
    was_training = model.training
    model.eval()
    logits = []
    for images in device_batches(x, batch_indices(len(x), max(step.batch_size, 256), False)):
        with step.autocast():
            logits.append(model(step.normalise(images.float().div_(255.0))).float())
    out = torch.cat(logits)
    target = step.kind.loss_targets(torch.as_tensor(labels, device=out.device))
    loss = float(step.kind.make_loss()(out, target))  # unweighted: comparable across trials
    model.train(was_training)
    return {"loss": loss, **step.kind.metrics(labels, step.kind.probabilities(out))}


def _autocast(precision: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _scheduler(optimizer, cfg: TrainConfig):
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=2)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _maybe_ddp(model: Classifier, world_size: int, device: torch.device) -> torch.nn.Module:
    if world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _payload(trial: Trial, epoch: int, result: dict) -> dict:
    """The checkpoint of `epoch` (see `trainables.checkpoint` for the keys)."""
    task, cfg = trial.task, trial.cfg
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "extra"}
    mean, std = trial.stats
    return {
        "task": task.name,
        "kind": task.kind,
        "classes": list(task.classes),
        "channels": task.channels,
        "model": cfg.model,
        "image_size": cfg.image_size,
        "config": config,
        "normalisation": {"mean": mean, "std": std},
        "epoch": epoch + 1,
        "metrics": {k: float(v) for k, v in result.items()},
        "state_dict": {k: v.detach().cpu() for k, v in trial.model.state_dict().items()},
        "optimizer": trial.optimizer.state_dict(),
        "scheduler": trial.scheduler.state_dict(),
        "metric": task.metric,
        "data": dict(cfg.data_fingerprint),
    }
