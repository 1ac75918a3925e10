"""The table source: images listed in a CSV, TSV or Parquet table with their labels, planned as
one `Conversion` on the driver before Ray starts (no pixel is read here).

    task, conversion = plan_table(get_task("chexpert"), DataSettings(
        task="chexpert", data_dir="CheXpert-v1.0-small"), image_size=224, seed=0)
    search.data.ingest.run(conversion, cache_file(conversion), skip_bad=False)  # decode

    python search/run.py --task table --data-dir DIR --labels labels.csv \\
        [--path-column Path] [--label-columns A,B,C] [--uncertain ignore|zeros|ones] \\
        [--blank zeros|ignore] [--patient-column ID | --patient-regex 'patient(\\d+)'] \\
        [--split-column split | --split-lists train.txt,test.txt] [--where 'COL=VALUE']

The table is read (`search.data.table_read`: separator sniffed, BOM dropped), filtered
(`--where`), its paths resolved against one listing of `--data-dir`
(`search.data.table_paths`), its labels read (`search.data.table_labels`: a class column,
one-hot columns, 0/1/-1/blank columns with the uncertain and blank policies, or a delimited
column), its patients found, and its rows split (`search.data.table_split`). Every mistake is a
ValueError `<what>; <what to do>` raised here, before Ray starts.

Presets (`PRESETS`, keyed by task name; the command line overrides each default):
- `chexpert`: train.csv (train and val, split by patient) and valid.csv as the test split when
  present; the 14 observations; frontal views only (`Frontal/Lateral=Frontal`); patient from
  `patient(\\d+)` in the path; blank = 0 (not mentioned); uncertain (-1) per observation after
  the CheXpert paper (Irvin et al. 2019, table 3, where U-Ones did best for Atelectasis and
  Edema and U-Ones was worst for Cardiomegaly and Consolidation): U-Ones for Atelectasis and
  Edema, U-Zeros for Cardiomegaly, Consolidation and Pleural Effusion (the paper's
  U-MultiClass / U-SelfTrained winners are not label policies), U-Ignore for the rest.
- `chestxray14`: Data_Entry_2017.csv, `Finding Labels` split on `|` ("No Finding" = none of
  the 14), `Patient ID`, and the official train_val_list.txt / test_list.txt when present (val
  carved out of train_val by patient), else a patient split.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath

import numpy as np
import pyarrow as pa

from search.data.conversion import Conversion
from search.data.listing import Tree, is_folder, list_tree
from search.data.settings import DataSettings
from search.data.table_labels import Labels, LabelSpec, guess_label_columns, parse_labels
from search.data.table_paths import (
    check_duplicates,
    find_path_column,
    patients_of,
    resolve_paths,
)
from search.data.table_read import apply_where, column, read_table
from search.data.table_split import (
    TEST_FRAC,
    VAL_FRAC,
    assign_splits,
    given_by_column,
    given_by_lists,
)
from search.experiment.storage import is_uri, read_text
from trainables.data import SPLITS
from trainables.kinds import get_kind
from trainables.tasks import Task

PRESETS: dict[str, dict] = {
    "chexpert": {
        "labels": "train.csv",
        "test_labels": "valid.csv",
        "path_column": "Path",
        "uncertain": {
            "Atelectasis": "ones",
            "Edema": "ones",
            "Cardiomegaly": "zeros",
            "Consolidation": "zeros",
            "Pleural Effusion": "zeros",
        },
        "blank": "zeros",
        "where": "Frontal/Lateral=Frontal",
        "patient_regex": r"patient(\d+)",
    },
    "chestxray14": {
        "labels": "Data_Entry_2017.csv",
        "path_column": "Image Index",
        "label_columns": "Finding Labels",
        "delimited": True,
        "patient_column": "Patient ID",
        "split_lists": "train_val_list.txt,test_list.txt",
    },
}
"""Per task: the defaults of the table flags (`DataSettings` field names), `test_labels` (a
second table whose rows are the test split, used when present), `delimited` (read the one
label column as `A|B`) and `uncertain` as {column: policy} (others: `ignore`)."""


@dataclasses.dataclass(frozen=True)
class TableOptions:
    """The table flags after the preset's defaults: what `plan_table` reads."""

    labels: str
    test_labels: str | None
    path_column: str | None
    label_columns: list[str] | None
    spec: LabelSpec
    patient_column: str | None
    patient_regex: str | None
    split_column: str | None
    split_lists: list[str] | None
    lists_optional: bool
    """The preset's lists: used when they exist (a patient split otherwise)."""
    where: str | None
    split: str


def table_options(task: Task, data: DataSettings) -> TableOptions:
    """The command line's table flags, each defaulting to the preset's (`PRESETS`)."""
    preset = PRESETS.get(task.name, {})

    def pick(name: str):
        given = getattr(data, name)
        return given if given is not None else preset.get(name)

    labels = pick("labels")
    if not labels:
        raise ValueError(
            f"--task {task.name} reads a label table; pass --labels FILE (CSV, TSV or Parquet, "
            "relative to --data-dir or absolute)"
        )
    n_fixed = len(task.classes)  # a preset's; one stored column per class: multi-label
    fixed_multilabel = n_fixed > 0 and task.kind_ops.label_width(n_fixed) == n_fixed > 1
    columns = _split_list(pick("label_columns"))
    if columns is None and fixed_multilabel and not preset.get("delimited"):
        columns = list(task.classes)
    uncertain = preset.get("uncertain", {}) if data.uncertain is None else {}
    spec = LabelSpec(
        classes=tuple(task.classes),
        uncertain=dict(uncertain),
        default_uncertain=data.uncertain or "ignore",
        blank=pick("blank") or "zeros",
        delimited=bool(preset.get("delimited")) and data.label_columns is None,
        multilabel=fixed_multilabel,
    )
    return TableOptions(
        labels=labels,
        test_labels=preset.get("test_labels") if data.labels is None else None,
        path_column=pick("path_column"),
        label_columns=columns,
        spec=spec,
        **_patient_flags(data, preset),
        split_column=data.split_column,
        split_lists=_split_list(pick("split_lists")),
        lists_optional=data.split_lists is None,
        where=pick("where"),
        split=data.split,
    )


def _patient_flags(data: DataSettings, preset: dict) -> dict:
    """`--patient-column` or `--patient-regex` when either is given, else the preset's."""
    if data.patient_column or data.patient_regex:
        return {"patient_column": data.patient_column, "patient_regex": data.patient_regex}
    return {k: preset.get(k) for k in ("patient_column", "patient_regex")}


def _split_list(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def _join(root: str, rel: str) -> str:
    """`rel` under `root` (a folder or URI), unless it is absolute (or a URI) itself."""
    if is_uri(rel) or os.path.isabs(rel):
        return rel
    return posixpath.join(root.rstrip("/"), rel) if is_uri(root) else os.path.join(root, rel)


def _exists(tree: Tree, rel: str) -> bool:
    return rel in tree.files or (not is_uri(rel) and os.path.isabs(rel) and os.path.isfile(rel))


@dataclasses.dataclass
class _Rows:
    """The filtered rows of the table(s), and what was read to get them."""

    table: pa.Table
    given_test: np.ndarray | None
    info: dict


def _read_rows(opts: TableOptions, tree: Tree) -> _Rows:
    """The label table (and the preset's test table when present), each filtered."""
    main, dropped = apply_where(read_table(_join(tree.root, opts.labels)), opts.where, opts.labels)
    info = {"labels_file": opts.labels, "rows": main.num_rows + dropped, "where": opts.where}
    info["dropped_by_where"] = dropped
    if not (opts.test_labels and _exists(tree, opts.test_labels)):
        return _Rows(main, None, info)
    raw_test = read_table(_join(tree.root, opts.test_labels))
    test, dropped_test = apply_where(raw_test, opts.where, opts.test_labels)
    info |= {"test_labels_file": opts.test_labels, "test_rows": raw_test.num_rows}
    info["dropped_by_where"] += dropped_test
    table = pa.concat_tables([main, test], promote_options="permissive")
    table = pa.table(
        [t.fill_null("") for t in table.columns], names=table.column_names
    )  # a column only one table has is blank in the other
    given = np.array(["train"] * main.num_rows + ["test"] * test.num_rows, dtype=object)
    return _Rows(table, given, info)


def _given_split(
    opts: TableOptions, rows: _Rows, tree: Tree, raw: np.ndarray, files: list[str]
) -> tuple[np.ndarray | None, dict]:
    """The split the data gives (column, lists, the preset's test table), or None."""
    table, where = rows.table, opts.labels
    if opts.split != "auto" and opts.split != "premade":
        return None, {}
    if opts.split_column:
        return given_by_column(table, opts.split_column, where), {"from": opts.split_column}
    lists = opts.split_lists
    if lists and (not opts.lists_optional or all(_exists(tree, p) for p in lists)):
        texts = []
        for p in lists:
            if not _exists(tree, p):
                raise ValueError(
                    f"split list {p} is not under {tree.root}; pass --split-lists with files "
                    "relative to --data-dir (TRAIN,TEST or TRAIN,VAL,TEST)"
                )
            texts.append(read_text(_join(tree.root, p)))
        given, info = given_by_lists(lists, texts, raw, files)
        return given, {"from": "lists"} | info
    if rows.given_test is not None:
        return rows.given_test, {"from": f"{where} (train) and {opts.test_labels} (test)"}
    if "split" in table.column_names:
        return given_by_column(table, "split", where), {"from": "split"}
    return None, {}


def plan_table(
    task: Task, data: DataSettings, image_size: int, seed: int
) -> tuple[Task, Conversion]:
    """(the task with its classes and kind from the table, the planned conversion)."""
    opts = table_options(task, data)
    if not data.data_dir or not is_folder(data.data_dir):
        raise ValueError(
            f"--data-dir {data.data_dir} is not a folder; pass the folder the table's image "
            "paths are relative to"
        )
    tree = list_tree(data.data_dir)
    rows = _read_rows(opts, tree)
    path_column = find_path_column(rows.table, opts.path_column, opts.labels)
    raw = column(rows.table, path_column)
    check_duplicates(raw, path_column, opts.labels)
    files = resolve_paths(raw, tree, opts.labels)
    labels = _labels(opts, rows.table, path_column)
    patients, patients_from = patients_of(
        rows.table, raw, opts.patient_column, opts.patient_regex, opts.labels
    )
    given, split_info = _given_split(opts, rows, tree, raw, files)
    strata = get_kind(labels.kind).fold_strata(labels.values)  # class ids; multilabel: None
    split, rule = assign_splits(len(files), given, strata, patients, opts.split, seed)
    info = rows.info | {"path_column": path_column, "split": rule, "split_given": split_info}
    info |= {"patients": patients_from, "dropped_not_in_lists": int((split == "").sum())}
    conversion = _conversion(tree, files, labels, patients, split, info, opts, seed)
    conversion = dataclasses.replace(conversion, image_size=image_size)
    task = dataclasses.replace(task, classes=tuple(labels.classes), kind=labels.kind)
    return task, conversion


def _labels(opts: TableOptions, table: pa.Table, path_column: str) -> Labels:
    columns = opts.label_columns
    if columns is None:
        skip = {path_column, opts.patient_column, opts.split_column, "split"}
        skip |= {opts.where.split("=")[0].rstrip("!").strip()} if opts.where else set()
        columns = guess_label_columns(table, skip, opts.labels)
    return parse_labels(table, columns, opts.spec, opts.labels)


def _conversion(tree, files, labels, patients, split, info, opts, seed) -> Conversion:
    """The Conversion: each split's files (sorted), labels, patients, and the facts."""
    parts, extra, counts, unknown = {}, {"classes": np.array(labels.classes)}, {}, {}
    for name in SPLITS:
        rows = np.flatnonzero(split == name)
        rows = rows[np.argsort([files[r] for r in rows], kind="stable")]
        values = labels.values[rows]
        parts[name] = ([files[r] for r in rows], values)
        extra[f"{name}_files"] = np.array([files[r] for r in rows], dtype=str)
        ids = patients[rows] if patients is not None else np.full(len(rows), "", dtype=object)
        extra[f"{name}_patients"] = np.array(ids, dtype=str)
        counts[name] = _counts(values, labels)
        if (labels.values == -1).any():
            n_unknown = (values == -1).sum(axis=0).tolist()
            unknown[name] = dict(zip(labels.classes, n_unknown, strict=True))
    info |= {"kind": labels.kind, "classes": labels.classes, "label_layout": labels.layout}
    info |= {"label_columns": labels.columns, "policies": labels.policies, "counts": counts}
    info |= {"unknown": unknown} if unknown else {}
    settings = _settings(opts, labels, info, seed)
    used = [f for name in SPLITS for f in parts[name][0]]
    return Conversion(
        src=tree.root,
        parts=parts,
        image_size=0,
        channels=None,
        settings=settings,
        name=posixpath.basename(tree.root.rstrip("/")) or "table",
        extra=extra,
        info=info,
        file_stats={f: tree.files[f] for f in used},
    )


def _counts(values: np.ndarray, labels: Labels) -> dict[str, int]:
    """Images per class (positives per label)."""
    per = get_kind(labels.kind).class_counts(values, len(labels.classes))
    return {c: int(n) for c, n in zip(labels.classes, per, strict=True)}


def _settings(opts: TableOptions, labels: Labels, info: dict, seed: int) -> dict:
    """Every option that changes the conversion's result (part of its fingerprint)."""
    return {
        "source": "table",
        "labels": opts.labels,
        "test_labels": info.get("test_labels_file"),
        "path_column": info["path_column"],
        "label_columns": labels.columns,
        "layout": labels.layout,
        "policies": labels.policies,
        "patients": info["patients"],
        "split": info["split"],
        "split_given": info["split_given"],
        "where": opts.where,
        "seed": seed,
        "val_frac": VAL_FRAC,
        "test_frac": TEST_FRAC,
    }
