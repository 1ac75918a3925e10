"""Compare searchers on one task: same space, trainable, budget and hardware, several seeds.

    python search/compare.py --task pathology --searchers optuna,wandb-bayes,random \\
        --trials 30 --repeats 3 [--epochs 4] [--launcher function] [--out runs/compare-pathology]
    python search/compare.py ... --wandb-sweep ENTITY/PROJECT/SWEEP_ID   # add a real W&B sweep
    python search/compare.py ... -- --max-concurrent 2                  # after --: to run.py

Each (searcher, repeat k) is one `search/run.py` search in a subprocess with seed k, named
`compare-<task>-<searcher>-r<k>` under --out, its log beside it (`<name>.log`); a finished one
(its `search.json` exists) is reused, so an interrupted comparison picks up where it stopped.
Attribution maps are skipped (`--explain-top 0`); the best trial of each search is evaluated
on the test split as usual. Then it writes

  <out>/compare.parquet  one row per (searcher, repeat, trial): trial order, metric,
                         best-so-far, wall time since the search started, status, resources
  <out>/compare.html     best-so-far against trial number and against wall time (mean line,
                         min-max band over repeats), the summary table; self-contained

and prints the summary table as plain text. Trials are ordered by when they finished, the
moment their searcher learnt the result. `--wandb-sweep` reads the runs of a sweep run on W&B's
service (`wandb sweep` + `wandb agent`, program `search/wandb_trial.py`) and adds it as one more
searcher; it needs W&B online and is skipped with a message otherwise.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import statistics
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime
from html import escape
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "search" / "run.py"
TEST_NAMES = {"val_auc": "auroc", "val_acc": "accuracy", "val_f1": "macro_f1"}
SWEEP_STATUS = {
    "finished": "finished",
    "killed": "stopped_early",
    "crashed": "errored",
    "failed": "errored",
}
RESOURCE_NOTE = (
    "CPU·h / GPU·h: per search, the sum over its trials of (trial wall time × CPUs or GPUs the "
    "trial held), mean over repeats; a Ray Train driver's 0.01 CPU is left out."
)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument(
        "--searchers",
        default="optuna,wandb-bayes,random",
        help="comma-separated (default optuna,wandb-bayes,random)",
    )
    p.add_argument("--trials", type=int, default=30, help="trials per search (default 30)")
    p.add_argument("--repeats", type=int, default=3, help="searches per searcher, seeds 0..R-1")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the space's)")
    p.add_argument("--data-dir", help="folder with the npz files (run.py's default otherwise)")
    p.add_argument("--space", help="space file (default spaces/<task>.yaml)")
    p.add_argument("--launcher", default="train", choices=("train", "function"))
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="default 1 if a GPU is visible, else 0; the same for every searcher",
    )
    p.add_argument(
        "--out", help="folder for the searches and results (default runs/compare-<task>)"
    )
    p.add_argument(
        "--wandb-sweep",
        metavar="ENTITY/PROJECT/ID",
        help="also read this W&B sweep's runs (needs W&B online)",
    )
    args = p.parse_args(argv)
    args.searchers = [s.strip() for s in args.searchers.split(",") if s.strip()]
    from search.driver.tuner import SEARCHERS

    unknown = [s for s in args.searchers if s not in SEARCHERS]
    if unknown or not args.searchers:
        p.error(f"--searchers {','.join(unknown) or '(none)'}: choose from {', '.join(SEARCHERS)}")
    if args.trials < 1 or args.repeats < 1:
        p.error("--trials and --repeats must be at least 1")
    return args, passthrough


def run_name(task: str, searcher: str, repeat: int) -> str:
    return f"compare-{task}-{searcher}-r{repeat}"


def search_command(args, searcher: str, repeat: int, passthrough: list[str]) -> list[str]:
    """The `search/run.py` command line of one (searcher, repeat)."""
    cmd = [
        sys.executable, str(RUN_PY), "--task", args.task,
        "--name", run_name(args.task, searcher, repeat), "--storage", args.out,
        "--searcher", searcher, "--seed", str(repeat), "--trials", str(args.trials),
        "--launcher", args.launcher, "--gpus-per-trial", str(args.gpus_per_trial),
        "--explain-top", "0",
    ]  # fmt: skip
    for flag, value in (
        ("--epochs", args.epochs),
        ("--data-dir", args.data_dir),
        ("--space", args.space),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += ["--wandb", "off"]  # W&B stays out of the timing
    return cmd + passthrough


def run_search(args, searcher: str, repeat: int, passthrough: list[str]) -> str:
    """Run one search (or reuse a finished one); its folder."""
    name = run_name(args.task, searcher, repeat)
    folder = os.path.join(args.out, name)
    if os.path.isfile(os.path.join(folder, "search.json")):
        print(f"{name}: reusing the finished search in {folder} (delete it to rerun)")
        return folder
    log_path = os.path.join(args.out, f"{name}.log")
    print(f"{name}: running, log in {log_path}", flush=True)
    with open(log_path, "w") as log:
        cmd = search_command(args, searcher, repeat, passthrough)
        proc = subprocess.run(
            cmd, env=search_env(passthrough), stdout=log, stderr=subprocess.STDOUT
        )
    if proc.returncode != 0:
        tail = Path(log_path).read_text().splitlines()[-15:]
        print(
            f"{name}: exit code {proc.returncode}; last lines of {log_path}:\n  "
            + "\n  ".join(tail)
        )
    return folder


def search_env(passthrough: list[str]) -> dict[str, str]:
    """The environment of a search: its own local Ray unless an address is given.

    `ray.init()` without an address joins the newest cluster started on this machine (found
    through /tmp/ray), another user's included; RAY_ADDRESS=local makes it start its own.
    """
    env = dict(os.environ)
    if "RAY_ADDRESS" not in env and not any(a.startswith("--address") for a in passthrough):
        env["RAY_ADDRESS"] = "local"
    return env


# --- rows: one per (searcher, repeat, trial) -----------------------------------------------


def summarise(run_dirs: Mapping[tuple[str, int], str], metric: str, mode: str) -> list[dict]:
    """Rows for compare.parquet from search folders keyed by (searcher, repeat).

    A folder without `trials.parquet` (the search failed before writing it) gives no rows.
    """
    from search.experiment.tables import read_table

    rows = []
    for (searcher, repeat), folder in run_dirs.items():
        trials_path = os.path.join(folder, "trials.parquet")
        if not os.path.isfile(trials_path):
            print(f"{folder}: no trials.parquet; {searcher} repeat {repeat} is left out")
            continue
        history_path = os.path.join(folder, "history.parquet")
        history = read_table(history_path) if os.path.isfile(history_path) else []
        info = _read_json(os.path.join(folder, "search.json")) or {}
        tested = _read_json(os.path.join(folder, "test_metrics.json")) or {}
        rows += run_rows(
            searcher, repeat, read_table(trials_path), history, info, tested, metric, mode
        )
    return rows


def run_rows(searcher, repeat, trials, history, info, tested, metric, mode) -> list[dict]:
    """Rows of one search, in the order its trials finished, with the best so far."""
    ends = trial_ends(history)
    started = info.get("started_at") or _first_start(history)
    cpus, gpus = trial_resources(info)
    test_name = TEST_NAMES.get(metric)
    order = sorted(
        trials,
        key=lambda t: (
            ends.get(t["trial_id"]) is None,
            ends.get(t["trial_id"]) or 0,
            t["trial_id"],
        ),
    )
    rows, best = [], math.nan
    for i, t in enumerate(order, start=1):
        value = _finite(t.get(metric))
        best = _better(best, value, mode)
        end = ends.get(t["trial_id"])
        trial_wall = _finite(t.get("wall_time_s"))
        test = ((tested.get("trials") or {}).get(t["trial_id"]) or {}).get(test_name) or {}
        rows.append({
            "searcher": searcher, "repeat": int(repeat), "trial_id": t["trial_id"],
            "trial_order": i, "status": t.get("status"), "metric_name": metric,
            "metric": value, "best_so_far": None if math.isnan(best) else best,
            "wall_time_s": None if end is None or started is None else max(end - started, 0.0),
            "trial_wall_s": trial_wall, "epochs_run": t.get("epochs_run"),
            "cpus": cpus, "gpus": gpus,
            "cpu_s": _times(trial_wall, cpus), "gpu_s": _times(trial_wall, gpus),
            "test_metric_name": test_name, "test_metric": _finite(test.get("value")),
        })  # fmt: skip
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
        if _finite(h.get("timestamp")) is not None
    ]
    return min(starts) if starts else None


def trial_resources(info: dict) -> tuple[float | None, float | None]:
    """(CPUs, GPUs) each trial held: search.json's `resources_per_trial`, else its argv."""
    held = info.get("resources_per_trial")
    if held:
        return float(held.get("cpu", 0.0)), float(held.get("gpu", 0.0))
    if "argv" not in info:
        return None, None
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--workers-per-trial", type=int, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    known, _ = p.parse_known_args(info["argv"])
    return known.cpus_per_worker * known.workers_per_trial, known.gpus_per_trial


def sweep_rows(runs: Iterable, metric: str, mode: str, limit: int | None = None) -> list[dict]:
    """Rows for the runs of a W&B sweep (objects like `wandb.Api().sweep(path).runs`' items).

    A run's value is its summary's metric (`search/wandb_trial.py` leaves the best epoch's
    there); its end is `created_at` + `_runtime`. Runs still going are left out, and only the
    first `limit` runs created count (the other searchers' budget).
    """
    trials, history = [], []
    ended = [run for run in runs if run.state in SWEEP_STATUS]
    for run in sorted(ended, key=lambda run: run.created_at)[:limit]:
        status = SWEEP_STATUS[run.state]
        summary = dict(run.summary_metrics)
        runtime = _finite(summary.get("_runtime")) or 0.0
        start = datetime.fromisoformat(run.created_at.replace("Z", "+00:00")).timestamp()
        trials.append(
            {
                "trial_id": run.id,
                "status": status,
                metric: summary.get(metric),
                "wall_time_s": runtime,
                "epochs_run": summary.get("epoch"),
            }
        )
        history.append({"trial_id": run.id, "timestamp": start + runtime, "time_total_s": runtime})
    return run_rows("wandb-sweep", 0, trials, history, {}, {}, metric, mode)


def read_sweep(path: str, metric: str, mode: str, limit: int | None = None) -> list[dict]:
    """A W&B sweep's rows, or [] with a message when W&B is offline or unreachable."""
    from search.tracking.runs import resolve_mode

    if resolve_mode(None) != "online":
        print(
            f"--wandb-sweep {path}: skipped, W&B is offline here (no API key, or "
            "WANDB_MODE=offline); run `wandb login` and compare again"
        )
        return []
    import wandb

    try:
        return sweep_rows(wandb.Api(timeout=30).sweep(path).runs, metric, mode, limit)
    except Exception as err:  # no network, a wrong path, no access: the rest still stands
        print(f"--wandb-sweep {path}: skipped ({type(err).__name__}: {err})")
        return []


def _better(best: float, value: float | None, mode: str) -> float:
    if value is None:
        return best
    if math.isnan(best):
        return value
    return max(best, value) if mode == "max" else min(best, value)


def _finite(value) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _times(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a * b


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


# --- the summary table ---------------------------------------------------------------------


def searcher_table(rows: list[dict]) -> list[dict]:
    """One line per searcher: final best and test metric (mean ± std over repeats), counts."""
    table = []
    for searcher in _searchers(rows):
        runs = _by_repeat([r for r in rows if r["searcher"] == searcher])
        finals = [_last_best(run) for run in runs.values()]
        tests = [
            r["test_metric"] for run in runs.values() for r in run if r["test_metric"] is not None
        ]
        mine = [r for run in runs.values() for r in run]
        table.append({
            "searcher": searcher, "repeats": len(runs), "trials": len(mine),
            "best": _mean_std([f for f in finals if f is not None]),
            "test": _mean_std(tests),
            "stopped_early": sum(r["status"] == "stopped_early" for r in mine),
            "errored": sum(r["status"] == "errored" for r in mine),
            "wall_s": _mean([_max(r["wall_time_s"] for r in run) for run in runs.values()]),
            "cpu_h": _mean([_sum(r["cpu_s"] for r in run) for run in runs.values()], 3600),
            "gpu_h": _mean([_sum(r["gpu_s"] for r in run) for run in runs.values()], 3600),
        })  # fmt: skip
    return table


def format_table(table: list[dict], metric: str, test_name: str | None) -> str:
    """The summary table as aligned plain text (for the terminal and the release note)."""
    head = [
        "searcher",
        "repeats",
        "trials",
        f"best {metric}",
        f"test {test_name or '-'}",
        "stopped early",
        "errored",
        "wall s/search",
        "CPU·h/search",
        "GPU·h/search",
    ]
    lines = [head] + [_cells(t) for t in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text + ["", RESOURCE_NOTE])


def _cells(t: dict) -> list[str]:
    return [
        t["searcher"],
        str(t["repeats"]),
        str(t["trials"]),
        _pm(t["best"]),
        _pm(t["test"]),
        f"{t['stopped_early']}/{t['trials']}",
        str(t["errored"]),
        _num(t["wall_s"], 0),
        _sig(t["cpu_h"]),
        _sig(t["gpu_h"]),
    ]


def _searchers(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["searcher"] for r in rows))


def _by_repeat(rows: list[dict]) -> dict[int, list[dict]]:
    runs: dict[int, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["repeat"], r["trial_order"])):
        runs.setdefault(r["repeat"], []).append(r)
    return runs


def _last_best(run: list[dict]) -> float | None:
    values = [r["best_so_far"] for r in run if r["best_so_far"] is not None]
    return values[-1] if values else None


def _mean_std(values: list[float]) -> tuple[float, float, int] | None:
    """(mean, sample std, n); std 0 for a single value."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def _mean(values: list[float | None], unit: float = 1.0) -> float | None:
    known = [v / unit for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _sum(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _max(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _pm(stat: tuple[float, float, int] | None) -> str:
    return "-" if stat is None else f"{stat[0]:.4f} ± {stat[1]:.4f} (n={stat[2]})"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _sig(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


# --- plots and the HTML page ---------------------------------------------------------------


def curves(rows: list[dict], x: str, grid_points: int = 200) -> dict[str, tuple]:
    """{searcher: (xs, mean, low, high)} of best-so-far over repeats against `x`.

    x = "trial_order": one point per trial number; x = "wall_time_s": one time grid for every
    searcher, from 0 to a little past the last finish. A search that ended keeps its last best.
    """
    if x == "trial_order":
        xs = np.arange(1, max((r["trial_order"] for r in rows), default=0) + 1, dtype=float)
    else:
        ends = [r["wall_time_s"] for r in rows if r["wall_time_s"] is not None]
        xs = np.linspace(0.0, 1.05 * max(ends, default=0.0), grid_points)
    out = {}
    for searcher in _searchers(rows):
        runs = _by_repeat([r for r in rows if r["searcher"] == searcher]).values()
        ys = np.array([_step_values(run, x, xs) for run in runs])
        with warnings.catch_warnings():  # columns where no repeat has a value yet
            warnings.simplefilter("ignore", RuntimeWarning)
            out[searcher] = (xs, np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0))
    return out


def _step_values(run: list[dict], x: str, xs: np.ndarray) -> np.ndarray:
    """The run's best-so-far at each of `xs` (NaN before its first result)."""
    points = [(r[x], r["best_so_far"]) for r in run if r[x] is not None]
    if not points:
        return np.full(len(xs), np.nan)
    at = np.array([p[0] for p in points], dtype=float)  # rows come sorted by finishing time
    best = np.array([np.nan if p[1] is None else p[1] for p in points], dtype=float)
    index = np.searchsorted(at, xs, side="right") - 1
    return np.where(index >= 0, best[np.maximum(index, 0)], np.nan)


def plot_png(rows: list[dict], x: str, metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for searcher, (xs, mean, low, high) in curves(rows, x).items():
        (line,) = ax.plot(xs, mean, label=searcher, drawstyle="steps-post")
        ax.fill_between(xs, low, high, alpha=0.2, color=line.get_color(), step="post")
    ax.set_xlabel("trial (in order of finishing)" if x == "trial_order" else "wall time (s)")
    if x == "wall_time_s":
        ax.set_xlim(left=0.0)
    ax.set_ylabel(f"best {metric} so far")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_html(rows: list[dict], path: str, metric: str, title: str = "searcher comparison"):
    """A self-contained page: both best-so-far plots (embedded PNGs) and the summary table."""
    test_name = next((r["test_metric_name"] for r in rows if r["test_metric_name"]), None)
    table = searcher_table(rows)
    head = [
        "searcher",
        "repeats",
        "trials",
        f"best {metric} (mean ± std)",
        f"test {test_name or '-'} (mean ± std)",
        "stopped early",
        "errored",
        "wall s / search",
        "CPU·h / search",
        "GPU·h / search",
    ]
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in _cells(t)) + "</tr>" for t in table
    )
    images = "".join(
        f'<h2>best {escape(metric)} so far against {label}</h2><img alt="{label}" '
        f'src="data:image/png;base64,{base64.b64encode(plot_png(rows, x, metric)).decode()}">'
        for x, label in (("trial_order", "trial number"), ("wall_time_s", "wall time"))
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em}}</style>
</head><body><h1>{escape(title)}</h1>
<p>Lines: mean over repeats; bands: min to max. Trials are numbered in the order they
finished. Test: the best trial of each search on the test split.</p>
<table><tr>{"".join(f"<th>{escape(h)}</th>" for h in head)}</tr>{body}</table>
<p>{escape(RESOURCE_NOTE)}</p>{images}</body></html>
"""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(page)


# --- the command ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args, passthrough = parse_args(argv)
    from search.driver.space import default_space_path, load_space
    from search.experiment.tables import write_table
    from trainables.tasks import get_task

    task = get_task(args.task)
    space = load_space(args.space or default_space_path(task), task)
    args.out = os.path.abspath(args.out or os.path.join("runs", f"compare-{task.name}"))
    os.makedirs(args.out, exist_ok=True)
    if args.gpus_per_trial is None:
        import torch

        args.gpus_per_trial = 1.0 if torch.cuda.is_available() else 0.0
    run_dirs = {
        (searcher, k): run_search(args, searcher, k, passthrough)
        for k in range(args.repeats)
        for searcher in args.searchers
    }
    rows = summarise(run_dirs, space.metric, space.mode)
    if args.wandb_sweep:
        rows += read_sweep(args.wandb_sweep, space.metric, space.mode, args.trials)
    if not rows:
        print("no search produced trials; see the logs in", args.out)
        return 1
    write_table(rows, os.path.join(args.out, "compare.parquet"))
    write_html(
        rows,
        os.path.join(args.out, "compare.html"),
        space.metric,
        f"{task.name}: {', '.join(_searchers(rows))}, {args.trials} trials",
    )
    test_name = TEST_NAMES.get(space.metric)
    print("\n" + format_table(searcher_table(rows), space.metric, test_name))
    print(
        f"\n{os.path.join(args.out, 'compare.html')}\n{os.path.join(args.out, 'compare.parquet')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
