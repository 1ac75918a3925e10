"""One definition per rule (issue 19): each test fails when a second, different answer appears.

Run: pytest tests/test_rules.py -q   (a few seconds; no Ray start)

Planned epochs, a trial's status and its best epoch are checked by asking every consumer the
same question; per-worker resources, atomic writes, data fingerprints and split names by
finding where the rule's code appears in search/ and trainables/.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from search.driver.plan import Plan
from search.driver.progress import Progress
from search.driver.searcher import BestEpochOptuna
from search.driver.space import load_space
from search.driver.tuner import build_searcher, scheduler_settings
from search.experiment.tables import ERRORED, FINISHED, STOPPED_EARLY, trial_row, trial_status
from trainables.config import TrainConfig, planned_epochs
from trainables.scores import best_index, best_of, better, improves
from trainables.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
CODE = [*(ROOT / "search").rglob("*.py"), *(ROOT / "trainables").rglob("*.py")]
STATE = {FINISHED: TrialState.COMPLETE, STOPPED_EARLY: TrialState.PRUNED, ERRORED: TrialState.FAIL}


def _where(pattern: str) -> list[str]:
    """The files of search/ and trainables/ whose code (comments and docstrings aside, roughly:
    lines not starting with # or inside quotes) matches `pattern`."""
    found = []
    for path in CODE:
        code = re.sub(r'"""[\s\S]*?"""', "", path.read_text())
        code = "\n".join(line.split("#")[0] for line in code.splitlines())
        if re.search(pattern, code):
            found.append(str(path.relative_to(ROOT)))
    return sorted(found)


def _space_without_epochs(tmp_path):
    text = (ROOT / "spaces" / "pneumonia-cnn.yaml").read_text()
    path = tmp_path / "no-epochs.yaml"
    path.write_text("\n".join(line for line in text.splitlines() if "epochs:" not in line))
    return load_space(path, get_task("pneumonia"))


def _rows(values: list[float]) -> list[dict]:
    return [
        {"epoch": e, "training_iteration": e, "val_auc": v, "checkpoint_dir_name": f"c{e}"}
        for e, v in enumerate(values, start=1)
    ]


def _searcher(epochs: int) -> BestEpochOptuna:
    searcher = BestEpochOptuna(epochs, seed=0)  # an in-memory study
    searcher.set_search_properties("val_auc", "max", {"lr": tune.loguniform(1e-4, 1e-2)})
    return searcher


def _tell(searcher: BestEpochOptuna, trial_id: str, values: list[float], error: bool) -> None:
    searcher.suggest(trial_id)
    rows = _rows(values)
    for row in rows[:-1]:
        searcher.on_trial_result(trial_id, row)
    searcher.on_trial_complete(trial_id, result=rows[-1] if rows else None, error=error)


def test_planned_epochs_of_a_space_without_epochs_are_trainconfigs_everywhere(tmp_path):
    """ASHA's max_t, the searcher, the progress line and the tables' status all plan
    TrainConfig.epochs for a space without `epochs` (issue 19: ASHA stopped them at 1)."""
    space = _space_without_epochs(tmp_path)
    assert "epochs" not in space.domains
    planned = TrainConfig.epochs
    assert planned_epochs(space.domains) == planned
    settings = scheduler_settings(space, planned_epochs(space.domains))
    assert settings["max_t"] == planned
    ASHAScheduler(**settings)  # what build_scheduler hands ASHA, accepted as it is
    plan = Plan(name="rules", storage=str(tmp_path), trials=2, metric="val_auc", mode="max")
    assert build_searcher(plan, space).searcher.epochs == planned
    line = Progress(2, planned_epochs(space.domains), 1).line(time.time())
    assert f"of {2 * planned} epochs" in line
    full, short = [0.5] * planned, [0.5] * (planned - 1)
    row = trial_row("t", _rows(full), {}, None, "t", "val_auc", "max", planned_epochs({}))
    assert row["status"] == FINISHED and row["epochs_run"] == planned
    row = trial_row("t", _rows(short), {}, None, "t", "val_auc", "max", planned_epochs({}))
    assert row["status"] == STOPPED_EARLY


@pytest.mark.parametrize(
    ("values", "error"),
    [([0.6, 0.9, 0.8], False), ([0.7], False), ([0.5, 0.6], True), ([0.6, 0.7, 0.95], False)],
)
def test_trial_status_is_one_rule_for_the_tables_and_optuna(values, error):
    """What trials.parquet calls a trial is what Optuna is told (a finite score given)."""
    searcher = _searcher(epochs=3)
    _tell(searcher, "t", values, error)
    (trial,) = searcher.study.get_trials()
    raised = RuntimeError("boom") if error else None
    row = trial_row("t", _rows(values), {}, raised, "t", "val_auc", "max", 3)
    assert row["status"] == trial_status(len(values), 3, error)
    assert trial.state == STATE[row["status"]]
    if row["status"] == FINISHED:
        assert trial.value == row["val_auc"]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_best_epoch_on_a_tie_is_the_earliest_everywhere(mode):
    values = [0.7, 0.9, 0.9, 0.8] if mode == "max" else [0.7, 0.2, 0.2, 0.3]
    assert best_index(values, mode) == 1
    assert best_index([math.nan, *values], mode) == 2
    assert best_index([math.nan, None], mode) is None
    rows = _rows(values)
    row = trial_row("t", rows, {}, None, "t", "val_auc", mode, 4)
    assert row["best_epoch"] == 2
    assert best_of(rows, "val_auc", mode)["epoch"] == 2
    running = None
    for i, value in enumerate(values):  # the rule train_loop and the folds keep a best by
        if improves(value, running, mode):
            running, at = value, i
    assert at == 1 and better(values[1], values[2], mode) is values[1]


def test_per_worker_resources_have_one_definition():
    """What a worker holds is `search.driver.plan.worker_request`: no other file divides the
    trial's GPUs among its workers."""
    assert _where(r"gpus_per_trial\s*/") == ["search/driver/plan.py"]


def test_atomic_writes_have_one_implementation():
    assert _where(r"os\.(replace|rename)\(") == ["trainables/files.py"]
    assert _where(r"mkstemp\(|\.tmp[\"']") == ["trainables/files.py"]


def test_data_fingerprints_have_one_home():
    assert _where(r"\bhashlib\b|\.CRC\b") == ["search/data/fingerprint.py"]


def test_split_names_have_one_definition():
    assert _where(r"(?m)^\s*[A-Z_]*SPLITS\s*=") == ["trainables/data.py"]
    assert _where(r"POOLED\s*=") == []


@pytest.mark.slow
def test_ray_keeps_the_checkpoint_of_the_earliest_tied_best_epoch(ray_cluster, tmp_path):
    """Ray's checkpoint manager, ranking by checkpoint_score, keeps the epoch the tables name."""
    from search.driver.launch import checkpoint_config

    # defined here, so that Ray's workers (which cannot import test modules) get it by value
    def _tied_trainable(config: dict) -> None:
        """Reports the epochs' scores as train_loop does, a checkpoint every epoch."""
        import tempfile

        from trainables.scores import CHECKPOINT_SCORE, checkpoint_score

        best = None
        for epoch, value in enumerate(config["values"], start=1):
            improved = improves(value, best, config["mode"])
            best = value if improved else best
            result = {"epoch": epoch, "val_auc": value}
            result[CHECKPOINT_SCORE] = checkpoint_score(value, improved, config["mode"])
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "epoch.txt").write_text(str(epoch))
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))

    values = [0.7, 0.9, 0.9, 0.8]
    plan = Plan(name="tie", storage=str(tmp_path), trials=1, metric="val_auc", mode="max")
    tuner = tune.Tuner(
        tune.with_resources(_tied_trainable, {"cpu": 0.01}),
        param_space={"values": values, "mode": "max"},
        run_config=tune.RunConfig(
            name="tie",
            storage_path=str(tmp_path),
            checkpoint_config=checkpoint_config(plan, tune.CheckpointConfig),
            verbose=0,
        ),
    )
    result = tuner.fit()[0]
    kept = sorted(p.name for p in Path(result.path).glob("checkpoint_*"))
    assert len(kept) == 2, kept  # the best and the latest
    best = result.get_best_checkpoint("checkpoint_score", "max")
    with best.as_directory() as folder:
        assert Path(folder, "epoch.txt").read_text() == "2"
    row = trial_row("t", _rows(values), {}, None, "t", "val_auc", "max", 4)
    assert row["best_epoch"] == 2


def test_trials_rank_their_checkpoints_by_the_searched_metric(tmp_path):
    """A space's `metric:` (or --objective's first) is what each trial keeps its best
    checkpoint by: the task record the trials get carries it. With the task's default
    (val_auc, max) a val_loss search (min) kept the epoch with the worst val_auc."""
    task = get_task("pneumonia")
    plan = Plan(
        name="r", storage=str(tmp_path), trials=2, metric="val_loss", mode="min", task=task
    )
    assert (plan.task.metric, plan.task.mode) == ("val_loss", "min")
    assert dataclasses.replace(plan, trials=3).task.metric == "val_loss"
    same = Plan(name="r", storage=str(tmp_path), trials=2, metric="val_auc", mode="max", task=task)
    assert same.task is task
