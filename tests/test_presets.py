"""Every seed preset in spaces/ loads, converts, and trains one smoke epoch (--weights none)."""

from __future__ import annotations

import time

import pytest
import yaml
from conftest import ROOT, synthetic_arrays

from search.driver.space import load_space
from trainables.tasks import get_task
from trainables.train import train_loop

PRESETS = sorted(p for p in (ROOT / "spaces").glob("*-*.yaml"))


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    assert names >= {"malaria-resnet18", "pathology-efficientnet", "chest-resnet50", "blood-cnn"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_runs_a_smoke_epoch(path):
    raw = yaml.safe_load(path.read_text())
    task = get_task(raw["parameters"]["task"]["value"])
    space = load_space(path, task)
    config = {k: (v.sample() if hasattr(v, "sample") else v) for k, v in space.domains.items()}
    config.update(weights="none", epochs=1, max_batches=2, batch_size=4, seed=0)
    size = config["image_size"]
    data = synthetic_arrays(task.kind, len(task.classes), task.channels, size=size, n=8)
    reports = []
    started = time.perf_counter()
    train_loop(config, lambda m, d: reports.append((m, d)), data, task=task)
    print(f"{path.stem}: smoke epoch {time.perf_counter() - started:.1f} s ({config['model']}, "
          f"{size} px)")  # fmt: skip
    assert len(reports) == 1 and reports[0][1] is not None
    assert reports[0][0]["epoch"] == 1
