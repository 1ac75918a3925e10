"""The rows of a searcher comparison (compare.parquet): one per (searcher, repeat, trial).

    rows = summarise({("optuna", 0): "runs/compare-blood/compare-blood-optuna-r0"},
                     "val_auc", "max")
    rows += sweep_rows(wandb.Api().sweep(path).runs, "val_auc", "max", limit=30)

A search folder is read as the report reads it (`search.reporting.folder`). Trials are ordered
by when they finished, the moment their searcher learnt the result; each row carries the best
so far (`trainables.scores`), the wall time since the search started, the resources the trial
held, and the test figure of the trial if it was evaluated on the test split.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime

from search.experiment.layout import HISTORY_FILE, TRIALS_FILE
from search.experiment.storage import join_path
from search.experiment.tables import ERRORED, FINISHED, STOPPED_EARLY
from search.reporting.folder import read_manifest, read_rows, read_tests
from trainables.scores import better, is_finite

TEST_FIGURE = {
    "val_auc": "auroc",
    "val_acc": "accuracy",
    "val_f1": "macro_f1",
    "val_loss": "auroc",
    "val_ece": "auroc",
}
"""The test-split figure (`trainables.evaluation`) shown for a validation metric: the matching
one, or AUROC for a loss or calibration error (the test evaluation reports neither)."""
SWEEP_STATUS = {
    "finished": FINISHED,
    "killed": STOPPED_EARLY,
    "crashed": ERRORED,
    "failed": ERRORED,
}
"""W&B run states that are over, as trials.parquet's statuses."""
SWEEP_SEARCHER = "wandb-sweep"


def summarise(run_dirs: Mapping[tuple[str, int], str], metric: str, mode: str) -> list[dict]:
    """Rows for compare.parquet from search folders keyed by (searcher, repeat).

    A folder without `trials.parquet` (the search failed before writing it) gives no rows.
    """
    rows = []
    for (searcher, repeat), folder in run_dirs.items():
        if not os.path.isfile(join_path(folder, TRIALS_FILE)):
            print(f"{folder}: no {TRIALS_FILE}; {searcher} repeat {repeat} is left out")
            continue
        trials, history = read_rows(folder, TRIALS_FILE), read_rows(folder, HISTORY_FILE)
        info, tested = read_manifest(folder), read_tests(folder) or {}
        rows += run_rows(searcher, repeat, trials, history, info, tested, metric, mode)
    return rows


def run_rows(searcher, repeat, trials, history, info, tested, metric, mode) -> list[dict]:
    """Rows of one search, in the order its trials finished, with the best so far."""
    ends = trial_ends(history)
    started = info.get("started_at") or _first_start(history)
    cpus, gpus = trial_resources(info)
    test_name = TEST_FIGURE.get(metric)
    # by finish; trials without a reported result last
    order = sorted(
        trials,
        key=lambda t: (t["trial_id"] not in ends, ends.get(t["trial_id"], 0), t["trial_id"]),
    )
    rows, best = [], None
    for i, t in enumerate(order, start=1):
        value = _finite(t.get(metric))
        best = better(best, value, mode)
        end = ends.get(t["trial_id"])
        trial_wall = _finite(t.get("wall_time_s"))
        test = ((tested.get("trials") or {}).get(t["trial_id"]) or {}).get(test_name) or {}
        rows.append(
            {
                "searcher": searcher,
                "repeat": int(repeat),
                "trial_id": t["trial_id"],
                "trial_order": i,
                "status": t.get("status"),
                "metric_name": metric,
                "metric": value,
                "best_so_far": best,
                "wall_time_s": None if end is None or started is None else max(end - started, 0.0),
                "trial_wall_s": trial_wall,
                "epochs_run": t.get("epochs_run"),
                "cpus": cpus,
                "gpus": gpus,
                "cpu_s": _times(trial_wall, cpus),
                "gpu_s": _times(trial_wall, gpus),
                "test_metric_name": test_name,
                "test_metric": _finite(test.get("value")),
            }
        )
    return rows


def trial_ends(history: Iterable[dict]) -> dict[str, float]:
    """{trial id: time (s since the epoch) of its last reported epoch}."""
    ends: dict[str, float] = {}
    for h in history:
        stamp = _finite(h.get("timestamp"))
        if stamp is not None:
            ends[h["trial_id"]] = max(ends.get(h["trial_id"], stamp), stamp)
    return ends


def _first_start(history: list[dict]) -> float | None:
    """Earliest trial start (last report minus the trial's running time) when no search.json."""
    starts = [
        h["timestamp"] - (h.get("time_total_s") or 0.0)
        for h in history
        if is_finite(h.get("timestamp"))
    ]
    return min(starts) if starts else None


def trial_resources(info: dict) -> tuple[float | None, float | None]:
    """(CPUs, GPUs) each trial held: search.json's `resources_per_trial`, else its argv."""
    held = info.get("resources_per_trial")
    if held:
        return float(held.get("cpu", 0.0)), float(held.get("gpu", 0.0))
    if not info.get("argv"):
        return None, None
    argv = info["argv"]
    cpus = float(flag_value(argv, "--cpus-per-worker", 1.0))
    workers = int(flag_value(argv, "--workers-per-trial", 1))
    return cpus * workers, float(flag_value(argv, "--gpus-per-trial", 0.0))


def flag_value(argv: list[str], flag: str, default):
    """The last value `argv` gives `flag` (`--flag v` or `--flag=v`), else `default`."""
    value = default
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def sweep_rows(runs: Iterable, metric: str, mode: str, limit: int | None = None) -> list[dict]:
    """Rows for the runs of a W&B sweep (objects like `wandb.Api().sweep(path).runs`' items).

    A run's value is its summary's metric (`search/wandb_trial.py` leaves the best epoch's
    there); its end is `created_at` + `_runtime`. Runs still going are left out, and only the
    first `limit` runs created count (the other searchers' budget).
    """
    trials, history = [], []
    ended = [run for run in runs if run.state in SWEEP_STATUS]
    for run in sorted(ended, key=lambda run: run.created_at)[:limit]:
        summary = dict(run.summary_metrics)
        runtime = _finite(summary.get("_runtime")) or 0.0
        start = datetime.fromisoformat(run.created_at.replace("Z", "+00:00")).timestamp()
        trials.append(
            {
                "trial_id": run.id,
                "status": SWEEP_STATUS[run.state],
                metric: summary.get(metric),
                "wall_time_s": runtime,
                "epochs_run": summary.get("epoch"),
            }
        )
        history.append({"trial_id": run.id, "timestamp": start + runtime, "time_total_s": runtime})
    return run_rows(SWEEP_SEARCHER, 0, trials, history, {}, {}, metric, mode)


def _finite(value) -> float | None:
    return float(value) if is_finite(value) else None


def _times(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a * b
