"""Space files: every one in spaces/ loads and converts; bad ones fail with their messages."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from ray import tune

from search.driver.space import default_space_path, load_space, parse_space
from trainables.tasks import TASK_NAMES, get_task
from trainables.train import KNOBS, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SPACE_FILES = sorted((ROOT / "spaces").glob("*.yaml"))


def test_every_task_has_a_space_file():
    assert {p.stem for p in SPACE_FILES} >= set(TASK_NAMES)


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_space_file_loads_and_converts(path):
    raw = yaml.safe_load(path.read_text())
    task = get_task(raw["parameters"]["task"]["value"])
    space = load_space(path, task)
    if path.stem != "pneumonia-compare":  # searchers compared on validation loss
        assert space.metric == task.metric and space.mode == task.mode
    assert space.mode == {"val_loss": "min"}.get(space.metric, "max")
    assert set(space.searched) >= set(KNOBS) - {"unfreeze_epoch"}
    pretrained = space.domains.get("weights") not in (None, "none")
    assert ("unfreeze_epoch" in space.searched) == pretrained
    sample = {k: (v.sample() if hasattr(v, "sample") else v) for k, v in space.domains.items()}
    config = TrainConfig.from_dict(sample)  # every sampled point is a valid training config
    assert config.task == task.name
    assert space.grace_period >= 1 and space.reduction_factor >= 2


def test_domains_follow_wandb_semantics():
    task = get_task("blood")
    space = parse_space(
        {
            "parameters": {
                "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                "dropout": {"min": 0.0, "max": 0.5},
                "aug_cutoff_epoch": {"min": 0, "max": 3},
                "model": {"values": ["simple_cnn", "deeper_cnn"]},
                "weight_decay": {"distribution": "log_uniform", "min": -9.2, "max": -2.3},
                "epochs": {"value": 4},
            }
        },
        task,
    )
    d = space.domains
    assert isinstance(d["lr"].sampler, tune.search.sample.LogUniform)
    assert isinstance(d["dropout"], tune.search.sample.Float)
    assert isinstance(d["aug_cutoff_epoch"], tune.search.sample.Integer)
    assert d["aug_cutoff_epoch"].upper == 4  # W&B's max is inclusive
    assert d["model"].categories == ["simple_cnn", "deeper_cnn"]
    assert math.isclose(d["weight_decay"].lower, math.exp(-9.2))
    assert d["epochs"] == 4 and d["task"] == "blood"
    assert space.metric == "val_auc" and space.mode == "max"


BAD = [
    ({"lr": {"distribution": "gaussian", "min": 0, "max": 1}}, "distribution 'gaussian' is not"),
    ({"lr": {"distribution": "uniform", "min": 0.5, "max": 0.1}}, "min 0.5 must be below max"),
    ({"lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}, "needs min > 0"),
    ({"learning_rate": {"value": 0.1}}, "'learning_rate' is not a training setting; valid"),
    ({"lr": {"distribution": "uniform", "min": "a", "max": 1}}, "min/max must be numbers"),
    ({"lr": 0.1}, r"expected a mapping like \{value: ...\}"),
    ({"epochs": {"distribution": "int_uniform", "min": 1.5, "max": 3}}, "integer min/max"),
    ({"task": {"value": "chest"}}, "this space is for task 'chest', not 'blood'"),
]


@pytest.mark.parametrize("parameters, message", BAD, ids=[m for _, m in BAD])
def test_bad_space_is_a_clear_error(parameters, message):
    with pytest.raises(ValueError, match=message):
        parse_space({"parameters": parameters}, get_task("blood"), "my.yaml")


def test_bad_space_file_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("method: bayes\nmetric: {name: val_auroc}\nparameters: {lr: {value: 1}}\n")
    with pytest.raises(ValueError, match=r"broken.yaml: metric 'val_auroc' is not reported"):
        load_space(path, get_task("blood"))
    path.write_text("parameters: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_space(path, get_task("blood"))
    with pytest.raises(FileNotFoundError, match="pass --space FILE"):
        load_space(tmp_path / "nope.yaml", get_task("blood"))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_default_space_path_finds_the_tasks_file(name):
    """What search/run.py loads without --space."""
    path = default_space_path(get_task(name))
    assert path == str(ROOT / "spaces" / f"{name}.yaml")
    assert load_space(path, get_task(name)).path == path


# --- knobs that cannot act are not searched ------------------------------------------------

EPOCH_KNOBS = {"unfreeze_epoch": {"min": 0, "max": 3}, "aug_cutoff_epoch": {"min": 0, "max": 3}}


def _knob_space(tmp_path, **fixed) -> str:
    parameters = {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        **EPOCH_KNOBS,
        **{k: {"value": v} for k, v in fixed.items()},
    }
    path = tmp_path / "space.yaml"
    path.write_text(
        yaml.safe_dump(
            {"metric": {"name": "val_auc", "goal": "maximize"}, "parameters": parameters}
        )
    )
    return str(path)


def test_unfreeze_epoch_is_dropped_without_pretrained_weights(tmp_path, caplog):
    """The quickstart's `--weights none` over a space that says imagenet: no backbone is ever
    frozen, so unfreeze_epoch is fixed (one warning naming it and why), in the Tune domains and
    in the sweep config the W&B engine reads alike."""
    path = _knob_space(tmp_path, weights="imagenet", model="resnet18", epochs=4)
    task = get_task("pneumonia")
    assert "unfreeze_epoch" in load_space(path, task).searched  # imagenet: it acts
    with caplog.at_level("WARNING", logger="medsweep"):
        space = load_space(path, task, fixed={"weights": "none", "epochs": None, "task": "x"})
    assert "unfreeze_epoch" not in space.searched and "lr" in space.searched
    assert space.domains["unfreeze_epoch"] == 0
    assert space.sweep_config["parameters"]["unfreeze_epoch"] == {"value": 0}
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "unfreeze_epoch" in warning.getMessage() and "weights none" in warning.getMessage()


def test_unfreeze_epoch_is_dropped_for_a_model_without_pretrained_weights(tmp_path):
    path = _knob_space(tmp_path, weights="imagenet", model="simple_cnn")
    space = load_space(path, get_task("pneumonia"))
    assert "unfreeze_epoch" not in space.searched and "aug_cutoff_epoch" in space.searched


def test_aug_cutoff_is_dropped_for_a_task_without_augmentations(tmp_path, caplog):
    import dataclasses

    task = dataclasses.replace(get_task("blood"), augment=())
    path = _knob_space(tmp_path, weights="none", model="resnet18")
    with caplog.at_level("WARNING", logger="medsweep"):
        space = load_space(path, task)
    assert set(space.searched) == {"lr"}
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]  # one for both
    assert "aug_cutoff_epoch (task blood has no augmentations" in warning.getMessage()


def test_epoch_knobs_whose_every_value_is_past_the_last_epoch_are_dropped(tmp_path):
    path = _knob_space(tmp_path, weights="imagenet", model="resnet18", epochs=2)
    space = load_space(path, get_task("blood"), fixed={"epochs": 5})
    assert {"unfreeze_epoch", "aug_cutoff_epoch"} <= set(space.searched)  # 0..3 < 5 acts
    late = {"unfreeze_epoch": {"min": 2, "max": 6}}
    space = parse_space(
        {
            "parameters": {
                **late,
                "weights": {"value": "imagenet"},
                "model": {"value": "resnet18"},
                "epochs": {"value": 2},
            }
        },
        get_task("blood"),
    )
    assert "unfreeze_epoch" in space.searched  # parse_space converts only; load_space drops
    from search.driver.space import drop_dead_knobs

    assert drop_dead_knobs(space, get_task("blood")).domains["unfreeze_epoch"] == 2
