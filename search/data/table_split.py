"""Which split each row of a label table goes to: given (a split column, list files, a
preset's test table) or drawn (whole patients, else a seeded stratified random split).

    given = given_by_column(table, "split", "labels.csv")           # train/val/test per row
    given = given_by_lists(["train_val_list.txt", "test_list.txt"], texts, raw, files)
    split, rule = assign_splits(len(rows), given, strata, patients, "auto", seed=0)

Rules (`--split`): `premade` uses what is given, carving a missing val (or test) out of train
by whole patients when patients are known (else stratified by class); `patient` pools every row
and holds out whole patients (`StratifiedGroupKFold` for class labels, `GroupShuffleSplit` for
multi-label); `cell` is a seeded random split, stratified by class where there is one; `auto`
is premade when a split is given, else patient when every row has a patient, else cell. A
patient found in two given splits is an error (the split would leak).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from search.data.table_read import column, require_columns

VAL_FRAC = 0.15
TEST_FRAC = 0.15
SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
SHOWN = 5


def given_by_column(table: pa.Table, name: str, path: str) -> np.ndarray:
    """train / val / test per row from column `name` (train, val/valid/validation, test)."""
    require_columns(table, [name], "split", "--split-column NAME", path)
    values = column(table, name)
    unknown = sorted({v for v in values if v.lower() not in SPLIT_WORDS})
    if unknown:
        raise ValueError(
            f"{path}: split column {name!r} holds {unknown[:SHOWN]}, not train/val/test; fix "
            "the column, or pass --split patient (or cell) to split afresh"
        )
    return np.array([SPLIT_WORDS[v.lower()] for v in values], dtype=object)


def given_by_lists(
    lists: list[str], texts: list[str], raw: np.ndarray, files: list[str]
) -> tuple[np.ndarray, dict]:
    """(train / val / test per row, "" for a row in no list; what was matched) from list files
    (`texts`: their contents, one image name per line): TRAIN,TEST or TRAIN,VAL,TEST. A
    listed name matches a row's path as listed, as resolved, or its file name."""
    if len(lists) not in (2, 3):
        raise ValueError(
            f"--split-lists takes 2 or 3 files (TRAIN,TEST or TRAIN,VAL,TEST), got {lists}"
        )
    names = ["train", "test"] if len(lists) == 2 else ["train", "val", "test"]
    row_of = _row_keys(raw, files)
    given = np.full(len(raw), "", dtype=object)
    unmatched = 0
    for split, list_path, text in zip(names, lists, texts, strict=True):
        for line in text.splitlines():
            if not line.strip():
                continue
            row = row_of.get(line.strip().replace("\\", "/"))
            if row is None:
                unmatched += 1
                continue
            if given[row] and given[row] != split:
                raise ValueError(
                    f"{raw[row]} is in two split lists ({given[row]} and {split}: {list_path}); "
                    "each image belongs to one split: fix the lists"
                )
            given[row] = split
    return given, {"lists": lists, "listed_not_in_table": unmatched}


def _row_keys(raw: np.ndarray, files: list[str]) -> dict[str, int]:
    keys: dict[str, int] = {}
    seen_names: dict[str, int] = {}
    for i, (value, rel) in enumerate(zip(raw, files, strict=True)):
        keys[str(value)] = keys[rel] = i
        name = rel.rsplit("/", 1)[-1]
        seen_names[name] = -1 if name in seen_names else i
    for name, row in seen_names.items():
        if row >= 0:
            keys.setdefault(name, row)
    return keys


def assign_splits(
    n: int,
    given: np.ndarray | None,
    strata: np.ndarray | None,
    patients: np.ndarray | None,
    rule: str,
    seed: int,
) -> tuple[np.ndarray, str]:
    """(train / val / test / "" per row of `n`, the rule used); rows given "" stay out."""
    rule = _resolve(rule, given is not None, patients is not None)
    if rule == "premade":
        split = np.array(given, dtype=object)
        if patients is not None:
            check_patients_apart(split, patients)
        for name, frac in (("test", TEST_FRAC), ("val", VAL_FRAC)):
            if not (split == name).any():
                rows = np.flatnonzero(split == "train")
                _, held = holdout(rows, frac, seed, strata, patients)
                split[held] = name
        return split, rule
    split = np.full(n, "train", dtype=object)
    groups = patients if rule == "patient" else None
    rest, test = holdout(np.arange(n), TEST_FRAC, seed, strata, groups)
    _, val = holdout(rest, VAL_FRAC / (1 - TEST_FRAC), seed, strata, groups)
    split[test], split[val] = "test", "val"
    return split, rule


def _resolve(rule: str, given: bool, patients: bool) -> str:
    if rule == "premade" and not given:
        raise ValueError(
            "--split premade needs a given split: a `split` column (--split-column NAME) or "
            "--split-lists TRAIN,TEST; or pass --split patient or cell"
        )
    if rule == "patient" and not patients:
        raise ValueError(
            "--split patient needs the patients: pass --patient-column NAME or "
            "--patient-regex 'REGEX(WITH GROUP)'; or --split cell (a random split)"
        )
    if rule != "auto":
        return rule
    return "premade" if given else "patient" if patients else "cell"


def check_patients_apart(split: np.ndarray, patients: np.ndarray) -> None:
    """A ValueError when one patient has images in two of the given splits."""
    sets = {s: set(patients[split == s]) for s in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(sets[a] & sets[b])
        if both:
            raise ValueError(
                f"{len(both)} patient(s) have images in both the given {a} and {b} splits "
                f"(e.g. {', '.join(map(str, both[:SHOWN]))}), so {b} would not be unseen "
                "data; fix the split column or lists, or pass --split patient to split afresh"
            )


def holdout(
    rows: np.ndarray, frac: float, seed: int, strata: np.ndarray | None, groups: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, about `frac` of `rows` held out): whole groups when `groups`, stratified
    by `strata` where given."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

    rows = np.asarray(rows)
    strata = None if strata is None else np.asarray(strata)[rows]
    if groups is not None:
        group = np.asarray(groups)[rows]
        n_groups = len(set(group))
        if n_groups < 3:
            raise ValueError(
                f"a patient split needs at least 3 patients; found {n_groups}: pass --split cell"
            )
        if strata is None:
            splitter = GroupShuffleSplit(n_splits=1, test_size=frac, random_state=seed)
            keep, held = next(splitter.split(rows, groups=group))
        else:
            folds = StratifiedGroupKFold(
                max(2, min(round(1 / frac), n_groups)), shuffle=True, random_state=seed
            )
            splits = list(folds.split(rows, strata, group))
            keep, held = max(splits, key=lambda s: len(set(strata[s[1]])))
        return rows[keep], rows[held]
    try:
        return tuple(train_test_split(rows, test_size=frac, stratify=strata, random_state=seed))
    except ValueError as err:
        raise ValueError(
            f"cannot hold out {frac:.0%} of {len(rows)} images stratified by class ({err}); add "
            "images to the smallest class, or give the split (a split column or --split-lists)"
        ) from err
