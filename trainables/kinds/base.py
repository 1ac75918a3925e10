"""The interface every task kind answers, and what all kinds share.

A kind sees labels in their stored layout and probabilities as the model's outputs after the
kind's activation. `indicators` turns stored labels into one 0/1 column per class (binary: two
columns, negative and positive), the common view for counts, panels, curves and test figures.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

THRESHOLD = 0.5
"""Probability at or above which a sigmoid output counts as positive."""


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

    # --- test evaluation (trainables.evaluation), in the indicator layout ------------------
    def test_columns(
        self, y_true: np.ndarray, scores: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(indicators, score columns), both (N, n_classes), from test labels and scores as
        `test_inputs` gives them; a ValueError names the layout expected."""
        y = class_ids(y_true)
        check_fit(y, scores, (len(y), n_classes), "(N,) class ids and (N, K) probabilities")
        return self.indicators(y, n_classes), self.score_columns(scores)

    def predicted_columns(self, scores: np.ndarray) -> np.ndarray:
        """(N, n_classes) bool predictions from score columns: the argmax class."""
        return np.eye(scores.shape[1], dtype=bool)[scores.argmax(axis=1)]

    def test_extras(
        self, y_ind: np.ndarray, pred_ind: np.ndarray, tp: np.ndarray, fn: np.ndarray,
        fp: np.ndarray, tn: np.ndarray,
    ) -> dict:  # fmt: skip
        """Figures only this kind reports, from indicators and per-column confusion counts."""
        return {}

    # --- after the search ----------------------------------------------------------------
    def fold_strata(self, labels: np.ndarray) -> np.ndarray | None:
        """Class ids to stratify k-fold splits on, or None where folds cannot stratify."""
        return class_ids(labels)

    def explain_targets(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, list]:
        """(image rows, output index) pairs whose attribution maps are drawn."""
        raise NotImplementedError

    def caption(self, label_row: np.ndarray, prob_row: np.ndarray, target: int,
                classes: list[str]) -> str:  # fmt: skip
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


def ratio(num: float, den: float) -> float:
    """num / den, NaN where the denominator is 0."""
    return float(num / den) if den > 0 else float("nan")


def safe_auc(y: np.ndarray, scores: np.ndarray, **kwargs) -> float:
    """roc_auc_score, or NaN where it is undefined (a class absent from `y`)."""
    try:
        return float(roc_auc_score(y, scores, average="macro", **kwargs))
    except ValueError:
        return float("nan")


def inverse_frequency(counts: np.ndarray, power: float) -> np.ndarray:
    """`n ** -power`, counts floored at 1 so an absent class cannot divide by zero."""
    return np.maximum(counts.astype(np.float64), 1.0) ** -power
