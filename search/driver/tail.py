"""Work for the slots the last trials leave free: attribution maps of the trials that ended,
started while the search still runs.

    tail = TailExplainer(plan.experiment_path, plan.trials, task, reader, explain_settings)
    tune.RunConfig(callbacks=[..., keeper, tail])     # after the DiskKeeper: it exports
    grid = tuner.fit()
    tail.wait()                                       # their maps are written; then the step

Once no trial is left to start (Tune holds as many trials as the search runs, none pending),
a slot frees each time a trial ends and nothing takes it until the search is over. Each
trial that has ended by then (from the moment the last trial starts), and each one that ends
later, gets its attribution maps as a Ray task on a trial worker's resources; Ray runs it in
the first slot a trial frees (`search.experiment.after.explain_task`), the same
work the attribution step does after the search: that step finds their maps written
(`after.explained`) and explains only the rest. Only when every trial is to be explained
(`--explain-top` unset, or at least `--trials`): which trials are the best K is known only
at the end. The search's own trials never wait for it: it starts nothing while a trial could
still take the slot.

A failed task is logged and its trial is explained by the step as usual. Tune pickles its
callbacks with the experiment (`tuner.pkl`); the reader and the futures are left out there,
so a restored search's copy starts nothing (the step explains what is left).
"""

from __future__ import annotations

import logging
import math
import time

import ray
from ray import tune

from search.experiment.after import explain_task, gather, panel_ref
from search.experiment.after_settings import ExplainSettings, Reader
from search.experiment.layout import CHECKPOINT_DIR
from search.experiment.retention import has_export
from search.experiment.storage import join_path
from trainables.tasks import Task

log = logging.getLogger("medsweep")
PENDING = "PENDING"


class TailExplainer(tune.Callback):
    """See the module docstring. `total`: the trials the search runs (`--trials`)."""

    def __init__(
        self,
        experiment_path: str,
        total: int,
        task: Task,
        reader: Reader,
        settings: ExplainSettings,
    ) -> None:
        self.experiment_path, self.total = experiment_path, total
        self.task, self.reader, self.settings = task, reader, settings
        self.ended: set[str] = set()
        self.futures: dict[str, ray.ObjectRef] = {}
        self.panel: ray.ObjectRef | None = None

    def __getstate__(self) -> dict:
        return {**vars(self), "reader": None, "futures": {}, "panel": None}

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        """The last trial started: the ended ones' tasks wait in Ray's queue for the first
        slot a trial frees (none is left to start, so they delay none)."""
        self._start_ended(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended(trial, trials)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended(trial, trials)

    def _ended(self, trial, trials: list) -> None:
        self.ended.add(trial.trial_id)
        self._start_ended(trials)

    def _start_ended(self, trials: list) -> None:
        if self.reader is None or not self.in_tail(trials):
            return
        for ended in trials:
            if ended.trial_id in self.ended and ended.trial_id not in self.futures:
                self._start(ended)

    def in_tail(self, trials: list) -> bool:
        """No trial left to start: all of them made, none waiting for a slot."""
        return len(trials) >= self.total and all(t.status != PENDING for t in trials)

    def _start(self, trial) -> None:
        """The trial's attribution task, if it has exported weights and a finite metric (what
        the step would explain)."""
        folder = join_path(self.experiment_path, trial.trial_id)
        best = (getattr(trial, "metric_analysis", {}) or {}).get(self.settings.metric, {})
        value = best.get(self.settings.mode)
        if value is None or not math.isfinite(value) or not has_export(folder):
            return
        try:
            if self.panel is None:
                self.panel = panel_ref(self.task, self.reader, self.settings)
            row = {
                "trial_id": trial.trial_id,
                "checkpoint_path": join_path(folder, CHECKPOINT_DIR),
            }
            self.futures[trial.trial_id] = explain_task(
                row, self.experiment_path, self.panel, self.settings, self.task.foreground
            )
        except Exception as err:  # a callback's error would end the whole search
            log.warning("trial %s: attribution not started early (%s)", trial.trial_id, err)

    def wait(self) -> int:
        """Wait for the tasks started; how many wrote their maps."""
        if not self.futures:
            return 0
        started = time.time()
        done = gather(self.futures)
        log.info(
            "attribution: %d trial(s) explained while the last trials ran (%.1f s waited for "
            "them after the search)",
            len(done),
            time.time() - started,
        )
        return len(done)


def tail_work(explain_top: int | None, total: int) -> bool:
    """Whether attribution may start in the search's tail: every trial is to be explained."""
    return explain_top is None or explain_top >= total


def tail_explainer(
    explain_top: int | None, plan, task: Task, reader: Reader, settings: ExplainSettings
) -> TailExplainer | None:
    """The search's TailExplainer when every trial is to be explained (`--explain-top`
    unset or >= `--trials`), else None."""
    if not tail_work(explain_top, plan.trials):
        return None
    return TailExplainer(plan.experiment_path, plan.trials, task, reader, settings)
