"""Explain a trained checkpoint's predictions on your own images: probabilities and maps.

    python search/explain.py runs/blood-x/trial_0003/checkpoint cell1.png cell2.jpg
    python search/explain.py runs/chest-x/t1/checkpoint/model.pt xray.png --out-dir maps/

For each image (PNG, JPEG, any size): converted to the checkpoint's channels (grey or RGB),
resized to its square image size (bilinear, as the MedMNIST preprocessing), normalised as in
training; prints the predicted class and every class's probability, and writes
`<stem>_gradcam.png` and `<stem>_ig.png` (the image | the map over it) next to the image, or in
--out-dir. Multi-class: the predicted class is explained; binary: the one logit, P(positive);
multi-label: every label predicted present (or the likeliest one when none is), a row each.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables import attribution
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, predict

MIN_CAM_SIDE = 4  # a smaller Grad-CAM map says nothing once upsampled; take an earlier layer
THRESHOLD = 0.5


def explain_images(
    checkpoint_path: str | os.PathLike,
    image_paths: list[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    steps: int = 16,
    samples: int = 4,
) -> list[dict]:
    """Predict and explain each image; write the two overlays; return one dict per image:
    `image`, `kind`, `predicted` (class names), `probabilities` ({class: p}), `gradcam` and
    `ig` (the written PNG paths).

    Raises FileNotFoundError for a missing checkpoint or image, ValueError for a file that is
    not a readable image (both name the file). Every image is read before any work starts.
    """
    if not image_paths:
        raise ValueError("no images given; pass one or more PNG or JPEG files")
    if steps < 1 or samples < 1:
        raise ValueError(f"--steps {steps} and --samples {samples} must both be >= 1")
    ckpt = load_checkpoint(checkpoint_path)
    images = np.stack([read_image(p, ckpt["channels"], ckpt["image_size"]) for p in image_paths])
    model = model_from_checkpoint(ckpt)
    probs = predict(ckpt, model, images)
    x = normalise(ckpt, images)
    layer = cam_layer(model, x)
    results = []
    for i, path in enumerate(image_paths):
        readout = read_out(ckpt["kind"], ckpt["classes"], probs[i])
        targets = [j for j, _, _ in readout["targets"]]
        rows = x[[i] * len(targets)]
        cams = attribution.gradcam_maps(model, rows, layer, targets)
        igs = attribution.integrated_gradients_maps(
            model, rows, targets, n_samples=samples, steps=steps
        )
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


def normalise(ckpt: dict, images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> float (N, C, H, W) exactly as `predict` feeds the model."""
    from trainables.data import to_device_images

    x = to_device_images(images, "cpu").float() / 255.0
    mean = torch.tensor(ckpt["normalisation"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(ckpt["normalisation"]["std"]).view(1, -1, 1, 1)
    return (x - mean) / std


def cam_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """`model.cam_layer`, unless its feature map is under 4x4 for this input size (a ResNet's
    last block at 28 px is 1x1): then the last layer that is at least 4x4."""
    shapes = []
    handle = model.cam_layer.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        handle.remove()
    if shapes and len(shapes[0]) == 4 and min(shapes[0][2:]) >= MIN_CAM_SIDE:
        return model.cam_layer
    return attribution.last_spatial_layer(model, x, MIN_CAM_SIDE)


def read_out(kind: str, classes: list[str], probs: np.ndarray) -> dict:
    """One image's probabilities, by the task's kind: `predicted` (class names),
    `probabilities` ({class: p}) and `targets` ([(output index, class, p)] to explain)."""
    if kind == "binary":  # one sigmoid output: P(classes[1])
        p = float(probs[0])
        return {
            "predicted": [classes[int(p >= THRESHOLD)]],
            "probabilities": {classes[0]: 1 - p, classes[1]: p},
            "targets": [(0, classes[1], p)],
        }
    table = {c: float(p) for c, p in zip(classes, probs, strict=True)}
    top = [int(probs.argmax())]
    if kind == "multilabel":
        present = np.flatnonzero(probs >= THRESHOLD).tolist()
        predicted, explained = [classes[j] for j in present], present or top
    else:
        predicted, explained = [classes[top[0]]], top
    targets = [(j, classes[j], float(probs[j])) for j in explained]
    return {"predicted": predicted, "probabilities": table, "targets": targets}


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


def print_result(result: dict) -> None:
    predicted = ", ".join(result["predicted"]) or "no label present"
    print(f"{result['image']}: predicted {predicted}")
    width = max(map(len, result["probabilities"]), default=0)
    for name, p in result["probabilities"].items():
        print(f"  {name:<{width}}  {p:.4f}")
    if result["kind"] == "multilabel":
        print("  (one independent probability per label; present when >= 0.5)")
    print(f"  maps: {result['gradcam']}, {result['ig']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="a model.pt file or the checkpoint folder holding one")
    p.add_argument("images", nargs="+", help="PNG or JPEG files, any size")
    p.add_argument("--out-dir", help="write the maps here (default: beside each image)")
    p.add_argument("--steps", type=int, default=16, help="Integrated Gradients steps (16)")
    p.add_argument("--samples", type=int, default=4, help="NoiseTunnel samples per image (4)")
    args = p.parse_args(argv)
    try:
        results = explain_images(
            args.checkpoint, args.images, args.out_dir, args.steps, args.samples
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for result in results:
        print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
