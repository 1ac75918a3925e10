"""How a folder dataset is split into train/val/test, and who the patients are.

    split = resolve_split("auto", premade=False, files=all_files(layout))  # "patient" | "cell"
    parts = assign(layout, classes, settings)      # {split: (files, labels)}
    patient_id("C33P1thinF_IMG_20150619_114756a_cell_179.png")           # "C33P1"
    for line in small_data_warnings(split_counts(npz_path, classes)):
        print("warning:", line)

Splits (`split=`):
- `premade`: the dataset's own train/val/test folders (a missing val or test is carved out of
  train, by whole patients when every name carries a patient id).
- `patient`: whole patients go to one side (`patient_id` reads the NIH malaria file names), with
  `StratifiedGroupKFold` keeping the class mix as far as whole patients allow; one fold of
  round(1 / frac) is held out, so the fractions are approximate.
- `cell`: a stratified random split of the images (`train_test_split(stratify=...)`); cells of
  one patient land on both sides, which flatters every metric.
- `auto`: premade if the folders exist, else patient if every file name carries a patient id,
  else cell (with a warning when only some names carry one).
`patient` or `cell` on a pre-made layout pools its folders and splits them afresh.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping

import numpy as np

from trainables.data import SPLITS

SPLIT_CHOICES = ("auto", "premade", "patient", "cell")
MIN_EVAL_IMAGES = 20
Layout = dict[str, dict[str, list[str]]]  # {"all" | split: {class: files relative to src}}

# NIH malaria (LHNCBC cell_images): C<case>P<patient> for infected patients (C33P1thinF,
# C100P61ThinF, C186P147NThinF, C39P4thinF_original, C47P8thinOriginalOlympusCX21, C<n>AP<m>thinF)
# and C<case> alone for the uninfected ones (C1_thinF, C2NThinF, C3thin_original, C233ThinF).
# The official mapping lists C47P8's two microscopes as two ids; cutting at C<n>P<m> merges them,
# and merging can only make a patient split stricter.
_NIH_NAME = re.compile(r"^C(\d+)(?:A?P(\d+))?[A-Za-z_]*?thin", re.IGNORECASE)


def patient_id(filename: str) -> str | None:
    """The patient in an NIH malaria cell file name (`C33P1thinF_IMG_..._cell_179.png` -> `C33P1`,
    `C1_thinF_IMG_..._cell_9.png` -> `C1`), or None for a name that does not follow it."""
    match = _NIH_NAME.match(os.path.basename(filename))
    if match is None:
        return None
    case, patient = match.groups()
    return f"C{case}" if patient is None else f"C{case}P{patient}"


def split_counts(
    source: str | os.PathLike | Mapping[str, np.ndarray], classes: list[str]
) -> dict[str, dict[str, int]]:
    """Images per class in each split present (positives per label for multilabel arrays)."""
    if isinstance(source, Mapping):
        return count_labels(source, classes)
    with np.load(source, allow_pickle=False) as npz:
        return count_labels({k: npz[k] for k in npz.files if k.endswith("_labels")}, classes)


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


def count_labels(
    arrays: Mapping[str, np.ndarray], classes: list[str]
) -> dict[str, dict[str, int]]:
    """{split: {class: images}} of the `{split}_labels` arrays present."""
    counts = {}
    for split in SPLITS:
        labels = arrays.get(f"{split}_labels")
        if labels is None:
            continue
        labels = labels.reshape(len(labels), -1)
        if labels.shape[1] > 1:  # multilabel: positives per label
            per_class = (labels == 1).sum(axis=0)  # -1: unknown (a table's U-Ignore)
        else:
            per_class = np.bincount(labels[:, 0].astype(np.int64), minlength=len(classes))
        counts[split] = {name: int(per_class[i]) for i, name in enumerate(classes)}
    return counts


def all_files(layout: Layout) -> list[str]:
    """Every image file of a layout, relative to src."""
    return [f for group in layout.values() for files in group.values() for f in files]


def resolve_split(split: str, premade: bool, files: list[str]) -> str:
    """The split `auto` stands for (see the module docstring); checks `premade` is possible."""
    if split == "premade" and not premade:
        raise ValueError("split='premade' needs train/ (and val/ or test/) folders in src")
    if split != "auto":
        return split
    if premade:
        return "premade"
    anonymous = [f for f in files if patient_id(f) is None]
    if anonymous and len(anonymous) < len(files):
        warnings.warn(
            f"{len(anonymous)} of {len(files)} file names carry no patient id (e.g. "
            f"{anonymous[0]}), so split='auto' falls back to a cell split, where one patient's "
            "cells land on both sides; rename them or pass split='patient' to see the error",
            stacklevel=3,
        )
    return "cell" if anonymous else "patient"


def assign(
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
