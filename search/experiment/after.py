"""After the search: attribution maps for every trial (as Ray tasks), then the test split, once.

    focus = explain_trials(trials, experiment_path, task, val_arrays, seed=0, top_k=None)
    evaluate_on_test(trials, experiment_path, task, data_path, metric, mode, top_k=1)

Attribution runs one Ray task per trial's best checkpoint (a GPU fraction when the cluster has
GPUs), on the same panel of validation images for every trial (a few per class, chosen with the
search seed). It writes `<trial>/attribution/{gradcam.png, integrated_gradients.png, maps.npz}`
and returns the focus score per trial: the share of positive Integrated-Gradients mass on the
image's foreground (Otsu). Grad-CAM and IG explain the predicted class (multiclass), the
positive logit (binary), or each true positive label (multilabel).

The test split is read here and nowhere else: for the top-K trials by the search metric it
writes `test_metrics.json` (with bootstrap 95% CIs) and `<trial>/test_predictions.npz`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator

import numpy as np
import pyarrow.fs as pafs
import ray

from search.experiment.tables import copy_dir, join_path
from trainables import attribution as A
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, predict
from trainables.data import load_npz
from trainables.evaluation import evaluate_predictions, to_jsonable
from trainables.files import write_atomic
from trainables.metrics import predictions
from trainables.tasks import Task

log = logging.getLogger("medsweep")
FOCUS_GAP = 0.2  # a trial whose focus is this far below the median gets a warning


def ranked(trials: list[dict], metric: str, mode: str) -> list[dict]:
    """Trials with a checkpoint, best first."""
    usable = [t for t in trials if t.get("checkpoint_path") and _finite(t.get(metric))]
    return sorted(usable, key=lambda t: t[metric], reverse=mode == "max")


def explain_trials(
    trials: list[dict],
    experiment_path: str,
    task: Task,
    val: dict[str, np.ndarray],
    metric: str,
    mode: str,
    seed: int = 0,
    top_k: int | None = None,
    per_class: int = 2,
    ig: dict | None = None,
) -> dict[str, float]:
    """Attribution maps for the best `top_k` trials (all by default); {trial_id: focus}."""
    chosen = ranked(trials, metric, mode)[: top_k or None]
    if not chosen:
        return {}
    panel = A.choose_panel(val["val_labels"], task.kind, per_class, seed)
    panel_ref = ray.put((val["val_images"][panel], val["val_labels"][panel]))
    gpus = 0.25 if ray.cluster_resources().get("GPU", 0) else 0
    remote = explain_one.options(num_cpus=1, num_gpus=gpus)
    futures = {
        t["trial_id"]: remote.remote(
            t["checkpoint_path"], join_path(experiment_path, t["trial_id"], "attribution"),
            panel_ref, ig or {},
        )
        for t in chosen
    }  # fmt: skip
    focus = {}
    for trial_id, future in futures.items():
        try:
            focus[trial_id] = ray.get(future)
        except Exception as err:  # one broken checkpoint must not cost the others their maps
            log.warning("attribution for trial %s failed: %s", trial_id, err)
    return focus


@ray.remote
def explain_one(checkpoint_path: str, out_dir: str, panel: tuple, ig: dict) -> float:
    """Grad-CAM + IG grids and raw maps for one checkpoint; returns the mean focus score."""
    import torch

    images, labels = panel
    ckpt = load_checkpoint(_local(checkpoint_path))
    model = model_from_checkpoint(ckpt)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    probs = predict(ckpt, model.cpu(), images)
    model.to(device)
    rows, targets = _targets(ckpt["kind"], labels, probs)
    x = _normalised(ckpt, images[rows]).to(device)
    layer = model.cam_layer
    if _spatial_side(model, layer, x[:1]) < 4:
        layer = A.last_spatial_layer(model, x[:1])
    cams = A.gradcam_maps(model, x, layer, targets)
    igs = A.integrated_gradients_maps(model, x, targets, **ig)
    focus = A.focus_score(images[rows], igs)
    captions = _captions(ckpt, labels[rows], probs[rows], targets)
    with _local_dir(out_dir) as local:
        A.save_grid(os.path.join(local, "gradcam.png"), images[rows], cams, captions, "Grad-CAM")
        A.save_grid(os.path.join(local, "integrated_gradients.png"), images[rows], igs,
                    captions, "Integrated Gradients (SmoothGrad)")  # fmt: skip
        A.save_maps(
            os.path.join(local, "maps.npz"), rows=rows, targets=np.asarray(targets),
            gradcam=cams, integrated_gradients=igs, focus=focus, probs=probs[rows],
        )  # fmt: skip
    finite = focus[np.isfinite(focus)]
    return float(finite.mean()) if len(finite) else float("nan")


def _targets(kind: str, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(panel rows, output index) pairs to explain; see the module docstring."""
    if kind == "multilabel":
        rows, cols = np.nonzero(labels)
        return rows, [int(c) for c in cols]
    rows = np.arange(len(labels))
    if kind == "binary":
        return rows, [0] * len(rows)
    return rows, [int(c) for c in predictions(kind, probs)]


def _captions(ckpt: dict, labels, probs, targets) -> list[str]:
    classes, kind = [_short(c) for c in ckpt["classes"]], ckpt["kind"]
    if kind == "multilabel":
        return [f"label: {classes[t]} (p={p[t]:.2f})" for p, t in zip(probs, targets, strict=True)]
    preds = predictions(kind, probs)
    out = []
    for y, p, pred in zip(labels[:, 0], probs, preds, strict=True):
        if kind == "binary":
            conf = p[0] if pred == 1 else 1 - p[0]
        else:
            conf = p[pred]
        out.append(f"true: {classes[int(y)]} / pred: {classes[int(pred)]} (p={conf:.2f})")
    return out


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _normalised(ckpt: dict, images: np.ndarray):
    import torch

    from trainables.data import to_device_images

    x = to_device_images(images, "cpu").float() / 255.0
    mean = torch.tensor(ckpt["normalisation"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(ckpt["normalisation"]["std"]).view(1, -1, 1, 1)
    return (x - mean) / std


def _spatial_side(model, layer, x) -> int:
    import torch

    sizes = []
    handle = layer.register_forward_hook(lambda m, i, o: sizes.append(min(o.shape[-2:])))
    with torch.no_grad():
        model(x)
    handle.remove()
    return int(sizes[0]) if sizes else 0


def focus_warnings(focus: dict[str, float]) -> dict[str, bool]:
    """True for trials whose focus is much lower (> FOCUS_GAP) than the median of all."""
    values = [v for v in focus.values() if _finite(v)]
    if len(values) < 2:
        return {k: False for k in focus}
    median = float(np.median(values))
    return {k: _finite(v) and v < median - FOCUS_GAP for k, v in focus.items()}


def evaluate_on_test(
    trials: list[dict],
    experiment_path: str,
    task: Task,
    data_path: str,
    metric: str,
    mode: str,
    top_k: int = 1,
    seed: int = 0,
) -> dict | None:
    """Test metrics (with CIs) of the best `top_k` trials; writes test_metrics.json."""
    chosen = ranked(trials, metric, mode)[:top_k]
    if not chosen:
        return None
    test = load_npz(data_path, task, splits=("test",))  # the only read of the test split
    images, labels = test["test_images"], test["test_labels"]
    results = {}
    for t in chosen:
        ckpt = load_checkpoint(_local(t["checkpoint_path"]))
        probs = predict(ckpt, model_from_checkpoint(ckpt), images)
        y = labels if task.kind == "multilabel" else labels[:, 0]
        scores = probs[:, 0] if task.kind == "binary" else probs
        results[t["trial_id"]] = evaluate_predictions(task.kind, y, scores, list(task.classes),
                                                      seed=seed)  # fmt: skip
        _write_npz(join_path(experiment_path, t["trial_id"], "test_predictions.npz"),
                   labels=labels, probs=probs)  # fmt: skip
    out = {"best_trial": chosen[0]["trial_id"], "trials": results}
    write_text(join_path(experiment_path, "test_metrics.json"), json.dumps(to_jsonable(out),
               indent=2, allow_nan=False))  # fmt: skip
    return out


# --- storage helpers: local paths and s3:// / gs:// URIs alike -------------------------------


def write_text(path: str, text: str) -> None:
    _write_bytes(path, text.encode())


def read_text(path: str) -> str:
    if "://" not in path:
        with open(path) as f:
            return f.read()
    fs, fs_path = pafs.FileSystem.from_uri(path)
    with fs.open_input_stream(fs_path) as f:
        return f.read().decode()


def _write_npz(path: str, **arrays) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    _write_bytes(path, buf.getvalue())


def _write_bytes(path: str, data: bytes) -> None:
    if "://" not in path:
        write_atomic(path, data)
        return
    fs, fs_path = pafs.FileSystem.from_uri(path)
    fs.create_dir(fs_path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(fs_path) as f:
        f.write(data)


def _local(path: str) -> str:
    """A local copy of a checkpoint folder that may live in cloud storage."""
    if "://" not in path:
        return path
    local = tempfile.mkdtemp(prefix="medsweep-ckpt-")
    copy_dir(path, local)
    return local


@contextlib.contextmanager
def _local_dir(target: str) -> Iterator[str]:
    """A local folder to write into; uploaded to `target` afterwards when it is a URI."""
    if "://" not in target:
        os.makedirs(target, exist_ok=True)
        yield target
        return
    with tempfile.TemporaryDirectory(prefix="medsweep-attr-") as tmp:
        yield tmp
        copy_dir(tmp, target)


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
