"""`--resume`: find an interrupted search and replay its command line from search.json.

    path, args = resumed_args(args)     # args: the new command line (--resume [EXPERIMENT])

The experiment folder is `--resume EXPERIMENT`, or `<--storage>/<--name>` with a bare
`--resume`; the original arguments come from its manifest (`search.experiment.manifest`), and
only `--address` may change on the way.
"""

from __future__ import annotations

import argparse
import logging
import os

from search.driver.options import parse_args
from search.experiment.manifest import Manifest
from search.experiment.storage import absolute, join_path

log = logging.getLogger("medsweep")


def resumed_args(args: argparse.Namespace) -> tuple[str, argparse.Namespace]:
    """The experiment folder and the original command's arguments, from its search.json."""
    from ray import tune

    if isinstance(args.resume, str):
        path = args.resume
    elif args.name:
        path = join_path(args.storage or "runs", args.name)
    else:
        raise SystemExit("--resume needs the experiment folder (runs/<name>) or --name")
    path = absolute(path)
    if not tune.Tuner.can_restore(path):
        raise SystemExit(f"--resume {path}: no Ray Tune experiment state there; is it the "
                         "folder of a search (runs/<name>)?")  # fmt: skip
    original = Manifest.read(path).argv
    restored = parse_args(original)
    restored.name = os.path.basename(path.rstrip("/"))
    restored.storage = path.rstrip("/").rsplit("/", 1)[0]
    if args.address:
        restored.address = args.address
    log.info("resuming %s (%s)", path, " ".join(original))
    return path, restored
