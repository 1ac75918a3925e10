"""The experiment folder's disk while the search runs: retention and `--max-disk`.

    keeper = DiskKeeper(plan.experiment_path, plan.metric, plan.mode, limit, protect=3)
    tuner = build_tuner(..., callbacks=[..., keeper])
    grid = tuner.fit()
    message = stopped_message(keeper, plan.experiment_path)   # the disk stopped it: why

A Tune callback on the driver. As each trial ends (finished, stopped by ASHA or errored for
good), its best weights are exported and its resume state deleted
(`search.experiment.retention.finish_trial`): a running trial keeps its latest checkpoint
whole (what it resumes from) and its best as weights alone (`slim_older`: Ray keeps it beside
the latest, but nothing resumes from it); an ended one keeps its best weights alone.

Under `--max-disk`, after each checkpoint the folder is measured (at most every 2 s, unless the
checkpoints written since the last measurement could have passed the quota, and at every
trial's end); over the quota, the exported
weights of ended trials go, weakest first, never those of the `protect` best trials (what
`--test-top`, `--ensemble`, `--explain-top` and `--keep-checkpoints top-K` need) nor anything of
a running trial. Each removal is logged. When nothing removable is left and the folder is still
over, the search is stopped as on Ctrl-C (its state saved: `--resume` continues it, with a
larger `--max-disk`) and `exceeded` says by how much.

A full disk: after each checkpoint the free space of the folder's disk is checked against one
more checkpoint per running trial (the largest seen), plus one; below it, the search is
stopped the same way while there is still room to stop cleanly (Tune's state saved, no
checkpoint half-written), and `full` says how much is free and needed. A disk filled by
something else anyway ends in `search.driver.pipeline`'s one line (`disk_full`).
"""

from __future__ import annotations

import errno
import logging
import shutil
import signal
import time

from ray import tune

from search.driver.checks import user_errors
from search.driver.input_checks import check_disk
from search.driver.plan import Plan
from search.driver.settings import Settings
from search.experiment.layout import TRIALS_FILE
from search.experiment.quota import human, parse_keep, parse_size
from search.experiment.retention import (
    exported_path,
    finish_trial,
    folder_bytes,
    has_export,
    prune,
    remove_dir,
    resume_state_dirs,
    slim,
)
from search.experiment.storage import is_uri, join_path
from search.experiment.tables import write_table
from trainables.scores import sort_key

log = logging.getLogger("medsweep")
MEASURE_EVERY_S = 2.0
"""The quota is measured at most this often (a walk of the folder per checkpoint otherwise),
unless the checkpoints written since the last measurement could have passed it."""


class DiskKeeper(tune.Callback):
    """See the module docstring. `limit`: `--max-disk` in bytes (None: no quota)."""

    def __init__(
        self, experiment_path: str, metric: str, mode: str, limit: int | None, protect: int = 1
    ) -> None:
        self.experiment_path, self.metric, self.mode = experiment_path, metric, mode
        self.limit, self.protect = limit, max(1, protect)
        self.freed = 0
        self.removed: list[str] = []
        self.exceeded: tuple[int, int] | None = None
        """(folder bytes, limit) when the quota stopped the search."""
        self.full: tuple[int, int] | None = None
        """(free bytes, bytes the running trials' next checkpoints need) when the disk was
        too full to go on."""
        self.slimmed: set[str] = set()
        """Running trials' older checkpoints already without optimizer state."""
        self.checkpoint_bytes = 0
        """The largest checkpoint a trial wrote (what the next one of each trial needs)."""
        self._measured = 0.0
        self._size = 0
        """The folder's bytes when last measured."""
        self._since = 0
        """Bytes of the checkpoints written since (measured at once when they may pass)."""

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended(trial, trials)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended(trial, trials)

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        self._written(trial, checkpoint.path, trials)

    def on_trial_result(self, iteration: int, trials: list, trial, result, **info) -> None:
        path = result.get("checkpoint_path")  # the Train launcher's checkpoints come this way
        self._written(trial, path if isinstance(path, str) else None, trials)

    def _written(self, trial, path: str | None, trials: list) -> None:
        if path is not None and not self.stopping and not is_uri(path):
            written = folder_bytes(path)
            self.checkpoint_bytes = max(self.checkpoint_bytes, written)
            self._since += written
            self.slim_older(trial)
            self.guard_free(trials)
        self.enforce(trials)

    def slim_older(self, trial) -> None:
        """A running trial resumes from its latest checkpoint only: the older one Ray keeps
        (its best) loses its optimizer state, once (`retention.slim`)."""
        for folder in resume_state_dirs(self.trial_path(trial))[:-1]:
            if folder not in self.slimmed:
                try:
                    self.freed += slim(folder)
                except OSError as err:  # a full disk: the free-space guard stops the search
                    log.warning("%s: its optimizer state could not be dropped (%s)", folder, err)
                self.slimmed.add(folder)

    def _ended(self, trial, trials: list) -> None:
        if self.stopping:  # a stopped search's trials are resumed, not finished
            return
        try:
            self.freed += finish_trial(self.trial_path(trial), self.mode)
        except OSError as err:  # a callback's error would end the whole search
            if err.errno == errno.ENOSPC:
                self.stop_full(0, self.checkpoint_bytes)
                return
            log.warning("trial %s: its checkpoints could not be tidied (%s)", trial, err)
        self.enforce(trials, now=True)

    @property
    def stopping(self) -> bool:
        return self.exceeded is not None or self.full is not None

    def guard_free(self, trials: list) -> None:
        """Stop the search (resumable) while the disk still has room for it to stop cleanly:
        when its free space is below one more checkpoint per running trial, plus one."""
        if is_uri(self.experiment_path):
            return
        running = sum(1 for t in trials if t.status == "RUNNING")
        need = (running + 1) * self.checkpoint_bytes
        free = shutil.disk_usage(self.experiment_path).free
        if free < need:
            self.stop_full(free, need)

    def stop_full(self, free: int, need: int) -> None:
        self.full = (free, need)
        log.error(
            "the disk holding %s has %s free; the running trials' next checkpoints need "
            "about %s: stopping the search",
            self.experiment_path,
            human(free),
            human(need),
        )
        _stop_tune()

    def trial_path(self, trial) -> str:
        return join_path(self.experiment_path, trial.storage.trial_dir_name)

    def enforce(self, trials: list, now: bool = False) -> None:
        """Hold the folder under the quota (see the module docstring)."""
        if self.limit is None or self.stopping:
            return
        recent = time.monotonic() - self._measured < MEASURE_EVERY_S
        if not now and recent and self._size + self._since <= self.limit:
            return  # measured lately, and what was written since cannot have passed the quota
        self._measured, self._since = time.monotonic(), 0
        size = self._size = folder_bytes(self.experiment_path)
        for trial in self.removable(trials) if size > self.limit else []:
            freed = remove_dir(exported_path(self.trial_path(trial)))
            size -= freed
            self._size = size
            self.freed += freed
            self.removed.append(trial.trial_id)
            log.warning(
                "--max-disk %s: removed the weights of trial %s (%s %s, %s); the folder holds %s",
                human(self.limit),
                trial.trial_id,
                self.metric,
                _fmt(self.best(trial)),
                human(freed),
                human(size),
            )
            if size <= self.limit:
                return
        if size > self.limit:
            self.stop(size)

    def removable(self, trials: list) -> list:
        """Ended trials holding weights, outside the `protect` best, weakest first."""
        ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        order = sorted(trials, key=lambda t: sort_key(self.best(t), self.mode), reverse=True)
        kept = {t.trial_id for t in order[: self.protect]}
        candidates = [
            t for t in ended if t.trial_id not in kept and has_export(self.trial_path(t))
        ]
        return sorted(candidates, key=lambda t: sort_key(self.best(t), self.mode))

    def best(self, trial) -> float | None:
        analysis = getattr(trial, "metric_analysis", {}).get(self.metric, {})
        return analysis.get(self.mode)

    def stop(self, size: int) -> None:
        self.exceeded = (size, self.limit)
        log.error(
            "--max-disk %s: the folder holds %s with nothing left to remove; stopping the search",
            human(self.limit),
            human(size),
        )
        _stop_tune()


def _stop_tune() -> None:
    """Stop the search as Ctrl-C does: Tune stops the trials and saves its state, and
    `tuner.fit()` returns; `--resume` continues it (`search.driver.session.Interrupts`)."""
    handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if callable(handler):
        handler(signal.SIGUSR1, None)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def use_keeper(tuner, keeper: DiskKeeper) -> None:
    """Put `keeper` in place of the DiskKeeper a restored Tuner unpickled with its RunConfig
    (Ray restores a run's callbacks from tuner.pkl and has no public way to change them, so a
    `--resume` with another `--max-disk` would keep the old quota)."""
    run_config = tuner._local_tuner.get_run_config()
    kept = [c for c in run_config.callbacks or [] if not isinstance(c, DiskKeeper)]
    run_config.callbacks = [*kept, keeper]


def disk_keeper(settings: Settings, plan: Plan, values: dict, task) -> DiskKeeper:
    """The search's disk keeper (`search.driver.disk`): `--max-disk` (checked against what
    the running trials' checkpoints need: `check_disk`), protecting the trials the steps after
    the search read."""
    outputs = settings.outputs
    limit = None if outputs.max_disk is None else parse_size(outputs.max_disk)
    protect = protected_trials(settings)
    if limit is not None:
        with user_errors("raise --max-disk, or run fewer trials at once (--max-concurrent)"):
            check_disk(limit, plan.max_concurrent, protect, values, task)
    return DiskKeeper(plan.experiment_path, plan.metric, plan.mode, limit, protect)


def protected_trials(settings: Settings) -> int:
    """How many of the best trials keep their weights whatever the quota: those the test
    evaluation, `--ensemble`, `--explain-top` and `--keep-checkpoints top-K` read."""
    after, explain = settings.after, settings.attribution.explain_top
    _, top = parse_keep(settings.outputs.keep_checkpoints)
    return max(1, after.test_top, after.ensemble, explain or 0, top)


def keep_checkpoints(settings: Settings, plan: Plan, trials: list[dict]) -> None:
    """`--keep-checkpoints` once nothing after the search reads checkpoints: resume state
    goes, and the weights the policy does not keep (`search.experiment.retention.prune`);
    trials.parquet then says which trials still hold weights."""
    keep = parse_keep(settings.outputs.keep_checkpoints)
    freed = prune(trials, keep, plan.metric, plan.mode)
    write_table(trials, join_path(plan.experiment_path, TRIALS_FILE))
    held = sum(1 for t in trials if t.get("checkpoint_path"))
    log.info(
        "checkpoints (--keep-checkpoints %s): %d trials hold weights; %s freed",
        settings.outputs.keep_checkpoints,
        held,
        human(freed),
    )


def stopped_message(keeper: DiskKeeper, experiment_path: str) -> str | None:
    """The error line of a search the disk stopped (`--max-disk`, or a disk too full to go
    on), or None when it did not."""
    from search.driver.resume import resume_command

    again = resume_command(experiment_path)
    if keeper.exceeded is not None:
        size, limit = keeper.exceeded
        return (
            f"--max-disk {human(limit)} cannot hold the running trials' checkpoints (the "
            f"folder reached {human(size)} with nothing left to remove); the search is saved: "
            f"continue it with a larger quota: {again} --max-disk "
            f"{human(size * 2).replace(' ', '')}"
        )
    if keeper.full is not None:
        free, need = keeper.full
        return disk_full_message(experiment_path, free, need)
    return None


def disk_full_message(experiment_path: str, free: int, need: int) -> str:
    from search.driver.resume import resume_command

    needed = f"; the running trials need about {human(need)} more" if need else ""
    return (
        f"the disk holding {experiment_path} is full ({human(free)} free{needed}); the "
        "search is saved: free space there (or copy the experiment folder to a larger disk) "
        f"and continue it with: {resume_command(experiment_path)}"
    )
