"""The command line of search/run.py as typed settings, here so that `--resume` re-parses a
stored one. The only module below the commands that knows argparse.

    settings = parse_args(["--task", "blood", "--trials", "8"])   # search.driver.settings
    settings.argv                               # the arguments as given, for search.json

The help text of search/run.py is its module docstring, handed in as `description`. This module
imports nothing heavy (no torch, Ray or medmnist), so `--help` and a mistyped flag answer at
once; the choices below are therefore literals, and tests/test_pipeline.py checks that they
match the registries they mirror. A bad flag is one line, `error: ...; ...`, exit code 2; a
flag value that can never run (`--trials 0`, a missing `--data-dir`) is a
`search.driver.checks.UserError`, raised here where the settings are built.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from search.data.settings import BLANK_POLICIES, UNCERTAIN_POLICIES
from search.driver.checks import check_flags
from search.driver.settings import Settings, flags_given

# Mirrors of trainables.tasks.TASK_NAMES, search.data.folder_split.SPLIT_CHOICES,
# search.driver.plan.LAUNCHERS / SEARCHERS and trainables.stream.DATA_PATHS (checked by a test).
TASK_NAMES = (
    "blood",
    "chest",
    "chestxray14",
    "chexpert",
    "derma",
    "folder",
    "malaria",
    "pathology",
    "pneumonia",
    "segfolder",
    "table",
)
SPLIT_CHOICES = ("auto", "premade", "patient", "cell")
LAUNCHERS = ("train", "function")
SEARCHERS = ("optuna", "random", "wandb-bayes", "ray-optuna")
EARLY_STOPPING = ("asha", "none")
DATA_PATHS = ("auto", "resident", "stream")


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr (`error: ...; ...`) and exit code 2."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message}; see python {self.prog} --help\n")
        sys.exit(2)


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The docstring as written, and each flag's default after its help."""


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = Parser(prog="search/run.py", description=description, formatter_class=_Help)
    _data_flags(p.add_argument_group("task and data"))
    _search_flags(p.add_argument_group("search"))
    _resource_flags(p.add_argument_group("resources"))
    _after_flags(p.add_argument_group("outputs and after the search"))
    _explain_flags(p.add_argument_group("explain (attribution maps)"))
    _wandb_flags(p.add_argument_group("W&B"))
    p.add_argument(
        "--debug", action="store_true", help="show the traceback of a refused command too"
    )
    p.set_defaults(**flag_defaults(Settings()))  # the settings' defaults are the flags'
    return p


def parse_args(argv: list[str] | None = None, description: str | None = None) -> Settings:
    """The settings of a command line, checked (`check_flags`: a `UserError` names the flag);
    `argv` defaults to this process's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser(description)
    args = p.parse_args(argv)
    if not args.task and not args.resume:
        p.error(f"--task is required (one of: {', '.join(TASK_NAMES)}), or --resume EXPERIMENT")
    settings = settings_from(args, argv)
    check_flags(settings)
    return settings


GROUPS = ("data", "search", "resources", "outputs", "after", "attribution", "wandb")
"""The groups of `Settings` that hold flags."""
DESTS = {("wandb", "mode"): "wandb", ("wandb", "project"): "wandb_project"}
"""(group, field) -> the flag's argparse name where they differ (`--wandb`, `--wandb-project`)."""


def _dest(group: str, name: str) -> str:
    return DESTS.get((group, name), name)


def flag_defaults(settings: Settings) -> dict:
    """{argparse name: value} of every flag in `settings` (the defaults: `Settings()`)."""
    return {
        _dest(g, f.name): getattr(getattr(settings, g), f.name)
        for g in GROUPS
        for f in fields(getattr(settings, g))
    }


def settings_from(args: argparse.Namespace, argv: list[str]) -> Settings:
    """The parsed flags as `Settings` (each group's fields are the flags' names)."""
    values, blank = vars(args), Settings()

    def group(name: str):
        cls = type(getattr(blank, name))
        return cls(**{f.name: values[_dest(name, f.name)] for f in fields(cls)})

    return Settings(
        **{name: group(name) for name in GROUPS},
        resume=args.resume,
        debug=args.debug,
        argv=tuple(argv),
        given=flags_given(argv),
    )


def _data_flags(p) -> None:
    p.add_argument(
        "--task", choices=TASK_NAMES, metavar="TASK", help=f"one of: {', '.join(TASK_NAMES)}"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="EXPERIMENT",
        help="continue an interrupted search: its folder (runs/<name>), or the "
        "--name/--storage given with a bare --resume",
    )
    p.add_argument("--space", help="space file (W&B sweep YAML); None: spaces/<task>.yaml")
    p.add_argument(
        "--data-dir",
        help="folder with the MedMNIST npz files (None: ~/.medmnist); "
        "folder tasks: the dataset folder",
    )
    p.add_argument(
        "--split",
        choices=SPLIT_CHOICES,
        help="folder tasks: premade, patient (malaria ids), cell, or auto",
    )
    p.add_argument(
        "--folds",
        type=int,
        help="k-fold cross-validation over train+val inside each trial (0 = off)",
    )
    p.add_argument("--weights", help="none | imagenet | PATH (None: the space file's)")
    p.add_argument("--image-size", type=int, help="28, 64, 128 or 224 (None: the space's)")
    p.add_argument(
        "--data-path",
        choices=DATA_PATHS,
        help="resident: train+val images copied to each trial's device once; "
        "stream: memory-mapped from each node's local disk, batches read ahead; "
        "auto: resident when they fit the budget",
    )
    p.add_argument(
        "--resident-budget-mb",
        type=float,
        help="largest train+val (MB) kept resident under --data-path auto "
        "(None: a share of the trial's device and node memory; "
        "$MEDSWEEP_RESIDENT_BUDGET_MB)",
    )
    _table_flags(p)
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="go on past images that cannot be read (named in search.json) instead of "
        "refusing the data",
    )
    p.add_argument(
        "--cache-dir",
        help="where converted data is kept, keyed by its fingerprint (None: "
        "$MEDSWEEP_CACHE_DIR, else $XDG_CACHE_HOME/medsweep/data); never the data folder",
    )


def _table_flags(p) -> None:
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="table tasks: the label table (CSV, TSV or Parquet), relative to --data-dir",
    )
    p.add_argument(
        "--path-column", help="table: the image path column (None: Path, path, Image Index...)"
    )
    p.add_argument(
        "--label-columns",
        metavar="A,B,...",
        help="table: the label columns: several 0/1 columns, one class column, or one "
        "delimited column (A|B) (None: guessed)",
    )
    p.add_argument(
        "--uncertain",
        choices=UNCERTAIN_POLICIES,
        help="table: uncertain (-1) labels: ignore (masked out of loss and metrics), zeros, "
        "ones (None: the preset's, else ignore)",
    )
    p.add_argument(
        "--blank",
        choices=BLANK_POLICIES,
        help="table: blank label cells: zeros (not mentioned = negative) or ignore "
        "(None: the preset's, else zeros)",
    )
    p.add_argument("--patient-column", help="table: the patient id column")
    p.add_argument(
        "--patient-regex",
        metavar="REGEX",
        help="table: the patient id from the path (its first group), e.g. 'patient(\\d+)'",
    )
    p.add_argument(
        "--split-column", help="table: the train/val/test column (None: a column named split)"
    )
    p.add_argument(
        "--split-lists",
        metavar="TRAIN,[VAL,]TEST",
        help="table: list files of image names per split (NIH's train_val_list.txt,test_list.txt)",
    )
    p.add_argument(
        "--where",
        metavar="COLUMN=VALUE",
        help="table: keep the rows where COLUMN=VALUE (or COLUMN!=VALUE), e.g. "
        "'Frontal/Lateral=Frontal'",
    )


def _search_flags(p) -> None:
    p.add_argument("--trials", type=int, help="number of trials")
    p.add_argument("--epochs", type=int, help="epochs per trial (None: the space's)")
    p.add_argument("--batch-size", type=int, help="batch size per worker (None: the space's)")
    p.add_argument("--time-budget", type=float, help="stop starting trials after N seconds")
    p.add_argument("--seed", type=int, help="seed of the searcher and training")
    p.add_argument(
        "--searcher",
        choices=SEARCHERS,
        help="optuna (TPE told each trial's best epoch), random, wandb-bayes (W&B's Bayesian "
        "engine), or ray-optuna (Ray's stock OptunaSearch, told the last epoch)",
    )
    p.add_argument(
        "--early-stopping",
        choices=EARLY_STOPPING,
        help="asha: stop weak trials at the rungs; none: every trial runs its epochs",
    )
    p.add_argument(
        "--tpe",
        metavar="startup=N|SHARE,multivariate=yes|no,liar=yes|no",
        help="the TPE sampler's settings (--searcher optuna): start-up trials drawn at random "
        "(a count, or a share of --trials), multivariate TPE, constant liar for trials "
        "running at once; unset keys keep medsweep's measured defaults (README: Searchers)",
    )
    p.add_argument(
        "--objective",
        metavar="METRIC:max,METRIC:min",
        help="several objectives (Optuna's multi-objective search; ASHA stops on the first), "
        "e.g. val_auc:max,val_ece:min (None: the space's metric)",
    )
    p.add_argument(
        "--warm-start",
        metavar="EXPERIMENT",
        help="tell the searcher an earlier experiment's finished trials (same task and "
        "metric) before it suggests anything",
    )
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="2 trials, 1 epoch, a few batches, CPU: checks the whole path quickly "
        "(refused together with --trials or --epochs)",
    )


def _resource_flags(p) -> None:
    p.add_argument(
        "--address",
        help="Ray cluster address ('auto' on a cluster); None: a fresh local Ray on this machine",
    )
    p.add_argument(
        "--launcher",
        choices=("auto", *LAUNCHERS),
        help="auto: function for one worker per trial, train for DDP; train: a Ray "
        "Train TorchTrainer per trial; function: the loop inside the Tune trial",
    )
    p.add_argument("--max-concurrent", type=int, help="trials at once (None: what fits)")
    p.add_argument("--workers-per-trial", type=int, help="Ray Train workers (DDP)")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="fractional GPUs per trial; None: 1 if a GPU is visible, else 0",
    )
    p.add_argument("--cpus-per-worker", type=float, help="CPUs per worker")
    p.add_argument("--max-failures", type=int, help="retries of a failed trial")


def _after_flags(p) -> None:
    p.add_argument("--name", help="experiment name, one folder name (None: <task>-<date>-<time>)")
    p.add_argument(
        "--storage",
        help="local folder or s3://, gs:// URI (None: $MEDSWEEP_STORAGE, else runs)",
    )
    p.add_argument(
        "--max-disk",
        metavar="SIZE",
        help="a quota for the experiment folder, e.g. 5GB: the weights of ended, weakest "
        "trials go first; the search stops if the running trials need more",
    )
    p.add_argument(
        "--keep-checkpoints",
        metavar="all|top-K|none",
        help="after the search: the weights of every trial (all, the default), of the K "
        "best, or of none; resume state is never kept",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's tables, W&B's lines and the workers' output on the console too (they "
        "always go to <experiment>/driver.log)",
    )
    p.add_argument("--test-top", type=int, help="evaluate the K best on test")
    p.add_argument(
        "--operating-point",
        help="binary/multilabel threshold, chosen on validation: youden (Youden's "
        "J), a number such as 0.5, sens=0.95 or spec=0.95",
    )
    p.add_argument(
        "--temperature-scaling",
        action="store_true",
        help="fit a temperature on validation before choosing the threshold",
    )
    p.add_argument(
        "--repeat-best",
        type=int,
        metavar="N",
        help="retrain the best configuration with N new seeds after the search "
        "(test metrics as mean +/- sd over seeds)",
    )
    p.add_argument(
        "--select",
        metavar="FIGURE>=X",
        help="pick the best trial among those whose validation figures meet a constraint "
        "(sensitivity>=0.95, specificity>=, npv>=, ece<=, ...), at each trial's threshold",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help="average the probabilities of the K best trials (ensemble.json; 0 = none)",
    )


def _explain_flags(p) -> None:
    p.add_argument(
        "--explain-top",
        type=int,
        help="attribution maps for the K best trials (None: all; 0 = none)",
    )
    p.add_argument("--ig-samples", type=int, help="SmoothGrad samples for IG")
    p.add_argument("--ig-steps", type=int, help="integration steps for IG")
    p.add_argument("--ig-baseline", help="IG baseline: zero, mean or a number")


def _wandb_flags(p) -> None:
    p.add_argument(
        "--wandb",
        choices=("online", "offline", "off"),
        help="log each trial to W&B (None: online if logged in, else offline; "
        "off with --smoke-test)",
    )
    p.add_argument(
        "--wandb-project",
        help="W&B project ($WANDB_PROJECT)",
    )
