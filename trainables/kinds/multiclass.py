"""One class per image out of K: softmax, cross-entropy, macro one-vs-rest AUROC."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from trainables.kinds.base import Kind, class_ids, inverse_frequency, macro_auroc, warn_missing


class Multiclass(Kind):
    name = "multiclass"
    explains = "the predicted class"

    def class_weights(self, labels: np.ndarray, n_classes: int, power: float) -> torch.Tensor:
        """`n_c ** -power` per class, scaled so the weights average 1 over the samples (the
        loss scale, and so the learning rate, means the same for every power)."""
        counts = self.class_counts(labels, n_classes).astype(np.float64)
        weights = inverse_frequency(counts, power)
        weights = weights / (weights * counts).sum() * counts.sum()
        return torch.as_tensor(weights, dtype=torch.float32)

    def make_loss(self, weights: torch.Tensor | None = None) -> torch.nn.Module:
        return torch.nn.CrossEntropyLoss(weight=weights)

    def loss_targets(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.reshape(-1).long()

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        return logits.detach().float().softmax(dim=1).cpu().numpy()

    def predictions(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs).argmax(axis=1)

    def metrics(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        y = class_ids(labels)
        probs = np.asarray(probs)
        auc, missing = macro_auroc(self.indicators(y, probs.shape[1]), probs)
        warn_missing(missing, "validation")
        return {
            "acc": float(accuracy_score(y, self.predictions(probs))),
            "f1": float(f1_score(y, self.predictions(probs), average="macro", zero_division=0)),
            "auc": auc,
        }

    def explain_targets(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, list]:
        return np.arange(len(labels)), [int(c) for c in self.predictions(probs)]
