"""What a search reads before Ray starts besides the data (`search.data.sources`): the
space's values with the command line's settings, and the ImageNet weights.

    values = param_space(settings, space)               # domains + command-line settings
    fetch_weights(values, task)                         # ImageNet weights, once, on the driver

`settings` is the whole `Settings` (its fixed training settings, seed and `--smoke-test`).
"""

from __future__ import annotations

from search.driver.settings import Settings
from search.driver.space import Space
from trainables.models import PRETRAINED, load_imagenet_state
from trainables.tasks import Task
from trainables.train import TrainConfig

SMOKE_SETTINGS = {"epochs": 1, "max_batches": 3}


def param_space(settings: Settings, space: Space) -> dict:
    """The space's domains with the command line's fixed settings laid over them."""
    overrides = settings.training_overrides()
    values = {**space.domains, **{k: v for k, v in overrides.items() if v is not None}}
    values["seed"] = settings.search.seed
    if settings.search.smoke_test:
        values.update(SMOKE_SETTINGS)
    fixed = {k: v for k, v in values.items() if k not in space.searched}
    TrainConfig.from_dict(fixed)  # a bad fixed setting fails here, before Ray starts
    return values


def fetch_weights(values: dict, task: Task) -> None:
    """Fetch ImageNet weights once, on the driver, before any trial starts."""
    if values.get("weights") != "imagenet":
        return
    model = values.get("model") or task.model
    names = model.categories if hasattr(model, "categories") else [model]
    for name in names:
        if name in PRETRAINED:
            load_imagenet_state(name)
