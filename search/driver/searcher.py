"""Optuna learns what the results rank by: each trial's best epoch, its study on disk.

    storage, where = study_storage(plan.experiment_path, plan.name)   # where: for the dashboard
    searcher = BestEpochOptuna(epochs=10, sampler=TPESampler(seed=0), storage=storage)

Ray's `OptunaSearch.on_trial_complete` tells Optuna a trial's *last* reported value, as a
COMPLETE trial, also for trials that ASHA stopped at an early rung; medsweep ranks trials by
their *best* epoch (`trainables.scores`, `search.experiment.tables`). This subclass keeps each
trial's best value of the metric (honouring the mode) and, at the end of a trial, tells Optuna:

- COMPLETE with the best value, for a trial that ran its epochs;
- PRUNED for a trial that stopped early (ASHA): its last value is reported as the last
  intermediate value first (Tune does not pass the result on which the scheduler said STOP,
  also at the last rung, to `on_trial_result`), and Optuna records it as the trial's value.
  TPE ranks pruned trials after every complete one, the further they got the better: the
  judgement ASHA made;
- FAIL for an errored trial, or one that never reported a finite value.

Tune does not tell a searcher why a trial ended: the scheduler's STOP and the trial's own end
both arrive as `on_trial_complete(trial_id, result)` with the last result. A trial ran its
budget when its last `epoch` (what `train_loop` reports; `training_iteration` if absent)
reached the planned epochs, the rule `trials.parquet` uses for `finished` vs `stopped_early`.

The study lives in SQLite at `<experiment>/optuna.db` (`optuna-dashboard sqlite:///<path>`), or,
on a network filesystem (NFS, CIFS, Lustre, ...: SQLite's file locks are unsafe there), in an
Optuna journal file `<experiment>/optuna.journal` (`optuna-dashboard <path>`). Storage on a URI
(`s3://`, `gs://`) cannot hold a database: the study goes to `runs/<name>/optuna.db` on the
driver's disk. `--resume` restores the searcher (and so the study, by its storage URL) from
Tune's saved state: the study continues.
"""

from __future__ import annotations

import logging
import math
import os

from optuna.trial import TrialState
from ray.air.constants import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from search.experiment.layout import OPTUNA_FILE
from search.experiment.storage import is_uri, join_path
from trainables.scores import better, is_finite

log = logging.getLogger("medsweep")
JOURNAL_FILE = "optuna.journal"
"""The study on a network filesystem (an Optuna journal, instead of OPTUNA_FILE)."""
NETWORK_FS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "beegfs",
    "glusterfs",
    "ceph",
    "fuse.sshfs",
    "9p",
)


class BestEpochOptuna(OptunaSearch):
    """`OptunaSearch` that tells Optuna each trial's best value (see the module docstring).

    Args:
        epochs: the epochs a trial is planned to run (a trial that ran fewer was stopped).
        **kwargs: as for `ray.tune.search.optuna.OptunaSearch` (sampler, storage, ...).
    """

    def __init__(self, epochs: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self._epochs = int(epochs)
        self._best: dict[str, float] = {}
        self._ran: dict[str, int] = {}  # epochs run so far
        self._last: dict[str, tuple[int, float]] = {}  # (step, value) of the last result
        self._told: dict[str, int] = {}  # last step reported to Optuna

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._track(trial_id, result)
        super().on_trial_result(trial_id, result)
        if TRAINING_ITERATION in result:
            self._told[trial_id] = int(result[TRAINING_ITERATION])

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)  # Ray's warning / error
        if result:
            self._track(trial_id, result)
        state, value = self.verdict(trial_id, error)
        ot_trial = self._ot_trials[trial_id]
        if state != TrialState.FAIL and trial_id in self._last:
            step, last = self._last[trial_id]
            if step > self._told.get(trial_id, -1):  # the result that made ASHA stop it
                ot_trial.report(last, step)  # (at max_t too): the study's curve ends there
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as exc:  # a broken study must not take the search down
            log.warning("optuna: could not record trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def verdict(self, trial_id: str, error: bool = False) -> tuple[TrialState, float | None]:
        """(state, value) to tell Optuna for a trial that ended (see the module docstring)."""
        best = self._best.get(trial_id)
        if error or (trial_id in self._ran and not is_finite(best)):
            return TrialState.FAIL, None
        if self._ran.get(trial_id, 0) >= self._epochs:
            return TrialState.COMPLETE, best
        return TrialState.PRUNED, None  # Optuna takes the last intermediate value

    def _track(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric) if isinstance(self.metric, str) else None
        epoch = result.get("epoch", result.get(TRAINING_ITERATION))
        if epoch is None:
            return
        self._ran[trial_id] = max(self._ran.get(trial_id, 0), int(epoch))
        if is_finite(value):
            self._best[trial_id] = better(self._best.get(trial_id), float(value), self.mode)
        step = int(result.get(TRAINING_ITERATION, epoch))
        self._last[trial_id] = (step, float(value) if is_finite(value) else math.nan)


def study_storage(experiment_path: str, name: str):
    """(Optuna storage, where the dashboard opens it) for an experiment folder or URI."""
    import optuna

    folder = experiment_path
    if is_uri(experiment_path):
        folder = os.path.abspath(os.path.join("runs", name))
        log.info(
            "optuna: the storage %s is not a local folder; the study goes to %s",
            experiment_path,
            folder,
        )
    os.makedirs(folder, exist_ok=True)
    if on_network_fs(folder):
        path = join_path(folder, JOURNAL_FILE)
        lock = optuna.storages.journal.JournalFileOpenLock(path)
        backend = optuna.storages.journal.JournalFileBackend(path, lock_obj=lock)
        return optuna.storages.JournalStorage(backend), path
    path = join_path(folder, OPTUNA_FILE)
    return optuna.storages.RDBStorage(f"sqlite:///{path}"), f"sqlite:///{path}"


def on_network_fs(path: str, mounts: str = "/proc/mounts") -> bool:
    """Whether `path` lies on a network filesystem (the longest mount point above it)."""
    try:
        with open(mounts) as f:
            table = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return False
    path = os.path.realpath(path)
    above = [
        (point, kind)
        for point, kind in table
        if path == point or path.startswith(point.rstrip("/") + "/")
    ]
    if not above:
        return False
    return max(above, key=lambda pk: len(pk[0]))[1] in NETWORK_FS
