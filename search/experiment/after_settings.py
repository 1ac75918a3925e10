"""The settings of the after-search work (`search.experiment.after`): which trials, how.

    explain = ExplainSettings("val_auc", "max", seed=0, top_k=3, ig={"steps": 16})
    focus = explain_trials(trials, experiment_path, task, reader, explain)
    evaluate_on_test(trials, experiment_path, task, reader, EvaluationSettings("val_auc", "max"))

The search builds them from its plan and settings (`search.driver.steps`); the tests build
them directly. `Reader` is what both read the splits through: the search's
`search.data.reader.SplitReader` (this layer sits below search.data and does not import it).
`resources` are Ray task options (`{"num_cpus": 1, "num_gpus": 0.25}`: one trial worker's
share, `search.driver.plan.worker_request`); None runs the work in this process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Reader(Protocol):
    """A picklable split reader (`search.data.reader.SplitReader`): `arrays` reads the named
    splits where it is called (a Ray task's node), `labels` a searched split's labels,
    `with_split("test")` makes the test split readable (called once, after the search), `path`
    is the npz whose `test_files` and `{val,test}_patients` name the rows (None: no file)."""

    @property
    def path(self) -> str | None: ...

    def arrays(self, splits: Sequence[str]) -> dict: ...

    def labels(self, split: str) -> np.ndarray: ...

    def with_split(self, split: str) -> Reader: ...


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
