"""The one training loop every launcher runs: Ray Train workers, a plain Tune function, a test.

    def report(metrics: dict, checkpoint_dir: str | None) -> None: ...
    train_loop({"task": "pneumonia", "model": "simple_cnn", "epochs": 3, "lr": 1e-3}, report,
               data=load_npz(path, get_task("pneumonia")))
    train_loop(config, report, data, placement=Placement(rank, world_size, device))  # DDP

`train_loop` knows nothing of who called it: after every epoch it evaluates the validation
split and calls `report(metrics, checkpoint_dir)`. On rank 0 the directory holds a fresh
self-describing checkpoint of that epoch, every epoch (the launcher keeps what it needs: Ray
keeps the best by the task metric plus the latest, so a retried trial resumes where it stopped
and the best is never lost); other ranks pass `None`. The directory is temporary: Ray Train
wraps `report` around `ray.train.report`, which copies it; a plain caller copies it away.
Launchers live in `search/`. `TrainConfig` lists every setting; `KNOBS` names the five
searched ones.

The loop is flat: `trainables.trial.setup` builds a `Trial` once, `run_epoch` trains and
evaluates one epoch (`train_one_epoch`, `evaluate`, both over the trial's `Step`),
`save_and_report` checkpoints.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from trainables.calibration import calibration_error
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import KNOBS, SCHEDULES, TrainConfig
from trainables.data import batch_indices
from trainables.models import Classifier, set_backbone_frozen, train_mode
from trainables.scores import CHECKPOINT_SCORE, checkpoint_score, improves
from trainables.stream import Streamed, device_batches
from trainables.tasks import Task
from trainables.trial import Placement, Step, Trial, setup

__all__ = [
    "KNOBS",
    "SCHEDULES",
    "Placement",
    "TrainConfig",
    "evaluate",
    "train_loop",
    "train_one_epoch",
]
Report = Callable[[dict, "str | None"], None]


def train_loop(
    config: dict | TrainConfig,
    report: Report,
    data: dict[str, np.ndarray],
    *,
    placement: Placement | None = None,
    resume_from: str | None = None,
    task: Task | None = None,
) -> None:
    """Train one trial, reporting after every epoch. See the module docstring.

    `placement`: this worker's rank, the trial's world size, the device and the data path
    (`trainables.trial.Placement`; default: one worker, CUDA when there is one, `auto`).
    `resume_from` is a checkpoint directory this trial wrote before (a retried trial or a
    restarted worker): model, optimizer, scheduler, epoch and best score continue from it.
    `task` overrides the registry's record (a `folder` task's classes come from its data).
    """
    trial = setup(config, data, placement, resume_from, task)
    cfg, metric, mode = trial.cfg, trial.task.metric, trial.task.mode
    rank, world_size = trial.placement.rank, trial.placement.world_size
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
        improved = improves(result[metric], best, mode)
        if improved:
            best = result[metric]
        result[f"best_{metric}"] = best if best is not None else float("nan")
        result[CHECKPOINT_SCORE] = checkpoint_score(result[metric], improved, mode)
        save_and_report(trial, epoch, result, report)


def run_epoch(
    trial: Trial, net: torch.nn.Module, epoch: int, generator: torch.Generator, frozen: bool
) -> dict[str, float]:
    """Train `net` (the model, or its DDP wrapper) for one epoch, evaluate the validation
    split, step the scheduler; the epoch's flat metrics. A non-finite loss raises."""
    cfg, step = trial.cfg, trial.step
    augmenting = epoch < cfg.aug_cutoff_epoch
    started = time.perf_counter()
    train_loss, seen = train_one_epoch(trial, net, generator, augmenting)
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
        "images_per_s": seen * trial.placement.world_size / max(elapsed, 1e-9),
        "streamed": int(isinstance(trial.x_train, Streamed)),
    }


def save_and_report(trial: Trial, epoch: int, result: dict, report: Report) -> None:
    """Rank 0: write this epoch's checkpoint to a temporary directory and report it there
    (every epoch; see the module docstring). Other ranks report the metrics alone."""
    if trial.placement.rank != 0:
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
    trial: Trial, net: torch.nn.Module, generator: torch.Generator, augmenting: bool
) -> tuple[float, int]:
    """One pass of `net` (the trial's model, or its DDP wrapper) over this rank's shard of the
    trial's uint8 training images (on the device, or `Streamed`) and stored labels, in the
    order `generator` draws (at most `cfg.max_batches` batches when it is > 0), augmented when
    `augmenting`; (mean loss, images seen)."""
    step, y, optimizer = trial.step, trial.y_train, trial.optimizer
    augment = trial.augment if augmenting else None
    rank, world_size = trial.placement.rank, trial.placement.world_size
    total, seen = 0.0, 0
    batches = batch_indices(len(trial.x_train), step.batch_size, True, generator, rank, world_size)
    batches = list(itertools.islice(batches, trial.cfg.max_batches or None))
    for idx, images in zip(batches, device_batches(trial.x_train, batches), strict=True):
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
    probs = step.kind.probabilities(out)
    figures = {"loss": loss, **step.kind.metrics(labels, probs)}
    if "ece" in step.kind.validation_figures():
        figures["ece"] = calibration_error(step.kind, labels, probs)
    return figures


def _maybe_ddp(model: Classifier, world_size: int, device: torch.device) -> torch.nn.Module:
    if world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _payload(trial: Trial, epoch: int, result: dict) -> dict:
    """The checkpoint of `epoch` (see `trainables.checkpoint` for the keys)."""
    task, cfg = trial.task, trial.cfg
    mean, std = trial.stats
    return {
        "task": task.name,
        "kind": task.kind,
        "classes": list(task.classes),
        "channels": task.channels,
        "model": cfg.model,
        "image_size": cfg.image_size,
        "config": dataclasses.asdict(cfg),
        "normalisation": {"mean": mean, "std": std},
        "epoch": epoch + 1,
        "metrics": {k: float(v) for k, v in result.items()},
        "state_dict": {k: v.detach().cpu() for k, v in trial.model.state_dict().items()},
        "optimizer": trial.optimizer.state_dict(),
        "scheduler": trial.scheduler.state_dict(),
        "metric": task.metric,
        "data": dict(cfg.data_fingerprint),
    }
