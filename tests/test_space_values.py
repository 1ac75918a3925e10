"""Every value a space lets a trial take is checked before Ray starts, by the trials' own
check (`search.driver.checks.check_space_values`), at both ends of a range."""

from __future__ import annotations

import glob
import os

import pytest

from search.driver.checks import UserError
from search.driver.input_checks import check_models, check_space_values
from search.driver.inputs import param_space
from search.driver.settings import Settings
from search.driver.space import load_space
from trainables.tasks import TASK_NAMES, get_task

HEAD = "method: random\nmetric: {name: val_auc, goal: maximize}\nparameters:\n"


def _task_of(path: str):
    stem = os.path.basename(path).removesuffix(".yaml")
    name = max((t for t in TASK_NAMES if stem.startswith(t)), key=len, default=None)
    return get_task(name or "segfolder")  # seg-unet.yaml


@pytest.mark.parametrize("path", sorted(glob.glob("spaces/*.yaml")))
def test_every_shipped_space_passes(path):
    task = _task_of(path)
    space = load_space(path, task)
    check_space_values(space, param_space(Settings(), space))


@pytest.mark.parametrize(
    "knob, spec, bad",
    [
        ("dropout", "{distribution: uniform, min: -0.2, max: 0.5}", "-0.2"),
        ("dropout", "{distribution: uniform, min: 0.2, max: 1.5}", "1.49"),
        ("lr", "{values: [0.001, -0.1]}", "-0.1"),
        ("lr_schedule", "{values: [none, cosin]}", "cosin"),
        ("aug_cutoff_epoch", "{distribution: int_uniform, min: -2, max: 3}", "-2"),
    ],
)
def test_a_value_some_draws_would_hit_is_refused(tmp_path, knob, spec, bad):
    path = tmp_path / "space.yaml"
    path.write_text(HEAD + f"  model: {{value: simple_cnn}}\n  {knob}: {spec}\n")
    space = load_space(str(path), get_task("pneumonia"))
    with pytest.raises(UserError, match=f"{knob}.*{bad}"):
        check_space_values(space, param_space(Settings(), space))


def test_a_range_inside_the_legal_values_passes(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(HEAD + "  dropout: {distribution: uniform, min: 0.0, max: 1.0}\n")
    space = load_space(str(path), get_task("pneumonia"))
    check_space_values(space, param_space(Settings(), space))


def test_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(HEAD + "  lr: {value: 0.001}\n  lr: {value: 0.01}\n")
    with pytest.raises(ValueError, match="'lr' given twice"):
        load_space(str(path), get_task("pneumonia"))


def test_a_misspelt_key_inside_a_distribution_is_refused(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(HEAD + "  lr: {distribution: uniform, min: 0.001, mxa: 0.01}\n")
    with pytest.raises(ValueError, match="mxa"):
        load_space(str(path), get_task("pneumonia"))


@pytest.mark.parametrize(
    "params, bad",
    [
        ("  model: {values: [simple_cnn, unet-resnet18]}\n", "does not fit a binary"),
        ("  model: {values: [simple_cnn, resnet181]}\n", "is not a model"),
    ],
)
def test_a_model_that_does_not_fit_the_kind_is_refused(tmp_path, params, bad):
    path = tmp_path / "space.yaml"
    path.write_text(HEAD + params)
    task = get_task("pneumonia")
    space = load_space(str(path), task)
    with pytest.raises(UserError, match=bad):
        check_models(space, param_space(Settings(), space), task)


def test_weights_that_do_not_load_are_refused(tmp_path):
    import torch

    path = tmp_path / "space.yaml"
    path.write_text(HEAD + "  model: {value: resnet18}\n  lr: {values: [0.001, 0.01]}\n")
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    task = get_task("pneumonia")
    for weights, bad in ((wrong, "does not load"), (tmp_path / "missing.pt", "does not load")):
        space = load_space(str(path), task)
        values = {**param_space(Settings(), space), "weights": str(weights)}
        with pytest.raises(UserError, match=bad):
            check_models(space, values, task)


@pytest.mark.parametrize(
    "metric, bad",
    [
        ("{name: val_auc, goal: minimize}", "worst val_auc"),
        ("{name: val_dice, goal: maximize}", "not reported by binary"),
    ],
)
def test_a_metric_the_kind_lacks_or_its_wrong_goal_is_refused(tmp_path, metric, bad):
    path = tmp_path / "space.yaml"
    path.write_text(f"method: random\nmetric: {metric}\nparameters:\n  lr: {{value: 0.001}}\n")
    with pytest.raises(ValueError, match=bad):
        load_space(str(path), get_task("pneumonia"))


def test_a_segmentation_knob_on_a_classifier_is_not_searched(tmp_path, caplog):
    path = tmp_path / "space.yaml"
    path.write_text(HEAD + "  dice_weight: {values: [0.5, 1.0]}\n")
    space = load_space(str(path), get_task("pneumonia"))
    assert "dice_weight" not in space.searched
    assert "does not use it" in caplog.text
