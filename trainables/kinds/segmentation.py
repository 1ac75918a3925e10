"""Binary segmentation: a mask per image, one logit per pixel, BCE + soft Dice.

Stored labels are masks (N, H, W) uint8, 1 = foreground (the class to segment), the same size
as the images. The model outputs (N, 1, H, W) logits; probabilities are their sigmoid.

- loss: `bce_weight` x BCEWithLogits (`pos_weight = (n_background / n_foreground) **
  class_weight_power` over the training pixels) + `dice_weight` x soft Dice loss (1 - Dice of
  the probabilities, over all pixels of the batch); the seed's weights were 0.5 and 1.25.
- epoch metrics (`val_dice`, `val_iou`, `val_pixel_acc`): over the whole split, from pixel
  counts summed over its images (not a mean of per-image scores: an image with little
  foreground weighs by its pixels, and one empty image cannot make a score undefined).
- test figures (`test_figures`): the same three plus sensitivity and specificity, over the split
  and as the mean over images, with the per-image values and 95% percentile bootstrap CIs that
  resample whole images (seeded); in the layout of `trainables.evaluation.evaluate_predictions`
  (accuracy = pixel accuracy, macro_f1 = mean of the foreground's and background's Dice,
  per_class, a 2x2 pixel confusion matrix) so the report and W&B read it as they read that.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from trainables.kinds.base import THRESHOLD, Kind, ratio

FIGURES = ("dice", "iou", "pixel_accuracy", "sensitivity", "specificity")
SPLIT_ONLY = ("balanced_accuracy", "macro_dice")  # over the split only, for the headline
LEVEL = 0.95
AUROC_MAX_PIXELS = 4_000_000  # above this the pixel AUROC is computed on a seeded sample


class Segmentation(Kind):
    name = "segmentation"
    explains = "the predicted foreground (Grad-CAM of the summed foreground logits)"
    exclusive = False  # labels are per pixel: no image has exactly one class

    def for_labels(self, images, masks):
        return masks

    # --- layout --------------------------------------------------------------------------
    def num_outputs(self, n_classes: int) -> int:
        return 1

    def label_max(self, n_classes: int) -> int:
        return 1

    def label_problem(self, images_shape: tuple, labels_shape: tuple, n_classes: int):
        if tuple(labels_shape) != tuple(images_shape[:3]):
            return (
                f"masks have shape {tuple(labels_shape)}, expected {tuple(images_shape[:3])} "
                "(one 0/1 mask per image, the image's height and width)"
            )
        return None

    def class_counts(self, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """Images holding any background and any foreground pixel."""
        flat = np.asarray(labels).reshape(len(labels), -1).astype(bool)
        return np.array([(~flat).any(axis=1).sum(), flat.any(axis=1).sum()], np.int64)

    def fold_strata(self, labels: np.ndarray) -> np.ndarray | None:
        raise ValueError("--folds is not supported for segmentation tasks; drop --folds")

    def panel_labels(self, labels: np.ndarray) -> np.ndarray:
        """Two groups for the explained panel, as two 0/1 columns (labels are not exclusive):
        images with less foreground than the median, and the rest, so the panel shows sparse
        and dense masks."""
        dense = foreground_fraction(labels) >= np.median(foreground_fraction(labels))
        return np.stack([~dense, dense], axis=1).astype(np.int64)

    # --- training ------------------------------------------------------------------------
    def class_weights(self, labels: np.ndarray, n_classes: int, power: float) -> torch.Tensor:
        positives = float(np.count_nonzero(labels))
        negatives = float(np.asarray(labels).size) - positives
        weight = (max(negatives, 1.0) / max(positives, 1.0)) ** power
        return torch.full((1, 1, 1), weight, dtype=torch.float32)

    def make_loss(
        self,
        weights: torch.Tensor | None = None,
        bce_weight: float = 0.5,
        dice_weight: float = 1.25,
    ) -> torch.nn.Module:
        return BceDiceLoss(weights, bce_weight, dice_weight)

    def loss_settings(self, cfg) -> dict:
        return {"bce_weight": cfg.bce_weight, "dice_weight": cfg.dice_weight}

    def loss_targets(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.reshape(len(labels), 1, *labels.shape[-2:]).float()

    def augment_keys(self) -> tuple[str, ...]:
        return ("input", "mask")  # each mask moves with its image

    def augment_batch(self, augment, images: torch.Tensor, targets: torch.Tensor):
        """The same geometric draw on each image and its mask (kornia, data_keys input+mask)."""
        images, masks = augment(images, targets)
        return images, (masks > 0.5).float()

    def predictions(self, probs: np.ndarray) -> np.ndarray:
        return (_masks(probs) >= THRESHOLD).astype(np.uint8)

    def validation_figures(self) -> tuple[str, ...]:
        return ("loss", "dice", "iou", "pixel_acc")

    def models(self) -> tuple[str, ...]:
        from trainables.models import SEGMENTERS

        return SEGMENTERS

    def unused_knobs(self) -> tuple[str, ...]:
        return ("head_hidden",)  # a U-Net has no classification head

    def metrics(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        tp, fp, fn, tn = pixel_counts(labels, self.predictions(probs)).sum(axis=0)
        return {
            "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "iou": ratio(tp, tp + fp + fn),
            "pixel_acc": ratio(tp + tn, tp + fp + fn + tn),
        }

    # --- after the search ----------------------------------------------------------------
    def explain_targets(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, list]:
        return np.arange(len(labels)), [0] * len(labels)

    def caption(
        self, label_row: np.ndarray, prob_row: np.ndarray, target: int, classes: list[str]
    ) -> str:
        truth, pred = np.asarray(label_row)[None], self.predictions(prob_row[None])
        tp, fp, fn, _ = pixel_counts(truth, pred)[0]
        dice = ratio(2 * tp, 2 * tp + fp + fn)
        return (
            f"Dice {dice:.2f}; {classes[-1]}: true {truth.mean():.0%}, "
            f"predicted {pred.mean():.0%} of pixels"
        )

    def test_inputs(self, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(labels).astype(np.uint8), _masks(probs)

    def read_out(self, classes: list[str], probs: np.ndarray) -> dict:
        share = float((_masks(probs[None]) >= THRESHOLD).mean())
        return {
            "predicted": [classes[-1]] if share > 0 else [],
            "probabilities": {classes[-1]: share},  # the share of pixels predicted foreground
            "targets": [(0, classes[-1], share)],
        }

    def test_figures(
        self,
        y_true: np.ndarray,
        scores: np.ndarray,
        class_names: list[str],
        n_boot: int = 1000,
        seed: int = 0,
    ) -> dict:
        """Every test figure (module docstring) for masks `y_true` (N, H, W) and foreground
        probabilities `scores` (N, H, W)."""
        y_true, scores = np.asarray(y_true), np.asarray(scores, np.float64)
        if y_true.shape != scores.shape or y_true.ndim != 3:
            raise ValueError(
                f"masks {y_true.shape} and scores {scores.shape} do not fit: "
                "expected both (N, H, W)"
            )
        if not np.isfinite(scores).all():
            raise ValueError("scores hold NaN or infinity: did the model diverge?")
        counts = pixel_counts(y_true, (scores >= THRESHOLD).astype(np.uint8)).astype(np.float64)
        per_image = figures_of(counts)
        split, mean = _bootstrap(counts, per_image, n_boot, seed)
        tp, fp, fn, tn = counts.sum(axis=0)
        auroc = _pixel_auroc(y_true, scores, seed)
        return {
            "kind": self.name,
            "n": len(y_true),
            "pixels": int(counts.sum()),
            "threshold": THRESHOLD,
            **_headline(split, auroc),
            "sensitivity": split["sensitivity"]["value"],
            "specificity": split["specificity"]["value"],
            "split": split,
            "per_image_mean": mean,
            "per_image": {k: [float(v) for v in per_image[k]] for k in FIGURES}
            | {"foreground_fraction": [float(v) for v in foreground_fraction(y_true)]},
            **_per_class(class_names, tp, fp, fn, tn, auroc),
            "confusion_matrix": {
                "labels": list(class_names),
                "matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
            },
            "bootstrap": {
                "n_boot": n_boot,
                "n_used": n_boot,
                "n_skipped": 0,
                "seed": seed,
                "level": LEVEL,
                "method": "percentile",
                "unit": "images",
            },
        }


class BceDiceLoss(torch.nn.Module):
    """`bce_weight` x BCEWithLogits(pos_weight) + `dice_weight` x (1 - soft Dice)."""

    def __init__(self, pos_weight: torch.Tensor | None, bce_weight: float, dice_weight: float):
        super().__init__()
        self.bce = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.bce_weight, self.dice_weight = float(bce_weight), float(dice_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.bce_weight * self.bce(logits, targets) + self.dice_weight * soft_dice_loss(
            logits, targets
        )


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps) over every pixel of the batch."""
    p = logits.sigmoid()
    inter = (p * targets).sum()
    return 1 - (2 * inter + eps) / (p.sum() + targets.sum() + eps)


def pixel_counts(masks: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(N, 4) int64 per image: true positives, false positives, false negatives, true
    negatives of predicted foreground against the true masks."""
    t = np.asarray(masks).reshape(len(masks), -1).astype(bool)
    p = np.asarray(predicted).reshape(len(predicted), -1).astype(bool)
    tp, fp, fn = (t & p).sum(1), (~t & p).sum(1), (t & ~p).sum(1)
    return np.stack([tp, fp, fn, t.shape[1] - tp - fp - fn], axis=1).astype(np.int64)


def figures_of(counts: np.ndarray) -> dict[str, np.ndarray]:
    """`FIGURES` from (..., 4) pixel counts. Dice and IoU are 1 where there is no foreground,
    true or predicted (nothing to find, nothing found); sensitivity is NaN without true
    foreground, specificity without true background."""
    tp, fp, fn, tn = np.moveaxis(np.asarray(counts, np.float64), -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "dice": np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 1.0),
            "iou": np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 1.0),
            "pixel_accuracy": (tp + tn) / (tp + fp + fn + tn),
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "balanced_accuracy": (tp / (tp + fn) + tn / (tn + fp)) / 2,
            "macro_dice": (
                np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 1.0)
                + np.where(tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 1.0)
            )
            / 2,
        }


def foreground_fraction(labels: np.ndarray) -> np.ndarray:
    """(N,) share of foreground pixels per mask."""
    return np.asarray(labels).reshape(len(labels), -1).astype(bool).mean(axis=1)


def _masks(probs: np.ndarray) -> np.ndarray:
    """(N, H, W) foreground probabilities from (N, 1, H, W) or (N, H, W)."""
    probs = np.asarray(probs)
    return probs[:, 0] if probs.ndim == 4 else probs


def _bootstrap(counts: np.ndarray, per_image: dict, n_boot: int, seed: int):
    """({figure: interval} over the split, {figure: interval} of the mean over images), the
    intervals from `n_boot` resamples of whole images drawn with a seeded Generator."""
    rng = np.random.default_rng(seed)
    n = len(counts)
    idx = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    weights = np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)
    boot_split = figures_of(weights @ counts)  # (n_boot,) per figure
    split_point = figures_of(counts.sum(axis=0))
    split = {
        name: _interval(float(split_point[name]), boot_split[name])
        for name in (*FIGURES, *SPLIT_ONLY)
    }
    mean = {}
    for name in FIGURES:
        values = per_image[name]
        defined = ~np.isnan(values)
        w = weights * defined
        with np.errstate(invalid="ignore", divide="ignore"):
            boot_mean = (w @ np.nan_to_num(values)) / w.sum(axis=1)
        point = float(values[defined].mean()) if defined.any() else float("nan")
        mean[name] = _interval(point, boot_mean)
    return split, mean


def _interval(value: float, replicates: np.ndarray) -> dict[str, float]:
    replicates = replicates[~np.isnan(replicates)]
    if np.isnan(value) or not len(replicates):
        return {"value": value, "ci_low": float("nan"), "ci_high": float("nan")}
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return {"value": float(value), "ci_low": float(low), "ci_high": float(high)}


def _pixel_auroc(y_true: np.ndarray, scores: np.ndarray, seed: int) -> float:
    y, s = y_true.reshape(-1).astype(bool), scores.reshape(-1)
    if len(y) > AUROC_MAX_PIXELS:
        pick = np.random.default_rng(seed).choice(len(y), AUROC_MAX_PIXELS, replace=False)
        y, s = y[pick], s[pick]
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def _headline(split: dict, auroc: float) -> dict:
    """`trainables.evaluation.HEADLINE` for pixels: accuracy, balanced accuracy, AUROC (point
    estimate only) and macro F1 (the mean of both classes' Dice)."""
    return {
        "accuracy": split["pixel_accuracy"],
        "balanced_accuracy": split.pop("balanced_accuracy"),
        "auroc": {"value": auroc, "ci_low": float("nan"), "ci_high": float("nan")},
        "macro_f1": split.pop("macro_dice"),
        "dice": split["dice"],
        "iou": split["iou"],
        "pixel_accuracy": split["pixel_accuracy"],
    }


def _per_class(classes: list[str], tp, fp, fn, tn, auroc: float) -> dict:
    """Per class (background, foreground) over the split's pixels; support in pixels."""
    fg = {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "support": int(tp + fn),
        "auroc": auroc,
    }
    bg = {
        "precision": ratio(tn, tn + fn),
        "recall": ratio(tn, tn + fp),
        "specificity": ratio(tp, tp + fn),
        "f1": ratio(2 * tn, 2 * tn + fp + fn),
        "support": int(tn + fp),
        "auroc": auroc,
    }
    both = [bg, fg]
    return {
        "macro_precision": float(np.mean([c["precision"] for c in both])),
        "macro_recall": float(np.mean([c["recall"] for c in both])),
        "macro_specificity": float(np.mean([c["specificity"] for c in both])),
        "per_class": dict(zip(classes, both, strict=True)),
    }
