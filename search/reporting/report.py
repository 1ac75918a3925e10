"""Build the self-contained HTML report of one experiment folder.

    python search/report.py runs/pathology-20250101-120000    # (re)writes <folder>/report.html

    from search.reporting.report import build_report
    path = build_report("runs/pathology-20250101-120000")

Reads only the folder (search.json, trials.parquet, history.parquet, test_metrics.json,
<trial>/test_predictions.npz, <trial>/attribution/*.png), so a copied folder rebuilds its report
anywhere. The output is one HTML file with inline CSS and every figure embedded as a base64 PNG:
it opens offline and can be mailed. Sections: the experiment (trials by status, wall time,
split sizes), the search (best so far, parallel coordinates, parameter importances, learning
curves, every trial), the winner (config, test metrics with 95% CIs, confusion matrix, ROC) and
attribution (Grad-CAM and Integrated Gradients per trial, low focus flagged). Missing pieces
become "not available" notes; a section that fails shows its error instead of losing the report.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.experiment.sweep import infer_distribution
from search.reporting import plots as parts
from search.reporting.plots import finite
from trainables.files import write_atomic

log = logging.getLogger("medsweep.report")

TOP_CURVES = 5
SMALL_VAL = 20  # fewer validation examples than this in a class: metrics on it are noisy
FOCUS_GAP = 0.2  # attribution focus this far below the median is flagged
ATTRIBUTION_FILES = {"gradcam.png": "Grad-CAM", "integrated_gradients.png": "Integrated Gradients"}


@dataclass
class Experiment:
    """Everything read from one experiment folder; missing files leave empty values."""

    root: Path
    meta: dict
    trials: list[dict]  # in start order
    history: list[dict]
    tests: dict | None
    metric: str = field(init=False)
    mode: str = field(init=False)

    def __post_init__(self) -> None:
        self.metric = self.meta.get("metric", "val_auc")
        self.mode = self.meta.get("mode", "max")

    @property
    def knobs(self) -> list[str]:
        if "knobs" in self.meta:
            return list(self.meta["knobs"])
        params = self.meta.get("space", {}).get("parameters")
        if params:
            return [k for k, spec in params.items() if infer_distribution(spec) != "constant"]
        # no search.json: the settings that differ between trials
        keys = sorted({k for t in self.trials for k in t if k.startswith("config/")})
        return [k[7:] for k in keys if len({repr(t.get(k)) for t in self.trials}) > 1]

    def value(self, trial: dict) -> float:
        v = trial.get(self.metric)
        return float(v) if finite(v) else math.nan

    def ranked(self) -> list[dict]:
        """Trials with a finite metric, best first."""
        scored = [t for t in self.trials if finite(t.get(self.metric))]
        return sorted(scored, key=self.value, reverse=self.mode == "max")

    def winner(self) -> dict | None:
        best = (self.tests or {}).get("best_trial")
        by_id = {t["trial_id"]: t for t in self.trials}
        ranked = self.ranked()
        return by_id.get(best) or (ranked[0] if ranked else None)

    def curve(self, trial_id: str) -> list[dict]:
        rows = [h for h in self.history if h.get("trial_id") == trial_id]
        return sorted(rows, key=lambda h: h.get("epoch") or 0)


def build_report(experiment_dir: str | os.PathLike) -> str:
    """Write `<experiment_dir>/report.html` atomically; return its path."""
    exp = load_experiment(experiment_dir)
    sections = [_header, _search, _winner, _attribution]
    body = "\n".join(_guarded(section, exp) for section in sections)
    page = parts.page(f"{exp.meta.get('name', exp.root.name)} - medsweep report", body)
    path = exp.root / "report.html"
    _write_text(path, page)
    return str(path)


def load_experiment(experiment_dir: str | os.PathLike) -> Experiment:
    root = Path(experiment_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"experiment folder {root} does not exist; pass runs/<name>")
    meta = _read_json(root / "search.json") or {}
    trials, history = _read_rows(root / "trials.parquet"), _read_rows(root / "history.parquet")
    starts = {}
    for h in history:
        if finite(h.get("timestamp")) and finite(h.get("time_total_s")):
            start = h["timestamp"] - h["time_total_s"]
            starts[h["trial_id"]] = min(start, starts.get(h["trial_id"], math.inf))
    trials.sort(key=lambda t: starts.get(t.get("trial_id"), math.inf))  # stable: else as stored
    return Experiment(root, meta, trials, history, _read_json(root / "test_metrics.json"))


def _guarded(section: Callable[[Experiment], str], exp: Experiment) -> str:
    try:
        return section(exp)
    except Exception as err:  # one broken section must not cost the whole report
        log.warning("report section %s failed", section.__name__, exc_info=True)
        return parts.box("error", f"This section could not be built: {type(err).__name__}: {err}")


# ---- sections ------------------------------------------------------------------------------


def _header(exp: Experiment) -> str:
    m = exp.meta
    counts = Counter(t.get("status") or "unknown" for t in exp.trials)
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
    wall = m.get("wall_time_s")
    if not finite(wall) and finite(m.get("started_at")) and finite(m.get("finished_at")):
        wall = m["finished_at"] - m["started_at"]
    facts = [
        ("task", f"{m.get('task', 'not recorded')} ({m.get('kind', 'kind not recorded')})"),
        ("metric", f"{exp.metric} ({exp.mode})"),
        ("searcher", f"{m.get('searcher', 'not recorded')}, seed {m.get('seed', '-')}"),
        ("trials", f"{len(exp.trials)}: {status}"),
        ("epochs per trial", m.get("epochs", "not recorded")),
        ("wall time", parts.duration(wall)),
        ("started", _clock(m.get("started_at"))),
    ]
    rows = [[k, v] for k, v in facts]
    return (
        f"<h1>{html.escape(str(m.get('name', exp.root.name)))}</h1>"
        f"<p class='note'>medsweep experiment report for {html.escape(str(exp.root))}</p>"
        f"{parts.table(None, rows)}{_splits(m.get('split_counts'))}"
    )


def _splits(counts: dict | None) -> str:
    if not counts:
        return parts.note("Dataset split sizes: not available (not recorded in search.json).")
    splits = list(counts)
    classes = list(dict.fromkeys(c for s in splits for c in counts[s]))
    rows = [[c, *(counts[s].get(c, 0) for s in splits)] for c in classes]
    rows.append(["total", *(sum(counts[s].values()) for s in splits)])
    out = "<h3>Dataset split sizes</h3>" + parts.table(["class", *splits], rows)
    small = {c: n for c, n in counts.get("val", {}).items() if n < SMALL_VAL}
    if small:
        listed = ", ".join(f"{c} ({n})" for c, n in small.items())
        out += parts.box(
            "warn",
            f"Small data: {len(small)} class(es) have fewer than {SMALL_VAL} validation "
            f"examples (positives, for a label): {listed}. Validation metrics (and so the "
            "search's ranking) are noisy for them; differences between trials may be chance.",
        )
    return out


def _search(exp: Experiment) -> str:
    out = ["<h2>The search</h2>"]
    if not exp.trials:
        return out[0] + parts.note("No trials recorded (trials.parquet missing or empty).")
    out.append("<h3>Best so far</h3>" + _best_so_far(exp))
    out.append("<h3>Searched knobs</h3>" + _parallel(exp))
    out.append("<h3>Parameter importances</h3>" + _importances(exp))
    out.append("<h3>Learning curves</h3>" + _curves(exp))
    out.append("<h3>All trials</h3>" + _trial_table(exp))
    return "\n".join(out)


def _best_so_far(exp: Experiment) -> str:
    values = [exp.value(t) for t in exp.trials]
    if not any(map(math.isfinite, values)):
        return parts.note(f"Not available: no trial reported a finite {exp.metric}.")
    events = [h for h in exp.history if finite(h.get("timestamp"))]
    t0 = exp.meta.get("started_at")
    t0 = t0 if finite(t0) else min((h["timestamp"] for h in events), default=0)
    times = [h["timestamp"] - t0 for h in events]
    reported = [h[exp.metric] if finite(h.get(exp.metric)) else math.nan for h in events]
    png = parts.best_so_far(values, times, reported, exp.metric, exp.mode)
    return parts.img(png, "best so far")


def _parallel(exp: Experiment) -> str:
    knobs = [k for k in exp.knobs if any(t.get(f"config/{k}") is not None for t in exp.trials)]
    if not knobs:
        return parts.note("Not available: no searched knobs recorded.")
    configs = [{k: t.get(f"config/{k}") for k in knobs} for t in exp.trials]
    params = exp.meta.get("space", {}).get("parameters", {})
    log_knobs = {
        k
        for k in knobs
        if k == "lr" or infer_distribution(params.get(k)) in parts.LOG_DISTRIBUTIONS
    }
    values = [exp.value(t) for t in exp.trials]
    return parts.img(
        parts.parallel_coordinates(configs, knobs, log_knobs, values, exp.metric), "knobs"
    )


def _importances(exp: Experiment) -> str:
    configs = [{k: t.get(f"config/{k}") for k in exp.knobs} for t in exp.trials]
    values = [exp.value(t) for t in exp.trials]
    params = exp.meta.get("space", {}).get("parameters", {})
    try:
        scores = parts.param_importances(configs, values, params, exp.knobs, exp.mode)
    except ValueError as err:
        return parts.note(f"Not available: {err}")
    except Exception as err:  # optuna's evaluators raise assorted errors on degenerate studies
        return parts.note(
            f"Not available: optuna could not compute them ({type(err).__name__}: {err})"
        )
    return parts.img(parts.importances(scores), "importances") + parts.note(
        "fANOVA over the trials with a finite metric; trials stopped early by ASHA count with "
        "the best value they reached. With few trials these are rough."
    )


def _curves(exp: Experiment) -> str:
    top = exp.ranked()[:TOP_CURVES]
    stopped = [t for t in exp.trials if t.get("status") == "stopped_early"]
    curves = []
    for t in top:
        rows = exp.curve(t["trial_id"])
        curves.append({
            "label": f"{t['trial_id']} ({parts.fmt(exp.value(t))})",
            "epoch": [h.get("epoch") for h in rows],
            "metric": [parts.nan_if_missing(h.get(exp.metric)) for h in rows],
            "train_loss": [parts.nan_if_missing(h.get("train_loss")) for h in rows],
            "stopped": t.get("status") == "stopped_early",
        })  # fmt: skip
    out = ""
    if any(c["epoch"] for c in curves):
        out = parts.img(parts.learning_curves(curves, exp.metric), "learning curves")
        out += parts.note(
            f"The top {len(curves)} trials by {exp.metric}; dashed lines ending in x were "
            "stopped early by ASHA."
        )
    else:
        out = parts.note(
            "Learning curves: not available (no per-epoch history for the top trials)."
        )
    if stopped:
        listed = ", ".join(f"{t['trial_id']} ({parts.fmt(t.get('epochs_run'))} epochs run)"
                           for t in stopped)  # fmt: skip
        out += f"<p>Stopped early by ASHA ({len(stopped)}): {html.escape(listed)}</p>"
    return out


def _trial_table(exp: Experiment) -> str:
    winner = exp.winner()
    order = exp.ranked() + [t for t in exp.trials if not finite(t.get(exp.metric))]
    head = ["trial", "status", *exp.knobs, exp.metric, "best epoch", "epochs run", "wall time",
            "attr focus", "error"]  # fmt: skip
    folds = any(t.get("folds") for t in exp.trials)
    if folds:  # k-fold trials: the metric is the mean over folds; show its spread
        head.insert(head.index(exp.metric) + 1, "± std over folds")
    rows, classes = [], []
    for t in order:
        error = (t.get("error") or "").strip().splitlines()
        numbers = [t.get(exp.metric), t.get("best_epoch"), t.get("epochs_run")]
        if folds:
            numbers.insert(1, t.get(f"best/{exp.metric}_std"))
        rows.append([
            t["trial_id"], t.get("status"), *(parts.fmt(t.get(f"config/{k}")) for k in exp.knobs),
            *map(parts.fmt, numbers), parts.duration(t.get("wall_time_s")),
            parts.fmt(t.get("attr_focus")), error[0][:160] if error else "",
        ])  # fmt: skip
        classes.append("best" if t is winner else "")
    return f"<div class='scroll'>{parts.table(head, rows, classes)}</div>"


def _winner(exp: Experiment) -> str:
    best = exp.winner()
    if best is None:
        return "<h2>The winner</h2>" + parts.note(
            f"Not available: no trial has a finite {exp.metric}."
        )
    tid = best["trial_id"]
    config = [
        [k.split("/", 1)[1], parts.fmt(v)] for k, v in best.items() if k.startswith("config/")
    ]
    out = [
        f"<h2>The winner: trial {html.escape(tid)}</h2>",
        f"<p>{exp.metric} = {parts.fmt(best.get(exp.metric))} at epoch "
        f"{parts.fmt(best.get('best_epoch'))}; checkpoint: "
        f"<code>{html.escape(str(best.get('checkpoint_path')))}</code></p>",
        "<h3>Config</h3>" + parts.table(["setting", "value"], config),
        "<h3>Test split</h3>",
    ]
    result = ((exp.tests or {}).get("trials") or {}).get(tid)
    if result is None:
        missing = "no test_metrics.json entry for this trial; it is written after the search"
        out.append(parts.note(f"Test metrics: not available ({missing})."))
    else:
        out += [
            parts.metrics_table(result),
            parts.per_class_table(result),
            parts.confusion_html(result),
        ]
    out.append(_roc(exp, tid, result))
    out.append(_other_evaluated(exp, tid))
    return "\n".join(out)


def _roc(exp: Experiment, tid: str, result: dict | None) -> str:
    path = exp.root / tid / "test_predictions.npz"
    if not path.is_file():
        return parts.note("ROC curves: not available (no test_predictions.npz for this trial).")
    kind = exp.meta.get("kind") or (result or {}).get("kind", "multiclass")
    classes = exp.meta.get("classes") or list((result or {}).get("per_class", {}))
    try:
        with np.load(path) as npz:
            curves = parts.roc_curves(kind, npz["labels"], npz["probs"], classes)
    except (OSError, KeyError, ValueError, IndexError) as err:  # unreadable, or not this task's
        return parts.note(f"ROC curves: not available ({path.name} does not fit: {err}).")
    if not curves:
        return parts.note("ROC curves: not available (no class has both positives and negatives).")
    return "<h4>ROC curves</h4>" + parts.img(parts.roc_figure(curves), "ROC")


def _other_evaluated(exp: Experiment, tid: str) -> str:
    others = {k: v for k, v in ((exp.tests or {}).get("trials") or {}).items() if k != tid}
    if not others:
        return ""
    names = ("accuracy", "balanced_accuracy", "auroc", "macro_f1")
    rows = [
        [k, *(parts.fmt((v.get(n) or {}).get("value")) for n in names)] for k, v in others.items()
    ]
    return "<h4>Other evaluated trials</h4>" + parts.table(["trial", *names], rows)


def _attribution(exp: Experiment) -> str:
    out = ["<h2>Attribution: where did the models look?</h2>"]
    order = exp.ranked() + [t for t in exp.trials if not finite(t.get(exp.metric))]
    focus = [t["attr_focus"] for t in exp.trials if finite(t.get("attr_focus"))]
    median = statistics.median(focus) if focus else math.nan
    shown, missing = 0, []
    for t in order:
        folder = exp.root / t["trial_id"] / "attribution"
        images = [
            (folder / f, title) for f, title in ATTRIBUTION_FILES.items() if (folder / f).is_file()
        ]
        if not images:
            missing.append(t["trial_id"])
            continue
        shown += 1
        out.append(_attribution_block(exp, t, images, median))
    if not shown:
        out.append(parts.note("Not available: no trial has attribution maps."))
    else:
        intro = (
            "Focus: the share of Integrated Gradients attribution on the foreground (Otsu mask) "
            f"of a fixed validation panel. Median over trials: {parts.fmt(median)}. A model "
            "focused far less than the others may be using background shortcuts."
        )
        out.insert(1, parts.note(intro))
    if missing and shown:
        out.append(parts.note(f"No attribution maps for: {', '.join(missing)}."))
    return "\n".join(out)


def _attribution_block(exp: Experiment, t: dict, images: list, median: float) -> str:
    focus = t.get("attr_focus")
    head = (f"<h3>{html.escape(t['trial_id'])}: {exp.metric} {parts.fmt(t.get(exp.metric))}, "
            f"focus {parts.fmt(focus)}</h3>")  # fmt: skip
    low = finite(focus) and math.isfinite(median) and focus < median - FOCUS_GAP
    if t.get("attr_focus_warning") is True or low:
        text = (
            f"Low focus: {parts.fmt(focus)} against a median of {parts.fmt(median)}. Check the "
            "maps: this model may rely on the background."
        )
        head += parts.box("warn", text)
    cells = []
    for path, title in images:
        data = path.read_bytes()
        if data.startswith(parts.PNG_MAGIC):
            alt = f"{title}, trial {t['trial_id']}"
            cells.append(f"<div><b>{title}</b>{parts.img(data, alt)}</div>")
        else:
            cells.append(parts.note(f"{path.name} is not a PNG; not embedded."))
    return head + f"<div class='pair'>{''.join(cells)}</div>"


def _clock(unix_s) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_s)) if finite(unix_s) else "-"


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("could not read %s; treating it as missing", path, exc_info=True)
        return None


def _read_rows(path: Path) -> list[dict]:
    from search.experiment.tables import read_table

    if not path.is_file():
        return []
    try:
        return read_table(str(path))
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        log.warning("could not read %s; treating it as missing", path, exc_info=True)
        return []


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))  # a reader never sees half a report
