"""Any number of labels per image out of L: one sigmoid per label, mean AUROC over labels."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from trainables.kinds.base import (
    THRESHOLD,
    Kind,
    check_fit,
    macro_auroc,
    pos_weights,
    warn_missing,
    weighted_bce,
)


class Multilabel(Kind):
    name = "multilabel"
    explains = "each true positive label"
    exclusive = False

    def label_width(self, n_classes: int) -> int:
        return n_classes

    def label_max(self, n_classes: int) -> int:
        return 1

    def indicators(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        labels = np.asarray(labels).reshape(len(labels), -1)
        if labels.shape[1] != n_classes or not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"multilabel labels must be (N, {n_classes}) and hold only 0 and 1 (one "
                f"column per label), got shape {labels.shape}"
            )
        return labels.astype(bool)

    def class_weights(self, labels: np.ndarray, n_classes: int, power: float) -> torch.Tensor:
        """`pos_weight = (n_neg / n_pos) ** power` per label, capped, with a per-label scale so
        each label's weights average 1 over the training samples (`base.pos_weights`)."""
        return pos_weights(labels, power)

    def make_loss(self, weights: torch.Tensor | None = None) -> torch.nn.Module:
        return weighted_bce(weights)

    def predictions(self, probs: np.ndarray) -> np.ndarray:
        return (np.asarray(probs) >= THRESHOLD).astype(np.int64)

    def metrics(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        y = labels.reshape(len(labels), -1).astype(np.int64)
        auc, missing = macro_auroc(y, np.asarray(probs))
        warn_missing(missing, "validation")
        preds = self.predictions(probs)
        return {
            "acc": float((preds == y).mean()),
            "f1": float(f1_score(y, preds, average="macro", zero_division=0)),
            "auc": auc,
        }

    def test_columns(
        self, y_true: np.ndarray, scores: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        check_fit(y_true, scores, (len(y_true), n_classes), "(N, L) 0/1 labels and (N, L) scores")
        return self.indicators(y_true, n_classes), self.score_columns(scores)

    def predicted_columns(self, scores: np.ndarray, threshold=None) -> np.ndarray:
        """Label j present where p_j >= threshold[j] (default THRESHOLD for every label)."""
        t = THRESHOLD if threshold is None else np.asarray(threshold, np.float64)
        return scores >= t

    def choose_threshold(self, y_ind: np.ndarray, s_ind: np.ndarray, rule) -> np.ndarray:
        """One threshold per label, each chosen by `rule` on that label's validation column."""
        return np.array([rule(y_ind[:, j], s_ind[:, j]) for j in range(y_ind.shape[1])])

    def threshold_record(self, threshold, class_names: list[str]) -> dict:
        t = np.full(len(class_names), THRESHOLD) if threshold is None else threshold
        return {c: float(v) for c, v in zip(class_names, t, strict=True)}

    def calibration_pairs(
        self, y_ind: np.ndarray, s_ind: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every (image, label) probability against that label's truth, pooled."""
        return s_ind.ravel(), y_ind.ravel()

    def test_extras(
        self,
        y_ind: np.ndarray,
        pred_ind: np.ndarray,
        tp: np.ndarray,
        fn: np.ndarray,
        fp: np.ndarray,
        tn: np.ndarray,
    ) -> dict:
        """`exact_match`: the share of images with every label right (subset accuracy)."""
        return {"exact_match": accuracy_score(y_ind, pred_ind)}

    def fold_strata(self, labels: np.ndarray) -> np.ndarray | None:
        return None  # stratifying on one label would balance it and skew the others

    def explain_targets(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, list]:
        rows, cols = np.nonzero(np.asarray(labels))
        return rows, [int(c) for c in cols]

    def caption(self, label_row, prob_row, target: int, classes: list[str]) -> str:
        return f"label: {classes[target]} (p={prob_row[target]:.2f})"

    def test_inputs(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(labels), np.asarray(probs)

    def readout_notes(self) -> list[str]:
        return [f"(one independent probability per label; present when >= {THRESHOLD})"]

    def read_out(self, classes: list[str], probs: np.ndarray) -> dict:
        present = np.flatnonzero(probs >= THRESHOLD).tolist()
        explained = present or [int(probs.argmax())]
        return {
            "predicted": [classes[j] for j in present],
            "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
            "targets": [(j, classes[j], float(probs[j])) for j in explained],
        }
