"""Section `data`: device-resident uint8 images + kornia against a DataLoader + torchvision v2.

    data(b)   # images/s of each pipeline alone ("augment") and with a model step ("train")

Both pipelines take turns (`interleaved`), each with its own model. Run through
`python search/bench.py --sections data`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from search.benchmarks.core import CLASSES, Bench, synthetic_data
from search.benchmarks.timing import interleaved, sync, torch_threads
from trainables.data import (
    batch_indices,
    channel_stats,
    make_augment,
    normaliser,
    to_device_images,
)
from trainables.kinds import get_kind
from trainables.models import build_model

AUGMENTS = ("hflip", "rotate", "crop")


def data(b: Bench) -> None:
    """Device-resident uint8 + kornia against a DataLoader with workers + torchvision v2."""
    add, size, batch, workers = b.rows("data"), 28, b.sizes.batch, b.sizes.workers
    arrays = synthetic_data(b.sizes.n_train, b.sizes.n_val, size)
    normalise = normaliser(*channel_stats(arrays["train_images"]), b.device)
    x = to_device_images(arrays["train_images"], b.device)
    y = torch.from_numpy(arrays["train_labels"]).to(b.device)
    augment = make_augment(AUGMENTS, 3, size).to(b.device)
    what = f"{b.sizes.n_train} images, {size} px, batch {batch}; best epoch of {b.sizes.rounds}"
    what += "" if b.gpu else "; main process on 1 thread, as in a trial"
    for label, model in (("augment", None), ("train", b.sizes.model)):
        # each pipeline trains a model of its own (or none: the pipeline alone)
        step = partial(model_step, model, size, b.device) if model else lambda: None
        pipes = {
            "loader_v2": loader_epochs(arrays, b.device, batch, workers, normalise, step()),
            "device_kornia": device_epochs(x, y, augment, normalise, batch, step()),
        }
        turns = {k: partial(next, pipe) for k, pipe in pipes.items()}
        with torch_threads(b.threads):
            rates = interleaved(turns, b.sizes.rounds)
        for pipe in pipes.values():
            pipe.close()  # the loader's workers stop here
        also = "" if model is None else f" + {model} step"
        base = f"{label}_images_per_s/loader_v2"
        add(
            base,
            rates["loader_v2"],
            "img/s",
            f"DataLoader, {workers} workers, v2 per image{also}; {what}",
        )
        add(
            f"{label}_images_per_s/device_kornia",
            rates["device_kornia"],
            "img/s",
            f"uint8 on {b.device.type}, kornia per batch{also}",
            base,
        )


class _Images(torch.utils.data.Dataset):
    """uint8 HWC numpy images -> per-sample torchvision v2 transforms, as a DataLoader reads."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1)
        return self.transform(image), torch.from_numpy(self.labels[i])


def v2_transform(size: int) -> Callable:
    """torchvision v2's counterpart of `make_augment(AUGMENTS, 3, size)`."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.RandomRotation(15.0)], p=0.5),
            v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1)),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def loader_epochs(data: dict, device, batch: int, workers: int, normalise, step=None):
    """Yield images/s of successive epochs through a DataLoader whose workers persist."""
    transform = v2_transform(data["train_images"].shape[1])
    dataset = _Images(data["train_images"], data["train_labels"], transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    while True:
        seen, started = 0, time.perf_counter()
        for images, labels in loader:
            images = normalise(images.to(device, non_blocking=True))
            if step is not None:
                step(images, labels.to(device, non_blocking=True))
            seen += len(images)
        sync(device)
        yield seen / (time.perf_counter() - started)


def device_epochs(x, y, augment, normalise, batch: int, step=None):
    """Yield images/s of successive epochs over device-resident uint8 images, indexed and
    augmented per batch as in `train_one_epoch`."""
    generator = torch.Generator().manual_seed(0)
    while True:
        seen, started = 0, time.perf_counter()
        for idx in batch_indices(len(x), batch, True, generator):
            idx = idx.to(x.device)
            images = normalise(augment(x[idx].float().div_(255.0)))
            if step is not None:
                step(images, y[idx])
            seen += len(idx)
        sync(x.device)
        yield seen / (time.perf_counter() - started)


def model_step(name: str, size: int, device: torch.device) -> Callable:
    """`train_one_epoch`'s step for `name` (bf16 + channels_last on a GPU, as `train_loop`)."""
    torch.manual_seed(0)
    model = build_model(name, CLASSES, 3, size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    kind = get_kind("multiclass")  # the `blood` task's kind
    loss_fn = kind.make_loss()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(images)
        loss = loss_fn(logits.float(), kind.loss_targets(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # train_one_epoch reads the loss every step

    return step
