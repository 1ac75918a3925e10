"""Explain a saved checkpoint's predictions on any images: probabilities and attribution maps.

    results = explain_images("runs/blood-x/trial_0003/checkpoint", ["cell1.png"], out_dir="maps")
    print(describe(results[0]))

Each image (PNG, JPEG, any size, 8 or 16 bit) is converted to the checkpoint's channels,
resized to its square image size (bilinear, as the MedMNIST preprocessing) and normalised as in
training (`trainables.checkpoint.normalised_input`). What is read out and explained follows
from the task's kind (`Kind.read_out`): the predicted class (multiclass), the one logit,
P(positive) (binary), every label predicted present or else the likeliest one (multilabel).
Grad-CAM uses `trainables.attribution.cam_layer`; the overlays are `<stem>_gradcam.png` and
`<stem>_ig.png` (the image | the map over it), a row per explained output.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np

from search.reporting.segmentation import explain_masks
from trainables import attribution
from trainables.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    normalised_input,
    predict,
)
from trainables.kinds import get_kind


def explain_images(
    checkpoint_path: str | os.PathLike,
    image_paths: list[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    steps: int = 16,
    samples: int = 4,
) -> list[dict]:
    """Predict and explain each image; write the two overlays (beside each image, or in
    `out_dir`); return one dict per image: `image`, `kind`, `predicted` (class names),
    `probabilities` ({class: p}), `gradcam` and `ig` (the written PNG paths).

    Raises FileNotFoundError for a missing checkpoint or image, ValueError for a file that is
    not a readable image (both name the file). Every image is read before any work starts.
    """
    if not image_paths:
        raise ValueError("no images given; pass one or more PNG or JPEG files")
    if steps < 1 or samples < 1:
        raise ValueError(f"--steps {steps} and --samples {samples} must both be >= 1")
    ckpt = load_checkpoint(checkpoint_path)
    images = np.stack([read_image(p, ckpt["channels"], ckpt["image_size"]) for p in image_paths])
    per_image = partial(_explain_per_image, steps=steps, samples=samples)
    explain = get_kind(ckpt["kind"]).for_labels(images=per_image, masks=explain_masks)
    return explain(ckpt, image_paths, images, out_dir)  # masks: predicted mask, overlay, no IG


def _explain_per_image(
    ckpt: dict, image_paths: list, images: np.ndarray, out_dir, steps: int, samples: int
) -> list[dict]:
    """`explain_images` for a kind whose labels belong to whole images: the outputs
    `Kind.read_out` names, each with its Grad-CAM and Integrated Gradients overlay."""
    model = model_from_checkpoint(ckpt)
    probs = predict(ckpt, model, images)
    x = normalised_input(ckpt, images)
    layer = attribution.cam_layer(model, x)
    kind = get_kind(ckpt["kind"])
    ig = attribution.IGSettings(n_samples=samples, steps=steps)
    results = []
    for i, path in enumerate(image_paths):
        readout = kind.read_out(ckpt["classes"], probs[i])
        targets = [j for j, _, _ in readout["targets"]]
        rows = x[[i] * len(targets)]
        cams = attribution.gradcam_maps(model, rows, layer, targets)
        igs = attribution.integrated_gradients_maps(model, rows, targets, ig)
        results.append(_save(ckpt, Path(path), out_dir, images[i], readout, cams, igs))
    return results


def read_image(path: str | os.PathLike, channels: int, size: int) -> np.ndarray:
    """uint8 (size, size) for 1 channel or (size, size, 3) for 3, from any Pillow-readable file.

    16-bit and float images (some X-ray PNGs) are min-max scaled to 0-255 first, since
    Pillow's own conversion to 8 bits clips them.
    """
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image {path} could not be read ({err}); pass a PNG or JPEG") from err
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, np.float64)
        span = a.max() - a.min()
        a = (a - a.min()) / span * 255 if span > 0 else np.zeros_like(a)
        img = Image.fromarray(a.round().astype(np.uint8), "L")
    img = img.convert("L" if channels == 1 else "RGB")
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, np.uint8)


def _save(ckpt, path: Path, out_dir, image, readout, cams, igs) -> dict:
    captions = [f"{path.name}: {name} (p={p:.3f})" for _, name, p in readout["targets"]]
    stack = np.stack([image] * len(captions))
    folder = Path(out_dir) if out_dir is not None else path.parent
    gradcam, ig = folder / f"{path.stem}_gradcam.png", folder / f"{path.stem}_ig.png"
    attribution.save_grid(gradcam, stack, cams, captions, title="Grad-CAM")
    attribution.save_grid(ig, stack, igs, captions, title="Integrated Gradients")
    return {
        "image": str(path),
        "kind": ckpt["kind"],
        "predicted": readout["predicted"],
        "probabilities": readout["probabilities"],
        "gradcam": str(gradcam),
        "ig": str(ig),
    }


def describe(result: dict) -> str:
    """One result as text: the prediction, every class's probability, the map files."""
    predicted = ", ".join(result["predicted"]) or "no label present"
    lines = [f"{result['image']}: predicted {predicted}"]
    width = max(map(len, result["probabilities"]), default=0)
    lines += [f"  {name:<{width}}  {p:.4f}" for name, p in result["probabilities"].items()]
    lines += [f"  {note}" for note in get_kind(result["kind"]).readout_notes()]
    lines.append(f"  maps: {', '.join(result.get('files') or [result['gradcam'], result['ig']])}")
    return "\n".join(lines)
