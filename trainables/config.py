"""Every setting of one trial, typed and checked, and the names of the five searched knobs.

    cfg = TrainConfig.from_dict({"task": "blood", "lr": 3e-3})   # a misspelt key fails loudly
    cfg = cfg.resolved(get_task("blood"))                         # task defaults filled in

A space file (`spaces/*.yaml`) may search or fix any setting by name; `KNOBS` are the ones
every seed searches (DESIGN.md). `trainables.train` re-exports both names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from trainables.tasks import Task

SCHEDULES = ("none", "cosine", "plateau")
KNOBS = ("lr", "dropout", "class_weight_power", "aug_cutoff_epoch", "unfreeze_epoch")
"""The searched knobs (DESIGN.md), by their `TrainConfig` names: the one definition."""


@dataclass
class TrainConfig:
    """Every setting of one trial. A space file may search or fix any of them by name."""

    task: str = "pathology"
    """Task name from `trainables.tasks`."""
    model: str = ""
    """Model name from `trainables.models.MODELS`; empty means the task's default."""
    weights: str = "none"
    """`none`, `imagenet`, or a path to a torchvision state-dict file (a U-Net's encoder also
    takes a medsweep classification checkpoint of the same backbone: `trainables.unet`)."""
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
    bce_weight: float = 0.5
    """Segmentation: weight of the per-pixel BCE in the loss (the seed's 0.5)."""
    dice_weight: float = 1.25
    """Segmentation: weight of the soft Dice loss (the seed's 1.25)."""
    seed: int = 0
    """Seed for weights, shuffling and augmentation."""
    max_batches: int = 0
    """Stop each epoch after this many batches (0 = all); for smoke tests."""
    precision: str = "auto"
    """`auto` (bf16 autocast on GPU, fp32 on CPU), `fp32` or `bf16`."""
    data_fingerprint: dict = field(default_factory=dict)
    """Which data this trial trains on (npz MD5 or converted folder hash, split rule, seed,
    fold), set by the driver (`search.data.fingerprint`) and saved in every checkpoint."""

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
            (
                self.bce_weight >= 0
                and self.dice_weight >= 0
                and self.bce_weight + self.dice_weight > 0,
                f"bce_weight {self.bce_weight} and dice_weight {self.dice_weight} must be "
                ">= 0, not both 0",
            ),
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


def planned_epochs(settings) -> int:
    """The epochs a trial is planned to run: the fixed `epochs` setting (space file or
    `--epochs`), else `TrainConfig.epochs`. The one rule: the trials, ASHA's `max_t`, the
    searcher, the progress line, repeats and the tables (finished vs stopped early) all read it.
    """
    value = settings.get("epochs")
    return int(value) if value is not None else TrainConfig.epochs


def _coerce(cls: type, name: str, value):
    annotation = {f.name: f.type for f in dataclasses.fields(cls)}[name]
    numeric = annotation in ("int", "float")
    if numeric and (isinstance(value, bool) or not isinstance(value, int | float | np.number)):
        raise ValueError(f"{name} {value!r} is not a number; give {name} a number")
    if annotation == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if annotation == "float" and isinstance(value, int | np.integer | np.floating):
        return float(value)
    return value
