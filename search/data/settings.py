"""What the command line says about the data: `DataSettings`, one group of the search's
`search.driver.settings.Settings` (the data package reads it; the driver builds it).

    data = DataSettings(task="table", data_dir="CheXpert-v1.0-small", labels="train.csv")
    data.uncertain, data.label_columns

Field names are the flags' names with `_` for `-`; defaults are the flags' defaults. The table
fields (`labels` ... `split_lists`) are read by the table source (`search.data.table`); None
means "the preset's, else guessed from the table".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
"""CheXpert's U-Ignore, U-Zeros, U-Ones: what an uncertain (-1) label becomes."""
BLANK_POLICIES = ("zeros", "ignore")
"""What a blank label cell becomes: negative (CheXpert's "not mentioned") or unknown."""


def _env(name: str, default: str | None = None):
    return field(default_factory=lambda: os.environ.get(name, default))


def _env_float(name: str):
    return field(default_factory=lambda: float(os.environ[name]) if os.environ.get(name) else None)


@dataclass(frozen=True)
class DataSettings:
    """Task and data: `--task`, `--space`, `--data-dir`, `--split`, `--folds`, `--weights`,
    `--image-size`, `--data-path`, `--resident-budget-mb`, the table source's flags
    (`--labels`, `--path-column`, `--label-columns`, `--uncertain`, `--blank`,
    `--patient-column`, `--patient-regex`, `--split-column`, `--split-lists`, `--where`),
    `--skip-bad` and `--cache-dir`."""

    task: str | None = None
    space: str | None = None
    data_dir: str | None = None
    split: str = "auto"
    folds: int = 0
    weights: str | None = None
    image_size: int | None = None
    data_path: str = "auto"
    resident_budget_mb: float | None = _env_float("MEDSWEEP_RESIDENT_BUDGET_MB")
    labels: str | None = None
    """The label table (CSV, TSV or Parquet), relative to `data_dir` or absolute."""
    path_column: str | None = None
    label_columns: str | None = None
    """Comma-separated: the 0/1 (or 1/0/-1/blank) columns, one class column, or one delimited
    column (`Finding Labels`)."""
    uncertain: str | None = None
    """`ignore` | `zeros` | `ones` (None: the preset's, else `ignore`)."""
    blank: str | None = None
    """`zeros` | `ignore` (None: the preset's, else `zeros`)."""
    patient_column: str | None = None
    patient_regex: str | None = None
    split_column: str | None = None
    split_lists: str | None = None
    """Comma-separated list files (one image name per line): TRAIN,TEST or TRAIN,VAL,TEST."""
    where: str | None = None
    """A row filter, `COLUMN=VALUE` or `COLUMN!=VALUE` (`Frontal/Lateral=Frontal`)."""
    skip_bad: bool = False
    """Go on past unreadable images (recorded in search.json) instead of refusing the data."""
    cache_dir: str | None = _env("MEDSWEEP_CACHE_DIR")
    """Where converted data is kept (None: `$XDG_CACHE_HOME/medsweep/data`), never inside the
    data folder."""
