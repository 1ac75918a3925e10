"""Unit tests of `trainables/`: tasks, data validation, models, weights, checkpoints, the loop.

What each task kind computes (loss, metrics, counts) is tested in test_kinds.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from trainables.data import load_npz, make_augment, npz_name
from trainables.kinds import KIND_NAMES
from trainables.models import (
    MODELS,
    PRETRAINED,
    SEGMENTERS,
    build_model,
    set_backbone_frozen,
    train_mode,
)
from trainables.tasks import TASK_NAMES, get_task
from trainables.train import Placement, TrainConfig, train_loop

torch.set_num_threads(2)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_record(name):
    task = get_task(name)
    assert task.name == name and task.source in ("medmnist", "folder", "segfolder", "table")
    if name in ("folder", "table"):
        assert task.classes == ()  # filled in from the folders or table when converted
        return
    assert task.kind in KIND_NAMES
    assert len(task.classes) >= 2 and all(isinstance(c, str) and c for c in task.classes)
    assert task.model in (*MODELS, *SEGMENTERS) and task.channels in (1, 3)
    assert task.metric.startswith("val_") and task.mode in ("max", "min")
    one_logit = task.kind in ("binary", "segmentation")
    assert task.num_outputs == (1 if one_logit else len(task.classes))


def test_task_kinds_follow_medmnist():
    assert get_task("chest").kind == "multilabel" and len(get_task("chest").classes) == 14
    assert get_task("pneumonia").kind == "binary"
    assert len(get_task("pathology").classes) == 9 and len(get_task("blood").classes) == 8


def test_unknown_task_lists_choices():
    with pytest.raises(ValueError, match=r"'patology' is not a task; choose one of: .*pathology"):
        get_task("patology")


@pytest.mark.parametrize("name", ["pathology", "chest", "pneumonia"])
def test_load_npz_accepts_each_kind(make_npz, name):
    task = get_task(name)
    arrays = load_npz(make_npz(task), task)
    assert set(arrays) == {"train_images", "train_labels", "val_images", "val_labels"}


def _write(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.pop("val_labels"), r"missing arrays \['val_labels'\]"),
        (lambda a: a.update(train_images=a["train_images"].astype(np.float32)), "expected uint8"),
        (lambda a: a.update(train_labels=a["train_labels"] + 9), r"labels range over .*\[0, 8\]"),
        (lambda a: a.update(train_labels=a["train_labels"][:5]), r"expected \(96, L\)"),
        (lambda a: a.update(train_images=a["train_images"][..., 0]), "1 channel"),
    ],
)
def test_load_npz_rejects_bad_files(tmp_path, mutate, message, synthetic_arrays):
    task = get_task("pathology")
    arrays = synthetic_arrays("multiclass", 9, 3)
    mutate(arrays)
    with pytest.raises(ValueError, match=message):
        load_npz(_write(tmp_path, **arrays), task)


def test_load_npz_rejects_foreign_and_corrupt_files(tmp_path, synthetic_arrays):
    task = get_task("chest")
    wrong = synthetic_arrays("multiclass", 14, 1)  # class ids where 14 0/1 columns belong
    with pytest.raises(ValueError, match="14 classes expects 14"):
        load_npz(_write(tmp_path, **wrong), task)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a readable npz"):
        load_npz(corrupt, task)


def test_search_reads_no_test_split(make_npz):
    task = get_task("blood")
    assert not any(k.startswith("test") for k in load_npz(make_npz(task), task))


def test_npz_names_and_sizes():
    assert npz_name("pathmnist", 28) == "pathmnist.npz"
    assert npz_name("pathmnist", 224) == "pathmnist_224.npz"
    with pytest.raises(ValueError, match="choose one of"):
        npz_name("pathmnist", 100)


def test_augment_draws_per_image():
    torch.manual_seed(0)
    augment = make_augment(("hflip",), channels=1, image_size=8)
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).repeat(64, 1, 1, 1) / 64
    flipped = (augment(x) != x).flatten(1).any(dim=1)
    assert 0 < int(flipped.sum()) < 64  # some flipped, some not: a draw per image


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("size, channels", [(28, 1), (28, 3), (64, 3), (64, 1)])
def test_model_forward(name, size, channels):
    if name == "resnet50" and size == 64 or name == "efficientnet_b3" and channels == 1:
        pytest.skip("covered by the other sizes; keeps the suite fast")
    model = build_model(name, num_outputs=5, channels=channels, image_size=size, dropout=0.3)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert model.cam_layer in set(model.backbone.modules())


def test_freeze_changes_what_trains():
    model = build_model("resnet18", 3, 3, 28)
    set_backbone_frozen(model, True)
    train_mode(model, backbone_frozen=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    bn = model.backbone.bn1
    assert not bn.training and model.head.training  # frozen BatchNorm keeps its statistics
    before = bn.running_mean.clone()
    model(torch.randn(4, 3, 28, 28))
    assert torch.equal(before, bn.running_mean)
    set_backbone_frozen(model, False)
    train_mode(model, backbone_frozen=False)
    assert all(p.requires_grad for p in model.parameters()) and bn.training


def test_custom_models_refuse_pretrained_weights():
    with pytest.raises(ValueError, match="--weights none"):
        build_model("simple_cnn", 2, 1, 28, weights="imagenet")


def test_weights_from_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = build_model("resnet18", 4, 3, 224, weights=str(tmp_path / "r18.pth"))
    assert torch.equal(model.backbone.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)
    assert set(PRETRAINED) >= {"resnet18", "resnet50", "efficientnet_b3"}


@pytest.mark.parametrize(
    "kind, classes, outputs",
    [("multiclass", ["a", "b", "c"], 3), ("binary", ["a", "b"], 1), ("multilabel", ["a", "b"], 2)],
)
def test_checkpoint_round_trip(tmp_path, kind, classes, outputs):
    model = build_model("simple_cnn", outputs, 1, 28, dropout=0.25)
    payload = {
        "task": "x",
        "kind": kind,
        "classes": classes,
        "channels": 1,
        "model": "simple_cnn",
        "image_size": 28,
        "config": {"dropout": 0.25, "lr": 0.01},
        "normalisation": {"mean": [0.5], "std": [0.2]},
        "epoch": 3,
        "metrics": {"val_auc": 0.9},
        "state_dict": model.state_dict(),
    }
    path = save_checkpoint(tmp_path / "ckpt", payload)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["model.pt"]  # no temp left
    loaded = load_checkpoint(path)
    restored = model_from_checkpoint(loaded)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), restored(x))
    assert torch.load(path, weights_only=True)["classes"] == classes


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="dropout 1.5"):
        TrainConfig.from_dict({"dropout": 1.5})
    assert TrainConfig.from_dict({"epochs": 3.0}).epochs == 3
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['extra'\]"):
        TrainConfig.from_dict({"extra": {}})  # launchers hand data to trials another way


def test_placement_is_checked_where_it_is_built():
    with pytest.raises(ValueError, match="data_path 'disk': choose auto, resident or stream"):
        Placement(data_path="disk")
    with pytest.raises(ValueError, match=r"rank 2 must lie in 0\.\.1"):
        Placement(rank=2, world_size=2)
    assert Placement().device is None  # resolved when the trial is set up (`pick_device`)


def test_the_stream_path_trains_from_arrays_as_the_resident_path_does(make_npz):
    """`Placement.data_path` decides how images reach the device, not what the loop computes."""
    task = get_task("pneumonia")
    data = load_npz(make_npz(task, n=24), task)
    config = {"task": "pneumonia", "model": "simple_cnn", "epochs": 1, "batch_size": 8}
    runs = {}
    for path in ("resident", "stream"):
        reports = []
        cpu = Placement(device=torch.device("cpu"), data_path=path)
        train_loop(config, lambda m, d, out=reports: out.append(m), data, placement=cpu)
        runs[path] = reports[0]
    assert (runs["resident"]["streamed"], runs["stream"]["streamed"]) == (0, 1)
    for key in ("train_loss", "val_loss", "val_auc"):
        assert runs["stream"][key] == pytest.approx(runs["resident"][key], rel=1e-5, abs=1e-6)


def test_checkpoints_are_scored_by_the_task_records_metric(make_npz):
    """The search hands the trials its metric in the task record (`Plan.task`): a val_loss
    search scores each epoch's checkpoint by val_loss, lower better, so Ray keeps the epoch
    with the lowest loss."""
    import dataclasses

    from trainables.scores import CHECKPOINT_SCORE

    task = dataclasses.replace(get_task("pneumonia"), metric="val_loss", mode="min")
    data = load_npz(make_npz(task, n=96), task)
    config = {"task": "pneumonia", "model": "simple_cnn", "epochs": 3, "batch_size": 16}
    reports = _run(config, data, task)
    losses = [m["val_loss"] for m, _ in reports]
    for i, (m, ckpt) in enumerate(reports):
        best = min(losses[: i + 1])
        assert m["best_val_loss"] == best and ckpt["metric"] == "val_loss"
        improved = m["val_loss"] == best and best not in losses[:i]
        assert m[CHECKPOINT_SCORE] == (m["val_loss"] if improved else math.inf)


def _run(config, data, task=None):
    reports = []

    def report(metrics, checkpoint_dir):
        saved = load_checkpoint(checkpoint_dir) if checkpoint_dir else None
        reports.append((metrics, saved))

    train_loop(config, report, data, task=task)
    return reports


def test_train_loop_learns_and_checkpoints_every_epoch(make_npz):
    task = get_task("blood")
    data = load_npz(make_npz(task, n=160), task)
    config = {
        "task": "blood",
        "model": "simple_cnn",
        "epochs": 4,
        "lr": 3e-3,
        "batch_size": 32,
        "aug_cutoff_epoch": 1,
        "class_weight_power": 0.5,
    }
    reports = _run(config, data)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3, 4]
    assert [m["augmented"] for m, _ in reports] == [1, 0, 0, 0]
    scores = [m["val_auc"] for m, _ in reports]
    assert max(scores) > 0.9  # the synthetic classes are easy
    for i, (m, ckpt) in enumerate(reports):
        assert m["best_val_auc"] == max(scores[: i + 1])
        assert ckpt["epoch"] == m["epoch"] and ckpt["config"]["lr"] == 3e-3
        assert ckpt["classes"] == list(task.classes) and ckpt["metric"] == "val_auc"


def test_resume_continues_where_the_trial_stopped(make_npz, tmp_path):
    """A trial resumed from its epoch-2 checkpoint runs epochs 3-4 only, and they match the
    uninterrupted run: weights, optimizer, scheduler, best score and per-epoch RNG restored."""
    task = get_task("pneumonia")
    data = load_npz(make_npz(task, n=96), task)
    config = {
        "task": "pneumonia",
        "model": "deeper_cnn",
        "epochs": 4,
        "lr": 2e-3,
        "batch_size": 16,
        "aug_cutoff_epoch": 4,
        "dropout": 0.3,
        "lr_schedule": "cosine",
    }
    saved = {}

    def report(metrics, checkpoint_dir):
        import shutil

        shutil.copytree(checkpoint_dir, tmp_path / f"e{metrics['epoch']}")
        saved[metrics["epoch"]] = metrics

    train_loop(config, report, data)
    resumed = []
    train_loop(config, lambda m, d: resumed.append(m), data, resume_from=str(tmp_path / "e2"))
    assert [m["epoch"] for m in resumed] == [3, 4]
    for m in resumed:
        for key in ("train_loss", "val_loss", "val_auc", "lr_now", "best_val_auc"):
            assert m[key] == pytest.approx(saved[m["epoch"]][key], rel=1e-4, abs=1e-6), key


def test_unfreeze_epoch_freezes_pretrained_backbone(make_npz, tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "w.pth")
    task = get_task("pneumonia")
    data = load_npz(make_npz(task, n=32), task)
    config = {
        "task": "pneumonia",
        "model": "resnet18",
        "weights": str(tmp_path / "w.pth"),
        "epochs": 2,
        "unfreeze_epoch": 1,
        "batch_size": 16,
        "max_batches": 1,
    }
    assert [m["frozen"] for m, _ in _run(config, data)] == [1, 0]


def test_nan_loss_stops_the_trial(make_npz):
    task = get_task("pneumonia")
    data = load_npz(make_npz(task, n=32), task)
    with pytest.raises(FloatingPointError, match="training loss is nan"):
        _run({"task": "pneumonia", "model": "simple_cnn", "epochs": 2, "lr": 1e30}, data)


def test_a_gpu_without_cuda_falls_back_to_the_cpu_once(make_npz, monkeypatch, caplog):
    """A fake autoscaling cluster's GPU: Ray sets CUDA_VISIBLE_DEVICES, CUDA is absent."""
    import logging

    from trainables.trial import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    task = get_task("pneumonia")
    config = {"task": "pneumonia", "model": "simple_cnn", "epochs": 2, "max_batches": 1}
    with caplog.at_level(logging.WARNING, logger="medsweep"):
        reports = _run(config, load_npz(make_npz(task, n=16), task))
    assert len(reports) == 2
    said = [r for r in caplog.records if "CUDA is not available" in r.getMessage()]
    assert len(said) == 1 and "training on the CPU" in said[0].getMessage()
    assert pick_device(torch.device("cuda:0")).type == "cpu"  # Ray Train's device, too
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    caplog.clear()
    assert pick_device().type == "cpu" and not caplog.records  # no GPU given: nothing to say


def test_predict_streams_rows_like_an_array(make_checkpoint):
    from trainables.checkpoint import predict
    from trainables.stream import Rows

    ckpt = load_checkpoint(make_checkpoint("multiclass", channels=3, image_size=28))
    model = model_from_checkpoint(ckpt)
    images = np.random.default_rng(0).integers(0, 255, (21, 28, 28, 3), dtype=np.uint8)
    whole = predict(ckpt, model, images, batch_size=8)
    rows = predict(ckpt, model, Rows([images[:10], images[10:]]), batch_size=8)
    np.testing.assert_allclose(rows, whole, rtol=1e-6, atol=1e-7)
