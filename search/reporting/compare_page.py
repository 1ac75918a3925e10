"""The comparison page (compare.html): best so far against trial number and against wall time
for every searcher (mean line, 95% band over repeats: `search.reporting.anytime`) and the
summary table.

    write_html(rows, "runs/compare-blood/compare.html", "val_auc", "max", "blood: optuna, random")

Self-contained like the report (`search.reporting.markup`): inline CSS, embedded PNGs.
"""

from __future__ import annotations

import html

from search.experiment.storage import write_text
from search.reporting.anytime import curves
from search.reporting.compare_table import (
    RESOURCE_NOTE,
    cells,
    columns,
    searcher_table,
    target_note,
)
from search.reporting.figures import comparison_figure
from search.reporting.markup import img, note, page, table

AXES = {"trial_order": "trial (in order of finishing)", "wall_time_s": "wall time (s)"}
"""The x axes of the two plots: the row column, and its label."""


def write_html(
    rows: list[dict], path: str, metric: str, mode: str, title: str = "searcher comparison"
) -> None:
    """A self-contained page: both best-so-far plots (embedded PNGs) and the summary table."""
    test_name = next((r["test_metric_name"] for r in rows if r["test_metric_name"]), None)
    table_rows = searcher_table(rows, mode)
    summary = [cells(t) for t in table_rows]
    plots = "".join(
        f"<h2>best {html.escape(metric)} so far against {name}</h2>"
        + img(comparison_figure(curves(rows, x), AXES[x], metric, x == "wall_time_s"), name)
        for x, name in (("trial_order", "trial number"), ("wall_time_s", "wall time"))
    )
    body = (
        f"<h1>{html.escape(title)}</h1><p>Lines: mean over repeats; bands: the 95% confidence "
        "interval of the mean (2 repeats or more). Trials are numbered in the order they "
        "finished. Test: the best trial of each search on the test split.</p>"
        f"{table(columns(metric, test_name, spaced=True), summary)}"
        f"{note(target_note(table_rows, metric))}{note(RESOURCE_NOTE)}{plots}"
    )
    write_text(path, page(title, body))  # atomic; makes the folder
