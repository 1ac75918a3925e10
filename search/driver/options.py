"""The command line of search/run.py, here so that `--resume` re-parses a stored one.

    args = parse_args(["--task", "blood", "--trials", "8"])
    args.argv                                   # the arguments as given, for search.json

The help text of search/run.py is its module docstring, handed in as `description`.
"""

from __future__ import annotations

import argparse
import os
import sys

from search.driver.folder_split import SPLIT_CHOICES
from search.driver.plan import LAUNCHERS, SEARCHERS
from trainables.stream import DATA_PATHS
from trainables.tasks import TASK_NAMES


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    _data_flags(p)
    _budget_flags(p)
    _cluster_flags(p)
    _after_flags(p)
    return p


def parse_args(argv: list[str] | None = None, description: str | None = None):
    """The parsed flags, plus `argv`: the arguments as given (replayed by --resume)."""
    p = build_parser(description)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.task and not args.resume:
        p.error(f"--task is required (one of: {', '.join(TASK_NAMES)}), or --resume EXPERIMENT")
    return args


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help=f"one of: {', '.join(TASK_NAMES)}")
    p.add_argument("--resume", nargs="?", const=True, metavar="EXPERIMENT",
                   help="continue an interrupted search: its folder (runs/<name>), or the "
                   "--name/--storage given with a bare --resume")  # fmt: skip
    p.add_argument("--space", help="space file (W&B sweep YAML); default spaces/<task>.yaml")
    p.add_argument("--data-dir", help="folder with the MedMNIST npz files (default ~/.medmnist)")
    p.add_argument(
        "--split",
        default="auto",
        choices=SPLIT_CHOICES,
        help="folder tasks: premade, patient (malaria ids), cell, or auto",
    )
    p.add_argument("--folds", type=int, default=0,
                   help="k-fold cross-validation over train+val inside each trial")  # fmt: skip
    p.add_argument("--weights", help="none | imagenet | PATH (default: the space file's)")
    p.add_argument("--image-size", type=int, help="28, 64, 128 or 224 (default: the space's)")
    p.add_argument("--data-path", default="auto", choices=DATA_PATHS,
                   help="resident: train+val images copied to each trial's device once; "
                   "stream: memory-mapped from each node's local disk, batches read ahead; "
                   "auto (default): resident when they fit the budget")  # fmt: skip
    p.add_argument("--resident-budget-mb", type=float,
                   default=os.environ.get("MEDSWEEP_RESIDENT_BUDGET_MB"),
                   help="largest train+val (MB) kept resident under --data-path auto "
                   "(default: a share of the trial's device and node memory; "
                   "$MEDSWEEP_RESIDENT_BUDGET_MB)")  # fmt: skip


def _budget_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, default=20, help="number of trials (default 20)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the space's)")
    p.add_argument("--batch-size", type=int, help="batch size per worker (default: the space's)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what fits)")
    p.add_argument("--time-budget", type=float, help="stop starting trials after N seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher and training")
    p.add_argument("--name", help="experiment name (default <task>-<date>-<time>)")
    p.add_argument(
        "--storage",
        default=os.environ.get("MEDSWEEP_STORAGE"),
        help="local folder or s3://, gs:// URI (default $MEDSWEEP_STORAGE or runs)",
    )


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address ('auto' on a cluster); default: a "
                   "fresh local Ray on this machine")  # fmt: skip
    p.add_argument("--searcher", default="optuna", choices=SEARCHERS)
    p.add_argument(
        "--launcher",
        default="auto",
        choices=("auto", *LAUNCHERS),
        help="auto (default): function for one worker per trial, train for DDP; train: a Ray "
        "Train TorchTrainer per trial; function: the loop inside the Tune trial",
    )
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers (DDP)")
    p.add_argument("--gpus-per-trial", type=float, help="fractional GPUs per trial; default 1 "
                   "if a GPU is visible, else 0")  # fmt: skip
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial")
    p.add_argument("--wandb", choices=("online", "offline", "off"),
                   help="log each trial to W&B (default: online if logged in, else offline; "
                   "off with --smoke-test)")  # fmt: skip
    p.add_argument("--wandb-project", default=os.environ.get("WANDB_PROJECT", "medsweep"))
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="2 trials, 1 epoch, a few batches, CPU: checks the whole path quickly",
    )


def _after_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--explain-top",
        type=int,
        help="attribution maps for the K best trials (default all; 0 = none)",
    )
    p.add_argument("--test-top", type=int, default=1, help="evaluate the K best on test")
    p.add_argument("--operating-point", default="youden",
                   help="binary/multilabel threshold, chosen on validation: youden (default, "
                   "Youden's J), a number such as 0.5, sens=0.95 or spec=0.95")  # fmt: skip
    p.add_argument("--temperature-scaling", action="store_true",
                   help="fit a temperature on validation before choosing the threshold")
    p.add_argument("--repeat-best", type=int, default=0, metavar="N",
                   help="retrain the best configuration with N new seeds after the search "
                   "(test metrics as mean +/- sd over seeds)")  # fmt: skip
    p.add_argument("--ig-samples", type=int, default=4, help="SmoothGrad samples for IG")
    p.add_argument("--ig-steps", type=int, default=16, help="integration steps for IG")
    p.add_argument("--ig-baseline", default="zero", help="IG baseline: zero, mean or a number")


def ig_settings(args: argparse.Namespace) -> dict:
    """Integrated Gradients' keyword arguments from --ig-samples, --ig-steps, --ig-baseline."""
    return {"n_samples": args.ig_samples, "steps": args.ig_steps,
            "baseline": _number_or(args.ig_baseline)}  # fmt: skip


def _number_or(text: str):
    try:
        return float(text)
    except ValueError:
        return text
