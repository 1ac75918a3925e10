"""The settings of the after-search work (`search.experiment.after`): which trials, how.

    explain = ExplainSettings("val_auc", "max", seed=0, top_k=3, ig={"steps": 16})
    focus = explain_trials(trials, experiment_path, task, val_arrays, explain)
    splits = SplitSources(test="data.npz")              # or callables reading a node's cache
    evaluate_on_test(trials, experiment_path, task, splits, EvaluationSettings("val_auc", "max"))

The search builds them from its plan and settings (`search.driver.steps`); the tests build
them directly. `resources` are Ray task options (`{"num_cpus": 1, "num_gpus": 0.25}`: one
trial worker's share, `search.driver.plan.worker_request`); None runs the work in this process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Source = str | Callable[[], dict]
"""An npz path, or a picklable callable giving a split's arrays where it is called."""


@dataclass(frozen=True)
class ExplainSettings:
    """Attribution maps for the best `top_k` trials by `metric` (None: all), on a panel of
    `per_class` validation images per class chosen with `seed`; `ig`: Integrated Gradients'
    keyword arguments."""

    metric: str
    mode: str
    seed: int = 0
    top_k: int | None = None
    per_class: int = 2
    ig: Mapping = field(default_factory=dict)
    resources: Mapping | None = None


@dataclass(frozen=True)
class EvaluationSettings:
    """Test figures of the best `top_k` trials by `metric`: bootstrap seeded with `seed`,
    threshold chosen on validation by `operating_point` (`trainables.operating_point`), after
    a fitted temperature when `temperature_scaling`."""

    metric: str
    mode: str
    top_k: int = 1
    seed: int = 0
    resources: Mapping | None = None
    operating_point: str = "youden"
    temperature_scaling: bool = False


@dataclass(frozen=True)
class SplitSources:
    """Where the test and validation splits are read: `val` defaults to `test` when that is a
    path (None with a callable: the threshold stays 0.5); `ids_from` is the npz whose
    `test_files` and `{val,test}_patients` name the rows (default: `test` when a path)."""

    test: Source
    val: Source | None = None
    ids_from: str | None = None
