"""Several objectives (`--objective`): the searcher tells a real Optuna study on disk every
objective at each trial's best epoch by the first, trials.parquet's `pareto` column is Optuna's
own `best_trials`, the report draws the front, and a bad `--objective` is one line, exit 2,
before Ray starts.

    pytest tests/test_objectives.py -q      # a few seconds, no Ray
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from search.driver.objectives import check_objectives, parse_objectives, reported_metrics
from search.driver.searcher import BestEpochOptuna, study_storage
from search.experiment.manifest import Manifest
from search.experiment.tables import (
    PARETO,
    mark_pareto,
    pareto_flags,
    read_table,
    trial_row,
    write_tables,
)
from trainables.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = [("val_auc", "max"), ("val_ece", "min")]
EPOCHS = 3
# (val_auc, val_ece) per epoch; None as the last entry: the trial errored there.
CURVES = {
    "t0": [(0.70, 0.10), (0.80, 0.20), (0.75, 0.05)],  # best auc at epoch 2: ece 0.20 there
    "t1": [(0.90, 0.30), (0.85, 0.01), (0.90, 0.02)],  # tie at 0.90: epoch 1 (ece 0.30)
    "t2": [(0.60, 0.05), (0.65, 0.04), (0.66, 0.03)],  # front: low ece
    "t3": [(0.50, 0.50), (0.55, 0.45), (0.58, 0.40)],  # dominated
    "t4": [(0.80, 0.20), (0.80, 0.20), (0.79, 0.30)],  # the same point as t0: both on it
    "t5": [(0.99, 0.00)],  # stopped early by ASHA: never on the front
    "t6": [(0.95, 0.01), None],  # errored
    "t7": [(0.66, 0.03), (0.66, 0.03), (0.60, 0.02)],  # the same point as t2
}


def _results(curve) -> list[dict]:
    return [
        {"epoch": e, "training_iteration": e, "val_auc": p[0], "val_ece": p[1]}
        for e, p in enumerate(curve, start=1)
        if p is not None
    ]


def _search(tmp_path: Path) -> optuna.Study:
    """Feed CURVES through the searcher as Tune does (the stopped trial's last result only
    with its completion); the study, loaded again from disk."""
    _, where = study_storage(str(tmp_path), "mo")
    searcher = BestEpochOptuna(
        EPOCHS,
        storage=where,
        study_name="mo",
        seed=0,
        metric=[m for m, _ in OBJECTIVES],
        mode=[d for _, d in OBJECTIVES],
    )
    space = {"lr": tune.loguniform(1e-4, 1e-2)}
    assert searcher.set_search_properties("val_auc", "max", space)  # Tune hands the first
    assert searcher.metric == ["val_auc", "val_ece"]  # the others stay
    for trial_id, curve in CURVES.items():
        searcher.suggest(trial_id)
        results = _results(curve)
        stopped = len(curve) < EPOCHS
        for r in results if not stopped else results[:-1]:
            searcher.on_trial_result(trial_id, r)
        error = curve[-1] is None
        searcher.on_trial_complete(trial_id, None if error else results[-1], error=error)
    return optuna.load_study(study_name="mo", storage=where)


def _rows() -> list[dict]:
    """trials.parquet's rows for CURVES, by the writer the search uses."""
    rows = []
    for trial_id, curve in CURVES.items():
        error = RuntimeError("boom") if curve[-1] is None else None
        rows.append(
            trial_row(trial_id, _results(curve), {}, error, f"/x/{trial_id}", "val_auc", "max", 3)
        )
    return rows


def test_two_objectives_values_and_pareto_set_match_optunas_best_trials(tmp_path):
    study = _search(tmp_path)
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    trials = study.get_trials(deepcopy=False)
    ids = list(CURVES)
    states = {ids[t.number]: t.state for t in trials}
    assert states["t5"] == TrialState.PRUNED and states["t6"] == TrialState.FAIL
    values = {ids[t.number]: t.values for t in trials if t.state == TrialState.COMPLETE}
    # each objective at the best epoch by the FIRST (ties: the earliest), not each one's best
    assert values == {
        "t0": [0.80, 0.20],
        "t1": [0.90, 0.30],
        "t2": [0.66, 0.03],
        "t3": [0.58, 0.40],
        "t4": [0.80, 0.20],
        "t7": [0.66, 0.03],
    }
    rows = _rows()
    mark_pareto(rows, OBJECTIVES)
    write_tables(str(tmp_path), rows, [])
    table = read_table(str(tmp_path / "trials.parquet"))
    marked = {r["trial_id"] for r in table if r[PARETO]}
    optunas = {ids[t.number] for t in study.best_trials}
    assert marked == optunas == {"t0", "t1", "t2", "t4", "t7"}
    for row in table:  # the table's values are the ones Optuna was told
        if row["trial_id"] in values:
            assert [row["val_auc"], row["best/val_ece"]] == values[row["trial_id"]]


def test_pareto_flags_against_optuna_on_random_points(tmp_path):
    """Many random points with ties, three objectives, mixed modes: the same set as Optuna."""
    import random

    rng = random.Random(0)
    modes = ["max", "min", "max"]
    directions = ["maximize" if m == "max" else "minimize" for m in modes]
    points = [[rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in modes] for _ in range(60)]
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    study = optuna.create_study(directions=directions, storage=storage, study_name="p")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for p in points:
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, values=p))
    best = {t.number for t in optuna.load_study(study_name="p", storage=storage).best_trials}
    flags = pareto_flags(points, modes)
    assert {i for i, f in enumerate(flags) if f} == best
    assert 0 < len(best) < len(points)


def test_one_objective_gets_no_pareto_column_and_tells_one_value(tmp_path):
    rows = _rows()
    mark_pareto(rows, OBJECTIVES[:1])
    assert all(PARETO not in r for r in rows)
    _, where = study_storage(str(tmp_path), "one")
    searcher = BestEpochOptuna(EPOCHS, storage=where, study_name="one", seed=0)
    searcher.set_search_properties("val_auc", "max", {"lr": tune.uniform(0, 1)})
    searcher.suggest("a")
    for r in _results(CURVES["t1"]):
        searcher.on_trial_result("a", r)
    searcher.on_trial_complete("a", _results(CURVES["t1"])[-1])
    (trial,) = optuna.load_study(study_name="one", storage=where).get_trials()
    assert trial.value == 0.90 and trial.intermediate_values == {1: 0.9, 2: 0.85, 3: 0.9}


def test_parse_and_check_objectives():
    assert parse_objectives("val_auc:max, val_ece:min") == tuple(OBJECTIVES)
    assert parse_objectives(None) == ()
    for bad, says in (
        ("val_auc", "METRIC:max"),
        ("val_auc:up", "METRIC:max"),
        ("val_auc:max,val_auc:max", "twice"),
        (":max", "METRIC:max"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_objectives(bad)
    pneumonia, segfolder = get_task("pneumonia"), get_task("segfolder")
    assert "val_ece" in reported_metrics(pneumonia)
    assert "val_ece" not in reported_metrics(segfolder)
    check_objectives(tuple(OBJECTIVES), pneumonia, "optuna")
    check_objectives((("val_dice", "max"), ("val_loss", "min")), segfolder, "optuna")
    for objectives, task, searcher, says in (
        ((("val_sensitivity", "max"),), pneumonia, "optuna", "not a figure binary trials"),
        ((("val_auc", "max"),), segfolder, "optuna", "not a figure segmentation"),
        ((("val_ece", "max"),), pneumonia, "optuna", "wrong way; pass val_ece:min"),
        (tuple(OBJECTIVES), pneumonia, "random", "--searcher random"),
    ):
        with pytest.raises(ValueError, match=says):
            check_objectives(objectives, task, searcher)


def test_trials_report_val_ece_every_epoch(synthetic_arrays):
    """The figure --objective val_ece:min optimises is in every epoch's result."""
    import torch

    from trainables.train import Placement, train_loop

    arrays = synthetic_arrays("binary", 2, 1, n=32)
    results = []
    config = {"task": "pneumonia", "model": "simple_cnn", "weights": "none", "epochs": 2}
    cpu = Placement(device=torch.device("cpu"))
    train_loop(config, lambda metrics, _: results.append(metrics), arrays, placement=cpu)
    assert [r["epoch"] for r in results] == [1, 2]
    assert all(0.0 <= r["val_ece"] <= 1.0 and math.isfinite(r["val_ece"]) for r in results)


@pytest.fixture
def refuse(monkeypatch, capsys, tmp_path):
    """`refuse(*args) -> (code, stderr)`: search/run.py's entry function in this process on the
    pneumonia sample, `RAY_TMPDIR` in the test's folder (no Ray session may appear there)."""
    from search.driver.pipeline import main

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))
    monkeypatch.chdir(ROOT)
    base = ["--task", "pneumonia", "--data-dir", "data", "--space", "spaces/pneumonia-cnn.yaml"]

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main([*base, "--storage", str(tmp_path / "runs"), *args])
        err = capsys.readouterr().err
        assert not (tmp_path / "ray-tmp" / "ray").exists(), "a Ray session was started"
        return code, err

    return run


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "; " in lines[0], lines[0]
    return lines[0]


def test_an_unknown_metric_in_objective_is_one_line_and_exit_2_before_ray(refuse):
    code, err = refuse("--objective", "val_auc:max,val_sensitivity:max")
    assert code == 2
    line = _one_line(err)
    assert "val_sensitivity" in line and "val_ece" in line  # the bad one, and the choices
    code, err = refuse("--objective", "val_auc:max,val_ece:min", "--searcher", "random")
    assert code == 2 and "--searcher random" in _one_line(err)


def test_search_json_records_the_objectives(tmp_path):
    """`search_record` is what search.json's extra gets: nothing without the flags."""
    from search.driver.plan import Plan
    from search.driver.warm_start import search_record

    plan = Plan("n", str(tmp_path), 2, "val_auc", "max", objectives=tuple(OBJECTIVES))
    assert search_record(plan, None) == {"objectives": [list(o) for o in OBJECTIVES]}
    assert search_record(Plan("n", str(tmp_path), 2, "val_auc", "max"), None) == {}
    assert plan.all_objectives == OBJECTIVES


def test_the_report_draws_the_front_and_marks_the_trials(experiment_dir):
    """A report of a two-objective experiment folder: the Pareto section, ◆ on Pareto trials."""
    from search.reporting.report import build_report

    rows = read_table(str(experiment_dir / "trials.parquet"))
    manifest = Manifest.read(str(experiment_dir))
    objectives = [(manifest.metric, manifest.mode), ("val_loss", "min")]
    mark_pareto(rows, objectives)
    history = read_table(str(experiment_dir / "history.parquet"))
    write_tables(str(experiment_dir), rows, history)
    manifest.extra["objectives"] = [list(o) for o in objectives]
    manifest.write(str(experiment_dir))
    text = Path(build_report(experiment_dir)).read_text()
    front = [r["trial_id"] for r in rows if r[PARETO]]
    assert front and "Pareto front" in text and "could not be built" not in text
    for trial_id in front:
        assert f"{trial_id} ◆" in text
