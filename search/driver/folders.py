"""Turn a folder-per-class image dataset into a MedMNIST-layout npz, once, cached beside it.

    from search.driver.folders import convert_folder, small_data_warnings
    path, classes, info = convert_folder("cell_images", image_size=64)  # NIH malaria cells
    arrays = load_npz(path, task, splits=("train", "val"))  # trainables.data, as for MedMNIST
    for line in small_data_warnings(info["counts"]):
        print("warning:", line)

Layouts: `src/<class>/*.png` (also .jpg .jpeg .bmp .tif .tiff; images sit directly in the class
folder), or pre-made splits `src/train/<class>/`, `src/val/<class>/`, `src/test/<class>/`
(val or test may be missing: it is then carved out of train). Folders starting with `.` or `__`
and non-image files (Thumbs.db, README) are ignored.

Classes: label i is `classes[i]`; by default the sorted folder names (Python string order, in
which upper case sorts first; NIH malaria gives Parasitized=0, Uninfected=1). Pass
`classes=[...]` to fix the order, e.g. `["Uninfected", "Parasitized"]` to make Parasitized the
positive class (label 1) of a binary task.

Splits (`split=`):
- `premade`: the dataset's own train/val/test folders.
- `patient`: whole patients go to one side (`patient_id` reads the NIH malaria file names), with
  `StratifiedGroupKFold` keeping the class mix as far as whole patients allow; one fold of
  round(1 / frac) is held out, so the fractions are approximate.
- `cell`: a stratified random split of the images (`train_test_split(stratify=...)`); cells of
  one patient land on both sides, which flatters every metric.
- `auto`: premade if the folders exist, else patient if every file name carries a patient id,
  else cell (with a warning when only some names carry one).
`patient` or `cell` on a pre-made layout pools its folders and splits them afresh.

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
`FileLock` and reused until the fingerprint stored in it (relative path, size and mtime of every
image, plus the conversion settings) changes. Beside the MedMNIST arrays the npz holds
`{split}_files` (each row's path relative to src), `classes`, `fingerprint` and `info` (JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from filelock import FileLock
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
SPLIT_CHOICES = ("auto", "premade", "patient", "cell")
MIN_EVAL_IMAGES = 20
FORMAT_VERSION = 1  # part of the fingerprint: bump it when the conversion changes
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}

# NIH malaria (LHNCBC cell_images): C<case>P<patient> for infected patients (C33P1thinF,
# C100P61ThinF, C186P147NThinF, C39P4thinF_original, C47P8thinOriginalOlympusCX21, C<n>AP<m>thinF)
# and C<case> alone for the uninfected ones (C1_thinF, C2NThinF, C3thin_original, C233ThinF).
# The official mapping lists C47P8's two microscopes as two ids; cutting at C<n>P<m> merges them,
# and merging can only make a patient split stricter.
Layout = dict[str, dict[str, list[str]]]  # {"all" | split: {class: files relative to src}}
_NIH_NAME = re.compile(r"^C(\d+)(?:A?P(\d+))?[A-Za-z_]*?thin", re.IGNORECASE)


def patient_id(filename: str) -> str | None:
    """The patient in an NIH malaria cell file name (`C33P1thinF_IMG_..._cell_179.png` -> `C33P1`,
    `C1_thinF_IMG_..._cell_9.png` -> `C1`), or None for a name that does not follow it."""
    match = _NIH_NAME.match(os.path.basename(filename))
    if match is None:
        return None
    case, patient = match.groups()
    return f"C{case}" if patient is None else f"C{case}P{patient}"


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
    layout = _scan(src)
    order = _class_order(layout, classes)
    split = _resolve_split(split, layout)
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
    fingerprint = _fingerprint(src, layout, settings)
    path = _cache_path(src, cache_dir, image_size, split, seed)
    info = _read_cached(path, fingerprint)
    if info is None:
        with FileLock(path + ".lock"):
            info = _read_cached(path, fingerprint)  # another process may have just built it
            if info is None:
                arrays, info = _build(src, layout, order, settings)
                arrays.update(fingerprint=np.array(fingerprint), info=np.array(json.dumps(info)))
                _write_atomic(path, arrays)
    return path, order, {**info, "source": src}


def split_counts(
    source: str | os.PathLike | Mapping[str, np.ndarray], classes: list[str]
) -> dict[str, dict[str, int]]:
    """Images per class in each split present (positives per label for multilabel arrays)."""
    if isinstance(source, Mapping):
        return _counts(source, classes)
    with np.load(source, allow_pickle=False) as npz:
        return _counts({k: npz[k] for k in npz.files if k.endswith("_labels")}, classes)


def small_data_warnings(
    counts: dict[str, dict[str, int]], min_count: int = MIN_EVAL_IMAGES
) -> list[str]:
    """One line per class too thin to judge: fewer than `min_count` val (or test) images, or
    none in train. For the report, so a metric on 7 images is not read as a result."""
    lines = [
        f"train: class {name!r} has no images; the model never sees it"
        for name, n in counts.get("train", {}).items()
        if n == 0
    ]
    for split in ("val", "test"):
        for name, n in counts.get(split, {}).items():
            if n < min_count:
                lines.append(
                    f"{split}: class {name!r} has {n} image(s) (< {min_count}); its {split} "
                    "AUC, F1 and accuracy rest on too few examples to rank trials reliably"
                )
    return lines


def _counts(arrays: Mapping[str, np.ndarray], classes: list[str]) -> dict[str, dict[str, int]]:
    counts = {}
    for split in SPLITS:
        labels = arrays.get(f"{split}_labels")
        if labels is None:
            continue
        labels = labels.reshape(len(labels), -1)
        if labels.shape[1] > 1:  # multilabel: positives per label
            per_class = labels.sum(axis=0)
        else:
            per_class = np.bincount(labels[:, 0].astype(np.int64), minlength=len(classes))
        counts[split] = {name: int(per_class[i]) for i, name in enumerate(classes)}
    return counts


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


def _all_file_lists(layout: Layout) -> list[list[str]]:
    return [files for g in layout for files in layout[g].values()]


def _class_order(layout: Layout, classes: list[str] | None) -> list[str]:
    found = sorted(next(iter(layout.values())))
    if classes is None:
        return found
    if sorted(classes) != found:
        raise ValueError(
            f"classes={list(classes)} do not match the class folders {found}; list each folder "
            "exactly once, in the label order you want"
        )
    return list(classes)


def _resolve_split(split: str, layout: Layout) -> str:
    premade = "all" not in layout
    if split == "premade" and not premade:
        raise ValueError("split='premade' needs train/ (and val/ or test/) folders in src")
    if split != "auto":
        return split
    if premade:
        return "premade"
    files = [f for lists in _all_file_lists(layout) for f in lists]
    anonymous = [f for f in files if patient_id(f) is None]
    if anonymous and len(anonymous) < len(files):
        warnings.warn(
            f"{len(anonymous)} of {len(files)} file names carry no patient id (e.g. "
            f"{anonymous[0]}), so split='auto' falls back to a cell split, where one patient's "
            "cells land on both sides; rename them or pass split='patient' to see the error",
            stacklevel=3,
        )
    return "cell" if anonymous else "patient"


def _fingerprint(src: str, layout: Layout, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for rel in sorted(f for lists in _all_file_lists(layout) for f in lists):
        stat = os.stat(os.path.join(src, rel))
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cache_path(src: str, cache_dir: str | None, image_size: int, split: str, seed: int) -> str:
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
    tag = hashlib.sha256(src.encode()).hexdigest()[:8]  # two datasets may share a folder name
    return os.path.join(cache_dir, f"{name}-{tag}{stem}")


def _read_cached(path: str, fingerprint: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["fingerprint"]) != fingerprint:
                return None
            return json.loads(str(npz["info"]))
    except (OSError, ValueError, KeyError):  # a damaged or foreign file: rebuild it
        return None


def _write_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"  # opened plainly, so the umask applies (not 0600)
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)  # uncompressed: written once, loaded by every run
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _build(
    src: str, layout: Layout, classes: list[str], settings: dict
) -> tuple[dict[str, np.ndarray], dict]:
    parts = _assign(layout, classes, settings)
    files = [f for split in SPLITS for f in parts[split][0]]
    images, channels = _read_images(src, files, settings["image_size"], settings["channels"])
    dtype = np.uint8 if len(classes) <= 256 else np.int64
    arrays, start = {"classes": np.array(classes)}, 0
    for split in SPLITS:
        names, labels = parts[split]
        arrays[f"{split}_images"] = images[start : start + len(names)]
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=dtype).reshape(-1, 1)
        arrays[f"{split}_files"] = np.array(names, dtype=str)
        start += len(names)
    info = {
        "split": settings["split"],
        "counts": _counts(arrays, classes),
        "channels": channels,
        "image_size": settings["image_size"],
    }
    if settings["split"] == "patient":
        info["patients"] = {s: len({patient_id(f) for f in parts[s][0]}) for s in SPLITS}
    return arrays, info


def _assign(
    layout: Layout, classes: list[str], settings: dict
) -> dict[str, tuple[list[str], list[int]]]:
    """{split: (files, labels)} with files in a fixed order (sorted by path within a split)."""
    labelled = {
        group: [(f, classes.index(c)) for c, files in layout[group].items() for f in files]
        for group in layout
    }
    split, seed = settings["split"], settings["seed"]
    val_frac, test_frac = settings["val_frac"], settings["test_frac"]
    if split == "premade":
        parts = {s: labelled[s] for s in SPLITS if s in labelled}
        ids = [patient_id(f) for f, _ in parts["train"]]
        grouped = all(ids) and len(set(ids)) >= 2  # carve whole patients when names allow
        for s, frac in (("test", test_frac), ("val", val_frac)):
            if s not in parts:
                parts["train"], parts[s] = _holdout(parts["train"], frac, seed, grouped)
    else:
        pool = [item for items in labelled.values() for item in items]
        grouped = split == "patient"
        if grouped:
            _check_patients(pool)
        rest, test = _holdout(pool, test_frac, seed, grouped)
        train, val = _holdout(rest, val_frac / (1 - test_frac), seed, grouped)
        parts = {"train": train, "val": val, "test": test}
    return {s: _unzip(sorted(parts[s])) for s in SPLITS}


def _unzip(items: list[tuple[str, int]]) -> tuple[list[str], list[int]]:
    return [f for f, _ in items], [label for _, label in items]


def _check_patients(items: list[tuple[str, int]]) -> None:
    missing = [f for f, _ in items if patient_id(f) is None]
    if missing:
        raise ValueError(
            f"split='patient' needs a patient id in every file name (NIH malaria style, "
            f"C33P1thinF_IMG_..._cell_1.png); {len(missing)} file(s) have none, e.g. "
            f"{missing[:3]}; use split='cell' (a random split) for this dataset"
        )
    patients = sorted({patient_id(f) for f, _ in items})
    if len(patients) < 3:
        raise ValueError(
            f"split='patient' needs at least 3 patients (train, val, test); found {patients}; "
            "use split='cell', accepting that cells of one patient land on both sides"
        )


def _holdout(
    items: list[tuple[str, int]], frac: float, seed: int, grouped: bool
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Split off about `frac` of `items`, stratified by label; by whole patients if `grouped`."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    labels = np.array([label for _, label in items])
    index = np.arange(len(items))
    if grouped:
        groups = np.array([patient_id(f) for f, _ in items])
        n_splits = max(2, min(round(1 / frac), len(set(groups))))
        folds = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        splits = list(folds.split(index, labels, groups))
        # a fold holding every class, if whole patients allow one (healthy patients have one)
        keep, held = max(splits, key=lambda s: len(set(labels[s[1]])))
    else:
        try:
            keep, held = train_test_split(
                index, test_size=frac, stratify=labels, random_state=seed
            )
        except ValueError as err:
            raise ValueError(
                f"cannot split {len(items)} images {frac:.0%} / {1 - frac:.0%} stratified by "
                f"class ({err}); add images to the smallest class or lower val/test_frac"
            ) from err
    return [items[i] for i in keep], [items[i] for i in held]


def _read_images(
    src: str, files: list[str], size: int, channels: int | None
) -> tuple[np.ndarray, int]:
    """All images as uint8 (N, size, size[, 3]); one ValueError naming every unreadable file."""
    paths = [os.path.join(src, f) for f in files]
    with ThreadPoolExecutor(_workers()) as pool:  # Pillow releases the GIL while decoding
        modes = list(pool.map(_try(_mode), paths))
        bad = {f: m for f, m in zip(files, modes, strict=True) if isinstance(m, Exception)}
        channels = channels or (1 if all(m in _GRAY_MODES for m in modes) else 3)
        shape = (len(paths), size, size) + ((3,) if channels == 3 else ())
        images = np.empty(shape, dtype=np.uint8)
        mode = "L" if channels == 1 else "RGB"

        def load_row(i: int) -> None:
            images[i] = _load(paths[i], size, mode)

        todo = [i for i, f in enumerate(files) if f not in bad]
        errors = list(pool.map(_try(load_row), todo))
        bad.update(
            {files[i]: e for i, e in zip(todo, errors, strict=True) if isinstance(e, Exception)}
        )
    if bad:
        listing = "\n".join(f"  {os.path.join(src, f)}: {bad[f]}" for f in sorted(bad))
        raise ValueError(
            f"{len(bad)} of {len(files)} image(s) in {src} could not be read; fix or delete "
            f"them (git-lfs pointers and truncated downloads look like this):\n{listing}"
        )
    return images, channels


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cpus or 1))


def _try(fn):
    def call(path: str):
        try:
            return fn(path)
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
            return err

    return call


def _mode(path: str) -> str:
    with Image.open(path) as im:  # reads the header only
        return im.mode


def _load(path: str, size: int, mode: str) -> np.ndarray:
    with Image.open(path) as im:
        im.draft(mode, (size, size))  # JPEG only: decode at 1/2..1/8 scale, still >= size
        ImageOps.exif_transpose(im, in_place=True)  # phone and camera JPEGs
        if im.mode in _WIDE_MODES:
            im = _to_8bit(im)
        return np.asarray(im.convert(mode).resize((size, size), Image.Resampling.BILINEAR))


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit or float grayscale -> 8-bit, stretched over the image's own range."""
    x = np.asarray(im, dtype=np.float32)
    low, high = float(x.min()), float(x.max())
    x = (x - low) / (high - low) * 255.0 if high > low else np.zeros_like(x)
    return Image.fromarray(np.round(x).astype(np.uint8))
