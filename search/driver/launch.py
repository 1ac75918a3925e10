"""The trial entry points: what Ray Tune runs for one trial, and the resources it asks for.

    trainable = build_trainable(plan, reader)   # for tune.Tuner(...) or Tuner.restore(...)

Three drivers run the same `trainables.train.train_loop`:
- `function_driver` (`--launcher function`, what `auto` picks for one worker per trial): the
  loop runs inside the Tune function itself, with no worker group to start (0.2-0.9 s to the
  first step against 14-30 s under Ray Train, measured by search/bench.py on 2 cores).
- `train_driver` (`--launcher train`, the only way to DDP): a small driver that builds a
  `TorchTrainer` (`--workers-per-trial`, `--gpus-per-trial`; each worker holds
  `search.driver.plan.worker_request`) with `TuneReportCallback`; its workers run
  `worker_loop(reader, task)`, the trial's config being all Train hands them.
- `search.driver.folds.folds_driver` (`--folds K`): the K folds as Ray tasks.
The dataset and the task reach every trial through `tune.with_parameters` (and, for Train
workers, the function bound by `worker_loop`), never through the trial's config. The dataset is
a `search.data.reader.SplitReader`: object-store references to arrays put once per search
(resident), or a small descriptor that each node turns into memory-mapped arrays of its own
local cache (streamed); a trial calls `reader.arrays()` either way. Every result carries
`node_id`, the Ray node the trial trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import ray
from ray import tune

from search.data.reader import SplitReader
from search.driver.folds import folds_driver
from search.driver.plan import DRIVER_CPU, Plan, worker_request
from search.experiment.storage import join_path
from trainables.scores import CHECKPOINT_SCORE
from trainables.tasks import Task
from trainables.train import Placement, train_loop


def _node_id() -> str:
    """The Ray node this trial trains on (rank 0's node for DDP trials)."""
    return ray.get_runtime_context().get_node_id()


def worker_loop(reader: SplitReader, task: Task | None) -> Callable[[dict], None]:
    """Ray Train's `train_loop_per_worker` for one trial: the trial's config is all Train hands
    it; the split reader and the task are bound here."""

    def loop(cfg: dict) -> None:
        _worker(cfg, reader, task)

    return loop


def _worker(cfg: dict, reader: SplitReader, task: Task | None) -> None:
    """One Train worker: open the data, run the one loop."""
    import ray.train
    import ray.train.torch

    data = reader.arrays()
    ctx = ray.train.get_context()

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report({**metrics, "node_id": _node_id()}, checkpoint=ckpt)

    device = ray.train.torch.get_device()
    placement = Placement(ctx.get_world_rank(), ctx.get_world_size(), device)
    checkpoint = ray.train.get_checkpoint()  # set when Train restarted this trial's workers
    if checkpoint is None:
        return train_loop(cfg, report, data, placement=placement, task=task)
    with checkpoint.as_directory() as resume_from:
        train_loop(cfg, report, data, placement=placement, resume_from=resume_from, task=task)


def train_driver(config: dict, reader: SplitReader, plan: Plan) -> None:
    """The Tune trainable of the `train` launcher: one TorchTrainer per trial."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        worker_loop(reader, plan.task),
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=plan.workers_per_trial,
            use_gpu=plan.gpus_per_trial > 0,
            resources_per_worker=worker_request(plan),
        ),
        run_config=RunConfig(
            name="train",  # deterministic: a restored trial finds its own Train run
            storage_path=join_path(plan.experiment_path, trial_id),
            callbacks=[TuneReportCallback()],
            checkpoint_config=checkpoint_config(plan, CheckpointConfig),
            failure_config=FailureConfig(max_failures=plan.max_failures),
        ),
    )
    trainer.fit()


def function_driver(config: dict, reader: SplitReader, plan: Plan) -> None:
    """The Tune trainable of the `function` launcher: the loop runs right here."""

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report({**metrics, "node_id": _node_id()}, checkpoint=ckpt)

    checkpoint = tune.get_checkpoint()  # set when Tune retried or restored this trial
    if checkpoint is None:
        return train_loop(config, report, reader.arrays(), task=plan.task)
    with checkpoint.as_directory() as resume_from:
        train_loop(config, report, reader.arrays(), resume_from=resume_from, task=plan.task)


def checkpoint_config(plan: Plan, cls):
    """`cls` (Tune's or Train's CheckpointConfig) keeping the best checkpoint (the earliest of
    tied best epochs: `trainables.scores.checkpoint_score`) plus the latest."""
    return cls(
        num_to_keep=1,
        checkpoint_score_attribute=CHECKPOINT_SCORE,
        checkpoint_score_order=plan.mode,
    )


def trial_resources(plan: Plan) -> dict:
    """What a trial's Tune driver asks for: a sliver for Train and folds drivers (their
    workers or fold tasks ask for the rest), a whole worker for the function launcher."""
    if plan.launcher == "train" or plan.folds > 1:
        return {"cpu": DRIVER_CPU}
    return {"cpu": plan.cpus_per_worker, "gpu": plan.gpus_per_trial}


def build_trainable(plan: Plan, reader: SplitReader):
    """The Tune trainable for `plan`: its driver, the split reader and its resources."""
    if plan.folds > 1:
        driver = folds_driver
    else:
        driver = train_driver if plan.launcher == "train" else function_driver
    trainable = tune.with_parameters(driver, reader=reader, plan=plan)
    return tune.with_resources(trainable, trial_resources(plan))
