"""Labels out of a table's columns: one class column, one-hot columns, several 0/1/-1/blank
columns (multi-label) or one delimited column (`A|B`, a "no finding" value meaning none).

    spec = LabelSpec(uncertain={"Edema": "ones"}, default_uncertain="ignore", blank="zeros")
    labels = parse_labels(table, ["Cardiomegaly", "Edema"], spec, "train.csv")
    labels.kind, labels.classes, labels.values    # multilabel, [...], (N, 2) int8 1/0/-1

Layouts, by the columns given (`--label-columns`) or guessed (`guess_label_columns`):
- one column: a class column (binary with 2 values, else multiclass; classes sorted, numbers in
  numeric order) or, when its values hold the delimiter (or the preset says so), a delimited
  multi-label column whose tokens are the classes.
- several columns of 1, 0, -1 or blank: multi-label, the column names are the classes, -1 is an
  uncertain label (the CheXpert convention) and a blank cell an unmentioned one. `uncertain`
  (per column, CheXpert's U-Ignore / U-Zeros / U-Ones) makes -1 unknown (-1, masked out of the
  loss and the metrics), 0 or 1; `blank` makes a blank 0 or unknown. Columns where every row
  holds exactly one 1 (no -1, no blank) are one-hot: multi-class (ISIC style).
Stored values: (N, 1) int64 class ids, or (N, C) int8 1/0/-1 for multi-label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from search.data.table_read import column, require_columns
from trainables.kinds import kind_for_classes

POLICY_VALUE = {"ignore": -1, "zeros": 0, "ones": 1}
"""What an uncertain (-1) or blank cell becomes under each policy (-1: unknown, masked)."""
CLASS_COLUMN_NAMES = ("finding labels", "label", "labels", "class", "diagnosis", "target", "dx")
"""Column names taken for a class (or delimited) column when no 0/1 columns are found."""


@dataclass(frozen=True)
class LabelSpec:
    """How to read the label cells (the preset's values, or the command line's)."""

    classes: tuple[str, ...] = ()
    """Fixed classes (a preset's): a class or token outside them is an error."""
    uncertain: dict[str, str] = field(default_factory=dict)
    """Per-column policy for -1 (`ignore`, `zeros`, `ones`); others take `default_uncertain`."""
    default_uncertain: str = "ignore"
    blank: str = "zeros"
    """`zeros` (not mentioned = negative) or `ignore` (unknown)."""
    delimiter: str = "|"
    none_value: str | None = "No Finding"
    """The value of a delimited column that means no label at all."""
    delimited: bool = False
    """Read a single column as delimited even when no row holds the delimiter."""
    multilabel: bool = False
    """Keep several 0/1 columns multi-label even when they look one-hot (a multi-label task)."""


@dataclass(frozen=True)
class Labels:
    """The labels of every row, and how they were read."""

    values: np.ndarray
    classes: list[str]
    kind: str
    layout: str
    """`class column`, `one-hot columns`, `label columns` or `delimited column`."""
    columns: list[str]
    policies: dict


def guess_label_columns(table: pa.Table, skip: set[str], path: str) -> list[str]:
    """Every column of 1/0/-1/blank cells (two or more), else a column named like a class
    column, else the one 1/0/-1 column; a ValueError when none fits."""
    names = [n for n in table.column_names if n not in skip]
    ternary = [n for n in names if _is_ternary(column(table, n))]
    if len(ternary) >= 2:
        return ternary
    by_name = [n for n in names if n.strip().lower() in CLASS_COLUMN_NAMES]
    if by_name or ternary:
        return (by_name or ternary)[:1]
    raise ValueError(
        f"cannot tell which columns of {path} hold the labels (columns: "
        f"{', '.join(table.column_names)}); pass --label-columns (one class column, several "
        "0/1 columns, or one delimited column)"
    )


def _is_ternary(values: np.ndarray) -> bool:
    filled = [v for v in set(values) if v != ""]
    return bool(filled) and all(_number(v) in (-1, 0, 1) for v in filled)


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def parse_labels(table: pa.Table, columns: list[str], spec: LabelSpec, path: str) -> Labels:
    """The labels of every row of `table` from `columns` (see the module docstring)."""
    require_columns(table, columns, "label", "--label-columns with the right names", path)
    if len(columns) > 1:
        return _label_columns(table, columns, spec, path)
    values = column(table, columns[0])
    if spec.delimited or any(spec.delimiter in v for v in values):
        return _delimited(values, columns[0], spec, path)
    return _class_column(values, columns[0], spec, path)


def _label_columns(table: pa.Table, columns: list[str], spec: LabelSpec, path: str) -> Labels:
    raw = np.stack([_ternary_column(table, c, path) for c in columns], axis=1)  # 9 = blank
    _check_two_values(raw, columns, path)
    if not spec.multilabel and np.isin(raw, (0, 1)).all() and (raw.sum(axis=1) == 1).all():
        ids = raw.argmax(axis=1).astype(np.int64)[:, None]
        kind = kind_for_classes(len(columns))
        return Labels(ids, list(columns), kind, "one-hot columns", list(columns), {})
    uncertain = {c: spec.uncertain.get(c, spec.default_uncertain) for c in columns}
    values = raw.astype(np.int8)
    for j, name in enumerate(columns):
        values[raw[:, j] == -1, j] = POLICY_VALUE[uncertain[name]]
    values[raw == 9] = POLICY_VALUE[spec.blank]
    policies = {"uncertain": uncertain, "blank": spec.blank}
    return Labels(values, list(columns), "multilabel", "label columns", list(columns), policies)


def _ternary_column(table: pa.Table, name: str, path: str) -> np.ndarray:
    """One label column as int8: 1, 0, -1, or 9 for a blank cell; a ValueError names any
    other value."""
    text = pc.utf8_trim_whitespace(table[name].combine_chunks())
    encoded = pc.dictionary_encode(text)  # a few distinct cells over many rows
    uniques = encoded.dictionary.to_pylist()
    inverse = encoded.indices.to_numpy(zero_copy_only=False)
    mapped = np.array([9 if u == "" else _number(u) for u in uniques], dtype=object)
    bad = [u for u, m in zip(uniques, mapped, strict=True) if m not in (-1, 0, 1, 9)]
    if bad:
        raise ValueError(
            f"{path}: label column {name!r} holds {len(bad)} unknown value(s) "
            f"({', '.join(map(repr, bad[:5]))}); a label column holds 1, 0, -1 (uncertain) or "
            "a blank cell: fix the table, or leave the column out of --label-columns"
        )
    return mapped.astype(np.int8)[inverse.reshape(-1)]


def _check_two_values(raw: np.ndarray, columns: list[str], path: str) -> None:
    """A ValueError naming the label columns whose cells all hold one value (a label that is
    never positive, or never negative, in the table). A column left with one class only by
    the policies (CheXpert's No Finding, 1 or blank, under `--blank ignore`) is kept: its
    AUROC is undefined and reported as such."""
    names = {1: "1", 0: "0", -1: "-1", 9: "blank"}
    flat = [
        f"{c!r} (all {names[int(raw[0, j])]})"
        for j, c in enumerate(columns)
        if (raw[:, j] == raw[0, j]).all()
    ]
    if flat:
        raise ValueError(
            f"{path}: label column(s) {', '.join(flat)} hold one class only; leave them out "
            "of --label-columns, or check --where"
        )


def _class_column(values: np.ndarray, name: str, spec: LabelSpec, path: str) -> Labels:
    _check_filled(values, name, path)
    values = np.array([_whole(v) for v in values], dtype=object)  # "1.0" -> "1"
    found = sorted(set(values), key=_class_order)
    classes = list(spec.classes) or found
    _check_known(found, classes, name, path)
    if len(found) < 2:
        raise ValueError(
            f"{path}: label column {name!r} has one class only ({found[0]!r}); a classifier "
            "needs two: check --where and --label-columns"
        )
    index = {c: i for i, c in enumerate(classes)}
    ids = np.array([index[v] for v in values], np.int64)[:, None]
    kind = kind_for_classes(len(classes))
    return Labels(ids, classes, kind, "class column", [name], {})


def _whole(value: str) -> str:
    number = _number(value)
    return str(int(number)) if number is not None and number.is_integer() else value


def _class_order(value: str) -> tuple:
    number = _number(value)
    return (0, number, value) if number is not None else (1, 0.0, value)


def _delimited(values: np.ndarray, name: str, spec: LabelSpec, path: str) -> Labels:
    _check_filled(values, name, path)
    tokens = [
        [] if v == spec.none_value else [t.strip() for t in v.split(spec.delimiter) if t.strip()]
        for v in values
    ]
    found = sorted({t for row in tokens for t in row})
    classes = list(spec.classes) or found
    _check_known(found, classes, name, path)
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(values), len(classes)), np.int8)
    for i, row in enumerate(tokens):
        out[i, [index[t] for t in row]] = 1
    policies = {"none_value": spec.none_value, "delimiter": spec.delimiter}
    return Labels(out, classes, "multilabel", "delimited column", [name], policies)


def _check_filled(values: np.ndarray, name: str, path: str) -> None:
    blank = int((values == "").sum())
    if blank:
        raise ValueError(
            f"{path}: {blank} row(s) have no label in column {name!r}; fill them, or leave "
            f"them out with --where '{name}!='"
        )


def _check_known(found: list[str], classes: list[str], name: str, path: str) -> None:
    unknown = [v for v in found if v not in classes]
    if unknown:
        raise ValueError(
            f"{path}: label column {name!r} holds {len(unknown)} unknown value(s) "
            f"({', '.join(map(repr, unknown[:5]))}); the classes are {classes}: fix the table "
            "or use --task table, which takes the classes from the table"
        )
