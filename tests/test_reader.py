"""The split reader (`search/data/reader.py`): one npz read through each kind gives the same
arrays, a reader survives pickling (and a trip into a Ray task), the node cache is filled once,
and the test split is readable only once the after-search step asks for it."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from search.data.node_data import CACHE_ENV, cached_files, describe
from search.data.reader import SplitReader
from trainables.data import SEARCH_SPLITS, load_npz
from trainables.tasks import get_task

KEYS = [f"{s}_{p}" for s in SEARCH_SPLITS for p in ("images", "labels")]


@pytest.fixture
def pneumonia(pneumonia_path, tmp_path, monkeypatch):
    """(task, path, descriptor) of the shipped PneumoniaMNIST sample, its node cache in tmp."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "node-cache"))
    task = get_task("pneumonia")
    return task, str(pneumonia_path), describe(str(pneumonia_path), task, 28)


def _same(a: dict, b: dict, keys) -> None:
    for key in keys:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def _digests(ray):
    """(digest, digest as a Ray task): each image and label array a reader reads here, summed,
    and its shape. Defined in here, so Ray ships it by value: its workers cannot import a test
    module."""

    def digest(reader: SplitReader, splits=SEARCH_SPLITS) -> dict:
        arrays = reader.arrays(splits)  # a node cache's also carries the train channel stats
        keys = [f"{s}_{part}" for s in splits for part in ("images", "labels")]
        return {
            k: (int(np.asarray(arrays[k], dtype=np.int64).sum()), arrays[k].shape) for k in keys
        }

    return digest, ray.remote(digest)


def test_a_node_cached_and_an_npz_reader_pickle_and_read_the_same_arrays(pneumonia):
    task, path, source = pneumonia
    expected = load_npz(path, task, splits=(*SEARCH_SPLITS, "test"))
    for reader in (SplitReader.node_cached(source), SplitReader.npz(path, task)):
        again = pickle.loads(pickle.dumps(reader))
        assert type(again) is type(reader) and again.path == path
        assert again.nbytes == expected["train_images"].nbytes + expected["val_images"].nbytes
        _same(again.arrays(), expected, KEYS)
        _same(again.with_split("test").arrays(("test",)), expected, ["test_images", "test_labels"])
        np.testing.assert_array_equal(again.labels("val"), expected["val_labels"])
        assert again.files("train") is None  # a MedMNIST file names no images


def test_a_resident_reader_reads_what_the_node_cache_holds(pneumonia, ray_cluster):
    task, path, source = pneumonia
    cached = SplitReader.node_cached(source)
    resident = SplitReader.resident(load_npz(path, task, splits=SEARCH_SPLITS), source)
    assert resident.nbytes == cached.nbytes and resident.path == cached.path == path
    _same(resident.arrays(), cached.arrays(), KEYS)
    arrays = resident.arrays()
    assert not arrays["train_images"].flags.writeable  # zero-copy from the object store
    for split in SEARCH_SPLITS:
        np.testing.assert_array_equal(resident.labels(split), cached.labels(split))
    _same(pickle.loads(pickle.dumps(resident)).arrays(), arrays, KEYS)

    _, read = _digests(ray_cluster)
    assert ray_cluster.get(read.remote(resident)) == ray_cluster.get(read.remote(cached))
    with pytest.raises(ValueError, match=r"with_split\('test'\)"):
        resident.arrays(("test",))  # the test split is not in the object store during the search
    tested = resident.with_split("test")
    assert tested.with_split("test") is tested
    both = [ray_cluster.get(read.remote(r, ("test",))) for r in (tested, cached)]
    assert both[0] == both[1]


def test_a_resident_reader_without_a_descriptor_holds_only_its_arrays(ray_cluster):
    arrays = {"train_images": np.zeros((4, 2, 2), np.uint8), "train_labels": np.zeros((4, 1))}
    arrays |= {"val_images": np.ones((2, 2, 2), np.uint8), "val_labels": np.ones((2, 1))}
    reader = SplitReader.resident(arrays)
    assert reader.path is None and reader.nbytes == 16 + 8
    np.testing.assert_array_equal(reader.labels("val"), arrays["val_labels"])
    with pytest.raises(ValueError, match="no npz to read 'test'"):
        reader.with_split("test")


def test_file_names_travel_with_both_readers(tmp_path, pneumonia_path, ray_cluster, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "node-cache"))
    task = get_task("pneumonia")
    with np.load(pneumonia_path) as npz:
        arrays = {k: npz[k][:20] for k in npz.files}
    files = {
        f"{s}_files": np.array([f"{s}/P{i % 3}_{i}.png" for i in range(20)]) for s in SEARCH_SPLITS
    }
    path = str(tmp_path / "named.npz")
    np.savez(path, **arrays, **files)
    source = describe(path, task, 28, labels=files)
    resident = SplitReader.resident({**load_npz(path, task), **files}, source)
    for reader in (SplitReader.node_cached(source), resident, SplitReader.npz(path, task)):
        for split in SEARCH_SPLITS:
            np.testing.assert_array_equal(reader.files(split), files[f"{split}_files"])


def test_the_node_cache_is_filled_once_for_every_reader_on_the_node(pneumonia, ray_cluster):
    _, _, source = pneumonia
    reader = SplitReader.node_cached(source)
    assert cached_files(source) == []  # describing the data wrote nothing
    digest, read = _digests(ray_cluster)
    first = ray_cluster.get([read.remote(reader) for _ in range(3)])  # tasks racing to fill it
    assert first[0] == first[1] == first[2]
    folder = os.path.join(os.environ[CACHE_ENV], source.key)
    names = sorted(f"{s}_{p}.npy" for s in SEARCH_SPLITS for p in ("images", "labels"))
    assert cached_files(source) == names
    stamps = {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in names}
    assert digest(reader) == first[0]  # this process maps the same files
    assert ray_cluster.get(read.remote(pickle.loads(pickle.dumps(reader)))) == first[0]
    assert {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in names} == stamps
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]
