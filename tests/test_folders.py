"""Folder datasets -> MedMNIST-layout npz: malaria-shaped patient splits, caching, layouts, errors.

Every dataset here is a few dozen tiny PNGs written into tmp_path, and the cache folder
(`$MEDSWEEP_CACHE_DIR`) is a tmp folder too; the whole file runs in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from search.data.folder_split import patient_id, small_data_warnings, split_counts
from search.data.folders import convert_folder
from trainables.data import SPLITS, load_npz, validate_split
from trainables.tasks import Task

MALARIA = Task(
    name="malaria",
    flag="malaria",
    kind="binary",
    classes=("Parasitized", "Uninfected"),
    channels=3,
)


@pytest.fixture
def make_generic(write_png):
    """`make_generic(root, classes=("cat", "dog", "eel"), n=12, mode="RGB")`: a folder per
    class of `n` PNGs without patient ids, of three sizes."""

    def make(root: Path, classes=("cat", "dog", "eel"), n: int = 12, mode: str = "RGB") -> Path:
        for c, name in enumerate(classes):
            for i in range(n):
                size = (40 + 7 * (i % 3), 36)
                write_png(root / name / f"img_{i:03d}.png", size, 40 + 60 * c, mode)
        return root

    return make


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """The conversion cache of every test here: a tmp folder, never ~/.cache or data/."""
    monkeypatch.setenv("MEDSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tree(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("C33P1thinF_IMG_20150619_114756a_cell_179.png", "C33P1"),
        ("C100P61ThinF_IMG_20150918_144104_cell_162.png", "C100P61"),
        ("C186P147NThinF_IMG_20151203_150557_cell_67.png", "C186P147"),
        ("C39P4thinF_original_IMG_20150622_105102_cell_84.png", "C39P4"),
        ("C47P8thinOriginalOlympusCX21_IMG_20150820_104412_cell_1.png", "C47P8"),
        ("C1_thinF_IMG_20150604_104722_cell_9.png", "C1"),
        ("C2NThinF_IMG_20150604_114631_cell_99.png", "C2"),
        ("C3thin_original_IMG_20150608_162835_cell_77.png", "C3"),
        ("C233ThinF_IMG_20151112_161119_cell_164.png", "C233"),
        ("cell_images/Uninfected/C241NThinF_IMG_20151207_124608_cell_22.png", "C241"),
        ("img_001.png", None),
        ("Cat_12.png", None),
    ],
)
def test_patient_id_reads_nih_names(name, expected):
    assert patient_id(name) == expected


def test_malaria_folder_converts_to_a_patient_split(tmp_path, make_malaria, cache_dir):
    src = make_malaria(tmp_path)
    before = _tree(src)
    path, classes, info = convert_folder(str(src), image_size=28)
    assert classes == ["Parasitized", "Uninfected"]  # sorted folder names
    assert info["split"] == "patient" and info["channels"] == 3
    assert Path(path).parent == cache_dir and Path(path).name.startswith("cell_images-")
    assert _tree(src) == before  # nothing written into the data folder
    arrays = _load(path)
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28, 3)
        assert labels.shape == (len(images), 1) and np.issubdtype(labels.dtype, np.integer)
        validate_split(path, MALARIA, split, images, labels)
        folders = [f.split(os.sep)[0] for f in arrays[f"{split}_files"]]
        assert folders == [classes[i] for i in labels[:, 0]]
    total = sum(sum(c.values()) for c in info["counts"].values())
    assert total == 4 * 2 * 5 + 2 * 5  # make_malaria: 4 infected patients, 2 healthy
    assert info["counts"] == split_counts(path, classes)
    assert sum(info["patients"].values()) == 6
    assert len(load_npz(path, MALARIA, splits=SPLITS)["test_images"]) > 0


def test_no_patient_is_on_two_sides_of_any_split(tmp_path, make_malaria):
    src = make_malaria(tmp_path)
    for seed in range(3):
        path, _, _ = convert_folder(str(src), image_size=16, split="patient", seed=seed)
        arrays = _load(path)
        patients = {s: {patient_id(f) for f in arrays[f"{s}_files"]} for s in SPLITS}
        assert all(patients.values())
        assert not patients["train"] & patients["val"]
        assert not patients["train"] & patients["test"]
        assert not patients["val"] & patients["test"]


def test_seed_changes_which_patients_are_held_out(tmp_path, make_malaria):
    src = make_malaria(tmp_path)
    held = set()
    for seed in range(4):
        arrays = _load(convert_folder(str(src), 16, seed=seed)[0])
        held.add(tuple(sorted({patient_id(f) for f in arrays["test_files"]})))
    assert len(held) > 1


def test_auto_warns_when_some_names_lack_a_patient_id(tmp_path, make_malaria, write_png):
    src = make_malaria(tmp_path)
    write_png(src / "Uninfected" / "img_001.png", (40, 40), 170)
    with pytest.warns(UserWarning, match="1 of 51 file names carry no patient id"):
        _, _, info = convert_folder(str(src), 16)
    assert info["split"] == "cell"


def test_classes_argument_fixes_the_label_order(tmp_path, make_malaria):
    src = make_malaria(tmp_path)
    order = ["Uninfected", "Parasitized"]  # Parasitized = 1, the positive class
    path, classes, _ = convert_folder(str(src), 16, split="cell", classes=order)
    assert classes == order
    arrays = _load(path)
    parasitized = ["Parasitized" in f for f in arrays["train_files"]]
    assert (arrays["train_labels"][:, 0] == 1).tolist() == parasitized
    with pytest.raises(ValueError, match="do not match the class folders"):
        convert_folder(str(src), 16, classes=["Parasitized", "Healthy"])


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path, make_malaria, write_png):
    src = make_malaria(tmp_path)
    path, _, info = convert_folder(str(src), 16, split="cell")
    mtime = os.stat(path).st_mtime_ns
    again, _, info_again = convert_folder(str(src), 16, split="cell")
    assert again == path and os.stat(path).st_mtime_ns == mtime
    assert info_again == info and info["decoded"] == 50
    write_png(src / "Uninfected" / "C1_thinF_IMG_20150604_104722_cell_99.png", (90, 90), 170)
    rebuilt_path, _, rebuilt = convert_folder(str(src), 16, split="cell")
    assert rebuilt_path != path  # the cache is keyed by the fingerprint
    assert (rebuilt["decoded"], rebuilt["reused"]) == (1, 50)  # only the new file is decoded
    before = sum(sum(c.values()) for c in info["counts"].values())
    assert sum(sum(c.values()) for c in rebuilt["counts"].values()) == before + 1


def test_cache_dir_holds_the_npz_when_given(tmp_path, make_generic):
    src = make_generic(tmp_path / "shapes")
    path, _, _ = convert_folder(str(src), 16, cache_dir=str(tmp_path / "cache"))
    assert Path(path).parent == tmp_path / "cache"
    assert Path(path).name.startswith("shapes-") and path.endswith(".npz")
    assert not (src / ".medsweep").exists()


def test_without_a_cache_setting_the_cache_is_under_xdg_cache_home(
    tmp_path, monkeypatch, make_generic
):
    src = make_generic(tmp_path / "shapes")
    monkeypatch.delenv("MEDSWEEP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path, _, _ = convert_folder(str(src), 16)
    assert Path(path).parent == tmp_path / "xdg" / "medsweep" / "data"
    assert not (src / ".medsweep").exists()


def test_cell_split_is_stratified(tmp_path, make_malaria):
    src = make_malaria(tmp_path)
    path, classes, info = convert_folder(str(src), 16, split="cell", seed=3)
    assert info["split"] == "cell" and "patients" not in info
    for split in SPLITS:
        assert all(n > 0 for n in info["counts"][split].values())
    arrays = _load(path)
    files = [f for s in SPLITS for f in arrays[f"{s}_files"]]
    assert len(files) == len(set(files))


def test_generic_folder_without_patient_ids_gets_a_cell_split(tmp_path, make_generic):
    src = make_generic(tmp_path / "shapes")
    path, classes, info = convert_folder(str(src), 16)
    assert classes == ["cat", "dog", "eel"] and info["split"] == "cell"
    task = Task(
        name="shapes", flag="shapes", kind="multiclass", classes=tuple(classes), channels=3
    )
    arrays = _load(path)
    for split in SPLITS:
        validate_split(path, task, split, arrays[f"{split}_images"], arrays[f"{split}_labels"])
    with pytest.raises(ValueError, match="patient id in every file name"):
        convert_folder(str(src), 16, split="patient")


def test_premade_splits_are_kept(tmp_path, make_generic):
    for split, n in (("train", 10), ("val", 4), ("test", 5)):
        make_generic(tmp_path / "ds" / split, classes=("a", "b"), n=n)
    path, classes, info = convert_folder(str(tmp_path / "ds"), 16)
    assert info["split"] == "premade" and classes == ["a", "b"]
    assert info["counts"] == {
        "train": {"a": 10, "b": 10},
        "val": {"a": 4, "b": 4},
        "test": {"a": 5, "b": 5},
    }
    arrays = _load(path)
    assert all(f.startswith("val" + os.sep) for f in arrays["val_files"])


def test_premade_train_and_test_carve_val_out_of_train(tmp_path, make_generic):
    make_generic(tmp_path / "ds" / "train", classes=("a", "b"), n=20)
    make_generic(tmp_path / "ds" / "test", classes=("a", "b"), n=6)
    path, _, info = convert_folder(str(tmp_path / "ds"), 16, val_frac=0.25)
    assert info["counts"]["test"] == {"a": 6, "b": 6}
    assert info["counts"]["val"] == {"a": 5, "b": 5}
    arrays = _load(path)
    assert all(f.startswith("train" + os.sep) for f in arrays["val_files"])
    assert not set(arrays["val_files"]) & set(arrays["train_files"])


def test_premade_splits_with_different_classes_are_named(tmp_path, make_generic):
    make_generic(tmp_path / "ds" / "train", classes=("a", "b", "c"), n=4)
    make_generic(tmp_path / "ds" / "test", classes=("a", "b"), n=4)
    with pytest.raises(ValueError, match=r"disagree on classes.*'test': \['c'\]"):
        convert_folder(str(tmp_path / "ds"), 16)


def test_grayscale_folder_gives_one_channel(tmp_path, make_generic, write_png):
    src = make_generic(tmp_path / "xray", classes=("normal", "pneumonia"), mode="L")
    path, _, info = convert_folder(str(src), 16)
    assert info["channels"] == 1
    assert _load(path)["train_images"].shape[1:] == (16, 16)
    write_png(src / "normal" / "colour.png", (30, 30), 90)  # one RGB image makes it a colour set
    path, _, info = convert_folder(str(src), 16)
    assert info["channels"] == 3 and _load(path)["train_images"].shape[1:] == (16, 16, 3)


def test_empty_class_folder_is_named(tmp_path, make_generic):
    src = make_generic(tmp_path / "ds")
    (src / "fox").mkdir()
    with pytest.raises(ValueError, match=r"empty class folder.*fox"):
        convert_folder(str(src), 16)


def test_no_class_folders_says_the_layout(tmp_path, write_png):
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "a.png", (20, 20), 100)
    with pytest.raises(ValueError, match=r"no class folders; expected .*<class>/\*\.png"):
        convert_folder(str(tmp_path / "flat"), 16)


def test_every_corrupt_image_is_named_in_one_error(tmp_path, make_generic, cache_dir):
    src = make_generic(tmp_path / "ds")
    (src / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = (src / "dog" / "img_000.png").read_bytes()
    (src / "eel" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="2 of 38 image.*--skip-bad") as err:
        convert_folder(str(src), 16)
    assert "broken.png" in str(err.value) and "truncated.png" in str(err.value)
    assert not list(cache_dir.glob("*.npz")) and not (src / ".medsweep").exists()
    path, _, info = convert_folder(str(src), 16, skip_bad=True)
    assert [s["file"] for s in info["skipped"]] == ["cat/broken.png", "eel/truncated.png"]
    arrays = _load(path)
    files = [f for s in SPLITS for f in arrays[f"{s}_files"]]
    assert len(files) == 36 and "cat/broken.png" not in files
    assert sum(len(arrays[f"{s}_images"]) for s in SPLITS) == 36


def test_patient_split_needs_three_patients(tmp_path, write_png):
    for c in ("Parasitized", "Uninfected"):
        for i in range(4):
            write_png(tmp_path / "m" / c / f"C33P1thinF_IMG_1_cell_{i}.png", (20, 20), 100)
            write_png(tmp_path / "m" / c / f"C34P2thinF_IMG_1_cell_{i}.png", (20, 20), 100)
    with pytest.raises(ValueError, match="at least 3 patients"):
        convert_folder(str(tmp_path / "m"), 16)


def test_small_data_warnings_flag_thin_classes():
    counts = {
        "train": {"a": 300, "b": 0},
        "val": {"a": 45, "b": 7},
        "test": {"a": 20, "b": 19},
    }
    lines = small_data_warnings(counts)
    assert len(lines) == 3
    assert any(line.startswith("val: class 'b' has 7") for line in lines)
    assert any(line.startswith("test: class 'b' has 19") for line in lines)
    assert any("never sees it" in line for line in lines)
    arrays = {"val_labels": np.array([[0], [1], [1]])}
    assert split_counts(arrays, ["a", "b"]) == {"val": {"a": 1, "b": 2}}


def test_the_unpacked_archive_root_is_accepted(tmp_path, make_malaria):
    """The folder the NIH archive unpacks into (holding only cell_images/) reads as the dataset."""
    make_malaria(tmp_path / "download")
    path, classes, info = convert_folder(str(tmp_path / "download"), image_size=16)
    assert classes == ["Parasitized", "Uninfected"]
    assert info["source"] == str(tmp_path / "download" / "cell_images")
    direct, _, _ = convert_folder(str(tmp_path / "download" / "cell_images"), image_size=16)
    assert direct == path


def test_a_root_with_two_datasets_is_not_guessed(tmp_path, make_generic):
    make_generic(tmp_path / "root" / "a")
    make_generic(tmp_path / "root" / "b")
    with pytest.raises(ValueError, match="empty class folder"):
        convert_folder(str(tmp_path / "root"), image_size=16)


def test_a_single_class_is_refused_before_any_image_is_read(tmp_path, make_generic):
    make_generic(tmp_path / "one", classes=("cat",))
    with pytest.raises(ValueError, match="at least 2"):
        convert_folder(str(tmp_path / "one"), image_size=16)
