"""The streaming data path, fast: rows and batches (`trainables/stream.py`), the per-node cache
(`search/data/node_data.py`) on the real PneumoniaMNIST sample, the budget rule, and the
same seed training the same batches on the resident and the streamed path."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os

import numpy as np
import pytest
import torch

from search.data.fingerprint import npz_key
from search.data.node_data import CACHE_ENV, cached_files, describe, node_arrays
from search.data.reader import SplitReader
from trainables.data import STATS_KEY, batch_indices, channel_stats, load_npz
from trainables.stream import (
    RESIDENT,
    RESIDENT_SHARES,
    STREAM,
    Rows,
    Streamed,
    choose_path,
    device_batches,
    resident_budget,
)
from trainables.tasks import get_task
from trainables.train import Placement, train_loop

torch.set_num_threads(2)
SPLITS = ("train", "val", "test")


@pytest.fixture
def node_cache(tmp_path, monkeypatch):
    root = tmp_path / "node-cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


def test_rows_take_any_order_across_parts():
    a = np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2)
    b = 100 + np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2)
    rows, whole = Rows([a, b]), np.concatenate([a, b])
    idx = np.array([12, 3, 3, 14, 0, 9, 10])
    assert len(rows) == 15 and rows.row_shape == (2, 2) and rows.nbytes == whole.nbytes
    np.testing.assert_array_equal(rows.take(idx), whole[idx])
    sub = rows.subset(np.array([14, 2, 11]))
    np.testing.assert_array_equal(sub.take(np.array([2, 0])), whole[[11, 14]])
    np.testing.assert_array_equal(sub[1:], whole[[2, 11]])


def test_streamed_batches_equal_resident_batches():
    images = np.random.default_rng(0).integers(0, 255, (50, 6, 6, 3), dtype=np.uint8)
    resident = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = list(device_batches(resident, batch_indices(50, 8, True, g1)))
    b = list(
        device_batches(
            Streamed(Rows([images]), torch.device("cpu")), batch_indices(50, 8, True, g2)
        )
    )
    assert len(a) == len(b) == 7
    for x, y in zip(a, b, strict=True):
        assert y.is_contiguous() and torch.equal(x, y)
    early = device_batches(
        Streamed(Rows([images]), torch.device("cpu")), batch_indices(50, 8, False)
    )
    assert next(early).shape == (8, 3, 6, 6)
    early.close()  # the reader thread stops with the consumer


def test_an_error_in_the_reader_reaches_the_loop():
    bad = Streamed(Rows([np.zeros((4, 2, 2), np.uint8)]), torch.device("cpu"))
    with pytest.raises(IndexError):
        list(device_batches(bad, [torch.tensor([0, 1]), torch.tensor([7])]))


def test_budget_rule_and_forced_paths():
    gb = 2**30
    assert resident_budget(16 * gb, trials_per_node=3) == 16 * gb * RESIDENT_SHARES["ram"] / 4
    gpu = resident_budget(16 * gb, 4, gpu_memory=24 * gb, gpus_per_trial=0.25)
    assert gpu == 24 * gb * 0.25 * RESIDENT_SHARES["gpu"]
    assert resident_budget(4 * gb, 1, 24 * gb, 1.0) == 4 * gb * RESIDENT_SHARES["ram"]
    pathmnist_224 = (89_996 + 10_004) * 224 * 224 * 3  # 15.1 GB, the case
    assert choose_path(pathmnist_224, resident_budget(16 * gb, 1, 24 * gb, 1.0)) == STREAM
    assert choose_path(10 * 2**20, resident_budget(16 * gb, 1, 24 * gb, 1.0)) == RESIDENT
    assert choose_path(1, 0, forced=STREAM) == STREAM
    assert choose_path(10**12, 0, forced=RESIDENT) == RESIDENT
    with pytest.raises(ValueError, match="choose one of"):
        choose_path(1, 1, forced="fast")


def test_node_cache_holds_the_npz_arrays_once(pneumonia_path, node_cache):
    task = get_task("pneumonia")
    source = describe(str(pneumonia_path), task, 28)
    expected = load_npz(pneumonia_path, task, splits=SPLITS)
    assert source.nbytes == expected["train_images"].nbytes + expected["val_images"].nbytes
    np.testing.assert_array_equal(source.labels["val_labels"], expected["val_labels"])
    arrays = SplitReader.node_cached(source).arrays()  # what a streamed trial opens
    assert isinstance(arrays["train_images"], np.memmap)
    assert not arrays["train_images"].flags.writeable
    test = node_arrays(source, ("test",))  # after the search, where the test task runs
    stats = arrays.pop(STATS_KEY)  # computed once per node, equal to a trial's own
    assert tuple(stats) == channel_stats(expected["train_images"])
    for key, value in {**arrays, **test}.items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)
    names = [f"{s}_{p}.npy" for s in SPLITS for p in ("images", "labels")]
    assert cached_files(source) == sorted(names)
    folder = node_cache / source.key
    stamps = {f: os.stat(folder / f).st_mtime_ns for f in names}
    node_arrays(source, SPLITS)
    assert {f: os.stat(folder / f).st_mtime_ns for f in names} == stamps  # not written again
    assert not [p for p in folder.iterdir() if p.suffix == ".tmp"]


def _open_in_process(source) -> int:
    return len(node_arrays(source)["train_images"])


def test_processes_racing_on_one_node_write_one_copy(pneumonia_path, node_cache):
    source = describe(str(pneumonia_path), get_task("pneumonia"), 28)
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(3, mp_context=context) as pool:
        sizes = list(pool.map(_open_in_process, [source] * 3))
    assert sizes == [3882] * 3
    assert cached_files(source) == sorted(
        f"{s}_{p}.npy" for s in ("train", "val") for p in ("images", "labels")
    )
    assert sorted(p.name for p in node_cache.iterdir()) == [source.key, f"{source.key}.lock"]


def test_a_source_on_storage_is_copied_down_once(pneumonia_path, node_cache):
    task = get_task("pneumonia")
    source = describe(f"file://{pneumonia_path}", task, 28)  # a URI: pyarrow.fs reads it
    assert source.key == npz_key(str(pneumonia_path))
    arrays = node_arrays(source, ("val",))
    np.testing.assert_array_equal(
        arrays["val_images"], load_npz(pneumonia_path, task)["val_images"]
    )
    assert "source.npz" not in os.listdir(node_cache / source.key)  # removed once extracted


def test_a_different_file_on_the_node_is_refused(tmp_path, make_npz, node_cache):
    task = get_task("pneumonia")
    path = make_npz(task, n=16)
    source = describe(str(path), task, 28)
    make_npz(task, n=16, seed=1)  # same path, other content: another node's version
    assert npz_key(str(path)) != source.key
    with pytest.raises(ValueError, match="differs from the driver's copy"):
        node_arrays(source)


def test_same_seed_trains_the_same_batches_on_both_paths(tmp_path, node_cache, synthetic_arrays):
    task = get_task("blood")
    arrays = synthetic_arrays(task.kind, len(task.classes), task.channels, size=28, n=64)
    path = tmp_path / "blood.npz"
    np.savez_compressed(path, **arrays)
    config = {
        "task": "blood",
        "model": "simple_cnn",
        "epochs": 1,
        "lr": 3e-3,
        "batch_size": 16,
        "aug_cutoff_epoch": 1,
        "seed": 4,
    }
    runs = {}
    for name, data in (
        ("resident", load_npz(path, task)),
        ("stream", SplitReader.node_cached(describe(str(path), task, 28)).arrays()),
    ):
        reports: list[dict] = []
        cpu = Placement(device=torch.device("cpu"))
        train_loop(config, lambda m, d, out=reports: out.append(m), data, placement=cpu)
        runs[name] = reports[0]
    assert (runs["resident"]["streamed"], runs["stream"]["streamed"]) == (0, 1)
    for key in ("train_loss", "val_loss", "val_auc", "val_acc"):
        assert runs["stream"][key] == pytest.approx(runs["resident"][key], rel=1e-5, abs=1e-6)
