"""Shared fixtures: tiny synthetic MedMNIST-layout npz files, the real sample, one Ray cluster.

Tests make their own data (`make_npz`) or read `../shared/data/` (skipped with a reason when it
is absent); nothing is downloaded. Ray-backed tests share one local cluster (`ray_cluster`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PNEUMONIA = SHARED_DATA / "pneumoniamnist.npz"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def synthetic_arrays(
    kind: str, n_classes: int, channels: int, size: int = 28, n: int = 96, seed: int = 0
) -> dict[str, np.ndarray]:
    """Learnable data: each class is a bright square in its own place on a noisy background."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n), ("val", max(n // 2, 2 * n_classes)), ("test", n // 2)):
        shape = (count, size, size) + ((channels,) if channels == 3 else ())
        images = rng.integers(0, 60, size=shape, dtype=np.uint8)
        if kind == "multilabel":
            labels = rng.integers(0, 2, size=(count, n_classes))
            present = [np.flatnonzero(row) for row in labels]
        else:
            labels = (np.arange(count) % n_classes).reshape(-1, 1)
            present = [[int(c)] for c in labels[:, 0]]
        cell = size // 4
        for i, classes in enumerate(present):
            for c in classes:
                r, q = divmod(int(c) % 16, 4)
                images[i, r * cell : (r + 1) * cell, q * cell : (q + 1) * cell] = 220
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    return arrays


@pytest.fixture
def make_npz(tmp_path):
    """Write a synthetic npz for a task's kind/classes/channels; returns its path."""

    def make(task, size: int = 28, n: int = 96, name: str | None = None, seed: int = 0) -> Path:
        arrays = synthetic_arrays(task.kind, len(task.classes), task.channels, size, n, seed)
        from trainables.data import npz_name

        path = tmp_path / (name or npz_name(task.flag, size))
        np.savez_compressed(path, **arrays)
        return path

    return make


@pytest.fixture
def pneumonia_path() -> Path:
    if not PNEUMONIA.is_file():
        pytest.skip(f"real sample {PNEUMONIA} is absent (it ships in shared/data beside the repo)")
    return PNEUMONIA


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for every in-process Ray test (2 CPUs, as CI has)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()
