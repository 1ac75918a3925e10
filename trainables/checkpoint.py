"""Self-describing checkpoints: one `model.pt` that names everything needed to use it again.

    save_checkpoint(directory, payload)            # atomic: temp file, then os.replace
    ckpt = load_checkpoint("runs/x/trial/checkpoint")   # torch.load(weights_only=True)
    model = model_from_checkpoint(ckpt)            # rebuilt and loaded, in eval mode

A payload holds `format`, `task`, `kind`, `classes`, `channels`, `model`, `image_size`,
`config`, `normalisation` (mean, std), `epoch`, `metrics` and `state_dict`; the training loop
adds `optimizer`, `scheduler`, `metric` (the task metric, whose `best_<metric>` in `metrics`
a resumed trial continues from) and `data` (the data fingerprint: npz MD5 or converted folder
hash, split rule, seed, folds, fold; `search.data.fingerprint`; {} when the driver set none).
Only tensors, numbers, strings, lists and dicts: it loads
with `weights_only=True`.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from trainables.files import write_atomic
from trainables.kinds import get_kind
from trainables.models import Classifier, build_model

FORMAT = "medsweep-checkpoint/1"
FILENAME = "model.pt"


def save_checkpoint(directory: str | os.PathLike, payload: dict) -> str:
    """Write `payload` to `<directory>/model.pt` atomically; return the file path."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FILENAME)
    write_atomic(path, lambda f: torch.save({"format": FORMAT, **payload}, f))
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint dict from a `model.pt` file or a directory holding one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path} (expected a {FILENAME} or its folder)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: format {ckpt.get('format')!r} is not {FORMAT!r}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> Classifier:
    """The checkpoint's model, weights loaded, in eval mode, on the CPU."""
    model = build_model(
        ckpt["model"],
        num_outputs=get_kind(ckpt["kind"]).num_outputs(len(ckpt["classes"])),
        channels=ckpt["channels"],
        image_size=ckpt["image_size"],
        dropout=float(ckpt["config"].get("dropout", 0.0)),
        weights="none",
        head_hidden=int(ckpt["config"].get("head_hidden", 0)),
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def normalised_input(ckpt: dict, images) -> torch.Tensor:
    """uint8 (N, H, W[, C]) numpy -> float (N, C, H, W) on the CPU, normalised as in training."""
    from trainables.data import normaliser, to_device_images

    x = to_device_images(np.asarray(images), "cpu").float() / 255.0
    return normaliser(ckpt["normalisation"]["mean"], ckpt["normalisation"]["std"], "cpu")(x)


@torch.no_grad()
def predict(
    ckpt: dict, model: Classifier, images, batch_size: int = 256, logits: bool = False
) -> np.ndarray:
    """Probabilities for uint8 images (N, H, W[, C]) at the checkpoint's size, normalised as in
    training, after the kind's activation (`trainables.kinds`): (N, outputs) float32; with
    `logits`, the raw outputs before it (for a temperature fit: `trainables.calibration`).

    `images` may be an array, a memmap or `trainables.stream.Rows`: it is read one batch at a
    time, and each batch goes to the model's device."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size])
        out.append(model(normalised_input(ckpt, batch).to(device)).float().cpu())
    if logits:
        return torch.cat(out).numpy()
    return get_kind(ckpt["kind"]).probabilities(torch.cat(out))
