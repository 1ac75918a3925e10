"""The driver's and the experiment folder's own pieces, without Ray: the command line, the plan,
the trials/history rows, attribution and test evaluation on real checkpoints, search.json, and
the exit code. Fast: the experiment folder trains a few tiny trials once per session."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from search.driver.checks import UserError, given
from search.driver.inputs import param_space
from search.driver.launch import trial_resources
from search.driver.options import parse_args
from search.driver.plan import DRIVER_CPU, Plan, resolve_launcher
from search.driver.progress import summarise
from search.driver.settings import (
    DataSettings,
    OutputSettings,
    SearchSettings,
    Settings,
    updated,
)
from search.driver.space import parse_space
from search.experiment import after
from search.experiment.manifest import Manifest
from search.experiment.tables import (
    ERRORED,
    FINISHED,
    HISTORY_FILE,
    STOPPED_EARLY,
    TRIAL_COLUMNS,
    TRIALS_FILE,
    config_of,
    read_table,
)
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, predict
from trainables.scores import best_of
from trainables.tasks import get_task


def _plan(**overrides) -> Plan:
    return Plan(
        **{
            "name": "x",
            "storage": "/tmp",
            "trials": 2,
            "metric": "val_auc",
            "mode": "max",
            **overrides,
        }
    )


def test_exit_code_only_fails_when_every_trial_failed():
    ok = {
        "trial_id": "a",
        "status": FINISHED,
        "val_auc": 0.9,
        "best_epoch": 1,
        "checkpoint_path": "p",
        "error": None,
    }
    bad = {"trial_id": "b", "status": ERRORED, "val_auc": None, "error": "boom"}
    assert summarise([ok, bad], _plan(), 1.0) == 0
    assert summarise([bad, {**bad, "trial_id": "c"}], _plan(), 1.0) == 1


def test_command_line_needs_a_task_or_resume(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--trials", "3"])
    assert "--task is required" in capsys.readouterr().err
    settings = parse_args(["--task", "blood", "--epochs", "3"])
    assert settings.argv == ("--task", "blood", "--epochs", "3")
    assert settings.resources.launcher == "auto" and settings.search.epochs == 3
    assert given(settings, "--epochs") and not given(settings, "--trials")


def test_every_flag_is_a_setting_with_the_settings_default(monkeypatch):
    from search.driver.options import build_parser, flag_defaults

    monkeypatch.delenv("MEDSWEEP_STORAGE", raising=False)
    parsed = vars(build_parser().parse_args([]))
    assert set(parsed) == {*flag_defaults(Settings()), "resume", "debug"}
    argv = ["--task", "blood"]
    assert parse_args(argv) == Settings(
        data=DataSettings(task="blood"), argv=tuple(argv), given=frozenset({"--task"})
    )


def test_settings_are_frozen_and_checked_where_they_are_built():
    settings = parse_args(["--task", "blood", "--name", "x", "--ig-baseline", "0.5"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.search.trials = 3
    assert settings.attribution.ig() == {"n_samples": 4, "steps": 16, "baseline": 0.5}
    moved = updated(settings, outputs={"storage": "/tmp/elsewhere"})
    assert moved.outputs == OutputSettings(name="x", storage="/tmp/elsewhere")
    assert settings.outputs.storage != "/tmp/elsewhere"  # the original is unchanged
    with pytest.raises(UserError, match="--batch-size 0 must be >= 1"):
        parse_args(["--task", "blood", "--batch-size", "0"])
    with pytest.raises(UserError, match="cannot take --trials"):
        parse_args(["--task", "blood", "--smoke-test", "--trials=3"])


def test_param_space_lays_the_command_line_over_the_space():
    space = parse_space(
        {"parameters": {"lr": {"min": 1e-4, "max": 1e-2}, "epochs": {"value": 8}}},
        get_task("blood"),
    )
    values = param_space(parse_args(["--task", "blood", "--epochs", "3", "--seed", "5"]), space)
    assert values["epochs"] == 3 and values["seed"] == 5 and "lr" in values
    smoke = param_space(parse_args(["--task", "blood", "--smoke-test"]), space)
    assert smoke["epochs"] == 1 and smoke["max_batches"] == 3
    with pytest.raises(ValueError, match="batch_size 0 must be >= 1"):
        param_space(Settings(search=SearchSettings(batch_size=0)), space)  # bypasses the check


def test_launcher_and_resources_follow_the_plan():
    assert resolve_launcher("auto", 1) == "function"
    assert resolve_launcher("auto", 2) == "train"
    assert trial_resources(_plan(launcher="train")) == {"cpu": DRIVER_CPU}
    assert trial_resources(_plan(launcher="function", folds=3)) == {"cpu": DRIVER_CPU}
    assert trial_resources(_plan(launcher="function", gpus_per_trial=0.5)) == {
        "cpu": 1.0,
        "gpu": 0.5,
    }
    with pytest.raises(ValueError, match="needs --launcher train"):
        _plan(launcher="function", workers_per_trial=2)
    with pytest.raises(ValueError, match="--folds 1"):
        _plan(folds=1)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel"])
def test_checkpoint_fixture_is_a_trained_checkpoint(make_checkpoint, kind):
    ckpt = load_checkpoint(make_checkpoint(kind, channels=1, image_size=16))
    assert ckpt["kind"] == kind and ckpt["epoch"] == 1 and ckpt["image_size"] == 16
    images = np.zeros((5, 16, 16), np.uint8)
    probs = predict(ckpt, model_from_checkpoint(ckpt), images)
    assert probs.shape == (5, 1 if kind == "binary" else len(ckpt["classes"]))


def test_experiment_tables_rows_and_checkpoints(experiment_dir):
    trials = read_table(str(experiment_dir / TRIALS_FILE))
    history = read_table(str(experiment_dir / HISTORY_FILE))
    assert [t["status"] for t in trials] == [FINISHED, STOPPED_EARLY, FINISHED, ERRORED]
    assert "training loss is nan" in trials[-1]["error"]
    assert len(history) == sum(t["epochs_run"] for t in trials)
    assert all(set(TRIAL_COLUMNS) <= set(t) for t in trials)
    for t in trials[:-1]:
        assert Path(t["checkpoint_path"]).parts[-2:] == (t["trial_id"], "checkpoint")
        ckpt = load_checkpoint(experiment_dir / t["trial_id"] / "checkpoint")
        assert ckpt["epoch"] == t["best_epoch"]
        assert ckpt["metrics"]["val_auc"] == pytest.approx(t["val_auc"])
        assert config_of(t)["lr"] == pytest.approx(ckpt["config"]["lr"])
        maps = experiment_dir / t["trial_id"] / after.ATTRIBUTION_DIR
        assert (maps / after.GRADCAM_PNG).is_file() and (maps / after.IG_PNG).is_file()
        assert 0.0 <= t["attr_focus"] <= 1.0


def test_experiment_test_metrics_are_the_best_trials(experiment_dir):
    trials = read_table(str(experiment_dir / TRIALS_FILE))
    best = best_of(trials, "val_auc", "max")
    recorded = json.loads((experiment_dir / after.TEST_METRICS_FILE).read_text())
    assert recorded["best_trial"] == best["trial_id"]
    with np.load(experiment_dir / best["trial_id"] / after.TEST_PREDICTIONS_FILE) as npz:
        assert len(npz["labels"]) == len(npz["probs"])
    m = Manifest.read(str(experiment_dir))
    assert m.finished and m.kind == "multiclass" and m.trials == len(trials)
    assert set(m.split_counts) == {"train", "val"}
    assert sum(m.split_counts["train"].values()) == 64


def test_focus_warnings_flag_the_outlier_only():
    flagged = after.focus_warnings({"a": 0.8, "b": 0.75, "c": 0.3, "d": float("nan")})
    assert flagged == {"a": False, "b": False, "c": True, "d": False}
    assert after.focus_warnings({"a": 0.1}) == {"a": False}


def test_the_command_line_choices_match_their_registries():
    """options.py keeps literal copies (so --help imports nothing heavy): they must match."""
    from search.data import folder_split
    from search.driver import options, plan
    from trainables import stream, tasks

    assert options.TASK_NAMES == tasks.TASK_NAMES
    assert options.SPLIT_CHOICES == folder_split.SPLIT_CHOICES
    assert (options.LAUNCHERS, options.SEARCHERS) == (plan.LAUNCHERS, plan.SEARCHERS)
    assert options.DATA_PATHS == stream.DATA_PATHS


def test_help_is_grouped_shows_defaults_and_imports_nothing_heavy():
    import subprocess
    import sys

    probe = (
        "import runpy, sys\n"
        "sys.argv = ['search/run.py', '--help']; sys.path.insert(0, 'search')\n"
        "try:\n    runpy.run_path('search/run.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'ray', 'medmnist') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120
    ).stdout
    assert "HEAVY []" in out
    for group in (
        "task and data:",
        "search:",
        "resources:",
        "outputs and after the search:",
        "explain (attribution maps):",
        "W&B:",
    ):
        assert group in out
    assert "(default: 20)" in out  # --trials


def test_manifest_status_and_files_from_before_it():
    m = Manifest(
        name="x",
        task="blood",
        kind="multiclass",
        classes=["a", "b"],
        metric="val_auc",
        mode="max",
        searcher="optuna",
        seed=0,
        trials=2,
        epochs=1,
        launcher="function",
        knobs=[],
        space={},
        started_at=1.0,
    )
    assert m.status == "running" and not m.finished
    old = {k: v for k, v in m.to_dict().items() if k != "status"}
    assert Manifest.from_dict({**old, "finished_at": 2.0}).finished
    assert Manifest.from_dict({**old, "status": "interrupted"}).status == "interrupted"
    with pytest.raises(ValueError, match="status"):
        Manifest.from_dict({**old, "status": "paused"})


def test_progress_estimates_the_time_left_from_epoch_times():
    from types import SimpleNamespace

    from search.driver.progress import Progress

    p = Progress(trials=4, epochs=5, max_concurrent=2, time_budget_s=None)
    p.setup()
    for trial in ("a", "b"):
        p.on_trial_result(
            1,
            [],
            SimpleNamespace(trial_id=trial),
            {"training_iteration": 1, "time_this_iter_s": 3.0},
        )
    assert p.remaining_s(p.started) == pytest.approx(18 * 3.0 / 2)
    assert "2 of 20 epochs" in p.line(p.started)
    assert p.line(p.started).startswith("progress [--------------------] 0%: ")
    assert "[#####---------------] 25%" in p.line(p.started + 9.0)  # 9 s of 9 + 27 s left
    p.time_budget_s = 10.0  # no new trial after the budget: at most one trial's epochs beyond
    assert p.remaining_s(p.started) == pytest.approx(10.0 + 5 * 3.0)


def test_requests_no_node_can_hold_are_refused():
    from search.driver.checks import UserError
    from search.driver.input_checks import check_cluster
    from search.driver.resources import ClusterView, NodeType

    cpu_only = ClusterView(local=True, nodes=({"CPU": 2.0},))
    check_cluster(_plan(), cpu_only)
    with pytest.raises(UserError, match="--gpus-per-trial 1: this Ray cluster has no GPU"):
        check_cluster(_plan(gpus_per_trial=1.0), cpu_only)
    with pytest.raises(UserError, match="more than any node"):
        check_cluster(_plan(cpus_per_worker=8.0), cpu_only)
    gpu_type = NodeType("gpu", {"CPU": 4.0, "GPU": 1.0}, max_workers=2)
    autoscaling = ClusterView(local=False, nodes=({"CPU": 2.0},), node_types=(gpu_type,))
    check_cluster(_plan(gpus_per_trial=1.0, cpus_per_worker=4.0), autoscaling)  # can be added


def test_interrupts_hand_the_first_signal_to_tune_and_record_it():
    """Real signals to this process: inside `fitting()` the first goes to the handler Tune
    installs for SIGUSR1 (a graceful stop); outside it, or a second one, KeyboardInterrupt."""
    import os
    import signal

    from search.driver.session import Interrupts, interrupted_code

    stops = []
    with Interrupts() as stop:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGTERM and interrupted_code(stop.signal) == 143
    with Interrupts() as stop, stop.fitting():
        signal.signal(signal.SIGUSR1, lambda sig, frame: stops.append(sig))  # as tune.run does
        os.kill(os.getpid(), signal.SIGINT)
        assert stops == [signal.SIGINT] and stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert interrupted_code(signal.SIGINT) == 130
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_slot_use_is_time_inside_trials_over_wall_time_and_slots():
    from search.driver.slots import slot_use

    trials = [{"wall_time_s": 100.0}, {"wall_time_s": 80.0}, {"wall_time_s": None}]
    assert slot_use(trials, 120.0, 2) == pytest.approx(180 / 240)
    assert slot_use(trials, 90.0, 2) == pytest.approx(1.0)
    assert slot_use(trials, None, 2) is None and slot_use([], 10.0, 1) == 0.0


def test_idle_slot_time_is_split_by_what_the_search_was_doing():
    """Two slots, search from t=1000 for 100 s. a: 1005-1050, b: 1008-1040, c: 1045-1080
    (started when b ended, 5 s later), d: 1052-1070; nothing left to start after 1052; the
    search phase ends at 1100 (results collected from 1080)."""
    from search.driver.slots import idle_split

    def epochs(trial, start, end):  # two epochs each, as Tune stamps them
        mid = (start + end) / 2
        return [
            {"trial_id": trial, "timestamp": mid, "time_total_s": mid - start},
            {"trial_id": trial, "timestamp": end, "time_total_s": end - start},
        ]

    history = [
        *epochs("a", 1005, 1050),
        *epochs("b", 1008, 1040),
        *epochs("c", 1045, 1080),
        *epochs("d", 1052, 1070),
    ]
    idle = idle_split(history, 1000.0, 100.0, 2)
    # starting: 1000-1005 two free (10), 1005-1008 one (3), 1040-1045 one (5), 1050-1052 one (2)
    # tail: 1070-1080 one free (10); collecting: 1080-1100 both (40)
    assert (idle.starting, idle.tail, idle.collecting) == (20.0, 10.0, 40.0)
    assert idle.record() == {"starting": 20.0, "tail": 10.0, "collecting": 40.0}
    assert "20 s starting trials, 10 s with no trial left to start" in idle.text()
    assert idle_split([], 1000.0, 100.0, 2) is None


def test_attribution_starts_in_the_tail_only_when_every_trial_is_explained():
    from search.driver.tail import tail_work

    assert tail_work(None, 6) and tail_work(6, 6) and tail_work(10, 6)
    assert not tail_work(3, 6) and not tail_work(0, 6)  # the best 3 are known at the end only
