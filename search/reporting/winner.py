"""The report's winner section: the best trial's config, its test figures with 95% CIs, the
confusion matrix and ROC curves, and any other trial evaluated on the test split.

    html = winner_section(exp)      # exp: search.reporting.folder.Experiment

Test figures are `trainables.evaluation.evaluate_predictions`' dicts from test_metrics.json;
ROC curves are drawn from `<trial>/test_predictions.npz`.
"""

from __future__ import annotations

import html

import numpy as np

from search.experiment.layout import TEST_PREDICTIONS_FILE
from search.experiment.tables import config_of
from search.reporting import figures, measures
from search.reporting.folder import Experiment
from search.reporting.markup import fmt, img, note, table
from trainables.evaluation import HEADLINE


def winner_section(exp: Experiment) -> str:
    best = exp.winner()
    if best is None:
        return "<h2>The winner</h2>" + note(f"Not available: no trial has a finite {exp.metric}.")
    tid = best["trial_id"]
    config = [[k, fmt(v)] for k, v in config_of(best).items()]
    out = [
        f"<h2>The winner: trial {html.escape(tid)}</h2>",
        f"<p>{exp.metric} = {fmt(best.get(exp.metric))} at epoch "
        f"{fmt(best.get('best_epoch'))}; checkpoint: "
        f"<code>{html.escape(str(best.get('checkpoint_path')))}</code></p>",
        "<h3>Config</h3>" + table(["setting", "value"], config),
        "<h3>Test split</h3>",
    ]
    result = ((exp.tests or {}).get("trials") or {}).get(tid)
    if result is None:
        missing = "no test_metrics.json entry for this trial; it is written after the search"
        out.append(note(f"Test metrics: not available ({missing})."))
    else:
        out += [metrics_table(result), per_class_table(result), confusion_html(result)]
    out.append(_roc(exp, tid, result))
    out.append(_other_evaluated(exp, tid))
    return "\n".join(out)


def _roc(exp: Experiment, tid: str, result: dict | None) -> str:
    path = exp.root / tid / TEST_PREDICTIONS_FILE
    if not path.is_file():
        return note(f"ROC curves: not available (no {TEST_PREDICTIONS_FILE} for this trial).")
    kind = exp.meta.get("kind") or (result or {}).get("kind")
    if kind is None:
        return note("ROC curves: not available (the task's kind is not recorded).")
    classes = exp.meta.get("classes") or list((result or {}).get("per_class", {}))
    try:
        with np.load(path) as npz:
            curves = measures.roc_curves(kind, npz["labels"], npz["probs"], classes)
    except (OSError, KeyError, ValueError, IndexError) as err:  # unreadable, or not this task's
        return note(f"ROC curves: not available ({path.name} does not fit: {err}).")
    if not curves:
        return note("ROC curves: not available (no class has both positives and negatives).")
    return "<h4>ROC curves</h4>" + img(figures.roc_figure(curves), "ROC")


def _other_evaluated(exp: Experiment, tid: str) -> str:
    others = {k: v for k, v in ((exp.tests or {}).get("trials") or {}).items() if k != tid}
    if not others:
        return ""
    rows = [
        [k, *(fmt((v.get(n) or {}).get("value")) for n in HEADLINE)] for k, v in others.items()
    ]
    return "<h4>Other evaluated trials</h4>" + table(["trial", *HEADLINE], rows)


def metrics_table(r: dict) -> str:
    """The headline test figures with their 95% CIs, from `evaluate_predictions`."""
    rows = []
    for name in HEADLINE:
        v = r.get(name) or {}
        ci = f"{fmt(v.get('ci_low'))} - {fmt(v.get('ci_high'))}"
        rows.append([name, fmt(v.get("value")), ci])
    for name in (
        "macro_precision",
        "macro_recall",
        "macro_specificity",
        "sensitivity",
        "specificity",
        "exact_match",
    ):
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
        png = figures.confusion(cm["matrix"], cm["labels"])
        return "<h4>Confusion matrix</h4>" + img(png, "cm")
    rows = [[label, *(n for row in m for n in row)] for label, m in cm.items()]
    return "<h4>Confusion per label</h4>" + table(["label", "TN", "FP", "FN", "TP"], rows)
