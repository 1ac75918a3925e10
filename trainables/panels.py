"""Which images a search explains, and the files their maps go to.

    idx = choose_panel(val_labels, kind="multiclass", per_class=2, seed=0)
    save_grid(out / "gradcam.png", val_images[idx], cams, captions, title="Grad-CAM")
    save_maps(out / "maps.npz", gradcam=cams, integrated_gradients=igs, focus=focus)

The maps themselves come from `trainables.attribution` (which re-exports these names).
Files are written atomically (`trainables.files.write_atomic`).
"""

import os
from collections.abc import Sequence

import numpy as np

from trainables.files import write_atomic
from trainables.kinds import get_kind


def choose_panel(labels: np.ndarray, kind: str, per_class: int, seed: int) -> np.ndarray:
    """Indices of a fixed panel of images: up to ``per_class`` per class, the same for the
    same seed (the kind groups them, `Kind.panel_rows`: one class per image, by class;
    multi-label and masks, in index order).

    ``labels`` is (N, L) as in MedMNIST npz files: class ids in one column for "multiclass"
    and "binary", 0/1 per label for "multilabel". For multi-label, each label gets
    ``per_class`` distinct images positive for it; images already in the panel count towards
    the quota of every label they are positive for, so the panel stays small. Images with no
    positive label are never chosen. Classes with fewer images contribute what they have.
    """
    ops = get_kind(kind)
    labels = ops.panel_labels(np.asarray(labels))  # masks: grouped by foreground
    if labels.ndim == 1:
        labels = labels[:, None]
    return ops.panel_rows(labels, per_class, np.random.default_rng(seed))


def save_grid(
    path: str | os.PathLike,
    images: np.ndarray,
    maps: np.ndarray,
    captions: Sequence[str],
    title: str,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> None:
    """PNG grid, one row per image: the image | the map over it, the row's caption above.

    ``images`` (N, H, W) or (N, H, W, C), uint8 or float (any range: floats are min-max
    scaled per image for display); ``maps`` (N, H, W), scaled per image to [0, 1] (negative
    values shown as 0). Written atomically.
    """
    from matplotlib.figure import Figure

    if not len(images) == len(maps) == len(captions):
        raise ValueError(
            f"got {len(images)} images, {len(maps)} maps and {len(captions)} captions; "
            "pass one map and one caption per image"
        )
    n = max(len(images), 1)
    height = 2.3 * n + 0.4
    fig = Figure(figsize=(4.2, height))  # a fixed layout: constrained layout is quadratic
    fig.suptitle(title, y=1 - 0.1 / height)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.1 / height, top=1 - 0.5 / height)
    fig.subplots_adjust(wspace=0.05, hspace=0.3)
    axes = fig.subplots(n, 2, squeeze=False)
    for row, img, m, caption in zip(axes, _display(images), maps, captions, strict=False):
        left, right = row
        left.set_title(caption, fontsize=9, loc="left")
        for ax in (left, right):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        right.imshow(_map_unit(m), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    for ax in axes.ravel():
        ax.set_axis_off()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))


def save_mask_grid(
    path: str | os.PathLike,
    images: np.ndarray,
    masks: np.ndarray | None,
    predicted: np.ndarray,
    maps: np.ndarray,
    captions: Sequence[str],
    title: str,
) -> None:
    """PNG grid for segmentation, one row per image: the image | the true mask over it (left
    out when `masks` is None) | the predicted mask over it | the map over it. Masks (N, H, W)
    0/1, maps as in `save_grid`. Written atomically."""
    from matplotlib.figure import Figure

    if not len(images) == len(predicted) == len(maps) == len(captions):
        raise ValueError("pass one prediction, map and caption per image")
    columns = [("true mask", masks, "Greens")] if masks is not None else []
    columns.append(("predicted", predicted, "Reds"))
    n = max(len(images), 1)
    fig = Figure(figsize=(2.0 * (len(columns) + 2), 2.2 * n + 0.4), layout="constrained")
    fig.suptitle(title)
    rows = fig.subfigures(n, 1, squeeze=False)[: len(images), 0]
    for i, (row, img) in enumerate(zip(rows, _display(images), strict=True)):
        row.suptitle(captions[i], fontsize=9)
        axes = row.subplots(1, len(columns) + 2)
        names = ["image", *(c[0] for c in columns), "Grad-CAM"]
        for ax, name in zip(axes, names, strict=True):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(name, fontsize=8)
            ax.set_axis_off()
        for ax, (_, mask, colour) in zip(axes[1:], columns, strict=False):
            ax.imshow(
                np.ma.masked_equal(np.asarray(mask[i], np.float32), 0),
                cmap=colour,
                alpha=0.6,
                vmin=0,
                vmax=1,
            )
        axes[-1].imshow(_map_unit(maps[i]), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))


def save_maps(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` to ``path`` (no ".npz" appended), atomically."""
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def _display(images: np.ndarray) -> list[np.ndarray]:
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.dtype == np.uint8:
        return list(images.astype(np.float32) / 255)
    return [_unit(img) for img in images.astype(np.float32)]


def _map_unit(m: np.ndarray) -> np.ndarray:
    m = np.clip(np.nan_to_num(np.asarray(m, np.float32)), 0, None)
    return m / m.max() if m.max() > 0 else m


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(np.asarray(a, np.float32))
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
