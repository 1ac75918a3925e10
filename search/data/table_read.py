"""Read a label table (CSV, TSV or Parquet; a local file or a URI) with every cell as a string,
and filter its rows (`--where`).

    table = read_table("CheXpert-v1.0-small/train.csv")   # pyarrow.Table, string columns
    table, dropped = apply_where(table, "Frontal/Lateral=Frontal", "train.csv")
    column(table, "Path")                                  # numpy array of str ("" = blank)

CSV: the separator is sniffed from the header line (`,`, `;` or a tab, the most frequent of
them), a UTF-8 byte-order mark is dropped, and every column is read as text, so `1.0`, `-1` and
a blank cell keep their meaning for the label parser (`search.data.table_labels`). Parquet
columns are cast to text likewise (null = blank). Files ending in `.parquet` or `.pq` are
Parquet; anything else is read as delimited text. URIs (s3://...) go through
`search.experiment.storage.filesystem` (pyarrow.fs).
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from search.experiment.storage import filesystem, is_uri

SEPARATORS = (",", ";", "\t")
_BOM = b"\xef\xbb\xbf"
_WHERE = re.compile(r"^(?P<column>.+?)\s*(?P<op>!=|=)\s*(?P<value>.*)$")


def read_table(path: str) -> pa.Table:
    """The whole table at `path`, every column as (non-null) text; a ValueError names a file
    that is missing or cannot be parsed."""
    try:
        data = _read_bytes(path)
    except (FileNotFoundError, OSError) as err:
        raise ValueError(
            f"label table {path} cannot be read ({err}); pass --labels FILE (relative to "
            "--data-dir or absolute)"
        ) from err
    try:
        if path.lower().endswith((".parquet", ".pq")):
            return _as_text(pq.read_table(io.BytesIO(data)))
        return _read_delimited(data)
    except (pa.ArrowInvalid, csv.Error, UnicodeDecodeError) as err:
        raise ValueError(
            f"label table {path} is not a readable CSV, TSV or Parquet file ({err}); fix the "
            "file or pass another with --labels"
        ) from err


def _read_bytes(path: str) -> bytes:
    if is_uri(path):
        fs, inner = filesystem(path)
        with fs.open_input_stream(inner) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _read_delimited(data: bytes) -> pa.Table:
    """A delimited text table, the separator sniffed from the header, every column text."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    header = data.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
    if not header.strip():
        raise ValueError("the label table is empty (no header line); pass a table with a header")
    separator = max(SEPARATORS, key=header.count)
    names = next(csv.reader([header], delimiter=separator))
    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(delimiter=separator),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _as_text(table: pa.Table) -> pa.Table:
    columns = [pc.fill_null(table[n].cast(pa.string()), "") for n in table.column_names]
    return pa.table(columns, names=table.column_names)


def column(table: pa.Table, name: str) -> np.ndarray:
    """One column as a numpy array of stripped str ("" for a blank cell)."""
    return pc.utf8_trim_whitespace(table[name]).to_numpy(zero_copy_only=False).astype(object)


def require_columns(table: pa.Table, names: list[str], what: str, flag: str, path: str) -> None:
    """A ValueError naming the columns of `names` missing from `table`, and the ones it has."""
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(
            f"{path} has no {what} column {', '.join(map(repr, missing))} (its columns: "
            f"{', '.join(table.column_names)}); pass {flag}"
        )


def apply_where(table: pa.Table, where: str | None, path: str) -> tuple[pa.Table, int]:
    """(the rows that pass `COLUMN=VALUE` or `COLUMN!=VALUE`, how many were dropped); no
    filter when `where` is None. A ValueError for a malformed filter, an unknown column, or
    nothing left."""
    if not where:
        return table, 0
    match = _WHERE.match(where.strip())
    if match is None:
        raise ValueError(
            f"--where {where!r} is not COLUMN=VALUE or COLUMN!=VALUE; e.g. "
            "--where 'Frontal/Lateral=Frontal'"
        )
    name, op, value = match["column"].strip(), match["op"], match["value"].strip()
    require_columns(table, [name], "--where", "--where with one of them", path)
    same = pc.equal(pc.utf8_trim_whitespace(table[name]), value)
    kept = table.filter(same if op == "=" else pc.invert(same))
    if kept.num_rows == 0:
        values = sorted(set(column(table, name)))[:10]
        raise ValueError(
            f"--where {where!r} leaves no row of {path} ({table.num_rows} rows; column "
            f"{name!r} holds {values}); change the value or drop --where"
        )
    return kept, table.num_rows - kept.num_rows
