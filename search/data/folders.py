"""Turn a folder-per-class image dataset into a MedMNIST-layout npz, once, cached beside it.

    from search.data.folder_split import small_data_warnings
    from search.data.folders import convert_folder
    path, classes, info = convert_folder("cell_images", image_size=64)  # NIH malaria cells
    arrays = load_npz(path, task, splits=("train", "val"))  # trainables.data, as for MedMNIST
    for line in small_data_warnings(info["counts"]):
        print("warning:", line)

Layouts: `src/<class>/*.png` (also .jpg .jpeg .bmp .tif .tiff; images sit directly in the class
folder), or pre-made splits `src/train/<class>/`, `src/val/<class>/`, `src/test/<class>/`
(val or test may be missing: it is then carved out of train). At least two classes. `src` may
also be the folder an archive was unpacked into when it holds exactly one dataset folder and
nothing else (NIH malaria: `src/cell_images/{Parasitized,Uninfected}/`): that folder is used.
Folders starting with `.` or `__` and non-image files (Thumbs.db, README) are ignored.

Classes: label i is `classes[i]`; by default the sorted folder names (Python string order, in
which upper case sorts first; NIH malaria gives Parasitized=0, Uninfected=1). Pass
`classes=[...]` to fix the order, e.g. `["Uninfected", "Parasitized"]` to make Parasitized the
positive class (label 1) of a binary task.

Splits (`split=`: premade, patient, cell or auto) are `search.data.folder_split`'s; reading
and resizing the images is `search.data.images`'s.

Images: every image is resized, whole, to `image_size` x `image_size` with bilinear filtering
(Pillow's, which antialiases when shrinking). Segmented malaria cells are roughly round and vary
in size (about 40 to 390 px a side), so squashing keeps the whole cell, and its rim where ring
forms sit, at the cost of a small aspect change; a centre crop could cut parasites off and
padding would waste pixels. Channels: 1 when every source image is grayscale, else 3 (a
grayscale image in a colour dataset is repeated over RGB); `channels=` forces either. 16-bit and
float images are scaled per image to 0-255. Every file is read before anything is written, and
all unreadable files are named in one error.

Cache: `<src>/.medsweep/<name>_<size>_<split>_s<seed>.npz`, or
`<cache_dir>/<name>-<hash of src>_<size>_<split>_s<seed>.npz` when `cache_dir` is given or src
is read-only (default `$XDG_CACHE_HOME/medsweep/folders`). It is written atomically under a
`FileLock` and reused until the fingerprint stored in it
(`search.data.fingerprint.folder_fingerprint`: relative path, size and mtime of every image,
plus the conversion settings) changes. Beside the MedMNIST arrays the npz holds
`{split}_files` (each row's path relative to src), `{split}_patients` (`patient_id` of each
file name, "" where it has none: the test bootstrap resamples patients when all have one),
`classes`, `fingerprint` and `info` (JSON).
"""

from __future__ import annotations

import json
import os

import numpy as np
from filelock import FileLock

from search.data.fingerprint import folder_fingerprint, path_tag
from search.data.images import IMAGE_EXTENSIONS, read_images
from search.data.folder_split import (
    SPLIT_CHOICES,
    Layout,
    all_files,
    assign,
    count_labels,
    patient_id,
    resolve_split,
)
from trainables.data import SPLITS
from trainables.files import write_atomic

FORMAT_VERSION = 2  # part of the fingerprint: bump it when the conversion changes (2: patients)


def convert_folder(
    src: str,
    image_size: int,
    split: str = "auto",
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    channels: int | None = None,
    cache_dir: str | None = None,
    classes: list[str] | None = None,
) -> tuple[str, list[str], dict]:
    """Convert (or reuse the cached conversion of) a folder dataset; returns
    `(npz_path, classes, info)`, info = {"split", "counts", "patients" (patient split only),
    "source", "channels", "image_size"}."""
    src = os.path.abspath(os.path.expanduser(src))
    _check_arguments(src, image_size, split, val_frac, test_frac, channels)
    src = dataset_root(src)
    layout = _scan(src)
    order = _class_order(layout, classes)
    split = resolve_split(split, "all" not in layout, all_files(layout))
    settings = {
        "format": FORMAT_VERSION,
        "image_size": image_size,
        "split": split,
        "seed": seed,
        "val_frac": val_frac,
        "test_frac": test_frac,
        "channels": channels,
        "classes": order,
    }
    fingerprint = folder_fingerprint(src, all_files(layout), settings)
    path = cache_path(src, cache_dir, image_size, split, seed)
    info = read_cached(path, fingerprint)
    if info is None:
        with FileLock(path + ".lock"):
            info = read_cached(path, fingerprint)  # another process may have just built it
            if info is None:
                arrays, info = _build(src, layout, order, settings)
                arrays.update(fingerprint=np.array(fingerprint), info=np.array(json.dumps(info)))
                write_cached(path, arrays)
    return path, order, {**info, "source": src}


def _check_arguments(
    src: str, image_size: int, split: str, val_frac: float, test_frac: float, channels
) -> None:
    if not os.path.isdir(src):
        raise ValueError(
            f"{src}: not a folder; expected a dataset laid out as {src}/<class>/*.png"
        )
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split {split!r} is not one of {SPLIT_CHOICES}")
    if not (isinstance(image_size, int) and image_size > 0):
        raise ValueError(f"image_size must be a positive int (pixels a side), got {image_size!r}")
    if not (0 < val_frac and 0 < test_frac and val_frac + test_frac < 1):
        raise ValueError(
            f"val_frac={val_frac} and test_frac={test_frac} must be above 0 and sum below 1 "
            "(e.g. 0.15 and 0.15)"
        )
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None (infer), got {channels!r}")


def dataset_root(src: str) -> str:
    """`src`, or its only subfolder when `src` holds nothing else (no image) and that subfolder
    holds folders (classes or splits) rather than images: an unpacked archive's root."""
    inner = _subfolders(src)
    if len(inner) != 1 or _images_in(src):
        return src
    candidate = os.path.join(src, inner[0])
    if _subfolders(candidate) and not _images_in(candidate):
        return candidate
    return src


def _subfolders(folder: str) -> list[str]:
    return sorted(
        e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith((".", "__"))
    )


def _images_in(folder: str) -> list[str]:
    return sorted(
        e.name
        for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _scan(src: str) -> Layout:
    """The class folders and their images: under "all", or under each pre-made split."""
    top = _subfolders(src)
    expected = f"{src}/<class>/*.png, or {src}/train/<class>/ (+ val/, test/)"
    if not top:
        raise ValueError(f"{src}: no class folders; expected {expected}")
    premade = [s for s in SPLITS if s in top]
    if premade and "train" not in premade:
        raise ValueError(f"{src}: has {premade} but no train/; expected {expected}")
    if premade and set(top) != set(premade):
        raise ValueError(
            f"{src}: has train/ (pre-made splits) and also {sorted(set(top) - set(premade))}; "
            f"expected only train/, val/, test/ (move the others out)"
        )
    groups = premade or [""]
    layout = {g or "all": _scan_classes(src, g) for g in groups}
    _check_layout(src, layout)
    return layout


def _scan_classes(src: str, group: str) -> dict[str, list[str]]:
    root = os.path.join(src, group)
    classes = _subfolders(root)
    if not classes:
        raise ValueError(f"{root}: no class folders; expected {root}/<class>/*.png")
    return {
        c: [os.path.join(group, c, f) for f in _images_in(os.path.join(root, c))] for c in classes
    }


def _check_layout(src: str, layout: Layout) -> None:
    empty = [
        os.path.join(src, "" if group == "all" else group, name)
        for group, folders in layout.items()
        for name, files in folders.items()
        if not files
    ]
    if empty:
        hints = [f"{p} (holds folders {_subfolders(p)})" if _subfolders(p) else p for p in empty]
        raise ValueError(
            f"empty class folder(s), no {'/'.join(IMAGE_EXTENSIONS)} images directly inside: "
            f"{', '.join(hints)}; remove them or point src at the folder that holds the classes"
        )
    sets = {group: sorted(folders) for group, folders in layout.items()}
    if len({tuple(s) for s in sets.values()}) > 1:
        union = set().union(*sets.values())
        missing = {g: sorted(union - set(s)) for g, s in sets.items() if set(s) != union}
        raise ValueError(
            f"{src}: the pre-made splits disagree on classes: {sets}; missing: {missing}. "
            "Every split needs the same class folders."
        )


def _class_order(layout: Layout, classes: list[str] | None) -> list[str]:
    found = sorted(next(iter(layout.values())))
    if len(found) < 2:
        raise ValueError(
            f"one class folder ({found}); a classifier needs at least 2: add a folder of "
            "images per class (for malaria, Parasitized/ and Uninfected/)"
        )
    if classes is None:
        return found
    if sorted(classes) != found:
        raise ValueError(
            f"classes={list(classes)} do not match the class folders {found}; list each folder "
            "exactly once, in the label order you want"
        )
    return list(classes)


def cache_path(src: str, cache_dir: str | None, image_size: int, split: str, seed: int) -> str:
    name = os.path.basename(src.rstrip(os.sep)) or "dataset"
    stem = f"_{image_size}_{split}_s{seed}.npz"
    if cache_dir is None and os.access(src, os.W_OK):
        try:
            os.makedirs(os.path.join(src, ".medsweep"), exist_ok=True)
            return os.path.join(src, ".medsweep", name + stem)
        except OSError:
            pass  # e.g. a read-only mount that os.access does not see
    if cache_dir is None:
        xdg = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
        cache_dir = os.path.join(xdg, "medsweep", "folders")
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    os.makedirs(cache_dir, exist_ok=True)
    return os.path.join(cache_dir, f"{name}-{path_tag(src)}{stem}")


def read_cached(path: str, fingerprint: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["fingerprint"]) != fingerprint:
                return None
            return json.loads(str(npz["info"]))
    except (OSError, ValueError, KeyError):  # a damaged or foreign file: rebuild it
        return None


def write_cached(path: str, arrays: dict[str, np.ndarray]) -> None:
    """The conversion's npz, written atomically (uncompressed: written once, loaded by every
    run)."""
    write_atomic(path, lambda f: np.savez(f, **arrays))


def _build(
    src: str, layout: Layout, classes: list[str], settings: dict
) -> tuple[dict[str, np.ndarray], dict]:
    parts = assign(layout, classes, settings)
    files = [f for split in SPLITS for f in parts[split][0]]
    images, channels = read_images(src, files, settings["image_size"], settings["channels"])
    dtype = np.uint8 if len(classes) <= 256 else np.int64
    arrays, start = {"classes": np.array(classes)}, 0
    for split in SPLITS:
        names, labels = parts[split]
        arrays[f"{split}_images"] = images[start : start + len(names)]
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=dtype).reshape(-1, 1)
        arrays[f"{split}_files"] = np.array(names, dtype=str)
        arrays[f"{split}_patients"] = np.array([patient_id(f) or "" for f in names], dtype=str)
        start += len(names)
    info = {
        "split": settings["split"],
        "counts": count_labels(arrays, classes),
        "channels": channels,
        "image_size": settings["image_size"],
    }
    if settings["split"] == "patient":
        info["patients"] = {s: len({patient_id(f) for f in parts[s][0]}) for s in SPLITS}
    return arrays, info
