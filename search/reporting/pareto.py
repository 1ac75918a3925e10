"""The report's part on what a search optimised: the Pareto front of several objectives
(`--objective`) and what `--warm-start` carried over.

    html = pareto_section(exp) + warm_start_note(exp)    # exp: reporting.folder.Experiment
    name = exp_trial_id + pareto_mark(trial_row)           # " ◆" on Pareto trials

Reads search.json's `objectives` and `warm_start` and trials.parquet's `pareto` column
(`search.experiment.tables.mark_pareto`: the finished trials no other finished trial beats in
every objective, at each trial's best epoch by the first objective, as Optuna was told). The
figure plots every finished trial in the first two objectives with its trial id, the Pareto
trials joined by the front; a search with one objective shows nothing here.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from search.experiment.tables import PARETO, objective_values
from search.reporting.figures import png
from search.reporting.folder import Experiment
from search.reporting.markup import fmt, img, note, table

MARK = " ◆"
"""After a Pareto trial's id in the trials table."""


def objectives_of(exp: Experiment) -> list[tuple[str, str]]:
    """The (metric, mode) pairs the search optimised (search.json), the first its metric."""
    return [tuple(o) for o in exp.meta.get("objectives") or ()] or [(exp.metric, exp.mode)]


def pareto_mark(trial: dict) -> str:
    return MARK if trial.get(PARETO) else ""


def pareto_section(exp: Experiment) -> str:
    """The Pareto front's figure and table; "" for a search with one objective."""
    objectives = objectives_of(exp)
    if len(objectives) < 2:
        return ""
    out = "<h3>Pareto front</h3>"
    points = [(t, objective_values(t, objectives)) for t in exp.trials]
    points = [(t, p) for t, p in points if p is not None]
    if not points:
        return out + note("Not available: no finished trial with every objective finite.")
    front = [(t, p) for t, p in points if t.get(PARETO)]
    names = [f"{m} ({d})" for m, d in objectives]
    out += img(front_figure(points, objectives), "Pareto front")
    rows = [[t["trial_id"], *map(fmt, p)] for t, p in front]
    out += table(["trial", *names], rows)
    return out + note(
        f"{len(front)} of {len(points)} finished trials are on the Pareto front (◆ in the "
        f"trials table): no other finished trial is at least as good in every objective and "
        f"better in one. Each trial's values are at its best epoch by {objectives[0][0]}, the "
        "checkpoint it keeps; trials stopped early by ASHA are not on the front."
        + (" The figure shows the first two objectives." if len(objectives) > 2 else "")
    )


def front_figure(points: list[tuple[dict, list[float]]], objectives: list[tuple[str, str]]):
    """PNG: each finished trial in the first two objectives with its id; the front joined."""
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    xs, ys = [p[0] for _, p in points], [p[1] for _, p in points]
    on = [bool(t.get(PARETO)) for t, _ in points]
    ax.scatter(xs, ys, s=22, color="0.6", label="trial", zorder=2)
    front = sorted((x, y) for x, y, o in zip(xs, ys, on, strict=True) if o)
    if front:
        ax.plot(*zip(*front, strict=True), "-o", color="C3", label="Pareto front", zorder=3)
    for (t, p), o in zip(points, on, strict=True):
        ax.annotate(
            str(t["trial_id"]),
            (p[0], p[1]),
            fontsize=7,
            xytext=(5, 4),
            textcoords="offset points",
            color="C3" if o else "0.35",
        )
    (mx, dx), (my, dy) = objectives[0], objectives[1]
    ax.set_xlabel(f"{mx} ({'higher' if dx == 'max' else 'lower'} is better)")
    ax.set_ylabel(f"{my} ({'higher' if dy == 'max' else 'lower'} is better)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return png(fig)


def warm_start_note(exp: Experiment) -> str:
    """What `--warm-start` carried over (search.json's `warm_start`); "" without one."""
    warm = exp.meta.get("warm_start")
    if not warm:
        return ""
    return "<h3>Warm start</h3>" + note(
        f"The searcher was told {warm.get('carried', 0)} finished trial(s) of "
        f"{warm.get('from', 'an earlier search')} before its first "
        f"suggestion; {warm.get('did_not_fit', 0)} other finished trial(s) of it did not fit "
        "this search's space (a value outside a knob's current range, or a knob fixed now "
        "at another value). Carried trials are not in the tables: they trained in that "
        "search."
    )
