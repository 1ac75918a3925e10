"""The report's operating-point and calibration section for the best trial on the test split.

    html = calibration_section(exp)     # exp: search.reporting.folder.Experiment

Reads test_metrics.json's `operating_point`, `at_default_threshold`, `validation`,
`calibration`, `shift` and `bootstrap` (written by `trainables.calibration.evaluate_split_pair`):
how the threshold was chosen, the test figures at it and at 0.5 beside validation's, what the
confidence intervals resample, ECE and a reliability diagram for validation and test, and a
warning when the test split looks shifted from validation.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from search.reporting import figures
from search.reporting.folder import Experiment
from search.reporting.markup import box, fmt, img, note, table

FIGURES = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "macro_f1", "auroc")


def calibration_section(exp: Experiment) -> str:
    head = "<h3>Operating point and calibration (best trial)</h3>"
    best = (exp.tests or {}).get("best_trial")
    result = ((exp.tests or {}).get("trials") or {}).get(best)
    if result is None:
        return head + note("Not available: no test_metrics.json entry for the best trial.")
    if "operating_point" not in result:
        return head + note("Not available: test_metrics.json predates operating points.")
    out = [head, _how(result), _figures_table(result), note(resampling_sentence(result))]
    shift = result.get("shift") or {}
    if shift.get("shifted"):
        figures = " and ".join(shift.get("figures", []))
        out.append(
            box(
                "warn",
                "The test split looks shifted from validation: at the chosen threshold the 95% "
                f"intervals of {figures} on validation and on test do not overlap, so "
                "validation figures (and the threshold) may not carry over.",
            )
        )
    for line in result.get("warnings") or []:
        out.append(box("warn", line))
    out.append(_calibration(result.get("calibration") or {}))
    return "\n".join(out)


def _how(r: dict) -> str:
    op = r["operating_point"]
    threshold = op.get("threshold")
    shown = (
        ", ".join(f"{k} {fmt(v)}" for k, v in threshold.items())
        if isinstance(threshold, dict)
        else fmt(threshold)
    )
    text = f"How the threshold was chosen: {op.get('how', 'not recorded')}"
    if threshold is None:
        text = "One class per image: the prediction is the most probable class (no threshold)"
    else:
        text += f"; threshold {shown}"
    temperature = (r.get("calibration") or {}).get("temperature")
    if temperature is not None:
        text += f"; probabilities divided by a temperature of {fmt(temperature)} fitted on "
        text += "the validation split's log-loss first"
    return f"<p>{text}.</p>"


def _figures_table(r: dict) -> str:
    columns = [
        ("test, chosen threshold", r),
        ("test, threshold 0.5", r.get("at_default_threshold")),
        ("validation, chosen threshold", r.get("validation")),
    ]
    columns = [(name, c) for name, c in columns if c]
    rows = [[name, *(_cell(c, name) for _, c in columns)] for name in FIGURES]
    return table(["figure", *(name for name, _ in columns)], rows)


def _cell(r: dict, name: str) -> str:
    v = r.get(name) if name not in ("sensitivity", "specificity") else None
    if not isinstance(v, dict):
        v = (r.get("operating") or {}).get(name)
    if not isinstance(v, dict):
        return "-"
    return f"{fmt(v.get('value'))} ({fmt(v.get('ci_low'))} - {fmt(v.get('ci_high'))})"


def resampling_sentence(r: dict) -> str:
    """One sentence: what the confidence intervals resample."""
    boot = r.get("bootstrap") or {}
    unit = boot.get("unit", "image")
    what = "images drawn with replacement"
    if unit == "patient":
        what = "whole patients drawn with replacement, each image counted as its patient is"
    return (
        f"95% intervals (in brackets): percentile bootstrap, {boot.get('n_used', '?')} "
        f"resamples of the {boot.get('n_units', '?')} {unit}s of each split ({what}); "
        "the model and the threshold are held fixed."
    )


def _calibration(cal: dict) -> str:
    splits = [(s, cal[s]) for s in ("val", "test") if isinstance(cal.get(s), dict)]
    if not splits:
        return note("Calibration: not available.")
    bins = splits[0][1].get("bins", "?")
    text = (
        f"Expected calibration error (ECE, {bins} equal-width bins; {cal.get('what', '')}): "
    ) + ", ".join(f"{s} {fmt(c.get('ece'))}" for s, c in splits)
    return f"<p>{text}.</p>" + img(reliability_figure(splits), "reliability diagram")


def reliability_figure(splits: list[tuple[str, dict]]) -> bytes:
    """Observed frequency against mean confidence per bin, one line per split."""
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, c in splits:
        points = zip(c.get("mean_confidence", []), c.get("frequency", []), strict=False)
        pairs = [(x, y) for x, y in points if x is not None and y is not None]
        if pairs:
            xs, ys = zip(*pairs, strict=True)
            ax.plot(xs, ys, marker="o", label=f"{name} (ECE {fmt(c.get('ece'))})")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean confidence",
        ylabel="observed frequency",
        title="reliability",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return figures.png(fig)
