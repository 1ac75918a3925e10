"""Tests for search/explain.py: a real checkpoint (`make_checkpoint`: one epoch of `train_loop`)
explains PNG and JPEG images of any size and mode; probabilities per class, both overlays
written; clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search.explain import main
from search.reporting.explanations import explain_images, read_image
from trainables.attribution import cam_layer
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, normalised_input, predict

PNG = b"\x89PNG\r\n\x1a\n"


def write_images(folder: Path) -> list[Path]:
    """A 40x50 RGB PNG and a 20x20 greyscale JPEG."""
    rng = np.random.default_rng(0)
    rgb, grey = folder / "cell.png", folder / "xray.jpg"
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8), "RGB").save(rgb)
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), "L").save(grey)
    return [rgb, grey]


def assert_png(path: str) -> None:
    assert Path(path).read_bytes().startswith(PNG)
    with Image.open(path) as img:
        img.verify()


def test_multiclass_png_and_jpeg(tmp_path, capsys, make_checkpoint, fake_classes):
    folder = make_checkpoint("multiclass", channels=3)
    ckpt = folder / "model.pt"
    images = write_images(tmp_path)
    results = explain_images(folder, images, steps=4, samples=2)
    assert [r["image"] for r in results] == [str(p) for p in images]
    for r, image in zip(results, images, strict=True):
        assert list(r["probabilities"]) == list(fake_classes["multiclass"])
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        best = max(r["probabilities"], key=r["probabilities"].get)
        assert r["predicted"] == [best]
        assert r["gradcam"] == str(image.parent / f"{image.stem}_gradcam.png")
        assert r["ig"] == str(image.parent / f"{image.stem}_ig.png")
        assert_png(r["gradcam"])
        assert_png(r["ig"])
    assert main([str(ckpt), str(images[0]), "--steps", "2", "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "cell.png: predicted" in out and all(c in out for c in list(fake_classes["multiclass"]))
    assert "independent probability" not in out  # one class per image: they sum to 1


def test_matches_predict_on_prepared_pixels(tmp_path, make_checkpoint):
    """Reading + resizing + normalising gives what `predict` gives on the same uint8 array."""
    ckpt_path = make_checkpoint("multiclass", channels=3) / "model.pt"
    image = write_images(tmp_path)[1]  # greyscale into a 3-channel model
    pixels = read_image(image, channels=3, size=28)
    assert pixels.shape == (28, 28, 3) and pixels.dtype == np.uint8
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    expected = predict(ckpt, model, pixels[None])
    with torch.no_grad():
        logits = model(normalised_input(ckpt, pixels[None]))
    np.testing.assert_allclose(logits.softmax(1).numpy(), expected, atol=1e-6)
    result = explain_images(ckpt_path, [image], out_dir=tmp_path / "o", steps=2, samples=1)[0]
    np.testing.assert_allclose(list(result["probabilities"].values()), expected[0], atol=1e-6)


def test_binary_small_images_use_an_earlier_layer(tmp_path, make_checkpoint, fake_classes):
    """At 12 px the simple CNN's last block is 3x3: Grad-CAM moves to a layer >= 4x4."""
    ckpt_path = make_checkpoint("binary", channels=1, image_size=12)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    x = normalised_input(ckpt, read_image(write_images(tmp_path)[0], 1, 12)[None])
    assert cam_layer(model, x) is not model.cam_layer
    out = tmp_path / "maps"
    (r,) = explain_images(ckpt_path, [tmp_path / "cell.png"], out_dir=out, steps=2, samples=1)
    assert list(r["probabilities"]) == list(fake_classes["binary"])
    assert sum(r["probabilities"].values()) == pytest.approx(1)
    assert r["gradcam"] == str(out / "cell_gradcam.png")
    assert_png(r["gradcam"])
    assert_png(r["ig"])


def test_multilabel_and_16_bit(tmp_path, make_checkpoint, capsys, fake_classes):
    ckpt = make_checkpoint("multilabel", channels=1)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 8).save(deep)
    pixels = read_image(deep, channels=1, size=28)
    assert pixels.min() < 20 and pixels.max() > 235  # scaled, not clipped to white
    (r,) = explain_images(ckpt, [deep], steps=2, samples=1)
    assert list(r["probabilities"]) == list(fake_classes["multilabel"])
    assert all(0 <= p <= 1 for p in r["probabilities"].values())
    assert r["predicted"] == [c for c, p in r["probabilities"].items() if p >= 0.5]
    assert_png(r["gradcam"])
    assert main([str(ckpt), str(deep), "--steps", "2", "--samples", "1"]) == 0
    assert "one independent probability per label" in capsys.readouterr().out


def test_errors_name_the_file(tmp_path, capsys, make_checkpoint):
    ckpt = make_checkpoint("multiclass", channels=3)
    good = write_images(tmp_path)[0]
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        explain_images(ckpt, [good, missing])
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match="broken.png"):
        explain_images(ckpt, [broken])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        explain_images(tmp_path / "nowhere", [good])
    assert main([str(ckpt), str(missing)]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert not list(tmp_path.glob("cell_*.png"))  # nothing written when an input is bad
