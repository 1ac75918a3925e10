"""The segmentation kind end to end on tiny data: loss and metrics against hand-computed
values, paired augmentation, the U-Net and its encoder transfer from a classification
checkpoint, the frozen encoder, attribution, test figures, the report section and explain;
and (slow) a real search on the ISBI 2012 sample."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from search.data.reader import SplitReader
from search.experiment import after
from search.reporting.explanations import describe, explain_images
from search.reporting.folder import Experiment
from search.reporting.segmentation import segmentation_section
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, predict, save_checkpoint
from trainables.data import load_npz, make_augment
from trainables.kinds import get_kind
from trainables.kinds.segmentation import BceDiceLoss, pixel_counts
from trainables.models import build_model, set_backbone_frozen, train_mode
from trainables.panels import choose_panel
from trainables.tasks import get_task
from trainables.train import Placement, train_loop

SEG = get_kind("segmentation")
CPU = Placement(device=torch.device("cpu"))


def _tiny_masks():
    """A 4x4 truth (top-left 2x2) and a prediction (the top row): tp 2, fp 2, fn 2, tn 10."""
    truth = np.zeros((1, 4, 4), np.uint8)
    truth[0, :2, :2] = 1
    probs = np.full((1, 1, 4, 4), 0.1, np.float32)
    probs[0, 0, 0, :] = 0.9
    return truth, probs


def test_metrics_match_a_hand_computed_dice_and_iou():
    truth, probs = _tiny_masks()
    assert pixel_counts(truth, SEG.predictions(probs)).tolist() == [[2, 2, 2, 10]]
    m = SEG.metrics(truth, probs)
    assert m["dice"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))  # 0.5
    assert m["iou"] == pytest.approx(2 / (2 + 2 + 2))  # 1/3
    assert m["pixel_acc"] == pytest.approx(12 / 16)


def test_metrics_sum_pixels_over_the_split():
    """Split figures come from summed counts: a big mask outweighs a small one."""
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0] = 1  # 16 px, all found
    truth[1, 0, 0] = 1  # 1 px, missed
    probs = truth[:, None].astype(np.float32)
    probs[1, 0, 0, 0] = 0.0
    assert SEG.metrics(truth, probs)["dice"] == pytest.approx(2 * 16 / (2 * 16 + 1))


def test_loss_is_weighted_bce_plus_soft_dice():
    truth, probs = _tiny_masks()
    logits = torch.logit(torch.as_tensor(probs))
    target = SEG.loss_targets(torch.as_tensor(truth))
    weights = SEG.class_weights(truth, 2, power=1.0)
    assert float(weights.reshape(-1)[0]) == pytest.approx(12 / 4)  # n_background / n_foreground
    loss = SEG.make_loss(weights, bce_weight=0.5, dice_weight=1.25)
    t, p = truth[0].astype(np.float64), probs[0, 0].astype(np.float64)
    bce = np.mean(-(3.0 * t * np.log(p) + (1 - t) * np.log(1 - p)))
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert float(loss(logits, target)) == pytest.approx(0.5 * bce + 1.25 * dice, rel=1e-5)
    assert isinstance(loss, BceDiceLoss)


def test_the_panel_shows_sparse_and_dense_masks():
    masks = np.zeros((6, 4, 4), np.uint8)
    for i in range(6):
        masks[i, : i % 4 + 1] = 1  # foreground shares 1/4, 2/4, 3/4, 4/4, 1/4, 2/4
    panel = choose_panel(masks, "segmentation", per_class=2, seed=0)
    shares = masks[panel].reshape(len(panel), -1).mean(axis=1)
    assert len(panel) == 4 and (shares < 0.5).sum() == 2 and (shares >= 0.5).sum() == 2


def test_a_mask_moves_with_its_image():
    """kornia draws per image; the mask gets the same flip as its image, every time."""
    augment = make_augment(("hflip", "vflip"), 1, 8, SEG.augment_keys())
    images = torch.zeros(32, 1, 8, 8)
    images[:, 0, 1, 2] = 1.0
    masks = (images > 0).float()
    torch.manual_seed(0)
    out_images, out_masks = SEG.augment_batch(augment, images, masks)
    moved = 0
    for img, mask in zip(out_images[:, 0], out_masks[:, 0], strict=True):
        assert torch.equal((img > 0.5).float(), mask)
        assert mask.sum() == 1 and set(mask.unique().tolist()) <= {0.0, 1.0}
        moved += int(mask[1, 2] == 0)
    assert 0 < moved < 32  # per-image draws: some flipped, some not


def _classifier_checkpoint(tmp_path, image_size: int, channels: int = 1):
    model = build_model("resnet18", 1, channels, image_size)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # weights nothing else produces
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = save_checkpoint(
        tmp_path / f"clf{image_size}",
        {
            "task": "pneumonia",
            "kind": "binary",
            "classes": ["normal", "pneumonia"],
            "channels": channels,
            "model": "resnet18",
            "image_size": image_size,
            "config": {},
            "normalisation": {"mean": [0.5], "std": [0.25]},
            "epoch": 1,
            "metrics": {},
            "state_dict": state,
        },
    )
    return path, state


def test_a_classification_checkpoint_becomes_the_encoder(tmp_path):
    path, state = _classifier_checkpoint(tmp_path, image_size=96)
    unet = build_model("unet-resnet18", 1, 1, 96, weights=path)
    encoder = unet.backbone.state_dict()
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if "backbone." in k}
    assert set(encoder) == set(backbone) - {k for k in backbone if k.startswith("fc.")}
    for key, value in encoder.items():
        assert torch.equal(value, backbone[key]), key


def test_a_small_stem_checkpoint_fits_the_encoder_stem(tmp_path):
    """A 28-px classifier's 3x3 stride-1 stem lands at the centre of the U-Net's 7x7 conv."""
    path, state = _classifier_checkpoint(tmp_path, image_size=28)
    unet = build_model("unet-resnet18", 1, 1, 64, weights=path)
    conv = unet.backbone.conv1.weight
    assert torch.equal(conv[..., 2:5, 2:5], state["backbone.conv1.weight"])
    assert float(conv.detach()[..., 0, :].abs().sum()) == 0.0
    assert torch.equal(
        unet.backbone.layer4[1].conv2.weight, state["backbone.layer4.1.conv2.weight"]
    )


def test_a_checkpoint_of_another_backbone_is_refused(tmp_path, make_checkpoint):
    path = make_checkpoint("binary", channels=1)  # a simple_cnn classifier
    with pytest.raises(ValueError, match="simple_cnn.*resnet18"):
        build_model("unet-resnet18", 1, 1, 64, weights=str(path / "model.pt"))
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model("unet-resnet18", 1, 1, 100)
    with pytest.raises(ValueError, match="no pretrained encoder"):
        build_model("unet-efficientnet-b0", 1, 1, 64, weights="imagenet")


def test_a_frozen_encoder_keeps_its_weights_and_batchnorm(tmp_path):
    unet = build_model("unet-resnet18", 1, 1, 32)
    set_backbone_frozen(unet, True)
    train_mode(unet, True)
    before = {k: v.clone() for k, v in unet.backbone.state_dict().items()}
    head = [p.clone() for p in unet.head.parameters()]
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.rand(4, 1, 32, 32), (torch.rand(4, 1, 32, 32) > 0.7).float()
    SEG.make_loss()(unet(x), y).backward()
    optimizer.step()
    assert all(torch.equal(v, before[k]) for k, v in unet.backbone.state_dict().items())
    assert not unet.backbone.training and unet.head.training
    assert any(not torch.equal(a, b) for a, b in zip(head, unet.head.parameters(), strict=True))


def test_a_trial_trains_the_decoder_on_a_frozen_transferred_encoder(tmp_path):
    """--weights PATH of a classifier + unfreeze_epoch 1: epoch 1 keeps the encoder exactly."""
    path, state = _classifier_checkpoint(tmp_path, image_size=28)
    task = dataclasses.replace(get_task("segfolder"), image_size=32)
    saved = []

    def keep(metrics, checkpoint_dir):
        saved.append((metrics, load_checkpoint(checkpoint_dir)))

    config = {
        "task": "segfolder",
        "image_size": 32,
        "epochs": 1,
        "batch_size": 4,
        "weights": path,
        "unfreeze_epoch": 1,
    }
    train_loop(config, keep, _masks_data(n=4), task=task, placement=CPU)
    ((metrics, ckpt),) = saved
    assert metrics["frozen"] == 1
    for key, value in state.items():
        if key.startswith("backbone.") and key != "backbone.conv1.weight":
            assert torch.equal(ckpt["state_dict"][key], value), key


def _masks_data(n: int = 8, size: int = 32, seed: int = 0) -> dict:
    """Learnable masks: a bright square per image (its mask), on noise."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n), ("val", n // 2), ("test", n // 2)):
        images = rng.integers(0, 60, size=(count, size, size), dtype=np.uint8)
        masks = np.zeros((count, size, size), np.uint8)
        for i in range(count):
            r, c = rng.integers(0, size // 2, 2)
            masks[i, r : r + size // 3, c : c + size // 3] = 1
        images[masks == 1] = 220
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, masks
    return arrays


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory):
    """(task, arrays, checkpoint folder) of two epochs of a U-Net on synthetic masks."""
    task = dataclasses.replace(get_task("segfolder"), image_size=32)
    arrays = _masks_data()
    folder = tmp_path_factory.mktemp("seg") / "checkpoint"
    reports = []

    def keep(metrics, checkpoint_dir):
        reports.append(metrics)
        shutil.copytree(checkpoint_dir, folder, dirs_exist_ok=True)

    config = {
        "task": "segfolder",
        "image_size": 32,
        "epochs": 2,
        "batch_size": 4,
        "lr": 3e-3,
        "aug_cutoff_epoch": 1,
        "dropout": 0.1,
    }
    train_loop(config, keep, arrays, task=task, placement=CPU)
    return task, arrays, folder, reports


def test_train_loop_reports_mask_metrics_and_rebuilds(seg_checkpoint):
    task, arrays, folder, reports = seg_checkpoint
    assert [r["epoch"] for r in reports] == [1, 2]
    for r in reports:
        assert {"val_dice", "val_iou", "val_pixel_acc", "val_loss"} <= set(r)
        assert 0 <= r["val_dice"] <= 1 and r["augmented"] == (r["epoch"] == 1)
    ckpt = load_checkpoint(folder)
    assert ckpt["kind"] == "segmentation" and ckpt["model"] == "unet-resnet18"
    probs = predict(ckpt, model_from_checkpoint(ckpt), arrays["val_images"])
    assert probs.shape == (4, 1, 32, 32)


def test_attribution_draws_masks_and_gradcam(seg_checkpoint, tmp_path):
    task, arrays, folder, _ = seg_checkpoint
    panel = (arrays["val_images"][:2], arrays["val_labels"][:2])
    focus = after.explain_checkpoint(str(folder), str(tmp_path / "attr"), panel, {}, "mask")
    assert 0 <= focus <= 1
    assert (tmp_path / "attr" / "gradcam.png").read_bytes().startswith(b"\x89PNG")
    with np.load(tmp_path / "attr" / "maps.npz") as maps:
        assert maps["gradcam"].shape == (2, 32, 32)
        assert np.array_equal(maps["masks"], panel[1])


def test_test_figures_have_image_bootstrap_cis(seg_checkpoint, tmp_path):
    task, arrays, folder, _ = seg_checkpoint
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    trials = [{"trial_id": "t0", "checkpoint_path": str(folder), "val_dice": 0.5}]
    settings = after.EvaluationSettings("val_dice", "max")
    reader = SplitReader.npz(str(path), task)
    out = after.evaluate_on_test(trials, str(tmp_path), task, reader, settings)
    result = json.loads((tmp_path / "test_metrics.json").read_text())["trials"]["t0"]
    assert result["n"] == 4 and result["bootstrap"]["unit"] == "images"
    labels = load_npz(path, task, splits=("test",))["test_labels"]
    with np.load(tmp_path / "t0" / "test_predictions.npz") as npz:
        counts = pixel_counts(labels, npz["probs"].reshape(labels.shape) >= 0.5).sum(axis=0)
    tp, fp, fn, tn = counts
    assert result["split"]["dice"]["value"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert result["accuracy"]["value"] == pytest.approx((tp + tn) / counts.sum())
    for name in ("dice", "iou", "pixel_accuracy"):
        for block in (result["split"][name], result["per_image_mean"][name]):
            assert block["ci_low"] <= block["value"] <= block["ci_high"]
        assert len(result["per_image"][name]) == 4
    assert math.isclose(
        np.mean(result["per_image"]["dice"]), result["per_image_mean"]["dice"]["value"]
    )
    again = get_kind("segmentation").test_figures(
        labels, npz_probs(tmp_path), ["background", "foreground"]
    )
    assert again["split"]["dice"] == result["split"]["dice"]  # seeded: the same CIs
    exp = Experiment(tmp_path, {}, [{**trials[0], "status": "finished"}], [], out)
    html = segmentation_section(exp)
    assert "mean per image" in html and "Per test image" in html


def npz_probs(folder):
    with np.load(folder / "t0" / "test_predictions.npz") as npz:
        return npz["probs"][:, 0]


def test_explain_writes_the_predicted_mask_and_overlay(seg_checkpoint, tmp_path, write_png):
    _, _, folder, _ = seg_checkpoint
    image = tmp_path / "em.png"
    write_png(image, (50, 40), 120, mode="L")
    (result,) = explain_images(folder, [image], out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "em_mask.png").is_file()
    assert (tmp_path / "out" / "em_overlay.png").read_bytes().startswith(b"\x89PNG")
    assert "em_mask.png" in describe(result) and result["kind"] == "segmentation"


@pytest.mark.slow
def test_a_real_search_on_the_isbi_sample(isbi_path, tmp_path, run_search, write_space):
    """2 trials x 2 epochs of a from-scratch U-Net at 64 px on the real EM images: every
    piece after the search (overlays, test figures with CIs, report) is written."""
    src = tmp_path / "isbi"
    shutil.copytree(isbi_path, src)
    fixed = {
        "model": "unet-resnet18",
        "task": "segfolder",
        "image_size": 64,
        "epochs": 2,
        "batch_size": 4,
    }
    lr = {"distribution": "log_uniform_values", "min": 1e-3, "max": 5e-3}
    space = write_space(
        tmp_path / "space.yaml", min_iter=2, lr=lr, **{k: {"value": v} for k, v in fixed.items()}
    )
    space_file = tmp_path / "space.yaml"
    space_file.write_text(space_file.read_text().replace("val_auc", "val_dice"))
    proc = run_search(
        "--task",
        "segfolder",
        "--data-dir",
        str(src),
        "--space",
        space,
        "--trials",
        "2",
        "--weights",
        "none",
        "--launcher",
        "function",
        "--explain-top",
        "1",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "isbi",
    )
    assert proc.returncode == 0
    root = tmp_path / "runs" / "isbi"
    tests = json.loads((root / "test_metrics.json").read_text())
    best = tests["trials"][tests["best_trial"]]
    assert best["n"] == 5 and 0 < best["split"]["dice"]["value"] <= 1
    assert best["split"]["dice"]["ci_low"] <= best["split"]["dice"]["ci_high"]
    assert (root / tests["best_trial"] / "attribution" / "gradcam.png").is_file()
    report = (root / "report.html").read_text()
    assert "val_dice" in report
