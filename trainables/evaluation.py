"""Test-split evaluation of the best trial(s), after the search, with bootstrap CIs.

The driver predicts the test split with the best checkpoint and calls::

    result = evaluate_predictions("multiclass", y_true, probs, class_names)  # a plain dict
    write_json(out / "test_metrics.json", result)

Scores and labels by kind (``Kind.test_inputs`` makes them from a model's outputs, and
``Kind.test_columns`` checks them and turns them into one column per class, binary: two):

- "multiclass": ``y_true`` (N,) class ids (or MedMNIST's (N, 1)), ``scores`` (N, K)
  softmax probabilities; the prediction is the argmax.
- "binary": ``y_true`` (N,) 0/1, ``scores`` (N,) probability of class 1 (an (N, 2)
  softmax is accepted and its column 1 used); the prediction is ``p >= threshold`` (0.5
  unless a threshold is given).
- "multilabel": ``y_true`` (N, L) 0/1, ``scores`` (N, L) sigmoid probabilities; label j is
  predicted when ``p_j >= threshold_j`` (0.5 unless given).

After a search, `trainables.calibration.evaluate_split_pair` calls this for the test split at
the operating point chosen on validation and at 0.5, adds ECE and reliability bins, and flags a
test split whose sensitivity or specificity interval is disjoint from validation's.

Point estimates come from scikit-learn. The bootstrap (``n_boot`` resamples of the test
set with a seeded numpy Generator, 95% percentile intervals; with ``groups``, whole patients
are resampled and each image counts as often as its patient is drawn: ``bootstrap.unit``)
recomputes the headline figures for all resamples at once from resample weights: confusion
counts are one matrix product, AUROC is the Mann-Whitney statistic with tied scores counted
as half (what ``roc_auc_score`` computes). Resamples in which the AUROC is undefined (a
class with no positives or no negatives) are dropped for every figure and counted in
``bootstrap.n_skipped``.

Multi-label figures average over labels: accuracy is the mean per-label accuracy (the
MedMNIST ACC; ``exact_match`` is the subset accuracy), balanced accuracy the mean of
(sensitivity + specificity) / 2, AUROC the mean over labels with both classes present. AUROC is
the mean over the classes present for every kind (``auroc_missing`` names those left out).
"""

import json
import math
import os
import warnings
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
)

from trainables.files import write_atomic
from trainables.kinds import Kind, get_kind
from trainables.kinds.base import column_auroc, known_columns, ratio

HEADLINE = ("accuracy", "balanced_accuracy", "auroc", "macro_f1")
OPERATING = ("sensitivity", "specificity")
"""Bootstrapped at the threshold used, under `operating`: binary the positive class's, else
the mean over classes (labels)."""
LEVEL = 0.95
MAX_CELLS = 4_000_000  # resample weights held at once (n_boot chunk x N), bounds memory


def evaluate_predictions(
    kind: str,
    y_true: np.ndarray,
    scores: np.ndarray,
    class_names: list[str],
    n_boot: int = 1000,
    seed: int = 0,
    threshold=None,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """All test figures as a JSON-serialisable dict (undefined values are None).

    ``kind`` names a task kind (``trainables.kinds``). Keys: accuracy, balanced_accuracy,
    auroc, macro_f1 (each ``{"value", "ci_low", "ci_high"}``); macro_precision, macro_recall
    (= sensitivity), macro_specificity; per_class (precision, recall, specificity, f1,
    support, auroc per class or label); confusion_matrix (rows true, columns predicted;
    multi-label: ``[[tn, fp], [fn, tp]]`` per label); bootstrap (n_boot, n_used, n_skipped,
    seed, level, method, unit: "image" or "patient", n_units). Binary adds the positive
    class's sensitivity and specificity, multi-label adds exact_match (``Kind.test_extras``);
    ``operating`` holds sensitivity and specificity with CIs (`OPERATING`), ``threshold`` the
    threshold used (``threshold``: what ``Kind.choose_threshold`` returns; None: 0.5),
    ``auroc_missing`` the classes (labels) left out of the AUROC.
    ``groups``: one patient id per row; the bootstrap then resamples patients. A multi-label
    truth of -1 (unknown) leaves that image out of that label's figures.
    """
    ops = get_kind(kind)
    truth, pred_ind, s_ind = _prepare(ops, y_true, scores, class_names, threshold)
    y_ind, known = known_columns(truth)
    mcm = _confusion_counts(y_ind, pred_ind, known)
    tn, fp, fn, tp = (mcm[:, i, j].astype(float) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    per_auc = column_auroc(truth, s_ind)
    op_used = np.zeros(len(per_auc), bool)
    op_used[ops.auroc_columns(len(class_names))] = True  # binary: the positive class only
    auc_used = op_used & ~np.isnan(per_auc)
    point = _point(ops.exclusive, y_ind, pred_ind, tp, fn, fp, tn, per_auc[auc_used])
    point |= _operating(tp, fn, fp, tn, op_used)
    unit, index = _units(groups, len(y_ind))
    boot, n_used = _bootstrap(
        ops.exclusive, truth, pred_ind, s_ind, auc_used, n_boot, seed, index, op_used
    )
    result: dict[str, Any] = {"kind": ops.name, "n": len(y_ind)}
    for name in HEADLINE:
        result[name] = _interval(point[name], boot[name])
    result["operating"] = {name: _interval(point[name], boot[name]) for name in OPERATING}
    result["threshold"] = ops.threshold_record(threshold, list(class_names))
    result |= _per_class(tp, fn, fp, tn, per_auc, class_names)
    # an unknown label cannot make an image's exact match wrong
    result |= ops.test_extras(y_ind, np.where(known, pred_ind, y_ind), tp, fn, fp, tn)
    result["confusion_matrix"] = _confusion(ops.exclusive, y_ind, pred_ind, mcm, class_names)
    missing = [class_names[c] for c in np.flatnonzero(op_used & np.isnan(per_auc))]
    result["auroc_missing"] = missing
    n_units = int(index.max()) + 1 if index is not None else len(y_ind)
    result["bootstrap"] = _bootstrap_record(n_boot, n_used, seed, unit, n_units)
    return to_jsonable(result)


def _bootstrap_record(n_boot: int, n_used: int, seed: int, unit: str, n_units: int) -> dict:
    return {
        "n_boot": n_boot,
        "n_used": n_used,
        "n_skipped": n_boot - n_used,
        "seed": seed,
        "level": LEVEL,
        "method": "percentile",
        "unit": unit,
        "n_units": n_units,
    }


def _confusion_counts(y_ind: np.ndarray, pred_ind: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(classes, 2, 2) int64 `[[tn, fp], [fn, tp]]` per column over its known rows (what
    `multilabel_confusion_matrix` gives when every row is known)."""
    cells = [
        [~y_ind & ~pred_ind, ~y_ind & pred_ind],
        [y_ind & ~pred_ind, y_ind & pred_ind],
    ]
    return np.stack(
        [np.stack([(c & known).sum(axis=0) for c in row], axis=-1) for row in cells], axis=-2
    ).astype(np.int64)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (temp file in the same folder, then
    ``os.replace``). numpy values become Python ones, NaN and infinities null."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    write_atomic(path, text.encode())


def to_jsonable(obj: Any) -> Any:
    """numpy scalars and arrays to Python numbers and lists, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _prepare(kind: Kind, y_true, scores, class_names: list[str], threshold=None):
    """(truth, predictions, scores) with one column per class (binary: two), the layout of
    every figure, each (N, classes): bool truth (multi-label: int8 1/0/-1, -1 unknown:
    `known_columns`), bool predictions and float64 scores."""
    y_true, scores = np.asarray(y_true), np.asarray(scores, np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinity: did the model diverge?")
    y_ind, s_ind = kind.test_columns(y_true, scores, len(class_names))
    return y_ind, kind.predicted_columns(s_ind, threshold), s_ind


def _units(groups, n: int) -> tuple[str, np.ndarray | None]:
    """("patient", row -> patient index) when every row has a patient id, else ("image",
    None)."""
    if groups is None:
        return "image", None
    groups = np.asarray(groups).astype(str)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} ids for {n} rows; pass one id per row")
    if (groups == "").any():
        return "image", None
    return "patient", np.unique(groups, return_inverse=True)[1].reshape(-1)


def _operating(tp, fn, fp, tn, used: np.ndarray) -> dict[str, float]:
    """Sensitivity and specificity over the `used` columns (the mean where several)."""
    cols = np.flatnonzero(used)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column without positives
        sens = np.nanmean((tp / (tp + fn))[..., cols], axis=-1)
        spec = np.nanmean((tn / (tn + fp))[..., cols], axis=-1)
    return {"sensitivity": sens, "specificity": spec}


def _point(exclusive, y_ind, pred_ind, tp, fn, fp, tn, aucs) -> dict[str, float]:
    """The headline figures by scikit-learn: over images for one class per image
    (``exclusive``), the mean over labels otherwise."""
    if exclusive:
        y, pred = y_ind.argmax(axis=1), pred_ind.argmax(axis=1)
        labels = list(range(y_ind.shape[1]))
        accuracy = accuracy_score(y, pred)
        balanced = balanced_accuracy_score(y, pred)
        macro_f1 = f1_score(y, pred, labels=labels, average="macro", zero_division=0)
    else:  # per label over its known rows
        accuracy = float(np.mean((tp + tn) / np.maximum(tp + tn + fp + fn, 1)))
        balanced = float(np.nanmean(_balanced_per_label(tp, fn, fp, tn)))
        macro_f1 = float(np.mean(_f1(tp, fn, fp)))
    auroc = float(np.mean(aucs)) if len(aucs) else math.nan
    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "auroc": auroc,
        "macro_f1": float(macro_f1),
    }


def _f1(tp, fn, fp) -> np.ndarray:
    """F1 per column from its counts, 0 where it has no positive and no prediction."""
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def _per_class(tp, fn, fp, tn, per_auc, class_names) -> dict[str, Any]:
    """Per-class figures from the confusion counts and their unweighted means (0 where a
    class is never predicted; what `precision_recall_fscore_support(zero_division=0)` gives)."""
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    f1, support = _f1(tp, fn, fp), tp + fn
    specificity = np.array([ratio(a, a + b) for a, b in zip(tn, fp, strict=True)])
    per_class = {
        name: {
            "precision": precision[c],
            "recall": recall[c],
            "specificity": specificity[c],
            "f1": f1[c],
            "support": int(support[c]),
            "auroc": per_auc[c],
        }
        for c, name in enumerate(class_names)
    }
    return {
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_specificity": float(np.nanmean(specificity)) if len(specificity) else math.nan,
        "per_class": per_class,
    }


def _confusion(exclusive, y_ind, pred_ind, mcm, class_names) -> Any:
    """K x K counts for one class per image; one 2 x 2 matrix per label otherwise."""
    if not exclusive:
        return {name: mcm[c].tolist() for c, name in enumerate(class_names)}
    y, pred = y_ind.argmax(axis=1), pred_ind.argmax(axis=1)
    matrix = confusion_matrix(y, pred, labels=list(range(len(class_names))))
    return {"labels": list(class_names), "matrix": matrix.tolist()}


def _bootstrap(
    exclusive, truth, pred_ind, s_ind, auc_used, n_boot, seed, groups=None, op_used=None
):
    """Headline (and operating) figures for ``n_boot`` resamples of the images, or of whole
    patients (``groups``: row -> patient index): ({name: (n_used,) values}, n_used)."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    chunk = max(1, min(n_boot, MAX_CELLS // max(n, 1)))
    parts = []
    for start in range(0, n_boot, chunk):
        w = _resample_weights(rng, min(chunk, n_boot - start), n, groups)
        parts.append(_replicates(exclusive, w, truth, pred_ind, s_ind, auc_used, op_used))
    names = HEADLINE + OPERATING
    reps = {name: np.concatenate([p[name] for p in parts] or [[]]) for name in names}
    if auc_used.any():
        keep = ~np.isnan(reps["auroc"])
        reps = {name: values[keep] for name, values in reps.items()}
    return reps, len(reps["accuracy"])


def _resample_weights(
    rng: np.random.Generator, b: int, n: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """(n, b) counts: how often each test sample is drawn in each of b resamples; with
    ``groups`` (row -> patient index), patients are drawn and a row counts its patient's draws.

    One column per resample keeps the per-sample work (sorting by score, summing tied
    groups) on contiguous rows; float32 holds the counts exactly at half the memory."""
    units = n if groups is None else int(groups.max()) + 1
    idx = rng.integers(0, units, size=(b, units)) + units * np.arange(b)[:, None]
    counts = np.bincount(idx.ravel(), minlength=b * units).reshape(b, units)
    if groups is not None:
        counts = counts[:, groups]
    return np.ascontiguousarray(counts.T, dtype=np.float32)


def _replicates(
    exclusive, w, truth, pred_ind, s_ind, auc_used, op_used=None
) -> dict[str, np.ndarray]:
    """The headline figures for every column of resample weights ``w`` (N, b), as `_point`
    defines them for one class per image (``exclusive``) or per label (over its known rows),
    and `OPERATING` over the ``op_used`` columns (default all)."""
    y_ind, known = known_columns(truth)
    yf, pf, kf = y_ind.astype(w.dtype), pred_ind.astype(w.dtype), known.astype(w.dtype)
    cells = [yf * pf * kf, yf * (1 - pf) * kf, (1 - yf) * pf * kf, (1 - yf) * (1 - pf) * kf]
    tp, fn, fp, tn = ((w.T @ c).astype(np.float64) for c in cells)  # each (b, classes)
    total = w.sum(axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / (tp + fn)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        if exclusive:
            accuracy = tp.sum(axis=1) / total
            balanced = np.nanmean(recall, axis=1)
        else:
            accuracy = ((tp + tn) / (tp + tn + fp + fn)).mean(axis=1)
            balanced = np.nanmean(_balanced_per_label(tp, fn, fp, tn), axis=1)
    aucs = [_column_replicates(y_ind, known, s_ind, w, c) for c in np.flatnonzero(auc_used)]
    auroc = np.mean(aucs, axis=0, dtype=np.float64) if aucs else np.full(w.shape[1], np.nan)
    op_used = np.ones(y_ind.shape[1], bool) if op_used is None else op_used
    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "auroc": auroc,
        "macro_f1": f1.mean(axis=1),
        **_operating(tp, fn, fp, tn, op_used),
    }


def _column_replicates(y_ind, known, s_ind, w, c: int) -> np.ndarray:
    """`_weighted_auroc` of column `c` over its known rows."""
    if known[:, c].all():
        return _weighted_auroc(y_ind[:, c], s_ind[:, c], w)
    rows = known[:, c]
    return _weighted_auroc(y_ind[rows, c], s_ind[rows, c], w[rows])


def _balanced_per_label(tp, fn, fp, tn) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (tp / (tp + fn) + tn / (tn + fp)) / 2


def _weighted_auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC of scores ``s`` for 0/1 labels ``y`` under each column of sample weights ``w``
    (N, b): P(score of a positive > score of a negative), ties counting half. NaN for a
    resample with no positive or no negative weight."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    neg = neg[np.argsort(s[neg], kind="stable")]
    cum = np.zeros((len(neg) + 1, w.shape[1]), w.dtype)
    np.cumsum(w[neg], axis=0, out=cum[1:])  # cum[k]: weight of the k lowest negatives
    lower = np.searchsorted(s[neg], s[pos], "left")  # negatives scored below each positive
    lower_or_tied = np.searchsorted(s[neg], s[pos], "right")
    w_pos = w[pos]
    n_pos, n_neg = w_pos.sum(axis=0), cum[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (w_pos * (cum[lower] + cum[lower_or_tied])).sum(axis=0) / (2 * n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _interval(value: float, replicates: np.ndarray) -> dict[str, float]:
    replicates = replicates[~np.isnan(replicates)]
    if math.isnan(value) or not len(replicates):
        return {"value": value, "ci_low": math.nan, "ci_high": math.nan}
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return {"value": float(value), "ci_low": float(low), "ci_high": float(high)}
