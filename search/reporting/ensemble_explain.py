"""Explain an ensemble's predictions (`ensemble.json`, `--ensemble K`) on any images: the
ensemble's probabilities and label at its saved threshold, and each member's maps.

    results = explain_ensemble("runs/x/ensemble.json", ["xray.png"], out_dir="maps")
    print(describe(results[0]))     # search.reporting.explanations.describe

The probabilities are the ensemble's (`search.experiment.predict`: the members' temperature-
scaled probabilities averaged); the label is the one at the ensemble's threshold. An ensemble
has no single network to attribute, so each member's Grad-CAM and Integrated Gradients
overlays are written by `explain_images` into `<out_dir>/<trial>/` (default: a `<trial>`
folder beside each image's folder), and listed as the result's `files`.
"""

from __future__ import annotations

import os

import numpy as np

from search.experiment.ensemble import read_ensemble
from search.experiment.predict import labels_at_threshold, load_model, predict_images
from search.reporting.explanations import explain_images, read_image
from trainables.kinds import get_kind


def explain_ensemble(
    path: str | os.PathLike,
    image_paths: list[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    steps: int = 16,
    samples: int = 4,
) -> list[dict]:
    """One dict per image, as `explain_images` returns them (`image`, `kind`, `predicted`,
    `probabilities`), with `files`: every member's overlays."""
    if not image_paths:
        raise ValueError("no images given; pass one or more PNG or JPEG files")
    record, model = read_ensemble(path), load_model(path)

    def read(size: int, mode: str) -> np.ndarray:
        return np.stack([read_image(p, 1 if mode == "L" else 3, size) for p in image_paths])

    probs = predict_images(model, read)
    labels = labels_at_threshold(model, probs)
    files: dict[str, list[str]] = {str(p): [] for p in image_paths}
    base = out_dir or os.path.dirname(os.path.abspath(image_paths[0]))
    for member in record["members"]:
        folder = os.path.join(base, member["trial_id"])
        os.makedirs(folder, exist_ok=True)
        for r in explain_images(member["checkpoint"], image_paths, folder, steps, samples):
            files[r["image"]] += [r["gradcam"], r["ig"]]
    read_out = get_kind(model.kind).read_out
    return [
        {
            "image": str(p),
            "kind": model.kind,
            "predicted": [c for c in labels[i].split(";") if c],
            "probabilities": read_out(model.classes, probs[i])["probabilities"],
            "files": files[str(p)],
        }
        for i, p in enumerate(image_paths)
    ]
