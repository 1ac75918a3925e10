"""`--repeat-best N` (search.driver.repeat): the best config retrained with N new seeds as Ray
trials, each evaluated on test; the table in test_metrics.json and the report."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from search.data.node_data import describe
from search.data.reader import SplitReader
from search.driver.plan import Plan
from search.driver.repeat import figures_of, repeat_best, repeat_seeds, spread
from search.driver.settings import AfterSettings
from search.experiment.tables import config_of, read_table
from search.reporting.folder import load_experiment
from search.reporting.repeats import repeats_section
from trainables.data import load_npz
from trainables.tasks import get_task


def test_seeds_are_new_and_the_spread_is_over_seeds():
    assert repeat_seeds(0, 3) == [1, 2, 3] and repeat_seeds(7, 1) == [8]
    assert spread([0.8, 0.9, None, float("nan")]) == {
        "mean": pytest.approx(0.85),
        "sd": pytest.approx(0.0707107),
        "n": 2,
    }
    assert spread([0.8]) == {"mean": 0.8, "sd": None, "n": 1}
    record = {
        "auroc": {"value": 0.9, "ci_low": 0.8},
        "n": 10,
        "per_class": {"a": {"value": 1}},
        "operating": {"sensitivity": {"value": 0.7}, "specificity": {"value": None}},
    }
    assert figures_of(record) == {"auroc": 0.9, "operating/sensitivity": 0.7}


@pytest.mark.slow
def test_repeat_best_retrains_the_best_config_with_new_seeds(
    tmp_path, ray_cluster, pneumonia_subset
):
    task = get_task("pneumonia")
    data_file = str(pneumonia_subset(train=192, val=96, test=96))
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "test_metrics.json").write_text(json.dumps({"best_trial": "t0", "trials": {}}))
    plan = Plan(
        name="exp",
        storage=str(tmp_path),
        trials=2,
        metric="val_auc",
        mode="max",
        launcher="function",
        seed=0,
        max_concurrent=2,
        task=task,
    )
    values = {
        "task": "pneumonia",
        "model": "simple_cnn",
        "weights": "none",
        "epochs": 1,
        "batch_size": 32,
        "seed": 0,
    }
    source = describe(data_file, task, 28)
    reader = SplitReader.resident(load_npz(data_file, task), source)  # as the search made it
    inputs = SimpleNamespace(task=task, values=values, reader=reader)
    best = {
        "trial_id": "t0",
        "status": "finished",
        "val_auc": 0.9,
        "checkpoint_path": "x",
        **{f"config/{k}": v for k, v in values.items()},
        "config/lr": 3e-3,
        "config/dropout": 0.1,
    }
    worse = {**best, "trial_id": "t1", "val_auc": 0.7, "config/lr": 1e-4}
    settings = AfterSettings(repeat_best=2, operating_point="youden", temperature_scaling=False)

    record = repeat_best(settings, plan, inputs, [worse, best])

    rows = read_table(str(exp / "repeats" / "trials.parquet"))
    assert sorted(r["config/seed"] for r in rows) == [1, 2]
    configs = [{k: v for k, v in config_of(r).items() if k != "seed"} for r in rows]
    assert configs[0] == configs[1] and configs[0]["lr"] == 3e-3  # only the seed differs
    assert all(r["status"] == "finished" and r["checkpoint_path"] for r in rows)
    assert rows[0]["val_auc"] != rows[1]["val_auc"]  # the seeds act
    on_disk = json.loads((exp / "test_metrics.json").read_text())
    assert on_disk["best_trial"] == "t0"  # the search's own record stays
    assert on_disk["repeats"] == json.loads(json.dumps(record))
    assert record["source_trial"] == "t0" and record["seeds"] == [1, 2]
    assert all(0 <= row["test"]["auroc"] <= 1 for row in record["rows"])
    summary = record["summary"]
    assert summary["val_auc"]["n"] == 2 and summary["val_auc"]["sd"] > 0
    assert record["test_summary"]["auroc"]["mean"] == pytest.approx(
        sum(row["test"]["auroc"] for row in record["rows"]) / 2
    )
    assert (exp / "repeats" / "test_metrics.json").is_file()
    html = repeats_section(load_experiment(exp))
    assert "Seed repeats" in html and "mean +/- sd" in html
    print(json.dumps(record["rows"], indent=1)[:3000])
