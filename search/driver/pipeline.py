"""One search, start to finish: inputs -> Ray -> fit -> collect -> after -> report -> W&B.

    from search.driver.pipeline import main
    sys.exit(main(["--task", "blood", "--trials", "8"]))   # what search/run.py does

`main` runs the steps below in order, each once:
1. `read_inputs`: the task, the space file, the command line's settings, ImageNet weights,
   and the train/val arrays (`search.driver.inputs`);
2. `start_ray`: connect (`search.driver.session`), check the storage, make the `Plan`;
3. `fit`: the arrays go into the object store once; a new `Tuner` (search.json written
   first), or `Tuner.restore` under `--resume`; `tuner.fit()`;
4. `collect`: `trials.parquet`, `history.parquet` and each trial's best checkpoint
   (`search.experiment.tables`);
5. `after_search`: attribution maps and focus scores, then the test split for the best
   trial(s) (`search.experiment.after`);
6. the finished `search.json` (`search.experiment.manifest`), `report.html`
   (`search.reporting.report`), W&B media (`search.tracking.runs`), and a summary on the log.
The exit code is 0 unless every trial failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from dataclasses import dataclass

import ray
from ray import tune

from search.driver.inputs import (
    SEARCH_SPLITS,
    fetch_weights,
    load_arrays,
    locate_data,
    param_space,
    planned_epochs,
)
from search.driver.launch import build_trainable
from search.driver.options import ig_settings, parse_args
from search.driver.plan import Plan, make_plan
from search.driver.resume import resumed_args
from search.driver.session import check_storage, connect_ray
from search.driver.space import Space, default_space_path, load_space
from search.driver.tuner import build_tuner
from search.experiment import after
from search.experiment.manifest import Manifest
from search.experiment.storage import is_uri, join_path
from search.experiment.tables import (
    ERRORED,
    TRIALS_FILE,
    collect,
    config_of,
    export_checkpoints,
    write_table,
    write_tables,
)
from search.tracking.runs import log_media, make_callbacks, resolve_mode
from trainables.scores import best_of
from trainables.tasks import Task, get_task

log = logging.getLogger("medsweep")
# Every epoch checkpoints (best + latest are kept), so Tune snapshots often; that is intended.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@dataclass
class Inputs:
    """What the search reads before Ray starts."""

    task: Task
    """The task record (a folder task's classes, kind and channels from its data)."""
    space: Space
    values: dict
    """The Tuner's param_space: the space's domains with the command line's settings."""
    data_path: str
    data: dict
    """The train and val arrays (the test split is read after the search)."""


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """Run one search from a command line (search/run.py's); the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = parse_args(argv, description)
    resume_path = None
    if args.resume:
        resume_path, args = resumed_args(args)
    inputs = read_inputs(args)
    plan = start_ray(args, inputs.task, inputs.space)
    started = time.time()
    wandb_mode = "off" if args.smoke_test and args.wandb is None else resolve_mode(args.wandb)
    grid = fit(args, plan, inputs, wandb_mode, started, resume_path)
    trials = collect_results(grid, plan, inputs)
    search_wall = time.time() - started
    after_search(args, plan, inputs, trials)
    manifest(args, plan, inputs, started, search_wall).write(plan.experiment_path)
    write_report(plan.experiment_path)
    log_media(wandb_mode, args.wandb_project, plan.name, plan.experiment_path, trials)
    return summarise(trials, plan, search_wall)


def read_inputs(args: argparse.Namespace) -> Inputs:
    task = get_task(args.task)
    space = load_space(args.space or default_space_path(task), task)
    values = param_space(args, space)
    fetch_weights(values, task)
    task, data_path = locate_data(task, values.get("image_size") or task.image_size, args)
    return Inputs(task, space, values, data_path, load_arrays(data_path, task, args.folds))


def start_ray(args: argparse.Namespace, task: Task, space: Space) -> Plan:
    """Connect to Ray, check the storage, and plan the search (concurrency asks Ray)."""
    connect_ray(args.address)
    check_storage(args)
    name = args.name or f"{task.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    plan = make_plan(args, space, name, task)
    log.info("search %s: task %s, %d trials, %d at once, searcher %s, launcher %s -> %s",
             name, task.name, plan.trials, plan.max_concurrent, plan.searcher, plan.launcher,
             plan.experiment_path)  # fmt: skip
    return plan


def fit(args, plan: Plan, inputs: Inputs, wandb_mode: str, started: float, resume_path):
    """Run the trials (a new search, or the rest of an interrupted one); the ResultGrid."""
    data_ref = [ray.put(inputs.data)]  # once per search; trials read it zero-copy
    tags = [plan.task.name, plan.searcher]
    callbacks = make_callbacks(wandb_mode, args.wandb_project, plan.name, tags,
                               wandb_dir=plan.experiment_path)  # fmt: skip
    if resume_path:
        tuner = tune.Tuner.restore(resume_path, build_trainable(plan, data_ref),
                                   resume_unfinished=True, resume_errored=False)  # fmt: skip
    else:
        manifest(args, plan, inputs, started, None).write(plan.experiment_path)
        tuner = build_tuner(plan, inputs.space, data_ref, inputs.values, callbacks)
    return tuner.fit()


def collect_results(grid, plan: Plan, inputs: Inputs) -> list[dict]:
    """The tables and the trials' best checkpoints in the experiment folder; the trial rows."""
    epochs = planned_epochs(inputs.values)
    trials, history = collect(grid, plan.metric, plan.mode, epochs, plan.experiment_path)
    export_checkpoints(trials, plan.experiment_path)
    write_tables(plan.experiment_path, trials, history)
    return trials


def after_search(args, plan: Plan, inputs: Inputs, trials: list[dict]) -> None:
    """Attribution maps (Ray tasks), focus scores, then the test split for the best trials."""
    t0 = time.time()
    focus = {}
    if args.explain_top != 0:
        focus = after.explain_trials(
            trials, plan.experiment_path, inputs.task, inputs.data, plan.metric, plan.mode,
            plan.seed, args.explain_top, ig=ig_settings(args),
        )  # fmt: skip
    for trial_id in after.attach_focus(trials, focus):
        log.warning("trial %s: attribution focus %.2f is far below the others' (is it "
                    "looking at the background?)", trial_id, focus[trial_id])  # fmt: skip
    log.info("attribution maps for %d trials in %.1f s", len(focus), time.time() - t0)
    write_table(trials, join_path(plan.experiment_path, TRIALS_FILE))
    if args.test_top:
        after.evaluate_on_test(trials, plan.experiment_path, inputs.task, inputs.data_path,
                               plan.metric, plan.mode, args.test_top, plan.seed)  # fmt: skip


def manifest(args, plan: Plan, inputs: Inputs, started: float, wall: float | None) -> Manifest:
    """`search.json`: what the report, compare.py and --resume need to know of this search."""
    task = inputs.task
    return Manifest(
        name=plan.name, task=task.name, kind=task.kind, classes=list(task.classes),
        metric=plan.metric, mode=plan.mode, searcher=plan.searcher, seed=plan.seed,
        trials=plan.trials, epochs=planned_epochs(inputs.values), launcher=plan.launcher,
        knobs=list(inputs.space.searched), space=inputs.space.sweep_config,
        started_at=started, finished_at=None if wall is None else time.time(),
        wall_time_s=wall, split_counts=split_counts(task, inputs.data), argv=args.argv,
        resources_per_trial=plan.resources_per_trial,
    )  # fmt: skip


def split_counts(task: Task, data: dict) -> dict[str, dict[str, int]]:
    """{split: {class: images}} (multilabel: positives per label) of the splits searched."""
    n = len(task.classes)
    return {
        split: {c: int(k) for c, k in zip(
            task.classes, task.kind_ops.class_counts(data[f"{split}_labels"], n), strict=True)}
        for split in SEARCH_SPLITS
    }  # fmt: skip


def write_report(experiment_path: str) -> None:
    """report.html beside the results (local storage; rebuild it from a copy otherwise)."""
    if is_uri(experiment_path):
        log.info("report: copy the folder locally and run python search/report.py <folder>")
        return
    from search.reporting.report import build_report

    try:
        log.info("  report: %s", build_report(experiment_path))
    except Exception as err:  # the results are written already; a plot must not fail the run
        log.warning("report could not be built (%s); rebuild: python search/report.py %s",
                    err, experiment_path)  # fmt: skip


def summarise(trials: list[dict], plan: Plan, wall_s: float) -> int:
    """Print the best trial and any failures; the exit code (1 only if every trial failed)."""
    errored = [t for t in trials if t["status"] == ERRORED]
    for t in errored:
        log.warning("trial %s errored: %s", t["trial_id"], (t["error"] or "").splitlines()[-1:])
    best = best_of(trials, plan.metric, plan.mode)
    if best is None:
        log.error("no trial produced a %s (%d errored of %d)", plan.metric, len(errored),
                  len(trials))  # fmt: skip
        return 1
    log.info("\n%d trials in %.0f s (%d errored). Best trial %s: %s = %.4f at epoch %s",
             len(trials), wall_s, len(errored), best["trial_id"], plan.metric,
             best[plan.metric], best["best_epoch"])  # fmt: skip
    log.info("  config: %s", config_of(best))
    log.info("  checkpoint: %s", best["checkpoint_path"])
    log.info("  results: %s", join_path(plan.experiment_path, TRIALS_FILE))
    return 0
