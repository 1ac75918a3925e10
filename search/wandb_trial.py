"""One trial for `wandb agent`: the `program:` of every `spaces/<task>.yaml`.

    wandb sweep spaces/pneumonia.yaml                 # prints the sweep id
    MEDSWEEP_DATA_DIR=data wandb agent ENTITY/PROJECT/SWEEP_ID

or by hand, as the agent calls it (its default command is `${env} ${interpreter} ${program}
${args}`, each parameter as `--name=value`):

    WANDB_MODE=offline python search/wandb_trial.py --task=pneumonia --model=simple_cnn \\
        --weights=none --epochs=3 --lr=0.002 --data-dir data

The config W&B hands the run (the agent's, laid over the command line's) must name the `task`;
every space file fixes it (`task: {value: ...}`). The data come from `--data-dir`, else
`$MEDSWEEP_DATA_DIR`, else medmnist's folder; folder tasks (malaria, folder) read a folder per
class there and convert it once, exactly as `search/run.py` does. The trial runs
`trainables.train.train_loop` in this process (no Ray), logs every epoch's metrics at step =
epoch, keeps the best checkpoint in `<run dir>/checkpoint/` (W&B uploads the run folder when
the run ends, online) and leaves the task metric's best value, not its last, in the run
summary: W&B's Bayesian search reads the summary. The trial itself is `search.driver.agent`.
A mistake (a flag, an unknown or ill-typed setting, an unknown task) is one line,
`error: ...; ...`, exit code 2, before W&B starts.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

from search.data.folder_split import SPLIT_CHOICES
from search.driver.agent import run_trial
from search.driver.checks import UserError, user_errors
from search.driver.options import Parser

KEY_VALUE_HELP = "every other argument is --name=value: a training setting (TrainConfig)"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    """(own flags, {setting: value}) from a command line like the agent's."""
    p = Parser(
        prog="search/wandb_trial.py",
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


def check_settings(settings: dict) -> None:
    """A `UserError` for a setting `TrainConfig` rejects (unknown, ill-typed, out of range) or
    an unknown task, named before W&B starts (the agent's config is laid over these)."""
    from trainables.config import TrainConfig
    from trainables.tasks import get_task

    hint = "fix the --name=value settings (the space file's, under a sweep)"
    with user_errors(hint):
        try:
            TrainConfig.from_dict(settings)
        except TypeError as err:  # a text where a number belongs: TrainConfig compares it
            raise ValueError(f"a setting has the wrong type ({err}): {settings}") from None
        if "task" in settings:
            get_task(settings["task"])


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    try:
        check_settings(settings)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_trial(settings, args.data_dir, args.project, args.split)


if __name__ == "__main__":
    sys.exit(main())
