"""Datasets in the MedMNIST npz layout: load, validate, hold on the device, augment per image.

    arrays = load_npz("pneumoniamnist.npz", task, splits=("train", "val"))
    x = to_device_images(arrays["train_images"], device)           # uint8 (N, C, H, W)
    for idx in batch_indices(len(x), 128, shuffle=True, generator=g): ...
    augment = make_augment(task.augment, 3, 28, task.kind_ops.augment_keys())  # kornia, per image

Every dataset becomes `{train,val,test}_images` (uint8, (N,H,W) or (N,H,W,C)) and
`{train,val,test}_labels` ((N, L) integers) once, so everything after loading is one code path.
Arrays are read with numpy: medmnist's Dataset classes assert the official sample counts.
Downloads are not done here (see `search/data/downloads.py`).
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from trainables.tasks import Task

SPLITS = ("train", "val", "test")
SEARCH_SPLITS = ("train", "val")  # what trials read; test is read once, after the search
MEDMNIST_SIZES = (28, 64, 128, 224)


def npz_name(flag: str, image_size: int) -> str:
    """MedMNIST's file name for a flag and size: `pathmnist.npz`, `pathmnist_224.npz`."""
    if image_size not in MEDMNIST_SIZES:
        raise ValueError(
            f"image size {image_size} is not one MedMNIST ships; choose one of "
            f"{MEDMNIST_SIZES} (set `image_size` in the space file or --image-size)"
        )
    return f"{flag}.npz" if image_size == 28 else f"{flag}_{image_size}.npz"


def load_npz(
    path: str | os.PathLike, task: Task, splits: Sequence[str] = ("train", "val")
) -> dict[str, np.ndarray]:
    """The arrays of `splits` from an npz file, validated against `task`.

    Only the named splits are read: the search never touches `test`.
    """
    path = os.fspath(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable npz file ({err}); re-download it") from err
    with npz:
        keys = [f"{s}_{part}" for s in splits for part in ("images", "labels")]
        _check_keys(path, keys, npz.files)
        arrays = {k: npz[k] for k in keys}
    for split in splits:
        validate_split(path, task, split, arrays[f"{split}_images"], arrays[f"{split}_labels"])
    return arrays


def npz_headers(path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} of an npz (a path or a seekable binary file), read from
    each member's .npy header only."""
    path = os.fspath(path) if isinstance(path, str | os.PathLike) else path
    try:
        with zipfile.ZipFile(path) as zf:
            out = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if major == 1
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
                out[info.filename[:-4]] = (tuple(shape), np.dtype(dtype))
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable npz file ({err}); re-download it") from err
    return out


def inspect_npz(
    path, task: Task, splits: Sequence[str] = ("train", "val"), name: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(labels of `splits`, image bytes per split), validated as `load_npz` does, without
    reading a single image: what the driver of a streamed search needs. `path` may be a
    seekable binary file (a remote one: only the labels and headers are read), `name` what
    errors call it."""
    source = os.fspath(path) if isinstance(path, str | os.PathLike) else path
    headers = npz_headers(source)
    path = name or str(source)
    keys = [f"{s}_{part}" for s in splits for part in ("images", "labels")]
    _check_keys(path, keys, headers)
    with zipfile.ZipFile(source) as zf:
        labels = {
            f"{s}_labels": np.lib.format.read_array(zf.open(f"{s}_labels.npy")) for s in splits
        }
    sizes = {}
    for split in splits:
        shape, dtype = headers[f"{split}_images"]
        images = np.broadcast_to(np.zeros((), dtype), shape)  # shape and dtype, no memory
        validate_split(path, task, split, images, labels[f"{split}_labels"])
        sizes[split] = int(np.prod(shape)) * dtype.itemsize
    return labels, sizes


def _check_keys(path: str, keys: Sequence[str], present) -> None:
    missing = [k for k in keys if k not in present]
    if missing:
        raise ValueError(
            f"{path}: missing arrays {missing}; a MedMNIST-layout file has "
            f"{{train,val,test}}_images and {{train,val,test}}_labels, this one has "
            f"{sorted(present)}"
        )


def validate_split(
    path: str, task: Task, split: str, images: np.ndarray, labels: np.ndarray
) -> None:
    """Raise a ValueError naming the file, split and problem when arrays do not fit the task."""
    where = f"{path} [{split}]"
    if images.dtype != np.uint8:
        raise ValueError(f"{where}: images are {images.dtype}, expected uint8 (0-255 pixels)")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise ValueError(
            f"{where}: images have shape {images.shape}, expected (N, H, W) or (N, H, W, C) "
            "with C = 1 or 3"
        )
    channels = 1 if images.ndim == 3 else images.shape[3]
    if channels != task.channels:
        raise ValueError(
            f"{where}: images have {channels} channel(s), task {task.name!r} expects "
            f"{task.channels}; is this the right file for the task?"
        )
    if len(images) == 0:
        raise ValueError(f"{where}: no images")
    kind, n_classes = task.kind_ops, len(task.classes)
    problem = kind.label_problem(images.shape, labels.shape, n_classes)  # masks: (N, H, W)
    if problem:
        raise ValueError(f"{where}: {problem}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels are {labels.dtype}, expected integers")
    low, high = kind.label_min(n_classes), kind.label_max(n_classes)  # multilabel: -1 unknown
    if labels.min() < low or labels.max() > high:
        raise ValueError(
            f"{where}: labels range over [{labels.min()}, {labels.max()}], expected "
            f"[{low}, {high}] "
            f"for {task.kind} task {task.name!r} with classes {list(task.classes)}"
        )


def normaliser(mean, std, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """`(x - mean) / std` per channel, for float (N, C, H, W) images in [0, 1] on `device`."""
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return lambda images: (images - m) / s


def to_device_images(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 (N, H, W[, C]) numpy -> uint8 (N, C, H, W) tensor on `device`, moved once."""
    with warnings.catch_warnings():  # object-store arrays are read-only; nothing writes to x
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous().to(device)


STATS_KEY = "train_channel_stats"
"""Optional key of a data dict: (mean, std) of its training images, computed once elsewhere
(the streaming path's node cache) so a trial need not read the images again for them."""


def channel_stats(images, max_images: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units from (a seeded sample of) training images.

    `images`: an array, a memmap or `trainables.stream.Rows`; read 64 rows at a time (at
    224 px RGB, 77 MB of float64 at most)."""
    from trainables.stream import as_rows

    rows = as_rows(images)
    pick = np.arange(len(rows))
    if len(rows) > max_images:
        pick = np.sort(np.random.default_rng(0).choice(len(rows), max_images, replace=False))
    total = total_sq = 0.0
    for start in range(0, len(pick), 64):
        x = rows.take(pick[start : start + 64]).astype(np.float64) / 255.0
        x = x.reshape(*x.shape[:3], -1)
        total = total + x.sum(axis=(0, 1, 2))
        total_sq = total_sq + (x * x).sum(axis=(0, 1, 2))
    count = len(pick) * int(np.prod(rows.row_shape[:2]))
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return [float(m) for m in mean], [float(max(s, 1e-3)) for s in std]


def batch_indices(
    n: int,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[torch.Tensor]:
    """Index batches over `n` items; with `world_size > 1`, this rank's shard of each epoch."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order[rank::world_size]
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


AUGMENTATIONS = ("hflip", "vflip", "rotate", "crop", "color", "contrast")


def make_augment(
    names: Sequence[str], channels: int, image_size: int, keys: Sequence[str] = ("input",)
) -> torch.nn.Module:
    """A kornia pipeline over float images in [0, 1], drawing its parameters per image.

    (torchvision.transforms.v2 applied to a batch draws once for the whole batch.) `keys` are
    kornia's `data_keys`, what the kind moves together (`Kind.augment_keys`): with
    `("input", "mask")` it is called as `augment(images, masks)` and moves each (N, 1, H, W)
    mask with its image (geometric draws shared, masks resampled nearest, colour changes on the
    image only).
    """
    import kornia.augmentation as K

    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from {AUGMENTATIONS}")
    ops = {
        "hflip": lambda: K.RandomHorizontalFlip(),
        "vflip": lambda: K.RandomVerticalFlip(),
        "rotate": lambda: K.RandomRotation(degrees=15.0, p=0.5),
        "crop": lambda: K.RandomResizedCrop(
            (image_size, image_size), scale=(0.8, 1.0), ratio=(0.9, 1.1)
        ),
        "color": lambda: K.ColorJitter(0.1, 0.1, 0.1, 0.02, p=0.5),
        "contrast": lambda: K.ColorJitter(0.15, 0.15, p=0.5),
    }
    chosen = [ops[n]() for n in names if not (n == "color" and channels == 1)]
    return K.AugmentationSequential(*chosen, data_keys=list(keys), same_on_batch=False)
