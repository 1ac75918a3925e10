"""Tests for search/predict.py: a checkpoint from a tiny real training on the shipped
PneumoniaMNIST sample (`train_loop` in this process, no Ray) predicts test images written as
PNGs; one row per image whose probabilities match the checkpoint's own evaluation
(`trainables.checkpoint.predict` on the same pixels); the label at the saved operating point
and temperature; Grad-CAM overlays; images of another size and mode resized and converted;
every mistake one line, exit 2.

    pytest tests/test_predict.py -q
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search.predict import main
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, predict
from trainables.tasks import get_task

N_IMAGES = 24


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pneumonia_path_module) -> dict:
    """An experiment-like folder with one trial's checkpoint (1 epoch on 300 images) and the
    first N_IMAGES test images as PNGs."""
    from trainables.train import Placement, train_loop

    root = tmp_path_factory.mktemp("predict")
    with np.load(pneumonia_path_module) as npz:
        data = {k: npz[k] for k in npz.files}
    arrays = {
        "train_images": data["train_images"][:300],
        "train_labels": data["train_labels"][:300],
        "val_images": data["val_images"][:100],
        "val_labels": data["val_labels"][:100],
    }
    folder = root / "exp" / "trial_0" / "checkpoint"

    def keep(metrics: dict, checkpoint_dir: str | None) -> None:
        shutil.copytree(checkpoint_dir, folder, dirs_exist_ok=True)

    config = {"task": "pneumonia", "model": "simple_cnn", "weights": "none", "epochs": 1}
    cpu = Placement(device=torch.device("cpu"))
    train_loop({**config, "batch_size": 32, "lr": 3e-3}, keep, arrays, placement=cpu)
    images = data["test_images"][:N_IMAGES]
    pngs = root / "pngs"
    pngs.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image, "L").save(pngs / f"img_{i:03d}.png")
    return {"checkpoint": folder / "model.pt", "pngs": pngs, "images": images, "root": root}


@pytest.fixture(scope="module")
def pneumonia_path_module() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "pneumoniamnist.npz"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_match_the_checkpoints_own_evaluation(trained, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert (
        main([str(trained["checkpoint"]), "--data-dir", str(trained["pngs"]), "--out", str(out)])
        == 0
    )
    rows = _rows(out)
    classes = list(get_task("pneumonia").classes)
    assert list(rows[0]) == ["path", *[f"p_{c}" for c in classes], "label"]
    assert [Path(r["path"]).name for r in rows] == [f"img_{i:03d}.png" for i in range(N_IMAGES)]
    ckpt = load_checkpoint(trained["checkpoint"])
    p = predict(ckpt, model_from_checkpoint(ckpt), trained["images"])[:, 0]
    got = np.array([float(r[f"p_{classes[1]}"]) for r in rows])
    np.testing.assert_allclose(got, p, atol=1e-5)
    np.testing.assert_allclose(got + [float(r[f"p_{classes[0]}"]) for r in rows], 1, atol=1e-5)
    assert [r["label"] for r in rows] == [classes[int(x >= 0.5)] for x in p]
    err = capsys.readouterr().err
    assert "no saved operating point" in err and "resized" not in err


def test_the_saved_operating_point_and_temperature(trained, tmp_path):
    """test_metrics.json two folders up names the trial's threshold and temperature."""
    metrics = trained["root"] / "exp" / "test_metrics.json"
    ckpt = load_checkpoint(trained["checkpoint"])
    logits = predict(ckpt, model_from_checkpoint(ckpt), trained["images"], logits=True)[:, 0]
    p = 1 / (1 + np.exp(-logits / 2.0))
    threshold = float(np.median(p))
    entry = {"threshold": threshold, "calibration": {"temperature": 2.0}}
    metrics.write_text(json.dumps({"best_trial": "trial_0", "trials": {"trial_0": entry}}))
    try:
        out, cams = tmp_path / "p.csv", tmp_path / "cams"
        pngs = sorted(trained["pngs"].glob("*.png"))[:4]
        argv = [str(trained["checkpoint"].parent), *map(str, pngs), "--out", str(out)]
        assert main([*argv, "--cam", str(cams), "--batch-size", "3"]) == 0
    finally:
        metrics.unlink()
    rows = _rows(out)
    positive = get_task("pneumonia").classes[1]
    got = np.array([float(r[f"p_{positive}"]) for r in rows])
    np.testing.assert_allclose(got, p[:4], atol=1e-5)
    assert [r["label"] == positive for r in rows] == list(p[:4] >= threshold)
    written = sorted(cams.glob("*_gradcam.png"))
    assert [w.name for w in written] == [f"{x.stem}_gradcam.png" for x in pngs]
    assert all(w.read_bytes().startswith(b"\x89PNG") for w in written)


def test_other_sizes_and_modes_are_resized_and_converted(trained, tmp_path, capsys):
    rgb = tmp_path / "big.png"
    Image.fromarray(np.full((50, 40, 3), 128, np.uint8), "RGB").save(rgb)
    out = tmp_path / "p.csv"
    assert main([str(trained["checkpoint"]), str(rgb), "--out", str(out)]) == 0
    assert len(_rows(out)) == 1
    err = capsys.readouterr().err
    assert "1 of 1 images resized to 28x28" in err and "converted to L" in err


@pytest.mark.parametrize(
    "case, named",
    [
        ("not-a-checkpoint", "is not a medsweep checkpoint"),
        ("json-not-ensemble", "is not a medsweep ensemble"),
        ("missing-image", "does not exist"),
        ("broken-image", "could not be read as an image"),
        ("no-images", "no images given"),
        ("bad-flag", "unrecognized arguments"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(trained, tmp_path, capsys, case, named):
    png = str(next(trained["pngs"].glob("*.png")))
    ckpt = str(trained["checkpoint"])
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"not a checkpoint")
    other = tmp_path / "ensemble.json"
    other.write_text(json.dumps({"format": "something-else"}))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    argv = {
        "not-a-checkpoint": [str(junk), png],
        "json-not-ensemble": [str(other), png],
        "missing-image": [ckpt, str(tmp_path / "nope.png")],
        "broken-image": [ckpt, str(broken)],
        "no-images": [ckpt],
        "bad-flag": [ckpt, png, "--colour", "blue"],
    }[case]
    capsys.readouterr()
    try:
        code = main([*argv, "--out", str(tmp_path / "p.csv")])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], err
    assert named in lines[0]
    assert "Traceback" not in err
