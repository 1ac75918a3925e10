"""The report's section on `--select` and `--ensemble K`: which trial the constraint picked
(or that none met it, and the closest), every trial's validation figures at its own threshold,
and the ensemble's test figures with CIs beside the best single trial's, with the paired
difference.

    html = selection_ensemble_section(exp)   # "" when the search used neither flag

Everything comes from test_metrics.json's `selection` and `ensemble` entries
(`search.experiment.deploy`).
"""

from __future__ import annotations

import html

from search.reporting.folder import Experiment
from search.reporting.markup import box, fmt, note, table

SHOWN = ("sensitivity", "specificity", "ppv", "npv", "ece", "auroc", "threshold")
COMPARED = ("auroc", "accuracy", "balanced_accuracy", "macro_f1")


def selection_ensemble_section(exp: Experiment) -> str:
    tests = exp.tests or {}
    if "selection" not in tests and "ensemble" not in tests:
        return ""
    out = ["<h2>Model selection</h2>"]
    if "selection" in tests:
        out.append(_selection(exp, tests["selection"]))
    if "ensemble" in tests:
        out.append(_ensemble(tests))
    return "\n".join(out)


def _selection(exp: Experiment, sel: dict) -> str:
    head = f"<h3>Constraint {html.escape(str(sel.get('constraint')))} on validation</h3>"
    line = sel.get("line") or ""
    verdict = note(line) if sel.get("selected") else box("warn", line)
    values = {t["trial_id"]: t.get(exp.metric) for t in exp.trials}
    met = set(sel.get("met") or [])
    rows, classes = [], []
    for tid, figures in (sel.get("figures") or {}).items():
        shown = [
            _threshold(figures.get(k)) if k == "threshold" else fmt(figures.get(k)) for k in SHOWN
        ]
        rows.append([tid, fmt(values.get(tid)), *shown, "yes" if tid in met else "no"])
        classes.append("best" if tid == sel.get("selected") else "")
    head_row = ["trial", exp.metric, *SHOWN, "meets it"]
    return head + verdict + table(head_row, rows, classes)


def _threshold(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    return fmt(value) if value is not None else "argmax"


def _ensemble(tests: dict) -> str:
    ens = tests["ensemble"]
    if "skipped" in ens:
        return "<h3>Ensemble</h3>" + box("warn", f"No ensemble: {ens['skipped']}.")
    members = ", ".join(ens.get("members") or [])
    single_id = (ens.get("difference") or {}).get("against") or tests.get("best_trial")
    single = (tests.get("trials") or {}).get(single_id) or {}
    rows = [[name, _ci(ens.get(name)), _ci(single.get(name))] for name in COMPARED]
    for name in ("sensitivity", "specificity"):
        rows.append(
            [name, _ci((ens.get("operating") or {}).get(name)), _ci(_operating(single, name))]
        )
    rows.append(
        [
            "threshold (chosen on validation)",
            _threshold(ens.get("threshold")),
            _threshold(single.get("threshold")),
        ]
    )
    return (
        f"<h3>Ensemble of {len(ens.get('members') or [])} trials</h3>"
        f"<p>Members: {html.escape(members)} (equal weights; saved as "
        f"<code>{html.escape(str(ens.get('file')))}</code>, which search/predict.py and "
        "search/explain.py take like a checkpoint).</p>"
        + table(["test figure", "ensemble", f"trial {single_id}"], rows)
        + _difference(ens.get("difference") or {})
    )


def _operating(result: dict, name: str):
    return (result.get("operating") or {}).get(name)


def _ci(entry) -> str:
    if not isinstance(entry, dict):
        return fmt(entry)
    return f"{fmt(entry.get('value'))} ({fmt(entry.get('ci_low'))} to {fmt(entry.get('ci_high'))})"


def _difference(d: dict) -> str:
    if not d:
        return note("Difference to the best single trial: not available.")
    return note(
        f"Test AUROC, ensemble minus trial {d.get('against')}: {fmt(d.get('value'))} "
        f"(95% CI {fmt(d.get('ci_low'))} to {fmt(d.get('ci_high'))}; paired bootstrap, the "
        f"same resampled {d.get('unit')}s for both, {d.get('n_used')} of {d.get('n_boot')} "
        "resamples used)."
    )
