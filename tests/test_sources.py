"""The data sources' registry (`search.data.sources`): every task has one source, the driver
never branches on the source, and converted data never lands in the user's data folder."""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from search.data.settings import DataSettings
from search.data.sources import SOURCES, Located, ingest_data, locate_data, prepare_data
from trainables.tasks import TASK_NAMES, get_task

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_task_has_a_source():
    for name in TASK_NAMES:
        assert get_task(name).source in SOURCES, name


def test_only_the_registry_branches_on_the_source():
    """`task.source == ...` outside search/data/sources.py would be a second registry."""
    pattern = re.compile(r"\.source\s*(==|!=|in\b)")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("search", "trainables")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "sources.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def _folder(root: pathlib.Path, per_class: int = 12) -> pathlib.Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (20, 24), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}{i}.png")
    return root


def _listing(root: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_locate_reads_no_pixel_and_ingest_writes_only_to_the_cache(tmp_path, monkeypatch):
    src = _folder(tmp_path / "cells")
    before = _listing(src)
    cache = tmp_path / "cache"
    data = DataSettings(task="folder", data_dir=str(src), split="cell", cache_dir=str(cache))
    located = locate_data(get_task("folder"), 16, data, seed=0)
    assert isinstance(located, Located)
    assert located.task.classes == ("a", "b")
    assert not os.path.exists(located.path)  # planned, not decoded
    assert os.path.dirname(located.path) == str(cache)
    done = ingest_data(located, data)
    assert os.path.isfile(done.path) and done.task.channels == 1
    assert _listing(src) == before  # nothing written into the data folder
    with np.load(done.path) as npz:
        assert npz["train_images"].shape[1:] == (16, 16)
        total = sum(len(npz[f"{s}_labels"]) for s in ("train", "val", "test"))
    assert total == 24


def test_a_current_conversion_is_reused(tmp_path):
    src = _folder(tmp_path / "cells")
    data = DataSettings(task="folder", data_dir=str(src), split="cell", cache_dir=str(tmp_path))
    _, path = prepare_data(get_task("folder"), 16, data)
    stamp = os.stat(path).st_mtime_ns
    _, again = prepare_data(get_task("folder"), 16, data)
    assert again == path and os.stat(path).st_mtime_ns == stamp


def test_an_images_and_masks_folder_is_refused_by_a_classifier(tmp_path):
    src = tmp_path / "em"
    for sub in ("images", "masks"):
        (src / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / sub / "a.png")
    data = DataSettings(task="folder", data_dir=str(src), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="--task segfolder"):
        locate_data(get_task("folder"), 16, data)


def test_images_one_folder_deeper_are_named(tmp_path):
    src = _folder(tmp_path / "cells")
    (src / "a" / "more").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "a" / "more" / "x.png")
    data = DataSettings(task="folder", data_dir=str(src), split="cell", cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="1 image.*a/more/x.png.*not read"):
        locate_data(get_task("folder"), 16, data)


def test_jpeg_masks_and_tiny_splits_are_warned_about(tmp_path, caplog):
    src = tmp_path / "seg"
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (src / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(
            src / "images" / f"{i}.png"
        )
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:24] = 255
        Image.fromarray(mask).save(src / "masks" / f"{i}.jpg", quality=50)
    data = DataSettings(task="segfolder", data_dir=str(src), cache_dir=str(tmp_path / "c"))
    with pytest.warns(UserWarning, match="3 of 3 masks are JPEG.*grey values.*PNG"):
        located = locate_data(get_task("segfolder"), 32, data)
    ingest_data(located, data)
    assert "the test split holds 1 image(s)" in caplog.text
