"""The report's attribution section: each trial's Grad-CAM and Integrated Gradients grids,
with the trials whose focus on the foreground is far below the others' flagged.

    html = attribution_section(exp)      # exp: search.reporting.folder.Experiment

The grids are the PNGs `search.experiment.after` writes into `<trial>/attribution/`, embedded
as they are; focus is trials.parquet's `attr_focus`.
"""

from __future__ import annotations

import html
import math
import statistics

from search.experiment.layout import ATTRIBUTION_DIR, ATTRIBUTION_TITLES, FOCUS_GAP
from search.reporting.folder import Experiment
from search.reporting.markup import PNG_MAGIC, box, fmt, img, note
from trainables.scores import is_finite


def attribution_section(exp: Experiment) -> str:
    out = ["<h2>Attribution: where did the models look?</h2>"]
    order = exp.ranked() + exp.unranked()
    focus = [t["attr_focus"] for t in exp.trials if is_finite(t.get("attr_focus"))]
    median = statistics.median(focus) if focus else math.nan
    shown, missing = 0, []
    for t in order:
        folder = exp.root / t["trial_id"] / ATTRIBUTION_DIR
        images = [
            (folder / f, title)
            for f, title in ATTRIBUTION_TITLES.items()
            if (folder / f).is_file()
        ]
        if not images:
            missing.append(t["trial_id"])
            continue
        shown += 1
        out.append(_attribution_block(exp, t, images, median))
    if not shown:
        out.append(note("Not available: no trial has attribution maps."))
    else:
        out.insert(1, note(focus_intro(exp, median)))
    if missing and shown:
        out.append(note(f"No attribution maps for: {', '.join(missing)}."))
    return "\n".join(out)


FOCUS_TEXT = {
    "otsu": "Focus: the share of Integrated Gradients attribution on the foreground (the cell, "
    "by Otsu's threshold) of a fixed validation panel.",
    "mask": "Focus: the share of Grad-CAM attribution on the true mask of a fixed validation "
    "panel.",
}


def focus_intro(exp: Experiment, median: float) -> str:
    """One sentence on what the focus score is for this task (none where it is undefined)."""
    known = exp.meta.get("foreground", "otsu" if math.isfinite(median) else None)
    if known not in FOCUS_TEXT or not math.isfinite(median):
        return (
            "No focus score: this task defines no foreground (Otsu's threshold separates a "
            "single cell from its background, not tissue or lungs from the rest of the "
            "image), so only the maps are shown."
        )
    return (
        f"{FOCUS_TEXT[known]} Median over trials: {fmt(median)}. A model focused far less "
        "than the others may be using background shortcuts."
    )


def _attribution_block(exp: Experiment, t: dict, images: list, median: float) -> str:
    focus = t.get("attr_focus")
    head = (
        f"<h3>{html.escape(t['trial_id'])}: {exp.metric} {fmt(t.get(exp.metric))}, "
        f"focus {fmt(focus)}</h3>"
    )
    low = is_finite(focus) and math.isfinite(median) and focus < median - FOCUS_GAP
    if t.get("attr_focus_warning") is True or low:
        text = (
            f"Low focus: {fmt(focus)} against a median of {fmt(median)}. Check the "
            "maps: this model may rely on the background."
        )
        head += box("warn", text)
    cells = []
    for path, title in images:
        data = path.read_bytes()
        if data.startswith(PNG_MAGIC):
            alt = f"{title}, trial {t['trial_id']}"
            cells.append(f"<div><b>{title}</b>{img(data, alt)}</div>")
        else:
            cells.append(note(f"{path.name} is not a PNG; not embedded."))
    return head + f"<div class='pair'>{''.join(cells)}</div>"
