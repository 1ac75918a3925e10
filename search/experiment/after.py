"""After the search: attribution maps for every trial (as Ray tasks), then the test split, once.

    explain = ExplainSettings("val_auc", "max", seed=0, resources={"num_cpus": 1})
    focus = explain_trials(trials, experiment_path, task, reader, explain)
    flagged = attach_focus(trials, focus)       # attr_focus / attr_focus_warning columns
    evaluate_on_test(trials, experiment_path, task, reader,
                     EvaluationSettings("val_auc", "max", 1, 0, resources))

The settings are small frozen records (`search.experiment.after_settings`); `reader` is the
search's split reader (`search.data.reader.SplitReader`, seen here as the `Reader` protocol),
the same one its trials read: resident arrays in the object store, or each node's cache.

Attribution runs one Ray task per trial's best checkpoint, asking for `resources` (what a trial's
worker asks for: its GPU share and CPUs, so it runs where trials run, not on the driver), on the
same panel of validation images for every trial (a few per class, chosen with the search seed
from the reader's labels); `explain_checkpoint` is the same work as a plain call. Each task reads
the panel's rows of the validation split through the reader on its own node (zero-copy from the
object store, or the rows of the node cache's memmaps). It writes
`<trial>/attribution/{gradcam.png, integrated_gradients.png, maps.npz}` and returns the focus
score per trial: the share of positive Integrated-Gradients mass on the image's foreground, where
the task record defines one (`Task.foreground`: "otsu" for single cells; None, as for pathology
tiles and X-rays, gives NaN, so no trial is flagged). What is explained, and the captions, come
from the task's kind (`trainables.kinds`: `explain_targets`, `caption`). A trial whose maps.npz
is there already (an interrupted run of this step) keeps its maps; its focus is read back from
them (`explained`).

The test split's images are read here and nowhere else, and only here is anything scored on
it (before the search, `search.driver.checks.check_data` validates the test labels and the
images' header, so a broken file fails before the search, not after): for the top-K trials
by the search metric it
writes `test_metrics.json` (with bootstrap 95% CIs) and `<trial>/test_predictions.npz` (labels,
probabilities, logits, `ids`: file names or row numbers, and `patients` where the npz has them).
The test split becomes readable here (`reader.with_split("test")`: a resident reader reads it
from the npz on the driver, once, and puts it in the object store; a node-cached one reads it
where the prediction runs); with `resources`, each prediction is a Ray task asking for them
and streams the images in batches to its device; without, it runs in this process. The same
task predicts the validation split with the same checkpoint: the threshold is chosen there
(`--operating-point`, optional `--temperature-scaling`: `trainables.calibration`), and the
bootstrap resamples patients where the npz names them (`{split}_patients`).
"""

from __future__ import annotations

import io
import json
import logging
import os
from functools import partial

import numpy as np
import ray

from search.experiment.after_settings import EvaluationSettings, ExplainSettings, Reader
from search.experiment.layout import (
    ATTRIBUTION_DIR,
    FOCUS_GAP,
    GRADCAM_PNG,
    IG_PNG,
    MAPS_FILE,
    TEST_METRICS_FILE,
    TEST_PREDICTIONS_FILE,
)
from search.experiment.storage import (
    join_path,
    local_copy,
    local_dir,
    read_bytes,
    write_npz,
    write_text,
)
from trainables import attribution as A
from trainables.calibration import evaluate_split_pair
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, normalised_input, predict
from trainables.evaluation import to_jsonable
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
    reader: Reader,
    settings: ExplainSettings,
) -> dict[str, float]:
    """Attribution maps for the best `settings.top_k` trials (all by default); {trial_id:
    focus}. `reader`: the search's splits (the panel is drawn from its validation labels)."""
    chosen = with_checkpoints(trials, settings.metric, settings.mode)[: settings.top_k or None]
    focus = explained(chosen, experiment_path)
    chosen = [t for t in chosen if t["trial_id"] not in focus]
    if not chosen:
        return focus
    panel = panel_ref(task, reader, settings)
    futures = {
        t["trial_id"]: explain_task(t, experiment_path, panel, settings, task.foreground)
        for t in chosen
    }
    return {**focus, **gather(futures)}


def panel_ref(task: Task, reader: Reader, settings: ExplainSettings) -> ray.ObjectRef:
    """The validation panel every trial is explained on, with the reader that reads its rows,
    in the object store (each task reads the rows itself)."""
    panel = A.choose_panel(reader.labels("val"), task.kind, settings.per_class, settings.seed)
    return ray.put((reader, np.asarray(panel)))


def explain_task(
    trial: dict, experiment_path: str, panel: ray.ObjectRef, settings: ExplainSettings, foreground
) -> ray.ObjectRef:
    """Start `trial`'s attribution (a Ray task on `settings.resources`, a trial worker's);
    its future. `trial`: a row with `trial_id` and `checkpoint_path`."""
    remote = explain_one.options(**(settings.resources or {"num_cpus": 1}))
    out_dir = join_path(experiment_path, trial["trial_id"], ATTRIBUTION_DIR)
    return remote.remote(trial["checkpoint_path"], out_dir, panel, dict(settings.ig), foreground)


def gather(futures: dict[str, ray.ObjectRef]) -> dict[str, float]:
    """{trial_id: focus} of finished attribution tasks; one that failed is logged and left
    out (one broken checkpoint must not cost the others their maps)."""
    focus = {}
    for trial_id, future in futures.items():
        try:
            focus[trial_id] = ray.get(future)
        except Exception as err:
            log.warning("attribution for trial %s failed: %s", trial_id, err)
    return focus


def explained(chosen: list[dict], experiment_path: str) -> dict[str, float]:
    """{trial_id: focus} of the `chosen` trials whose maps are written already (an earlier,
    interrupted run of this step: maps.npz is written last, atomically); kept, not redone."""
    focus = {}
    for t in chosen:
        data = read_bytes(join_path(experiment_path, t["trial_id"], ATTRIBUTION_DIR, MAPS_FILE))
        if data is not None:
            with np.load(io.BytesIO(data), allow_pickle=False) as maps:
                focus[t["trial_id"]] = mean_focus(maps["focus"])
    if focus:
        log.info("attribution: %d trial(s) explained already; their maps are kept", len(focus))
    return focus


def mean_focus(focus: np.ndarray) -> float:
    """A trial's focus score: the mean over its panel's finite scores (NaN when none is)."""
    finite = focus[np.isfinite(focus)]
    return float(finite.mean()) if len(finite) else float("nan")


@ray.remote
def explain_one(
    checkpoint_path: str, out_dir: str, panel: tuple, ig: dict, foreground: str | None = "otsu"
) -> float:
    """`explain_checkpoint` as a Ray task on `panel`: (a split reader, validation rows)."""
    reader, rows = panel
    val = reader.arrays(("val",))
    images = (np.asarray(val["val_images"][rows]), np.asarray(val["val_labels"][rows]))
    return explain_checkpoint(checkpoint_path, out_dir, images, ig, foreground)


def explain_checkpoint(
    checkpoint_path: str, out_dir: str, panel: tuple, ig: dict, foreground: str | None = "otsu"
) -> float:
    """Grad-CAM + IG grids and raw maps for one checkpoint on `panel` (images, labels);
    returns the mean focus score (NaN when no map has one, or `foreground` is None: the task
    defines no foreground)."""
    import torch

    images, labels = panel
    ckpt = load_checkpoint(local_copy(checkpoint_path))
    kind = get_kind(ckpt["kind"])
    model = model_from_checkpoint(ckpt)
    probs = predict(ckpt, model, images)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    explain = kind.for_labels(images=partial(_explain_images, ig=ig), masks=_explain_masks)
    return explain(ckpt, model, out_dir, (images, labels, probs), foreground)


def _explain_images(ckpt: dict, model, out_dir: str, panel: tuple, foreground, ig: dict) -> float:
    """An image-label checkpoint's Grad-CAM and IG (`ig`: its settings) grids and maps, for
    the outputs `Kind.explain_targets` picks; the mean focus score (NaN where `foreground` is
    None)."""
    images, labels, probs = panel
    kind = get_kind(ckpt["kind"])
    rows, targets = kind.explain_targets(labels, probs)
    x = normalised_input(ckpt, images[rows]).to(next(model.parameters()).device)
    cams = A.gradcam_maps(model, x, A.cam_layer(model, x), targets)
    igs = A.integrated_gradients_maps(model, x, targets, A.IGSettings(**ig))
    defined = foreground == "otsu"
    focus = A.focus_score(images[rows], igs) if defined else np.full(len(rows), np.nan)
    classes = [_short(c) for c in ckpt["classes"]]
    captions = [
        kind.caption(labels[r], probs[r], t, classes) for r, t in zip(rows, targets, strict=True)
    ]
    with local_dir(out_dir) as local:
        A.save_grid(os.path.join(local, GRADCAM_PNG), images[rows], cams, captions, "Grad-CAM")
        A.save_grid(
            os.path.join(local, IG_PNG),
            images[rows],
            igs,
            captions,
            "Integrated Gradients (SmoothGrad)",
        )
        A.save_maps(
            os.path.join(local, MAPS_FILE),
            rows=rows,
            targets=np.asarray(targets),
            gradcam=cams,
            integrated_gradients=igs,
            focus=focus,
            probs=probs[rows],
        )
    return mean_focus(focus)


def _explain_masks(ckpt: dict, model, out_dir: str, panel: tuple, foreground) -> float:
    """A segmentation checkpoint's panel grid (`gradcam.png`: image | true mask | predicted
    mask | Grad-CAM of the predicted foreground) and maps; the mean share of Grad-CAM on the
    true masks (NaN where the task defines no foreground). Integrated Gradients is skipped:
    a summed-foreground IG costs steps x samples U-Net passes per image on the CPU."""
    images, labels, probs = panel
    kind = get_kind(ckpt["kind"])
    predicted = kind.predictions(probs)
    x = normalised_input(ckpt, images).to(next(model.parameters()).device)
    cams = A.mask_gradcam_maps(model, x, model.cam_layer, predicted)
    focus = A.mask_focus(labels, cams) if foreground else np.full(len(images), np.nan)
    classes = [_short(c) for c in ckpt["classes"]]
    captions = [kind.caption(labels[i], probs[i], 0, classes) for i in range(len(images))]
    with local_dir(out_dir) as local:
        A.save_mask_grid(
            os.path.join(local, GRADCAM_PNG),
            images,
            labels,
            predicted,
            cams,
            captions,
            f"Grad-CAM of the predicted {classes[-1]}",
        )
        A.save_maps(
            os.path.join(local, MAPS_FILE), gradcam=cams, focus=focus, probs=probs, masks=labels
        )
    return mean_focus(focus)


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
    reader: Reader,
    settings: EvaluationSettings,
    trial_ids: list[str] | None = None,
) -> dict | None:
    """Test metrics (with CIs) of the best `settings.top_k` trials; writes test_metrics.json.
    `reader`: the splits (module docstring); `settings.resources`: run each prediction as a
    Ray task asking for them. `trial_ids`: these trials instead, in this order (the first is
    `best_trial`: `search.experiment.deploy`, `--select` and `--ensemble`)."""
    chosen = with_checkpoints(trials, settings.metric, settings.mode)[: settings.top_k]
    if trial_ids:
        by_id = {t["trial_id"]: t for t in trials}
        chosen = [by_id[i] for i in trial_ids]
    if not chosen:
        return None
    reader = reader.with_split("test")  # the only read of the test split
    if settings.resources is None:
        predictions = [predict_pair(t["checkpoint_path"], reader) for t in chosen]
    else:
        remote, reader_ref = predict_pair_task.options(**settings.resources), ray.put(reader)
        predictions = ray.get([remote.remote(t["checkpoint_path"], reader_ref) for t in chosen])
    ids = row_ids(reader.path)
    results = {}
    for t, (test_out, val_out) in zip(chosen, predictions, strict=True):
        result, probs = _evaluate(task, test_out, val_out, ids, settings)
        results[t["trial_id"]] = result
        extra = {"patients": ids["test_patients"]} if ids.get("test_patients") is not None else {}
        write_npz(
            join_path(experiment_path, t["trial_id"], TEST_PREDICTIONS_FILE),
            labels=test_out[0],
            probs=probs,
            logits=test_out[1],
            ids=_image_ids(ids, len(test_out[0])),
            **extra,
        )
    out = {"best_trial": chosen[0]["trial_id"], "trials": results}
    text = json.dumps(to_jsonable(out), indent=2, allow_nan=False)
    write_text(join_path(experiment_path, TEST_METRICS_FILE), text)
    return out


def _evaluate(task: Task, test_out, val_out, ids: dict, settings: EvaluationSettings):
    """(test figures, test probabilities) of one checkpoint's (labels, logits) per split:
    per image, or per mask (`Kind.for_labels`)."""
    evaluate = task.kind_ops.for_labels(images=_evaluate_images, masks=_evaluate_masks)
    return evaluate(task, test_out, val_out, ids, settings)


def _evaluate_masks(task: Task, test_out, val_out, ids: dict, settings: EvaluationSettings):
    """A mask kind's test figures (`Kind.test_figures`: CIs over images, threshold 0.5)."""
    import torch

    probs = task.kind_ops.probabilities(torch.as_tensor(np.array(test_out[1])))
    y, scores = task.kind_ops.test_inputs(test_out[0], probs)
    return task.kind_ops.test_figures(y, scores, list(task.classes), seed=settings.seed), probs


def _evaluate_images(task: Task, test_out, val_out, ids: dict, settings: EvaluationSettings):
    """Image-label test figures at the operating point chosen on validation (calibration
    included)."""
    point, scaling = settings.operating_point, settings.temperature_scaling
    groups = (ids.get("val_patients"), ids.get("test_patients"))
    return evaluate_split_pair(
        task.kind,
        list(task.classes),
        val_out,
        test_out,
        point,
        scaling,
        settings.seed,
        groups=groups,
    )


def row_ids(path: str | None) -> dict:
    """`test_files`, `val_patients` and `test_patients` of an npz where it has them (a
    converted folder), each None where it does not (a MedMNIST file, or no local path)."""
    out = dict.fromkeys(("test_files", "val_patients", "test_patients"))
    if not path or not os.path.isfile(path):
        return out
    with np.load(path, allow_pickle=False) as npz:
        for key in out:
            if key in npz.files:
                out[key] = np.asarray(npz[key]).astype(str)
    for key in ("val_patients", "test_patients"):
        if out[key] is not None and (out[key] == "").any():
            out[key] = None  # some images name no patient: resample images
    return out


def _image_ids(ids: dict, n: int) -> np.ndarray:
    files = ids.get("test_files")
    return files if files is not None and len(files) == n else np.arange(n).astype(str)


def predict_split(checkpoint_path: str, reader: Reader, split: str) -> tuple:
    """(stored labels, logits) of one checkpoint on `split`, read here through `reader`;
    batches go to this process's GPU when it has one."""
    import torch

    arrays = reader.arrays((split,))
    ckpt = load_checkpoint(local_copy(checkpoint_path))
    model = model_from_checkpoint(ckpt)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    images = arrays[f"{split}_images"]
    return np.asarray(arrays[f"{split}_labels"]), predict(ckpt, model, images, logits=True)


def predict_pair(checkpoint_path: str, reader: Reader) -> tuple[tuple, tuple]:
    """((test labels, logits), (val labels, logits)) of one checkpoint."""
    val_out = predict_split(checkpoint_path, reader, "val")
    return predict_split(checkpoint_path, reader, "test"), val_out


@ray.remote
def predict_pair_task(checkpoint_path: str, reader: Reader) -> tuple[tuple, tuple]:
    """`predict_pair` as a Ray task (where the trials run: it asks for a trial's resources)."""
    return predict_pair(checkpoint_path, reader)
