"""Tests for trainables.attribution: panel choice, Grad-CAM, Integrated Gradients, the
focus score and the files. Tiny CNNs trained for a second on synthetic 28 px images:

a bright disc on a black background, striped inside (horizontal or vertical: the
*foreground* cue), and a faint square in the top-left or bottom-right corner (the
*background* cue). The two cues are drawn independently, so a model trained on the stripes
must look at the disc and a model trained on the corner square must look beside it.
"""

import matplotlib.image
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from trainables.attribution import (
    IGSettings,
    choose_panel,
    focus_score,
    foreground_masks,
    gradcam_maps,
    integrated_gradients,
    integrated_gradients_maps,
    last_spatial_layer,
    reduce_channels,
    save_grid,
    save_maps,
)

SIZE = 28


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # One intra-op thread: tiny convolutions gain nothing from more, and on a busy 2-core
    # machine two spinning OpenMP threads made this file 5x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 28, 28) float32 images in [0, 1], the stripe label and the corner label."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.zeros((n, SIZE, SIZE), np.float32)
    stripe, corner = rng.integers(0, 2, n), rng.integers(0, 2, n)
    for i in range(n):
        cy, cx = 14 + rng.integers(-2, 3, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(6.5, 8) ** 2
        lines = ((yy if stripe[i] else xx) + rng.integers(0, 4)) // 2 % 2
        images[i][disc] = np.where(lines[disc] == 1, 1.0, 0.55)
        square = slice(1, 6) if corner[i] == 0 else slice(22, 27)
        images[i][square, square] = 0.25  # below Otsu's threshold: background
    return images, stripe, corner


def small_cnn(channels: int = 1, classes: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, classes),
    )


def train(x: torch.Tensor, y: np.ndarray, epochs: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), 3e-3, weight_decay=1e-3)
    target = torch.from_numpy(y).long()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), target[batch]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def data():
    train_images, stripe, corner = make_images(512, seed=0)
    test_images, test_stripe, test_corner = make_images(64, seed=1)
    return {
        "x": torch.from_numpy(train_images)[:, None],
        "stripe": stripe,
        "corner": corner,
        "test_images": test_images,
        "test_x": torch.from_numpy(test_images)[:, None],
        "test_stripe": test_stripe,
        "test_corner": test_corner,
    }


@pytest.fixture(scope="module")
def fg_model(data):
    model = train(data["x"], data["stripe"])
    accuracy = (model(data["test_x"]).argmax(1).numpy() == data["test_stripe"]).mean()
    assert accuracy > 0.9, f"the stripe model did not learn (accuracy {accuracy:.2f})"
    return model


@pytest.fixture(scope="module")
def bg_model(data):
    model = train(data["x"], data["corner"])
    accuracy = (model(data["test_x"]).argmax(1).numpy() == data["test_corner"]).mean()
    assert accuracy > 0.9, f"the corner model did not learn (accuracy {accuracy:.2f})"
    return model


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(1)
    return small_cnn().eval()


def check_maps(maps: np.ndarray, n: int) -> None:
    assert maps.shape == (n, SIZE, SIZE)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert (maps.reshape(n, -1).std(axis=1) > 0).all(), "a map is constant"


# choose_panel


def test_panel_is_deterministic_and_covers_every_class():
    labels = np.random.default_rng(0).integers(0, 5, (300, 1))
    panel = choose_panel(labels, "multiclass", per_class=3, seed=7)
    assert np.array_equal(panel, choose_panel(labels, "multiclass", per_class=3, seed=7))
    assert not np.array_equal(panel, choose_panel(labels, "multiclass", per_class=3, seed=8))
    assert len(set(panel.tolist())) == len(panel) == 15
    assert np.array_equal(np.bincount(labels[panel, 0], minlength=5), [3] * 5)
    assert np.array_equal(labels[panel, 0], np.sort(labels[panel, 0]))  # grouped by class


def test_panel_small_classes_contribute_what_they_have():
    labels = np.array([0] * 10 + [1] * 1 + [2] * 2)[:, None]
    panel = choose_panel(labels, "multiclass", per_class=3, seed=0)
    assert np.bincount(labels[panel, 0]).tolist() == [3, 1, 2]
    assert len(choose_panel(labels[:0], "multiclass", per_class=3, seed=0)) == 0


def test_panel_multilabel_has_each_label_without_duplicates():
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=(400, 6)) < [0.3, 0.2, 0.1, 0.05, 0.02, 0.0]).astype(np.uint8)
    panel = choose_panel(labels, "multilabel", per_class=2, seed=0)
    assert np.array_equal(panel, choose_panel(labels, "multilabel", per_class=2, seed=0))
    assert len(np.unique(panel)) == len(panel)
    positives = labels[panel].sum(axis=0)
    assert (positives[:5] >= 2).all() and positives[5] == 0  # label 5 has no positive image
    assert labels[panel].any(axis=1).all()


def test_panel_rejects_bad_kind_and_shape():
    with pytest.raises(ValueError, match="multilabel"):
        choose_panel(np.zeros((5, 3)), "multiclass", per_class=1, seed=0)
    with pytest.raises(ValueError, match="choose one of"):
        choose_panel(np.zeros((5, 1)), "multi-class", per_class=1, seed=0)


# Grad-CAM


def test_gradcam_maps_have_image_shape_and_depend_on_training(data, fg_model, untrained):
    x, targets = data["test_x"][:8], data["test_stripe"][:8].tolist()
    trained = gradcam_maps(fg_model, x, fg_model[6], targets)
    check_maps(trained, 8)
    assert trained.min() >= 0 and trained.max() <= 1
    random = gradcam_maps(untrained, x, untrained[6], targets)
    assert np.abs(trained - random).mean() > 0.05


def test_gradcam_leaves_model_mode_hooks_and_grads_as_found(data):
    model = small_cnn().train()
    maps = gradcam_maps(model, data["test_x"][:4], model[6], [0, 1, 0, 1], batch_size=3)
    assert maps.shape == (4, SIZE, SIZE)  # an untrained model may give an all-zero CAM
    assert model.training
    assert not model[6]._forward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_one_map_per_positive_label(data, fg_model):
    # Multi-label usage: repeat an image once per positive label.
    x = data["test_x"][:1].repeat(2, 1, 1, 1)
    maps = gradcam_maps(fg_model, x, fg_model[6], [0, 1])
    assert not np.allclose(maps[0], maps[1])
    with pytest.raises(ValueError, match="one target per image"):
        gradcam_maps(fg_model, x, fg_model[6], [0])


def test_last_spatial_layer_avoids_1x1_maps_of_resnet_at_28px():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    layer = last_spatial_layer(model, x)
    assert layer is model.layer2  # 4x4 at 28 px; layer3 is 2x2, layer4 1x1
    check_maps(gradcam_maps(model, x, layer, [0, 2]), 2)
    # The usual choice, layer4, is 1x1 here: the CAM is constant (all zeros).
    assert np.ptp(gradcam_maps(model, x, model.layer4, [0, 2])) == 0
    with pytest.raises(ValueError, match="min_side"):
        last_spatial_layer(model, x, min_side=64)


# Integrated Gradients


def test_integrated_gradients_shapes_and_training_dependence(data, fg_model, untrained):
    x, targets = data["test_x"][:8], data["test_stripe"][:8].tolist()
    raw = integrated_gradients(fg_model, x, targets)
    assert raw.shape == (8, 1, SIZE, SIZE) and np.isfinite(raw).all()
    assert (raw < 0).any() and (raw > 0).any()  # signed
    maps = integrated_gradients_maps(fg_model, x, targets)
    check_maps(maps, 8)
    assert np.allclose(maps, reduce_channels(raw, "abs"), atol=1e-6)
    assert (reduce_channels(raw, "positive") >= 0).all()
    random = integrated_gradients_maps(untrained, x, targets)
    share = lambda m: m / m.sum(axis=(1, 2), keepdims=True)  # noqa: E731
    assert np.abs(share(maps) - share(random)).sum(axis=(1, 2)).mean() > 0.3


def test_integrated_gradients_is_seeded_and_keeps_batchnorm_state(data):
    torch.manual_seed(0)
    model = small_cnn().train()  # BatchNorm in training mode must not see the IG batch
    before = model[1].running_mean.clone()
    rng_state = torch.get_rng_state()
    x = data["test_x"][:3]
    a = integrated_gradients_maps(model, x, [0, 1, 0], IGSettings(seed=3, steps=8))
    b = integrated_gradients_maps(model, x, [0, 1, 0], IGSettings(seed=3, steps=8))
    c = integrated_gradients_maps(model, x, [0, 1, 0], IGSettings(seed=4, steps=8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert torch.equal(model[1].running_mean, before)
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng_state)
    # One image alone gets the same map as inside a batch (eval-mode BatchNorm).
    one_noiseless = IGSettings(n_samples=1, stdevs=0.0, steps=8)
    alone = integrated_gradients(model, x[:1], [0], one_noiseless)
    batch = integrated_gradients(model, x, [0, 1, 0], one_noiseless)
    assert np.allclose(alone[0], batch[0], atol=1e-5)


@pytest.mark.parametrize("baseline", ["zero", "mean", 0.5])
def test_integrated_gradients_baselines_on_rgb_resnet(baseline):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    settings = IGSettings(baseline=baseline, n_samples=2, steps=4, max_batch=4)
    maps = integrated_gradients_maps(model, x, [0, 2], settings)
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and maps.std() > 0
    with pytest.raises(ValueError, match="baseline='median' is not valid"):
        IGSettings(baseline="median")


# Foreground and focus score


def disc_image(bright_on_dark: bool) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - 14) ** 2 + (xx - 12) ** 2 <= 36
    image = np.where(disc, 200, 30) if bright_on_dark else np.where(disc, 60, 230)
    return image.astype(np.uint8), disc


def test_foreground_is_the_object_whether_bright_or_dark():
    for bright_on_dark in (True, False):
        image, disc = disc_image(bright_on_dark)
        assert np.array_equal(foreground_masks(image[None])[0], disc)
        rgb = np.repeat(image[None, ..., None], 3, axis=-1)  # (N, H, W, C) uint8
        assert np.array_equal(foreground_masks(rgb)[0], disc)
        side = "bright" if bright_on_dark else "dark"
        assert np.array_equal(foreground_masks(image[None], side)[0], disc)
        other = "dark" if bright_on_dark else "bright"
        assert np.array_equal(foreground_masks(image[None], other)[0], ~disc)
    with pytest.raises(ValueError, match="choose one of"):
        foreground_masks(image[None], "light")


def test_focus_score_by_hand():
    image, disc = disc_image(bright_on_dark=False)
    images = np.stack([image] * 4 + [np.full_like(image, 90)])
    on_fg, on_bg = disc.astype(float), (~disc).astype(float)
    half = on_fg / on_fg.sum() + on_bg / on_bg.sum()
    maps = np.stack([on_fg, on_bg - 5 * on_fg, half, np.zeros_like(on_fg), on_fg])
    score = focus_score(images, maps)
    assert score[:3] == pytest.approx([1.0, 0.0, 0.5])  # negative attribution ignored
    assert np.isnan(score[3]) and np.isnan(score[4])  # no positive mass; constant image
    with pytest.raises(ValueError, match="channels last"):
        focus_score(images, maps[:, :20])


def test_focus_score_separates_foreground_and_background_models(data, fg_model, bg_model):
    images, x = data["test_images"][:16], data["test_x"][:16]
    scores = {}
    for name, model, labels in [
        ("fg", fg_model, data["test_stripe"]),
        ("bg", bg_model, data["test_corner"]),
    ]:
        targets = labels[:16].tolist()
        scores[name, "ig"] = focus_score(images, integrated_gradients_maps(model, x, targets))
        scores[name, "cam"] = focus_score(images, gradcam_maps(model, x, model[6], targets))
    for value in scores.values():
        assert np.isfinite(value).all() and (value >= 0).all() and (value <= 1).all()
    assert np.mean(scores["fg", "ig"]) > 0.8  # 0.88 to 0.91 over seeds; the corner model 0.43
    assert np.mean(scores["bg", "ig"]) < np.mean(scores["fg", "ig"]) - 0.2
    # Grad-CAM at 14x14 blurs past the disc: a smaller margin (0.18 to 0.38 over seeds).
    assert np.mean(scores["bg", "cam"]) < np.mean(scores["fg", "cam"]) - 0.1


# Files


def test_save_grid_writes_a_png(tmp_path, data, fg_model):
    images, x = data["test_images"][:3], data["test_x"][:3]
    maps = gradcam_maps(fg_model, x, fg_model[6], [0, 1, 1])
    captions = [f"true: stripes / pred: dots (p=0.{i}3)" for i in range(3)]
    path = tmp_path / "attribution" / "gradcam.png"
    path.parent.mkdir()
    path.write_bytes(b"stale")
    save_grid(path, images, maps, captions, title="Grad-CAM")
    picture = matplotlib.image.imread(path)
    assert picture.ndim == 3 and picture.shape[0] > 3 * 100
    assert [p.name for p in path.parent.iterdir()] == ["gradcam.png"]  # no temp file left
    rgb = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    save_grid(tmp_path / "rgb.png", rgb, maps[:2], captions[:2], title="RGB")
    assert matplotlib.image.imread(tmp_path / "rgb.png").ndim == 3
    with pytest.raises(ValueError, match="one map and one caption"):
        save_grid(tmp_path / "bad.png", images, maps, captions[:2], title="x")
    assert not (tmp_path / "bad.png").exists()


def test_save_maps_round_trip(tmp_path):
    path = tmp_path / "maps.npz"
    cams = np.random.default_rng(0).uniform(size=(3, SIZE, SIZE)).astype(np.float32)
    save_maps(path, gradcam=cams, panel=np.arange(3))
    with np.load(path) as saved:
        assert np.array_equal(saved["gradcam"], cams)
        assert saved["panel"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.npz"]


def test_no_focus_score_and_no_warning_where_the_task_defines_no_foreground(
    tmp_path, make_checkpoint
):
    """Issue 13: tissue tiles and X-rays have no foreground a threshold finds (Task.foreground
    None): the maps are drawn, focus is NaN, and no trial is flagged; cells (otsu) get one."""
    import math

    from search.experiment.after import attach_focus, explain_checkpoint

    ckpt = make_checkpoint("multiclass", 3, 28)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (4, 28, 28, 3), dtype=np.uint8)
    images[:, 8:20, 8:20] = 220  # a bright object on a dark background
    labels = np.arange(4).reshape(-1, 1) % 3
    ig = {"n_samples": 1, "steps": 4}
    focus = {}
    for i, foreground in enumerate((None, None, "otsu")):
        out = tmp_path / f"t{i}"
        focus[f"t{i}"] = explain_checkpoint(str(ckpt), str(out), (images, labels), ig, foreground)
        assert (out / "gradcam.png").is_file()
    assert math.isnan(focus["t0"]) and math.isnan(focus["t1"]) and 0 <= focus["t2"] <= 1
    trials = [{"trial_id": "t0"}, {"trial_id": "t1"}]
    assert attach_focus(trials, {k: focus[k] for k in ("t0", "t1")}) == []
    assert all(t["attr_focus_warning"] is False for t in trials)
