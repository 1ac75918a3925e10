"""k-fold cross-validation inside each trial: `--folds K` scores a config on K folds of train+val.

    python search/run.py --task blood --folds 5            # each trial trains 5 folds
    splits = fold_splits(labels, "multiclass", k=5, seed=0)             # [(train_idx, val_idx)]
    splits = fold_splits(labels, "binary", 5, 0, groups=patient_groups(arrays))  # whole patients
    labels, groups = pooled_labels(reader), patient_groups(pooled_files(reader))  # a SplitReader

Splits, over train+val concatenated in that order (test is never touched):
- kinds whose `fold_strata` gives class ids (multiclass, binary):
  `StratifiedKFold(shuffle=True, random_state=seed)`, so every fold's validation part holds
  each class within one image of its share.
- patient ids (`{train,val}_files` arrays, as `search.data.folders` writes, where every
  name carries one): `StratifiedGroupKFold`, so a patient's images stay on one side.
- kinds with no strata (multilabel): `KFold` (`GroupKFold` with patients), shuffled.
  Stratifying on the first label would balance that label alone and nothing else; on
  thousands of images a shuffled split keeps every label's share close anyway. A label with
  fewer than K positives is an error.
The seed is the search's (`--seed`), so every trial is scored on the same folds.

How a trial runs (`folds_driver`, the Tune trainable when `plan.folds > 1`): the driver holds a
sliver of a CPU; the labels and file names come from the search's split reader
(`search.data.reader`: of a streamed search, its descriptor), and each fold is a Ray task that
reads the data through the same reader (streamed data: it maps its node's cache and indexes
the memmaps, `fold_data`) and runs `trainables.train.train_loop` on its split
and returns its per-epoch metrics and its best checkpoint (`model.pt` bytes). A fold asks for
what one trial asks for otherwise: `--gpus-per-trial` GPUs and `--cpus-per-worker` CPUs, less
the driver's sliver (so a driver and its folds fill whole CPUs: with 1 CPU per fold, the two
folds of a trial run side by side on 2 cores instead of one after the other). Folds run in
parallel as far as the cluster's free resources allow; the rest wait in Ray's queue.

What Tune sees: after all K folds finish, one result per epoch: the mean over folds of every
number (`val_auc`, `val_loss`, `epoch`, ...), `<m>_std` (population std over folds, as
scikit-learn's `cross_validate` users read it) for each `val_*` metric, `fold_<i>_<metric>` per
fold (0-based, as scikit-learn's `split<i>_test_score`), `folds`, `best_fold` and
`best_fold_epoch`. ASHA therefore sees the epochs replayed after the work is done: it still
ranks and may stop a trial, but early stopping cannot save compute under `--folds`.

Checkpoint: the best fold's own best checkpoint, a normal self-describing one (its `epoch` and
`metrics` are that fold's, so its epoch may differ from the trial's best epoch of the mean). It is
attached to every result where the mean metric reaches a new best (a tie keeps the earlier
epoch, `trainables.scores.improves`), so the best result of any prefix that ASHA lets through
carries it. A fold that raises fails the trial
(`RuntimeError: fold i of K failed: ...`) and cancels its other folds. A retried or restored
trial trains all its folds again; Ray Train (`--workers-per-trial` > 1) is not used.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import ray
from ray import tune
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from search.data.folder_split import patient_id
from search.data.reader import SplitReader
from search.driver.plan import DRIVER_CPU, Plan
from trainables.checkpoint import FILENAME
from trainables.data import SEARCH_SPLITS
from trainables.kinds import get_kind
from trainables.scores import CHECKPOINT_SCORE, checkpoint_score, improves, sort_key
from trainables.stream import Rows, is_streamed
from trainables.tasks import Task, get_task
from trainables.train import train_loop

log = logging.getLogger("medsweep")
FoldResult = tuple[list[dict], bytes | None, int | None]  # (history, best model.pt, its epoch)


def fold_splits(
    labels: np.ndarray,
    kind: str,
    k: int,
    seed: int,
    groups: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, val_idx) per fold over `labels` ((N,) or (N, L)); see the module docstring.

    `classes` only names the classes in error messages.
    """
    labels = np.asarray(labels).reshape(len(labels), -1)
    _check_k(k, len(labels))
    if groups is not None:
        _check_groups(np.asarray(groups), len(labels), k)
    x = np.zeros(len(labels))
    strata = get_kind(kind).fold_strata(labels)
    if strata is None:  # nothing to stratify on: a shuffled split keeps shares close anyway
        _check_counts((labels == 1).sum(axis=0), k, classes, "positive label(s)")
        cv = (GroupKFold if groups is not None else KFold)(k, shuffle=True, random_state=seed)
        return list(cv.split(x, groups=groups))
    _check_counts(np.bincount(strata), k, classes, "image(s)")
    cv = (StratifiedGroupKFold if groups is not None else StratifiedKFold)(
        k, shuffle=True, random_state=seed
    )
    return list(cv.split(x, strata, groups))


def _check_k(k: int, n: int) -> None:
    if k < 2:
        raise ValueError(
            f"--folds {k}: k-fold cross-validation needs k >= 2 (0 keeps the given train/val "
            "split)"
        )
    if k > n:
        raise ValueError(f"--folds {k}: only {n} images in train+val; lower --folds")


def _check_groups(groups: np.ndarray, n: int, k: int) -> None:
    if len(groups) != n:
        raise ValueError(f"{len(groups)} patient ids for {n} images; expected one per image")
    patients = len(np.unique(groups))
    if patients < k:
        raise ValueError(
            f"--folds {k}: only {patients} patient(s) in train+val, and whole patients go to "
            f"one side; lower --folds to {patients} or below"
        )


def _check_counts(counts: np.ndarray, k: int, classes: Sequence[str] | None, what: str) -> None:
    """Every class present needs k examples: one in each fold's validation part."""
    thin = [(c, int(n)) for c, n in enumerate(counts) if 0 < n < k]
    if not thin:
        return
    names = [f"{_name(c, classes)} has {n}" for c, n in thin]
    fewest = min(n for _, n in thin)
    fix = f"lower --folds to {fewest}" if fewest >= 2 else "run without --folds"
    raise ValueError(
        f"--folds {k}: class {', '.join(names)} {what} in train+val, fewer than k={k}, so some "
        f"fold would validate without it; {fix} or add images"
    )


def _name(c: int, classes: Sequence[str] | None) -> str:
    return f"{classes[c]!r} ({c})" if classes is not None and c < len(classes) else str(c)


def patient_groups(arrays: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Patient id per image of train+val (in pooled order): `{train,val}_patients` where the
    data names every one, else read from `{train,val}_files`; None when those arrays are absent
    (MedMNIST) or some file name carries no id (with a warning)."""
    given = [arrays.get(f"{s}_patients") for s in SEARCH_SPLITS]
    if all(p is not None for p in given):  # the data names them (a table's patient column)
        ids = np.concatenate(given).astype(str)
        if ids.size and all(ids):
            return ids
    names = [arrays.get(f"{s}_files") for s in SEARCH_SPLITS]
    if any(n is None for n in names):
        return None
    files = [str(f) for f in np.concatenate(names)]
    ids = [patient_id(f) for f in files]
    anonymous = [f for f, i in zip(files, ids, strict=True) if i is None]
    if anonymous:
        warnings.warn(
            f"{len(anonymous)} of {len(files)} file names carry no patient id (e.g. "
            f"{anonymous[0]}); folds split images, not patients",
            stacklevel=2,
        )
        return None
    return np.array(ids)


def pooled_labels(reader: SplitReader) -> np.ndarray:
    """The labels of train+val, in pooled order (no image is read where the reader streams)."""
    return np.concatenate([reader.labels(s) for s in SEARCH_SPLITS])


def pooled_files(reader: SplitReader) -> dict:
    """`{train,val}_files` and `_patients` (None where the data names none), for
    `patient_groups`."""
    files = {f"{s}_files": reader.files(s) for s in SEARCH_SPLITS}
    return {**files, **{f"{s}_patients": reader.patients(s) for s in SEARCH_SPLITS}}


def take(arrays: Mapping[str, np.ndarray], part: str, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` (sorted) of train+val concatenated, without building the concatenation."""
    n = len(arrays[f"train_{part}"])
    idx = np.sort(idx)
    return np.concatenate(
        [arrays[f"train_{part}"][idx[idx < n]], arrays[f"val_{part}"][idx[idx >= n] - n]]
    )


def fold_data(arrays: Mapping[str, np.ndarray], train_idx, val_idx) -> dict:
    """The train/val arrays of one fold, in the layout `train_loop` reads. Streamed images
    (memmaps) stay where they are: the fold's images are `Rows` of them, in the same order."""
    streamed = is_streamed(arrays["train_images"])
    pooled = Rows([arrays["train_images"], arrays["val_images"]])
    out = {}
    for split, idx in (("train", train_idx), ("val", val_idx)):
        out[f"{split}_labels"] = take(arrays, "labels", idx)
        out[f"{split}_images"] = (
            pooled.subset(np.sort(idx)) if streamed else take(arrays, "images", idx)
        )
    return out


def fold_resources(plan: Plan) -> dict:
    """Ray task options of one fold: one trial's worth, less the driver's sliver of a CPU."""
    cpus = max(plan.cpus_per_worker - DRIVER_CPU, DRIVER_CPU)
    # "DEFAULT" escapes the trial's placement group, which Tune makes capture child tasks.
    return {"num_cpus": cpus, "num_gpus": plan.gpus_per_trial, "scheduling_strategy": "DEFAULT"}


@ray.remote
def train_fold(
    reader: SplitReader,
    train_idx,
    val_idx,
    config: dict,
    task: Task,
    metric: str,
    mode: str,
    threads: int,
) -> FoldResult:
    """One fold: train, keep every epoch's metrics and the best epoch's `model.pt` bytes."""
    import torch

    torch.set_num_threads(threads)
    arrays = reader.arrays()  # resident: zero-copy; streamed: this node's memory-mapped cache
    history: list[dict] = []
    best: dict = {"value": None, "bytes": None, "epoch": None}

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        history.append(dict(metrics))
        value = metrics.get(metric)
        if checkpoint_dir and improves(value, best["value"], mode):  # ties: the earlier epoch
            with open(os.path.join(checkpoint_dir, FILENAME), "rb") as f:
                best.update(value=value, bytes=f.read(), epoch=int(metrics["epoch"]))

    train_loop(config, report, fold_data(arrays, train_idx, val_idx), task=task)
    return history, best["bytes"], best["epoch"]


def fold_config(config: dict, fold: int) -> dict:
    """A fold's trial config: its checkpoint's data fingerprint names the fold."""
    fingerprint = config.get("data_fingerprint") or {}
    return {**config, "data_fingerprint": {**fingerprint, "fold": fold}}


def run_folds(config: dict, reader: SplitReader, splits: list, plan: Plan, task: Task) -> list:
    """Every fold as a Ray task; their results in fold order. A failed fold cancels the rest
    and raises `RuntimeError: fold i of K failed: <its error>`."""
    threads = max(1, round(plan.cpus_per_worker))
    remote = train_fold.options(**fold_resources(plan))
    reader_ref = ray.put(reader)  # once for K folds: a streamed reader carries the labels
    futures = [
        remote.remote(
            reader_ref, tr, va, fold_config(config, i), task, plan.metric, plan.mode, threads
        )
        for i, (tr, va) in enumerate(splits)
    ]
    pending = {f: i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done)
        try:
            results[i] = ray.get(done)
        except ray.exceptions.RayError as err:
            for f in pending:
                ray.cancel(f, force=True)
            cause = getattr(err, "cause", None) or err
            message = f"fold {i} of {len(futures)} failed: {type(cause).__name__}: {cause}"
            raise RuntimeError(message) from None
    return results


def fold_metrics(histories: list[list[dict]], metric: str) -> list[dict]:
    """Per epoch: the mean over folds of every number, `<m>_std` for `val_*` metrics, and
    `fold_<i>_<metric>`. Epochs that not every fold reached are dropped."""
    rows = []
    for epoch in range(min(len(h) for h in histories)):
        per_fold = [h[epoch] for h in histories]
        keys = [k for k, v in per_fold[0].items() if _number(v) and all(k in r for r in per_fold)]
        values = {k: np.array([float(r[k]) for r in per_fold]) for k in keys}
        row = {k: float(v.mean()) for k, v in values.items()}
        row |= {f"{k}_std": float(v.std()) for k, v in values.items() if k.startswith("val_")}
        row |= {f"fold_{i}_{metric}": float(r.get(metric, np.nan)) for i, r in enumerate(per_fold)}
        rows.append(row)
    return rows


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def best_fold(results: list[FoldResult], metric: str, mode: str) -> int:
    """The fold whose own best checkpoint scores best (ties: the lower index)."""

    def score(i: int) -> float:
        history, _, epoch = results[i]
        row = next((r for r in history if r.get("epoch") == epoch), {})
        return sort_key(row.get(metric), mode)

    return max(range(len(results)), key=lambda i: (score(i), -i))


def report_folds(results: list[FoldResult], metric: str, mode: str) -> None:
    """`tune.report` one result per epoch; the best fold's checkpoint rides on each new best."""
    rows = fold_metrics([history for history, _, _ in results], metric)
    chosen = best_fold(results, metric, mode)
    _, model_bytes, fold_epoch = results[chosen]
    extra = {
        "folds": len(results),
        "best_fold": chosen,
        "best_fold_epoch": fold_epoch or 0,
        "node_id": ray.get_runtime_context().get_node_id(),
    }
    with tempfile.TemporaryDirectory(prefix="medsweep-fold-ckpt-") as tmp:
        if model_bytes is not None:
            with open(os.path.join(tmp, FILENAME), "wb") as f:
                f.write(model_bytes)
        best = None
        for row in rows:
            improved = model_bytes is not None and improves(row.get(metric), best, mode)
            best = row.get(metric) if improved else best
            checkpoint = tune.Checkpoint.from_directory(tmp) if improved else None
            score = {CHECKPOINT_SCORE: checkpoint_score(row.get(metric), improved, mode)}
            tune.report(
                {**row, **extra, **score}, checkpoint=checkpoint
            )  # Tune copies it before return


def folds_driver(config: dict, reader: SplitReader, plan: Plan) -> None:
    """The Tune trainable under `--folds K`: split, train the folds as Ray tasks, report."""
    if plan.workers_per_trial > 1:
        raise ValueError(
            f"--folds {plan.folds} runs each fold as one process; --workers-per-trial "
            f"{plan.workers_per_trial} (DDP) cannot be combined with it"
        )
    task = plan.task or get_task(config["task"])
    groups = patient_groups(pooled_files(reader))
    if groups is None and reader.files("train") is not None:  # converted data, no patients
        log.warning("--folds: no patient ids reach the folds, so they split images, not patients")
    labels = pooled_labels(reader)
    splits = fold_splits(labels, task.kind, plan.folds, plan.seed, groups, task.classes)
    report_folds(run_folds(config, reader, splits, plan, task), plan.metric, plan.mode)
