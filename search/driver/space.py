"""Space files (W&B sweep-config YAML) -> Ray Tune domains, with validation.

    space = load_space("spaces/pathology.yaml", task)
    space.domains      # {"lr": tune.loguniform(1e-4, 1e-2), ..., "epochs": 10}
    space.metric, space.mode, space.grace_period, space.sweep_config

One file drives both engines: `wandb sweep spaces/<task>.yaml` reads it as W&B does, and this
loader turns the same `parameters` into Ray Tune domains for OptunaSearch. Every parameter
must be a `TrainConfig` setting; a misspelt key, an unknown distribution, `min >= max` or a
log bound <= 0 is an error that names the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass

import yaml
from ray import tune
from ray.tune.search.sample import Categorical, Domain

from search.driver.objectives import direction, reported_metrics
from search.experiment.sweep import infer_distribution
from trainables.config import planned_epochs
from trainables.models import PRETRAINED
from trainables.tasks import Task
from trainables.train import TrainConfig

log = logging.getLogger("medsweep")

METHODS = ("bayes", "random", "grid")
GOALS = {"maximize": "max", "minimize": "min"}
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "uniform",
    "int_uniform",
    "q_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
    "log_uniform",
)
LAUNCHER_OWNED = ("seed",)


@dataclass(frozen=True)
class Space:
    """A loaded space file."""

    path: str
    sweep_config: dict
    domains: dict
    metric: str
    mode: str
    grace_period: int
    reduction_factor: int

    @property
    def searched(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.domains.items() if isinstance(v, Domain))


def default_space_path(task: Task) -> str:
    """`spaces/<task>.yaml` in the repository (beside the `search` package)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, "spaces", f"{task.name}.yaml")


def load_space(path: str | os.PathLike, task: Task, fixed: dict | None = None) -> Space:
    """Read and convert a space file; every problem is a ValueError naming `path`. `fixed`:
    the command line's settings (`Settings.training_overrides()`; None = not given), laid
    over the space's when deciding which searched knobs can act (`drop_dead_knobs`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"space file {path} does not exist; pass --space FILE")
    with open(path) as f:
        try:
            cfg = yaml.load(f, Loader=UniqueKeyLoader)  # a SafeLoader
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML; fix it there: {err}") from err
    return drop_dead_knobs(parse_space(cfg, task, path), task, fixed)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last
    silently: `lr:` written twice would search only the second)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


SPEC_KEYS = ("distribution", "value", "values", "min", "max", "q", "mu", "sigma", "probabilities")
"""The keys a W&B parameter spec may hold."""


def parse_space(cfg: dict, task: Task, path: str = "<space>") -> Space:
    """Convert a sweep config already read into a dict (see `load_space`)."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("parameters"), dict):
        raise ValueError(f"{path}: a space file needs a `parameters:` mapping (W&B sweep syntax)")
    method = cfg.get("method", "bayes")
    if method not in METHODS:
        raise ValueError(f"{path}: method {method!r} is not one of {METHODS}")
    metric, mode = _metric(cfg, task, path)
    known = {f.name for f in dataclasses.fields(TrainConfig)} - set(LAUNCHER_OWNED)
    domains = {}
    for name, spec in cfg["parameters"].items():
        if name not in known:
            raise ValueError(
                f"{path}: parameter {name!r} is not a training setting; valid: {sorted(known)}"
            )
        domains[name] = to_domain(name, spec, path)
    if domains.setdefault("task", task.name) != task.name:
        raise ValueError(
            f"{path}: this space is for task {domains['task']!r}, not {task.name!r}; pass "
            f"--task {domains['task']} or another --space"
        )
    grace, eta = _early_terminate(cfg, path)
    return Space(path, cfg, domains, metric, mode, grace, eta)


def _metric(cfg: dict, task: Task, path: str) -> tuple[str, str]:
    block = cfg.get("metric") or {}
    name = block.get("name", task.metric)
    goal = block.get("goal", "maximize" if task.mode == "max" else "minimize")
    reported = reported_metrics(task)
    if name not in reported:
        raise ValueError(
            f"{path}: metric {name!r} is not reported by {task.kind} trials; choose one of "
            f"{', '.join(reported)}"
        )
    if goal not in GOALS:
        raise ValueError(f"{path}: metric goal {goal!r} must be 'maximize' or 'minimize'")
    if GOALS[goal] != direction(name):
        natural = next(g for g, m in GOALS.items() if m == direction(name))
        raise ValueError(
            f"{path}: metric goal {goal} would search for the worst {name}; write goal: {natural}"
        )
    return name, GOALS[goal]


def _early_terminate(cfg: dict, path: str) -> tuple[int, int]:
    block = cfg.get("early_terminate") or {}
    if block and block.get("type") != "hyperband":
        raise ValueError(f"{path}: early_terminate type {block.get('type')!r}; only hyperband")
    grace, eta = int(block.get("min_iter", 1)), int(block.get("eta", 3))
    if grace < 1 or eta < 2:
        raise ValueError(f"{path}: early_terminate needs min_iter >= 1 and eta >= 2")
    return grace, eta


def to_domain(name: str, spec, path: str = "<space>"):
    """One W&B parameter spec -> a Ray Tune domain (or a constant)."""
    where = f"{path}: parameter {name!r}"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a mapping like {{value: ...}}, got {spec!r}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {unknown} (misspelt?); a parameter takes {SPEC_KEYS}"
        )
    dist = infer_distribution(spec)
    if dist is None:
        raise ValueError(f"{where}: give `value`, `values`, or `distribution` with `min`/`max`")
    if dist not in DISTRIBUTIONS:
        raise ValueError(
            f"{where}: distribution {dist!r} is not supported; use one of {DISTRIBUTIONS}"
        )
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: categorical needs a non-empty `values:` list")
        return tune.choice(values)
    low, high = _bounds(spec, where)
    if dist == "int_uniform":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise ValueError(f"{where}: int_uniform needs integer min/max, got {low}, {high}")
        return tune.randint(int(low), int(high) + 1)  # W&B's max is inclusive, Tune's is not
    if dist == "uniform":
        return tune.uniform(low, high)
    if dist == "q_uniform":
        return tune.quniform(low, high, spec.get("q", 1.0))
    if dist == "log_uniform":  # W&B: min and max are natural logs of the bounds
        return tune.loguniform(math.exp(low), math.exp(high))
    if low <= 0:
        raise ValueError(
            f"{where}: {dist} needs min > 0, got {low}. Did you mean `log_uniform` (whose "
            "bounds are natural logs) or did you pass a log-transformed value?"
        )
    if dist == "q_log_uniform_values":
        return tune.qloguniform(low, high, spec.get("q", 1.0))
    return tune.loguniform(low, high)


def _bounds(spec: dict, where: str) -> tuple[float, float]:
    try:
        low, high = float(spec["min"]), float(spec["max"])
    except KeyError as err:
        raise ValueError(f"{where}: needs both `min` and `max`") from err
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{where}: min/max must be numbers, got {spec.get('min')!r}, {spec.get('max')!r}"
        ) from err
    if low >= high:
        raise ValueError(f"{where}: min {low} must be below max {high}; swap or fix the bounds")
    return low, high


def drop_dead_knobs(space: Space, task: Task, fixed: dict | None = None) -> Space:
    """The space without the searched knobs that cannot act under the fixed settings (one
    warning names them); each is fixed at its lowest value (`dead_knobs` says why)."""
    dead = dead_knobs(space, task, fixed)
    if not dead:
        return space
    domains, parameters = dict(space.domains), dict(space.sweep_config["parameters"])
    for name in dead:
        domains[name] = _lowest(space.domains[name])
        parameters[name] = {"value": domains[name]}
    reasons = "; ".join(f"{k} ({why}, fixed at {domains[k]})" for k, why in dead.items())
    log.warning("%s: not searching %s: they cannot change a trial here", space.path, reasons)
    config = {**space.sweep_config, "parameters": parameters}
    return dataclasses.replace(space, sweep_config=config, domains=domains)


def dead_knobs(space: Space, task: Task, fixed: dict | None = None) -> dict[str, str]:
    """{searched knob: why it cannot act} under the space's fixed values with `fixed` (the
    command line's, None = not given) laid over them:
    - `unfreeze_epoch` without a pretrained backbone (`weights: none`, or no model with
      pretrained weights): only a pretrained backbone is ever frozen (trainables.train);
    - `aug_cutoff_epoch` for a task with no augmentations;
    - `unfreeze_epoch` / `aug_cutoff_epoch` whose every value is >= epochs: all act alike."""
    given = {k: v for k, v in (fixed or {}).items() if v is not None}
    setting = {**{k: v for k, v in space.domains.items() if k not in space.searched}, **given}
    defaults = TrainConfig()
    weights = setting.get("weights", defaults.weights)
    models = _values(space.domains.get("model", setting.get("model") or task.model))
    epochs = planned_epochs(setting)
    dead = {}
    if "unfreeze_epoch" in space.searched:
        if weights == "none":
            dead["unfreeze_epoch"] = "weights none: no pretrained backbone to unfreeze"
        elif models is not None and not set(models) & set(PRETRAINED):
            named = "/".join(map(str, models))
            dead["unfreeze_epoch"] = f"model {named} has no pretrained backbone"
    for name in task.kind_ops.unused_knobs():
        if name in space.searched:
            dead[name] = f"a {task.kind} task does not use it"
    if "aug_cutoff_epoch" in space.searched and not task.augment:
        dead["aug_cutoff_epoch"] = f"task {task.name} has no augmentations"
    for name in ("unfreeze_epoch", "aug_cutoff_epoch"):
        if name in dead or name not in space.searched or not isinstance(epochs, int | float):
            continue
        if _lowest(space.domains[name]) >= epochs:
            dead[name] = f"every value is >= epochs {epochs}"
    return dead


def _values(domain) -> list | None:
    """The values a setting can take (None: a continuous domain, or not known)."""
    if isinstance(domain, Categorical):
        return list(domain.categories)
    return None if isinstance(domain, Domain) else [domain]


def _lowest(domain):
    """A domain's smallest value (a constant is its own)."""
    if isinstance(domain, Categorical):
        return min(domain.categories)
    if isinstance(domain, Domain):
        return domain.lower
    return domain
