"""Tests for `--select` and `--ensemble K` after a search (search/experiment/deploy.py,
ensemble.py): on a finished experiment written by the real writers (`experiment_factory`,
multi-class, 4 trials: 3 with checkpoints), with the split reader in this process (no Ray).

The ensemble's probabilities equal the weighted mean of its members' on a fixed batch;
ensemble.json names its members' checkpoints relative to the experiment and loads like a
checkpoint; test_metrics.json holds the ensemble's figures with CIs and the paired difference
to the best single trial; the selected trial is the one tested first.

    pytest tests/test_ensemble.py -q
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.data.reader import SplitReader
from search.experiment.after_settings import EvaluationSettings
from search.experiment.deploy import evaluate_models, order_for_test
from search.experiment.ensemble import ENSEMBLE_FILE, average, member_probs, paired_difference
from search.experiment.predict import load_model, predict_images
from search.experiment.selection import Selection
from search.experiment.tables import read_table
from search.explain import main as explain_main
from search.predict import main as predict_main
from search.reporting.report import build_report
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, predict
from trainables.tasks import Task


def _copy(source: Path, tmp_path: Path) -> tuple[Path, list[dict], Task, SplitReader]:
    """A private copy of an experiment, its rows pointing at the copy, its task, its reader."""
    root = Path(shutil.copytree(source, tmp_path / source.name))
    data = source.parent / f"{source.name}-data.npz"
    manifest = json.loads((root / "search.json").read_text())
    task = Task(
        name=manifest["task"],
        flag=manifest["task"],
        kind=manifest["kind"],
        classes=tuple(manifest["classes"]),
        channels=3,
        model="simple_cnn",
        image_size=28,
    )
    rows = read_table(str(root / "trials.parquet"))
    for r in rows:
        if r.get("checkpoint_path"):
            r["checkpoint_path"] = str(root / r["trial_id"] / "checkpoint")
    return root, rows, task, SplitReader.npz(str(data), task)


@pytest.fixture
def experiment(tmp_path, experiment_factory):
    """A private copy of the session's multi-class experiment (shared with other tests)."""
    return _copy(experiment_factory(), tmp_path)


def test_ensemble_and_selection_after_a_search(experiment, capsys):
    root, rows, task, reader = experiment
    settings = EvaluationSettings(task.metric, task.mode, top_k=1)
    out = evaluate_models(rows, str(root), task, reader, settings, "sensitivity>=0.5", 2)
    metrics = json.loads((root / "test_metrics.json").read_text())
    selection = metrics["selection"]
    assert set(selection["figures"]) == {r["trial_id"] for r in rows if r.get("checkpoint_path")}
    if selection["selected"] is not None:
        assert metrics["best_trial"] == selection["selected"]
        assert selection["figures"][selection["selected"]]["sensitivity"] >= 0.5
    ens = metrics["ensemble"]
    assert len(ens["members"]) == 2 and ens["file"] == ENSEMBLE_FILE
    assert ens["auroc"]["ci_low"] <= ens["auroc"]["value"] <= ens["auroc"]["ci_high"]
    assert ens["difference"]["against"] == ens["members"][0]  # the best single trial
    assert ens["difference"]["n_used"] > 0
    assert set(ens["members"]) <= set(metrics["trials"])  # each member's test figures too
    assert out["ensemble"]["members"] == ens["members"]
    record = json.loads((root / ENSEMBLE_FILE).read_text())
    for member in record["members"]:
        assert not Path(member["checkpoint"]).is_absolute()
        assert (root / member["checkpoint"]).is_file()

    # the ensemble's probabilities are the weighted mean of its members' on a fixed batch
    batch = np.asarray(reader.arrays(("val",))["val_images"][:12])
    model = load_model(root / ENSEMBLE_FILE)
    probs = predict_images(model, lambda size, mode: batch)
    members = []
    for member in record["members"]:
        ckpt = load_checkpoint(root / member["checkpoint"])
        logits = predict(ckpt, model_from_checkpoint(ckpt), batch, logits=True)
        members.append(member_probs(task.kind, logits, member["temperature"]))
    np.testing.assert_allclose(probs, np.mean(members, axis=0), atol=1e-6)
    assert model.threshold == record["threshold"] is None  # multi-class: the argmax

    # search/predict.py and search/explain.py take ensemble.json like a checkpoint
    png = root / "val0.png"
    Image.fromarray(batch[0]).save(png)
    csv_path = root / "p.csv"
    assert predict_main([str(root / ENSEMBLE_FILE), str(png), "--out", str(csv_path)]) == 0
    with open(csv_path) as f:
        row = next(csv.DictReader(f))
    got = [float(row[f"p_{c}"]) for c in task.classes]
    np.testing.assert_allclose(got, probs[0], atol=1e-5)
    assert row["label"] == task.classes[int(np.argmax(probs[0]))]
    maps = root / "maps"
    argv = [str(root / ENSEMBLE_FILE), str(png), "--out-dir", str(maps), "--steps", "2"]
    assert explain_main([*argv, "--samples", "1"]) == 0
    for member in record["members"]:
        assert (maps / member["trial_id"] / "val0_gradcam.png").is_file()
    assert "val0.png: predicted" in capsys.readouterr().out

    page = Path(build_report(root)).read_text()
    assert "Model selection" in page and "Ensemble of 2 trials" in page
    assert "paired bootstrap" in page and "sensitivity&gt;=0.5" in page

    # the ensemble moved the whole folder still loads (relative member paths)
    moved = Path(shutil.move(str(root), str(root.parent / "moved")))
    again = predict_images(load_model(moved / ENSEMBLE_FILE), lambda size, mode: batch)
    np.testing.assert_allclose(again, probs, atol=1e-6)


def test_default_is_the_plain_test_evaluation(experiment):
    """No --select, no --ensemble: test_metrics.json as `evaluate_on_test` writes it."""
    root, rows, task, reader = experiment
    out = evaluate_models(rows, str(root), task, reader, EvaluationSettings(task.metric, "max"))
    assert set(out) == {"best_trial", "trials"}
    assert not (root / ENSEMBLE_FILE).exists()
    assert "Model selection" not in Path(build_report(root)).read_text()


def test_testing_order_puts_the_selected_trial_first():
    ranked = [{"trial_id": t} for t in ("a", "b", "c", "d")]
    chosen = Selection("sensitivity>=0.9", "c", "c", 0.0, ["c"], {})
    assert order_for_test(ranked, chosen, 2, []) == ["c", "a"]
    assert order_for_test(ranked, None, 1, ["a", "b", "c"]) == ["a", "b", "c"]
    none = Selection("sensitivity>=0.9", None, "d", 0.1, [], {})
    assert order_for_test(ranked, none, 1, []) == ["a"]


def test_average_and_paired_difference():
    a = np.array([[0.2], [0.4], [0.9]], np.float32)
    b = np.array([[0.4], [0.6], [0.7]], np.float32)
    np.testing.assert_allclose(average([a, b]), (a + b) / 2)
    np.testing.assert_allclose(average([a, b], [3, 1]), 0.75 * a + 0.25 * b, rtol=1e-6)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    good = np.clip(y * 0.6 + rng.random(200) * 0.5, 0, 1)[:, None]
    noise = rng.random(200)[:, None]
    d = paired_difference("binary", ["n", "p"], y, good, noise, seed=1)
    assert d["ci_low"] <= d["value"] <= d["ci_high"] and d["ci_low"] > 0
    same = paired_difference("binary", ["n", "p"], y, good, good, seed=1)
    assert same["value"] == same["ci_low"] == same["ci_high"] == 0.0
    patients = np.repeat(np.arange(50), 4).astype(str)
    assert paired_difference("binary", ["n", "p"], y, good, noise, 1, patients)["unit"] == (
        "patient"
    )


@pytest.mark.slow
def test_a_search_with_select_and_ensemble(tmp_path, pneumonia_subset, write_space, run_search):
    """search/run.py end to end on a slice of the real sample: the test split is read for the
    selected trial and the ensemble's members; test_metrics.json, ensemble.json, report."""
    data = pneumonia_subset(train=200, val=80, test=80)
    space = write_space(tmp_path / "space.yaml", lr={"values": [1e-3, 3e-3, 1e-2]})
    args = ["--task", "pneumonia", "--data-dir", str(data.parent), "--space", space]
    args += ["--trials", "3", "--epochs", "2", "--storage", str(tmp_path / "runs")]
    args += ["--name", "pick", "--searcher", "random", "--launcher", "function"]
    args += ["--explain-top", "0", "--select", "sensitivity>=0.6", "--ensemble", "2"]
    proc = run_search(*args)
    assert proc.returncode == 0
    exp = tmp_path / "runs" / "pick"
    metrics = json.loads((exp / "test_metrics.json").read_text())
    assert metrics["selection"]["constraint"] == "sensitivity>=0.6"
    assert len(metrics["selection"]["figures"]) == 3
    assert len(metrics["ensemble"]["members"]) == 2 and (exp / ENSEMBLE_FILE).is_file()
    assert "Ensemble of 2 trials" in (exp / "report.html").read_text()
