"""Every user mistake refused before Ray starts (or, for resources, right after it connects).

    from search.driver.checks import UserError, check_flags, user_errors
    check_flags(settings)             # flag values, --name, --storage, --data-dir: no import
    with user_errors():               # ValueError / FileNotFoundError of the space and data
        inputs = read_inputs(settings)    # files -> UserError

The checks of what the flags name (the space's values, the data, the cluster) are
`search.driver.input_checks`'.

A `UserError` is what `search.driver.pipeline.main` prints as one line, `error: <what is
wrong>; <what to do>`, with exit code 2 and no traceback (`--debug` shows it). Anything else
is an internal error and keeps its traceback. This module imports nothing heavy at the top:
`check_flags` must answer in well under a second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

from search.driver.settings import Settings

STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")
SEED_MAX = 2**32 - 1  # numpy's RandomState range
TABLE_TASKS = ("table", "chexpert", "chestxray14")  # images listed in a label table
FOLDER_TASKS = ("folder", "malaria", "segfolder", *TABLE_TASKS)  # --data-dir: the dataset
TABLE_FLAGS = {
    "labels": "--labels",
    "path_column": "--path-column",
    "label_columns": "--label-columns",
    "uncertain": "--uncertain",
    "blank": "--blank",
    "patient_column": "--patient-column",
    "patient_regex": "--patient-regex",
    "split_column": "--split-column",
    "split_lists": "--split-lists",
    "where": "--where",
}
"""The table source's flags (`search.data.table`): refused with any other task."""


class UserError(Exception):
    """A mistake in the command, its files or its request: one line, exit code 2."""

    def __str__(self) -> str:
        return " ".join(super().__str__().split())  # one line, whatever the message held


@contextlib.contextmanager
def user_errors(hint: str = "fix the file or flag it names") -> Iterator[None]:
    """Turn the validation errors of the space and data readers into `UserError`s (they name
    the file and the problem; `hint`, what to do, is added where the message has none); a
    SystemExit with a message counts as one too."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        raise UserError(_with_hint(str(err), hint)) from err
    except RuntimeError as err:  # a MedMNIST file that is missing and cannot be downloaded
        raise UserError(_with_hint(str(err), hint)) from err
    except SystemExit as err:
        if isinstance(err.code, str):
            raise UserError(_with_hint(err.code, hint)) from err
        raise


def _with_hint(message: str, hint: str) -> str:
    return message if "; " in message else f"{message.rstrip('. ')}; {hint}"


# --- flags ------------------------------------------------------------------------------------

_AT_LEAST = (  # (group, attribute, flag, lowest value, what it means)
    ("search", "trials", "--trials", 1, "the number of trials"),
    ("search", "epochs", "--epochs", 1, "epochs per trial"),
    ("search", "batch_size", "--batch-size", 1, "images per batch"),
    (
        "resources",
        "max_concurrent",
        "--max-concurrent",
        1,
        "trials at once; leave it out for what fits",
    ),
    ("resources", "workers_per_trial", "--workers-per-trial", 1, "Ray Train workers per trial"),
    (
        "resources",
        "gpus_per_trial",
        "--gpus-per-trial",
        0,
        "GPUs per trial, 0 for CPU, 0.25 for a quarter",
    ),
    (
        "resources",
        "max_failures",
        "--max-failures",
        0,
        "retries of a failed trial; a trial that always fails would retry forever with -1",
    ),
    ("after", "test_top", "--test-top", 0, "best trials evaluated on test, 0 for none"),
    ("attribution", "explain_top", "--explain-top", 0, "trials explained, 0 for none"),
    ("after", "repeat_best", "--repeat-best", 0, "seeds the best configuration is retrained with"),
    ("attribution", "ig_samples", "--ig-samples", 1, "SmoothGrad samples"),
    ("attribution", "ig_steps", "--ig-steps", 1, "integration steps"),
    ("data", "image_size", "--image-size", 8, "pixels a side"),
)
_ABOVE_ZERO = (
    ("search", "time_budget", "--time-budget", "seconds"),
    ("resources", "cpus_per_worker", "--cpus-per-worker", "CPUs per worker"),
    ("data", "resident_budget_mb", "--resident-budget-mb", "MB"),
)


def check_flags(settings: Settings) -> None:
    """Refuse flag values that can never run, before anything is imported or started
    (`search.driver.options.parse_args` calls it where it builds the settings)."""
    _check_ranges(settings)
    seed, folds = settings.search.seed, settings.data.folds
    if not 0 <= seed <= SEED_MAX:
        raise UserError(f"--seed {seed}: numpy seeds lie in [0, {SEED_MAX}]; pass one there")
    if folds == 1 or folds < 0:
        raise UserError(
            f"--folds {folds}: K-fold needs K >= 2; pass --folds 0 (the "
            "given split) or --folds K with K >= 2"
        )
    _check_smoke(settings)
    _check_resume_flags(settings)
    _check_name(settings.outputs.name)
    _check_task_data(settings)
    check_storage_uri(settings.outputs.storage)
    _check_disk_flags(settings)
    _check_operating_point(settings.after.operating_point)
    _check_ig_baseline(settings.attribution.ig_baseline)
    _check_cache_dir(settings.data.cache_dir)
    _check_split(settings)
    _check_tpe(settings)
    probe_address(settings.resources.address)


def _check_tpe(settings: Settings) -> None:
    from search.driver.tpe import tpe_mistake

    search = settings.search
    why = tpe_mistake(search.tpe, search.searcher, search.trials)
    if why is not None:
        raise UserError(why)


def _check_ranges(settings: Settings) -> None:
    for group, attr, flag, low, what in _AT_LEAST:
        value = getattr(getattr(settings, group), attr)
        if value is not None and value < low:
            raise UserError(
                f"{flag} {value:g} must be >= {low} ({what}); pass {flag} {low} or more"
            )
    for group, attr, flag, what in _ABOVE_ZERO:
        value = _number(getattr(getattr(settings, group), attr), flag)
        if value is not None and not value > 0:
            raise UserError(f"{flag} {value:g} must be above 0 ({what}); pass a positive number")


def _number(value, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} {value!r} is not a number; pass a number") from None


def given(settings: Settings, flag: str) -> bool:
    """Whether `flag` appears on the command line as typed (not just its default)."""
    return flag in settings.given


def _check_smoke(settings: Settings) -> None:
    if not settings.search.smoke_test:
        return
    clash = [f for f in ("--trials", "--epochs") if given(settings, f)]
    if clash:
        raise UserError(
            f"--smoke-test runs 2 trials of 1 epoch and a few batches, so it cannot "
            f"take {' and '.join(clash)}; drop {' and '.join(clash)} or drop "
            "--smoke-test"
        )


RESUME_FLAGS = (
    "--resume",
    "--address",
    "--debug",
    "--name",
    "--storage",
    "--wandb",
    "--wandb-project",
    "--max-disk",
    "--keep-checkpoints",
    "--verbose",
)
"""What a `--resume` command line may hold (where the search runs, where it is, how it is
logged, what it may keep on disk): the rest is the original command's (search.json)."""


def _check_disk_flags(settings: Settings) -> None:
    from search.experiment.quota import parse_keep, parse_size

    outputs = settings.outputs
    try:
        parse_keep(outputs.keep_checkpoints)
    except ValueError as err:
        raise UserError(f"--keep-checkpoints {err}") from None
    if outputs.max_disk is None:
        return
    try:
        parse_size(outputs.max_disk)
    except ValueError as err:
        raise UserError(f"--max-disk {err}") from None
    if "://" in (outputs.storage or ""):
        raise UserError(
            f"--max-disk holds a local experiment folder, not {outputs.storage}; set the "
            "bucket's own lifecycle rules, or drop --max-disk"
        )


def _check_resume_flags(settings: Settings) -> None:
    if not settings.resume:
        return
    fixed = sorted(f for f in settings.given if f not in RESUME_FLAGS)
    if fixed:
        raise UserError(
            f"--resume continues a search with its own settings, so {', '.join(fixed)} "
            "cannot change; drop them (only --address, --wandb, --max-disk and "
            "--keep-checkpoints may), or start a new "
            "search with another --name"
        )


NAME_MAX = 100
"""Longest `--name`: trial folders and checkpoint files add their own names below it, and most
file systems stop at 255 bytes a name."""


def _check_name(name: str | None) -> None:
    if name is None:
        return
    if len(name.encode()) > NAME_MAX:
        raise UserError(
            f"--name is {len(name.encode())} bytes long; pass a name of at most {NAME_MAX}"
        )
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\\" in name:
        raise UserError(
            f"--name {name!r}: an experiment name is one folder name (no '/', not "
            "'.' or '..'); pass e.g. --name pneumonia-cnn, and --storage for "
            "where it goes"
        )


def _check_task_data(settings: Settings) -> None:
    data = settings.data
    if data.task in FOLDER_TASKS and not data.data_dir and not settings.resume:
        raise UserError(
            f"--task {data.task} reads a dataset folder and needs --data-dir; pass "
            "--data-dir DIR (for malaria, the NIH cell_images/ folder or the folder "
            "it was unpacked into)"
        )
    _check_table_flags(settings)
    if data.space and not os.path.isfile(os.path.expanduser(data.space)):
        raise UserError(
            f"--space {data.space}: no such file; pass a space file (W&B sweep YAML, "
            "e.g. spaces/pneumonia-cnn.yaml), or leave it out for spaces/<task>.yaml"
        )
    if data.data_dir and "://" not in data.data_dir:
        path = os.path.expanduser(data.data_dir)
        if not os.path.isdir(path):
            what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
            raise UserError(
                f"--data-dir {data.data_dir} {what}; pass the folder that holds the "
                "data (e.g. --data-dir data), or leave it out for ~/.medmnist"
            )


def _check_ig_baseline(text: str) -> None:
    if text in ("zero", "mean"):
        return
    try:
        float(text)
    except ValueError:
        raise UserError(
            f"--ig-baseline {text!r} is not zero, mean or a number; pass one of those"
        ) from None


def _check_cache_dir(path: str | None) -> None:
    if path and "://" not in path and os.path.isfile(os.path.expanduser(path)):
        raise UserError(f"--cache-dir {path} is a file; pass a folder (it is created)")
    node_cache = os.environ.get("MEDSWEEP_NODE_CACHE")
    if node_cache and os.path.isfile(os.path.expanduser(node_cache)):
        raise UserError(
            f"$MEDSWEEP_NODE_CACHE {node_cache} is a file; point it at a folder on a local "
            "disk (it is created), or unset it"
        )


SPLIT_TASKS = ("folder", "malaria", *TABLE_TASKS)
"""The tasks whose split `--split` chooses (MedMNIST ships its own; segfolder splits by seed)."""


def _check_split(settings: Settings) -> None:
    task = settings.data.task
    if task and not settings.resume and given(settings, "--split") and task not in SPLIT_TASKS:
        raise UserError(
            f"--split chooses how a dataset folder or table is split; --task {task} has its "
            f"own split: drop --split (it applies to {', '.join(SPLIT_TASKS)})"
        )


PROBE_TIMEOUT_S = 5.0


def probe_address(address: str | None) -> None:
    """A `host:port` (or `ray://host:port`) that answers nothing within a few seconds is
    refused now, rather than retried by Ray every 40 s without end."""
    if not address or address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(
            f"--address {address}: nothing answers there ({err.strerror or err}); start the "
            "head (ray start --head) or pass its address as `ray status` prints it"
        ) from None


def _check_table_flags(settings: Settings) -> None:
    data = settings.data
    if not data.task or settings.resume:
        return
    given_flags = [flag for attr, flag in TABLE_FLAGS.items() if getattr(data, attr) is not None]
    if data.task not in TABLE_TASKS and given_flags:
        raise UserError(
            f"{', '.join(given_flags)} describe a label table, which --task {data.task} does "
            f"not read; drop them, or pass --task table (or {', '.join(TABLE_TASKS[1:])})"
        )
    if data.task == "table" and not data.labels:
        raise UserError(
            "--task table reads images listed in a label table; pass --labels FILE (CSV, "
            "TSV or Parquet, relative to --data-dir)"
        )


def check_storage_uri(storage: str | None) -> None:
    """An unknown URI scheme, or a local folder this user cannot create or write."""
    if storage is None:
        storage = "runs"
    if not storage.strip():
        raise UserError("--storage is empty; pass a folder (e.g. runs) or an s3:// URI")
    if "://" in storage:
        scheme = storage.split("://", 1)[0].lower()
        if scheme not in STORAGE_SCHEMES:
            raise UserError(
                f"--storage {storage}: {scheme}:// is not a storage Ray can use; "
                f"use a local folder or one of "
                f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}"
            )
        return
    path = os.path.abspath(os.path.expanduser(storage))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"--storage {storage}: {existing} is a file, not a folder; pass a folder")
    try:  # os.access says yes for root on /proc; only creating something tells
        shutil.rmtree(tempfile.mkdtemp(prefix=".medsweep-write-test-", dir=existing))
    except OSError as err:
        raise UserError(
            f"--storage {storage}: cannot write in {existing} ({err.strerror}); "
            "pass a folder you can write to, or an s3:// or gs:// URI"
        ) from None


def _check_operating_point(text: str | None) -> None:
    if text is None or text == "youden":  # the default: no need to import the parser
        return
    from trainables.operating_point import parse_operating_point

    try:
        parse_operating_point(text)
    except ValueError as err:
        raise UserError(f"--operating-point {text}: {err}; pass one of those") from None
