"""Everything that follows from a task's kind, decided in one place: loss, probabilities, metrics.

    loss_fn = make_loss(task.kind, class_weights)        # weights from `class_weights(...)`
    probs = probabilities(task.kind, logits)              # (N, K) numpy, K = 1 for binary
    metrics = compute_metrics(task.kind, labels, probs)   # {"acc": ..., "f1": ..., "auc": ...}

Labels arrive as stored in MedMNIST npz files: shape (N, 1) integer class ids for multiclass
and binary, (N, L) 0/1 for multilabel. Metrics come from scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def class_weights(kind: str, labels: np.ndarray, num_outputs: int, power: float) -> torch.Tensor:
    """Loss weights from the training labels, `n_c ** -power` (0 = none, 1 = inverse frequency).

    Multiclass: one weight per class, normalised so the weights average 1 over the samples
    (so the loss scale, and so the learning rate, means the same for every power).
    Binary and multilabel: `pos_weight` per output, `(n_neg / n_pos) ** power`.
    """
    if kind == "multiclass":
        counts = np.bincount(labels.reshape(-1), minlength=num_outputs).astype(np.float64)
        weights = np.maximum(counts, 1.0) ** -power
        weights = weights / (weights * counts).sum() * counts.sum()
    else:
        positives = labels.reshape(len(labels), -1).sum(axis=0).astype(np.float64)
        negatives = len(labels) - positives
        weights = (np.maximum(negatives, 1.0) / np.maximum(positives, 1.0)) ** power
    return torch.as_tensor(weights, dtype=torch.float32)


def make_loss(kind: str, weights: torch.Tensor | None = None) -> torch.nn.Module:
    """Cross-entropy for multiclass; BCE-with-logits (weights as pos_weight) otherwise."""
    if kind == "multiclass":
        return torch.nn.CrossEntropyLoss(weight=weights)
    return torch.nn.BCEWithLogitsLoss(pos_weight=weights)


def loss_targets(kind: str, labels: torch.Tensor) -> torch.Tensor:
    """The target tensor the loss of `make_loss(kind)` expects for stored labels."""
    if kind == "multiclass":
        return labels.reshape(-1).long()
    return labels.reshape(len(labels), -1).float()


def probabilities(kind: str, logits: torch.Tensor) -> np.ndarray:
    """Softmax for multiclass, sigmoid otherwise; float32 numpy."""
    logits = logits.detach().float()
    probs = logits.softmax(dim=1) if kind == "multiclass" else logits.sigmoid()
    return probs.cpu().numpy()


def predictions(kind: str, probs: np.ndarray) -> np.ndarray:
    """Predicted labels in the stored layout: class ids (N,) or 0/1 per label (N, L)."""
    if kind == "multiclass":
        return probs.argmax(axis=1)
    if kind == "binary":
        return (probs[:, 0] >= 0.5).astype(np.int64)
    return (probs >= 0.5).astype(np.int64)


def compute_metrics(kind: str, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1 and AUROC (macro one-vs-rest; mean over labels for multilabel).

    AUROC is NaN when it is undefined (a class absent from `labels`), never an exception:
    a tiny validation split must not crash a trial.
    """
    preds = predictions(kind, probs)
    if kind == "multilabel":
        y = labels.reshape(len(labels), -1).astype(np.int64)
        aucs = [_safe_auc(y[:, j], probs[:, j]) for j in range(y.shape[1])]
        finite = [a for a in aucs if np.isfinite(a)]
        return {
            "acc": float((preds == y).mean()),
            "f1": float(f1_score(y, preds, average="macro", zero_division=0)),
            "auc": float(np.mean(finite)) if finite else float("nan"),
        }
    y = labels.reshape(-1).astype(np.int64)
    if kind == "binary":
        auc = _safe_auc(y, probs[:, 0])
    else:
        auc = _safe_auc(y, probs, multi_class="ovr", labels=np.arange(probs.shape[1]))
    return {
        "acc": float(accuracy_score(y, preds)),
        "f1": float(f1_score(y, preds, average="macro", zero_division=0)),
        "auc": auc,
    }


def _safe_auc(y: np.ndarray, scores: np.ndarray, **kwargs) -> float:
    try:
        return float(roc_auc_score(y, scores, average="macro", **kwargs))
    except ValueError:  # only one class present, or a class with no samples
        return float("nan")
