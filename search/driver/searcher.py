"""Our Optuna searcher: a Tune `Searcher` over Optuna's public ask/tell API, told each trial's
best epoch; the study lives on disk.

    storage, where = study_storage(plan.experiment_path, plan.name)   # where: for the dashboard
    searcher = BestEpochOptuna(epochs=10, storage=where, study_name=plan.name, seed=0)
    tune.TuneConfig(metric="val_auc", mode="max", search_alg=ConcurrencyLimiter(searcher, 2))

The searcher owns the `optuna.Study` (TPE, seeded; `load_if_exists`, so a study of the same
name goes on). Tune hands it the metric, the mode and the param space
(`set_search_properties`); the space's domains become Optuna distributions
(`OptunaSearch.convert_search_space`, Ray's public converter), `suggest` asks the study for a
config, `on_trial_result` reports each epoch's value as an intermediate value, and at the end
of a trial it tells the study:

- COMPLETE with the trial's *best* epoch's value (honouring the mode), for a trial that ran its
  planned epochs (`trainables.config.planned_epochs`);
- PRUNED for a trial that stopped early (ASHA, the time budget): its last value is reported as
  the last intermediate value first (Tune does not pass the result on which the scheduler said
  STOP, also at the last rung, to `on_trial_result`), and Optuna records it as the trial's
  value. TPE ranks pruned trials after every complete one, the further they got the better:
  the judgement ASHA made;
- FAIL for an errored trial, or one that never reported a finite value.

Tune does not tell a searcher why a trial ended: the scheduler's STOP and the trial's own end
both arrive as `on_trial_complete(trial_id, result)` with the last result. Finished vs stopped
early is `search.experiment.tables.trial_status`, the rule `trials.parquet` uses, over the
epochs the trial reported. A broken study (a locked or damaged database) is logged as a
warning and never takes the search down.

`metric` and `mode` may be lists (several objectives, `--objective`: the study gets one
direction per objective and a multi-objective sampler, TPE's by default). A trial is then told
every objective's value at its best epoch by the FIRST objective, not each objective's own best:
that epoch is the checkpoint the trial keeps, so every point of the Pareto front is a model that
exists (each objective's best could come from different epochs: no model has them all), and
`trials.parquet`'s `pareto` column (`search.experiment.tables.mark_pareto`, from the same
values) marks exactly Optuna's `Study.best_trials`. Tune hands over the first objective alone
(what ASHA stops on); the others stay. No intermediate values are reported then (Optuna allows
them for one objective only), so a pruned trial has no values. `earlier` (`--warm-start`,
`search.driver.warm_start`): finished trials of an earlier study, added to a new (empty) study
before the first suggestion.

The study lives in SQLite at `<experiment>/optuna.db` (`optuna-dashboard sqlite:///<path>`), or,
on a network filesystem (NFS, CIFS, Lustre, ...: SQLite's file locks are unsafe there), in an
Optuna journal file `<experiment>/optuna.journal` (`optuna-dashboard <path>`). Storage on a URI
(`s3://`, `gs://`) cannot hold a database: the study goes to `runs/<name>/optuna.db` on the
driver's disk. A study inside the experiment folder is kept relative to it (`home`): the
folder the driver works on (`search.driver.relocate.use_experiment`, set by the pipeline) is
where it is opened, and the saved state holds no Optuna object that names a storage, so a
copied or moved experiment resumes on its own study and never writes to the original's.
`--resume`: Tune saves the searcher (`save`: the study's name and storage, the
sampler, the space, each trial's Optuna trial and what it reported so far) and restores it
(`restore`): the study continues, and unfinished trials are told correctly when they end.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.driver.relocate import EXPERIMENT_ENV, inside, located
from search.experiment.layout import OPTUNA_FILE
from search.experiment.storage import is_uri, join_path
from search.experiment.tables import ERRORED, FINISHED, epoch_of, trial_status
from trainables.scores import improves, is_finite

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


@dataclass
class Running:
    """What the searcher keeps of one Tune trial until it tells the study."""

    trial: optuna.trial.Trial | None
    """None in saved state (`BestEpochOptuna.save`): rebuilt on the restored study."""
    number: int
    """The Optuna trial number (what `Study.tell` takes)."""
    best: float | None = None
    """The best finite value so far (the mode's)."""
    ran: int = 0
    """Epochs run so far."""
    last: tuple[int, float] | None = None
    """(step, value) of the last result seen."""
    told: int = -1
    """The last step reported to Optuna as an intermediate value."""
    reported: bool = False
    """Whether any result arrived."""
    values: list[float] | None = None
    """Every objective's value at the best epoch by the first (several objectives)."""


class BestEpochOptuna(Searcher):
    """Optuna's ask/tell behind Tune's Searcher protocol (see the module docstring).

    Args:
        epochs: the epochs a trial is planned to run (a trial that ran fewer was stopped).
        storage: where the study lives (`study_storage`'s second value: a `sqlite:///` URL or a
            journal file path); None keeps it in memory.
        study_name: the study's name (the experiment's).
        seed: the TPE sampler's seed (ignored when `sampler` is given).
        sampler: an Optuna sampler (default: `TPESampler(seed=seed)`).
        space: the param space (Tune domains); default: the one Tune hands over.
        metric, mode: default: Tune's (`TuneConfig`).
        home: the experiment folder; a storage inside it is kept relative to it, and opened
            in the folder `use_experiment` names (a copy's own study), else in `home`.
        earlier: finished trials to tell a new study first (`search.driver.warm_start`).
    """

    def __init__(
        self,
        epochs: int,
        storage: str | None = None,
        study_name: str = "medsweep",
        seed: int | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        space: dict | None = None,
        metric: str | list[str] | None = None,
        mode: str | list[str] | None = None,
        home: str | None = None,
        earlier: list[optuna.trial.FrozenTrial] | None = None,
    ) -> None:
        self.objectives = _objectives(metric, mode)  # checked before Ray's own assertions
        super().__init__(metric=metric, mode=mode)
        self.epochs = int(epochs)
        self.home = home
        self.storage = storage if home is None or storage is None else inside(storage, home)
        self.study_name = study_name
        self.sampler = sampler or optuna.samplers.TPESampler(seed=seed)
        self.space: dict = {}
        self.study: optuna.Study | None = None
        self.backend: optuna.storages.BaseStorage | None = None
        """The storage the study was opened on."""
        self.running: dict[str, Running] = {}
        self.earlier = list(earlier or [])
        if space:
            self.set_search_properties(metric, mode, space)

    @property
    def metric(self) -> str | list[str] | None:
        return _one_or_list([m for m, _ in self.objectives]) if self.objectives else None

    @property
    def mode(self) -> str | list[str] | None:
        return _one_or_list([d for _, d in self.objectives]) if self.objectives else None

    def set_search_properties(self, metric, mode, config: dict, **spec) -> bool:
        """Tune's metric, mode and param space: the study is created (or loaded) here."""
        if self.study is not None:
            return False
        if metric and mode and len(self.objectives) <= 1:  # several: Tune's is the first
            self.objectives = _objectives(metric, mode)
        if not self.objectives:
            raise ValueError("BestEpochOptuna needs a metric and a mode (TuneConfig's)")
        self.space = OptunaSearch.convert_search_space(config)
        if not self.space:
            raise ValueError("BestEpochOptuna: the param space searches nothing")
        self.study = self._open_study()
        self._tell_earlier()
        return True

    def _tell_earlier(self) -> None:
        """The warm start's trials, once, into a study that holds none yet (not on resume)."""
        earlier, self.earlier = self.earlier, []
        if earlier and not self.study.get_trials(deepcopy=False):
            self.study.add_trials(earlier)
            log.info("optuna: told %d trial(s) of an earlier study first", len(earlier))

    def _open_study(self) -> optuna.Study:
        directions = ["maximize" if d == "max" else "minimize" for _, d in self.objectives]
        self.backend = open_storage(self.where)
        return optuna.create_study(
            storage=self.backend,
            sampler=self.sampler,
            pruner=optuna.pruners.NopPruner(),
            study_name=self.study_name,
            load_if_exists=True,
            directions=directions,
        )

    @property
    def where(self) -> str | None:
        """The storage to open: a relative one in the current experiment folder."""
        home = os.environ.get(EXPERIMENT_ENV) or self.home
        if self.storage is None or home is None:
            return self.storage
        return located(self.storage, home)

    def suggest(self, trial_id: str) -> dict | None:
        if self.study is None:
            raise RuntimeError("BestEpochOptuna.suggest before Tune set its search properties")
        if trial_id not in self.running:
            trial = self.study.ask(fixed_distributions=self.space)
            self.running[trial_id] = Running(trial, trial.number)
        return dict(self.running[trial_id].trial.params)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        run = self.running.get(trial_id)
        if run is None:
            return
        self._track(run, result)
        if run.last is not None:
            self._report(run, *run.last)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        run = self.running.pop(trial_id, None)
        if run is None:
            log.debug("optuna: completion of unknown or finished trial %s ignored", trial_id)
            return
        if result:
            self._track(run, result)
        state, value = self.verdict(run, error)
        if state != TrialState.FAIL and run.last is not None:
            self._report(run, *run.last)  # the result that made ASHA stop it (also at max_t)
        try:
            self.study.tell(run.number, value, state=state)
        except Exception as exc:  # a broken study must not take the search down
            log.warning("optuna: could not record trial %s: %s", trial_id, exc)

    def verdict(self, run: Running, error: bool = False) -> tuple[TrialState, float | list | None]:
        """(state, value(s)) to tell Optuna for a trial that ended (see the module docstring)."""
        status = trial_status(run.ran, self.epochs, error)
        if status == ERRORED or (run.reported and not is_finite(run.best)):
            return TrialState.FAIL, None
        if status == FINISHED and len(self.objectives) > 1:
            if not all(map(is_finite, run.values or [None])):
                return TrialState.FAIL, None  # Optuna refuses a NaN objective
            return TrialState.COMPLETE, run.values
        if status == FINISHED:
            return TrialState.COMPLETE, run.best
        return TrialState.PRUNED, None  # Optuna takes the last intermediate value

    def _track(self, run: Running, result: dict) -> None:
        metric = self.objectives[0][0]
        value = result.get(metric)
        epoch = epoch_of(result)
        if not epoch:
            return
        run.reported = True
        run.ran = max(run.ran, epoch)
        if is_finite(value) and improves(float(value), run.best, self.objectives[0][1]):
            run.best = float(value)  # ties keep the earlier epoch, as everywhere
            run.values = [_number(result.get(m)) for m, _ in self.objectives]
        step = int(result.get("training_iteration", epoch))
        run.last = (step, float(value) if is_finite(value) else math.nan)

    def _report(self, run: Running, step: int, value: float) -> None:
        """An intermediate value, once per step (single objective only, as Optuna allows)."""
        if len(self.objectives) > 1 or step <= run.told:
            return
        try:
            run.trial.report(value, step)
        except Exception as exc:
            log.warning("optuna: could not report trial %d's step %d: %s", run.number, step, exc)
        run.told = step

    def save(self, checkpoint_path: str) -> None:
        """Tune's searcher state (`--resume`): everything but the study object itself."""
        state = {
            "epochs": self.epochs,
            "storage": self.storage,
            "study_name": self.study_name,
            "sampler": self.sampler,
            "objectives": self.objectives,
            "space": self.space,
            "running": self.running if self.storage is None else self._unbound(),
        }
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        """Continue the saved search: the same study (by name and storage), the same trials."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.epochs, self.storage = state["epochs"], state["storage"]
        self.study_name, self.sampler = state["study_name"], state["sampler"]
        self.objectives, self.space = state["objectives"], state["space"]
        self.study = self._open_study() if self.space else None
        self.running = self._bound(state["running"])

    def _unbound(self) -> dict[str, Running]:
        """The running trials without their Optuna `Trial` objects: each carries the storage it
        was opened on, which would take a copied experiment back to the original's study."""
        return {k: dataclasses.replace(run, trial=None) for k, run in self.running.items()}

    def _bound(self, running: dict[str, Running]) -> dict[str, Running]:
        """Saved running trials with `Trial` objects on this study again (found by number)."""
        if self.study is None or self.backend is None:
            return running
        study_id = self.backend.get_study_id_from_name(self.study_name)
        for run in running.values():
            if run.trial is None:
                trial_id = self.backend.get_trial_id_from_study_id_trial_number(
                    study_id, run.number
                )
                run.trial = optuna.trial.Trial(self.study, trial_id)
        return running


def _objectives(metric, mode) -> list[tuple[str, str]]:
    """[(metric, mode)] from Tune's metric and mode (a string each, or lists)."""
    if not metric or not mode:
        return []
    metrics = [metric] if isinstance(metric, str) else list(metric)
    modes = [mode] if isinstance(mode, str) else list(mode)
    if len(metrics) != len(modes) or any(m not in ("max", "min") for m in modes):
        raise ValueError(f"metric {metric!r} and mode {mode!r}: one 'max' or 'min' per metric")
    return list(zip(metrics, modes, strict=True))


def _number(value) -> float:
    return float(value) if is_finite(value) else math.nan


def _one_or_list(values: list[str]) -> str | list[str]:
    return values[0] if len(values) == 1 else values


def open_storage(where: str | None) -> optuna.storages.BaseStorage | None:
    """The Optuna storage at `where`: a database URL (`sqlite:///...`), a journal file path,
    or None (in memory)."""
    if where is None:
        return None
    if "://" in where:
        return optuna.storages.RDBStorage(where)
    lock = optuna.storages.journal.JournalFileOpenLock(where)
    backend = optuna.storages.journal.JournalFileBackend(where, lock_obj=lock)
    return optuna.storages.JournalStorage(backend)


def study_storage(experiment_path: str, name: str) -> tuple[optuna.storages.BaseStorage, str]:
    """(Optuna storage, where: what `BestEpochOptuna` and the dashboard open) for an experiment
    folder or URI."""
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
        where = join_path(folder, JOURNAL_FILE)
    else:
        where = f"sqlite:///{join_path(folder, OPTUNA_FILE)}"
    return open_storage(where), where


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
