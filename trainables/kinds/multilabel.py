"""Any number of labels per image out of L: one sigmoid per label, mean AUROC over labels."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from trainables.kinds.base import THRESHOLD, Kind, check_fit, safe_auc
from trainables.kinds.binary import _pos_weight


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
        """`pos_weight = (n_neg / n_pos) ** power` per label."""
        return _pos_weight(labels.reshape(len(labels), -1), power)

    def make_loss(self, weights: torch.Tensor | None = None) -> torch.nn.Module:
        return torch.nn.BCEWithLogitsLoss(pos_weight=weights)

    def predictions(self, probs: np.ndarray) -> np.ndarray:
        return (np.asarray(probs) >= THRESHOLD).astype(np.int64)

    def metrics(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        y = labels.reshape(len(labels), -1).astype(np.int64)
        aucs = [safe_auc(y[:, j], probs[:, j]) for j in range(y.shape[1])]
        finite = [a for a in aucs if np.isfinite(a)]
        preds = self.predictions(probs)
        return {
            "acc": float((preds == y).mean()),
            "f1": float(f1_score(y, preds, average="macro", zero_division=0)),
            "auc": float(np.mean(finite)) if finite else float("nan"),
        }

    def test_columns(
        self, y_true: np.ndarray, scores: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        check_fit(y_true, scores, (len(y_true), n_classes), "(N, L) 0/1 labels and (N, L) scores")
        return self.indicators(y_true, n_classes), self.score_columns(scores)

    def predicted_columns(self, scores: np.ndarray) -> np.ndarray:
        return scores >= THRESHOLD

    def test_extras(
        self, y_ind: np.ndarray, pred_ind: np.ndarray, tp: np.ndarray, fn: np.ndarray,
        fp: np.ndarray, tn: np.ndarray,
    ) -> dict:  # fmt: skip
        """`exact_match`: the share of images with every label right (subset accuracy)."""
        return {"exact_match": accuracy_score(y_ind, pred_ind), "threshold": THRESHOLD}

    def fold_strata(self, labels: np.ndarray) -> np.ndarray | None:
        return None  # stratifying on one label would balance it and skew the others

    def explain_targets(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, list]:
        rows, cols = np.nonzero(np.asarray(labels))
        return rows, [int(c) for c in cols]

    def caption(self, label_row, prob_row, target: int, classes: list[str]) -> str:
        return f"label: {classes[target]} (p={prob_row[target]:.2f})"

    def test_inputs(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(labels), np.asarray(probs)

    def read_out(self, classes: list[str], probs: np.ndarray) -> dict:
        present = np.flatnonzero(probs >= THRESHOLD).tolist()
        explained = present or [int(probs.argmax())]
        return {
            "predicted": [classes[j] for j in present],
            "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
            "targets": [(j, classes[j], float(probs[j])) for j in explained],
        }
