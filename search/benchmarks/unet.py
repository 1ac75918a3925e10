"""Section `unet`: what a segmentation trial costs, a ResNet-18 U-Net at 128 and 256 px.

    unet(b)   # seconds per epoch and training images/s of `train_loop` on ISBI-sized data

Run through `python search/bench.py --sections unet`. The data is synthetic masks of the ISBI
sample's shape (20 training and 5 validation images, a square per image); each size trains from
scratch for a few epochs as a trial's single-CPU worker does (1 thread on the CPU), and the
figures are the median over epochs 2+ (epoch 1 pays for first-touch costs). An epoch is the
training pass plus the validation pass and the checkpoint; images/s counts training images.
"""

from __future__ import annotations

import time

import numpy as np

from search.benchmarks.core import Bench
from search.benchmarks.timing import steady, torch_threads

SIZES = (128, 256)
N_TRAIN, N_VAL = 20, 5  # the ISBI sample's 20/5/5 split


def unet(b: Bench) -> None:
    add = b.rows("unet")
    smoke = b.settings.smoke_test
    sizes, epochs = ((64,), 2) if smoke else (SIZES, 2 if b.settings.quick else 3)
    n_train = 4 if smoke else N_TRAIN
    for size in sizes:
        epoch_s, rates = _trial(b, size, n_train, epochs)
        what = f"unet-resnet18 from scratch, {n_train} images, batch 4, {b.device.type}"
        add(f"epoch_s/{size}px", steady(epoch_s), "s", f"train + val + checkpoint; {what}")
        add(
            f"images_per_s/{size}px",
            steady(rates),
            "img/s",
            f"training pass; {what}",
            f"images_per_s/{sizes[0]}px" if size != sizes[0] else None,
        )


def _trial(b: Bench, size: int, n_train: int, epochs: int) -> tuple[list[float], list[float]]:
    """(seconds per epoch, training images/s per epoch) of one U-Net trial at `size`."""
    import dataclasses

    from trainables.tasks import get_task
    from trainables.train import Placement, train_loop

    task = dataclasses.replace(get_task("segfolder"), image_size=size)
    data = _masks(n_train, N_VAL, size)
    stamps, rates = [time.perf_counter()], []

    def report(metrics: dict, _checkpoint_dir) -> None:
        stamps.append(time.perf_counter())
        rates.append(metrics["images_per_s"])

    config = {
        "task": "segfolder",
        "model": "unet-resnet18",
        "weights": "none",
        "image_size": size,
        "epochs": epochs,
        "batch_size": 4,
        "lr": 1e-3,
        "aug_cutoff_epoch": epochs,
        "seed": 0,
    }
    with torch_threads(b.threads):
        train_loop(config, report, data, placement=Placement(device=b.device), task=task)
    return list(np.diff(stamps)), rates


def _masks(n_train: int, n_val: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val)):
        images = rng.integers(0, 60, size=(n, size, size), dtype=np.uint8)
        masks = np.zeros((n, size, size), np.uint8)
        for i, (r, c) in enumerate(rng.integers(0, size // 2, size=(n, 2))):
            masks[i, r : r + size // 3, c : c + size // 3] = 1
        images[masks == 1] = 200
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, masks
    return arrays
