"""`--warm-start`: an earlier experiment folder, written by the search's own writers, is read
before Ray starts; its finished trials that fit the current space are told to a real Optuna
study on disk before the first suggestion, and counted; another task or metric is one line,
exit 2, before Ray starts. The slow test runs one tiny real search with two objectives and a
warm start.

    pytest tests/test_warm_start.py -q -m "not slow"    # seconds, no Ray
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.driver.options import parse_args
from search.driver.searcher import BestEpochOptuna, study_storage
from search.driver.warm_start import warm_start
from search.experiment.manifest import Manifest
from search.experiment.tables import PARETO, read_table, trial_row, write_tables
from trainables.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "spaces" / "pneumonia-cnn.yaml"
KNOBS = ["lr", "dropout", "class_weight_power", "aug_cutoff_epoch"]
FIXED = {"weights": "none", "image_size": 28, "batch_size": 64}
INSIDE = {"lr": 1e-3, "dropout": 0.1, "class_weight_power": 0.5, "aug_cutoff_epoch": 2}
# trial id: (config over INSIDE, per-epoch (val_auc, val_ece), errored)
EARLIER = {
    "e0": ({"model": "simple_cnn"}, [(0.80, 0.10), (0.90, 0.08)], False),
    "e1": ({"model": "deeper_cnn", "lr": 5e-3}, [(0.85, 0.20), (0.82, 0.10)], False),
    "e2": ({"model": "simple_cnn", "lr": 0.05}, [(0.70, 0.1), (0.75, 0.1)], False),  # lr out
    "e3": ({"model": "resnet18"}, [(0.60, 0.1), (0.65, 0.1)], False),  # not a choice now
    "e4": ({"model": "simple_cnn"}, [(0.50, 0.3)], False),  # stopped early: not finished
    "e5": ({"model": "simple_cnn"}, [(0.55, 0.3)], True),  # errored
    "e6": ({"model": "simple_cnn", "aug_cutoff_epoch": 6}, [(0.88, 0.05), (0.87, 0.04)], False),
}
EPOCHS = 2


def write_earlier(
    root: Path, task: str = "pneumonia", objectives=(("val_auc", "max"), ("val_ece", "min"))
) -> Path:
    """A finished search's folder as the search writes it (search.json, trials.parquet,
    history.parquet), for EARLIER's trials."""
    rows, history = [], []
    for trial_id, (config, curve, errored) in EARLIER.items():
        results = [
            {"epoch": e, "training_iteration": e, "val_auc": a, "val_ece": c}
            for e, (a, c) in enumerate(curve, start=1)
        ]
        full = {**FIXED, **INSIDE, **config, "epochs": EPOCHS}
        error = RuntimeError("loss is nan") if errored else None
        metric, mode = objectives[0]
        rows.append(
            trial_row(trial_id, results, full, error, str(root / trial_id), metric, mode, EPOCHS)
        )
        history += [{"trial_id": trial_id, **r} for r in results]
    root.mkdir(parents=True, exist_ok=True)
    write_tables(str(root), rows, history)
    t = get_task(task)
    Manifest(
        name=root.name,
        task=t.name,
        kind=t.kind,
        classes=list(t.classes),
        metric=objectives[0][0],
        mode=objectives[0][1],
        searcher="optuna",
        seed=0,
        trials=len(rows),
        epochs=EPOCHS,
        launcher="function",
        knobs=["model", *KNOBS],
        space={},
        started_at=time.time() - 60,
        finished_at=time.time(),
        extra={"objectives": [list(o) for o in objectives]} if len(objectives) > 1 else {},
    ).write(str(root))
    return root


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--task",
        "pneumonia",
        "--data-dir",
        "data",
        "--space",
        str(SPACE),
        "--storage",
        str(tmp_path / "runs"),
        *extra,
    ]


def _inputs(tmp_path, monkeypatch, *extra: str):
    """`steps.read_inputs` (what the pipeline runs before Ray) for a pneumonia search."""
    from search.driver import steps

    monkeypatch.chdir(ROOT)
    return steps.read_inputs(parse_args(_args(tmp_path, *extra)))


def test_finished_trials_that_fit_are_told_first_and_counted(tmp_path, monkeypatch):
    earlier = write_earlier(tmp_path / "earlier")
    objective = "val_auc:max,val_ece:min"
    inputs = _inputs(tmp_path, monkeypatch, "--objective", objective, "--warm-start", str(earlier))
    warm = inputs.warm
    assert warm.record() == {"from": str(earlier), "finished": 5, "carried": 3, "did_not_fit": 2}
    _, where = study_storage(str(tmp_path / "new"), "new")
    searcher = BestEpochOptuna(
        EPOCHS,
        storage=where,
        study_name="new",
        seed=0,
        metric=["val_auc", "val_ece"],
        mode=["max", "min"],
        earlier=list(warm.trials),
    )
    assert searcher.set_search_properties("val_auc", "max", inputs.values)
    config = searcher.suggest("first")  # the first suggestion comes after the carried trials
    assert set(config) == {"model", *KNOBS}
    study = optuna.load_study(study_name="new", storage=where)
    told = study.get_trials(deepcopy=False)
    assert [t.state for t in told] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING]
    # each at its best epoch by val_auc, as the earlier search's Optuna was told
    assert [t.values for t in told[:3]] == [[0.90, 0.08], [0.85, 0.20], [0.88, 0.05]]
    assert told[1].params == {**INSIDE, "model": "deeper_cnn", "lr": 5e-3}
    assert told[2].params["aug_cutoff_epoch"] == 6
    # resumed (the same study opened again): nothing is carried twice
    two = {"metric": ["val_auc", "val_ece"], "mode": ["max", "min"]}
    again = BestEpochOptuna(EPOCHS, storage=where, study_name="new", earlier=warm.trials, **two)
    again.set_search_properties("val_auc", "max", inputs.values)
    assert len(study.get_trials(deepcopy=False)) == 4


def test_a_knob_fixed_now_must_have_had_the_fixed_value(tmp_path, monkeypatch):
    earlier = write_earlier(tmp_path / "earlier")
    inputs = _inputs(tmp_path, monkeypatch, "--objective", "val_auc:max,val_ece:min")
    values = {**inputs.values, "model": "simple_cnn"}  # model fixed now: e1 (deeper) is out
    objectives = [("val_auc", "max"), ("val_ece", "min")]
    warm = warm_start(str(earlier), get_task("pneumonia"), objectives, values)
    assert (len(warm.trials), warm.did_not_fit) == (2, 3)
    assert all("model" not in t.params for t in warm.trials)


@pytest.fixture
def refuse(monkeypatch, capsys, tmp_path):
    """`refuse(*args) -> the error line`: search/run.py's entry function in this process; exit
    2, one line, and no Ray session in `RAY_TMPDIR` (the test's folder)."""
    from search.driver.pipeline import main

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))
    monkeypatch.chdir(ROOT)

    def run(*args: str) -> str:
        capsys.readouterr()
        code = main(_args(tmp_path, *args))
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
        assert not (tmp_path / "ray-tmp" / "ray").exists(), "a Ray session was started"
        assert "; " in lines[0], lines[0]
        return lines[0]

    return run


def test_another_task_metric_or_no_experiment_is_one_line_before_ray(refuse, tmp_path):
    blood = write_earlier(tmp_path / "blood-search", task="blood")
    line = refuse("--objective", "val_auc:max,val_ece:min", "--warm-start", str(blood))
    assert "task 'blood'" in line and "--task pneumonia" in line
    two = write_earlier(tmp_path / "two-objectives")
    line = refuse("--warm-start", str(two))  # this search: val_auc alone
    assert "val_auc:max,val_ece:min" in line and "this one val_auc:max" in line
    line = refuse("--warm-start", str(tmp_path / "nowhere"))
    assert "not an experiment folder" in line
    line = refuse("--warm-start", str(two), "--searcher", "random")
    assert "--searcher random" in line


@pytest.mark.slow
def test_a_real_search_with_two_objectives_and_a_warm_start(
    run_search, tmp_path, pneumonia_subset
):
    """search/run.py on the session's Ray head: 2 trials x 1 epoch, `--objective` and
    `--warm-start`: search.json's counts, optuna.db's carried trials first, trials.parquet's
    `pareto` column equal to Optuna's best_trials, and the report's front."""
    earlier = write_earlier(tmp_path / "earlier")
    data = pneumonia_subset(train=200, val=100, test=100).parent
    storage = tmp_path / "runs"
    flags = "--task pneumonia --trials 2 --epochs 1 --max-concurrent 2 --name warm"
    flags += " --objective val_auc:max,val_ece:min --explain-top 0 --test-top 1"
    paths = ["--data-dir", str(data), "--space", str(SPACE), "--storage", str(storage)]
    proc = run_search(*flags.split(), *paths, "--warm-start", str(earlier), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = storage / "warm"
    meta = json.loads((folder / "search.json").read_text())
    assert meta["objectives"] == [["val_auc", "max"], ["val_ece", "min"]]
    assert meta["warm_start"]["carried"] == 3 and meta["warm_start"]["did_not_fit"] == 2
    study = optuna.load_study(study_name="warm", storage=f"sqlite:///{folder / 'optuna.db'}")
    told = study.get_trials(deepcopy=False)
    assert len(told) == 5 and told[0].values == [0.90, 0.08]  # the carried ones first
    rows = read_table(str(folder / "trials.parquet"))
    assert len(rows) == 2 and any(r[PARETO] for r in rows)
    # the values in the table are the ones Optuna was told (it also holds the carried trials,
    # so its front is over more trials than this search's table)
    table = sorted((r["val_auc"], r["best/val_ece"]) for r in rows if r["status"] == "finished")
    assert table == sorted(tuple(t.values) for t in told[3:] if t.state == TrialState.COMPLETE)
    report = (folder / "report.html").read_text()
    assert "Pareto front" in report and "Warm start" in report
