"""The one training loop every launcher runs: Ray Train workers, a plain Tune function, a test.

    def report(metrics: dict, checkpoint_dir: str | None) -> None: ...
    train_loop({"task": "pneumonia", "model": "simple_cnn", "epochs": 3, "lr": 1e-3}, report,
               data=load_npz(path, get_task("pneumonia")))

`train_loop` knows nothing of who called it: after every epoch it evaluates the validation
split and calls `report(metrics, checkpoint_dir)`, with a directory holding a fresh
self-describing checkpoint when the task metric improved (`None` otherwise). Ray Train wraps
`report` around `ray.train.report`; a plain caller can copy the directory away. Launchers live
in `search/`. `TrainConfig` lists every setting; the five searched knobs are among them.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from trainables import metrics as M
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.data import (
    batch_indices,
    channel_stats,
    make_augment,
    normaliser,
    to_device_images,
)
from trainables.models import PRETRAINED, Classifier, build_model, set_backbone_frozen, train_mode
from trainables.tasks import Task, get_task

Report = Callable[[dict, "str | None"], None]
SCHEDULES = ("none", "cosine", "plateau")
KNOBS = ("lr", "dropout", "class_weight_power", "aug_cutoff_epoch", "unfreeze_epoch")


@dataclass
class TrainConfig:
    """Every setting of one trial. A space file may search or fix any of them by name."""

    task: str = "pathology"
    """Task name from `trainables.tasks`."""
    model: str = ""
    """Model name from `trainables.models.MODELS`; empty means the task's default."""
    weights: str = "none"
    """`none`, `imagenet`, or a path to a torchvision state-dict file."""
    image_size: int = 0
    """Image size in pixels; 0 means the task's default."""
    epochs: int = 10
    """Number of epochs."""
    batch_size: int = 128
    """Batch size per worker."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    dropout: float = 0.0
    """Dropout before the classifier's last layer."""
    class_weight_power: float = 0.0
    """Loss weight of class c is n_c ** -p (0 = none, 1 = inverse frequency)."""
    aug_cutoff_epoch: int = 0
    """Augment for epochs < k, then train on clean images."""
    unfreeze_epoch: int = 0
    """Pretrained backbone frozen for epochs < k (0 = fine-tune from the start)."""
    lr_schedule: str = "none"
    """`none`, `cosine` (over all epochs) or `plateau` (x0.1 after 2 epochs without a lower
    val_loss, as the malaria seed did)."""
    head_hidden: int = 0
    """Hidden width of a two-layer head (Linear-ReLU-Dropout-Linear); 0 = one linear layer."""
    seed: int = 0
    """Seed for weights, shuffling and augmentation."""
    max_batches: int = 0
    """Stop each epoch after this many batches (0 = all); for smoke tests."""
    precision: str = "auto"
    """`auto` (bf16 autocast on GPU, fp32 on CPU), `fp32` or `bf16`."""
    extra: dict = field(default_factory=dict)
    """Launcher-owned values (data references, paths) that training ignores."""

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs {self.epochs} must be >= 1"),
            (self.batch_size >= 1, f"batch_size {self.batch_size} must be >= 1"),
            (self.lr > 0, f"lr {self.lr} must be > 0"),
            (0.0 <= self.dropout < 1.0, f"dropout {self.dropout} must lie in [0, 1)"),
            (self.class_weight_power >= 0, "class_weight_power must be >= 0"),
            (self.aug_cutoff_epoch >= 0, "aug_cutoff_epoch must be >= 0"),
            (self.unfreeze_epoch >= 0, "unfreeze_epoch must be >= 0"),
            (
                self.lr_schedule in SCHEDULES,
                f"lr_schedule {self.lr_schedule!r}: one of {SCHEDULES}",
            ),
            (self.head_hidden >= 0, f"head_hidden {self.head_hidden} must be >= 0"),
            (self.precision in ("auto", "fp32", "bf16"), "precision: auto, fp32 or bf16"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from a flat dict; an unknown key is an error naming the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {unknown}; valid settings: {sorted(names)}"
            )
        typed = {k: _coerce(cls, k, v) for k, v in values.items()}
        return cls(**typed)

    def resolved(self, task: Task) -> TrainConfig:
        """This config with the task's defaults filled in."""
        return dataclasses.replace(
            self,
            model=self.model or task.model,
            image_size=self.image_size or task.image_size,
        )


def _coerce(cls: type, name: str, value):
    kind = {f.name: f.type for f in dataclasses.fields(cls)}[name]
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "float" and isinstance(value, int | np.integer | np.floating):
        return float(value)
    return value


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed model initialisation (epochs reseed themselves, see `_seed_epoch`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_loop(
    config: dict | TrainConfig,
    report: Report,
    data: dict[str, np.ndarray],
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    resume_from: str | None = None,
    task: Task | None = None,
) -> None:
    """Train one trial, reporting after every epoch. See the module docstring.

    `resume_from` is a checkpoint directory this trial wrote before (a retried trial or a
    restarted worker): model, optimizer, scheduler, epoch and best score continue from it.
    `task` overrides the registry's record (a `folder` task's classes come from its data).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    task = task or get_task(cfg.task)
    cfg = cfg.resolved(task)
    device = device or pick_device()
    seed_everything(cfg.seed + rank)
    x_train = to_device_images(data["train_images"], device)
    y_train = torch.from_numpy(data["train_labels"]).to(device)
    x_val = to_device_images(data["val_images"], device)
    y_val = data["val_labels"]
    mean, std = channel_stats(data["train_images"])
    normalise = normaliser(mean, std, device)

    pretrained = cfg.model in PRETRAINED and cfg.weights != "none"
    weights = "none" if resume_from else cfg.weights  # the checkpoint holds the weights
    model = build_model(
        cfg.model, task.num_outputs, task.channels, cfg.image_size, cfg.dropout, weights,
        cfg.head_hidden,
    ).to(device)  # fmt: skip
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    class_w = M.class_weights(
        task.kind, data["train_labels"], task.num_outputs, cfg.class_weight_power
    )
    loss_fn = M.make_loss(task.kind, class_w.to(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(optimizer, cfg)
    augment = make_augment(task.augment, task.channels, cfg.image_size).to(device)
    autocast = _autocast(cfg.precision, device)
    start, best = _restore(resume_from, model, optimizer, scheduler, device)

    net, net_frozen = None, None
    for epoch in range(start, cfg.epochs):
        generator = _seed_epoch(cfg.seed, rank, epoch)  # a resumed epoch draws the same
        frozen = pretrained and epoch < cfg.unfreeze_epoch
        set_backbone_frozen(model, frozen)
        if frozen != net_frozen:  # DDP fixes its set of trained parameters when it is built
            net, net_frozen = _maybe_ddp(model, world_size, device), frozen
        train_mode(model, frozen)
        augmenting = epoch < cfg.aug_cutoff_epoch
        started = time.perf_counter()
        train_loss, seen = train_one_epoch(
            net, x_train, y_train, task.kind, loss_fn, optimizer, normalise,
            augment if augmenting else None, autocast, cfg, generator, rank, world_size,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss is {train_loss} at epoch {epoch + 1} (lr={cfg.lr:g}); "
                "the trial stops here and is recorded as errored"
            )
        val = evaluate(model, x_val, y_val, task.kind, loss_fn, normalise, autocast, cfg)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val["loss"])
        else:
            scheduler.step()
        result = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            **{f"val_{k}": v for k, v in val.items()},
            "lr_now": optimizer.param_groups[0]["lr"],
            "frozen": int(frozen),
            "augmented": int(augmenting),
            "images_per_s": seen * world_size / max(elapsed, 1e-9),
        }
        if _improved(result[task.metric], best, task.mode):
            best = result[task.metric]
        result[f"best_{task.metric}"] = best if best is not None else float("nan")
        # Every epoch leaves a checkpoint: Ray keeps the best by the metric plus the latest,
        # so a retried trial resumes where it stopped and the best is never lost.
        if rank == 0:
            payload = _payload(task, cfg, model, optimizer, scheduler, epoch, result, mean, std)
            with tempfile.TemporaryDirectory(prefix="medsweep-ckpt-") as tmp:
                save_checkpoint(tmp, payload)
                report(result, tmp)
        else:
            report(result, None)


def _restore(path, model, optimizer, scheduler, device) -> tuple[int, float | None]:
    """Load a checkpoint of this trial into the training state; (next epoch, best score)."""
    if not path:
        return 0, None
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if "scheduler" in ckpt:
        scheduler.load_state_dict(ckpt["scheduler"])
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
    net, x, y, kind, loss_fn, optimizer, normalise, augment, autocast, cfg, generator,
    rank=0, world_size=1,
) -> tuple[float, int]:  # fmt: skip
    """One pass over this rank's shard; returns (mean loss, images seen)."""
    total, seen = 0.0, 0
    batches = batch_indices(len(x), cfg.batch_size, True, generator, rank, world_size)
    for step, idx in enumerate(batches):
        if cfg.max_batches and step >= cfg.max_batches:
            break
        idx = idx.to(x.device)
        images = x[idx].float().div_(255.0)
        if augment is not None:
            images = augment(images)
        images = normalise(images)
        with autocast():
            logits = net(images)
        loss = loss_fn(logits.float(), M.loss_targets(kind, y[idx]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / max(seen, 1), seen


@torch.no_grad()
def evaluate(model, x, labels, kind, loss_fn, normalise, autocast, cfg) -> dict[str, float]:
    """Loss and metrics over the whole split (every rank evaluates all of it)."""
    was_training = model.training
    model.eval()
    logits = []
    for idx in batch_indices(len(x), max(cfg.batch_size, 256), shuffle=False):
        with autocast():
            logits.append(model(normalise(x[idx.to(x.device)].float().div_(255.0))).float())
    out = torch.cat(logits)
    target = M.loss_targets(kind, torch.as_tensor(labels, device=out.device))
    loss = float(loss_fn(out, target))
    model.train(was_training)
    return {"loss": loss, **M.compute_metrics(kind, labels, M.probabilities(kind, out))}


def _autocast(precision: str, device: torch.device):
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


def _improved(score: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(score):
        return best is None
    if best is None or not math.isfinite(best):
        return True
    return score > best if mode == "max" else score < best


def _payload(task, cfg, model, optimizer, scheduler, epoch, result, mean, std) -> dict:
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "extra"}
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
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "metric": task.metric,
    }
