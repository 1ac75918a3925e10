"""What a search reads before Ray starts: the data file, the arrays, the weights, the space.

    task, path = locate_data(task, image_size, data, seed)   # npz, or a converted folder
    source = describe_data(path, task, image_size, folds=0)   # streamed: labels, no image
    data = load_arrays(path, task, folds=0)             # train + val (the resident path only)
    values = param_space(settings, space)               # domains + command-line settings
    fetch_weights(values, task)                         # ImageNet weights, once, on the driver

`data` is a `search.driver.settings.DataSettings` (`data_dir` and `split` are what
`locate_data` reads; search/wandb_trial.py builds one with just those), `settings` the whole
`Settings` (its fixed training settings, seed and `--smoke-test`) for `param_space`.
"""

from __future__ import annotations

import dataclasses
import logging

from search.data.downloads import ensure_dataset
from search.data.folder_split import small_data_warnings
from search.data.folders import convert_folder
from search.driver.folds import file_arrays
from search.data.node_data import DataSource, describe
from search.data.segfolders import convert_segfolder
from search.driver.settings import DataSettings, Settings
from search.driver.space import Space
from trainables.data import SEARCH_SPLITS, load_npz
from trainables.kinds import kind_for_classes
from trainables.models import PRETRAINED, load_imagenet_state
from trainables.tasks import Task
from trainables.train import TrainConfig

log = logging.getLogger("medsweep")
SMOKE_SETTINGS = {"epochs": 1, "max_batches": 3}


def locate_data(
    task: Task, image_size: int, data: DataSettings, seed: int = 0
) -> tuple[Task, str]:
    """(task, npz path): a MedMNIST file, or a folder per class converted once (cached) and
    split with `seed`.

    A folder task comes back with its classes, kind and channels from the folder."""
    if task.source in CONVERTERS:
        return CONVERTERS[task.source](task, image_size, data, seed)
    if task.source != "folder":
        return task, ensure_dataset(task, image_size, data.data_dir)
    if not data.data_dir:
        raise SystemExit(
            f"--task {task.name} reads a folder per class: pass --data-dir DIR (for malaria, "
            "the NIH cell_images/ folder holding Parasitized/ and Uninfected/)"
        )
    fixed = list(task.classes) or None  # malaria fixes its order; folder takes the folders'
    path, classes, info = convert_folder(
        data.data_dir, image_size, split=data.split, seed=seed, classes=fixed
    )
    for line in small_data_warnings(info["counts"]):
        log.warning("small data: %s", line)
    log.info(
        "%s: %s split, images per split %s",
        data.data_dir,
        info["split"],
        {k: sum(v.values()) for k, v in info["counts"].items()},
    )
    kind = task.kind if task.classes else kind_for_classes(len(classes))
    task = dataclasses.replace(task, classes=tuple(classes), kind=kind, channels=info["channels"])
    return task, path


def locate_segfolder(
    task: Task, image_size: int, data: DataSettings, seed: int
) -> tuple[Task, str]:
    """(task with the images' channels, npz path) of an images/ + masks/ folder."""
    if not data.data_dir:
        raise SystemExit(
            f"--task {task.name} reads images/ and masks/ of the same names: "
            "pass --data-dir DIR (e.g. data/isbi2012-membranes)"
        )
    path, info = convert_segfolder(data.data_dir, image_size, seed=seed)
    log.info(
        "%s: %s split, images per split %s, foreground share %s",
        data.data_dir,
        info["split"],
        {k: max(v.values()) for k, v in info["counts"].items()},
        {k: round(v, 3) for k, v in info["foreground"].items()},
    )
    return dataclasses.replace(task, channels=info["channels"]), path


CONVERTERS = {"segfolder": locate_segfolder}
"""`Task.source` -> how its data is found and converted (besides medmnist and folder)."""


def describe_data(path: str, task: Task, image_size: int, folds: int = 0) -> DataSource:
    """The descriptor streamed trials get (`search.data.node_data`): labels and sizes,
    validated against the images' headers (no image is read); file names under `--folds`."""
    return describe(path, task, image_size, file_arrays(path) if folds > 1 else None)


def load_arrays(path: str, task: Task, folds: int = 0) -> dict:
    """The train and val arrays; under `--folds`, also the file names (patient ids keep each
    patient in one fold)."""
    data = load_npz(path, task, splits=SEARCH_SPLITS)
    if folds > 1:
        data.update(file_arrays(path))
    return data


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
