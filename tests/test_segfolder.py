"""`--task segfolder`: images/ + masks/ converted once to the npz layout (search.data.segfolders)
and validated: the seeded 20/5/5 split of the ISBI sample, pre-made splits, and the one error
that names every bad file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from search.data.segfolders import convert_segfolder
from search.data.settings import DataSettings
from search.data.sources import prepare_data
from trainables.data import load_npz
from trainables.tasks import get_task


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """The conversion cache of every test here: a tmp folder, never ~/.cache or data/."""
    monkeypatch.setenv("MEDSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _pair(root, split: str, name: str, size=(40, 40), mask_size=None, value=200) -> None:
    for folder, shape, fill in (("images", size, 90), ("masks", mask_size or size, value)):
        path = root / split / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((shape[1], shape[0]), np.uint8)
        pixels[: shape[1] // 2] = fill
        Image.fromarray(pixels).save(path)


def test_the_isbi_sample_splits_20_5_5_by_seed(isbi_path, tmp_path):
    path, info = convert_segfolder(str(isbi_path), 64, seed=0, cache_dir=str(tmp_path))
    assert info["split"] == "seeded" and info["channels"] == 1
    with np.load(path) as npz:
        files = {s: set(npz[f"{s}_files"]) for s in ("train", "val", "test")}
        masks = npz["train_labels"]
    assert [len(files[s]) for s in ("train", "val", "test")] == [20, 5, 5]
    assert not (files["train"] & files["val"]) and not (files["val"] & files["test"])
    assert masks.shape == (20, 64, 64) and set(np.unique(masks)) == {0, 1}
    assert 0.15 < masks.mean() < 0.3  # membranes: about 22% of the pixels
    again, _ = convert_segfolder(str(isbi_path), 64, seed=0, cache_dir=str(tmp_path))
    other, _ = convert_segfolder(str(isbi_path), 64, seed=1, cache_dir=str(tmp_path))
    assert again == path  # cached
    with np.load(other) as npz:
        assert set(npz["test_files"]) != files["test"]
    task = get_task("segfolder")
    arrays = load_npz(path, task, splits=("train", "val", "test"))
    assert arrays["val_labels"].shape == arrays["val_images"].shape


def test_premade_splits_are_kept_and_a_missing_one_is_carved(tmp_path):
    src = tmp_path / "seg"
    for i in range(6):
        _pair(src, "train", f"a{i}.png")
    _pair(src, "test", "t0.png")
    path, info = convert_segfolder(str(src), 32, cache_dir=str(tmp_path / "c"))
    assert info["split"] == "premade"
    with np.load(path) as npz:
        assert list(npz["test_files"]) == ["test/images/t0.png"]
        assert len(npz["val_files"]) == 1 and len(npz["train_files"]) == 5
        assert npz["train_labels"].shape == (5, 32, 32)
        assert npz["train_labels"][:, :16].all() and not npz["train_labels"][:, 16:].any()


def test_one_error_names_every_bad_file(tmp_path):
    src = tmp_path / "seg"
    for i in range(4):
        _pair(src, "", f"ok{i}.png")
    _pair(src, "", "wrong.png", size=(40, 40), mask_size=(40, 30))
    _pair(src, "", "other.png", size=(50, 40), mask_size=(40, 50))
    with pytest.raises(ValueError) as err:
        convert_segfolder(str(src), 32, cache_dir=str(tmp_path / "c"))
    text = str(err.value)
    assert "2 of 6 image(s)" in text
    assert "mask masks/wrong.png is 40x30, its image images/wrong.png is 40x40" in text
    assert "masks/other.png" in text and "ok0" not in text
    path, info = convert_segfolder(str(src), 32, cache_dir=str(tmp_path / "c"), skip_bad=True)
    assert [s["file"] for s in info["skipped"]] == ["images/other.png", "images/wrong.png"]
    with np.load(path) as npz:
        assert sum(len(npz[f"{s}_labels"]) for s in ("train", "val", "test")) == 4
    (src / "masks" / "wrong.png").unlink()
    (src / "images" / "extra.png").write_bytes(b"")
    (src / "masks" / "lonely.png").write_bytes(b"")
    with pytest.raises(ValueError, match="(?s)3 unpaired.*extra.png: no mask.*lonely.png: no im"):
        convert_segfolder(str(src), 32, cache_dir=str(tmp_path / "c"))


def test_prepare_data_converts_a_segfolder(tmp_path, cache_dir):
    src = tmp_path / "seg"
    for i in range(6):
        _pair(src, "", f"x{i}.png")
    data = DataSettings(data_dir=str(src), cache_dir=str(cache_dir))
    task, path = prepare_data(get_task("segfolder"), 32, data, seed=0)
    assert task.channels == 1 and task.kind == "segmentation"
    arrays = load_npz(path, task)
    assert arrays["train_labels"].shape == (4, 32, 32)
    with pytest.raises(ValueError, match="--data-dir"):
        prepare_data(get_task("segfolder"), 32, DataSettings(data_dir=None))
    bad = dict(arrays, train_labels=arrays["train_labels"][:, :8])
    np.savez(
        tmp_path / "bad.npz",
        **bad,
        test_images=arrays["val_images"],
        test_labels=arrays["val_labels"],
    )
    with pytest.raises(ValueError, match=r"masks have shape \(4, 8, 32\), expected \(4, 32, 32\)"):
        load_npz(tmp_path / "bad.npz", task)
