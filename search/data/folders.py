"""Plan a folder-per-class image dataset as a `Conversion` (no pixel read); convert it, cached.

    from search.data.folders import convert_folder, plan_folder
    classes, conversion = plan_folder("cell_images", image_size=64)   # the driver, before Ray
    path, classes, info = convert_folder("cell_images", image_size=64)  # plan + ingest, cached
    arrays = load_npz(path, task, splits=("train", "val"))  # trainables.data, as for MedMNIST

Layouts: `src/<class>/*.png` (also .jpg .jpeg .bmp .tif .tiff; images sit directly in the class
folder), or pre-made splits `src/train/<class>/`, `src/val/<class>/`, `src/test/<class>/`
(val or test may be missing: it is then carved out of train). At least two classes. `src` may
also be the folder an archive was unpacked into when it holds exactly one dataset folder and
nothing else (NIH malaria: `src/cell_images/{Parasitized,Uninfected}/`): that folder is used.
`src` may be a URI (`s3://bucket/prefix`, through pyarrow.fs). Folders starting with `.` or `__`
and non-image files (Thumbs.db, README) are ignored.

Classes: label i is `classes[i]`; by default the sorted folder names (Python string order, in
which upper case sorts first; NIH malaria gives Parasitized=0, Uninfected=1). Pass
`classes=[...]` to fix the order, e.g. `["Uninfected", "Parasitized"]` to make Parasitized the
positive class (label 1) of a binary task.

Splits (`split=`: premade, patient, cell or auto) are `search.data.folder_split`'s; decoding
is `search.data.ingest`'s (Ray Data over the cluster, or threads without Ray; the pixels are
`search.data.images`'s).

Images: every image is resized, whole, to `image_size` x `image_size` with bilinear filtering
(Pillow's, which antialiases when shrinking). Segmented malaria cells are roughly round and vary
in size (about 40 to 390 px a side), so squashing keeps the whole cell, and its rim where ring
forms sit, at the cost of a small aspect change; a centre crop could cut parasites off and
padding would waste pixels. Channels: 1 when every source image is grayscale, else 3 (a
grayscale image in a colour dataset is repeated over RGB); `channels=` forces either. Every
unreadable file is named in one error (or left out with `skip_bad`).

Cache: `search.data.conversion.cache_file`: `<cache>/<name>-<fingerprint>.npz` (`cache_dir`,
else `$MEDSWEEP_CACHE_DIR`, else `$XDG_CACHE_HOME/medsweep/data`), never inside `src`; built
under a `FileLock` and reused while the fingerprint (every image's path, size and mtime plus
the settings) holds. Beside the MedMNIST arrays the npz holds `{split}_files` (each row's path
relative to src), `{split}_patients` (`patient_id` of each file name, "" where it has none: the
test bootstrap resamples patients when all have one), `classes`, `fingerprint` and `info`.
"""

from __future__ import annotations

import os
import posixpath
import warnings

import numpy as np

from search.data.conversion import Conversion, cache_file
from search.data.folder_split import (
    SPLIT_CHOICES,
    Layout,
    all_files,
    assign,
    count_labels,
    patient_id,
    resolve_split,
)
from search.data.images import IMAGE_EXTENSIONS
from search.data.listing import Tree, is_folder, list_tree
from search.experiment.storage import absolute
from trainables.data import SPLITS


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
    skip_bad: bool = False,
) -> tuple[str, list[str], dict]:
    """Convert (or reuse the cached conversion of) a folder dataset; returns
    `(npz_path, classes, info)`, info = {"split", "counts", "patients" (patient split only),
    "source", "channels", "image_size", "skipped", ...}."""
    order, conversion = plan_folder(
        src, image_size, split, seed, val_frac, test_frac, channels, classes
    )
    path, info = convert(conversion, cache_dir, skip_bad)
    return path, order, {**info, "source": conversion.src}


def convert(conversion: Conversion, cache_dir: str | None, skip_bad: bool) -> tuple[str, dict]:
    """(npz path, info) of a planned conversion: the cached npz when current, else ingested
    now (`search.data.ingest.ensure`)."""
    from search.data.ingest import ensure

    path = cache_file(conversion, cache_dir)
    return path, ensure(conversion, path, skip_bad)


def plan_folder(
    src: str,
    image_size: int,
    split: str = "auto",
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    channels: int | None = None,
    classes: list[str] | None = None,
) -> tuple[list[str], Conversion]:
    """(classes, the planned conversion): the listing, classes, split and checks; no pixel."""
    src = absolute(src if "://" in src else os.path.expanduser(src))
    _check_arguments(src, image_size, split, val_frac, test_frac, channels)
    tree = list_tree(src)
    tree = dataset_root(tree)
    layout = _scan(tree)
    order = _class_order(layout, classes)
    split = resolve_split(split, "all" not in layout, all_files(layout))
    settings = {
        "kind": "folder",
        "split": split,
        "seed": seed,
        "val_frac": val_frac,
        "test_frac": test_frac,
        "classes": order,
    }
    parts = assign(layout, order, settings)
    return order, _conversion(tree, parts, order, image_size, channels, settings)


def _conversion(
    tree: Tree, parts: dict, classes: list[str], image_size: int, channels, settings: dict
) -> Conversion:
    dtype = np.uint8 if len(classes) <= 256 else np.int64
    labelled = {
        s: (files, np.asarray(labels, dtype).reshape(-1, 1))
        for s, (files, labels) in parts.items()
    }
    extra = {"classes": np.array(classes)}
    for s, (files, _) in parts.items():
        extra[f"{s}_files"] = np.array(files, dtype=str)
        extra[f"{s}_patients"] = np.array([patient_id(f) or "" for f in files], dtype=str)
    info = {
        "split": settings["split"],
        "counts": count_labels({f"{s}_labels": lab for s, (_, lab) in labelled.items()}, classes),
    }
    if settings["split"] == "patient":
        info["patients"] = {s: len({patient_id(f) for f in parts[s][0]}) for s in SPLITS}
    files = [f for s in SPLITS for f in parts[s][0]]
    return Conversion(
        src=tree.root,
        parts=labelled,
        image_size=image_size,
        channels=channels,
        settings=settings,
        name=posixpath.basename(tree.root.rstrip("/")) or "dataset",
        extra=extra,
        info=info,
        file_stats={f: tree.files[f] for f in files},
    )


def _check_arguments(
    src: str, image_size: int, split: str, val_frac: float, test_frac: float, channels
) -> None:
    if not is_folder(src):
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


def dataset_root(tree: Tree) -> Tree:
    """`tree`, or the tree of its only subfolder when the root holds nothing else (no image)
    and that subfolder holds folders (classes or splits) rather than images: an unpacked
    archive's root."""
    inner = tree.subfolders("")
    if len(inner) != 1 or tree.images_in(""):
        return tree
    if not tree.subfolders(inner[0]) or tree.images_in(inner[0]):
        return tree
    prefix = inner[0] + "/"
    return Tree(
        tree.path(inner[0]),
        {f[len(prefix) :]: stat for f, stat in tree.files.items() if f.startswith(prefix)},
        {d[len(prefix) :] for d in tree.dirs if d.startswith(prefix)},
    )


def _scan(tree: Tree) -> Layout:
    """The class folders and their images: under "all", or under each pre-made split."""
    src, top = tree.root, tree.subfolders("")
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
    if not premade and {"images", "masks"} <= set(top):
        raise ValueError(
            f"{src}: holds images/ and masks/, a segmentation layout, which a classifier would "
            "learn as two classes; pass --task segfolder (or move them into class folders)"
        )
    groups = premade or [""]
    layout = {g or "all": _scan_classes(tree, g) for g in groups}
    _check_layout(tree, layout)
    _warn_deeper_images(tree, layout)
    return layout


def _warn_deeper_images(tree: Tree, layout: Layout) -> None:
    """A warning naming images below a class folder's own level, which the layout skips."""
    classes = [
        posixpath.join("" if group == "all" else group, name)
        for group, folders in layout.items()
        for name in folders
    ]
    deeper = [f for f in tree.files if f.lower().endswith(IMAGE_EXTENSIONS) and _below(f, classes)]
    if deeper:
        warnings.warn(
            f"{tree.root}: {len(deeper)} image(s) sit in folders inside a class folder (e.g. "
            f"{deeper[0]}) and are not read: only images directly in <class>/ are; move them "
            "up, or point --data-dir at the folder that holds the classes",
            stacklevel=3,
        )


def _below(rel: str, classes: list[str]) -> bool:
    """Whether `rel` lies deeper than directly inside one of the class folders."""
    parent = posixpath.dirname(rel)
    return parent not in classes and any(parent.startswith(c + "/") for c in classes)


def _scan_classes(tree: Tree, group: str) -> dict[str, list[str]]:
    classes = tree.subfolders(group)
    if not classes:
        root = tree.path(group)
        raise ValueError(f"{root}: no class folders; expected {root}/<class>/*.png")
    return {c: tree.images_in(posixpath.join(group, c)) for c in classes}


def _check_layout(tree: Tree, layout: Layout) -> None:
    empty = [
        posixpath.join("" if group == "all" else group, name)
        for group, folders in layout.items()
        for name, files in folders.items()
        if not files
    ]
    if empty:
        hints = [
            f"{tree.path(p)} (holds folders {tree.subfolders(p)})"
            if tree.subfolders(p)
            else tree.path(p)
            for p in empty
        ]
        raise ValueError(
            f"empty class folder(s), no {'/'.join(IMAGE_EXTENSIONS)} images directly inside: "
            f"{', '.join(hints)}; remove them or point src at the folder that holds the classes"
        )
    sets = {group: sorted(folders) for group, folders in layout.items()}
    if len({tuple(s) for s in sets.values()}) > 1:
        union = set().union(*sets.values())
        missing = {g: sorted(union - set(s)) for g, s in sets.items() if set(s) != union}
        raise ValueError(
            f"{tree.root}: the pre-made splits disagree on classes: {sets}; missing: {missing}. "
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
