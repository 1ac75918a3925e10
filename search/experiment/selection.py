"""Selection under a constraint: `--select "sensitivity>=0.95"` picks, on validation figures at
each trial's validation-chosen threshold, the best trial by the search metric among those
meeting the constraint.

    constraint = parse_constraint("sensitivity>=0.95", "binary")  # ValueError names choices
    figures = validation_figures("binary", 2, (labels, logits), "youden", False)
    choice = select_trial(rows, constraint, "val_auc", "max")   # rows: trial_id, metric, figures

The figures (`FIGURES`) come from the same rules as the test figures: the threshold is the
`--operating-point` rule on validation (after the fitted temperature under
`--temperature-scaling`: `trainables.calibration`); sensitivity, specificity, PPV and NPV are
taken over the columns the kind scores (`Kind.auroc_columns`: binary the positive class, else
the mean over classes or labels, one-vs-rest); ECE over the kind's confidence pairs. A kind whose
labels are masks (segmentation) has none. When no trial meets the constraint, the selection
names the closest (the smallest shortfall) and the search's own winner stays the model tested.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np

FIGURES = (
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "ece",
    "auroc",
    "balanced_accuracy",
)
"""The validation figures a constraint may name (image-label kinds)."""
FORM = re.compile(r"\s*([a-z_]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*")
EXAMPLE = '--select "sensitivity>=0.95" or --select "ece<=0.05"'


@dataclass(frozen=True)
class Constraint:
    """`figure op value`, e.g. sensitivity >= 0.95."""

    figure: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.figure}{self.op}{self.value:g}"

    def shortfall(self, figures: dict) -> float:
        """How far `figures` miss it (0: met; inf: the figure is undefined)."""
        x = figures.get(self.figure)
        if x is None or not math.isfinite(x):
            return math.inf
        gap = self.value - x if self.op == ">=" else x - self.value
        return max(0.0, gap)


@dataclass(frozen=True)
class Selection:
    """What `select_trial` decided: `selected` (None when no trial met the constraint),
    `closest` (the trial with the smallest shortfall, and it), `met` (ids meeting it)."""

    constraint: str
    selected: str | None
    closest: str | None
    shortfall: float | None
    met: list[str]
    figures: dict[str, dict]

    def as_record(self) -> dict:
        """For test_metrics.json and the report."""
        return asdict(self)

    def line(self) -> str:
        """One sentence for the log and the report."""
        if self.selected is not None:
            return (
                f"--select {self.constraint}: {len(self.met)} of {len(self.figures)} trials "
                f"meet it on validation; selected {self.selected}"
            )
        return (
            f"--select {self.constraint}: no trial meets it on validation; the closest is "
            f"{self.closest} (short by {self.shortfall:.3f}); the search's best trial is tested"
        )


def figures_for(kind: str) -> tuple[str, ...]:
    """The validation figures `kind` computes (none for mask labels)."""
    from trainables.kinds import get_kind

    return get_kind(kind).for_labels(images=FIGURES, masks=())


def parse_constraint(text: str, kind: str) -> Constraint:
    """`sensitivity>=0.95` as a Constraint; a ValueError (`<what>; <what to do>`) for another
    form, a figure `kind` does not compute, or a value outside [0, 1]."""
    match = FORM.fullmatch(str(text).lower())
    if not match:
        raise ValueError(f"--select {text!r} is not FIGURE>=X or FIGURE<=X; pass e.g. {EXAMPLE}")
    figure, op, number = match.groups()
    known = figures_for(kind)
    if figure not in known:
        choices = ", ".join(known) or "none (its labels are masks)"
        raise ValueError(
            f"--select: {figure!r} is not a validation figure of a {kind} task; "
            f"choose one of: {choices}"
        )
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--select {text!r}: {number} is not in [0, 1]; pass e.g. {EXAMPLE}")
    return Constraint(figure, op, value)


def check_after_flags(
    select: str | None, ensemble: int, trials: int, kind: str, test_top: int = 1
) -> None:
    """`--select` and `--ensemble` against the task's kind, `--trials` and `--test-top`,
    before Ray starts: a ValueError (`<what>; <what to do>`) for a mistake."""
    if (select or ensemble) and not test_top:
        raise ValueError(
            "--select and --ensemble choose the model(s) the test split is read for, and "
            "--test-top 0 reads none; drop --test-top 0 or those flags"
        )
    if select:
        parse_constraint(select, kind)
    if not ensemble:
        return
    if ensemble < 2:
        raise ValueError(f"--ensemble {ensemble}: an ensemble needs K >= 2; pass 2 or more, or 0")
    if ensemble > trials:
        raise ValueError(
            f"--ensemble {ensemble} is larger than --trials {trials}; pass K <= {trials}"
        )
    if not figures_for(kind):
        raise ValueError(f"--ensemble: a {kind} task's labels are masks; drop --ensemble")


def validation_figures(
    kind: str,
    n_classes: int,
    val: tuple[np.ndarray, np.ndarray],
    point="youden",
    temperature_scaling: bool = False,
) -> dict:
    """`FIGURES` of one checkpoint's validation (stored labels, logits) at the threshold
    `point` chooses there (after the fitted temperature when `temperature_scaling`), plus
    `threshold` and `temperature`."""
    import torch

    from trainables.calibration import fit_temperature
    from trainables.kinds import get_kind

    ops = get_kind(kind)
    temperature = None
    if temperature_scaling:
        targets = ops.loss_targets(torch.as_tensor(np.asarray(val[0])))
        temperature = fit_temperature(val[1], targets, ops.make_loss())
    logits = np.asarray(val[1], np.float32) / (temperature or 1.0)
    probs = ops.probabilities(torch.as_tensor(logits))
    return figures_at_threshold(kind, n_classes, val[0], probs, point) | {
        "temperature": temperature
    }


def figures_at_threshold(kind: str, n_classes: int, labels, probs, point="youden") -> dict:
    """`FIGURES` of (stored labels, probabilities) at the threshold `point` chooses on them,
    and `threshold` (None where the argmax decides)."""
    from trainables.calibration import choose_threshold, parse_operating_point, reliability
    from trainables.evaluation import to_jsonable
    from trainables.kinds import get_kind
    from trainables.kinds.base import column_auroc, known_columns

    ops, point = get_kind(kind), parse_operating_point(point)
    y, s = ops.test_inputs(np.asarray(labels), probs)
    truth, scores = ops.test_columns(y, np.asarray(s, np.float64), n_classes)
    threshold = ops.choose_threshold(truth, scores, lambda t, p: choose_threshold(t, p, point))
    predicted = ops.predicted_columns(scores, threshold)
    y_ind, known = known_columns(truth)
    cols = ops.auroc_columns(n_classes)
    counts = [((y_ind == a) & (predicted == b) & known).sum(axis=0)[cols] for a, b in _CELLS]
    tp, fn, fp, tn = (c.astype(np.float64) for c in counts)
    figures = {
        "sensitivity": _mean_ratio(tp, tp + fn),
        "specificity": _mean_ratio(tn, tn + fp),
        "ppv": _mean_ratio(tp, tp + fp),
        "npv": _mean_ratio(tn, tn + fn),
        "ece": reliability(*ops.calibration_pairs(truth, scores))["ece"],
        "auroc": _nanmean(column_auroc(truth, scores)[cols]),
    }
    figures["balanced_accuracy"] = (figures["sensitivity"] + figures["specificity"]) / 2
    return to_jsonable(figures | {"threshold": threshold})


_CELLS = ((True, True), (True, False), (False, True), (False, False))  # tp, fn, fp, tn


def _mean_ratio(num: np.ndarray, den: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nanmean(np.where(den > 0, num / np.maximum(den, 1), np.nan))


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def select_trial(rows: list[dict], constraint: Constraint, metric: str, mode: str) -> Selection:
    """The best trial by `metric` (`mode`) among `rows` (`trial_id`, `metric`, `figures`)
    whose figures meet `constraint`; when none does, the closest by shortfall."""
    from trainables.scores import ranked

    figures = {r["trial_id"]: r["figures"] for r in rows}
    meeting = [r for r in rows if constraint.shortfall(r["figures"]) == 0.0]
    best = ranked(meeting, metric, mode)
    met = [r["trial_id"] for r in best]
    short = {r["trial_id"]: constraint.shortfall(r["figures"]) for r in rows}
    closest = min(short, key=short.get) if short else None
    return Selection(
        constraint=str(constraint),
        selected=met[0] if met else None,
        closest=closest,
        shortfall=short[closest] if closest is not None else None,
        met=met,
        figures=figures,
    )
