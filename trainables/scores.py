"""Which score is better, for a metric's mode (`max` or `min`): the one rule everything uses.

    improves(0.91, 0.90, "max")              # True
    best = best_of(trials, "val_auc", "max")  # the row with the best finite score, or None
    order = ranked(trials, "val_auc", "max")  # rows with a finite score, best first
    i = best_index([0.8, 0.9, 0.9], "max")    # 1: the best epoch, the earliest on a tie

Non-finite scores (NaN, inf, None) never beat a finite one, and rank after every finite one.
A tie keeps the earlier score: the best epoch of a trial is the first epoch that reached its
best value, for Tune's tables, the folds, the searchers, W&B and the checkpoints alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

MODES = ("max", "min")


def is_finite(value) -> bool:
    """A real number that is neither NaN nor infinite (None and strings are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def improves(score: float | None, best: float | None, mode: str) -> bool:
    """Whether `score` beats `best`; the first score always counts, a non-finite one only first."""
    _check_mode(mode)
    if not is_finite(score):
        return best is None
    if best is None or not is_finite(best):
        return True
    return score > best if mode == "max" else score < best


def sort_key(score: float | None, mode: str) -> float:
    """A key where larger is better for either mode; non-finite scores get -inf."""
    _check_mode(mode)
    if not is_finite(score):
        return -math.inf
    return float(score) if mode == "max" else -float(score)


def ranked(rows: Iterable[Mapping], key: str, mode: str) -> list:
    """Rows whose `key` is finite, best first (ties keep their order)."""
    usable = [r for r in rows if is_finite(r.get(key))]
    return sorted(usable, key=lambda r: sort_key(r[key], mode), reverse=True)


def best_of(rows: Iterable[Mapping], key: str, mode: str):
    """The row with the best finite `key`, or None."""
    order = ranked(rows, key, mode)
    return order[0] if order else None


def best_index(values: Sequence, mode: str) -> int | None:
    """Index of the best finite value (the earliest on a tie), or None when none is finite."""
    best = None
    for i, value in enumerate(values):
        if is_finite(value) and (best is None or improves(value, values[best], mode)):
            best = i
    return best


def better(a: float | None, b: float | None, mode: str) -> float | None:
    """The better of two scores (a running best: `best = better(best, value, mode)`)."""
    return b if sort_key(b, mode) > sort_key(a, mode) else a


CHECKPOINT_SCORE = "checkpoint_score"
"""The result key Ray's checkpoint managers rank a trial's checkpoints by (`checkpoint_score`)."""


def checkpoint_score(value: float | None, improved: bool, mode: str) -> float:
    """What an epoch's checkpoint is ranked by: its score when it `improves` on every earlier
    epoch, else the worst score of `mode`. Ray keeps the best-ranked checkpoint (plus the
    latest) and, on equal ranks, the later one; ranking only improvements keeps the EARLIEST
    of tied best epochs, the epoch `best_index` and `trials.parquet` name."""
    _check_mode(mode)
    if improved:
        return float(value) if isinstance(value, int | float) else math.nan
    return -math.inf if mode == "max" else math.inf


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} must be one of {MODES}")
