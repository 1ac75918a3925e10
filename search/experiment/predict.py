"""Apply a trained model to new images: a trial's checkpoint or an `ensemble.json`, batched,
on the GPU when there is one; `search/predict.py` is the command.

    model = load_model("runs/x/trial_0003/checkpoint/model.pt")   # or runs/x/ensemble.json
    probs = predict_images(model, read)      # read(size, mode) -> uint8 (N, size, size[, 3])
    labels = labels_at_threshold(model, probs)
    write_predictions("predictions.csv", paths, model, probs, labels)
    write_cams("cams/", paths, model, read, probs)

A checkpoint's operating point and temperature are the ones its experiment saved
(`test_metrics.json`, two folders up: the threshold chosen on validation, the fitted
temperature); without one, the kind's default threshold (0.5) and no temperature, which
`model.note` says. An ensemble's are in its file, and its probabilities are the weighted mean
of its members' (`search.experiment.ensemble`). Grad-CAM explains each image's first read-out
target (`Kind.read_out`: the predicted class, P(positive), the first label present); an
ensemble's map is the weighted mean of its members' maps.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
from dataclasses import dataclass, field

import numpy as np

from search.experiment.ensemble import is_ensemble_file, member_probs, read_ensemble
from search.experiment.layout import TEST_METRICS_FILE
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, normalised_input
from trainables.checkpoint import predict as predict_logits

CHECKPOINT_HINT = (
    "pass a trial's checkpoint (runs/<name>/<trial>/checkpoint/model.pt or its folder) or an "
    "experiment's ensemble.json"
)


@dataclass
class Member:
    ckpt: dict
    model: object
    weight: float = 1.0
    temperature: float | None = None


@dataclass
class Model:
    """A loaded checkpoint or ensemble: what to predict with and how to read it out."""

    kind: str
    classes: list[str]
    members: list[Member]
    threshold: object = None
    note: str = ""
    inputs: set = field(default_factory=set)
    """(image size, Pillow mode) each member reads."""


def load_model(path: str | os.PathLike) -> Model:
    """A checkpoint (model.pt or its folder) or an ensemble.json, on the GPU when there is
    one; a ValueError (`<what>; <what to do>`) for anything else."""
    path = os.fspath(path)
    if path.endswith(".json") or is_ensemble_file(path):
        record = read_ensemble(path)
        members = [
            _member(m["checkpoint"], float(m["weight"]), m.get("temperature"))
            for m in record["members"]
        ]
        return _model(record["kind"], record["classes"], members, record.get("threshold"), "")
    ckpt_path = os.path.join(path, "model.pt") if os.path.isdir(path) else path
    threshold, temperature, note = saved_operating_point(ckpt_path)
    member = _member(ckpt_path, 1.0, temperature)
    return _model(member.ckpt["kind"], member.ckpt["classes"], [member], threshold, note)


def _model(kind, classes, members, threshold, note) -> Model:
    from trainables.kinds import get_kind

    if not get_kind(kind).for_labels(images=True, masks=False):
        raise ValueError(
            f"a {kind} model predicts masks, not labels; use search/explain.py for its masks"
        )
    inputs = {(m.ckpt["image_size"], "L" if m.ckpt["channels"] == 1 else "RGB") for m in members}
    return Model(kind, list(classes), members, threshold, note, inputs)


def _member(path: str, weight: float, temperature: float | None) -> Member:
    import torch

    try:
        ckpt = load_checkpoint(path)
    except FileNotFoundError as err:
        raise ValueError(f"{err}; {CHECKPOINT_HINT}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as err:
        what = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        text = f"{path} is not a medsweep checkpoint ({what}); {CHECKPOINT_HINT}"
        raise ValueError(text) from None
    model = model_from_checkpoint(ckpt)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return Member(ckpt, model, weight, temperature)


def saved_operating_point(ckpt_path: str) -> tuple[object, float | None, str]:
    """(threshold, temperature, note) of `<experiment>/<trial>/checkpoint/model.pt` from the
    experiment's test_metrics.json; (None, None, why) where it has none."""
    trial_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_path)))
    metrics = os.path.join(os.path.dirname(trial_dir), TEST_METRICS_FILE)
    try:
        with open(metrics) as f:
            entry = json.load(f)["trials"][os.path.basename(trial_dir)]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None, "no saved operating point for this checkpoint: default threshold"
    temperature = (entry.get("calibration") or {}).get("temperature")
    return entry.get("threshold"), temperature, ""


def predict_images(model: Model, read, batch_size: int = 256) -> np.ndarray:
    """Probabilities (N, outputs) of the images `read(size, mode)` returns for each member's
    input (uint8 (N, size, size[, 3])): each member's logits over its temperature, activated,
    then the weighted mean (`search.experiment.ensemble.average`)."""
    from search.experiment.ensemble import average

    probs = []
    for m in model.members:
        images = read(*_input(m))
        logits = predict_logits(m.ckpt, m.model, images, batch_size, logits=True)
        probs.append(member_probs(model.kind, logits, m.temperature))
    return average(probs, [m.weight for m in model.members])


def _input(member: Member) -> tuple[int, str]:
    return member.ckpt["image_size"], "L" if member.ckpt["channels"] == 1 else "RGB"


def labels_at_threshold(model: Model, probs: np.ndarray) -> list[str]:
    """Each image's label(s) at the model's threshold (`;` between several labels present;
    empty where none is)."""
    from trainables.kinds import get_kind

    ops = get_kind(model.kind)
    threshold = None if model.threshold is None else _threshold(model.threshold)
    chosen = ops.predicted_columns(ops.score_columns(probs), threshold)
    return [";".join(c for c, on in zip(model.classes, row, strict=True) if on) for row in chosen]


def _threshold(value):
    """A saved threshold as `predicted_columns` takes it (a label's map to an array)."""
    if isinstance(value, dict):
        return np.asarray(list(value.values()), np.float64)
    return np.asarray(value, np.float64) if isinstance(value, list) else float(value)


def write_predictions(path, image_paths, model: Model, probs: np.ndarray, labels) -> None:
    """predictions.csv: `path`, one `p_<class>` column per class, `label`."""
    from trainables.kinds import get_kind

    columns = get_kind(model.kind).read_out
    rows = [columns(model.classes, p)["probabilities"] for p in probs]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", *[f"p_{c}" for c in model.classes], "label"])
        for image, row, label in zip(image_paths, rows, labels, strict=True):
            out.writerow([str(image), *[f"{row[c]:.6f}" for c in model.classes], label])


def write_cams(out_dir, image_paths, model: Model, read, probs: np.ndarray) -> list[str]:
    """`<stem>_gradcam.png` per image in `out_dir` (the image | Grad-CAM of its first read-out
    target); the paths written."""
    from trainables import attribution
    from trainables.kinds import get_kind

    ops = get_kind(model.kind)
    readouts = [ops.read_out(model.classes, p) for p in probs]
    targets = [r["targets"][0][0] for r in readouts]
    maps, weights, shown = [], [m.weight for m in model.members], None
    for m in model.members:
        images = read(*_input(m))
        shown = images if shown is None else shown
        x = normalised_input(m.ckpt, images).to(next(m.model.parameters()).device)
        cams = attribution.gradcam_maps(m.model, x, attribution.cam_layer(m.model, x), targets)
        maps.append(_resized(cams, shown.shape[1]))
    cams = np.tensordot(np.asarray(weights) / sum(weights), np.stack(maps), axes=1)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i, path in enumerate(image_paths):
        _, name, p = readouts[i]["targets"][0]
        out = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(path))[0]}_gradcam.png")
        caption = f"{os.path.basename(path)}: {name} (p={p:.3f})"
        attribution.save_grid(out, shown[i : i + 1], cams[i : i + 1], [caption], "Grad-CAM")
        written.append(out)
    return written


def _resized(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) maps at (N, size, size) (members of an ensemble may differ in image size)."""
    import torch

    if maps.shape[1] == size:
        return maps
    t = torch.as_tensor(maps)[:, None]
    return torch.nn.functional.interpolate(t, (size, size), mode="bilinear")[:, 0].numpy()
