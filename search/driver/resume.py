"""`--resume`: find an interrupted search and replay its command line from search.json.

    path, settings, previous = resumed_args(settings)   # settings: the new command line's
    previous.finished                           # a finished search: nothing left to do

The experiment folder is `--resume EXPERIMENT`, or `<--storage>/<--name>` with a bare
`--resume`; the original arguments come from its manifest (`search.experiment.manifest`), and
only `--address` may change on the way.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from search.driver.checks import UserError, check_flags
from search.driver.options import parse_args
from search.driver.settings import Settings, updated
from search.experiment.manifest import Manifest
from search.experiment.storage import absolute, is_uri, join_path

log = logging.getLogger("medsweep")


def resumed_args(settings: Settings) -> tuple[str, Settings, Manifest]:
    """The experiment folder, the original command's settings (its argv re-parsed, in this
    folder, on `--address` if given now), and its search.json."""
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
    previous = Manifest.read_optional(path)
    if previous is None:
        raise UserError(
            f"--resume {path}: no search.json there; pass the folder of a search "
            "(runs/<name>, printed when it started)"
        )
    if previous.finished:
        return path, settings, previous
    if not has_tune_state(path):
        raise UserError(
            f"--resume {path}: the search stopped before Ray Tune saved any state; "
            f"nothing to resume: run it again ({' '.join(previous.argv)})"
        )
    restored = parse_args(previous.argv)
    address = settings.resources.address or restored.resources.address
    restored = updated(
        restored,
        outputs={"name": os.path.basename(path), "storage": path.rsplit("/", 1)[0]},
        resources={"address": address},
    )
    restored = dataclasses.replace(restored, debug=restored.debug or settings.debug)
    check_flags(restored)
    log.info("resuming %s (%s)", path, " ".join(previous.argv))
    return path, restored, previous


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
