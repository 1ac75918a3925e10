"""`--repeat-best N`: retrain the best configuration with N new seeds; how much is seed noise.

    repeats = repeat_best(settings.after, plan, inputs, trials)   # after the after-step

Every trial of a search trains with the same seed (`--seed`, TrainConfig.seed: weights,
shuffling, augmentation; the searcher's sampler is seeded with it too), so the winner's margin
over the runner-up mixes the configuration's merit with one draw of training noise. Here the
best trial's configuration (its `config/*` columns) is trained again as a second, small Ray
Tune run in `<experiment>/repeats/`: the same trainable, epochs and resources, one trial per
seed `--seed + 1 ... --seed + N`, no searcher, no scheduler (every repeat runs its budget), so
the repeats differ from each other and from the search only in the training seed. Each
repeat's best checkpoint is evaluated on the test split (`search.experiment.after`, writing
`repeats/test_metrics.json` and `repeats/<trial>/test_predictions.npz`), and the table (per
seed: the validation metric at the best epoch and the figures of its test record; mean and
sample sd over seeds) goes into the experiment's `test_metrics.json` under "repeats" (the
report's "Seed repeats" section, `search.reporting.repeats`).
"""

from __future__ import annotations

import json
import logging

import numpy as np
from ray import tune

from search.driver.launch import build_trainable, checkpoint_config
from search.driver.plan import Plan
from search.driver.settings import AfterSettings
from search.driver.steps import Inputs, evaluation_settings, split_reader
from search.experiment import after
from search.experiment.layout import REPEATS_DIR, TEST_METRICS_FILE
from search.experiment.storage import join_path, read_json, write_text
from search.experiment.tables import collect, config_of, export_checkpoints, write_tables
from trainables.config import planned_epochs
from trainables.evaluation import to_jsonable
from trainables.scores import is_finite

log = logging.getLogger("medsweep")
SKIP = ("per_class", "confusion_matrix", "bootstrap", "reliability", "threshold")
"""Parts of a trial's test record that are not one figure per trial."""


def repeat_seeds(seed: int, n: int) -> list[int]:
    """The N training seeds of the repeats: new, after the search's own."""
    return [seed + i for i in range(1, n + 1)]


def repeat_best(
    settings: AfterSettings, plan: Plan, inputs: Inputs, trials: list[dict]
) -> dict | None:
    """Retrain the best trial's config with `settings.repeat_best` new seeds (module
    docstring); the "repeats" record written into test_metrics.json, or None (N = 0, no best
    trial)."""
    n = settings.repeat_best
    chosen = after.with_checkpoints(trials, plan.metric, plan.mode)[:1]
    if n <= 0 or not chosen:
        if n > 0:
            log.warning(
                "--repeat-best %d: no trial has a %s and a checkpoint; nothing to repeat",
                n,
                plan.metric,
            )
        return None
    best, seeds = chosen[0], repeat_seeds(plan.seed, n)
    path = join_path(plan.experiment_path, REPEATS_DIR)
    log.info(
        "--repeat-best %d: trial %s's config with seeds %s -> %s", n, best["trial_id"], seeds, path
    )
    rows = train_repeats(plan, inputs, config_of(best), seeds)
    tests = evaluate_repeats(settings, plan, inputs, rows, path)
    record = repeats_record(best, rows, tests, plan.metric)
    merge_into_test_metrics(plan.experiment_path, record)
    return record


def train_repeats(plan: Plan, inputs: Inputs, config: dict, seeds: list[int]) -> list[dict]:
    """One Tune trial per seed, `config` fixed; the repeats' trials rows (in seed order). The
    trials read the search's own split reader (resident arrays are not put again)."""
    fixed = {**inputs.values, **config}
    epochs = planned_epochs(fixed)
    tuner = tune.Tuner(
        build_trainable(plan, split_reader(inputs)),
        param_space={**fixed, "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            max_concurrent_trials=plan.max_concurrent,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=REPEATS_DIR,
            storage_path=plan.experiment_path,
            checkpoint_config=checkpoint_config(plan, tune.CheckpointConfig),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            verbose=0,
        ),
    )
    path = join_path(plan.experiment_path, REPEATS_DIR)
    rows, history = collect(tuner.fit(), plan.metric, plan.mode, epochs, path)
    export_checkpoints(rows, path)
    write_tables(path, rows, history)
    return sorted(rows, key=lambda r: r.get("config/seed", 0))


def evaluate_repeats(
    settings: AfterSettings, plan: Plan, inputs: Inputs, rows: list[dict], path: str
) -> dict:
    """{trial_id: test record} of every repeat with a checkpoint, evaluated as the search's
    best trial is (the same operating point, from each repeat's own validation split)."""
    out = after.evaluate_on_test(
        rows,
        path,
        inputs.task,
        split_reader(inputs),
        evaluation_settings(settings, plan, len(rows)),
    )
    return (out or {}).get("trials", {})


def repeats_record(best: dict, rows: list[dict], tests: dict, metric: str) -> dict:
    """Per seed the validation metric at the best epoch and the figures of its test record
    (`figures_of`); mean and sd over seeds: "summary" for the metric, "test_summary" for each
    figure, named by its place in the test record (`auroc`, `operating/sensitivity`, ...)."""
    table = []
    for r in rows:
        figures = figures_of(tests.get(r["trial_id"]) or {})
        table.append(
            {
                "seed": r.get("config/seed"),
                "trial_id": r["trial_id"],
                "status": r["status"],
                "best_epoch": r.get("best_epoch"),
                metric: r.get(metric),
                "test": figures,
            }
        )
    names = list(dict.fromkeys(k for row in table for k in row["test"]))
    return {
        "source_trial": best["trial_id"],
        "source_value": best.get(metric),
        "metric": metric,
        "seeds": [row["seed"] for row in table],
        "config": {k: v for k, v in config_of(best).items() if k != "seed"},
        "rows": table,
        "summary": {metric: spread([row[metric] for row in table])},
        "test_summary": {k: spread([row["test"].get(k) for row in table]) for k in names},
    }


def figures_of(record: dict, prefix: str = "") -> dict[str, float]:
    """{name: value} of the figures in a trial's test record: every `{"value": x}` entry,
    nested ones as `outer/inner` (per-class tables and bookkeeping left out)."""
    out = {}
    for key, value in record.items():
        if key in SKIP or not isinstance(value, dict):
            continue
        if "value" in value:
            if is_finite(value["value"]):
                out[prefix + key] = float(value["value"])
        elif not prefix:  # one level down: e.g. `operating`
            out |= figures_of(value, f"{key}/")
    return out


def spread(values: list) -> dict:
    """{mean, sd, n} of the finite values (sd: sample standard deviation; None below 2)."""
    finite = [float(v) for v in values if is_finite(v)]
    if not finite:
        return {"mean": None, "sd": None, "n": 0}
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return {"mean": float(np.mean(finite)), "sd": sd, "n": len(finite)}


def merge_into_test_metrics(experiment_path: str, record: dict) -> None:
    """test_metrics.json with `record` under "repeats" (the file is made if the search wrote
    none)."""
    target = join_path(experiment_path, TEST_METRICS_FILE)
    current = read_json(target) or {}
    current["repeats"] = record
    text = json.dumps(to_jsonable(current), indent=2, allow_nan=False)
    write_text(target, text)
    val = record["summary"][record["metric"]]
    log.info(
        "repeats: %s %s +/- %s over %d seeds (the search's trial: %s)",
        record["metric"],
        _fmt(val["mean"]),
        _fmt(val["sd"]),
        val["n"],
        _fmt(record["source_value"]),
    )


def _fmt(value) -> str:
    return f"{value:.4f}" if is_finite(value) else "-"
