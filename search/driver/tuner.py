"""Build the Ray Tune search: trial drivers (Ray Train or a plain function), searcher, scheduler.

    tuner = build_tuner(plan, space, data_ref)   # plan: a `Plan` from the CLI's flags
    grid = tuner.fit()

Two launchers run the same `trainables.train.train_loop`:
- `train`: the Tune trainable is a small driver that builds a `TorchTrainer`
  (`--workers-per-trial`, `--gpus-per-trial`) with `TuneReportCallback`; the only way to DDP.
- `function` (what `--launcher auto` picks for one worker per trial): the loop runs inside
  the Tune function itself (no worker-group start-up:
  0.2-0.9 s to the first step against 14-30 s, measured by search/bench.py on 2 cores);
  single worker only.
The dataset reaches every trial as a nested object-store reference, put once per search.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from search.driver.space import Space
from search.experiment.tables import join_path
from trainables.tasks import Task
from trainables.train import KNOBS, train_loop

DRIVER_CPU = 0.01  # a trial driver must not starve its own Train workers; 0 is rejected
SEARCHERS = ("optuna", "random", "wandb-bayes")
LAUNCHERS = ("train", "function")


@dataclass(frozen=True)
class Plan:
    """How the search runs: everything the CLI decides that is not a searched knob."""

    name: str
    storage: str
    trials: int
    metric: str
    mode: str
    searcher: str = "optuna"
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
    """The task record trials train (a `folder` task's classes come from its data)."""
    folds: int = 0
    """k-fold cross-validation over train+val inside each trial (0 = the given split)."""

    def __post_init__(self) -> None:
        if self.searcher not in SEARCHERS:
            raise ValueError(f"--searcher {self.searcher!r}: choose one of {SEARCHERS}")
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
    def experiment_path(self) -> str:
        return join_path(self.storage, self.name)


def _data(data_ref: list) -> dict:
    return ray.get(data_ref[0])


def _node_id() -> str:
    """The Ray node this trial trains on (rank 0's node for DDP trials)."""
    return ray.get_runtime_context().get_node_id()


def _worker(cfg: dict) -> None:
    """Ray Train's `train_loop_per_worker`: unwrap the data reference, run the one loop."""
    import ray.train
    import ray.train.torch

    cfg = dict(cfg)
    data = _data(cfg.pop("_data_ref"))
    task = cfg.pop("_task")
    ctx = ray.train.get_context()

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report({**metrics, "node_id": _node_id()}, checkpoint=ckpt)

    args = (cfg, report, data, ctx.get_world_rank(), ctx.get_world_size())
    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()  # set when Train restarted this trial's workers
    if checkpoint is None:
        return train_loop(*args, device=device, task=task)
    with checkpoint.as_directory() as resume_from:
        train_loop(*args, device=device, resume_from=resume_from, task=task)


def train_driver(config: dict, data_ref: list, plan: Plan) -> None:
    """The Tune trainable of the `train` launcher: one TorchTrainer per trial."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    per_worker = {"CPU": plan.cpus_per_worker}
    if plan.gpus_per_trial:
        per_worker["GPU"] = plan.gpus_per_trial / plan.workers_per_trial
    trainer = TorchTrainer(
        _worker,
        train_loop_config={**config, "_data_ref": data_ref, "_task": plan.task},
        scaling_config=ScalingConfig(
            num_workers=plan.workers_per_trial,
            use_gpu=plan.gpus_per_trial > 0,
            resources_per_worker=per_worker,
        ),
        run_config=RunConfig(
            name="train",  # deterministic: a restored trial finds its own Train run
            storage_path=join_path(plan.experiment_path, trial_id),
            callbacks=[TuneReportCallback()],
            checkpoint_config=_checkpoint_config(plan, CheckpointConfig),
            failure_config=FailureConfig(max_failures=plan.max_failures),
        ),
    )
    trainer.fit()


def function_driver(config: dict, data_ref: list, plan: Plan) -> None:
    """The Tune trainable of the `function` launcher: the loop runs right here."""

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report({**metrics, "node_id": _node_id()}, checkpoint=ckpt)

    checkpoint = tune.get_checkpoint()  # set when Tune retried or restored this trial
    if checkpoint is None:
        return train_loop(config, report, _data(data_ref), task=plan.task)
    with checkpoint.as_directory() as resume_from:
        train_loop(config, report, _data(data_ref), resume_from=resume_from, task=plan.task)


def _checkpoint_config(plan: Plan, cls):
    return cls(num_to_keep=1, checkpoint_score_attribute=plan.metric,
               checkpoint_score_order=plan.mode)  # fmt: skip


def trial_resources(plan: Plan) -> dict:
    """What a trial's Tune driver asks for: a sliver for Train drivers, a worker otherwise."""
    if plan.launcher == "train":
        return {"cpu": DRIVER_CPU}
    return {"cpu": plan.cpus_per_worker, "gpu": plan.gpus_per_trial}


def build_trainable(plan: Plan, data_ref: list):
    if plan.folds > 1:
        from search.driver.folds import folds_driver

        trainable = tune.with_parameters(folds_driver, data_ref=data_ref, plan=plan)
        return tune.with_resources(trainable, {"cpu": DRIVER_CPU})  # folds run as Ray tasks
    driver = train_driver if plan.launcher == "train" else function_driver
    trainable = tune.with_parameters(driver, data_ref=data_ref, plan=plan)
    return tune.with_resources(trainable, trial_resources(plan))


def build_searcher(plan: Plan, space: Space):
    if plan.searcher == "random" or not space.searched:  # nothing to search: repeat the config
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=plan.seed, max_concurrent=plan.max_concurrent)
    if plan.searcher == "wandb-bayes":
        from search.tracking.engine import WandbSweepSearcher

        # The engine proposes the searched knobs only; fixed values stay in param_space, so
        # command-line overrides (--epochs) win as they do for the other searchers.
        knobs = {k: space.sweep_config["parameters"][k] for k in space.searched}
        config = {**space.sweep_config, "parameters": knobs}
        searcher = WandbSweepSearcher(config, method="bayes", seed=plan.seed)
    else:
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(sampler=TPESampler(seed=plan.seed))
    return ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent)


def build_scheduler(plan: Plan, space: Space, epochs: int) -> ASHAScheduler:
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max(epochs, 1),
        grace_period=min(space.grace_period, max(epochs, 1)),
        reduction_factor=space.reduction_factor,
    )


def build_tuner(
    plan: Plan, space: Space, data_ref: list, param_space: dict, callbacks: list | None = None
) -> tune.Tuner:
    """The search; `callbacks` (W&B logging) stay out of `Plan`, which every trial receives."""
    epochs = int(param_space.get("epochs", 1))
    searcher = build_searcher(plan, space)
    if plan.searcher == "wandb-bayes":  # the engine holds the space; Tune keeps the rest
        param_space = {k: v for k, v in param_space.items() if k not in space.searched}
    return tune.Tuner(
        build_trainable(plan, data_ref),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            search_alg=searcher,
            scheduler=build_scheduler(plan, space, epochs),
            num_samples=plan.trials,
            time_budget_s=plan.time_budget_s,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage,
            checkpoint_config=_checkpoint_config(plan, tune.CheckpointConfig),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            callbacks=callbacks or [],
            progress_reporter=tune.CLIReporter(
                metric_columns=["epoch", plan.metric],
                parameter_columns=list(KNOBS),
                max_report_frequency=30,
            ),
            verbose=plan.verbose,
        ),
    )


def default_concurrency(plan: Plan) -> int:
    """How many trials the cluster can hold at once, from what each trial's workers need."""
    resources = ray.cluster_resources()
    if plan.gpus_per_trial > 0:
        fit = resources.get("GPU", 0) / plan.gpus_per_trial
    else:
        per_trial = plan.cpus_per_worker * plan.workers_per_trial
        spare = resources.get("CPU", 1) - (DRIVER_CPU if plan.launcher == "train" else 0)
        fit = spare / per_trial
    if plan.folds > 1:  # a trial's folds fill up to K slots
        fit = fit / plan.folds
    return max(1, int(fit + 1e-9))


def with_concurrency(plan: Plan, max_concurrent: int | None) -> Plan:
    return dataclasses.replace(plan, max_concurrent=max_concurrent or default_concurrency(plan))
