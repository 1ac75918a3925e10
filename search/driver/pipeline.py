"""One search, start to finish: checks -> inputs -> Ray -> fit -> collect -> after -> report.

    from search.driver.pipeline import main
    sys.exit(main(["--task", "blood", "--trials", "8"]))   # what search/run.py does

`main` turns the command line into typed settings (`search.driver.options.parse_args`, which
checks them: `search.driver.checks`) before anything heavy is imported, then runs the steps of
`search.driver.steps` in order, each once. Exit codes:
- 0: the search finished (or `--resume` of a finished one: nothing is redone); 1: every trial
  failed;
- 2: a mistake in the command, a file or the request, refused in one line `error: ...; ...`
  before Ray starts (resources: right after it connects); `--debug` shows the traceback. So is
  an experiment folder in use by another search (its lock, held from before Ray starts to the
  exit: `search.driver.resume.claim`), or, without `--resume`, one that holds a search;
- 130 (SIGINT, Ctrl-C) / 143 (SIGTERM): interrupted; the trials stop, the search state is
  saved, search.json says `interrupted`, the `--resume` line is printed, and nothing runs on a
  partial search (no test split, attribution or report): the test split is read once per
  experiment, at its real end.
Any other error is internal: its traceback is kept and the Ray session's logs are named.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from search.driver.checks import UserError
from search.driver.options import parse_args
from search.driver.resume import (
    claim,
    new_experiment,
    read_manifest,
    resume_command,
    resume_folder,
    resumed_args,
)
from search.driver.session import Interrupts, close_ray, interrupted_code, session_dir
from search.driver.settings import Settings
from search.experiment.manifest import FINISHED, INTERRUPTED, RUNNING, Manifest

if TYPE_CHECKING:  # both import Ray and torch, which wait until the flags are good
    from search.driver.plan import Plan
    from search.driver.steps import Inputs

log = logging.getLogger("medsweep")


@dataclass
class Run:
    """What one invocation has got to (for the interrupt and error paths)."""

    settings: Settings
    """The command line's settings (under `--resume`: the resumed search's)."""
    resume_path: str | None = None
    previous: Manifest | None = None
    """search.json of the search being resumed."""
    plan: Plan | None = None
    inputs: Inputs | None = None
    started: float = field(default_factory=time.time)
    claims: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    """The experiment folder's lock (`search.driver.resume.claim`), held to the exit."""

    @property
    def first_started(self) -> float:
        return self.previous.started_at if self.previous else self.started

    def searched_s(self) -> float:
        """Seconds searched, over every part of a resumed search."""
        earlier = (self.previous.wall_time_s or 0.0) if self.previous else 0.0
        return earlier + time.time() - self.started


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """Run one search from a command line (search/run.py's); the exit code (see above)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    run: Run | None = None
    keep_logs = False
    try:
        run = Run(parse_args(argv, description))
        with Interrupts() as stop, run.claims:
            try:
                return search(run, stop)
            except KeyboardInterrupt:
                return interrupted(run, stop.signal)
    except UserError as err:
        if run.settings.debug if run else "--debug" in argv:
            raise
        sys.stderr.write(f"error: {err}\n")
        return 2
    except Exception:
        keep_logs = True
        logs = session_dir()
        log.error(
            "internal error (not a mistake in the command): the traceback follows%s",
            f"; Ray's logs: {os.path.join(logs, 'logs')}" if logs else "",
        )
        raise
    finally:
        close_ray(remove_session=not keep_logs)


def search(run: Run, stop: Interrupts) -> int:
    """The steps, in order (search.driver.steps); returns the exit code."""
    finished = begin(run)
    if finished is not None:
        return finished
    from search.driver import progress, records, steps  # Ray, torch: once the flags are good
    from search.driver.relocate import use_experiment

    settings = run.settings
    inputs = run.inputs = steps.read_inputs(settings)
    plan, dashboard = steps.start_ray(settings, inputs.task, inputs.space)
    stop.reinstall()  # connecting to Ray replaced the SIGTERM handler (see Interrupts)
    run.claims.enter_context(use_experiment(plan.experiment_path))
    run.plan = plan = steps.ingest(settings, plan, inputs)
    progress.log_start(plan, dashboard)
    steps.place_data(settings, plan, inputs)
    progress.warn_if_slow(plan, inputs, inputs.space.path)
    run.started = time.time()
    wandb_mode = _wandb_mode(settings)
    start = records.manifest(settings, plan, inputs, run.first_started, _earlier(run), RUNNING)
    with stop.fitting():
        grid = steps.fit(settings, plan, inputs, wandb_mode, run.resume_path, start)
    if stop.signal is not None:
        return interrupted(run, stop.signal)
    return finish(run, grid, wandb_mode)


def begin(run: Run) -> int | None:
    """Claim the experiment folder (`search.driver.resume.claim`: refused when in use, or,
    for a new search, when it holds one); under `--resume`, take the resumed search's
    settings. The exit code when nothing is left to do (a finished search), else None."""
    if not run.settings.resume:
        path, run.settings = new_experiment(run.settings)
        run.claims.enter_context(claim(path, resuming=False))
        return None
    path = resume_folder(run.settings)
    previous = read_manifest(path)
    if previous.finished:  # nothing to do, nothing written: no lock either
        return already_finished(path, previous)
    run.claims.enter_context(claim(path, resuming=True))
    resumed = resumed_args(run.settings)
    run.settings = resumed.settings
    if resumed.previous.finished:  # it finished between the two reads
        return already_finished(path, resumed.previous)
    if resumed.restore:  # else it stopped before Tune saved anything: it starts again
        run.resume_path, run.previous = path, resumed.previous
    return None


def finish(run: Run, grid, wandb_mode: str) -> int:
    """After a search that ran to its end: tables, attribution, test split, report, W&B."""
    from search.driver import records, steps
    from search.tracking.runs import log_media

    settings, plan, inputs = run.settings, run.plan, run.inputs
    trials = steps.collect_results(grid, plan, inputs)
    wall = run.searched_s()
    steps.after_search(settings, plan, inputs, trials)
    if settings.after.repeat_best:
        from search.driver.repeat import repeat_best

        repeat_best(settings.after, plan, inputs, trials)
    records.manifest(settings, plan, inputs, run.first_started, wall, FINISHED).write(
        plan.experiment_path
    )
    report = steps.write_report(plan.experiment_path)
    log_media(wandb_mode, settings.wandb.project, plan.name, plan.experiment_path, trials)
    code = steps.summarise(trials, plan, wall)
    if report:
        log.info("  report: %s", report)
    return code


def interrupted(run: Run, sig: int | None) -> int:
    """Mark the search interrupted, say how to continue it; 130 (SIGINT) or 143 (SIGTERM)."""
    from search.driver import records

    plan, code = run.plan, interrupted_code(sig)
    if plan is None or run.inputs is None:
        log.warning("interrupted before the search started: nothing to resume")
        return code
    path = plan.experiment_path
    if Manifest.read_optional(path) is None:  # the search had not started: nothing written
        log.warning("interrupted before the search started: nothing to resume; start it again")
        return code
    records.manifest(
        run.settings, plan, run.inputs, run.first_started, run.searched_s(), INTERRUPTED
    ).write(path)
    log.warning(
        "\ninterrupted: the search state is saved in %s (no test evaluation, "
        "attribution or report of a partial search). Continue it with:\n  %s",
        path,
        resume_command(path),
    )
    return code


def already_finished(path: str, previous: Manifest) -> int:
    log.info(
        "%s: this search finished already (%d trials); nothing to resume. Its report: %s",
        path,
        previous.trials,
        os.path.join(path, "report.html"),
    )
    return 0


def _earlier(run: Run) -> float | None:
    return run.previous.wall_time_s if run.previous else None


def _wandb_mode(settings: Settings) -> str:
    """`--wandb`; unset: off under `--smoke-test`, else online when logged in (offline not)."""
    if settings.search.smoke_test and settings.wandb.mode is None:
        return "off"
    from search.tracking.runs import resolve_mode

    return resolve_mode(settings.wandb.mode)
