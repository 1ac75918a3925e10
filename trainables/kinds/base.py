"""The interface every task kind answers, and what all kinds share.

A kind sees labels in their stored layout and probabilities as the model's outputs after the
kind's activation. `indicators` turns stored labels into one 0/1 column per class (binary: two
columns, negative and positive), the common view for counts, panels, curves and test figures.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

THRESHOLD = 0.5
"""Probability at or above which a sigmoid output counts as positive (unless a threshold
chosen on validation is given: `trainables.calibration`)."""
POS_WEIGHT_CAP = 10.0
"""The largest raw `pos_weight` (n_neg / n_pos) ** power before normalisation: beyond it a
handful of positives would dominate every batch's gradient (ChestMNIST's rarest label reaches
hundreds at power 1), so the learning rate and the power would stand in for each other."""
log = logging.getLogger("medsweep")
_WARNED: set[str] = set()


class Kind:
    """What follows from the kind of a task's labels; subclasses fill in the abstract parts."""

    name: ClassVar[str]
    """Registry key, the value of `Task.kind` and of a checkpoint's `kind`."""
    explains: ClassVar[str]
    """What attribution maps explain, in words (for docstrings, logs and the report)."""
    exclusive: ClassVar[bool] = True
    """Exactly one class per image (one-hot indicators): accuracy counts images, the confusion
    matrix is K x K and a panel is grouped by class. False: each label is its own yes/no."""

    # --- layout --------------------------------------------------------------------------
    def num_outputs(self, n_classes: int) -> int:
        """Width of the model's last layer."""
        return n_classes

    def label_width(self, n_classes: int) -> int:
        """Columns of the stored labels."""
        return 1

    def label_max(self, n_classes: int) -> int:
        """The largest value a stored label may hold."""
        return n_classes - 1

    def label_min(self, n_classes: int) -> int:
        """The smallest value a stored label may hold (multilabel: -1, an unknown label)."""
        return 0

    def truth(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """(N, n_classes) int8 1/0, or -1 where unknown (multilabel): `known_columns`' input."""
        return self.indicators(labels, n_classes).astype(np.int8)

    def indicators(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """(N, n_classes) bool: image i belongs to (or is positive for) class c."""
        ids = class_ids(labels)
        if ids.min(initial=0) < 0 or ids.max(initial=0) >= n_classes:
            raise ValueError(
                f"labels hold class ids outside 0..{n_classes - 1} ({n_classes} classes)"
            )
        return np.eye(n_classes, dtype=bool)[ids]

    def class_counts(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """Images per class (multilabel: positives per label), int64 (n_classes,)."""
        return self.indicators(labels, n_classes).sum(axis=0).astype(np.int64)

    def score_columns(self, probs: np.ndarray) -> np.ndarray:
        """(N, n_classes) score per indicator column (binary: 1 - p and p)."""
        return np.asarray(probs, np.float64)

    def auroc_columns(self, n_classes: int) -> list[int]:
        """The indicator columns whose AUROC makes the headline figure."""
        return list(range(n_classes))

    # --- operating point and calibration (trainables.calibration) -------------------------
    def choose_threshold(self, y_ind: np.ndarray, s_ind: np.ndarray, rule) -> object:
        """The threshold chosen on validation indicators and score columns, as
        `predicted_columns` takes it, by `rule(truth, scores) -> float` applied to each
        thresholded column (`trainables.calibration` supplies it); None: no threshold (one
        class per image: the argmax)."""
        return None

    def threshold_record(self, threshold, class_names: list[str]) -> object:
        """The threshold as test_metrics.json shows it (None where the argmax decides)."""
        return None

    def calibration_pairs(
        self, y_ind: np.ndarray, s_ind: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(confidence, 0/1 outcome) pairs the ECE bins: here the top-label confidence (the
        largest probability) and whether that class is the true one (Guo et al. 2017)."""
        top = s_ind.argmax(axis=1)
        return s_ind.max(axis=1), y_ind[np.arange(len(y_ind)), top]

    # --- training ------------------------------------------------------------------------
    def class_weights(self, labels: np.ndarray, n_classes: int, power: float) -> torch.Tensor:
        """Loss weights from the training labels (see the subclasses)."""
        raise NotImplementedError

    def make_loss(self, weights: torch.Tensor | None = None) -> torch.nn.Module:
        raise NotImplementedError

    def loss_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The tensor `make_loss()` expects for stored labels."""
        return labels.reshape(len(labels), -1).float()

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """Sigmoid (softmax for multiclass) of the logits, float32 numpy."""
        return logits.detach().float().sigmoid().cpu().numpy()

    def predictions(self, probs: np.ndarray) -> np.ndarray:
        """Predicted labels: class ids (N,) or 0/1 per label (N, L)."""
        raise NotImplementedError

    def metrics(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        """`acc`, `f1` (macro) and `auc` of one split; AUROC NaN when undefined, never raises."""
        raise NotImplementedError

    def models(self) -> tuple[str, ...]:
        """The model names that fit this kind (`trainables.models`): classifiers, one output
        per class or label."""
        from trainables.models import MODELS

        return tuple(MODELS)

    def unused_knobs(self) -> tuple[str, ...]:
        """Training settings that change nothing for this kind (a space that searches them
        is told so, and they are not searched: `search.driver.space.dead_knobs`)."""
        return ("bce_weight", "dice_weight")

    def validation_figures(self) -> tuple[str, ...]:
        """What a trial reports for the validation split every epoch, each as `val_<name>`:
        the loss, `metrics`' figures and `ece` (the expected calibration error,
        `trainables.calibration.calibration_error`), so a search can optimise calibration."""
        return ("loss", "acc", "f1", "auc", "ece")

    # --- test evaluation (trainables.evaluation), in the indicator layout ------------------
    def test_columns(
        self, y_true: np.ndarray, scores: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(truth columns, score columns), both (N, n_classes), from test labels and scores as
        `test_inputs` gives them; a ValueError names the layout expected. Truth is the bool
        indicators, or int8 1/0/-1 where a label can be unknown (multilabel: -1 leaves that
        image out of that column's figures, `known_columns`)."""
        y = class_ids(y_true)
        check_fit(y, scores, (len(y), n_classes), "(N,) class ids and (N, K) probabilities")
        return self.indicators(y, n_classes), self.score_columns(scores)

    def predicted_columns(self, scores: np.ndarray, threshold=None) -> np.ndarray:
        """(N, n_classes) bool predictions from score columns: the argmax class (`threshold`
        is what `choose_threshold` returns; unused here)."""
        return np.eye(scores.shape[1], dtype=bool)[scores.argmax(axis=1)]

    def test_extras(
        self,
        y_ind: np.ndarray,
        pred_ind: np.ndarray,
        tp: np.ndarray,
        fn: np.ndarray,
        fp: np.ndarray,
        tn: np.ndarray,
    ) -> dict:
        """Figures only this kind reports, from indicators and per-column confusion counts."""
        return {}

    # --- after the search ----------------------------------------------------------------
    def fold_strata(self, labels: np.ndarray) -> np.ndarray | None:
        """Class ids to stratify k-fold splits on, or None where folds cannot stratify."""
        return class_ids(labels)

    def explain_targets(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, list]:
        """(image rows, output index) pairs whose attribution maps are drawn."""
        raise NotImplementedError

    def caption(
        self, label_row: np.ndarray, prob_row: np.ndarray, target: int, classes: list[str]
    ) -> str:
        """One panel caption: the truth, the prediction and its probability."""
        pred = int(self.predictions(prob_row[None])[0])
        truth = classes[int(np.asarray(label_row).reshape(-1)[0])]
        return f"true: {truth} / pred: {classes[pred]} (p={self.confidence(prob_row, pred):.2f})"

    def confidence(self, prob_row: np.ndarray, pred: int) -> float:
        """The model's probability for its predicted class."""
        return float(prob_row[pred])

    def test_inputs(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y_true, scores) as `trainables.evaluation.evaluate_predictions` takes them."""
        return class_ids(labels), np.asarray(probs)

    def read_out(self, classes: list[str], probs: np.ndarray) -> dict:
        """One image's outputs: `predicted` names, `probabilities` {class: p} and `targets`
        [(output index, class, p)] to explain."""
        top = int(probs.argmax())
        return {
            "predicted": [classes[top]],
            "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
            "targets": [(top, classes[top], float(probs[top]))],
        }

    def readout_notes(self) -> list[str]:
        """How to read one image's probabilities, for the text of `search/explain.py`."""
        return []

    # --- per-pixel labels (segmentation); the defaults are those of image labels ----------
    def for_labels(self, images, masks):
        """Of two variants of one step, the one for this kind's labels: `images` where labels
        belong to whole images (the default), `masks` where each image has a mask, scored per
        pixel and explained as a mask (segmentation: `test_figures` replaces
        `trainables.evaluation`). Code outside the kinds that holds both variants (in
        `search/`, which the kinds cannot import) hands them here instead of testing the kind
        (tests/test_shape.py)."""
        return images

    def label_problem(self, images_shape: tuple, labels_shape: tuple, n_classes: int):
        """What is wrong with the stored labels' shape for these images, or None."""
        if len(labels_shape) != 2 or labels_shape[0] != images_shape[0]:
            return (
                f"labels have shape {tuple(labels_shape)}, expected ({images_shape[0]}, L) "
                "(one row per image)"
            )
        width = self.label_width(n_classes)
        if labels_shape[1] != width:
            return (
                f"labels have {labels_shape[1]} column(s), a {self.name} task with "
                f"{n_classes} classes expects {width}"
            )
        return None

    def panel_labels(self, labels: np.ndarray) -> np.ndarray:
        """The stored labels as `trainables.panels.choose_panel` groups them."""
        return labels

    def panel_rows(
        self, labels: np.ndarray, per_class: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Rows of `panel_labels`' (N, L) output for `trainables.panels.choose_panel`: up to
        `per_class` images per class in class order (one class per image), or per label in
        index order (`per_label_panel`)."""
        if not self.exclusive:
            return per_label_panel(labels.astype(bool), per_class, rng)
        if labels.shape[1] != 1:
            raise ValueError(
                f"kind={self.name!r} needs labels shaped (N, 1) with class ids, got "
                f"{labels.shape}; pass kind='multilabel' for one 0/1 column per label"
            )
        y = labels[:, 0]
        picks = [_pick(np.flatnonzero(y == c), per_class, rng) for c in np.unique(y)]
        return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)

    def loss_settings(self, cfg) -> dict:
        """Keyword arguments of `make_loss` taken from the trial's `TrainConfig`."""
        return {}

    def augment_keys(self) -> tuple[str, ...]:
        """kornia's `data_keys` for this kind's augmentation (`trainables.data.make_augment`):
        what moves together; here the image alone."""
        return ("input",)

    def augment_batch(self, augment, images: torch.Tensor, targets: torch.Tensor):
        """(images, loss targets) after augmentation; image labels do not move."""
        return augment(images), targets

    def test_figures(
        self, y_true, scores, class_names: list[str], n_boot: int = 1000, seed: int = 0
    ) -> dict:
        """A mask kind's test figures (image kinds use `trainables.evaluation`)."""
        raise NotImplementedError


def per_label_panel(positive: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `per_class` distinct images positive for each label; an image already chosen
    counts towards every label it is positive for, so the panel stays small."""
    chosen = np.zeros(len(positive), bool)
    for label in range(positive.shape[1]):
        need = per_class - int((chosen & positive[:, label]).sum())
        candidates = np.flatnonzero(positive[:, label] & ~chosen)
        chosen[_pick(candidates, need, rng)] = True
    return np.flatnonzero(chosen).astype(np.int64)


def _pick(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    n = max(0, min(n, len(candidates)))
    return np.sort(rng.choice(candidates, size=n, replace=False))


def class_ids(labels: np.ndarray) -> np.ndarray:
    """(N,) int64 class ids from (N,) or (N, 1) stored labels."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"labels must be (N,) or (N, 1) class ids, got shape {labels.shape}")
    return labels.astype(np.int64)


def check_fit(y: np.ndarray, scores: np.ndarray, want: tuple[int, ...], what: str) -> None:
    """A ValueError unless `scores` has shape `want` and as many rows as `y`."""
    if scores.shape != want or len(y) != len(scores):
        raise ValueError(
            f"labels {y.shape} and scores {scores.shape} do not fit: expected {what}, "
            f"scores {want} for the given class names"
        )


def known_columns(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive, known): both bool, from `Kind.test_columns`' truth columns (-1 = unknown)."""
    truth = np.asarray(truth)
    return truth > 0, truth >= 0


def ratio(num: float, den: float) -> float:
    """num / den, NaN where the denominator is 0."""
    return float(num / den) if den > 0 else float("nan")


def macro_auroc(y_ind: np.ndarray, s_ind: np.ndarray) -> tuple[float, list[int]]:
    """(mean one-vs-rest AUROC over the columns with positives and negatives, the columns
    left out); NaN when none has both. The same rule on validation and test. Truth columns may
    hold -1 (unknown): each column's AUROC uses the rows known there."""
    per_column = column_auroc(y_ind, s_ind)
    missing = np.flatnonzero(np.isnan(per_column)).tolist()
    aucs = per_column[~np.isnan(per_column)]
    return (float(np.mean(aucs)) if len(aucs) else float("nan")), missing


def column_auroc(truth: np.ndarray, s_ind: np.ndarray) -> np.ndarray:
    """AUROC per column over its known rows (truth 1/0, or -1 = unknown, left out); NaN
    where a column has no positive or no negative."""
    positive, known = known_columns(truth)
    auc = np.full(positive.shape[1], np.nan)
    for c in range(positive.shape[1]):
        y, rows = positive[known[:, c], c], known[:, c]
        if 0 < y.sum() < len(y):
            auc[c] = roc_auc_score(y, np.asarray(s_ind)[rows, c])
    return auc


def warn_missing(missing: list[int], where: str, names: list[str] | None = None) -> str | None:
    """Log (once per process and message) that AUROC leaves out classes `missing`; the line."""
    if not missing:
        return None
    shown = ", ".join(names[c] if names else f"class {c}" for c in missing)
    line = (
        f"{where}: no positive (or no negative) example of {shown}, so AUROC is "
        "undefined there; the macro AUROC averages the other classes"
    )
    if line not in _WARNED:
        _WARNED.add(line)
        log.warning("%s", line)
    return line


def safe_auc(y: np.ndarray, scores: np.ndarray, **kwargs) -> float:
    """roc_auc_score, or NaN where it is undefined (a class absent from `y`)."""
    try:
        return float(roc_auc_score(y, scores, average="macro", **kwargs))
    except ValueError:
        return float("nan")


def pos_weights(labels: np.ndarray, power: float) -> torch.Tensor:
    """(2, L) float32 for BCE: row 0 the per-label scale, row 1 the `pos_weight`.

    The raw pos_weight is `(n_neg / n_pos) ** power` (counts floored at 1), capped at
    POS_WEIGHT_CAP (logged when it bites); the scale makes each label's loss weight average 1
    over the training samples, so the loss scale (and the learning rate) means the same for
    every power. Unknown labels (-1, multilabel) count on neither side."""
    labels = np.asarray(labels).reshape(len(labels), -1)
    positives = (labels == 1).sum(axis=0).astype(np.float64)
    negatives = (labels == 0).sum(axis=0).astype(np.float64)
    raw = (np.maximum(negatives, 1.0) / np.maximum(positives, 1.0)) ** power
    capped = np.minimum(raw, POS_WEIGHT_CAP)
    if (raw > POS_WEIGHT_CAP).any():
        log.info(
            "pos_weight capped at %g for label(s) %s (raw %s)",
            POS_WEIGHT_CAP,
            np.flatnonzero(raw > POS_WEIGHT_CAP).tolist(),
            np.round(raw[raw > POS_WEIGHT_CAP], 1).tolist(),
        )
    scale = (positives + negatives) / np.maximum(positives * capped + negatives, 1e-12)
    return torch.as_tensor(np.stack([scale, capped]), dtype=torch.float32)


def weighted_bce(weights: torch.Tensor | None) -> torch.nn.Module:
    """BCEWithLogitsLoss from `pos_weights`' (2, L) tensor (None: unweighted)."""
    if weights is None:
        return torch.nn.BCEWithLogitsLoss()
    return torch.nn.BCEWithLogitsLoss(weight=weights[0], pos_weight=weights[1])


def inverse_frequency(counts: np.ndarray, power: float) -> np.ndarray:
    """`n ** -power`, counts floored at 1 so an absent class cannot divide by zero."""
    return np.maximum(counts.astype(np.float64), 1.0) ** -power
