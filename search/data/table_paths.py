"""Where the images a table lists are: its path column, resolved against one listing of the
data folder, and the patient of each row.

    tree = list_tree(data_dir)                              # once; local folder or URI
    name = find_path_column(table, None, "train.csv")       # Path, Image Index, filename, ...
    files = resolve_paths(column(table, name), tree, "train.csv")
    patients = patients_of(table, files, raw_paths, column=None, regex=r"patient(\\d+)")

A listed path is tried as given (relative to the data folder); then without a leading folder
named like the data folder itself (CheXpert's `CheXpert-v1.0-small/train/...` under
`--data-dir CheXpert-v1.0-small`); then, for a bare file name (NIH's `Image Index`, ISIC's image
id without extension), by name anywhere under the folder (`images_001/images/...`). Every path
still not found is counted and the first few named in one error.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict

import numpy as np
import pyarrow as pa

from search.data.images import IMAGE_EXTENSIONS
from search.data.listing import Tree
from search.data.table_read import column, require_columns

PATH_COLUMNS = (
    "Path",
    "path",
    "Image Index",
    "image_path",
    "image",
    "Image",
    "filename",
    "file_name",
    "file",
    "File",
    "image_id",
    "img",
)
"""Names tried, in order, for the image path column when `--path-column` is not given."""
SHOWN = 5


def find_path_column(table: pa.Table, given: str | None, path: str) -> str:
    """`given` (checked), else the first of PATH_COLUMNS (then the same names in any case)."""
    if given:
        require_columns(table, [given], "path", "--path-column NAME", path)
        return given
    names = table.column_names
    lower = {n.lower(): n for n in names}
    for candidate in PATH_COLUMNS:
        if candidate in names:
            return candidate
        if candidate.lower() in lower:
            return lower[candidate.lower()]
    raise ValueError(
        f"{path} has no image path column (tried {', '.join(PATH_COLUMNS[:6])}, ...; its "
        f"columns: {', '.join(names)}); pass --path-column NAME"
    )


def check_duplicates(raw: np.ndarray, name: str, path: str) -> None:
    """A ValueError when a path is listed twice (its labels would count twice, or disagree)."""
    uniques, counts = np.unique(raw, return_counts=True)
    twice = uniques[counts > 1]
    if len(twice):
        raise ValueError(
            f"{path}: {len(twice)} image path(s) in column {name!r} are listed more than once "
            f"(e.g. {', '.join(map(str, twice[:SHOWN]))}); keep one row per image (or filter "
            "with --where)"
        )


def resolve_paths(raw: np.ndarray, tree: Tree, path: str) -> list[str]:
    """Each listed path as a file of `tree` (relative, `/`-separated); a ValueError counts
    every path not found and names the first few."""
    top = posixpath.basename(tree.root.rstrip("/\\").replace("\\", "/"))
    by_name: dict[str, list[str]] | None = None
    files, missing = [], []
    for value in raw:
        rel = _normalise(value)
        found = _direct(rel, top, tree)
        if found is None and "/" not in rel:
            by_name = by_name if by_name is not None else _name_index(tree)
            hits = by_name.get(rel, [])
            found = hits[0] if len(hits) == 1 else None
        if found is None:
            missing.append(value)
        files.append(found)
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(raw)} image path(s) listed in {path} are not under "
            f"{tree.root} (e.g. {', '.join(map(str, missing[:SHOWN]))}); pass the folder the "
            "paths are relative to as --data-dir, or filter those rows with --where"
        )
    return files


def _normalise(value: str) -> str:
    rel = str(value).strip().replace("\\", "/")
    while rel.startswith("./"):
        rel = rel[2:]
    return rel


def _direct(rel: str, top: str, tree: Tree) -> str | None:
    if rel in tree.files:
        return rel
    head, _, rest = rel.partition("/")
    if rest and head == top and rest in tree.files:
        return rest
    return None


def _name_index(tree: Tree) -> dict[str, list[str]]:
    """{file name: files}, and {name without its image extension: files}, of the tree."""
    index: dict[str, list[str]] = defaultdict(list)
    for rel in tree.files:
        name = posixpath.basename(rel)
        index[name].append(rel)
        stem, ext = posixpath.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            index[stem].append(rel)
    return index


def patients_of(
    table: pa.Table, raw: np.ndarray, patient_column: str | None, regex: str | None, path: str
) -> tuple[np.ndarray | None, str | None]:
    """(one patient id per row, where they come from) from `patient_column`, or the first
    group of `regex` searched in each listed path; (None, None) when neither is given."""
    if patient_column:
        require_columns(table, [patient_column], "patient", "--patient-column NAME", path)
        ids = column(table, patient_column)
        _check_all(ids == "", f"column {patient_column!r} is blank", path)
        return ids, f"column {patient_column!r}"
    if not regex:
        return None, None
    try:
        pattern = re.compile(regex)
    except re.error as err:
        raise ValueError(f"--patient-regex {regex!r} is not a regular expression ({err})") from err
    if pattern.groups < 1:
        raise ValueError(
            f"--patient-regex {regex!r} has no group; put the patient part in parentheses, "
            r"e.g. 'patient(\d+)'"
        )
    matches = [pattern.search(str(v)) for v in raw]
    ids = np.array([m.group(1) if m and m.group(1) else "" for m in matches], dtype=object)
    _check_all(ids == "", f"--patient-regex {regex!r} finds no patient", path, raw)
    return ids, f"regex {regex!r} over the path"


def _check_all(bad: np.ndarray, what: str, path: str, raw: np.ndarray | None = None) -> None:
    if bad.any():
        shown = f" (e.g. {', '.join(map(str, raw[bad][:SHOWN]))})" if raw is not None else ""
        raise ValueError(
            f"{path}: {what} in {int(bad.sum())} of {len(bad)} row(s){shown}; every row needs "
            "a patient: fix the table or the pattern, or pass neither (a random split)"
        )
