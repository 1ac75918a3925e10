"""Run a hyperparameter search for one task and write its experiment folder.

    python search/run.py --task pathology
    python search/run.py --task blood --trials 32 --gpus-per-trial 0.25
    python search/run.py --task pneumonia --data-dir ../shared/data --weights none --smoke-test

Leaves `runs/<name>/trials.parquet`, `history.parquet` and `<trial>/checkpoint/model.pt`, and
prints the best trial. Exit code 0 unless every trial failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings

from ray import tune

from search.driver.downloads import ensure_dataset
from search.driver.folders import SPLIT_CHOICES, convert_folder, small_data_warnings
from search.driver.folds import file_arrays
from search.driver.session import check_storage, connect_ray
from search.driver.space import Space, default_space_path, load_space
from search.driver.tuner import (
    LAUNCHERS,
    SEARCHERS,
    Plan,
    build_trainable,
    build_tuner,
    with_concurrency,
)
from search.experiment.after import (
    evaluate_on_test,
    explain_trials,
    focus_warnings,
    read_text,
    write_text,
)
from search.experiment.tables import collect, export_checkpoints, join_path, write_table
from search.tracking.runs import log_media, make_callbacks, resolve_mode
from trainables.data import load_npz
from trainables.models import PRETRAINED, load_imagenet_state
from trainables.tasks import TASK_NAMES, get_task
from trainables.train import TrainConfig

log = logging.getLogger("medsweep")
# Every epoch checkpoints (best + latest are kept), so Tune snapshots often; that is intended.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    p.add_argument(
        "--explain-top",
        type=int,
        help="attribution maps for the K best trials (default all; 0 = none)",
    )
    p.add_argument("--test-top", type=int, default=1, help="evaluate the K best on test")
    p.add_argument("--ig-samples", type=int, default=4, help="SmoothGrad samples for IG")
    p.add_argument("--ig-steps", type=int, default=16, help="integration steps for IG")
    p.add_argument("--ig-baseline", default="zero", help="IG baseline: zero, mean or a number")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.task and not args.resume:
        p.error(f"--task is required (one of: {', '.join(TASK_NAMES)}), or --resume EXPERIMENT")
    return args


def param_space(args: argparse.Namespace, space: Space) -> dict:
    """The space's domains with the command line's fixed settings laid over them."""
    overrides = {
        "weights": args.weights,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
    }
    values = {**space.domains, **{k: v for k, v in overrides.items() if v is not None}}
    values["seed"] = args.seed
    if args.smoke_test:
        values.update(epochs=1, max_batches=3)
    fixed = {k: v for k, v in values.items() if k not in space.searched}
    TrainConfig.from_dict(fixed)  # a bad fixed setting fails here, before Ray starts
    return values


def fetch_weights(values: dict, task) -> None:
    """Fetch ImageNet weights once, on the driver, before any trial starts."""
    if values.get("weights") != "imagenet":
        return
    model = values.get("model") or task.model
    names = model.categories if hasattr(model, "categories") else [model]
    for name in names:
        if name in PRETRAINED:
            load_imagenet_state(name)


def resolve_launcher(launcher: str, workers_per_trial: int) -> str:
    """`auto`: Ray Train only where it is needed (DDP). search/bench.py measured, on 2 CPU
    cores, trial start to first step 14.4 s under Train against 0.5 s in a Tune function, and
    0.92x against 0.985x the plain loop's images/s."""
    if launcher != "auto":
        return launcher
    return "train" if workers_per_trial > 1 else "function"


def make_plan(args: argparse.Namespace, space: Space, name: str, task) -> Plan:
    gpus = args.gpus_per_trial
    if gpus is None:
        import torch

        gpus = 1.0 if torch.cuda.is_available() and not args.smoke_test else 0.0
    plan = Plan(
        name=name,
        storage=args.storage if "://" in args.storage else os.path.abspath(args.storage),
        trials=2 if args.smoke_test else args.trials,
        metric=space.metric,
        mode=space.mode,
        searcher=args.searcher,
        launcher=resolve_launcher(args.launcher, args.workers_per_trial),
        seed=args.seed,
        workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_trial=gpus,
        max_failures=args.max_failures,
        time_budget_s=args.time_budget,
        task=task,
        folds=args.folds,
    )
    return with_concurrency(plan, args.max_concurrent)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = parse_args(argv)
    resume_path = None
    if args.resume:
        resume_path, args = resumed_args(args)
    task = get_task(args.task)
    space = load_space(args.space or default_space_path(task), task)
    values = param_space(args, space)
    fetch_weights(values, task)
    image_size = values.get("image_size") or task.image_size
    task, data_path = locate_data(task, image_size, args)
    data = load_npz(data_path, task, splits=("train", "val"))  # test is read after the search
    if args.folds > 1:  # patient ids (from the file names) keep each patient in one fold
        data.update(file_arrays(data_path))

    import ray

    connect_ray(args.address)
    check_storage(args)
    name = args.name or f"{task.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    plan = make_plan(args, space, name, task)
    log.info("search %s: task %s, %d trials, %d at once, searcher %s, launcher %s -> %s",
             name, task.name, plan.trials, plan.max_concurrent, plan.searcher, plan.launcher,
             plan.experiment_path)  # fmt: skip
    data_ref = [ray.put(data)]  # once per search; trials read it zero-copy
    wandb_mode = "off" if args.smoke_test and args.wandb is None else resolve_mode(args.wandb)
    tags = [task.name, plan.searcher]
    callbacks = make_callbacks(
        wandb_mode, args.wandb_project, plan.name, tags, wandb_dir=plan.experiment_path
    )
    started = time.time()
    if resume_path:
        tuner = tune.Tuner.restore(resume_path, build_trainable(plan, data_ref),
                                   resume_unfinished=True, resume_errored=False)  # fmt: skip
    else:
        write_search_json(args, plan, task, space, values, data, started, None)
        tuner = build_tuner(plan, space, data_ref, values, callbacks)
    grid = tuner.fit()
    epochs = int(values.get("epochs", TrainConfig.epochs))
    trials, history = collect(grid, plan.metric, plan.mode, epochs, plan.experiment_path)
    export_checkpoints(trials, plan.experiment_path)
    write_table(trials, join_path(plan.experiment_path, "trials.parquet"))
    write_table(history, join_path(plan.experiment_path, "history.parquet"))
    search_wall = time.time() - started
    after_search(args, plan, task, data, data_path, trials)
    write_search_json(args, plan, task, space, values, data, started, search_wall)
    write_report(plan.experiment_path)
    log_media(wandb_mode, args.wandb_project, plan.name, plan.experiment_path, trials)
    return summarise(trials, plan, search_wall)


def write_report(experiment_path: str) -> None:
    """report.html beside the results (local storage; rebuild it from a copy otherwise)."""
    if "://" in experiment_path:
        log.info("report: copy the folder locally and run python search/report.py <folder>")
        return
    from search.reporting.report import build_report

    try:
        log.info("  report: %s", build_report(experiment_path))
    except Exception as err:  # the results are written already; a plot must not fail the run
        log.warning("report could not be built (%s); rebuild: python search/report.py %s",
                    err, experiment_path)  # fmt: skip


def locate_data(task, image_size: int, args: argparse.Namespace):
    """(task, npz path): a MedMNIST file, or a folder per class converted once (cached)."""
    if task.source != "folder":
        return task, ensure_dataset(task, image_size, args.data_dir)
    if not args.data_dir:
        raise SystemExit(
            f"--task {task.name} reads a folder per class: pass --data-dir DIR (for malaria, "
            "the NIH cell_images/ folder holding Parasitized/ and Uninfected/)"
        )
    fixed = list(task.classes) or None  # malaria fixes its order; folder takes the folders'
    path, classes, info = convert_folder(
        args.data_dir, image_size, split=args.split, seed=args.seed, classes=fixed
    )
    for line in small_data_warnings(info["counts"]):
        log.warning("small data: %s", line)
    log.info("%s: %s split, images per split %s", args.data_dir, info["split"],
             {k: sum(v.values()) for k, v in info["counts"].items()})  # fmt: skip
    kind = task.kind if task.classes else ("binary" if len(classes) == 2 else "multiclass")
    task = dataclasses.replace(task, classes=tuple(classes), kind=kind,
                               channels=info["channels"])  # fmt: skip
    return task, path


def resumed_args(args: argparse.Namespace) -> tuple[str, argparse.Namespace]:
    """The experiment folder and the original command's arguments, from its search.json."""
    if isinstance(args.resume, str):
        path = args.resume
    elif args.name:
        path = join_path(args.storage or "runs", args.name)
    else:
        raise SystemExit("--resume needs the experiment folder (runs/<name>) or --name")
    path = path if "://" in path else os.path.abspath(path)
    if not tune.Tuner.can_restore(path):
        raise SystemExit(f"--resume {path}: no Ray Tune experiment state there; is it the "
                         "folder of a search (runs/<name>)?")  # fmt: skip
    original = json.loads(read_text(join_path(path, "search.json")))["argv"]
    restored = parse_args(original)
    restored.name = os.path.basename(path.rstrip("/"))
    restored.storage = path.rstrip("/").rsplit("/", 1)[0]
    if args.address:
        restored.address = args.address
    log.info("resuming %s (%s)", path, " ".join(original))
    return path, restored


def after_search(args, plan: Plan, task, data: dict, data_path: str, trials: list[dict]) -> None:
    """Attribution maps (Ray tasks), focus scores, then the test split for the best trials."""
    t0 = time.time()
    ig = {"n_samples": args.ig_samples, "steps": args.ig_steps,
          "baseline": _number_or(args.ig_baseline)}  # fmt: skip
    focus = {}
    if args.explain_top != 0:
        focus = explain_trials(trials, plan.experiment_path, task, data, plan.metric, plan.mode,
                               plan.seed, args.explain_top, ig=ig)  # fmt: skip
    flagged = focus_warnings(focus)
    for t in trials:
        t["attr_focus"] = focus.get(t["trial_id"])
        t["attr_focus_warning"] = flagged.get(t["trial_id"])
        if flagged.get(t["trial_id"]):
            log.warning(
                "trial %s: attribution focus %.2f is far below the others' (is it "
                "looking at the background?)",
                t["trial_id"],
                focus[t["trial_id"]],
            )
    log.info("attribution maps for %d trials in %.1f s", len(focus), time.time() - t0)
    write_table(trials, join_path(plan.experiment_path, "trials.parquet"))
    if args.test_top:
        evaluate_on_test(trials, plan.experiment_path, task, data_path, plan.metric, plan.mode,
                         args.test_top, plan.seed)  # fmt: skip


def _number_or(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def write_search_json(args, plan, task, space, values, data, started, wall) -> None:
    """`search.json`: what the report and later tools need to know about this search."""
    counts = {
        split: {task.classes[i]: int(n) for i, n in enumerate(_class_counts(task, data, split))}
        for split in ("train", "val")
    }
    info = {
        "name": plan.name, "task": task.name, "kind": task.kind, "classes": list(task.classes),
        "metric": plan.metric, "mode": plan.mode, "searcher": plan.searcher, "seed": plan.seed,
        "trials": plan.trials, "epochs": int(values.get("epochs", TrainConfig.epochs)),
        "launcher": plan.launcher, "knobs": list(space.searched), "space": space.sweep_config,
        "started_at": started, "finished_at": None if wall is None else time.time(),
        "wall_time_s": wall,
        "split_counts": counts, "argv": args.argv,
        "resources_per_trial": {"cpu": plan.cpus_per_worker * plan.workers_per_trial,
                                "gpu": plan.gpus_per_trial},
    }  # fmt: skip
    write_text(join_path(plan.experiment_path, "search.json"), json.dumps(info, indent=2))


def _class_counts(task, data: dict, split: str):
    import numpy as np

    labels = data[f"{split}_labels"]
    if task.kind == "multilabel":
        return labels.sum(axis=0)
    return np.bincount(labels[:, 0], minlength=len(task.classes))


def summarise(trials: list[dict], plan: Plan, wall_s: float) -> int:
    """Print the best trial and any failures; the exit code (1 only if every trial failed)."""
    errored = [t for t in trials if t["status"] == "errored"]
    for t in errored:
        log.warning("trial %s errored: %s", t["trial_id"], (t["error"] or "").splitlines()[-1:])
    scored = [t for t in trials if t.get(plan.metric) is not None]
    if not scored:
        log.error("no trial produced a %s (%d errored of %d)", plan.metric, len(errored),
                  len(trials))  # fmt: skip
        return 1
    pick = max if plan.mode == "max" else min
    best = pick(scored, key=lambda t: t[plan.metric])
    config = {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("config/")}
    log.info("\n%d trials in %.0f s (%d errored). Best trial %s: %s = %.4f at epoch %s",
             len(trials), wall_s, len(errored), best["trial_id"], plan.metric,
             best[plan.metric], best["best_epoch"])  # fmt: skip
    log.info("  config: %s", config)
    log.info("  checkpoint: %s", best["checkpoint_path"])
    log.info("  results: %s", join_path(plan.experiment_path, "trials.parquet"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
