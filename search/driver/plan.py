"""How one search runs: the `Plan` the command line decides (everything but the searched knobs).

    plan = make_plan(settings, space, name, task)  # settings: search.driver.settings
    plan.experiment_path                           # <storage>/<name>, a local path or a URI
    plan.launcher                                  # "function" or "train" (after `auto`)

`make_plan` resolves `--launcher auto` and `--max-concurrent` (default: as many trials as the
cluster holds, from what each trial's workers ask for), so call it after Ray is connected.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from search.driver.objectives import parse_objectives
from search.driver.resources import ClusterView, concurrency, default_gpus, read_cluster
from search.driver.settings import Settings
from search.driver.space import Space
from search.experiment.storage import absolute, join_path
from trainables.tasks import Task

DRIVER_CPU = 0.01  # a trial driver must not starve its own Train workers; 0 is rejected
SEARCHERS = ("optuna", "random", "wandb-bayes", "ray-optuna")
EARLY_STOPPING = ("asha", "none")
LAUNCHERS = ("train", "function")
SMOKE_TRIALS = 2
log = logging.getLogger("medsweep")


@dataclass(frozen=True)
class Plan:
    """How the search runs: everything the CLI decides that is not a searched knob."""

    name: str
    storage: str
    trials: int
    metric: str
    mode: str
    searcher: str = "optuna"
    early_stopping: str = "asha"
    """`asha`, or `none`: every trial runs its planned epochs."""
    tpe: str | None = None
    """`--tpe`'s settings (`search.driver.tpe`; None: the measured defaults)."""
    launcher: str = "train"
    seed: int = 0
    max_concurrent: int = 1
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_trial: float = 0.0
    max_failures: int = 0
    time_budget_s: float | None = None
    verbose: int = 1
    task: Task | None = None
    """The task record trials train (a `folder` task's classes come from its data), its
    `metric` and `mode` the search's: what each trial ranks its checkpoints by."""
    folds: int = 0
    """k-fold cross-validation over train+val inside each trial (0 = the given split)."""
    objectives: tuple[tuple[str, str], ...] = ()
    """`--objective`'s (metric, mode) pairs, the first `metric`/`mode` (empty: those alone;
    `search.driver.objectives`)."""

    def __post_init__(self) -> None:
        task = self.task
        if task is not None and (task.metric, task.mode) != (self.metric, self.mode):
            # a space's `metric:` or --objective: trials keep the best checkpoint by it, not by
            # the task's default (which kept the worst epoch's when the modes differed)
            searched = dataclasses.replace(task, metric=self.metric, mode=self.mode)
            object.__setattr__(self, "task", searched)
        if self.searcher not in SEARCHERS:
            raise ValueError(f"--searcher {self.searcher!r}: choose one of {SEARCHERS}")
        if self.early_stopping not in EARLY_STOPPING:
            raise ValueError(
                f"--early-stopping {self.early_stopping!r}: choose one of {EARLY_STOPPING}"
            )
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"--launcher {self.launcher!r}: choose one of {LAUNCHERS}")
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"--folds {self.folds}: use 0 (the given split) or K >= 2")
        if self.folds > 1 and self.workers_per_trial > 1:
            raise ValueError("--folds runs each fold on one worker; drop --workers-per-trial")
        if self.launcher == "function" and self.workers_per_trial > 1:
            raise ValueError(
                f"--workers-per-trial {self.workers_per_trial} needs --launcher train "
                "(only Ray Train runs a trial on several workers)"
            )

    @property
    def all_objectives(self) -> list[tuple[str, str]]:
        """Every (metric, mode) the search optimises, the first ASHA's."""
        return list(self.objectives) or [(self.metric, self.mode)]

    @property
    def experiment_path(self) -> str:
        return join_path(self.storage, self.name)

    @property
    def resources_per_trial(self) -> dict:
        """What one trial's workers hold together (for search.json and the report)."""
        return {"cpu": self.cpus_per_worker * self.workers_per_trial, "gpu": self.gpus_per_trial}


def resolve_launcher(launcher: str, workers_per_trial: int) -> str:
    """`auto`: Ray Train only where it is needed (DDP). search/bench.py measured, on 2 CPU
    cores, 14-30 s from trial start to first step under Ray Train against 0.2-0.9 s in a Tune
    function."""
    if launcher != "auto":
        return launcher
    return "train" if workers_per_trial > 1 else "function"


def make_plan(settings: Settings, space: Space, name: str, task: Task) -> Plan:
    """The plan from the command line's settings (`--storage` resolved: `session.check_storage`);
    asks Ray what the cluster has and can add for the default `--gpus-per-trial` and
    `--max-concurrent` (search.driver.resources)."""
    search, res = settings.search, settings.resources
    view = read_cluster(local=res.address is None)
    gpus, why = choose_gpus(settings, view, image_size_of(settings, space, task))
    objectives = parse_objectives(search.objective)
    metric, mode = objectives[0] if objectives else (space.metric, space.mode)
    plan = Plan(
        name=name,
        storage=absolute(settings.outputs.storage),
        trials=SMOKE_TRIALS if search.smoke_test else search.trials,
        metric=metric,
        mode=mode,
        searcher=search.searcher,
        early_stopping=search.early_stopping,
        tpe=search.tpe,
        launcher=resolve_launcher(res.launcher, res.workers_per_trial),
        seed=search.seed,
        workers_per_trial=res.workers_per_trial,
        cpus_per_worker=res.cpus_per_worker,
        gpus_per_trial=gpus,
        max_failures=res.max_failures,
        time_budget_s=search.time_budget,
        task=task,
        folds=settings.data.folds,
        objectives=objectives,
    )
    plan = with_concurrency(plan, res.max_concurrent, view)
    where = "--max-concurrent" if res.max_concurrent else "what the cluster holds at its largest"
    log.info(
        "each trial asks for %s (%s); %d trial(s) at once (%s)",
        _asks(plan),
        why,
        plan.max_concurrent,
        where,
    )
    return plan


def image_size_of(settings: Settings, space: Space, task: Task) -> int:
    """The image side trials train at: the flag, else the space's fixed value, else the task's."""
    fixed = space.domains.get("image_size")
    if settings.data.image_size:
        return int(settings.data.image_size)
    return int(fixed) if isinstance(fixed, int | float) else task.image_size


def choose_gpus(settings: Settings, view: ClusterView, image_size: int) -> tuple[float, str]:
    """GPUs per trial and why: `--gpus-per-trial` if given, CPU for a smoke test, else the rule."""
    if settings.resources.gpus_per_trial is not None:
        return float(settings.resources.gpus_per_trial), "--gpus-per-trial"
    if settings.search.smoke_test:
        return 0.0, "--smoke-test runs on the CPU"
    local_cuda = False
    if view.local:
        import torch

        local_cuda = torch.cuda.is_available()
    return default_gpus(view, image_size, local_cuda)


def worker_request(plan: Plan) -> dict:
    """What one worker (or fold task, or after-search task) of a trial holds: the one rule of
    per-worker resources (`{"CPU": c}`, plus `"GPU"`: the trial's GPUs over its workers)."""
    request = {"CPU": plan.cpus_per_worker}
    if plan.gpus_per_trial > 0:
        request["GPU"] = plan.gpus_per_trial / plan.workers_per_trial
    return request


def default_concurrency(plan: Plan, view: ClusterView | None = None) -> int:
    """How many trials the cluster can hold at once, grown to its largest (node types x
    max_workers), from what each trial's workers need."""
    view = view or read_cluster(local=False)
    slots = plan.workers_per_trial * max(1, plan.folds)  # a trial's folds fill up to K slots
    request = worker_request(plan)
    n = concurrency(view, request, slots_per_trial=slots)
    if plan.launcher == "train" or plan.folds > 1:  # each trial's driver holds DRIVER_CPU too
        cpus = view.total("CPU")
        while n > 1 and n * (slots * request["CPU"] + DRIVER_CPU) > cpus + 1e-9:
            n -= 1
    return n


def _asks(plan: Plan) -> str:
    per = worker_request(plan)
    what = ", ".join(f"{v:g} {k}" for k, v in per.items())
    return what if plan.workers_per_trial == 1 else f"{plan.workers_per_trial} x ({what})"


def with_concurrency(
    plan: Plan, max_concurrent: int | None, view: ClusterView | None = None
) -> Plan:
    fit = max_concurrent or default_concurrency(plan, view)
    return dataclasses.replace(plan, max_concurrent=fit)
