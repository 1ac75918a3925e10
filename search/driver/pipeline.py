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
- 130 (SIGINT, Ctrl-C) / 143 (SIGTERM), sent to the driver or to its whole process group, in
  any phase: the work stops (the trials: their state saved), search.json says `interrupted`,
  the phase it was in and the phases done (`search.experiment.manifest.PHASES`: search,
  attribution, test, repeat, report; written at each boundary), and the `--resume` line is
  printed. Nothing runs on a partial search (no test split, attribution or report before the
  trials finished). `--resume` redoes no finished phase (an interrupted one starts again): with
  the trials finished it skips Tune's restore and reads trials.parquet back, explained trials
  keep their maps, and a finished test evaluation is kept: the test split is read once per
  experiment.
Any other error is internal: its traceback is kept and the Ray session's logs are named.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from search.driver.checks import UserError
from search.driver.console import LOG_FILE, Console
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
from search.driver.slots import Idle
from search.experiment.manifest import (
    ATTRIBUTION,
    FINISHED,
    INTERRUPTED,
    PHASES,
    REPEAT,
    REPORT,
    RUNNING,
    SEARCH,
    TEST,
    Manifest,
)
from search.experiment.storage import is_uri

if TYPE_CHECKING:  # these import Ray and torch, which wait until the flags are good
    from search.driver.plan import Plan
    from search.driver.steps import Inputs
    from search.driver.tail import TailExplainer

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
    phase: str | None = SEARCH
    """The phase it is in (`search.experiment.manifest.PHASES`; None once finished)."""
    done: list[str] = field(default_factory=list)
    """The phases finished, by this run or the one it resumes."""
    wall: float | None = None
    """Seconds searched over every part, fixed once the search phase is done."""
    slot_use: float | None = None
    """How busy the trials kept their slots (`search.driver.slots.slot_use`)."""
    idle: Idle | None = None
    """Where the idle slot time went (`search.driver.slots.idle_split`; None when resumed)."""
    path: str | None = None
    """The experiment folder, once claimed."""
    tail: TailExplainer | None = None
    """Attribution started in the search's tail (`search.driver.tail`)."""
    console: Console = field(default_factory=Console)
    """Where Ray's, W&B's and the workers' output goes (`search.driver.console`)."""

    @property
    def first_started(self) -> float:
        return self.previous.started_at if self.previous else self.started

    def searched_s(self) -> float:
        """Seconds searched, over every part of a resumed search."""
        if self.wall is not None:
            return self.wall
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
        (run.console if run else Console()).error(f"error: {err}\n")
        return 2
    except Exception as err:
        if run is not None and run.plan is not None and disk_full(err):
            from search.driver.disk import disk_full_message

            path = run.plan.experiment_path
            run.console.error(f"error: {disk_full_message(path, free_bytes(path), 0)}\n")
            return 2
        keep_logs = True
        logs, driver_log = session_dir(), run.console.path if run else None
        if run is not None:
            run.console.release()  # the traceback reaches the terminal
        log.error(
            "internal error (not a mistake in the command): the traceback follows%s%s",
            f"; Ray's logs: {os.path.join(logs, 'logs')}" if logs else "",
            f"; the search's log: {driver_log}" if driver_log else "",
        )
        raise
    finally:
        close_ray(remove_session=not keep_logs)
        if run is not None:
            run.console.release()


def search(run: Run, stop: Interrupts) -> int:
    """The steps, in order (search.driver.steps); returns the exit code."""
    finished = begin(run)
    if finished is not None:
        return finished
    from search.driver import disk, progress, records, steps  # Ray, torch: flags are good
    from search.driver.relocate import use_experiment
    from search.driver.tail import tail_explainer

    settings = run.settings
    inputs = run.inputs = steps.read_inputs(settings)
    quiet(run)
    plan, dashboard = steps.start_ray(settings, inputs.task, inputs.space)
    stop.reinstall()  # connecting to Ray replaced the SIGTERM handler (see Interrupts)
    run.claims.enter_context(use_experiment(plan.experiment_path))
    run.plan = plan = steps.ingest(settings, plan, inputs)
    progress.log_start(plan, dashboard)
    steps.place_data(settings, plan, inputs)
    progress.warn_if_slow(plan, inputs, inputs.space.path)
    run.started = time.time()
    wandb_mode = _wandb_mode(settings)
    if SEARCH in run.done:  # every trial finished in an earlier run: no Tune restore
        log.info("the trials finished before (phases done: %s)", ", ".join(run.done))
        return finish(run, None, wandb_mode)
    start = records.manifest(settings, plan, inputs, run.first_started, _earlier(run), RUNNING)
    keeper = disk.disk_keeper(settings, plan, inputs.values, inputs.task)
    run.tail = tail_explainer(
        settings.attribution.explain_top,
        plan,
        inputs.task,
        steps.split_reader(inputs),
        steps.explain_settings(settings, plan),
    )
    with stop.fitting():
        grid = steps.fit(
            settings, plan, inputs, wandb_mode, run.resume_path, start, keeper, run.tail
        )
    stopped = disk.stopped_message(keeper, plan.experiment_path)
    if stopped is not None:  # --max-disk, or a disk too full to go on: saved, resumable
        interrupted(run, None)
        raise UserError(stopped)
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
        run.path = path
        return None
    path = run.path = resume_folder(run.settings)
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
        run.done = [p for p in PHASES if p in resumed.previous.phases_done]
        run.phase = next((p for p in PHASES if p not in run.done), REPORT)  # where it goes on
        run.wall = resumed.previous.wall_time_s if SEARCH in run.done else None
    return None


def quiet(run: Run) -> None:
    """From here on the console shows medsweep's lines; the rest goes to driver.log in the
    experiment folder (`search.driver.console`), unless `--verbose` (or the folder is a URI)."""
    if run.settings.outputs.verbose or run.path is None or is_uri(run.path):
        return
    os.makedirs(run.path, exist_ok=True)
    run.console.capture(os.path.join(run.path, LOG_FILE))
    log.info(
        "console: medsweep's lines; Ray's tables, W&B's lines and the workers' output are "
        "in %s (--verbose: here too)",
        run.console.path,
    )


def finish(run: Run, grid, wandb_mode: str) -> int:
    """After the trials (`grid`: Tune's results; None when an earlier run collected them): the
    phases after the search, each skipped when an earlier run finished it, then the report
    and W&B; search.json says finished last."""
    from search.driver import disk, progress, steps
    from search.tracking.runs import log_media

    settings, plan, inputs = run.settings, run.plan, run.inputs
    trials = searched(run, grid)
    if run.tail is not None:  # maps started while the last trials ran: the step keeps them
        run.tail.wait()
    for phase, step in (
        (ATTRIBUTION, steps.attribution),
        (TEST, steps.evaluate_test),
        (REPEAT, repeat),
    ):
        if enter(run, phase):
            step(settings, plan, inputs, trials)
            run.done.append(phase)
    disk.keep_checkpoints(settings, plan, trials)  # nothing reads checkpoints after this
    enter(run, REPORT)
    report = steps.write_report(plan.experiment_path)
    log_media(wandb_mode, settings.wandb.project, plan.name, plan.experiment_path, trials)
    run.phase, run.done = None, list(PHASES)
    record(run, FINISHED)
    code = progress.summarise(trials, plan, run.searched_s(), run.idle)
    if report:
        log.info("  report: %s", report)
    return code


def searched(run: Run, grid) -> list[dict]:
    """The trial rows: collected from `grid` (the search phase ends: tables and checkpoints
    written, the time searched fixed), or read back when an earlier run collected them."""
    from search.driver import steps
    from search.driver.slots import idle_split, slot_use

    if SEARCH in run.done:
        run.slot_use = run.previous.extra.get("slot_use") if run.previous else None
        return steps.read_trials(run.plan)
    trials = steps.collect_results(grid, run.plan, run.inputs)
    run.wall = run.searched_s()
    run.slot_use = slot_use(trials, run.wall, run.plan.max_concurrent)
    if run.previous is None:  # one stretch of time: the split holds
        history = steps.read_history(run.plan)
        run.idle = idle_split(history, run.started, run.wall, run.plan.max_concurrent)
    run.done.append(SEARCH)
    return trials


def enter(run: Run, phase: str) -> bool:
    """Start `phase`: search.json says so (atomically); False when an earlier run finished it
    (logged: nothing of it is redone)."""
    run.phase = phase
    record(run, RUNNING)
    if phase in run.done:
        log.info("%s: finished in an earlier run; kept, not redone", phase)
    return phase not in run.done


def repeat(settings: Settings, plan: Plan, inputs: Inputs, trials: list[dict]) -> None:
    """`--repeat-best` (`search.driver.repeat`), when asked for."""
    if settings.after.repeat_best:
        from search.driver.repeat import repeat_best

        repeat_best(settings.after, plan, inputs, trials)


def record(run: Run, status: str) -> None:
    """Write search.json as `run` has got to: `status`, its phase and the phases done."""
    from search.driver import records

    records.manifest(
        run.settings,
        run.plan,
        run.inputs,
        run.first_started,
        run.searched_s(),
        status,
        run.phase,
        run.done,
        run.slot_use,
        run.idle,
    ).write(run.plan.experiment_path)


def interrupted(run: Run, sig: int | None) -> int:
    """Mark the search interrupted (in which phase, which are done), say how to continue it;
    130 (SIGINT) or 143 (SIGTERM)."""
    plan, code = run.plan, interrupted_code(sig)
    if plan is None or run.inputs is None:
        log.warning("interrupted before the search started: nothing to resume")
        return code
    path = plan.experiment_path
    if Manifest.read_optional(path) is None:  # the search had not started: nothing written
        log.warning("interrupted before the search started: nothing to resume; start it again")
        return code
    if run.phase is None:  # search.json says finished already: it stays so
        return code
    record(run, INTERRUPTED)
    log.warning(
        "\ninterrupted in the %s phase (done: %s): the search state is saved in %s (nothing "
        "runs on a partial search; --resume redoes no finished phase). Continue it with:\n  %s",
        run.phase,
        ", ".join(run.done) or "none",
        path,
        resume_command(path),
    )
    return code


def disk_full(err: BaseException) -> bool:
    """Whether `err`, or an error behind it (Ray wraps a trial's), is a full disk."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def free_bytes(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


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
