"""k-fold cross-validation (`search/driver/folds.py`): the splits, the per-epoch summary, a
failing fold, and one real `search/run.py --folds 3` search end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from search.data.folders import convert_folder
from search.data.reader import SplitReader
from search.data.sources import file_arrays
from search.driver.folds import (
    best_fold,
    fold_data,
    fold_metrics,
    fold_splits,
    patient_groups,
    run_folds,
)
from search.driver.plan import Plan
from search.experiment.tables import read_table
from trainables.checkpoint import load_checkpoint, model_from_checkpoint
from trainables.tasks import get_task


def _labels(counts: list[int]) -> np.ndarray:
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).reshape(-1, 1)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_partition_train_and_val(k):
    labels = _labels([30, 17, 9, 5])
    splits = fold_splits(labels, "multiclass", k, seed=0)
    assert len(splits) == k
    vals = np.concatenate([va for _, va in splits])
    assert sorted(vals) == list(range(len(labels)))  # every index validated exactly once
    for tr, va in splits:
        assert not set(tr) & set(va)
        assert len(tr) + len(va) == len(labels)


def test_stratified_folds_keep_class_shares():
    labels = _labels([40, 23, 11, 6])
    k = 5
    for _, va in fold_splits(labels, "multiclass", k, seed=1):
        counts = np.bincount(labels[va, 0], minlength=4)
        assert np.all(np.abs(counts - np.array([40, 23, 11, 6]) / k) <= 1)


def test_splits_are_deterministic_for_a_seed():
    labels = _labels([20, 20])
    a, b, c = (fold_splits(labels, "binary", 4, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_grouped_folds_keep_every_patient_on_one_side():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"C{i}P{i}" for i in range(12)], 6)
    labels = rng.integers(0, 2, size=(len(groups), 1))
    splits = fold_splits(labels, "binary", 3, seed=0, groups=groups)
    again = fold_splits(labels, "binary", 3, seed=0, groups=groups)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(splits, again, strict=True))
    for tr, va in splits:
        assert not set(groups[tr]) & set(groups[va])
    assert sorted(np.concatenate([va for _, va in splits])) == list(range(len(groups)))


def test_multilabel_folds_partition_with_kfold():
    labels = np.random.default_rng(0).integers(0, 2, size=(40, 3))
    splits = fold_splits(labels, "multilabel", 4, seed=0)
    assert sorted(np.concatenate([va for _, va in splits])) == list(range(40))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"--folds 1: .*k >= 2"):
        fold_splits(_labels([5, 5]), "binary", 1, seed=0)
    with pytest.raises(ValueError, match=r"class 'eos' \(1\) has 2 image\(s\).*fewer than k=3"):
        fold_splits(_labels([9, 2, 9]), "multiclass", 3, 0, classes=("bas", "eos", "lym"))
    with pytest.raises(ValueError, match=r"only 2 patient\(s\)"):
        fold_splits(_labels([4, 4]), "binary", 3, 0, groups=np.repeat(["C1", "C2"], 4))
    labels = np.zeros((10, 2), dtype=int)
    labels[:2, 1] = 1
    with pytest.raises(ValueError, match=r"class 1 has 2 positive label\(s\)"):
        fold_splits(labels, "multilabel", 3, seed=0)


def test_patient_groups_from_file_names():
    files = {
        "train_files": np.array(["Parasitized/C33P1thinF_IMG_1_cell_1.png"] * 2),
        "val_files": np.array(["Uninfected/C1_thinF_IMG_2_cell_9.png"]),
    }
    assert list(patient_groups(files)) == ["C33P1", "C33P1", "C1"]
    assert patient_groups({"train_labels": np.zeros((3, 1))}) is None
    with pytest.warns(UserWarning, match="1 of 3 file names carry no patient id"):
        assert patient_groups({**files, "val_files": np.array(["cat/img_0.png"])}) is None


def test_converted_malaria_folds_keep_patients_apart(tmp_path, make_malaria):
    """`file_arrays` reads the names `search.data.folders` stored; whole patients go to one
    side."""
    path, _, _ = convert_folder(str(make_malaria(tmp_path, cells=3)), 28, split="patient")
    arrays = {**dict(np.load(path)), **file_arrays(path)}
    groups = patient_groups(arrays)
    labels = np.concatenate([arrays["train_labels"], arrays["val_labels"]])
    assert groups is not None and len(groups) == len(labels)
    for tr, va in fold_splits(labels, "binary", 2, seed=0, groups=groups):
        assert not set(groups[tr]) & set(groups[va])


def test_fold_data_takes_rows_of_train_plus_val():
    train, val = np.arange(6)[:, None], np.arange(6, 10)[:, None]
    arrays = {"train_images": train, "train_labels": train, "val_images": val, "val_labels": val}
    data = fold_data(arrays, np.array([0, 2, 7, 9]), np.array([1, 8]))
    assert data["train_images"][:, 0].tolist() == [0, 2, 7, 9]
    assert data["val_labels"][:, 0].tolist() == [1, 8]


def test_streamed_folds_index_the_memmaps_in_the_same_order(tmp_path):
    from trainables.stream import Rows

    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 255, (9, 4, 4), dtype=np.uint8),
        "val_images": rng.integers(0, 255, (3, 4, 4), dtype=np.uint8),
        "train_labels": np.arange(9).reshape(-1, 1),
        "val_labels": np.arange(9, 12)[:, None],
    }
    mapped = dict(arrays)
    for split in ("train", "val"):
        np.save(tmp_path / f"{split}.npy", arrays[f"{split}_images"])
        mapped[f"{split}_images"] = np.load(tmp_path / f"{split}.npy", mmap_mode="r")
    tr, va = np.array([10, 0, 4, 11]), np.array([9, 2])
    resident, streamed = fold_data(arrays, tr, va), fold_data(mapped, tr, va)
    for key in ("train_images", "val_images"):
        assert isinstance(streamed[key], Rows)  # indexes the memmaps: nothing copied
        np.testing.assert_array_equal(streamed[key][:], resident[key])
    for key in ("train_labels", "val_labels"):
        np.testing.assert_array_equal(streamed[key], resident[key])


def test_fold_metrics_mean_std_and_per_fold():
    histories = [
        [{"epoch": 1, "val_auc": 0.6, "train_loss": 1.0}, {"epoch": 2, "val_auc": 0.8}],
        [{"epoch": 1, "val_auc": 0.8, "train_loss": 3.0}, {"epoch": 2, "val_auc": 0.9}],
    ]
    rows = fold_metrics(histories, "val_auc")
    assert rows[0]["val_auc"] == pytest.approx(0.7) and rows[0]["train_loss"] == 2.0
    assert rows[0]["val_auc_std"] == pytest.approx(0.1) and "train_loss_std" not in rows[0]
    assert rows[1]["fold_1_val_auc"] == 0.9 and rows[1]["epoch"] == 2
    at_epoch_2 = [(h, b"model", 2) for h in histories]  # fold scores 0.8 and 0.9
    assert best_fold(at_epoch_2, "val_auc", "max") == 1
    assert best_fold(at_epoch_2, "val_auc", "min") == 0
    tied = [(histories[0], b"model", 2), (histories[1], b"model", 1)]  # 0.8 and 0.8
    assert best_fold(tied, "val_auc", "max") == 0


@pytest.mark.slow
def test_a_failing_fold_fails_the_trial_with_its_message(ray_cluster, make_npz):
    task = get_task("pneumonia")
    arrays = dict(np.load(make_npz(task, n=32)))
    plan = Plan(
        name="f",
        storage="/tmp",
        trials=1,
        metric="val_auc",
        mode="max",
        task=task,
        folds=2,
        cpus_per_worker=1.0,
    )
    config = {"task": "pneumonia", "model": "simple_cnn", "epochs": 1, "lr": 1e30, "batch_size": 4}
    splits = fold_splits(
        np.concatenate([arrays["train_labels"], arrays["val_labels"]]), task.kind, 2, seed=0
    )
    with pytest.raises(RuntimeError, match=r"fold \d of 2 failed: FloatingPointError: training"):
        run_folds(config, SplitReader.resident(arrays), splits, plan, task)


@pytest.mark.slow
def test_search_with_three_folds_end_to_end(tmp_path, make_npz, write_space, run_search):
    """`--folds 3`: per-epoch means in history.parquet, a loadable best-fold checkpoint, and
    std and per-fold scores in Tune's own result.json."""
    task = get_task("blood")
    data = make_npz(task, n=96)
    space = write_space(tmp_path / "space.yaml", lr={"value": 3e-3})
    runs = str(tmp_path / "runs")
    proc = run_search(
        "--task",
        "blood",
        "--data-dir",
        str(data.parent),
        "--space",
        space,
        "--folds",
        "3",
        "--launcher",
        "function",
        "--trials",
        "1",
        "--epochs",
        "2",
        "--explain-top",
        "0",
        "--storage",
        runs,
        "--name",
        "cv",
    )
    assert proc.returncode == 0
    exp = tmp_path / "runs" / "cv"
    (trial,) = read_table(str(exp / "trials.parquet"))
    history = read_table(str(exp / "history.parquet"))
    assert [h["epoch"] for h in history] == [1.0, 2.0]
    assert all(0 <= h["val_auc"] <= 1 for h in history)
    results = [json.loads(line) for line in (exp / trial["trial_id"] / "result.json").open()]
    assert len(results) == 2
    for r in results:
        folds = [r[f"fold_{i}_val_auc"] for i in range(3)]
        assert r["val_auc"] == pytest.approx(np.mean(folds))
        assert r["val_auc_std"] == pytest.approx(np.std(folds))
        assert r["folds"] == 3 and r["best_fold"] in (0, 1, 2)
    ckpt = load_checkpoint(trial["checkpoint_path"])
    model_from_checkpoint(ckpt)
    chosen = results[0]["best_fold"]
    assert ckpt["epoch"] == results[0]["best_fold_epoch"]
    fold_score = results[ckpt["epoch"] - 1][f"fold_{chosen}_val_auc"]
    assert ckpt["metrics"]["val_auc"] == pytest.approx(fold_score)  # the fold's own metrics
