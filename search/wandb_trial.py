"""One trial for `wandb agent`: the `program:` of every `spaces/<task>.yaml`.

    wandb sweep spaces/pneumonia.yaml                 # prints the sweep id
    MEDSWEEP_DATA_DIR=../shared/data wandb agent ENTITY/PROJECT/SWEEP_ID

or by hand, as the agent calls it (its default command is `${env} ${interpreter} ${program}
${args}`, each parameter as `--name=value`):

    WANDB_MODE=offline python search/wandb_trial.py --task=pneumonia --model=simple_cnn \\
        --weights=none --epochs=3 --lr=0.002 --data-dir ../shared/data

The config W&B hands the run (the agent's, laid over the command line's) must name the `task`;
every space file fixes it (`task: {value: ...}`). The data come from `--data-dir`, else
`$MEDSWEEP_DATA_DIR`, else medmnist's folder; folder tasks (malaria, folder) read a folder per
class there and convert it once, exactly as `search/run.py` does. The trial runs
`trainables.train.train_loop` in this process (no Ray), logs every epoch's metrics at step =
epoch, keeps the best checkpoint in `<run dir>/checkpoint/` (W&B uploads the run folder when
the run ends, online) and leaves the task metric's best value, not its last, in the run
summary: W&B's Bayesian search reads the summary.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import shutil
import sys

from search.driver.folders import SPLIT_CHOICES

KEY_VALUE_HELP = "every other argument is --name=value: a training setting (TrainConfig)"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    """(own flags, {setting: value}) from a command line like the agent's."""
    p = argparse.ArgumentParser(
        description=__doc__,
        epilog=KEY_VALUE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data-dir",
        default=os.environ.get("MEDSWEEP_DATA_DIR"),
        help="folder with the npz files (default $MEDSWEEP_DATA_DIR, else medmnist's)",
    )
    p.add_argument(
        "--project",
        default=os.environ.get("WANDB_PROJECT", "medsweep"),
        help="W&B project outside a sweep (default $WANDB_PROJECT or medsweep)",
    )
    p.add_argument(
        "--split",
        default="auto",
        choices=SPLIT_CHOICES,
        help="folder tasks (malaria, folder): how to split, as run.py's --split",
    )
    args, rest = p.parse_known_args(argv)
    settings = {}
    for arg in rest:
        name, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not eq or not name:
            p.error(f"unexpected argument {arg!r}; {KEY_VALUE_HELP}, e.g. --lr=0.001")
        settings[name.replace("-", "_")] = parse_value(value)
    return args, settings


def parse_value(text: str):
    """A Python literal as the agent prints it (`0.001`, `1e-05`, `3`, `True`), else the text.

    (Not YAML: YAML 1.1 reads `1e-05` as a string, and `none`, a valid `weights`, as null.)
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


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
    """The `report` handed to `train_loop`: logs each epoch, keeps the best checkpoint."""

    def __init__(self, run, metric: str, mode: str):
        self.run, self.metric, self.mode = run, metric, mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.checkpoint_dir = os.path.join(run.dir, "checkpoint")

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.run.log(metrics, step=int(metrics["epoch"]))
        score = metrics.get(self.metric)
        if checkpoint_dir is not None:  # train_loop saves one exactly when the metric improved
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            shutil.copytree(checkpoint_dir, self.checkpoint_dir)
        if isinstance(score, int | float) and math.isfinite(score) and self._better(score):
            self.best, self.best_epoch = float(score), int(metrics["epoch"])

    def _better(self, score: float) -> bool:
        if self.best is None:
            return True
        return score > self.best if self.mode == "max" else score < self.best


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    import wandb

    from search.run import locate_data
    from trainables.data import load_npz
    from trainables.tasks import get_task
    from trainables.train import train_loop

    with wandb.init(project=args.project, config=settings, job_type="trial") as run:
        config = run_config(run)
        task = get_task(config["task"])
        where = argparse.Namespace(data_dir=args.data_dir, split=args.split,
                                   seed=int(config.get("seed", 0)))  # fmt: skip
        task, path = locate_data(task, config.get("image_size") or task.image_size, where)
        data = load_npz(path, task, splits=("train", "val"))
        keeper = BestKeeper(run, task.metric, task.mode)
        train_loop(config, keeper, data, task=task)
        if keeper.best is not None:
            run.summary[task.metric] = keeper.best
            run.summary["best_epoch"] = keeper.best_epoch
        print(
            f"{task.metric} best {keeper.best} at epoch {keeper.best_epoch}; "
            f"checkpoint {keeper.checkpoint_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
