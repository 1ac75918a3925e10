"""One trial as `wandb agent` runs it (search/wandb_trial.py): no Ray, the loop in this process.

    code = run_trial(settings, data_dir="data", project="medsweep", split="auto")

The config W&B hands the run (the agent's, laid over `settings`) must name the `task`; the
data are found as search/run.py finds them (`search.data.sources.locate_data`: a MedMNIST npz,
or a folder per class converted once). Every epoch's metrics are logged at step = epoch, the
best checkpoint is kept in `<run dir>/checkpoint/`, and the run summary holds the metric's
best value, not its last: W&B's Bayesian search reads the summary.
"""

from __future__ import annotations

import os
import shutil

from search.driver.settings import DataSettings
from trainables.scores import improves, is_finite


def run_config(run) -> dict:
    """The run's config as training settings: W&B's own keys (`_wandb`, ...) dropped."""
    config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
    if "task" not in config:
        raise SystemExit(
            "the config names no `task`; every spaces/<task>.yaml fixes it with "
            "`task: {value: <task>}`, or pass --task=<task>"
        )
    return config


class BestKeeper:
    """The `report` handed to `train_loop`: logs each epoch, keeps the best epoch's checkpoint
    (ties keep the earlier epoch, as `trainables.scores.improves` rules)."""

    def __init__(self, run, metric: str, mode: str):
        self.run, self.metric, self.mode = run, metric, mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.checkpoint_dir = os.path.join(run.dir, "checkpoint")

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.run.log(metrics, step=int(metrics["epoch"]))
        score = metrics.get(self.metric)
        if not (is_finite(score) and improves(score, self.best, self.mode)):
            return  # train_loop hands over a checkpoint every epoch: keep the best one only
        self.best, self.best_epoch = float(score), int(metrics["epoch"])
        if checkpoint_dir is not None:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            shutil.copytree(checkpoint_dir, self.checkpoint_dir)


def run_trial(settings: dict, data_dir: str | None, project: str, split: str) -> int:
    """Train one W&B run's config; prints the best score and where its checkpoint is."""
    import wandb

    from search.data.sources import ingest_data, load_arrays, locate_data
    from trainables.tasks import get_task
    from trainables.train import train_loop

    with wandb.init(project=project, config=settings, job_type="trial") as run:
        config = run_config(run)
        task = get_task(config["task"])
        where = DataSettings(task=task.name, data_dir=data_dir, split=split)
        size = config.get("image_size") or task.image_size
        located = locate_data(task, size, where, seed=int(config.get("seed", 0)))
        located = ingest_data(located, where)
        task = located.task
        keeper = BestKeeper(run, task.metric, task.mode)
        train_loop(config, keeper, load_arrays(located), task=task)
        if keeper.best is not None:
            run.summary[task.metric] = keeper.best
            run.summary["best_epoch"] = keeper.best_epoch
        print(
            f"{task.metric} best {keeper.best} at epoch {keeper.best_epoch}; "
            f"checkpoint {keeper.checkpoint_dir}"
        )
    return 0
