"""W&B's sweep engine as a Ray Tune searcher: space, learning, seeding, restore, schema.

Run: pytest tests/test_wandb_engine.py -q   (about 20 s on 2 cores; one Ray start)
"""

import math
import pickle
import random

import numpy as np
import pytest
import yaml
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from search.tracking.engine import WandbSweepSearcher
from search.tracking.schema import validate_sweep_config

SPACE = yaml.safe_load(
    """
program: search/wandb_trial.py
method: bayes
metric: {name: val_auc, goal: maximize}
parameters:
  lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}
  dropout: {distribution: uniform, min: 0.0, max: 0.5}
  class_weight_power: {distribution: uniform, min: 0.0, max: 1.0}
  aug_cutoff_epoch: {distribution: int_uniform, min: 0, max: 10}
  unfreeze_epoch: {distribution: int_uniform, min: 0, max: 4}
  optimizer: {values: [adamw, sgd]}
  model: {value: resnet18}
  epochs: {value: 10}
early_terminate: {type: hyperband, min_iter: 2, eta: 3}
"""
)
LR_ONLY = {**SPACE, "parameters": {"lr": SPACE["parameters"]["lr"], "model": {"value": "x"}}}


def objective(config: dict) -> float:
    """Best at lr = 10**-2.5, whatever the other knobs."""
    return -((math.log10(config["lr"]) + 2.5) ** 2)


def assert_in_space(config: dict) -> None:
    assert 1e-4 <= config["lr"] <= 1e-2
    assert 0.0 <= config["dropout"] <= 0.5
    assert 0.0 <= config["class_weight_power"] <= 1.0
    assert type(config["aug_cutoff_epoch"]) is int and 0 <= config["aug_cutoff_epoch"] <= 10
    assert type(config["unfreeze_epoch"]) is int and 0 <= config["unfreeze_epoch"] <= 4
    assert config["optimizer"] in ("adamw", "sgd")
    assert config["model"] == "resnet18" and config["epochs"] == 10


def drive(searcher: Searcher, n: int, start: int = 0) -> list[dict]:
    """Suggest n trials one after another, each finishing with the objective."""
    configs = []
    for i in range(start, start + n):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_result(f"t{i}", {"val_auc": objective(config) - 1, "epoch": 0})
        searcher.on_trial_complete(f"t{i}", {"val_auc": objective(config), "epoch": 1})
        configs.append(config)
    return configs


@pytest.mark.parametrize("method", ["bayes", "random"])
def test_proposals_lie_in_the_space(method):
    searcher = WandbSweepSearcher(SPACE, method=method, seed=1)
    configs = drive(searcher, 6)
    for config in configs:
        assert set(config) == set(SPACE["parameters"])
        assert_in_space(config)
    assert len({c["lr"] for c in configs}) == 6


def test_sweep_runs_look_like_wandb_runs():
    searcher = WandbSweepSearcher(SPACE, seed=0)
    (first,) = drive(searcher, 1)
    searcher.suggest("crashed")
    tune_keys = {"done": False, "training_iteration": 1, "time_total_s": 0.1, "config": {}}
    searcher.on_trial_result("crashed", {"val_auc": -0.5, "epoch": 0, **tune_keys})
    searcher.on_trial_complete("crashed", None, error=True)
    searcher.suggest("running")
    runs = {run.name: run for run in searcher.runs}
    assert [runs[name].state for name in ("t0", "crashed", "running")] == [
        "finished",
        "failed",
        "running",
    ]
    assert runs["t0"].config == {name: {"value": value} for name, value in first.items()}
    score = objective(first)
    assert runs["t0"].history == [
        {"val_auc": score - 1, "epoch": 0, "_step": 0},
        {"val_auc": score, "epoch": 1, "_step": 1},
    ]
    assert runs["t0"].summary_metrics == {"val_auc": score, "epoch": 1, "best_epoch": 1}
    assert runs["crashed"].summary_metrics == {"val_auc": -0.5, "epoch": 0}
    assert runs["running"].history == [] and runs["running"].summary_metrics == {}


def _stopped_run(searcher: Searcher, trial_id: str, curve: list[float], stop: int) -> None:
    """A trial as Tune feeds it when ASHA stops it after epoch `stop` (1-based): that epoch's
    result reaches on_trial_complete only."""
    searcher.suggest(trial_id)
    for epoch, value in enumerate(curve[: stop - 1], start=1):
        searcher.on_trial_result(trial_id, {"val_auc": value, "epoch": epoch, "lr_now": 0.1})
    searcher.on_trial_complete(
        trial_id, {"val_auc": curve[stop - 1], "epoch": stop, "lr_now": 0.1}
    )


def test_summary_holds_the_best_epoch_as_a_real_sweep_run_does(tmp_path):
    """The engine's run summary: the metric's best value over every epoch (the stopping one
    included) and its epoch, the last values of the rest: what search/wandb_trial.py leaves
    in a real W&B run (BestKeeper, here on a real offline run fed the same epochs)."""
    import wandb

    from search.driver.agent import BestKeeper

    curve = [0.70, 0.90, 0.80]
    searcher = WandbSweepSearcher(SPACE, seed=0)
    _stopped_run(searcher, "peaked", curve, stop=3)
    _stopped_run(searcher, "last_best", [0.5, 0.6, 0.95], stop=3)  # the stopping epoch is best
    runs = {run.name: run for run in searcher.runs}
    assert [row["epoch"] for row in runs["peaked"].history] == [1, 2, 3]
    assert runs["peaked"].summary_metrics == {
        "val_auc": 0.90,
        "epoch": 3,
        "lr_now": 0.1,
        "best_epoch": 2,
    }
    assert runs["last_best"].summary_metrics["val_auc"] == 0.95
    with wandb.init(project="t", dir=str(tmp_path), mode="offline") as run:
        keeper = BestKeeper(run, "val_auc", "max")
        for epoch, value in enumerate(curve, start=1):
            keeper({"val_auc": value, "epoch": epoch}, None)
    assert (keeper.best, keeper.best_epoch) == (0.90, 2)
    summary = runs["peaked"].summary_metrics
    assert (summary["val_auc"], summary["best_epoch"]) == (keeper.best, keeper.best_epoch)


def test_summary_best_honours_mode_min():
    config = {**SPACE, "metric": {"name": "val_loss", "goal": "minimize"}}
    searcher = WandbSweepSearcher(config, seed=0)
    searcher.suggest("t")
    for epoch, loss in enumerate([0.9, 0.3, 0.5], start=1):
        searcher.on_trial_result("t", {"val_loss": loss, "epoch": epoch})
    searcher.on_trial_complete("t", {"val_loss": 0.5, "epoch": 3})  # the last, seen already
    (run,) = searcher.runs
    assert len(run.history) == 3
    assert run.summary_metrics == {"val_loss": 0.3, "epoch": 3, "best_epoch": 2}


def test_bayes_moves_toward_the_optimum():
    searcher = WandbSweepSearcher(LR_ONLY, seed=0)
    distance = [abs(math.log10(c["lr"]) + 2.5) for c in drive(searcher, 12)]
    first, last = np.mean(distance[:4]), np.mean(distance[-4:])
    assert last < first and last < 0.25, distance
    info = [run.search_info for run in searcher.runs]
    assert np.isnan(info[0]["predicted_value_std_dev"])  # too few results: a random point
    assert all(np.isfinite(i["predicted_value_std_dev"]) for i in info[4:])  # the GP's choice


def test_same_seed_same_sequence_and_global_rngs_untouched():
    np.random.seed(123)
    random.seed(123)
    expected = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    runs = {
        (method, seed): drive(WandbSweepSearcher(SPACE, method=method, seed=seed), 4)
        for method in ("bayes", "random")
        for seed in (0, 1)
    }
    assert (np.random.rand(), random.random()) == expected
    for method in ("bayes", "random"):
        again = drive(WandbSweepSearcher(SPACE, method=method, seed=0), 4)
        assert again == runs[(method, 0)]
        assert again != runs[(method, 1)]


def test_save_restore_continues_the_sequence(tmp_path):
    straight = WandbSweepSearcher(SPACE, seed=7)
    expected = drive(straight, 6)

    first = WandbSweepSearcher(SPACE, seed=7)
    head = drive(first, 3)
    first.save(str(tmp_path / "state.pkl"))
    resumed = WandbSweepSearcher(SPACE, seed=99)  # the saved state wins, as in Tuner.restore
    resumed.restore(str(tmp_path / "state.pkl"))
    assert head + drive(resumed, 3, start=3) == expected
    copy = pickle.loads(pickle.dumps(resumed))  # Tune also pickles the searcher itself
    assert [(r.name, r.config, r.history) for r in copy.runs] == [
        (r.name, r.config, r.history) for r in resumed.runs
    ]


def test_grid_ends_with_finished():
    space = {
        "method": "grid",
        "parameters": {
            "unfreeze_epoch": {"distribution": "int_uniform", "min": 0, "max": 1},
            "optimizer": {"values": ["adamw", "sgd"]},
            "epochs": {"value": 3},
        },
    }
    searcher = WandbSweepSearcher(space)
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert {(c["unfreeze_epoch"], c["optimizer"], c["epochs"]) for c in configs} == {
        (u, o, 3) for u in (0, 1) for o in ("adamw", "sgd")
    }
    assert searcher.suggest("t4") == Searcher.FINISHED


@pytest.mark.parametrize(
    "metric, scores",
    [
        ({"name": "val_auc", "goal": "maximize", "target": 0.9}, [0.5, float("nan"), 0.95]),
        ({"name": "val_loss", "goal": "minimize", "target": 0.2}, [0.5, float("nan"), 0.1]),
    ],
    ids=["maximize", "minimize"],
)
def test_metric_target_ends_the_search_once_a_finished_run_reaches_it(metric, scores):
    searcher = WandbSweepSearcher({**SPACE, "metric": metric}, method="random", seed=0)
    for i, score in enumerate(scores):
        assert searcher.suggest(f"t{i}") not in (None, Searcher.FINISHED), (i, score)
        searcher.on_trial_complete(f"t{i}", {metric["name"]: score})
    assert searcher.suggest("after") == Searcher.FINISHED


def test_metric_comes_from_the_sweep():
    searcher = WandbSweepSearcher(SPACE, method="random")
    assert (searcher.metric, searcher.mode) == ("val_auc", "max")
    assert searcher.set_search_properties("val_auc", "max", {"fixed": 1})
    assert not searcher.set_search_properties(None, None, {"lr": tune.loguniform(1e-4, 1e-2)})
    with pytest.raises(ValueError, match="metric.name='val_auc'"):
        searcher.set_search_properties("val_loss", "min", {})
    with pytest.raises(ValueError, match="goal='maximize'"):
        WandbSweepSearcher(SPACE, metric="val_auc", mode="min")
    no_metric = {k: v for k, v in SPACE.items() if k not in ("metric", "early_terminate")}
    adopted = WandbSweepSearcher(no_metric, method="bayes")
    adopted.set_search_properties("val_loss", "min", {})
    assert adopted.sweep_config["metric"]["goal"] == "minimize"
    with pytest.raises(ValueError, match="bayes needs a metric"):
        WandbSweepSearcher(no_metric, method="bayes").suggest("t0")


@pytest.mark.parametrize(
    "spec, says, schema_error",
    [
        (
            {"distribution": "not_a_distribution", "min": 0.0, "max": 0.5},
            r"parameters\.dropout\.distribution: 'not_a_distribution' is not one of \[",
            True,
        ),
        (
            yaml.safe_load("{distribution: uniform, min: 1e-4, max: 0.5}"),  # YAML: a string
            r"parameters\.dropout\.min: '1e-4' is not of type 'number'",
            True,
        ),
        (
            {"distribution": "uniform", "min": 0.5, "max": 0.1},
            r"parameters\.dropout: dropout: min 0\.5 is not less than max 0\.1",
            False,  # a check sweeps makes beyond the JSON schema
        ),
    ],
    ids=["unknown distribution", "string bound", "min above max"],
)
def test_validate_rejects_malformed_parameters(spec, says, schema_error):
    bad = {**SPACE, "parameters": {**SPACE["parameters"], "dropout": spec}}
    with pytest.raises(ValueError, match=says) as caught:
        validate_sweep_config(bad)
    schema_says = "is not valid under any of the given schemas"
    assert (schema_says in str(caught.value)) == schema_error
    with pytest.raises(ValueError, match="invalid W&B sweep config"):
        WandbSweepSearcher(bad)


def test_validate_keeps_known_keys_and_rejects_unknown():
    filled = validate_sweep_config(SPACE)
    assert filled["parameters"]["model"]["distribution"] == "constant"
    assert filled["program"] == SPACE["program"]
    with pytest.raises(ValueError, match=r"<top level>: Additional properties .*'medsweep'"):
        validate_sweep_config({**SPACE, "medsweep": {"gpus": 1}})
    with pytest.raises(ValueError, match=r"metric\.goal: 'maximise' is not one of"):
        validate_sweep_config({**SPACE, "metric": {"name": "val_auc", "goal": "maximise"}})


@pytest.mark.slow
def test_tuner_with_concurrency_limiter(ray_cluster, tmp_path):
    def report_curve(config: dict) -> None:  # local, so Ray ships it by value to the workers
        for epoch in range(2):
            score = -((math.log10(config["lr"]) + 2.5) ** 2) - 0.1 * (1 - epoch)
            tune.report({"val_auc": score, "epoch": epoch})

    searcher = ConcurrencyLimiter(WandbSweepSearcher(SPACE, seed=0), max_concurrent=2)
    tuner = tune.Tuner(
        tune.with_resources(report_curve, {"cpu": 0.5}),
        param_space={"fixed": 7},
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=4, metric="val_auc", mode="max"
        ),
        run_config=tune.RunConfig(name="wandb_engine", storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    assert results.num_errors == 0 and len(results) == 4
    for result in results:
        assert result.metrics["epoch"] == 1
        assert result.config["fixed"] == 7
        assert_in_space(result.config)

    saved = WandbSweepSearcher(SPACE)
    saved.restore_from_dir(str(tmp_path / "wandb_engine"))
    assert [run.state for run in saved.runs] == ["finished"] * 4
    assert all(len(run.history) == 2 for run in saved.runs)

    path = str(tmp_path / "wandb_engine")
    restored = tune.Tuner.restore(path, tune.with_resources(report_curve, {"cpu": 0.5}))
    assert restored.fit().num_errors == 0  # the searcher comes back from its saved state
