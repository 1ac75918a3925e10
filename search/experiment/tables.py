"""Turn a finished Ray Tune search into the experiment folder's tables and checkpoints.

    trials, history = collect(result_grid, metric="val_auc", mode="max", epochs=10)
    export_checkpoints(trials, experiment_path)   # <exp>/<trial>/checkpoint/model.pt
    write_table(trials, f"{experiment_path}/trials.parquet")

`trials.parquet` has one row per trial (config, best metrics, epoch of best, epochs run,
status, error, wall time, checkpoint path); `history.parquet` one row per (trial, epoch).
Both are written with pyarrow through `pyarrow.fs`, so S3/GCS storage works like a folder.
"""

from __future__ import annotations

import math
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

HISTORY_COLUMNS = (
    "epoch", "train_loss", "val_loss", "val_acc", "val_f1", "val_auc", "lr_now", "frozen",
    "augmented", "images_per_s", "time_this_iter_s", "time_total_s", "timestamp",
    "val_loss_std", "val_acc_std", "val_f1_std", "val_auc_std", "folds", "best_fold",
    "best_fold_epoch",
)  # fmt: skip


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
        for row in rows:
            numbers = {c: _num(row.get(c)) for c in HISTORY_COLUMNS}
            history.append({"trial_id": trial_id, **numbers, "node_id": row.get("node_id")})
        trial_path = join_path(experiment_path, os.path.basename(result.path.rstrip("/")))
        trials.append(_trial_row(result, trial_id, trial_path, rows, metric, mode, epochs))
    return trials, history


def _trial_row(result, trial_id, trial_path, rows, metric: str, mode: str, epochs: int):
    scored = [r for r in rows if _finite(r.get(metric))]
    sign = 1 if mode == "max" else -1
    # Ties go to the later epoch, as in Ray's checkpoint manager (which keeps that one).
    best = max(scored, key=lambda r: (sign * r[metric], r.get("epoch") or 0)) if scored else {}
    epochs_run = int(max((r.get("epoch") or 0) for r in rows)) if rows else 0
    if result.error is not None:
        status = "errored"
    else:
        status = "finished" if epochs_run >= epochs else "stopped_early"
    config = {k: v for k, v in (result.config or {}).items() if _plain(v)}
    return {
        "trial_id": trial_id,
        "status": status,
        "error": _error_text(result.error),
        **{f"config/{k}": v for k, v in sorted(config.items())},
        metric: _num(best.get(metric)),
        **{f"best/{k}": _num(best.get(k)) for k in ("val_loss", "val_acc", "val_f1", "val_auc")},
        **_fold_columns(best),
        "best_epoch": int(best["epoch"]) if best else None,
        "epochs_run": epochs_run,
        "wall_time_s": _num(rows[-1].get("time_total_s")) if rows else None,
        "checkpoint_path": _checkpoint_path(trial_path, best),
        "trial_path": trial_path,
    }


def _fold_columns(best: dict) -> dict:
    """Under --folds: the spread over folds at the best epoch, and which fold's checkpoint."""
    if not best.get("folds"):
        return {}
    metrics = ("val_loss", "val_acc", "val_f1", "val_auc")
    stds = {f"best/{k}_std": _num(best.get(f"{k}_std")) for k in metrics}
    ints = {k: int(best[k]) for k in ("folds", "best_fold", "best_fold_epoch") if k in best}
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


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _num(value) -> float | None:
    return float(value) if isinstance(value, int | float) and value is not None else None


def export_checkpoints(trials: list[dict], experiment_path: str) -> None:
    """Copy each trial's best checkpoint to `<experiment>/<trial>/checkpoint/`; update rows."""
    for row in trials:
        src = row.get("checkpoint_path")
        if not src:
            continue
        dst = join_path(experiment_path, row["trial_id"], "checkpoint")
        if _norm(src) != _norm(dst):
            copy_dir(src, dst)
        row["checkpoint_path"] = dst


def _norm(path: str) -> str:
    return path.rstrip("/")


def join_path(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if "://" in base else os.path.join(base, *parts)


def copy_dir(src: str, dst: str) -> None:
    """Copy a folder between local paths and/or cloud URIs, file by file.

    (`pyarrow.fs.copy_files` takes an S3 prefix for a single object.)
    """
    src_fs, src_path = pafs.FileSystem.from_uri(_uri(src))
    dst_fs, dst_path = pafs.FileSystem.from_uri(_uri(dst))
    dst_fs.create_dir(dst_path, recursive=True)
    files = src_fs.get_file_info(pafs.FileSelector(src_path, recursive=True))
    for info in files:
        if info.type != pafs.FileType.File:
            continue
        target = dst_path + info.path[len(src_path.rstrip("/")) :]
        dst_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with src_fs.open_input_stream(info.path) as f, dst_fs.open_output_stream(target) as g:
            g.write(f.read())


def _uri(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def write_table(rows: list[dict], path: str) -> None:
    """Write rows as Parquet; locally via a temp file and an atomic rename."""
    table = (
        pa.Table.from_pylist(rows) if rows else pa.table({"trial_id": pa.array([], pa.string())})
    )
    fs, fs_path = pafs.FileSystem.from_uri(_uri(path))
    parent = fs_path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{fs_path}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, fs_path)
    else:
        pq.write_table(table, fs_path, filesystem=fs)


def read_table(path: str) -> list[dict]:
    fs, fs_path = pafs.FileSystem.from_uri(_uri(path))
    return pq.read_table(fs_path, filesystem=fs).to_pylist()
