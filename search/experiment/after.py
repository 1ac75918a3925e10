"""After the search: attribution maps for every trial (as Ray tasks), then the test split, once.

    focus = explain_trials(trials, experiment_path, task, val_arrays, "val_auc", "max", seed=0,
                           resources={"num_cpus": 1, "num_gpus": 0.25}, open_val=None)
    flagged = attach_focus(trials, focus)       # attr_focus / attr_focus_warning columns
    evaluate_on_test(trials, experiment_path, task, data_path, "val_auc", "max", top_k=1)
    evaluate_on_test(trials, experiment_path, task, open_test, "val_auc", "max", 1, 0, resources)

Attribution runs one Ray task per trial's best checkpoint, asking for `resources` (what a trial's
worker asks for: its GPU share and CPUs, so it runs where trials run, not on the driver), on the
same panel of validation images for every trial (a few per class, chosen with the search seed
from the labels); `explain_checkpoint` is the same work as a plain call. The panel's images are
sliced from `val_arrays` on the driver, or, when `open_val` is given (a picklable callable that
returns the val arrays, memory-mapped, on the node where it is called: the streaming path),
read by each task on its own node: only the panel's rows are read. It writes
`<trial>/attribution/{gradcam.png, integrated_gradients.png, maps.npz}` and returns the focus
score per trial: the share of positive Integrated-Gradients mass on the image's foreground
(Otsu). What is explained, and the captions, come from the task's kind
(`trainables.kinds`: `explain_targets`, `caption`).

The test split is read here and nowhere else: for the top-K trials by the search metric it
writes `test_metrics.json` (with bootstrap 95% CIs) and `<trial>/test_predictions.npz`. The
split comes from an npz path (read on the driver) or from `open_test`, a callable as above,
called where the prediction runs; with `resources`, each prediction is a Ray task asking for
them and streams the images in batches to its device; without, it runs in this process.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import numpy as np
import ray

from search.experiment.layout import (
    ATTRIBUTION_DIR,
    FOCUS_GAP,
    GRADCAM_PNG,
    IG_PNG,
    MAPS_FILE,
    TEST_METRICS_FILE,
    TEST_PREDICTIONS_FILE,
)
from search.experiment.storage import join_path, local_copy, local_dir, write_npz, write_text
from trainables import attribution as A
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, normalised_input, predict
from trainables.data import load_npz
from trainables.evaluation import evaluate_predictions, to_jsonable
from trainables.kinds import get_kind
from trainables.scores import is_finite, ranked
from trainables.tasks import Task

log = logging.getLogger("medsweep")


def with_checkpoints(trials: list[dict], metric: str, mode: str) -> list[dict]:
    """Trials with a checkpoint and a finite metric, best first."""
    return [t for t in ranked(trials, metric, mode) if t.get("checkpoint_path")]


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
    resources: dict | None = None,
    open_val: Callable[[], dict] | None = None,
) -> dict[str, float]:
    """Attribution maps for the best `top_k` trials (all by default); {trial_id: focus}."""
    chosen = with_checkpoints(trials, metric, mode)[: top_k or None]
    if not chosen:
        return {}
    panel = A.choose_panel(val["val_labels"], task.kind, per_class, seed)
    if open_val is None:
        panel_ref = ray.put((val["val_images"][panel], val["val_labels"][panel]))
    else:
        panel_ref = ray.put((open_val, np.asarray(panel)))  # each task reads the rows itself
    remote = explain_one.options(**(resources or {"num_cpus": 1}))
    futures = {
        t["trial_id"]: remote.remote(
            t["checkpoint_path"], join_path(experiment_path, t["trial_id"], ATTRIBUTION_DIR),
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
    """`explain_checkpoint` as a Ray task; `panel` is (images, labels) or (open_val, rows)."""
    if callable(panel[0]):
        val, rows = panel[0](), panel[1]
        panel = (np.asarray(val["val_images"][rows]), val["val_labels"][rows])
    return explain_checkpoint(checkpoint_path, out_dir, panel, ig)


def explain_checkpoint(checkpoint_path: str, out_dir: str, panel: tuple, ig: dict) -> float:
    """Grad-CAM + IG grids and raw maps for one checkpoint on `panel` (images, labels);
    returns the mean focus score (NaN when no map has one)."""
    import torch

    images, labels = panel
    ckpt = load_checkpoint(local_copy(checkpoint_path))
    kind = get_kind(ckpt["kind"])
    model = model_from_checkpoint(ckpt)
    probs = predict(ckpt, model, images)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rows, targets = kind.explain_targets(labels, probs)
    x = normalised_input(ckpt, images[rows]).to(next(model.parameters()).device)
    cams = A.gradcam_maps(model, x, A.cam_layer(model, x), targets)
    igs = A.integrated_gradients_maps(model, x, targets, **ig)
    focus = A.focus_score(images[rows], igs)
    classes = [_short(c) for c in ckpt["classes"]]
    captions = [kind.caption(labels[r], probs[r], t, classes)
                for r, t in zip(rows, targets, strict=True)]  # fmt: skip
    with local_dir(out_dir) as local:
        A.save_grid(os.path.join(local, GRADCAM_PNG), images[rows], cams, captions, "Grad-CAM")
        A.save_grid(os.path.join(local, IG_PNG), images[rows], igs, captions,
                    "Integrated Gradients (SmoothGrad)")  # fmt: skip
        A.save_maps(
            os.path.join(local, MAPS_FILE), rows=rows, targets=np.asarray(targets),
            gradcam=cams, integrated_gradients=igs, focus=focus, probs=probs[rows],
        )  # fmt: skip
    finite = focus[np.isfinite(focus)]
    return float(finite.mean()) if len(finite) else float("nan")


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def focus_warnings(focus: dict[str, float]) -> dict[str, bool]:
    """True for trials whose focus is much lower (> FOCUS_GAP) than the median of all."""
    values = [v for v in focus.values() if is_finite(v)]
    if len(values) < 2:
        return {k: False for k in focus}
    median = float(np.median(values))
    return {k: is_finite(v) and v < median - FOCUS_GAP for k, v in focus.items()}


def attach_focus(trials: list[dict], focus: dict[str, float]) -> list[str]:
    """Fill each row's `attr_focus` and `attr_focus_warning`; the flagged trials' ids."""
    flagged = focus_warnings(focus)
    for t in trials:
        t["attr_focus"] = focus.get(t["trial_id"])
        t["attr_focus_warning"] = flagged.get(t["trial_id"])
    return [k for k, v in flagged.items() if v]


def evaluate_on_test(
    trials: list[dict],
    experiment_path: str,
    task: Task,
    test: str | Callable[[], dict],
    metric: str,
    mode: str,
    top_k: int = 1,
    seed: int = 0,
    resources: dict | None = None,
) -> dict | None:
    """Test metrics (with CIs) of the best `top_k` trials; writes test_metrics.json. `test`:
    the npz path, or a callable giving the test arrays where it is called (module docstring);
    `resources`: run each prediction as a Ray task asking for them."""
    chosen = with_checkpoints(trials, metric, mode)[:top_k]
    if not chosen:
        return None
    if isinstance(test, str):  # the only read of the test split
        arrays = load_npz(test, task, splits=("test",))
        test = ray.put(arrays) if resources is not None else (lambda: arrays)
    if resources is None:
        predictions = [predict_test(t["checkpoint_path"], test) for t in chosen]
    else:
        remote = predict_test_task.options(**resources)
        predictions = ray.get([remote.remote(t["checkpoint_path"], test) for t in chosen])
    results = {}
    for t, (labels, probs) in zip(chosen, predictions, strict=True):
        y, scores = task.kind_ops.test_inputs(labels, probs)
        results[t["trial_id"]] = evaluate_predictions(task.kind, y, scores, list(task.classes),
                                                      seed=seed)  # fmt: skip
        write_npz(join_path(experiment_path, t["trial_id"], TEST_PREDICTIONS_FILE),
                  labels=labels, probs=probs)  # fmt: skip
    out = {"best_trial": chosen[0]["trial_id"], "trials": results}
    text = json.dumps(to_jsonable(out), indent=2, allow_nan=False)
    write_text(join_path(experiment_path, TEST_METRICS_FILE), text)
    return out


def predict_test(checkpoint_path: str, test) -> tuple[np.ndarray, np.ndarray]:
    """(test labels, probabilities) of one checkpoint; `test` is the arrays or a callable
    giving them. Batches go to this process's GPU when it has one."""
    import torch

    arrays = test() if callable(test) else test
    ckpt = load_checkpoint(local_copy(checkpoint_path))
    model = model_from_checkpoint(ckpt)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return np.asarray(arrays["test_labels"]), predict(ckpt, model, arrays["test_images"])


@ray.remote
def predict_test_task(checkpoint_path: str, test) -> tuple[np.ndarray, np.ndarray]:
    """`predict_test` as a Ray task (where the trials run: it asks for a trial's resources)."""
    return predict_test(checkpoint_path, test)
