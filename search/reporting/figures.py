"""The report's figures, as PNG bytes: best so far, parallel coordinates, importances,
learning curves, confusion matrix, ROC, and the comparison page's best-so-far bands.

    png = best_so_far(trial_values, times, reported, "val_auc", "max")
    png = parallel_coordinates(configs, ["lr", "dropout"], {"lr"}, values, "val_auc")
    png = roc_figure(roc_curves("multiclass", labels, probs, classes))   # measures.roc_curves

Matplotlib's object API (`matplotlib.figure.Figure`, rendered by Agg, no pyplot state), so
nothing opens a window and nothing leaks between figures. Inputs are plain lists and arrays;
the sections decide what to show and what to skip.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from trainables.scores import better

DPI = 90
CMAP = "viridis"


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def running_best(values: Sequence[float], mode: str) -> np.ndarray:
    """Best value so far at each position (`trainables.scores.better`); non-finite values are
    skipped, NaN until the first finite one."""
    best, out = None, []
    for value in values:
        best = better(best, float(value), mode)
        out.append(math.nan if best is None else best)
    return np.asarray(out, float)


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
    ax.legend(
        fontsize=7,
        loc="upper left" if outside else "lower right",
        bbox_to_anchor=(1.02, 1) if outside else None,
    )
    return png(fig)


def short(name: str, width: int = 24) -> str:
    """A label that fits a plot: long class names are cut, with an ellipsis."""
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def y_range(means: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """Y limits that show where the curves settle: the 5th to 95th percentile of the mean
    values, widened to every curve's final value, plus a margin. A diverged first trial (a
    validation loss of 40) would otherwise flatten every curve into one line."""
    values = [np.asarray(m, dtype=float) for m in means]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    if not len(finite):
        return None
    lo, hi = np.percentile(finite, [5, 95])
    finals = [v[np.isfinite(v)][-1] for v in values if np.isfinite(v).any()]
    lo, hi = min(lo, *finals), max(hi, *finals)
    pad = 0.1 * (hi - lo) or 0.05 * max(abs(hi), 1e-9)
    return float(lo - pad), float(hi + pad)


def comparison_figure(
    curves: dict[str, tuple], xlabel: str, metric: str, from_zero: bool = False
) -> bytes:
    """Best so far per searcher: {searcher: (xs, mean, low, high)}, a mean line and a band
    (`search.reporting.anytime`: 95% over repeats), as steps; `from_zero` starts the x axis
    at 0."""
    fig = Figure(figsize=(7, 4), layout="tight")
    ax = fig.subplots()
    for searcher, (xs, mean, low, high) in curves.items():
        (line,) = ax.plot(xs, mean, label=searcher, drawstyle="steps-post")
        ax.fill_between(xs, low, high, alpha=0.2, color=line.get_color(), step="post")
    ax.set_xlabel(xlabel)
    if from_zero:
        ax.set_xlim(left=0.0)
    limits = y_range([mean for _, mean, _, _ in curves.values()])
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_ylabel(f"best {metric} so far")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
