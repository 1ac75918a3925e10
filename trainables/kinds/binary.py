"""Two classes, one logit: P(classes[1]) by a sigmoid, BCE with `pos_weight`."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from trainables.kinds.base import (
    THRESHOLD,
    Kind,
    check_fit,
    class_ids,
    pos_weights,
    ratio,
    safe_auc,
    weighted_bce,
)


class Binary(Kind):
    name = "binary"
    explains = "the positive logit, P(classes[1])"

    def num_outputs(self, n_classes: int) -> int:
        return 1

    def class_weights(self, labels: np.ndarray, n_classes: int, power: float) -> torch.Tensor:
        """`pos_weight = (n_neg / n_pos) ** power`, capped, with a scale so the weights
        average 1 over the training samples (`base.pos_weights`)."""
        return pos_weights(labels, power)

    def make_loss(self, weights: torch.Tensor | None = None) -> torch.nn.Module:
        return weighted_bce(weights)

    def predictions(self, probs: np.ndarray) -> np.ndarray:
        return (np.asarray(probs)[:, 0] >= THRESHOLD).astype(np.int64)

    def metrics(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        y, preds = class_ids(labels), self.predictions(probs)
        return {
            "acc": float(accuracy_score(y, preds)),
            "f1": float(f1_score(y, preds, average="macro", zero_division=0)),
            "auc": safe_auc(y, probs[:, 0]),
        }

    def score_columns(self, probs: np.ndarray) -> np.ndarray:
        p = np.asarray(probs, np.float64).reshape(len(probs), -1)[:, -1]
        return np.stack([1 - p, p], axis=1)

    def auroc_columns(self, n_classes: int) -> list[int]:
        return [1]  # the positive class's AUROC; the negative's is the same curve mirrored

    def test_columns(
        self, y_true: np.ndarray, scores: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores are P(class 1), (N,); an (N, 2) softmax is accepted and its column 1 used."""
        if scores.ndim == 2 and scores.shape[1] == 2:
            scores = scores[:, 1]
        y = class_ids(y_true)
        check_fit(y, scores, (len(y),), "(N,) 0/1 labels and (N,) P(class 1) scores")
        if n_classes != 2:
            raise ValueError(f"binary needs 2 class names (negative, positive), got {n_classes}")
        return self.indicators(y, n_classes), self.score_columns(scores)

    def predicted_columns(self, scores: np.ndarray, threshold=None) -> np.ndarray:
        """Positive where P(class 1) >= `threshold` (default THRESHOLD; a tie is positive)."""
        t = THRESHOLD if threshold is None else float(threshold)
        return np.eye(2, dtype=bool)[(scores[:, 1] >= t).astype(np.int64)]

    def choose_threshold(self, y_ind: np.ndarray, s_ind: np.ndarray, rule) -> float:
        """One threshold on P(class 1), chosen on validation by `rule`."""
        return float(rule(y_ind[:, 1], s_ind[:, 1]))

    def threshold_record(self, threshold, class_names: list[str]) -> float:
        return THRESHOLD if threshold is None else float(threshold)

    def calibration_pairs(
        self, y_ind: np.ndarray, s_ind: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """P(class 1) against being class 1: the reliability of the score thresholded."""
        return s_ind[:, 1], y_ind[:, 1]

    def test_extras(
        self,
        y_ind: np.ndarray,
        pred_ind: np.ndarray,
        tp: np.ndarray,
        fn: np.ndarray,
        fp: np.ndarray,
        tn: np.ndarray,
    ) -> dict:
        """The positive class's sensitivity and specificity (at the threshold used)."""
        return {
            "sensitivity": ratio(tp[1], tp[1] + fn[1]),
            "specificity": ratio(tn[1], tn[1] + fp[1]),
        }

    def explain_targets(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, list]:
        return np.arange(len(labels)), [0] * len(labels)

    def confidence(self, prob_row: np.ndarray, pred: int) -> float:
        return float(prob_row[0] if pred == 1 else 1 - prob_row[0])

    def test_inputs(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return class_ids(labels), np.asarray(probs).reshape(len(probs), -1)[:, -1]

    def read_out(self, classes: list[str], probs: np.ndarray) -> dict:
        p = float(np.asarray(probs).reshape(-1)[0])
        return {
            "predicted": [classes[int(p >= THRESHOLD)]],
            "probabilities": {classes[0]: 1 - p, classes[1]: p},
            "targets": [(0, classes[1], p)],
        }
