"""Segmentation in the report and in `search/explain.py`: test figures per image and over the
split, and a checkpoint's predicted mask and overlay for any image.

    html = segmentation_section(exp)     # "" unless the winner's test figures are masks'
    results = explain_masks(ckpt, ["em.png"], images, out_dir="maps")   # explanations.py

The figures are `Segmentation.test_figures`' (trainables.kinds.segmentation), read from
test_metrics.json: Dice, IoU, pixel accuracy, sensitivity and specificity over the whole split
(pixel counts summed over images) and as the mean over images, each with its 95% bootstrap CI
over images, then one row per test image (its id from `<trial>/test_predictions.npz`).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from search.experiment.layout import TEST_PREDICTIONS_FILE
from search.reporting.folder import Experiment
from search.reporting.markup import fmt, note, table
from trainables import attribution
from trainables.checkpoint import model_from_checkpoint, normalised_input, predict
from trainables.files import write_atomic
from trainables.kinds import THRESHOLD, get_kind
from trainables.kinds.segmentation import FIGURES


def segmentation_section(exp: Experiment) -> str:
    """The winner's mask figures (module docstring), or "" for an image task."""
    best = exp.winner()
    result = ((exp.tests or {}).get("trials") or {}).get(best["trial_id"]) if best else None
    if not result or "per_image" not in result:
        return ""
    out = [f"<h2>Segmentation: trial {html.escape(best['trial_id'])} on the test masks</h2>"]
    out.append(figures_table(result))
    out.append(per_image_table(result, _ids(exp, best["trial_id"], result["n"])))
    return "\n".join(out)


def figures_table(result: dict) -> str:
    """Each figure over the split and as the mean over images, with 95% CIs."""
    rows = []
    for name in FIGURES:
        split = (result.get("split") or {}).get(name) or {}
        mean = (result.get("per_image_mean") or {}).get(name) or {}
        rows.append([name, *_with_ci(split), *_with_ci(mean)])
    head = ["figure", "over the split", "95% CI", "mean per image", "95% CI"]
    boot = result.get("bootstrap") or {}
    return table(head, rows) + note(
        f"n = {result.get('n', '?')} test images ({fmt(result.get('pixels'))} pixels), "
        f"threshold {fmt(result.get('threshold'))}. Over the split: pixel counts summed over "
        f"the images; CIs: {boot.get('n_boot', '?')} bootstrap resamples of whole images "
        f"(seed {boot.get('seed', '?')}), percentile method. Pixel AUROC "
        f"{fmt((result.get('auroc') or {}).get('value'))}."
    )


def per_image_table(result: dict, ids: list[str]) -> str:
    per = result.get("per_image") or {}
    names = [*FIGURES, "foreground_fraction"]
    rows = [[ids[i], *(fmt(per[k][i]) for k in names if k in per)] for i in range(len(ids))]
    return "<h3>Per test image</h3>" + table(["image", *names], rows)


def _with_ci(v: dict) -> list[str]:
    return [fmt(v.get("value")), f"{fmt(v.get('ci_low'))} - {fmt(v.get('ci_high'))}"]


def _ids(exp: Experiment, trial_id: str, n: int) -> list[str]:
    path = exp.root / trial_id / TEST_PREDICTIONS_FILE
    try:
        with np.load(path) as npz:
            ids = [str(i) for i in npz["ids"]]
        if len(ids) == n:
            return ids
    except (OSError, KeyError, ValueError):
        pass
    return [str(i) for i in range(n)]


def explain_masks(ckpt: dict, image_paths: list, images: np.ndarray, out_dir=None) -> list[dict]:
    """For each image: `<stem>_mask.png` (the predicted mask, 255 = foreground, at the
    checkpoint's size) and `<stem>_overlay.png` (the image | the predicted mask over it |
    Grad-CAM of the predicted foreground); one dict per image as `explain_images` returns."""
    model = model_from_checkpoint(ckpt)
    kind = get_kind(ckpt["kind"])
    probs = predict(ckpt, model, images)
    predicted = kind.predictions(probs)
    cams = attribution.mask_gradcam_maps(
        model, normalised_input(ckpt, images), model.cam_layer, predicted
    )
    name = ckpt["classes"][-1]
    results = []
    for i, path in enumerate(map(Path, image_paths)):
        folder = Path(out_dir) if out_dir is not None else path.parent
        folder.mkdir(parents=True, exist_ok=True)
        mask_png = folder / f"{path.stem}_mask.png"
        overlay_png = folder / f"{path.stem}_overlay.png"
        _write_mask(mask_png, predicted[i])
        share = float(predicted[i].mean())
        caption = f"{path.name}: {name} on {share:.1%} of pixels (p >= {THRESHOLD})"
        attribution.save_mask_grid(
            overlay_png,
            images[i : i + 1],
            None,
            predicted[i : i + 1],
            cams[i : i + 1],
            [caption],
            f"predicted {name}",
        )
        results.append(
            {
                "image": str(path),
                "kind": ckpt["kind"],
                "predicted": [name] if share else [],
                "probabilities": {f"{name} (share of pixels)": share},
                "gradcam": str(overlay_png),
                "ig": str(mask_png),
                "files": [str(mask_png), str(overlay_png)],
            }
        )
    return results


def _write_mask(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    image = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
    write_atomic(path, lambda f: image.save(f, format="PNG"))
