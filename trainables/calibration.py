"""Operating point and calibration of sigmoid/softmax outputs, chosen and measured on validation.

    point = parse_operating_point("sens=0.95")         # OperatingPoint(rule="sens", value=0.95)
    t = choose_threshold(y_val, p_val, point)           # one label: 0/1 truth, P(positive)
    bins = reliability(confidence, outcome)             # equal-width bins, ECE
    T = fit_temperature(logits_val, targets_val, loss)  # LBFGS on the validation NLL

`--operating-point` takes `youden` (Youden's J = sensitivity + specificity - 1, maximised on
the validation ROC curve), a number in [0, 1] (a fixed threshold, e.g. 0.5), `sens=X` (the
highest threshold whose validation sensitivity is at least X) or `spec=X` (the lowest threshold
whose validation specificity is at least X, so the best sensitivity at that specificity).
The expected calibration error (ECE) is the sample-weighted mean gap between confidence and
observed frequency over 15 equal-width bins on [0, 1] (Guo et al. 2017); what counts as a
confidence and an outcome is the kind's (`Kind.calibration_pairs`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import roc_curve

from trainables.operating_point import (  # noqa: F401  (re-exported)
    DEFAULT,
    FORMS,
    RULES,
    OperatingPoint,
    parse_operating_point,
)

BINS = 15
"""Equal-width bins of the reliability diagram and the ECE."""


def choose_threshold(y: np.ndarray, p: np.ndarray, point: OperatingPoint) -> float:
    """The threshold (predict positive where p >= it) for one label's 0/1 truth `y` and
    scores `p`; DEFAULT when the rule needs both classes and `y` has one."""
    if point.rule == "fixed":
        return float(point.value)
    y, p = np.asarray(y).astype(bool), np.asarray(p, np.float64)
    if y.all() or not y.any():
        return DEFAULT
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf
    if point.rule == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if point.rule == "sens":
        return float(thresholds[int(np.flatnonzero(tpr >= point.value)[0])])
    return float(thresholds[int(np.flatnonzero(1 - fpr >= point.value)[-1])])


def reliability(confidence: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> dict:
    """The reliability diagram and ECE of `confidence` in [0, 1] against 0/1 `outcome`:
    per equal-width bin its count, mean confidence and observed frequency (None when empty)."""
    conf = np.clip(np.asarray(confidence, np.float64).ravel(), 0.0, 1.0)
    hit = np.asarray(outcome, np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    sum_conf = np.bincount(which, conf, minlength=bins)
    sum_hit = np.bincount(which, hit, minlength=bins)
    filled = count > 0
    mean_conf = np.where(filled, sum_conf / np.maximum(count, 1), np.nan)
    frequency = np.where(filled, sum_hit / np.maximum(count, 1), np.nan)
    gaps = np.abs(frequency - mean_conf)[filled] * count[filled]
    ece = float(gaps.sum() / count.sum()) if count.sum() else math.nan
    return {
        "ece": ece,
        "bins": bins,
        "binning": "equal-width",
        "edges": edges.tolist(),
        "count": count.tolist(),
        "mean_confidence": [None if math.isnan(v) else float(v) for v in mean_conf],
        "frequency": [None if math.isnan(v) else float(v) for v in frequency],
    }


def calibration_error(ops, labels: np.ndarray, probs: np.ndarray) -> float:
    """The ECE of one split's probabilities as the kind `ops` (a `trainables.kinds.Kind`)
    measures it after the search (`calibration_pairs`, `BINS` bins): the per-epoch `val_ece`."""
    y, scores = ops.test_inputs(labels, probs)
    scores = np.asarray(scores, np.float64)
    ind, cols = ops.test_columns(y, scores, ops.score_columns(scores).shape[1])
    return reliability(*ops.calibration_pairs(ind, cols))["ece"]


def fit_temperature(logits: np.ndarray, targets: torch.Tensor, loss_fn: torch.nn.Module) -> float:
    """The temperature T > 0 minimising `loss_fn(logits / T, targets)` (an unweighted NLL:
    cross-entropy or BCE), by LBFGS on log T; 1.0 when the fit does not improve the loss."""
    z = torch.as_tensor(np.asarray(logits, np.float32), dtype=torch.float64)
    targets = targets.to(torch.float64) if targets.is_floating_point() else targets
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(z / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.no_grad():
        before = float(loss_fn(z, targets))
    opt.step(closure)
    with torch.no_grad():
        after = float(loss_fn(z / log_t.exp(), targets))
    t = float(log_t.detach().exp())
    return t if math.isfinite(after) and after <= before and math.isfinite(t) else 1.0


def evaluate_split_pair(
    kind: str,
    class_names: list[str],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    point: str | OperatingPoint = "youden",
    temperature_scaling: bool = False,
    seed: int = 0,
    n_boot: int = 1000,
    groups: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> tuple[dict, np.ndarray]:
    """Test figures at the operating point chosen on validation, and what they rest on.

    `val` and `test` are (stored labels, logits) of one checkpoint; `groups` their patient
    ids (None: images are resampled). Returns (the test dict of `evaluate_predictions` plus
    `operating_point`, `at_default_threshold` (kinds with a threshold), `validation`,
    `calibration` and `shift`; the test probabilities after any temperature)."""
    from trainables.evaluation import evaluate_predictions, to_jsonable
    from trainables.kinds import get_kind

    ops, point, names = get_kind(kind), parse_operating_point(point), list(class_names)
    temperature = None
    if temperature_scaling:
        targets = ops.loss_targets(torch.as_tensor(np.asarray(val[0])))
        temperature = fit_temperature(val[1], targets, ops.make_loss())
    probs = [
        ops.probabilities(torch.as_tensor(np.asarray(z, np.float32) / (temperature or 1.0)))
        for z in (val[1], test[1])
    ]
    (y_v, s_v), (y_t, s_t) = (
        ops.test_inputs(lab, p) for lab, p in zip((val[0], test[0]), probs, strict=True)
    )
    ind_v, cols_v = ops.test_columns(y_v, np.asarray(s_v, np.float64), len(names))
    ind_t, cols_t = ops.test_columns(y_t, np.asarray(s_t, np.float64), len(names))
    threshold = ops.choose_threshold(ind_v, cols_v, lambda y, p: choose_threshold(y, p, point))

    def at(y, s, t, g):
        return evaluate_predictions(kind, y, s, names, n_boot, seed, threshold=t, groups=g)

    result = at(y_t, s_t, threshold, groups[1])
    on_val = at(y_v, s_v, threshold, groups[0])
    result["validation"] = _summary(on_val)
    if threshold is not None:
        result["at_default_threshold"] = _summary(at(y_t, s_t, None, groups[1]))
    result["operating_point"] = _point_record(point, result["threshold"])
    result["calibration"] = {
        "temperature": temperature,
        "what": CALIBRATION_WHAT,
        "val": reliability(*ops.calibration_pairs(ind_v, cols_v)),
        "test": reliability(*ops.calibration_pairs(ind_t, cols_t)),
    }
    result["shift"] = shift_check(on_val, result)
    result["warnings"] = [
        line
        for split, r in (("validation", on_val), ("test", result))
        if (line := _missing_line(split, r))
    ]
    return to_jsonable(result), probs[1]


def _point_record(point: OperatingPoint, threshold) -> dict:
    """How the threshold was chosen, for test_metrics.json."""
    return {
        "rule": point.rule,
        "value": point.value,
        "how": point.describe(),
        "chosen_on": "validation",
        "threshold": threshold,
    }


CALIBRATION_WHAT = (
    f"expected calibration error over {BINS} equal-width bins of the confidence on [0, 1]: "
    "binary P(positive) against the truth, multi-label every label's probability pooled, "
    "multi-class the top-label confidence against being right"
)


def shift_check(val: dict, test: dict) -> dict:
    """Whether test's sensitivity or specificity interval is disjoint from validation's, at
    the same threshold: {"shifted", "figures": names whose intervals do not overlap}."""
    disjoint = []
    for name in ("sensitivity", "specificity"):
        v, t = (val.get("operating") or {}).get(name), (test.get("operating") or {}).get(name)
        lows = [x.get("ci_low") for x in (v or {}, t or {})]
        highs = [x.get("ci_high") for x in (v or {}, t or {})]
        if None in lows + highs or any(map(math.isnan, lows + highs)):
            continue
        if highs[0] < lows[1] or highs[1] < lows[0]:
            disjoint.append(name)
    return {"shifted": bool(disjoint), "figures": disjoint}


def _summary(r: dict) -> dict:
    """The headline, operating and threshold figures of one evaluation."""
    keys = (
        "n",
        "accuracy",
        "balanced_accuracy",
        "auroc",
        "macro_f1",
        "operating",
        "threshold",
        "sensitivity",
        "specificity",
        "exact_match",
        "auroc_missing",
    )
    out = {k: r[k] for k in keys if k in r}
    out["bootstrap_unit"] = (r.get("bootstrap") or {}).get("unit")
    return out


def _missing_line(split: str, r: dict) -> str | None:
    from trainables.kinds.base import warn_missing

    names = r.get("auroc_missing") or []
    return warn_missing(list(range(len(names))), split, names) if names else None
