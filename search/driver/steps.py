"""The steps of one search, each run once by `search.driver.pipeline.main` (which imports this
module only after the command line passed its checks: it pulls in Ray and torch).

1. `read_inputs`: the task, the space file, the command line's settings, ImageNet weights,
   and the data's descriptor: train/val labels and sizes, no image (`search.driver.inputs`),
   all checked (`search.driver.checks`) before Ray starts;
2. `start_ray`: connect (`search.driver.session`), check the storage and what trials ask for
   against the cluster, make the `Plan`; `place_data`: the data path (`--data-path`; `auto`:
   resident when train+val fit the budget, `trainables.stream.resident_budget`), and on the
   resident path the arrays;
3. `fit`: the split reader every trial and the after-search work take (`split_reader`,
   `search.data.reader`: resident arrays put in the object store once, or the descriptor
   with which streamed trials read their node's cache); a new `Tuner` (search.json written
   first), or `Tuner.restore` under `--resume`; `tuner.fit()`, with a progress line (time left);
4. `collect_results`: `trials.parquet`, `history.parquet` and each trial's best checkpoint
   (`search.experiment.tables`); `read_trials` reads them back (a resumed search whose
   trials all finished);
5. `attribution`: attribution maps and focus scores; `evaluate_test`: the test split for the
   best trial(s) (`search.experiment.after`), both as Ray tasks with a trial's accelerator;
6. `manifest` (search.json), `write_report` (report.html), and `progress.summarise` on the
   log.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import ray
from ray import tune

from search.data.node_data import DataSource
from search.data.reader import SplitReader
from search.data.sources import (
    Located,
    describe_data,
    fingerprint_data,
    ingest_data,
    load_arrays,
    locate_data,
)
from search.driver.checks import user_errors
from search.driver.disk import DiskKeeper, use_keeper
from search.driver.input_checks import (
    check_cluster,
    check_data,
    check_models,
    check_space,
    check_space_values,
)
from search.driver.inputs import fetch_weights, param_space
from search.driver.launch import build_trainable
from search.driver.plan import Plan, make_plan, worker_request
from search.driver.progress import Progress
from search.driver.resources import read_cluster
from search.driver.session import check_storage, connect_ray
from search.driver.settings import AfterSettings, Settings, updated
from search.driver.space import Space, default_space_path, load_space
from search.driver.tail import TailExplainer
from search.driver.tuner import build_tuner
from search.driver.warm_start import WarmStart, check_search
from search.experiment import after
from search.experiment.after_settings import EvaluationSettings, ExplainSettings
from search.experiment.deploy import evaluate_models
from search.experiment.manifest import Manifest
from search.experiment.selection import check_after_flags
from search.experiment.storage import is_uri, join_path
from search.experiment.tables import (
    HISTORY_FILE,
    TRIALS_FILE,
    collect,
    export_checkpoints,
    mark_pareto,
    read_table,
    write_table,
    write_tables,
)
from search.tracking.runs import make_callbacks
from trainables.config import planned_epochs
from trainables.stream import RESIDENT, STREAM, choose_path, resident_budget
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
    located: Located
    """Where the data is (`search.data.sources`); converted by `ingest` once Ray is up."""
    data_file: str = ""
    """The npz every split is read from (a MedMNIST file, or converted data): `ingest`."""
    source: DataSource | None = None
    """The data's descriptor: train/val labels (and file names under --folds), sizes:
    `ingest`."""
    data_path: str = STREAM
    """`resident` or `stream` (`place_data`)."""
    data: dict | None = None
    """The train and val arrays on the resident path (the test split is read after)."""
    reader: SplitReader | None = None
    """What trials, folds, attribution and the test prediction read the splits through: made
    once, by `split_reader`."""
    warm: WarmStart | None = None
    """`--warm-start`'s earlier trials that fit the space (`search.driver.warm_start`)."""


def read_inputs(settings: Settings) -> Inputs:
    """Everything read before Ray starts; a mistake in a file is a `UserError` naming it."""
    data, seed = settings.data, settings.search.seed
    with user_errors("fix the space file, or the flag that overrides it"):
        task = get_task(data.task)
        fixed = settings.training_overrides()
        space = load_space(data.space or default_space_path(task), task, fixed=fixed)
        check_space(space)
        values = param_space(settings, space)
        check_space_values(space, values)
        check_models(space, values, task)
    with user_errors(DATA_HINT):  # the data first: a listing answers sooner than a download
        size = values.get("image_size") or task.image_size
        located = locate_data(task, size, data, seed)
        fetch_weights(values, task)
    with user_errors("fix --select or --ensemble"):
        after_flags = settings.after.select, settings.after.ensemble, settings.search.trials
        check_after_flags(*after_flags, located.task.kind, settings.after.test_top)
    warm = check_search(settings.search, located.task, space, values)  # --objective too
    inputs = Inputs(located.task, space, values, located, warm=warm)
    if located.conversion is None:  # an npz already: checked now, before Ray starts
        describe_located(settings, inputs)
    return inputs


DATA_HINT = "check that --data-dir holds the right data for --task (at --image-size)"


def ingest(settings: Settings, plan: Plan, inputs: Inputs) -> Plan:
    """Once Ray is up: convert the data `read_inputs` located (decoding on the cluster), then
    its descriptor, its checks and its fingerprint; the plan with the data's task (a folder's
    channels are known once its images were read)."""
    if inputs.source is None:
        with user_errors(DATA_HINT):
            inputs.located = ingest_data(inputs.located, settings.data)
        describe_located(settings, inputs)
    return dataclasses.replace(plan, task=inputs.task)


def describe_located(settings: Settings, inputs: Inputs) -> None:
    """The npz's descriptor, its checks against the search, and its fingerprint."""
    data, located = settings.data, inputs.located
    with user_errors(DATA_HINT):
        inputs.task, inputs.data_file = located.task, located.path
        inputs.source = describe_data(located, data.folds)
        check_data(located.path, located.task, located.image_size, inputs.source.labels)
        seed = settings.search.seed
        inputs.values["data_fingerprint"] = fingerprint_data(located, seed, data.folds)


def place_data(settings: Settings, plan: Plan, inputs: Inputs) -> None:
    """Choose the data path (see the module docstring); load the arrays when resident."""
    nbytes, data = inputs.source.nbytes, settings.data
    if data.resident_budget_mb is not None:
        budget, why = float(data.resident_budget_mb) * 2**20, "--resident-budget-mb"
    else:
        budget, why = default_budget(plan)
    inputs.data_path = choose_path(nbytes, budget, data.data_path)
    log.info(
        "data: train+val images %.1f MB, resident budget %.1f MB (%s) -> %s%s",
        nbytes / 2**20,
        budget / 2**20,
        why,
        inputs.data_path,
        "" if data.data_path == "auto" else " (--data-path)",
    )
    if inputs.data_path == RESIDENT:
        inputs.data = load_arrays(inputs.located, data.folds)


def default_budget(plan: Plan) -> tuple[float, str]:
    """(bytes, how) from the smallest Ray node's memory and, for GPU trials, this machine's
    GPU when it has one (`trainables.stream.RESIDENT_SHARES`)."""
    import torch

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    ram = min(r.get("memory", 0) + r.get("object_store_memory", 0) for r in nodes)
    cpus = min(r.get("CPU", 1) for r in nodes)
    per_node = max(1, min(plan.max_concurrent, int(cpus / max(plan.cpus_per_worker, 1e-3))))
    gpu = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0
    budget = resident_budget(ram, per_node, gpu, worker_request(plan).get("GPU", 0.0))
    gb = 2**30
    if plan.gpus_per_trial > 0 and gpu:
        return budget, f"{plan.gpus_per_trial:g} x {gpu / gb:.0f} GB GPU, node {ram / gb:.0f} GB"
    return budget, f"node memory {ram / gb:.0f} GB over {per_node} trial(s) + object store"


def start_ray(settings: Settings, task: Task, space: Space) -> tuple[Plan, str | None]:
    """Connect to Ray, check the storage and the trials' request, and plan the search
    (concurrency asks Ray); the plan and the dashboard's URL."""
    address = settings.resources.address
    dashboard = connect_ray(address)
    settings = updated(settings, outputs={"storage": check_storage(settings.outputs.storage)})
    name = settings.outputs.name or f"{task.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    plan = make_plan(settings, space, name, task)
    check_cluster(plan, read_cluster(local=address is None))
    log.info(
        "search %s: task %s, %d trials, %d at once, searcher %s, launcher %s -> %s",
        name,
        task.name,
        plan.trials,
        plan.max_concurrent,
        plan.searcher,
        plan.launcher,
        plan.experiment_path,
    )
    return plan, dashboard


def fit(
    settings: Settings,
    plan: Plan,
    inputs: Inputs,
    wandb_mode: str,
    resume_path: str | None,
    start: Manifest,
    keeper: DiskKeeper,
    tail: TailExplainer | None = None,
):
    """Run the trials (a new search, or the rest of an interrupted one); the ResultGrid.
    `start` is the search.json written before the first trial (status running); `keeper`
    holds the folder's disk (`disk_keeper`); `tail` explains ended trials in the slots the
    last trials leave free (`tail_explainer`)."""
    reader = split_reader(inputs)
    tags = [plan.task.name, plan.searcher]
    callbacks = make_callbacks(
        wandb_mode, settings.wandb.project, plan.name, tags, wandb_dir=plan.experiment_path
    )
    epochs = planned_epochs(inputs.values)
    callbacks = [
        *callbacks,
        Progress(
            plan.trials,
            epochs,
            plan.max_concurrent,
            plan.time_budget_s,
            metric=plan.metric,
            mode=plan.mode,
        ),
        keeper,
        *([tail] if tail is not None else []),  # after the keeper: it exports the weights
    ]
    start.write(plan.experiment_path)
    if resume_path:
        tuner = tune.Tuner.restore(
            resume_path,
            build_trainable(plan, reader),
            resume_unfinished=True,
            resume_errored=False,
        )
        use_keeper(tuner, keeper)  # the restored run's callbacks are the pickled ones
    else:
        earlier = list(inputs.warm.trials) if inputs.warm else None
        tuner = build_tuner(plan, inputs.space, reader, inputs.values, callbacks, earlier)
    return tuner.fit()


def collect_results(grid, plan: Plan, inputs: Inputs) -> list[dict]:
    """The tables and the trials' best checkpoints in the experiment folder; the trial rows."""
    epochs = planned_epochs(inputs.values)
    trials, history = collect(grid, plan.metric, plan.mode, epochs, plan.experiment_path)
    mark_pareto(trials, plan.objectives)  # several objectives: the `pareto` column
    export_checkpoints(trials, plan.experiment_path)
    write_tables(plan.experiment_path, trials, history)
    return trials


def read_history(plan: Plan) -> list[dict]:
    """history.parquet's rows (one per trial and epoch), as `collect_results` wrote them."""
    return read_table(join_path(plan.experiment_path, HISTORY_FILE))


def read_trials(plan: Plan) -> list[dict]:
    """The trial rows `collect_results` wrote, read back (its checkpoints are in place)."""
    return read_table(join_path(plan.experiment_path, TRIALS_FILE))


def attribution(settings: Settings, plan: Plan, inputs: Inputs, trials: list[dict]) -> None:
    """Attribution maps (Ray tasks) and focus scores, written into trials.parquet."""
    t0 = time.time()
    focus, reader = {}, split_reader(inputs)
    if settings.attribution.explain_top != 0:
        focus = after.explain_trials(
            trials, plan.experiment_path, inputs.task, reader, explain_settings(settings, plan)
        )
    for trial_id in after.attach_focus(trials, focus):
        log.warning(
            "trial %s: attribution focus %.2f is far below the others' (is it "
            "looking at the background?)",
            trial_id,
            focus[trial_id],
        )
    log.info("attribution maps for %d trials in %.1f s", len(focus), time.time() - t0)
    write_table(trials, join_path(plan.experiment_path, TRIALS_FILE))


def evaluate_test(settings: Settings, plan: Plan, inputs: Inputs, trials: list[dict]) -> None:
    """The test split, read once, for the best trial(s): test_metrics.json and each tested
    trial's test_predictions.npz."""
    reader = split_reader(inputs)
    if settings.after.test_top:  # --select / --ensemble: search.experiment.deploy
        evaluate_models(
            trials,
            plan.experiment_path,
            inputs.task,
            reader,
            evaluation_settings(settings.after, plan, settings.after.test_top),
            settings.after.select,
            settings.after.ensemble,
        )


def explain_settings(settings: Settings, plan: Plan) -> ExplainSettings:
    """What `after.explain_trials` explains and how: `--explain-top`, `--ig-*`."""
    return ExplainSettings(
        plan.metric,
        plan.mode,
        seed=plan.seed,
        top_k=settings.attribution.explain_top,
        ig=settings.attribution.ig(),
        resources=after_resources(plan),
    )


def evaluation_settings(settings: AfterSettings, plan: Plan, top_k: int) -> EvaluationSettings:
    """How `after.evaluate_on_test` evaluates the best `top_k` trials: `--operating-point`,
    `--temperature-scaling`, on one trial worker's resources."""
    return EvaluationSettings(
        plan.metric,
        plan.mode,
        top_k=top_k,
        seed=plan.seed,
        resources=after_resources(plan),
        operating_point=settings.operating_point,
        temperature_scaling=settings.temperature_scaling,
    )


def split_reader(inputs: Inputs) -> SplitReader:
    """The search's split reader, made once (Ray is up): on the resident path the train and val
    arrays go into the object store (trials read them zero-copy), on the streaming path the
    descriptor (each node maps its own cache). The search, `--repeat-best` and the after-search
    work all take this one."""
    if inputs.reader is None:
        inputs.reader = (
            SplitReader.node_cached(inputs.source)
            if inputs.data is None
            else SplitReader.resident(inputs.data, inputs.source)
        )
    return inputs.reader


def after_resources(plan: Plan) -> dict:
    """Ray task options of the after-search work: one trial worker's share
    (`search.driver.plan.worker_request`)."""
    request = worker_request(plan)
    return {"num_cpus": request["CPU"], "num_gpus": request.get("GPU", 0.0)}


def write_report(experiment_path: str) -> str | None:
    """report.html beside the results (local storage; rebuild it from a copy otherwise); its
    path, or None."""
    if is_uri(experiment_path):
        log.info("report: copy the folder locally and run python search/report.py <folder>")
        return None
    from search.reporting.report import build_report

    try:
        return build_report(experiment_path)
    except Exception as err:  # the results are written already; a plot must not fail the run
        log.warning(
            "report could not be built (%s); rebuild: python search/report.py %s",
            err,
            experiment_path,
        )
        return None
