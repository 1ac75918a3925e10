"""The experiment's tables: a finished Ray Tune search -> `trials.parquet`, `history.parquet`.

    trials, history = collect(result_grid, metric="val_auc", mode="max", epochs=10,
                              experiment_path=path)
    export_checkpoints(trials, path)          # <exp>/<trial>/checkpoint/model.pt
    write_table(trials, join_path(path, TRIALS_FILE))
    trials = read_table(join_path(path, TRIALS_FILE))

`trials.parquet` has one row per trial (`TRIAL_COLUMNS`, `config/<setting>` per setting and
`best/<metric>` per `VAL_METRICS`, as the metrics were at the trial's best epoch; under
several objectives `pareto`, `mark_pareto`: on the front of this search's finished trials);
`history.parquet` one row per (trial, epoch) (`trial_id`, `HISTORY_COLUMNS`, `node_id`). The
column names, statuses and file names are defined here and imported by every reader. Rows are
built from plain per-epoch results (`trial_row`, `history_rows`), so anything that has the
results `train_loop` reports can write the same tables. A trial's best epoch is the earliest
epoch with its best value (`trainables.scores.best_index`), its status `trial_status` (the rule
the Optuna searcher tells Optuna by: `search.driver.searcher`). Both files go through `pyarrow.fs`
(`search.experiment.storage`), so S3/GCS storage works like a folder.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from search.experiment.layout import CHECKPOINT_DIR, HISTORY_FILE, TRIALS_FILE
from search.experiment.retention import export_weights, has_export
from search.experiment.storage import filesystem, join_path, same_place, write_file
from trainables.scores import best_index, is_finite

VAL_METRICS = (
    "val_loss",
    "val_acc",
    "val_f1",
    "val_auc",
    "val_ece",
    "val_dice",
    "val_iou",
    "val_pixel_acc",
)
"""The validation metrics an epoch can report (`trainables.train.train_loop`; which ones, the
task's kind says: `Kind.validation_figures`)."""
PARETO = "pareto"
"""trials.parquet's column under several objectives (`mark_pareto`)."""
FINISHED, STOPPED_EARLY, ERRORED = "finished", "stopped_early", "errored"
STATUSES = (FINISHED, STOPPED_EARLY, ERRORED)
"""A trial's `status`: ran every epoch; stopped by ASHA (or the time budget); raised."""
CONFIG_PREFIX = "config/"
BEST_PREFIX = "best/"
FOLD_COLUMNS = ("folds", "best_fold", "best_fold_epoch")
TRIAL_COLUMNS = (
    "trial_id",
    "status",
    "error",
    "best_epoch",
    "epochs_run",
    "wall_time_s",
    "checkpoint_path",
    "trial_path",
    "node_id",
    "nodes",
)
"""Columns of every trials row, beside config/*, the metric, best/* and (after the search)
`attr_focus` and `attr_focus_warning`."""
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    *VAL_METRICS,
    "lr_now",
    "frozen",
    "augmented",
    "images_per_s",
    "time_this_iter_s",
    "time_total_s",
    "timestamp",
    *(f"{m}_std" for m in VAL_METRICS),
    *FOLD_COLUMNS,
)
"""Numeric columns of history rows (missing values are null)."""


def collect(
    grid, metric: str, mode: str, epochs: int, experiment_path: str
) -> tuple[list[dict], list[dict]]:
    """Rows for `trials.parquet` and `history.parquet` from a `ResultGrid`.

    Trial paths are rebuilt from `experiment_path` (`result.path` drops the `s3://` scheme).
    """
    trials, history = [], []
    for result in grid:
        frame = result.metrics_dataframe
        rows = [] if frame is None else frame.to_dict("records")
        trial_id = (result.metrics or {}).get("trial_id") or os.path.basename(result.path)
        history.extend(history_rows(trial_id, rows))
        trial_path = join_path(experiment_path, os.path.basename(result.path.rstrip("/")))
        trials.append(
            trial_row(
                trial_id, rows, result.config, result.error, trial_path, metric, mode, epochs
            )
        )
    return trials, history


def history_rows(trial_id: str, rows: list[dict]) -> list[dict]:
    """One history row per reported result of a trial."""
    return [
        {
            "trial_id": trial_id,
            **{c: _num(r.get(c)) for c in HISTORY_COLUMNS},
            "node_id": r.get("node_id"),
        }
        for r in rows
    ]


def trial_row(
    trial_id: str,
    rows: list[dict],
    config: dict | None,
    error: BaseException | None,
    trial_path: str,
    metric: str,
    mode: str,
    epochs: int,
) -> dict:
    """A trial's row from its per-epoch results: the best epoch's metrics and checkpoint."""
    index = best_index([r.get(metric) for r in rows], mode)  # ties: the earliest epoch
    best = rows[index] if index is not None else {}
    ran = epochs_run(rows)
    status = trial_status(ran, epochs, error is not None)
    plain = {k: v for k, v in (config or {}).items() if _plain(v)}
    return {
        "trial_id": trial_id,
        "status": status,
        "error": _error_text(error),
        **{f"{CONFIG_PREFIX}{k}": v for k, v in sorted(plain.items())},
        metric: _num(best.get(metric)),
        **{f"{BEST_PREFIX}{k}": _num(best.get(k)) for k in VAL_METRICS},
        **_fold_columns(best),
        "best_epoch": int(best["epoch"]) if best else None,
        "epochs_run": ran,
        "wall_time_s": _num(rows[-1].get("time_total_s")) if rows else None,
        "checkpoint_path": _checkpoint_path(trial_path, best),
        "trial_path": trial_path,
        "node_id": rows[-1].get("node_id") if rows else None,
        "nodes": _nodes(rows),
    }


def epoch_of(result: dict) -> int:
    """The epoch a result reports (`epoch`, as `train_loop` counts; else Tune's
    `training_iteration`; 0 when it has neither)."""
    value = result.get("epoch")
    if not is_finite(value):
        value = result.get("training_iteration")
    return int(value) if is_finite(value) else 0


def epochs_run(rows: list[dict]) -> int:
    """The epochs a trial ran: the highest epoch among its results (0 without any)."""
    return max((epoch_of(r) for r in rows), default=0)


def trial_status(ran: int, planned: int, errored: bool) -> str:
    """A trial's `status`, the one rule (`trials.parquet`, the Optuna searcher): ERRORED when
    it raised, FINISHED when it ran its planned epochs, else STOPPED_EARLY (ASHA, the time
    budget)."""
    if errored:
        return ERRORED
    return FINISHED if ran >= planned else STOPPED_EARLY


def objective_values(row: dict, objectives: list[tuple[str, str]]) -> list[float] | None:
    """A trials row's value of each (metric, mode) objective, all at the trial's best epoch by
    the first (the epoch whose checkpoint it keeps: `best/<metric>`), as the Optuna searcher
    tells them (`search.driver.searcher`); None unless the trial FINISHED with every value
    finite (a trial stopped early or errored is not on Optuna's Pareto front)."""
    if row.get("status") != FINISHED:
        return None
    values = [
        row.get(m) if i == 0 else row.get(f"{BEST_PREFIX}{m}")
        for i, (m, _) in enumerate(objectives)
    ]
    return [float(v) for v in values] if all(is_finite(v) for v in values) else None


def pareto_flags(points: list[list[float] | None], modes: list[str]) -> list[bool]:
    """Whether each point lies on the Pareto front of the points that are not None: no other
    point is at least as good in every objective and better in one (`modes`: `max`/`min` per
    objective). Equal points are all on it, as in Optuna's `Study.best_trials`."""
    sign = [-1.0 if m == "max" else 1.0 for m in modes]
    losses = [None if p is None else [s * v for s, v in zip(sign, p, strict=True)] for p in points]
    known = [p for p in losses if p is not None]

    def dominated(p: list[float]) -> bool:
        return any(all(a <= b for a, b in zip(q, p, strict=True)) and q != p for q in known)

    return [p is not None and not dominated(p) for p in losses]


def mark_pareto(trials: list[dict], objectives: list[tuple[str, str]]) -> None:
    """Set each row's `pareto` column (several objectives only): whether the trial is on the
    Pareto front of the finished trials (`objective_values`, `pareto_flags`); one objective:
    nothing (no column)."""
    if len(objectives) < 2:
        return
    points = [objective_values(t, objectives) for t in trials]
    flags = pareto_flags(points, [mode for _, mode in objectives])
    for row, flag in zip(trials, flags, strict=True):
        row[PARETO] = flag


def _nodes(rows: list[dict]) -> str | None:
    """The Ray nodes a trial trained on, in order, comma-separated (several after a retry on
    another node)."""
    seen = [r["node_id"] for r in rows if isinstance(r.get("node_id"), str)]
    return ",".join(dict.fromkeys(seen)) or None


def config_of(row: dict) -> dict:
    """The `config/<setting>` columns of a trials row as {setting: value}."""
    return {k[len(CONFIG_PREFIX) :]: v for k, v in row.items() if k.startswith(CONFIG_PREFIX)}


def _fold_columns(best: dict) -> dict:
    """Under --folds: the spread over folds at the best epoch, and which fold's checkpoint."""
    if not best.get("folds"):
        return {}
    stds = {f"{BEST_PREFIX}{k}_std": _num(best.get(f"{k}_std")) for k in VAL_METRICS}
    ints = {k: int(best[k]) for k in FOLD_COLUMNS if k in best}
    return {**stds, **ints}


def _checkpoint_path(trial_path: str, best: dict) -> str | None:
    """The checkpoint written at the best epoch (Ray keeps it, with the latest).

    Train launcher: that row's `checkpoint_path` metric; function launcher: its
    `checkpoint_dir_name` inside the trial folder.
    """
    if isinstance(best.get("checkpoint_path"), str):
        return best["checkpoint_path"]
    if isinstance(best.get("checkpoint_dir_name"), str):
        return join_path(trial_path, best["checkpoint_dir_name"])
    return None


def _error_text(error) -> str | None:
    if error is None:
        return None
    text = str(error).strip()
    cause = getattr(error, "__cause__", None)
    if cause is not None:
        text = f"{type(cause).__name__}: {cause}"
    return text[-2000:]


def _plain(value) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _num(value) -> float | None:
    return float(value) if isinstance(value, int | float) and value is not None else None


def export_checkpoints(trials: list[dict], experiment_path: str) -> None:
    """Each trial's best weights in `<experiment>/<trial>/checkpoint/model.pt` (without the
    optimizer state: `search.experiment.retention`; a trial that ended during the search has
    it already); update rows."""
    for row in trials:
        dst = join_path(experiment_path, row["trial_id"], CHECKPOINT_DIR)
        src = row.get("checkpoint_path")
        if has_export(join_path(experiment_path, row["trial_id"])):
            row["checkpoint_path"] = dst
        elif src and _exists(src):
            if not same_place(src, dst):
                export_weights(src, dst)
            row["checkpoint_path"] = dst
        else:
            row["checkpoint_path"] = None


def _exists(path: str) -> bool:
    fs, fs_path = filesystem(path)
    return fs.get_file_info(fs_path).type != pafs.FileType.NotFound


def write_table(rows: list[dict], path: str) -> None:
    """Write rows as Parquet (a local path atomically, a URI through `pyarrow.fs`)."""
    table = (
        pa.Table.from_pylist(rows) if rows else pa.table({"trial_id": pa.array([], pa.string())})
    )
    write_file(path, lambda f: pq.write_table(table, f))


def read_table(path: str) -> list[dict]:
    fs, fs_path = filesystem(path)
    return pq.read_table(fs_path, filesystem=fs).to_pylist()


def write_tables(experiment_path: str, trials: list[dict], history: list[dict]) -> None:
    """`trials.parquet` and `history.parquet` of an experiment."""
    write_table(trials, join_path(experiment_path, TRIALS_FILE))
    write_table(history, join_path(experiment_path, HISTORY_FILE))
