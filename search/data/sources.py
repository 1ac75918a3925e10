"""The registry of data sources: how each kind of dataset is found, checked, converted and
described. The driver asks it and never branches on the source.

    located = locate_data(task, image_size, data, seed)   # before Ray: listing, labels, checks
    located = ingest_data(located, data)                   # after Ray is up: decode if needed
    source = describe_data(located, folds=0)               # streamed: labels and sizes, no image
    arrays = load_arrays(located, folds=0)                 # train + val (the resident path)
    task, path = prepare_data(task, image_size, data, seed)   # both steps (the W&B agent, tools)

A source (one class each) knows one layout: `medmnist` (an npz per flag and size, fetched once),
`folder` (a folder per class; also malaria), `segfolder` (images/ + masks/) and `table` (images
listed in a CSV, TSV or Parquet table: `--task table`, `chexpert`, `chestxray14`). `locate`
runs on the driver before Ray starts and reads no pixel: every mistake a trial would meet in the
listing, the labels or the split is refused there. The file-based sources plan a
`search.data.conversion.Conversion`, which `ingest` carries out once Ray is up
(`search.data.ingest`: Ray Data tasks over the cluster, incremental, cached by fingerprint
outside the data folder); a current conversion is reused without decoding anything.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from search.data.conversion import Conversion, cache_file
from search.data.downloads import ensure_dataset
from search.data.fingerprint import data_fingerprint
from search.data.folder_split import small_data_warnings
from search.data.node_data import DataSource, describe
from search.data.settings import DataSettings
from trainables.data import SEARCH_SPLITS, load_npz
from trainables.kinds import kind_for_classes
from trainables.tasks import Task

log = logging.getLogger("medsweep")


@dataclass(frozen=True)
class Located:
    """Where a task's data is, and what is still to be done before trials can read it."""

    task: Task
    """The task, with classes and kind from the data where the data decides them."""
    path: str
    """The npz every split is read from (exists once `ingest_data` returned)."""
    image_size: int
    conversion: Conversion | None = None
    """The planned conversion of a file-based source (None: the npz is the source)."""
    info: dict = dataclasses.field(default_factory=dict)
    """What the conversion recorded (split, counts, channels, skipped files, ...)."""


class Source:
    """One layout of data. Subclasses implement `locate`; `ingest` converts when planned."""

    name = ""
    needs_dir = ""
    """What `--data-dir` must hold (the error when it is missing); "" when it is optional."""
    downloadable = False
    """A node that lacks the npz may download it (`search.data.node_data`)."""

    def locate(self, task: Task, image_size: int, data: DataSettings, seed: int) -> Located:
        raise NotImplementedError

    def check_dir(self, task: Task, data: DataSettings) -> None:
        if self.needs_dir and not data.data_dir:
            raise ValueError(f"--task {task.name} reads {self.needs_dir}; pass --data-dir DIR")

    def planned(self, task: Task, image_size: int, conversion: Conversion, data) -> Located:
        """The Located of a planned conversion, its npz in the cache folder (`--skip-bad`
        is part of its fingerprint: an npz without the bad rows is another npz)."""
        settings = {**conversion.settings, "skip_bad": bool(data.skip_bad)}
        conversion = dataclasses.replace(conversion, settings=settings)
        path = cache_file(conversion, data.cache_dir)
        return Located(task, path, image_size, conversion, dict(conversion.info))

    def ingest(self, located: Located, data: DataSettings) -> Located:
        """Decode the planned conversion unless its npz is current; the task's channels and
        the info come from the npz."""
        if located.conversion is None:
            return located
        from search.data.ingest import ensure

        info = ensure(located.conversion, located.path, data.skip_bad)
        task = dataclasses.replace(located.task, channels=int(info["channels"]))
        self.log_info(located.conversion.src, info)
        warn_small_splits(located.conversion)
        return dataclasses.replace(located, task=task, info=info)

    def log_info(self, src: str, info: dict) -> None:
        counts = info.get("counts", {})
        for line in small_data_warnings(counts):
            log.warning("small data: %s", line)
        sizes = {k: sum(v.values()) for k, v in counts.items()}
        log.info("%s: %s split, images per split %s", src, info.get("split"), sizes)
        if info.get("skipped"):
            log.warning("--skip-bad: %d unreadable image(s) left out", len(info["skipped"]))


MIN_CI_IMAGES = 20
"""Below this many images, a validation or test split's bootstrap CI (and its ranking of
trials) rests on too little to read."""


def warn_small_splits(conversion: Conversion) -> None:
    """A warning for a validation or test split too small for a confidence interval (a
    3-pair segmentation folder splits 1/1/1)."""
    for split in ("val", "test"):
        n = len(conversion.parts.get(split, ([], None))[0])
        if n < MIN_CI_IMAGES:
            log.warning(
                "small data: the %s split holds %d image(s) (< %d): its figures and their CIs "
                "rest on too few to read; add images or lower the other splits' share",
                split,
                n,
                MIN_CI_IMAGES,
            )


class MedmnistSource(Source):
    """A MedMNIST npz by flag and size: `--data-dir`, else medmnist's root; fetched once."""

    name = "medmnist"
    downloadable = True

    def locate(self, task, image_size, data, seed):
        return Located(task, ensure_dataset(task, image_size, data.data_dir), image_size)


class FolderSource(Source):
    """A folder per class (or train/val/test folders of classes): `search.data.folders`."""

    name = "folder"
    needs_dir = "a folder per class (for malaria, the NIH cell_images/ folder)"

    def locate(self, task, image_size, data, seed):
        from search.data.folders import plan_folder

        self.check_dir(task, data)
        fixed = list(task.classes) or None  # malaria fixes its order; folder takes the folders'
        classes, conversion = plan_folder(
            data.data_dir, image_size, split=data.split, seed=seed, classes=fixed
        )
        kind = task.kind if task.classes else kind_for_classes(len(classes))
        task = dataclasses.replace(task, classes=tuple(classes), kind=kind)
        return self.planned(task, image_size, conversion, data)


class SegfolderSource(Source):
    """Images and masks of the same names: `search.data.segfolders`."""

    name = "segfolder"
    needs_dir = "images/ and masks/ of the same names (e.g. data/isbi2012-membranes)"

    def locate(self, task, image_size, data, seed):
        from search.data.segfolders import plan_segfolder

        self.check_dir(task, data)
        conversion = plan_segfolder(data.data_dir, image_size, seed=seed)
        return self.planned(task, image_size, conversion, data)

    def log_info(self, src, info):
        super().log_info(src, info)
        share = {k: round(v, 3) for k, v in info.get("foreground", {}).items()}
        log.info("%s: foreground share %s", src, share)


class TableSource(Source):
    """Images listed in a table (CSV, TSV, Parquet) with their labels: `search.data.table`."""

    name = "table"
    needs_dir = "the images a label table lists (e.g. the CheXpert-v1.0-small folder)"

    def locate(self, task, image_size, data, seed):
        from search.data.table import plan_table

        self.check_dir(task, data)
        task, conversion = plan_table(task, data, image_size, seed)
        return self.planned(task, image_size, conversion, data)


SOURCES: dict[str, Source] = {
    s.name: s for s in (MedmnistSource(), FolderSource(), SegfolderSource(), TableSource())
}
"""`Task.source` -> its source."""


def source_for(task: Task) -> Source:
    return SOURCES[task.source]


def locate_data(task: Task, image_size: int, data: DataSettings, seed: int = 0) -> Located:
    """Before Ray: find and check the task's data (no pixel read)."""
    return source_for(task).locate(task, image_size, data, seed)


def ingest_data(located: Located, data: DataSettings) -> Located:
    """After Ray is up (or without Ray: a thread pool): convert what `locate_data` planned."""
    return source_for(located.task).ingest(located, data)


def prepare_data(
    task: Task, image_size: int, data: DataSettings, seed: int = 0
) -> tuple[Task, str]:
    """(task, npz path): locate and ingest in one call, for the W&B agent and tools."""
    located = ingest_data(locate_data(task, image_size, data, seed), data)
    return located.task, located.path


def describe_data(located: Located, folds: int = 0) -> DataSource:
    """The descriptor streamed trials get (`search.data.node_data`): labels and sizes, validated
    against the images' headers (no image is read); file names under `--folds`."""
    extra = file_arrays(located.path) if folds > 1 else None
    downloadable = source_for(located.task).downloadable
    return describe(located.path, located.task, located.image_size, extra, downloadable)


def load_arrays(located: Located, folds: int = 0) -> dict:
    """The train and val arrays; under `--folds`, also the file names (patient ids keep each
    patient in one fold)."""
    data = load_npz(located.path, located.task, splits=SEARCH_SPLITS)
    if folds > 1:
        data.update(file_arrays(located.path))
    return data


def file_arrays(path: str, splits: Sequence[str] = SEARCH_SPLITS) -> dict:
    """`{split}_files` and `{split}_patients` arrays of an npz, where it has them (converted
    data), else {}."""
    names = [f"{s}_{part}" for s in splits for part in ("files", "patients")]
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in names if name in npz.files}


def fingerprint_data(located: Located, seed: int, folds: int) -> dict:
    """What every checkpoint records about its data (`search.data.fingerprint`)."""
    return data_fingerprint(located.path, seed=seed, folds=folds)
