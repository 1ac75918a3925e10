"""W&B's own sweep engine (grid / random / bayes) as a Ray Tune searcher.

The open-source `sweeps` package is the engine behind W&B's sweep controller; this module runs
it locally inside Ray Tune, so W&B Bayes, random search and Optuna TPE can be compared on the
same trainable, cluster and budget. The searcher keeps one `sweeps.SweepRun` per trial and
fills it exactly as W&B's controller would see the run: name = trial id, config in W&B's
`{"param": {"value": v}}` form, state running -> finished / failed, `history` with one dict of
numeric metrics per reported result and `summary_metrics` with the last result's values, except
the metric: its best value over the run (and `best_epoch`), as search/wandb_trial.py leaves it
in a real W&B sweep's runs, so the engine learns what medsweep ranks by.

    import yaml
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from search.tracking.engine import WandbSweepSearcher

    sweep = yaml.safe_load(open("spaces/pathology.yaml"))
    searcher = ConcurrencyLimiter(
        WandbSweepSearcher(sweep, method="bayes", seed=0), max_concurrent=2
    )
    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=20))

Each suggestion is a flat dict with every parameter of the sweep, constants (`value:`)
included. The metric and its goal come from the sweep's `metric` block; a different metric or
mode handed over by Tune is an error. `metric.target` ends the search as it ends a W&B sweep;
grid search ends when the grid is exhausted; `num_samples` caps the runs (sweeps 0.2.0's schema
has no `run_cap`, so a config with one is rejected). `early_terminate` is left to Tune's
scheduler. The config is checked first by `search.tracking.schema.validate_sweep_config`.

Seeding: `sweeps` draws from Python's global `random` (random search) and numpy's global RNG
(bayes: the random start points, the 1000 candidate points, the fallback sample); its Gaussian
process uses a fixed `random_state`. Before the n-th call to the engine both global RNGs are
seeded from `numpy.random.SeedSequence(seed, spawn_key=(n,))` and their previous states are put
back afterwards, so a seed fixes the whole sequence of suggestions (given the same results),
the caller's global RNGs are left as they were, and a restored searcher continues the sequence.
Without a seed, a fresh 128-bit one is drawn and kept in the saved state.
"""

from __future__ import annotations

import logging
import pickle
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from typing import Any

import numpy as np
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.search import Searcher
from ray.tune.search.sample import Domain
from sklearn.exceptions import ConvergenceWarning

from search.tracking.schema import validate_sweep_config
from trainables import scores

with warnings.catch_warnings():
    # pydantic 2 warns about a v1 config key in sweeps' SweepRun (schema.py imports it quietly
    # first); importing bayes_search here also keeps its module-level
    # `filterwarnings("ignore", ConvergenceWarning)` out of the global filters (we silence that
    # warning around each call instead).
    warnings.simplefilter("ignore")
    import sweeps
    import sweeps.bayes_search  # noqa: F401
    from sweeps.config.schema import fill_validate_metric

logger = logging.getLogger(__name__)

METHODS = ("bayes", "random", "grid")
GOAL_TO_MODE = {"maximize": "max", "minimize": "min"}
FAILED = sweeps.RunState.failed
FINISHED = sweeps.RunState.finished
RUNNING = sweeps.RunState.running


class WandbSweepSearcher(Searcher):
    """Ray Tune searcher that asks `sweeps.next_run` (W&B's engine) for each trial's config.

    Args:
        sweep_config: a W&B sweep config (e.g. a `spaces/<task>.yaml` loaded with PyYAML).
        method: "bayes", "random" or "grid" to override the config's `method`.
        seed: fixes the sequence of suggestions; `None` draws one (kept in the saved state).
        metric, mode: optional; must agree with the sweep's `metric` block if both are given.
    """

    def __init__(
        self,
        sweep_config: dict,
        method: str | None = None,
        seed: int | None = None,
        metric: str | None = None,
        mode: str | None = None,
    ):
        cfg = deepcopy(sweep_config)
        if method is not None:
            cfg["method"] = method
        cfg = validate_sweep_config(cfg)
        if cfg["method"] not in METHODS:
            raise ValueError(
                f"method {cfg['method']!r} cannot run locally; choose one of {list(METHODS)}"
            )
        self._sweep = cfg
        self._seed = int(np.random.SeedSequence(seed).entropy)
        self._n_calls = 0
        self._runs: dict[str, sweeps.SweepRun] = {}
        self._metric_name: str | None = None
        self._metric_mode: str | None = None
        super().__init__(metric=None, mode=None)
        self._adopt_metric(metric, mode)

    @property
    def metric(self) -> str | None:
        """The metric the engine learns from (the sweep's, else Tune's)."""
        return self._metric_name

    @property
    def mode(self) -> str | None:
        return self._metric_mode

    @property
    def sweep_config(self) -> dict:
        """The validated sweep config the engine runs (method override applied)."""
        return deepcopy(self._sweep)

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def runs(self) -> list[sweeps.SweepRun]:
        """Copies of the SweepRuns the engine sees, in suggestion order."""
        return [run.model_copy(deep=True) for run in self._runs.values()]

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec
    ) -> bool:
        """Check Tune's metric/mode against the sweep's; refuse a Tune search space."""
        self._adopt_metric(metric, mode)
        if config and has_domains(config):
            return False  # the space is the sweep config; Tune explains the clash itself
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._search_is_over():
            return Searcher.FINISHED
        if self._sweep["method"] == "bayes" and "metric" not in self._sweep:
            raise ValueError(
                "bayes needs a metric: add `metric: {name: ..., goal: ...}` to the sweep "
                "config or pass metric= and mode= to the searcher or TuneConfig"
            )
        proposal = self._next_run()
        if proposal is None:
            return Searcher.FINISHED
        config = {name: {"value": _plain(spec["value"])} for name, spec in proposal.config.items()}
        self._runs[trial_id] = sweeps.SweepRun(
            name=trial_id, state=RUNNING, config=config, search_info=proposal.search_info
        )
        return {name: spec["value"] for name, spec in config.items()}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        run = self._runs.get(trial_id)
        if run is not None:
            run.history.append({**_numeric(result), "_step": len(run.history)})

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        run = self._runs.get(trial_id)
        if run is None:
            logger.debug("completion of unknown trial %s ignored", trial_id)
            return
        run.state = FAILED if error else FINISHED
        if result:
            last = _numeric(result)
            if not run.history or _without_step(run.history[-1]) != last:
                # Tune does not pass the result that made the scheduler stop a trial to
                # on_trial_result: it is this one, and W&B would have logged it
                run.history.append({**last, "_step": len(run.history)})
            run.summary_metrics = {**last, **self._best_of(run)}
        elif run.history:  # W&B keeps the last logged values of a crashed run
            run.summary_metrics = _without_step(run.history[-1])

    def _best_of(self, run: sweeps.SweepRun) -> dict:
        """The metric's best value over the run's history, and its epoch: what
        search/wandb_trial.py leaves in a real W&B run's summary (empty without one)."""
        best = (
            scores.best_of(run.history, self._metric_name, self._metric_mode)
            if self._metric_name
            else None
        )
        if best is None:
            return {}
        out = {self._metric_name: best[self._metric_name]}
        if "epoch" in best:
            out["best_epoch"] = best["epoch"]
        return out

    def add_evaluated_point(
        self,
        parameters: dict,
        value: float,
        error: bool = False,
        pruned: bool = False,
        intermediate_values: list[float] | None = None,
    ) -> None:
        """Add a run evaluated elsewhere (warm start); `parameters` is a flat dict."""
        if self._metric_name is None:
            raise ValueError("add_evaluated_point needs the sweep's metric")
        history = [
            {self._metric_name: v, "_step": i} for i, v in enumerate(intermediate_values or [])
        ]
        # by alias: sweeps 0.2.0 under pydantic 2 silently drops `summary_metrics=`, `history=`
        self._runs[f"evaluated_{len(self._runs)}"] = sweeps.SweepRun(
            name=f"evaluated_{len(self._runs)}",
            state=FAILED if error else FINISHED,
            config={name: {"value": _plain(v)} for name, v in parameters.items()},
            summaryMetrics={self._metric_name: value},
            sampledHistory=history,
        )

    def get_state(self) -> dict:
        return {
            "sweep": deepcopy(self._sweep),
            "seed": self._seed,
            "n_calls": self._n_calls,
            "runs": [run.model_dump(by_alias=True) for run in self._runs.values()],
            "metric": self._metric_name,
            "mode": self._metric_mode,
        }

    def set_state(self, state: dict) -> None:
        self._sweep = state["sweep"]
        self._seed = state["seed"]
        self._n_calls = state["n_calls"]
        self._runs = {run["name"]: sweeps.SweepRun(**run) for run in state["runs"]}
        self._metric_name, self._metric_mode = state["metric"], state["mode"]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def _adopt_metric(self, metric: str | None, mode: str | None) -> None:
        """Take the metric from the sweep config; accept Tune's only if the sweep has none."""
        if "metric" in self._sweep:
            name = self._sweep["metric"]["name"]
            goal = self._sweep["metric"]["goal"]
            if (metric and metric != name) or (mode and mode != GOAL_TO_MODE[goal]):
                raise ValueError(
                    f"Tune was given metric={metric!r}, mode={mode!r} but the sweep config "
                    f"says metric.name={name!r}, goal={goal!r} (mode={GOAL_TO_MODE[goal]!r}); "
                    "pass the sweep's metric and mode to TuneConfig, or none at all"
                )
            self._metric_name, self._metric_mode = name, GOAL_TO_MODE[goal]
        elif metric:
            if mode not in GOAL_TO_MODE.values():
                raise ValueError(
                    f"mode must be 'min' or 'max' with metric={metric!r}, got {mode!r}"
                )
            goal = {v: k for k, v in GOAL_TO_MODE.items()}[mode]
            self._sweep = fill_validate_metric(
                {**self._sweep, "metric": {"name": metric, "goal": goal}}
            )
            self._metric_name, self._metric_mode = metric, mode

    def _search_is_over(self) -> bool:
        """W&B ends a sweep once a finished run reaches `metric.target`."""
        target = self._sweep.get("metric", {}).get("target")
        if target is None:
            return False
        for run in self._runs.values():
            if run.state == FINISHED and _reached(
                run, self._metric_name, self._metric_mode, target
            ):
                return True
        return False

    def _next_run(self) -> sweeps.SweepRun | None:
        with _seeded_global_rngs(self._seed, self._n_calls), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            proposal = sweeps.next_run(self._sweep, list(self._runs.values()))
        self._n_calls += 1
        return proposal


def _reached(run: sweeps.SweepRun, metric: str, mode: str, target: float) -> bool:
    """Whether the run's best `metric` is at least as good as `target`, for `mode`."""
    try:
        best = run.metric_extremum(metric, mode)  # "max" or "min", as sweeps accepts
    except ValueError:
        return False
    return scores.sort_key(best, mode) >= scores.sort_key(target, mode)


@contextmanager
def _seeded_global_rngs(seed: int, call: int) -> Iterator[None]:
    """Seed numpy's and Python's global RNGs for one engine call; restore them afterwards."""
    np_seed, py_seed = np.random.SeedSequence(seed, spawn_key=(call,)).generate_state(2)
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(int(np_seed))
    random.seed(int(py_seed))
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays from the engine -> plain Python values."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _without_step(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "_step"}


def _numeric(result: dict) -> dict[str, float | int]:
    """The numbers a trial reported (Tune's own bookkeeping left out), as W&B would log them."""
    out = {}
    for key, value in result.items():
        number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
        if number and key not in AUTO_RESULT_KEYS:
            out[key] = _plain(value)
    return out


def has_domains(config) -> bool:
    """Whether a Tune param space still holds something to sample (a `Domain` such as
    `tune.uniform`, or a `grid_search`), at any depth."""
    if isinstance(config, Domain):
        return True
    if isinstance(config, dict):
        return "grid_search" in config or any(has_domains(v) for v in config.values())
    if isinstance(config, list | tuple):
        return any(has_domains(v) for v in config)
    return False
