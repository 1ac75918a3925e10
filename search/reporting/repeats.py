"""The report's "Seed repeats" section: the best configuration retrained with new seeds.

    html = repeats_section(exp)   # exp: reporting.folder.Experiment; "" without --repeat-best

Reads the "repeats" record that `--repeat-best N` writes into test_metrics.json
(`search.driver.repeat`): one row per seed (validation metric at the best epoch, test
figures) and the mean +/- sample sd over seeds, beside the search's own margin between its
best two trials, so a reader sees how much of that margin one training seed can move.
"""

from __future__ import annotations

from search.reporting.folder import Experiment
from search.reporting.markup import box, fmt, note, table
from trainables.scores import is_finite

SHOWN = ("auroc", "accuracy", "balanced_accuracy", "macro_f1")
"""Test figures shown per seed (all of them are in test_metrics.json)."""


def repeats_section(exp: Experiment) -> str:
    record = (exp.tests or {}).get("repeats")
    if not record:
        return ""
    metric = record.get("metric", exp.metric)
    rows, summary = record.get("rows") or [], record.get("summary") or {}
    tests = record.get("test_summary") or {}
    shown = [k for k in SHOWN if k in tests]
    head = ["seed", "trial", "status", "best epoch", metric, *(f"test {k}" for k in shown)]
    body = [
        [
            r.get("seed"),
            r.get("trial_id"),
            r.get("status"),
            r.get("best_epoch"),
            fmt(r.get(metric)),
            *(fmt((r.get("test") or {}).get(k)) for k in shown),
        ]
        for r in rows
    ]
    means = [_mean_sd(summary.get(metric)), *(_mean_sd(tests.get(k)) for k in shown)]
    body.append(["mean +/- sd", "", "", "", *means])
    out = (
        f"<h2>Seed repeats</h2><p>The best trial ({record.get('source_trial')}, {metric} "
        f"{fmt(record.get('source_value'))}) retrained with {len(rows)} new seed(s), the same "
        "configuration and epochs; only the training seed differs.</p>"
        + table(head, body)
        + note(
            "sd: sample standard deviation over seeds; the CIs of the winner's test "
            "metrics above resample test images for one seed, this spread is over seeds."
        )
    )
    return out + _margin(exp, summary.get(metric) or {})


def _mean_sd(entry: dict | None) -> str:
    if not entry or not is_finite(entry.get("mean")):
        return "-"
    sd = entry.get("sd")
    return f"{fmt(entry['mean'])} +/- {fmt(sd)}" if is_finite(sd) else fmt(entry["mean"])


def _margin(exp: Experiment, val: dict) -> str:
    """Compare the search's winning margin with the seed-to-seed spread."""
    ranked = exp.ranked()
    sd = val.get("sd")
    if len(ranked) < 2 or not is_finite(sd):
        return ""
    gap = abs(exp.value(ranked[0]) - exp.value(ranked[1]))
    text = (
        f"The search's best two trials differ by {fmt(gap)} in {exp.metric}; one seed to "
        f"the next moves the best configuration by sd {fmt(sd)}."
    )
    if gap < sd:
        return box("warn", text + " The winner's margin is within seed noise.")
    return note(text)
