"""`--operating-point` as a value: parsed without numpy or torch, so the command line's checks
stay fast (`trainables.calibration` chooses the threshold it describes).

    parse_operating_point("sens=0.95")   # OperatingPoint(rule="sens", value=0.95)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

RULES = ("youden", "fixed", "sens", "spec")
FORMS = "youden, a number in [0, 1] such as 0.5, sens=0.95 or spec=0.95"
DEFAULT = 0.5
"""The threshold used when a rule cannot be applied (one class only in validation)."""


@dataclass(frozen=True)
class OperatingPoint:
    """How a threshold is chosen on validation: `rule` and, for all but youden, `value`."""

    rule: str
    value: float | None = None

    def describe(self) -> str:
        """One sentence on how the threshold was chosen (for the report and the JSON)."""
        if self.rule == "youden":
            return (
                "threshold chosen on the validation split to maximise Youden's J "
                "(sensitivity + specificity - 1)"
            )
        if self.rule == "fixed":
            return f"fixed threshold {self.value:g} (not tuned on validation)"
        if self.rule == "sens":
            return f"highest threshold whose validation sensitivity is at least {self.value:g}"
        return (
            f"lowest threshold whose validation specificity is at least {self.value:g} "
            "(the best sensitivity at that specificity)"
        )


def parse_operating_point(text: str | float | OperatingPoint) -> OperatingPoint:
    """`youden`, `0.5`, `sens=0.95` or `spec=0.95` as an OperatingPoint; ValueError otherwise."""
    if isinstance(text, OperatingPoint):
        return text
    raw = str(text).strip().lower()
    if raw == "youden":
        return OperatingPoint("youden")
    match = re.fullmatch(r"(sens|spec)\s*=\s*(.+)", raw)
    rule, number = (match.group(1), match.group(2)) if match else ("fixed", raw)
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"operating point {text!r} is not one of the accepted forms: {FORMS}")
    return OperatingPoint(rule, value)
