"""Every seed preset in spaces/ loads, converts, and trains one smoke epoch (--weights none); the
224-px presets on the streaming path (memory-mapped from a node cache, as a large search runs)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from search.data.node_data import CACHE_ENV, describe, node_arrays
from search.driver.space import load_space
from trainables.tasks import get_task
from trainables.train import train_loop

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p for p in (ROOT / "spaces").glob("*-*.yaml"))


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    assert names >= {"malaria-resnet18", "pathology-efficientnet", "chest-resnet50", "blood-cnn"}


@pytest.mark.slow
@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_runs_a_smoke_epoch(path, tmp_path, monkeypatch, synthetic_arrays):
    raw = yaml.safe_load(path.read_text())
    task = get_task(raw["parameters"]["task"]["value"])
    space = load_space(path, task)
    config = {k: (v.sample() if hasattr(v, "sample") else v) for k, v in space.domains.items()}
    config.update(weights="none", epochs=1, max_batches=2, batch_size=4, seed=0)
    size = config["image_size"]
    data = synthetic_arrays(task.kind, len(task.classes), task.channels, size=size, n=8)
    streamed = size >= 224  # the seeds' size: such datasets outgrow the resident budget
    if streamed:
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "node-cache"))
        np.savez(tmp_path / "data.npz", **data)
        data = node_arrays(describe(str(tmp_path / "data.npz"), task, size))  # memmaps
    reports = []
    started = time.perf_counter()
    train_loop(config, lambda m, d: reports.append((m, d)), data, task=task)
    print(
        f"{path.stem}: smoke epoch {time.perf_counter() - started:.1f} s ({config['model']}, "
        f"{size} px, {'streamed' if streamed else 'resident'})"
    )
    assert len(reports) == 1 and reports[0][1] is not None
    assert reports[0][0]["epoch"] == 1
    assert reports[0][0]["streamed"] == int(streamed)


def test_the_seed_presets_at_224_px_stream():
    """The presets the smoke test streams are the seeds' three 224-px ones."""
    params = {p.stem: yaml.safe_load(p.read_text())["parameters"] for p in PRESETS}
    big = {name for name, p in params.items() if p.get("image_size", {}).get("value", 0) >= 224}
    assert big >= {"pathology-efficientnet", "malaria-resnet18", "chest-resnet50"}
