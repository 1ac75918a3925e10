"""The parts of the experiment report (`search/report.py`): figures as PNG bytes, the numbers
behind the two that need computing (ROC curves, parameter importances), and HTML pieces.

    png = best_so_far(trial_values, times, reported, "val_auc", "max")
    png = parallel_coordinates(configs, ["lr", "dropout"], {"lr"}, values, "val_auc")
    png = roc_figure(roc_curves("multiclass", labels, probs, classes))
    png = importances(param_importances(configs, values, space["parameters"], knobs, "max"))

Matplotlib's object API (`matplotlib.figure.Figure`, rendered by Agg, no pyplot state), so
nothing opens a window and nothing leaks between figures. Inputs are plain lists and arrays;
the report decides what to show and what to skip. HTML pieces escape every text they get.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from search.experiment.sweep import infer_distribution

DPI = 90
CMAP = "viridis"
LOG_DISTRIBUTIONS = ("log_uniform_values", "q_log_uniform_values", "log_uniform")
MIN_TRIALS = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tr.best td { background: #eaf6ea; }
img { max-width: 100%; display: block; margin: 0.6em 0; }
.note { color: #666; font-style: italic; }
.warn { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.4em 0.8em; }
.error { background: #fde8e8; border-left: 4px solid #c00; padding: 0.4em 0.8em; }
.pair { display: flex; flex-wrap: wrap; gap: 1em; } .pair > div { flex: 1 1 45%; }
.scroll { overflow-x: auto; }
"""


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def running_best(values: Sequence[float], mode: str) -> np.ndarray:
    """Best value so far at each position; NaNs are skipped (NaN until the first finite)."""
    v = np.asarray(values, float)
    return (np.fmax if mode == "max" else np.fmin).accumulate(v) if len(v) else v


def best_so_far(
    trial_values: Sequence[float],
    times: Sequence[float],
    reported: Sequence[float],
    metric: str,
    mode: str,
) -> bytes:
    """Left: each trial's best and the best so far, trials in start order. Right: every
    reported (per-epoch) value against wall time since the start, and the best so far."""
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    n = np.arange(1, len(trial_values) + 1)
    left.scatter(n, trial_values, s=16, color="0.55", label="trial's best", zorder=2)
    left.step(n, running_best(trial_values, mode), where="post", color="C0", label="best so far")
    left.set(xlabel="trial (in start order)", ylabel=metric, title="best so far per trial")
    order = np.argsort(times, kind="stable")
    t, v = np.asarray(times, float)[order], np.asarray(reported, float)[order]
    right.scatter(t, v, s=6, color="0.7", label="reported (one per epoch)", zorder=2)
    right.step(t, running_best(v, mode), where="post", color="C0", label="best so far")
    right.set(xlabel="wall time since start (s)", ylabel=metric, title="best so far in time")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if mode == "max" else "upper right")
    return png(fig)


def parallel_coordinates(
    configs: Sequence[dict],
    knobs: Sequence[str],
    log_knobs: set[str],
    values: Sequence[float],
    metric: str,
) -> bytes:
    """One line per trial across the knobs, each axis scaled to [0, 1], coloured by the
    metric (grey where it is missing). Log knobs are scaled on log10; text knobs by category."""
    columns = [_axis(np.array([c.get(k) for c in configs], object), k in log_knobs) for k in knobs]
    ys = np.array([col[0] for col in columns]).T  # (trials, knobs)
    v = np.asarray(values, float)
    finite = np.isfinite(v)
    norm = Normalize(*(np.nanmin(v), np.nanmax(v)) if finite.any() else (0, 1))
    fig = Figure(figsize=(max(6, 1.6 * len(knobs) + 2), 4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(knobs))
    for i in np.flatnonzero(~finite):
        ax.plot(x, ys[i], color="0.8", lw=1, ls="--", marker="o", ms=3)
    cmap = fig.colorbar(ScalarMappable(norm, CMAP), ax=ax, label=metric).cmap
    for i in np.flatnonzero(finite)[np.argsort(v[finite])]:  # best drawn last, on top
        ax.plot(x, ys[i], color=cmap(norm(v[i])), lw=1.5, alpha=0.9, marker="o", ms=3)
    for j, (_, lo, hi) in enumerate(columns):
        ax.axvline(j, color="0.3", lw=0.8)
        ax.text(j, -0.06, lo, ha="center", va="top", fontsize=8)
        ax.text(j, 1.06, hi, ha="center", va="bottom", fontsize=8)
    labels = [f"{k} (log)" if k in log_knobs else k for k in knobs]
    ax.set_xticks(x, labels)
    ax.tick_params(axis="x", pad=18)
    ax.set(ylim=(-0.15, 1.15), yticks=[], xlim=(-0.3, len(knobs) - 0.7))
    ax.set_title("one line per trial; axis ends: min and max tried", fontsize=10)
    return png(fig)


def _axis(raw: np.ndarray, log: bool) -> tuple[np.ndarray, str, str]:
    """Values scaled to [0, 1] (NaN where missing), and the labels of both ends."""
    numeric = all(
        isinstance(r, int | float) and not isinstance(r, bool) for r in raw if r is not None
    )
    if not numeric:
        cats = sorted({str(r) for r in raw if r is not None})
        idx = np.array([cats.index(str(r)) if r is not None else np.nan for r in raw], float)
        span = max(len(cats) - 1, 1)
        return idx / span, cats[0] if cats else "", cats[-1] if cats else ""
    a = np.array([np.nan if r is None else float(r) for r in raw])
    if log:
        a = np.where(a > 0, a, np.nan)
        a = np.log10(a)
    lo, hi = (np.nanmin(a), np.nanmax(a)) if np.isfinite(a).any() else (0.0, 0.0)
    scaled = (a - lo) / (hi - lo) if hi > lo else np.where(np.isfinite(a), 0.5, np.nan)
    ends = (10**lo, 10**hi) if log else (lo, hi)
    return scaled, f"{ends[0]:.3g}", f"{ends[1]:.3g}"


def importances(scores: dict[str, float]) -> bytes:
    """Horizontal bars, largest on top."""
    names = sorted(scores, key=scores.get)
    fig = Figure(figsize=(6, 0.45 * len(names) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [scores[n] for n in names], color="C0")
    for i, n in enumerate(names):
        ax.text(scores[n], i, f" {scores[n]:.2f}", va="center", fontsize=8)
    ax.set(xlabel="importance (fANOVA, sums to 1)", xlim=(0, 1.1))
    return png(fig)


def learning_curves(curves: Sequence[dict], metric: str) -> bytes:
    """Validation metric and training loss per epoch; each curve is a dict with `label`,
    `epoch`, `metric`, `train_loss` and `stopped` (drawn dashed, ended with an x)."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, c in enumerate(curves):
        style = {"color": f"C{i % 10}", "ls": "--" if c["stopped"] else "-", "marker": "."}
        for ax, key in ((left, "metric"), (right, "train_loss")):
            ax.plot(c["epoch"], c[key], label=c["label"], **style)
            if c["stopped"] and len(c["epoch"]):
                ax.plot(c["epoch"][-1], c[key][-1], "x", color=style["color"], ms=9)
    left.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    right.set(xlabel="epoch", ylabel="train_loss", title="training loss")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(fontsize=8)
    return png(fig)


def confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> bytes:
    """Counts, coloured by the share of each true class (row), rows true, columns predicted."""
    m = np.asarray(matrix, float)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(12, 2.5 + 0.6 * len(labels))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    for (i, j), count in np.ndenumerate(m):
        color = "white" if share[i, j] > 0.6 else "black"
        ax.text(j, i, f"{int(count)}", ha="center", va="center", color=color, fontsize=8)
    ticks, names = np.arange(len(labels)), [short(n) for n in labels]
    ax.set_xticks(ticks, names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    return png(fig)


def roc_curves(
    kind: str, labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """(name, fpr, tpr, auc) per class (one-vs-rest) or label; binary: the positive class.
    Classes with no positive or no negative test example are left out."""
    from sklearn.metrics import auc, roc_curve

    labels, probs = np.asarray(labels), np.asarray(probs, float)
    probs = probs.reshape(len(probs), -1)
    want = 1 if kind == "binary" else len(classes)
    if probs.shape[1] not in (want, 2 if kind == "binary" else want) or len(labels) != len(probs):
        raise ValueError(f"{kind} with {len(classes)} classes needs labels (N, ...) and probs "
                         f"(N, {want}); got {labels.shape} and {probs.shape}")  # fmt: skip
    if kind == "binary":
        y, s = labels.reshape(-1).astype(int), probs[:, -1]
        pairs = [(classes[-1], y == 1, s)]
    elif kind == "multilabel":
        pairs = [(c, labels[:, j] == 1, probs[:, j]) for j, c in enumerate(classes)]
    else:
        y = labels.reshape(-1).astype(int)
        pairs = [(c, y == j, probs[:, j]) for j, c in enumerate(classes)]
    out = []
    for name, positive, score in pairs:
        if 0 < positive.sum() < len(positive):
            fpr, tpr, _ = roc_curve(positive, score)
            out.append((str(name), fpr, tpr, float(auc(fpr, tpr))))
    return out


def roc_figure(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]]) -> bytes:
    outside = len(curves) > 6
    fig = Figure(figsize=(8 if outside else 5, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (name, fpr, tpr, area) in enumerate(curves):
        ax.plot(fpr, tpr, color=f"C{i % 10}", lw=1.5, label=f"{short(name)} (AUC {area:.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1)
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title="test ROC")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left" if outside else "lower right",
              bbox_to_anchor=(1.02, 1) if outside else None)  # fmt: skip
    return png(fig)


def param_importances(
    configs: Sequence[dict],
    values: Sequence[float],
    parameters: dict,
    knobs: Sequence[str],
    mode: str,
) -> dict[str, float]:
    """fANOVA importances (``optuna.importance.get_param_importances``) of an in-memory study
    rebuilt from the trials with a finite value; ``parameters`` is the W&B sweep config's
    ``parameters``. A ValueError saying why when fewer than 3 trials fit the space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {k: d for k in knobs if (d := optuna_distribution(parameters.get(k))) is not None}
    if not dists:
        raise ValueError("no searched knob has a distribution in search.json's space")
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for config, value in zip(configs, values, strict=True):
        if not finite(value):
            continue
        params = {k: _param(config.get(k), d) for k, d in dists.items()}
        try:
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=dists, value=value)
            )
        except (ValueError, TypeError):
            continue  # a missing value, or one outside the recorded space (the file changed)
    if len(study.trials) < MIN_TRIALS:
        raise ValueError(
            f"{len(study.trials)} completed trial(s) fit the space; need {MIN_TRIALS}"
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.get_param_importances(study, evaluator=evaluator)


def optuna_distribution(spec: dict | None):
    """The optuna distribution of one W&B sweep parameter; None for a constant."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dist = infer_distribution(spec)
    if dist in (None, "constant"):
        return None
    if dist == "categorical":
        return CategoricalDistribution(spec["values"])
    low, high = float(spec["min"]), float(spec["max"])
    if dist == "log_uniform":  # W&B: the bounds are natural logs
        return FloatDistribution(math.exp(low), math.exp(high), log=True)
    if dist == "int_uniform":
        return IntDistribution(int(low), int(high))
    return FloatDistribution(low, high, log=dist in LOG_DISTRIBUTIONS)


def _param(value, dist):
    from optuna.distributions import IntDistribution

    whole = isinstance(value, float) and value.is_integer()
    return int(value) if isinstance(dist, IntDistribution) and whole else value


def short(name: str, width: int = 24) -> str:
    """A label that fits a plot: long class names are cut, with an ellipsis."""
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def nan_if_missing(value) -> float:
    return float(value) if finite(value) else math.nan


# ---- HTML pieces ----------------------------------------------------------------------------


def metrics_table(r: dict) -> str:
    """The headline test figures with their 95% CIs, from `evaluate_predictions`."""
    rows = []
    for name in ("accuracy", "balanced_accuracy", "auroc", "macro_f1"):
        v = r.get(name) or {}
        ci = f"{fmt(v.get('ci_low'))} - {fmt(v.get('ci_high'))}"
        rows.append([name, fmt(v.get("value")), ci])
    for name in ("macro_precision", "macro_recall", "macro_specificity", "sensitivity",
                 "specificity", "exact_match"):  # fmt: skip
        if name in r:
            rows.append([name, fmt(r[name]), ""])
    boot = r.get("bootstrap") or {}
    return table(["metric", "value", "95% CI"], rows) + note(
        f"n = {r.get('n', '?')} test images; CIs: {boot.get('n_used', '?')} bootstrap resamples "
        f"({boot.get('n_skipped', 0)} skipped), percentile method."
    )


def per_class_table(r: dict) -> str:
    """Sensitivity, specificity, ... per class (or label)."""
    per = r.get("per_class") or {}
    keys = ("recall", "specificity", "precision", "f1", "auroc", "support")
    rows = [[c, *(fmt(v.get(k)) for k in keys)] for c, v in per.items()]
    head = ["class", "sensitivity", "specificity", "precision", "F1", "AUROC", "support"]
    return "<h4>Per class</h4>" + table(head, rows) if rows else ""


def confusion_html(r: dict) -> str:
    """A heatmap of the confusion matrix; for multi-label a table of 2x2 counts per label."""
    cm = r.get("confusion_matrix")
    if not cm:
        return note("Confusion matrix: not available.")
    if "matrix" in cm:
        return "<h4>Confusion matrix</h4>" + img(confusion(cm["matrix"], cm["labels"]), "cm")
    rows = [[label, *(n for row in m for n in row)] for label, m in cm.items()]
    return "<h4>Confusion per label</h4>" + table(["label", "TN", "FP", "FN", "TP"], rows)


def page(title: str, body: str) -> str:
    """A whole HTML document: inline CSS, no external resources."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n"
        "</body></html>\n"
    )


def table(head: list[str] | None, rows: list[list], row_classes: list[str] | None = None) -> str:
    """A table of escaped cells; no header row when `head` is None."""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head or [])
    lines = [f"<tr>{th}</tr>"] if head else []
    for i, row in enumerate(rows):
        cls = f" class='{row_classes[i]}'" if row_classes and row_classes[i] else ""
        cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        lines.append(f"<tr{cls}>{cells}</tr>")
    return f"<table>{''.join(lines)}</table>"


def img(data: bytes, alt: str) -> str:
    """PNG bytes as an <img> with a data URI."""
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def box(kind: str, text: str) -> str:
    """A highlighted paragraph; `kind` is "warn" or "error"."""
    return f"<p class='{kind}'>{html.escape(text)}</p>"


def fmt(v) -> str:
    """A cell value: 4 significant digits for floats, "-" for missing or NaN."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def duration(seconds) -> str:
    if not finite(seconds):
        return "not available"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"
