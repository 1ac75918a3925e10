"""`--warm-start EXPERIMENT`: an earlier search's finished trials, told to the new search's
Optuna study before it suggests anything.

    warm = check_search(settings.search, task, space, values)  # before Ray; None: no flag
    warm.trials            # optuna FrozenTrials for BestEpochOptuna(earlier=...)
    warm.record()          # {"from", "finished", "carried", "did_not_fit"}: search.json, report
    extra = search_record(plan, warm)   # search.json's `objectives` and `warm_start`

The earlier folder is read as the search wrote it (`search.json`, `trials.parquet`:
`search.experiment.manifest`, `search.experiment.tables`), so a copied folder works anywhere.
It is refused, one line, when it is not a finished experiment, when it searched another task,
or when it optimised other objectives (metric, direction or order: the values it holds would
mean something else to the new study).

Of its trials, the FINISHED ones are carried (a trial stopped early or errored has no value a
finished one can be compared with), each with its objective values at its best epoch
(`tables.objective_values`, what the searcher tells Optuna). A trial is carried when its
parameters fit the current space: every knob searched now has a value inside its current
domain (the Optuna distribution the searcher uses, `OptunaSearch.convert_search_space` of the
same param space; Optuna's own `create_trial` checks it), and every knob the earlier search
searched that is fixed now had the fixed value. The others are counted as not fitting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import optuna
from ray.tune.search.optuna import OptunaSearch

from search.driver.checks import UserError, user_errors
from search.driver.objectives import (
    EXAMPLE,
    check_objectives,
    parse_objectives,
    search_objectives,
)
from search.experiment.layout import TRIALS_FILE
from search.experiment.manifest import Manifest
from search.experiment.storage import join_path
from search.experiment.tables import config_of, objective_values, read_table


@dataclass(frozen=True)
class WarmStart:
    """What `--warm-start` carries into the new search."""

    folder: str
    trials: tuple[optuna.trial.FrozenTrial, ...]
    """The carried trials, COMPLETE, on the current space's distributions."""
    finished: int
    """The earlier search's finished trials (carried + not fitting)."""

    @property
    def did_not_fit(self) -> int:
        return self.finished - len(self.trials)

    def record(self) -> dict:
        """What search.json (`warm_start`) and the report say of it."""
        return {
            "from": self.folder,
            "finished": self.finished,
            "carried": len(self.trials),
            "did_not_fit": self.did_not_fit,
        }


def check_search(search, task, space, values: dict) -> WarmStart | None:
    """`--objective` and `--warm-start` of the search settings `search`, checked for `task`,
    the space and its param space `values` before Ray starts (`UserError`s); the warm start."""
    if search.objective is not None:  # without it: the space's metric, as it always was
        with user_errors(f"pass e.g. {EXAMPLE}"):
            check_objectives(parse_objectives(search.objective), task, search.searcher)
    if search.warm_start is None:
        return None
    objectives = search_objectives(search.objective, space.metric, space.mode)
    if search.searcher != "optuna" or not space.searched:
        why = f"uses --searcher {search.searcher}" if space.searched else "searches nothing"
        raise UserError(
            f"--warm-start tells Optuna's study earlier trials, and this search {why}; drop "
            "--warm-start, or search a space with the Optuna searcher (the default)"
        )
    return warm_start(search.warm_start, task, list(objectives), values)


def search_record(plan, warm: WarmStart | None) -> dict:
    """search.json's part on what was optimised and carried over: `objectives` (with
    `--objective`) and `warm_start` (`WarmStart.record`); {} for a search with neither."""
    record = {}
    if plan.objectives:
        record["objectives"] = [list(o) for o in plan.objectives]
    if warm is not None:
        record["warm_start"] = warm.record()
    return record


def warm_start(folder: str, task, objectives: list[tuple[str, str]], values: dict) -> WarmStart:
    """The earlier experiment's finished trials that fit the param space `values` (Tune domains
    and fixed settings, as the Tuner gets them), for `task` (a `trainables.tasks.Task`) and the
    (metric, mode) `objectives`; a `UserError` for a folder that cannot be carried over."""
    path = os.path.abspath(os.path.expanduser(folder))
    earlier = read_earlier(path, task, [tuple(o) for o in objectives])
    rows = read_table(join_path(path, TRIALS_FILE))
    distributions = OptunaSearch.convert_search_space(values)
    fixed = {k: v for k, v in values.items() if k not in distributions}
    changed = [k for k in earlier.knobs if k in fixed]  # searched then, fixed now
    trials, finished = [], 0
    for row in rows:
        point = objective_values(row, objectives)
        if point is None:
            continue
        finished += 1
        config = config_of(row)
        if all(config.get(k) == fixed[k] for k in changed):
            trial = carried_trial(config, point, distributions)
            trials += [trial] if trial is not None else []
    return WarmStart(path, tuple(trials), finished)


def read_earlier(path: str, task, objectives: list[tuple[str, str]]) -> Manifest:
    """The earlier search's manifest; a `UserError` unless it is a finished search of the same
    task with the same objectives."""
    flag = f"--warm-start {path}"
    try:
        manifest = Manifest.read(path)
    except (FileNotFoundError, ValueError, TypeError) as err:
        raise UserError(
            f"{flag}: not an experiment folder ({err}); pass the folder of an earlier search "
            "(runs/<name>)"
        ) from None
    if not manifest.finished or not os.path.isfile(join_path(path, TRIALS_FILE)):
        raise UserError(
            f"{flag}: that search is {manifest.status} and has no {TRIALS_FILE}; finish it "
            f"first (python search/run.py --resume {path}) or pass a finished one"
        )
    if manifest.task != task.name:
        raise UserError(
            f"{flag}: that search trained task {manifest.task!r}, this one {task.name!r}; "
            f"warm-start from a search of --task {task.name}"
        )
    before = [tuple(o) for o in manifest.extra.get("objectives") or ()]
    before = before or [(manifest.metric, manifest.mode)]
    if before != objectives:
        raise UserError(
            f"{flag}: that search optimised {_named(before)}, this one {_named(objectives)}; "
            "warm-start from a search with the same metric (and --objective), or drop "
            "--warm-start"
        )
    return manifest


def carried_trial(
    config: dict, values: list[float], distributions: dict
) -> optuna.trial.FrozenTrial | None:
    """A COMPLETE Optuna trial of `config`'s searched knobs with `values`; None when a knob is
    missing or its value lies outside the current distribution (Optuna's check)."""
    if any(config.get(k) is None for k in distributions):
        return None
    try:
        return optuna.trial.create_trial(
            params={k: config[k] for k in distributions},
            distributions=distributions,
            values=values,
        )
    except ValueError:  # outside the distribution (Optuna names which)
        return None


def _named(objectives: list[tuple[str, str]]) -> str:
    return ",".join(f"{m}:{d}" for m, d in objectives)
