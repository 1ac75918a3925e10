"""`--resume` and the experiment folder's protection: find an interrupted search, replay its
command line from search.json, and hold the folder while a search runs in it.

    path = new_experiment(settings)              # <storage>/<--name or task-timestamp>
    with claim(path, resuming=False):            # refuses a folder in use or holding a search
        ...                                      # the whole search, after-search work included
    resumed = resumed_args(settings)             # settings: the new command line's
    resumed.previous.finished                    # a finished search: nothing left to do
    resumed.restore                              # False: stopped before Tune saved any state

The experiment folder is `--resume EXPERIMENT`, or `<--storage>/<--name>` with a bare
`--resume`; the original arguments come from its manifest (`search.experiment.manifest`), and
only `--address` and `--wandb` may change on the way (other flags are refused). A running
search holds a lock on `<experiment>/.lock`
(`filelock`; its pid and host written in it) from before Ray starts to its exit: a second
search in the same folder, new or `--resume`, is refused in one line. A new search refuses a
folder that holds a search already (`--resume` it, or pass another `--name`). Storage on a URI
cannot be locked: there only the search.json check applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import NamedTuple

from search.driver.checks import UserError, check_flags
from search.driver.options import parse_args
from search.driver.settings import Settings, updated
from search.experiment.layout import LOCK_FILE, MANIFEST_FILE
from search.experiment.manifest import Manifest
from search.experiment.storage import absolute, is_uri, join_path, read_bytes

log = logging.getLogger("medsweep")


class Resumed(NamedTuple):
    """What `--resume` continues."""

    path: str
    """The experiment folder."""
    settings: Settings
    """The original command's settings, in this folder (`--address` as given now)."""
    previous: Manifest
    """Its search.json."""
    restore: bool
    """True: Tune restores its state; False: it stopped before Tune saved any, and the search
    starts again in the same folder."""


def new_experiment(settings: Settings) -> tuple[str, Settings]:
    """The folder of a new search and its settings with the name fixed (`--name`, else
    `<task>-<date>-<time>`)."""
    outputs = settings.outputs
    name = outputs.name or f"{settings.data.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = absolute(join_path(outputs.storage or "runs", name)).rstrip("/")
    return path, updated(settings, outputs={"name": name})


def resume_folder(settings: Settings) -> str:
    """The folder `--resume` names; a `UserError` unless it holds a search.json."""
    outputs = settings.outputs
    if isinstance(settings.resume, str):
        path = settings.resume
    elif outputs.name:
        path = join_path(outputs.storage or "runs", outputs.name)
    else:
        raise UserError(
            "--resume needs the experiment folder; pass --resume runs/<name> (or "
            "--resume --name NAME)"
        )
    path = absolute(path).rstrip("/")
    if read_bytes(join_path(path, MANIFEST_FILE)) is None:
        raise UserError(
            f"--resume {path}: no search.json there; pass the folder of a search "
            "(runs/<name>, printed when it started)"
        )
    return path


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def resumed_args(settings: Settings) -> Resumed:
    """The experiment folder, the original command's settings (its argv re-parsed, in this
    folder, on `--address` if given now), its search.json and whether Tune restores it."""
    path = resume_folder(settings)
    previous = read_manifest(path)
    if previous.finished:
        return Resumed(path, settings, previous, True)
    restore = has_tune_state(path)
    restored = parse_args(previous.argv)
    address = settings.resources.address or restored.resources.address
    restored = updated(
        restored,
        outputs={"name": os.path.basename(path), "storage": path.rsplit("/", 1)[0]},
        resources={"address": address},
    )
    if {"--wandb", "--wandb-project"} & settings.given:  # logging may change, results not
        restored = dataclasses.replace(restored, wandb=settings.wandb)
    disk = {"max_disk", "keep_checkpoints", "verbose"}  # what it keeps, what it shows
    given = {f: getattr(settings.outputs, f) for f in disk if _flag(f) in settings.given}
    restored = updated(restored, outputs=given) if given else restored
    restored = dataclasses.replace(restored, debug=restored.debug or settings.debug)
    check_flags(restored)
    if restore:
        log.info("resuming %s (%s)", path, " ".join(previous.argv))
    else:
        log.info(
            "%s stopped before Ray Tune saved any state: starting it again there (%s)",
            path,
            " ".join(previous.argv),
        )
    return Resumed(path, restored, previous, restore)


def read_manifest(path: str) -> Manifest:
    """search.json of `path`; a `UserError` when it cannot be read."""
    try:
        return Manifest.read(path)
    except (ValueError, TypeError) as err:
        raise UserError(
            f"{join_path(path, MANIFEST_FILE)} is damaged ({err}); restore it from a copy, or "
            "start a new search with another --name"
        ) from None


def has_tune_state(path: str) -> bool:
    """Whether Ray Tune saved the state of a search there: `tuner.pkl` (written when the Tuner
    is built) and, locally, an `experiment_state-*.json` (written once its loop runs: without
    one, a restore starts an empty search)."""
    import glob

    from ray import tune

    if not tune.Tuner.can_restore(path):
        return False
    return is_uri(path) or bool(glob.glob(os.path.join(path, "experiment_state-*.json")))


def resume_command(experiment_path: str) -> str:
    """The line that continues an interrupted search."""
    return f"python search/run.py --resume {experiment_path}"


@contextlib.contextmanager
def claim(path: str, resuming: bool) -> Iterator[None]:
    """Hold `<path>/.lock` until the block ends; a `UserError` when another search holds it
    or, unless `resuming`, when the folder holds a search already. The folders this call made
    are removed again if nothing but the lock was written to them."""
    if is_uri(path):
        if not resuming:
            refuse_existing(path)
        yield
        return
    from filelock import FileLock, Timeout

    lock_path = os.path.join(path, LOCK_FILE)
    if not resuming and not os.path.exists(lock_path):
        refuse_existing(path)  # no search ever ran there: refused without writing anything
    made = missing_folders(path)
    os.makedirs(path, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"{path} is in use by a running search ({holder(lock_path)}); wait for it or "
            "pass another --name"
        ) from None
    try:
        if not resuming:  # under the lock: a search that started meanwhile is seen
            refuse_existing(path)
        with open(lock_path, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
        yield
    finally:
        lock.release()
        if made and os.listdir(path) == [LOCK_FILE]:
            with contextlib.suppress(OSError):
                os.remove(lock_path)
                for folder in made:  # deepest first; stops at one something else was put in
                    os.rmdir(folder)


def missing_folders(path: str) -> list[str]:
    """The folders on the way to `path` (itself included) that do not exist, deepest first."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def refuse_existing(path: str) -> None:
    """A `UserError` when `path` holds a search (its search.json) or other files."""
    if read_bytes(join_path(path, MANIFEST_FILE)) is not None:
        try:
            status = Manifest.read(path).status
        except (ValueError, TypeError):
            status = "search.json unreadable"
        raise UserError(
            f"{path} already holds an experiment ({status}); pass --resume to continue it, "
            "or another --name"
        )
    if is_uri(path) or not os.path.isdir(path):
        return
    files = sorted(set(os.listdir(path)) - {LOCK_FILE})
    if files:
        shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
        raise UserError(
            f"{path} already holds files ({shown}) but no search; pass another --name or --storage"
        )


def holder(lock_path: str) -> str:
    """`pid N on host H` of the search holding `lock_path`, as it wrote them."""
    try:
        with open(lock_path) as f:
            who = json.load(f)
        return f"pid {who['pid']} on host {who['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid and host not recorded"
