"""Anytime figures of a searcher comparison: best so far against trials or wall time, with a 95%
band over repeats, and the time each searcher takes to reach a target.

    xs, mean, low, high = curves(rows, "wall_time_s")["optuna"]
    reach = time_to_target(rows, "optuna", target=0.21, mode="min")   # Reach(...)
    target = final_mean(rows, "random")                               # random's final mean best

`rows` are compare.parquet's (`search.reporting.comparison`): one per (searcher, repeat, trial)
in finishing order with `best_so_far`, `wall_time_s` (since the search started) and
`trial_order`. The band is the 95% confidence interval of the mean over repeats (Student's t;
no band with one repeat). A repeat that never reaches the target counts with its whole length,
a lower bound of its time (`Reach.reached` says how many did reach it).
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from trainables.scores import improves

LEVEL = 0.95


def searchers(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["searcher"] for r in rows))


def by_repeat(rows: list[dict]) -> dict[int, list[dict]]:
    """{repeat: its rows in finishing order}."""
    runs: dict[int, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["repeat"], r["trial_order"])):
        runs.setdefault(r["repeat"], []).append(r)
    return runs


def runs_of(rows: list[dict], searcher: str) -> list[list[dict]]:
    return list(by_repeat([r for r in rows if r["searcher"] == searcher]).values())


def grid(rows: list[dict], x: str, points: int = 200) -> np.ndarray:
    """The x values every searcher is drawn on: trial numbers 1..N, or a time grid from 0 to a
    little past the last finish."""
    if x == "trial_order":
        return np.arange(1, max((r["trial_order"] for r in rows), default=0) + 1, dtype=float)
    ends = [r["wall_time_s"] for r in rows if r["wall_time_s"] is not None]
    return np.linspace(0.0, 1.05 * max(ends, default=0.0), points)


def curves(rows: list[dict], x: str, points: int = 200) -> dict[str, tuple]:
    """{searcher: (xs, mean, low, high)}: best so far at each x, mean over repeats and its 95%
    band. A search that ended keeps its last best; before a repeat's first result it has none
    (the mean is over the repeats that have one)."""
    xs = grid(rows, x, points)
    out = {}
    for searcher in searchers(rows):
        ys = np.array([step_values(run, x, xs) for run in runs_of(rows, searcher)])
        out[searcher] = (xs, *mean_band(ys))
    return out


def mean_band(ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) over the rows of `ys` (repeats x points), NaN-aware: the band is the
    mean +/- t(0.975, n-1) x sd / sqrt(n) of the repeats with a value there (none for n < 2)."""
    with warnings.catch_warnings():  # columns where no repeat has a value yet
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(ys, 0)
        n = np.sum(~np.isnan(ys), 0)
        sd = np.nanstd(ys, 0, ddof=1)
    half = np.where(n > 1, stats.t.ppf(0.5 + LEVEL / 2, np.maximum(n - 1, 1)), np.nan)
    half = half * sd / np.sqrt(np.maximum(n, 1))
    return mean, mean - half, mean + half


def step_values(run: list[dict], x: str, xs: np.ndarray) -> np.ndarray:
    """The run's best so far at each of `xs` (NaN before its first result)."""
    points = [(r[x], r["best_so_far"]) for r in run if r[x] is not None]
    if not points:
        return np.full(len(xs), np.nan)
    at = np.array([p[0] for p in points], dtype=float)  # rows come in finishing order
    best = np.array([np.nan if p[1] is None else p[1] for p in points], dtype=float)
    index = np.searchsorted(at, xs, side="right") - 1
    return np.where(index >= 0, best[np.maximum(index, 0)], np.nan)


def final_best(run: list[dict]) -> float | None:
    values = [r["best_so_far"] for r in run if r["best_so_far"] is not None]
    return values[-1] if values else None


def final_mean(rows: list[dict], searcher: str) -> float | None:
    """The mean over repeats of `searcher`'s final best (None without any)."""
    finals = [f for f in map(final_best, runs_of(rows, searcher)) if f is not None]
    return statistics.fmean(finals) if finals else None


@dataclass(frozen=True)
class Reach:
    """How long a searcher took to reach a target, over its repeats."""

    seconds: float | None
    """Mean wall time to the target (a repeat that never reached it: its whole length)."""
    trials: float | None
    """Mean trials finished at the target (never reached: all its trials)."""
    reached: int
    repeats: int


def time_to_target(rows: list[dict], searcher: str, target: float, mode: str) -> Reach:
    """When each repeat of `searcher` first had a best at least as good as `target`."""
    seconds, trials, reached = [], [], 0
    runs = runs_of(rows, searcher)
    for run in runs:
        hit = next((r for r in run if _reaches(r["best_so_far"], target, mode)), None)
        reached += hit is not None
        at = hit["wall_time_s"] if hit else _end(run)
        if at is not None:
            seconds.append(at)
        trials.append((hit or run[-1])["trial_order"])
    return Reach(
        seconds=statistics.fmean(seconds) if seconds else None,
        trials=statistics.fmean(trials) if trials else None,
        reached=reached,
        repeats=len(runs),
    )


def _reaches(best: float | None, target: float, mode: str) -> bool:
    """At least as good as `target` (equal within rounding: a mean of equal values)."""
    if best is None:
        return False
    return math.isclose(best, target, rel_tol=1e-9) or improves(best, target, mode)


def _end(run: list[dict]) -> float | None:
    """When the run's last trial with a result finished."""
    return max((r["wall_time_s"] for r in run if r["wall_time_s"] is not None), default=None)
