"""The comparison page (compare.html): best so far against trial number and against wall time
for every searcher (mean line, min-max band over repeats) and the summary table.

    write_html(rows, "runs/compare-blood/compare.html", "val_auc", "blood: optuna, random")

Self-contained like the report (`search.reporting.markup`): inline CSS, embedded PNGs.
"""

from __future__ import annotations

import html
import warnings

import numpy as np

from search.experiment.storage import write_text
from search.reporting.compare_table import (
    RESOURCE_NOTE,
    by_repeat,
    cells,
    columns,
    searcher_table,
    searchers,
)
from search.reporting.figures import comparison_figure
from search.reporting.markup import img, note, page, table

AXES = {"trial_order": "trial (in order of finishing)", "wall_time_s": "wall time (s)"}
"""The x axes of the two plots: the row column, and its label."""


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
    for searcher in searchers(rows):
        runs = by_repeat([r for r in rows if r["searcher"] == searcher]).values()
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


def write_html(rows: list[dict], path: str, metric: str, title: str = "searcher comparison"):
    """A self-contained page: both best-so-far plots (embedded PNGs) and the summary table."""
    test_name = next((r["test_metric_name"] for r in rows if r["test_metric_name"]), None)
    summary = [cells(t) for t in searcher_table(rows)]
    plots = "".join(
        f"<h2>best {html.escape(metric)} so far against {name}</h2>"
        + img(comparison_figure(curves(rows, x), AXES[x], metric, x == "wall_time_s"), name)
        for x, name in (("trial_order", "trial number"), ("wall_time_s", "wall time"))
    )
    body = (
        f"<h1>{html.escape(title)}</h1><p>Lines: mean over repeats; bands: min to max. Trials "
        "are numbered in the order they finished. Test: the best trial of each search on the "
        f"test split.</p>{table(columns(metric, test_name, spaced=True), summary)}"
        f"{note(RESOURCE_NOTE)}{plots}"
    )
    write_text(path, page(title, body))  # atomic; makes the folder
