"""Any number of labels per image out of L: one sigmoid per label, mean AUROC over labels.

A stored label may be -1, unknown (CheXpert's uncertain labels under U-Ignore, or a blank cell
the table source was told to ignore: `search.data.table`): that (image, label) entry is left
out of the loss, of every metric of that label, of its operating point and of calibration.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from trainables.kinds.base import (
    THRESHOLD,
    Kind,
    check_fit,
    known_columns,
    macro_auroc,
    pos_weights,
    warn_missing,
)


class MaskedBCE(torch.nn.Module):
    """BCE with logits, averaged over the known entries only (targets of -1 are unknown);
    `weights` is `pos_weights`' (2, L) tensor (per-label scale, pos_weight) or None."""

    def __init__(self, weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = None if weights is None else weights[0]
        self.pos_weight = None if weights is None else weights[1]

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = (targets >= 0).to(logits.dtype)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits,
            targets.clamp(min=0).to(logits.dtype),
            weight=self.weight,
            pos_weight=self.pos_weight,
            reduction="none",
        )
        return (loss * known).sum() / known.sum().clamp(min=1.0)


class Multilabel(Kind):
    name = "multilabel"
    explains = "each true positive label"
    exclusive = False

    def label_width(self, n_classes: int) -> int:
        return n_classes

    def label_max(self, n_classes: int) -> int:
        return 1

    def label_min(self, n_classes: int) -> int:
        return -1  # unknown: masked out

    def indicators(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """Positive (1) per label; an unknown (-1) entry is not a positive."""
        return self.truth(labels, n_classes) == 1

    def truth(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """(N, n_classes) int8 1/0/-1 (-1 = unknown); a ValueError for any other layout."""
        labels = np.asarray(labels).reshape(len(labels), -1)
        if labels.shape[1] != n_classes or not np.isin(labels, (0, 1, -1)).all():
            raise ValueError(
                f"multilabel labels must be (N, {n_classes}) and hold only 0 and 1 (one "
                f"column per label; -1 = unknown), got shape {labels.shape}"
            )
        return labels.astype(np.int8)

    def class_weights(self, labels: np.ndarray, n_classes: int, power: float) -> torch.Tensor:
        """`pos_weight = (n_neg / n_pos) ** power` per label, capped, with a per-label scale so
        each label's weights average 1 over the training samples (`base.pos_weights`)."""
        return pos_weights(labels, power)

    def make_loss(self, weights: torch.Tensor | None = None) -> torch.nn.Module:
        """BCE over the known entries, weighted by `pos_weights` (`MaskedBCE`)."""
        return MaskedBCE(weights)

    def predictions(self, probs: np.ndarray) -> np.ndarray:
        return (np.asarray(probs) >= THRESHOLD).astype(np.int64)

    def metrics(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        """Per-label accuracy, F1 and AUROC over the known entries, averaged over labels."""
        y = labels.reshape(len(labels), -1).astype(np.int64)
        auc, missing = macro_auroc(y, np.asarray(probs))
        warn_missing(missing, "validation")
        preds = self.predictions(probs)
        positive, known = known_columns(y)
        if known.all():
            acc = float((preds == y).mean())
            f1 = float(f1_score(y, preds, average="macro", zero_division=0))
        else:
            acc, f1 = _masked_acc_f1(positive, preds.astype(bool), known)
        return {"acc": acc, "f1": f1, "auc": auc}

    def test_columns(
        self, y_true: np.ndarray, scores: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        check_fit(y_true, scores, (len(y_true), n_classes), "(N, L) 0/1 labels and (N, L) scores")
        return self.truth(y_true, n_classes), self.score_columns(scores)

    def predicted_columns(self, scores: np.ndarray, threshold=None) -> np.ndarray:
        """Label j present where p_j >= threshold[j] (default THRESHOLD for every label)."""
        t = THRESHOLD if threshold is None else np.asarray(threshold, np.float64)
        return scores >= t

    def choose_threshold(self, y_ind: np.ndarray, s_ind: np.ndarray, rule) -> np.ndarray:
        """One threshold per label, each chosen by `rule` on that label's validation column
        (its known rows)."""
        positive, known = known_columns(y_ind)
        return np.array(
            [rule(positive[known[:, j], j], s_ind[known[:, j], j]) for j in range(y_ind.shape[1])]
        )

    def threshold_record(self, threshold, class_names: list[str]) -> dict:
        t = np.full(len(class_names), THRESHOLD) if threshold is None else threshold
        return {c: float(v) for c, v in zip(class_names, t, strict=True)}

    def calibration_pairs(
        self, y_ind: np.ndarray, s_ind: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every known (image, label) probability against that label's truth, pooled."""
        positive, known = known_columns(y_ind)
        return s_ind[known], positive[known]

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
        rows, cols = np.nonzero(np.asarray(labels) == 1)
        return rows, [int(c) for c in cols]

    def panel_labels(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(labels) == 1  # an unknown label (-1) is not a positive

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


def _masked_acc_f1(
    positive: np.ndarray, pred: np.ndarray, known: np.ndarray
) -> tuple[float, float]:
    """Mean per-label accuracy and macro F1 (0 where a label has no positive and no
    prediction) over each label's known rows."""
    tp = (positive & pred & known).sum(axis=0)
    fp = (~positive & pred & known).sum(axis=0)
    fn = (positive & ~pred & known).sum(axis=0)
    n_known = known.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n_known > 0, (n_known - fp - fn) / n_known, np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return float(np.nanmean(acc)) if (n_known > 0).any() else float("nan"), float(f1.mean())
