"""The whole search as a user runs it: `search/run.py` in a subprocess, real Ray, real files."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from sklearn.metrics import roc_auc_score

from search.experiment.tables import read_table
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, predict
from trainables.config import TrainConfig, planned_epochs
from trainables.scores import is_finite
from trainables.tasks import get_task

pytestmark = pytest.mark.slow


def test_search_end_to_end_under_ray_train(tmp_path, make_npz, write_space, run_search):
    """Default launcher (a TorchTrainer per trial): exit 0, tables, loadable checkpoints."""
    task = get_task("blood")
    data = make_npz(task, n=96)
    space = write_space(
        tmp_path / "space.yaml",
        lr={"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-2},
        dropout={"min": 0.0, "max": 0.3},
    )
    proc = run_search(
        "--task",
        "blood",
        "--data-dir",
        str(data.parent),
        "--space",
        space,
        "--trials",
        "2",
        "--epochs",
        "2",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "it",
        "--launcher",
        "train",
        "--explain-top",
        "0",  # attribution: the real-data search below
    )
    assert proc.returncode == 0
    exp = tmp_path / "runs" / "it"
    trials = read_table(str(exp / "trials.parquet"))
    history = read_table(str(exp / "history.parquet"))
    assert len(trials) == 2 and len({t["trial_id"] for t in trials}) == 2
    assert len(history) == sum(t["epochs_run"] for t in trials)
    for t in trials:
        assert t["status"] in ("finished", "stopped_early")
        assert 1e-3 <= t["config/lr"] <= 1e-2
        ckpt = load_checkpoint(t["checkpoint_path"])
        assert t["checkpoint_path"] == str(exp / t["trial_id"] / "checkpoint")
        assert ckpt["epoch"] == t["best_epoch"] and ckpt["task"] == "blood"
        assert ckpt["metrics"]["val_auc"] == pytest.approx(t["val_auc"])
        model_from_checkpoint(ckpt)
    assert "Best trial" in proc.stderr + proc.stdout
    assert "Trial status" in proc.stderr + proc.stdout  # --verbose: Ray's tables too
    use = json.loads((exp / "search.json").read_text())["slot_use"]
    assert 0 < use <= 1.05 and f"slot use: {use:.2f}" in proc.stderr
    assert not list(exp.rglob("checkpoint_0*"))  # Train's resume state went with its trial
    assert all("optimizer" not in load_checkpoint(t["checkpoint_path"]) for t in trials)


def test_failing_trials_do_not_take_the_search_down_and_the_rest_run_their_planned_epochs(
    tmp_path, make_npz, write_space, run_search, ray_head
):
    """lr 1e30 makes the loss NaN: those trials error with the message, the others finish.

    The space file has no `epochs` and the command no `--epochs` (issue 19: such trials used
    to stop after one epoch, ASHA's `max_t` defaulting to 1): every trial that does not fail
    runs the planned epochs, `TrainConfig.epochs`. ASHA's grace period is the whole run, so
    it stops none of them."""
    planned = planned_epochs({})
    assert planned == TrainConfig.epochs == 10
    task = get_task("pneumonia")
    data = make_npz(task, n=64)  # 2 batches of 32 per epoch: 10 epochs cost seconds
    space = write_space(tmp_path / "space.yaml", min_iter=planned, lr={"values": [1e-3, 1e30]})
    assert "epochs" not in Path(space).read_text()
    proc = run_search(
        "--task",
        "pneumonia",
        "--data-dir",
        str(data.parent),
        "--space",
        space,
        "--trials",
        "4",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "nan",
        "--searcher",
        "random",
        "--launcher",
        "function",
        "--seed",
        "3",
        "--explain-top",
        "0",
        verbose=False,
        wandb="offline",
    )
    exp = tmp_path / "runs" / "nan"
    trials = read_table(str(exp / "trials.parquet"))
    history = read_table(str(exp / "history.parquet"))
    bad = [t for t in trials if t["config/lr"] > 1]
    good = [t for t in trials if t["config/lr"] < 1]
    assert bad and good, "seed 3 should draw both learning rates"
    assert all(t["status"] == "errored" and "training loss is nan" in t["error"] for t in bad)
    assert all(t["status"] == "finished" and t["checkpoint_path"] for t in good)
    for t in good:
        epochs = [h["epoch"] for h in history if h["trial_id"] == t["trial_id"]]
        assert t["epochs_run"] == planned and sorted(epochs) == list(range(1, planned + 1))
    assert json.loads((exp / "search.json").read_text())["epochs"] == planned
    assert proc.returncode == 0
    # the console is medsweep's: no Ray table, no W&B line, each trial's end; the log has all
    console, driver_log = proc.stdout + proc.stderr, (exp / "driver.log").read_text()
    for noise in ("Trial status", "╭", "wandb:", "pid="):
        assert noise not in console and noise in driver_log, noise
    for t in bad:
        assert (
            f"trial {t['trial_id']} errored: FloatingPointError: training loss is nan" in console
        )
    for t in good:
        assert f"trial {t['trial_id']} finished: best val_auc" in console
    assert len(console.splitlines()) <= 40, console
    # it ran on the session's Ray head (run_search): a search leaves a cluster it joined up
    assert f"--address {ray_head.address}" in " ".join(proc.args)
    assert ray_head.is_up() and (ray_head.session_dir / "logs").is_dir()


def test_real_pneumonia_search_beats_090_test_auroc(
    tmp_path, pneumonia_path, write_space, run_search
):
    """A search on real chest X-rays (imbalanced 9:1 train); its best checkpoint, on the
    official test split that the search never read, reaches AUROC >= 0.90."""
    space = write_space(
        tmp_path / "space.yaml",
        lr={"distribution": "log_uniform_values", "min": 3e-4, "max": 1e-2},
        dropout={"min": 0.0, "max": 0.5},
        class_weight_power={"min": 0.0, "max": 1.0},
        aug_cutoff_epoch={"min": 0, "max": 6},
        model={"values": ["simple_cnn", "deeper_cnn"]},
        batch_size={"value": 64},
    )
    started = time.time()
    proc = run_search(
        "--task",
        "pneumonia",
        "--data-dir",
        str(pneumonia_path.parent),
        "--space",
        space,
        "--trials",
        "3",
        "--epochs",
        "4",
        "--launcher",
        "function",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "real",
        "--seed",
        "0",
        "--ig-samples",
        "1",
        "--ig-steps",
        "8",
    )
    wall = time.time() - started
    assert proc.returncode == 0
    trials = read_table(str(tmp_path / "runs" / "real" / "trials.parquet"))
    best = max((t for t in trials if t["val_auc"] is not None), key=lambda t: t["val_auc"])
    ckpt = load_checkpoint(best["checkpoint_path"])
    with np.load(pneumonia_path) as npz:
        images, labels = npz["test_images"], npz["test_labels"]
    probs = predict(ckpt, model_from_checkpoint(ckpt), images)
    auc = roc_auc_score(labels[:, 0], probs[:, 0])
    config = {k: best[k] for k in best if k.startswith("config/")}
    attribution = re.search(r"attribution maps for \d+ trials in ([\d.]+) s", proc.stderr)
    print(
        f"real-data search: {wall:.0f} s wall, best val_auc {best['val_auc']:.4f}, "
        f"test AUROC {auc:.4f}, attribution pass {attribution and attribution[1]} s, "
        f"config {config}"
    )
    assert auc >= 0.90
    # Everything a search leaves on real X-rays: maps and focus for every trial, test metrics
    # with CIs for the best, and a report that embeds them.
    exp = tmp_path / "runs" / "real"
    recorded = json.loads((exp / "test_metrics.json").read_text())
    assert recorded["best_trial"] == best["trial_id"]
    headline = recorded["trials"][best["trial_id"]]["auroc"]
    assert headline["value"] == pytest.approx(auc, abs=1e-6)
    assert headline["ci_low"] <= headline["value"] <= headline["ci_high"]
    report = (exp / "report.html").read_text()
    for t in trials:
        if t["checkpoint_path"]:
            assert (exp / t["trial_id"] / "attribution" / "gradcam.png").is_file()
            assert (exp / t["trial_id"] / "attribution" / "integrated_gradients.png").is_file()
            assert not is_finite(t["attr_focus"])  # chest X-rays: no foreground, no focus
        assert t["trial_id"] in report
    assert report.count("data:image/png;base64,") >= 2 * len(trials)
    # the maps were started as trials ended, once none was left to start (search.driver.tail);
    # the step after the search found them written
    early = re.search(r"attribution: (\d+) trial\(s\) explained while the last", proc.stderr)
    assert early and int(early[1]) >= 1
    assert "explained already; their maps are kept" in proc.stderr
    idle = json.loads((exp / "search.json").read_text())["idle_slot_s"]
    assert set(idle) == {"starting", "tail", "collecting"} and min(idle.values()) >= 0
    assert "idle slot time:" in proc.stderr
    _study_matches_the_tables(exp, "real")


def _study_matches_the_tables(exp, name: str) -> None:
    """Every trial of optuna.db has the state and value trials.parquet and history.parquet
    give it: finished -> COMPLETE with the best epoch's metric, stopped early (ASHA from epoch
    1) -> PRUNED with its last epoch's, errored -> FAIL."""
    rows = read_table(str(exp / "trials.parquet"))
    history = read_table(str(exp / "history.parquet"))
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == len(rows)
    expected = {
        "finished": TrialState.COMPLETE,
        "stopped_early": TrialState.PRUNED,
        "errored": TrialState.FAIL,
    }
    for row in rows:
        trial = next(t for t in trials if t.params["lr"] == pytest.approx(row["config/lr"]))
        assert trial.state == expected[row["status"]], row
        if row["status"] == "finished":
            assert trial.value == pytest.approx(row["val_auc"])
        elif row["status"] == "stopped_early":
            epochs = [h for h in history if h["trial_id"] == row["trial_id"]]
            last = max(epochs, key=lambda h: h["epoch"])
            assert trial.value == pytest.approx(last["val_auc"])
        if row["status"] != "errored":
            assert max(trial.intermediate_values) == row["epochs_run"]
    stopped = sum(r["status"] == "stopped_early" for r in rows)
    print(f"optuna vs trials.parquet: {stopped} of {len(rows)} trials stopped by ASHA")


def test_malaria_folder_task_end_to_end(tmp_path, make_malaria, write_space, run_search):
    """`--task malaria --data-dir cell_images`: converted once (patient split), searched, and
    evaluated on its test split; Parasitized is the positive class."""
    src = make_malaria(tmp_path, cells=8)
    space = write_space(tmp_path / "space.yaml", lr={"value": 3e-3}, image_size={"value": 28})
    proc = run_search(
        "--task",
        "malaria",
        "--data-dir",
        str(src),
        "--space",
        space,
        "--trials",
        "1",
        "--epochs",
        "2",
        "--launcher",
        "function",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "mal",
        "--explain-top",
        "0",
    )
    assert proc.returncode == 0
    (trial,) = read_table(str(tmp_path / "runs" / "mal" / "trials.parquet"))
    ckpt = load_checkpoint(trial["checkpoint_path"])
    assert ckpt["classes"] == ["Uninfected", "Parasitized"] and ckpt["kind"] == "binary"
    assert not list(src.rglob(".medsweep"))  # converted data never lands in the data folder
    (record,) = [json.loads((tmp_path / "runs" / "mal" / "search.json").read_text())["data"]]
    assert record["split"] == "patient" and record["skipped"] == []
    assert os.path.dirname(record["file"]) == os.environ["MEDSWEEP_CACHE_DIR"]
    assert (tmp_path / "runs" / "mal" / "test_metrics.json").is_file()
