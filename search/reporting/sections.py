"""The report's first two sections: the experiment (what ran, on which splits) and the search
(best so far, parallel coordinates, parameter importances, learning curves, every trial).

    html = experiment_section(exp) + search_section(exp)   # exp: reporting.folder.Experiment

Each section takes the `Experiment` read from the folder and returns HTML; what is missing
becomes a "not available" note.
"""

from __future__ import annotations

import html
import math
import time
from collections import Counter

from search.experiment.sweep import infer_distribution
from search.experiment.tables import BEST_PREFIX, STOPPED_EARLY, config_of
from search.reporting import figures, measures
from search.reporting.calibration import calibration_section
from search.reporting.folder import Experiment
from search.reporting.markup import box, duration, fmt, img, nan_if_missing, note, table
from search.reporting.pareto import pareto_mark, pareto_section, warm_start_note
from search.reporting.repeats import repeats_section
from trainables.scores import is_finite

TOP_CURVES = 5
SMALL_VAL = 20  # fewer validation examples than this in a class: metrics on it are noisy


def experiment_section(exp: Experiment) -> str:
    m = exp.meta
    counts = Counter(t.get("status") or "unknown" for t in exp.trials)
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
    wall = m.get("wall_time_s")
    if not is_finite(wall) and is_finite(m.get("started_at")) and is_finite(m.get("finished_at")):
        wall = m["finished_at"] - m["started_at"]
    facts = [
        ("task", f"{m.get('task', 'not recorded')} ({m.get('kind', 'kind not recorded')})"),
        ("metric", f"{exp.metric} ({exp.mode})"),
        ("searcher", f"{m.get('searcher', 'not recorded')}, seed {m.get('seed', '-')}"),
        ("trials", f"{len(exp.trials)}: {status}"),
        ("epochs per trial", m.get("epochs", "not recorded")),
        ("wall time", duration(wall)),
        ("started", _clock(m.get("started_at"))),
    ]
    rows = [[k, v] for k, v in facts]
    return (
        f"<h1>{html.escape(str(m.get('name', exp.root.name)))}</h1>"
        f"<p class='note'>medsweep experiment report for {html.escape(str(exp.root))}</p>"
        f"{table(None, rows)}{_splits(m.get('split_counts'))}"
    )


def _splits(counts: dict | None) -> str:
    if not counts:
        return note("Dataset split sizes: not available (not recorded in search.json).")
    splits = list(counts)
    classes = list(dict.fromkeys(c for s in splits for c in counts[s]))
    rows = [[c, *(counts[s].get(c, 0) for s in splits)] for c in classes]
    rows.append(["total", *(sum(counts[s].values()) for s in splits)])
    out = "<h3>Dataset split sizes</h3>" + table(["class", *splits], rows)
    small = {c: n for c, n in counts.get("val", {}).items() if n < SMALL_VAL}
    if small:
        listed = ", ".join(f"{c} ({n})" for c, n in small.items())
        out += box(
            "warn",
            f"Small data: {len(small)} class(es) have fewer than {SMALL_VAL} validation "
            f"examples (positives, for a label): {listed}. Validation metrics (and so the "
            "search's ranking) are noisy for them; differences between trials may be chance.",
        )
    return out


def search_section(exp: Experiment) -> str:
    out = ["<h2>The search</h2>"]
    if not exp.trials:
        return out[0] + note("No trials recorded (trials.parquet missing or empty).")
    out.append("<h3>Best so far</h3>" + _best_so_far(exp))
    out.append("<h3>Searched knobs</h3>" + _parallel(exp))
    out.append("<h3>Parameter importances</h3>" + _importances(exp))
    out.append("<h3>Learning curves</h3>" + _curves(exp))
    out.append("<h3>All trials</h3>" + _trial_table(exp))
    out.append(pareto_section(exp) + warm_start_note(exp))  # --objective, --warm-start
    out.append(repeats_section(exp))  # --repeat-best: the best config over new seeds
    out.append(calibration_section(exp))  # threshold chosen on val, ECE, shift
    return "\n".join(out)


def _best_so_far(exp: Experiment) -> str:
    values = [exp.value(t) for t in exp.trials]
    if not any(map(math.isfinite, values)):
        return note(f"Not available: no trial reported a finite {exp.metric}.")
    events = [h for h in exp.history if is_finite(h.get("timestamp"))]
    t0 = exp.meta.get("started_at")
    t0 = t0 if is_finite(t0) else min((h["timestamp"] for h in events), default=0)
    times = [h["timestamp"] - t0 for h in events]
    reported = [h[exp.metric] if is_finite(h.get(exp.metric)) else math.nan for h in events]
    png = figures.best_so_far(values, times, reported, exp.metric, exp.mode)
    return img(png, "best so far")


def _parallel(exp: Experiment) -> str:
    knobs = [k for k in exp.knobs if any(config_of(t).get(k) is not None for t in exp.trials)]
    if not knobs:
        return note("Not available: no searched knobs recorded.")
    configs = [{k: config_of(t).get(k) for k in knobs} for t in exp.trials]
    params = exp.meta.get("space", {}).get("parameters", {})
    log_knobs = {
        k
        for k in knobs
        if k == "lr" or infer_distribution(params.get(k)) in measures.LOG_DISTRIBUTIONS
    }
    values = [exp.value(t) for t in exp.trials]
    return img(
        figures.parallel_coordinates(configs, knobs, log_knobs, values, exp.metric), "knobs"
    )


def _importances(exp: Experiment) -> str:
    configs = [{k: config_of(t).get(k) for k in exp.knobs} for t in exp.trials]
    values = [exp.value(t) for t in exp.trials]
    params = exp.meta.get("space", {}).get("parameters", {})
    try:
        scores = measures.param_importances(configs, values, params, exp.knobs, exp.mode)
    except ValueError as err:
        return note(f"Not available: {err}")
    except Exception as err:  # optuna's evaluators raise assorted errors on degenerate studies
        return note(f"Not available: optuna could not compute them ({type(err).__name__}: {err})")
    return img(figures.importances(scores), "importances") + note(
        "fANOVA over the trials with a finite metric; trials stopped early by ASHA count with "
        "the best value they reached. With few trials these are rough."
    )


def _curves(exp: Experiment) -> str:
    top = exp.ranked()[:TOP_CURVES]
    stopped = [t for t in exp.trials if t.get("status") == STOPPED_EARLY]
    curves = []
    for t in top:
        rows = exp.curve(t["trial_id"])
        curves.append(
            {
                "label": f"{t['trial_id']} ({fmt(exp.value(t))})",
                "epoch": [h.get("epoch") for h in rows],
                "metric": [nan_if_missing(h.get(exp.metric)) for h in rows],
                "train_loss": [nan_if_missing(h.get("train_loss")) for h in rows],
                "stopped": t.get("status") == STOPPED_EARLY,
            }
        )
    out = ""
    if any(c["epoch"] for c in curves):
        out = img(figures.learning_curves(curves, exp.metric), "learning curves")
        out += note(
            f"The top {len(curves)} trials by {exp.metric}; dashed lines ending in x were "
            "stopped early by ASHA."
        )
    else:
        out = note("Learning curves: not available (no per-epoch history for the top trials).")
    if stopped:
        listed = ", ".join(
            f"{t['trial_id']} ({fmt(t.get('epochs_run'))} epochs run)" for t in stopped
        )
        out += f"<p>Stopped early by ASHA ({len(stopped)}): {html.escape(listed)}</p>"
    return out


def _trial_table(exp: Experiment) -> str:
    winner = exp.winner()
    order = exp.ranked() + exp.unranked()
    head = [
        "trial",
        "status",
        *exp.knobs,
        exp.metric,
        "best epoch",
        "epochs run",
        "wall time",
        "attr focus",
        "error",
    ]
    folds = any(t.get("folds") for t in exp.trials)
    if folds:  # k-fold trials: the metric is the mean over folds; show its spread
        head.insert(head.index(exp.metric) + 1, "± std over folds")
    rows, classes = [], []
    for t in order:
        error = (t.get("error") or "").strip().splitlines()
        numbers = [t.get(exp.metric), t.get("best_epoch"), t.get("epochs_run")]
        if folds:
            numbers.insert(1, t.get(f"{BEST_PREFIX}{exp.metric}_std"))
        rows.append(
            [
                t["trial_id"] + pareto_mark(t),  # ◆: on the Pareto front (--objective)
                t.get("status"),
                *(fmt(config_of(t).get(k)) for k in exp.knobs),
                *map(fmt, numbers),
                duration(t.get("wall_time_s")),
                fmt(t.get("attr_focus")),
                error[0][:160] if error else "",
            ]
        )
        classes.append("best" if t is winner else "")
    return f"<div class='scroll'>{table(head, rows, classes)}</div>"


def _clock(unix_s) -> str:
    if not is_finite(unix_s):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_s))
