"""The typed, frozen settings of one search: what the command line decided, in groups.

    from search.driver.options import parse_args
    settings = parse_args(["--task", "blood", "--trials", "8"])   # built and checked once
    settings.search.trials, settings.resources.cpus_per_worker, settings.data.task
    settings = updated(settings, outputs={"storage": "runs"})     # a changed copy

`search.driver.options` builds a `Settings` from flags (it is the only library module that
parses them) and checks it there (`search.driver.checks.check_flags`); the W&B agent and the
tests build the groups directly. The library receives these objects, never parsed flags.
Field names are the flags' names with `_` for `-`; defaults are the flags' defaults.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from search.data.settings import DataSettings


def _env(name: str, default: str | None = None):
    return field(default_factory=lambda: os.environ.get(name, default))


@dataclass(frozen=True)
class SearchSettings:
    """The search: `--trials`, `--epochs`, `--batch-size`, `--time-budget`, `--seed`,
    `--searcher`, `--early-stopping`, `--tpe`, `--smoke-test`, `--objective`, `--warm-start`."""

    trials: int = 20
    epochs: int | None = None
    batch_size: int | None = None
    time_budget: float | None = None
    seed: int = 0
    searcher: str = "optuna"
    early_stopping: str = "asha"
    tpe: str | None = None
    """`startup=0.3,multivariate=yes,liar=yes` (`search.driver.tpe`; None: the defaults)."""
    smoke_test: bool = False
    objective: str | None = None
    """`val_auc:max,val_ece:min`: several objectives (None: the space's metric alone)."""
    warm_start: str | None = None
    """An earlier experiment folder whose finished trials the searcher is told first."""


@dataclass(frozen=True)
class ResourceSettings:
    """Resources: `--address`, `--launcher`, `--max-concurrent`, `--workers-per-trial`,
    `--gpus-per-trial` (None: decided from the cluster), `--cpus-per-worker`,
    `--max-failures`."""

    address: str | None = None
    launcher: str = "auto"
    max_concurrent: int | None = None
    workers_per_trial: int = 1
    gpus_per_trial: float | None = None
    cpus_per_worker: float = 1.0
    max_failures: int = 0


@dataclass(frozen=True)
class OutputSettings:
    """Where the experiment goes: `--name`, `--storage` (None: $MEDSWEEP_STORAGE, else `runs`
    once `search.driver.session.check_storage` resolved it); what it may hold: `--max-disk`
    (None: no quota), `--keep-checkpoints` (`search.experiment.retention`)."""

    name: str | None = None
    storage: str | None = _env("MEDSWEEP_STORAGE")
    max_disk: str | None = None
    keep_checkpoints: str = "all"
    verbose: bool = False
    """`--verbose`: Ray's, W&B's and the workers' output on the console too (else only in
    `<experiment>/driver.log`: `search.driver.console`)."""


@dataclass(frozen=True)
class AfterSettings:
    """After the search: `--test-top`, `--operating-point`, `--temperature-scaling`,
    `--repeat-best`, `--select`, `--ensemble`."""

    test_top: int = 1
    operating_point: str = "youden"
    temperature_scaling: bool = False
    repeat_best: int = 0
    select: str | None = None
    """A constraint on validation figures, `sensitivity>=0.95` (None: the best by the metric)."""
    ensemble: int = 0
    """Average the K best trials' probabilities (0: no ensemble)."""


@dataclass(frozen=True)
class AttributionSettings:
    """Attribution maps: `--explain-top` (None: all), `--ig-samples`, `--ig-steps`,
    `--ig-baseline` (zero, mean or a number)."""

    explain_top: int | None = None
    ig_samples: int = 4
    ig_steps: int = 16
    ig_baseline: str = "zero"

    def ig(self) -> dict:
        """Integrated Gradients' keyword arguments (`trainables.attribution`)."""
        return {
            "n_samples": self.ig_samples,
            "steps": self.ig_steps,
            "baseline": _number_or(self.ig_baseline),
        }


@dataclass(frozen=True)
class WandbSettings:
    """W&B: `--wandb` (online, offline, off; None: online if logged in) and `--wandb-project`."""

    mode: str | None = None
    project: str = _env("WANDB_PROJECT", "medsweep")


@dataclass(frozen=True)
class Settings:
    """One search's settings, in groups; `argv` is the command line as given (search.json
    keeps it and `--resume` replays it), `given` the flags typed on it."""

    data: DataSettings = field(default_factory=DataSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    outputs: OutputSettings = field(default_factory=OutputSettings)
    after: AfterSettings = field(default_factory=AfterSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    wandb: WandbSettings = field(default_factory=WandbSettings)
    resume: str | bool | None = None
    """`--resume`: the experiment folder, True for a bare `--resume`, or None."""
    debug: bool = False
    argv: tuple[str, ...] = ()
    given: frozenset[str] = frozenset()
    """The flags typed on the command line (`--trials`, ...), not just defaulted."""

    def training_overrides(self) -> dict:
        """The training settings the command line fixes over the space's (None: not given)."""
        return {
            "weights": self.data.weights,
            "image_size": self.data.image_size,
            "epochs": self.search.epochs,
            "batch_size": self.search.batch_size,
        }


def updated(settings: Settings, **groups: dict) -> Settings:
    """`settings` with fields of some groups changed: `updated(s, outputs={"name": "x"})`."""
    changes = {g: dataclasses.replace(getattr(settings, g), **c) for g, c in groups.items()}
    return dataclasses.replace(settings, **changes)


def flags_given(argv: list[str] | tuple[str, ...]) -> frozenset[str]:
    """The flags typed in `argv` (`--trials 3` and `--trials=3` both give `--trials`)."""
    return frozenset(a.split("=", 1)[0] for a in argv if a.startswith("--"))


def _number_or(text: str):
    try:
        return float(text)
    except ValueError:
        return text
