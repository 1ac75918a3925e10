"""A search you can watch: where it is, how long it has left, and whether it is worth starting.

    log_start(plan, dashboard_url)           # experiment folder, Ray dashboard, optuna-dashboard
    seconds = cpu_estimate(plan, inputs)     # measured forward+backward of one batch, on CPU
    Progress(trials=20, epochs=planned_epochs(values), max_concurrent=2)   # a Tune Callback

`Progress` logs, after the first round of epochs and then at most every `every_s` seconds,
the epochs done and an estimate of the time left: epochs still planned x the mean measured
epoch time / trials at once, capped under `--time-budget` by the budget left plus one trial's
epochs. It is an upper bound: ASHA stops weak trials early. `cpu_estimate` times one
forward+backward pass of a small batch of each model the space may pick on this machine's
CPU and scales it to the search (batches per epoch, epochs, trials, trials at once); the
pipeline warns before starting when that exceeds `SLOW_S` (an hour).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import time

from ray.tune import Callback

from search.driver.slots import Idle, slot_use, slot_use_text
from search.experiment.storage import join_path
from search.experiment.tables import ERRORED, TRIALS_FILE, config_of
from trainables.config import planned_epochs
from trainables.scores import best_of

log = logging.getLogger("medsweep")
SLOW_S = 3600.0
PROBE_IMAGES = 16  # images in the timed batch (scaled up to the batch size)
EVAL_SHARE = 1 / 3  # a forward pass over val costs about a third of a training step per image


def log_start(plan, dashboard: str | None) -> None:
    """The lines to watch a search by: its folder and the Ray dashboard (the tuner logs the
    `optuna-dashboard` line where it opens the study: `search.driver.searcher.study_storage`)."""
    log.info("experiment: %s", plan.experiment_path)
    log.info("Ray dashboard: %s", dashboard or "none (this cluster runs no dashboard)")


def duration(seconds: float) -> str:
    """`42 s`, `3 min 20 s`, `2.4 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds / 3600:.1f} h"


class Progress(Callback):
    """Epochs done and time left, on the log (plain data only: Tune pickles its callbacks)."""

    def __init__(
        self,
        trials: int,
        epochs: int,
        max_concurrent: int,
        time_budget_s: float | None = None,
        every_s: float = 30.0,
        metric: str | None = None,
        mode: str = "max",
    ) -> None:
        self.trials, self.epochs, self.max_concurrent = trials, max(1, epochs), max_concurrent
        self.time_budget_s, self.every_s = time_budget_s, every_s
        self.metric, self.mode = metric, mode
        self.done: dict[str, int] = {}
        self.epoch_times: list[float] = []
        self.started = self.last = None

    def setup(self, **info) -> None:
        self.started = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.done[trial.trial_id] = int(result.get("training_iteration", 0))
        self.epoch_times.append(float(result.get("time_this_iter_s", 0.0)))
        now = time.time()
        first_round = len(self.epoch_times) >= min(self.max_concurrent, self.trials)
        if first_round and (self.last is None or now - self.last >= self.every_s):
            self.last = now
            log.info("%s", self.line(now))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """One line per trial that ends: finished, or stopped early (ASHA, the budget)."""
        result = trial.last_result or {}
        epoch = int(result.get("training_iteration", 0))
        how = "finished" if epoch >= self.epochs else f"stopped early at epoch {epoch}"
        log.info("trial %s %s: %s", trial.trial_id, how, self.best_text(trial))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        log.warning("trial %s errored: %s", trial.trial_id, last_error_line(trial))

    def best_text(self, trial) -> str:
        best = (getattr(trial, "metric_analysis", {}) or {}).get(self.metric or "", {})
        value = best.get(self.mode)
        return "no result" if value is None else f"best {self.metric} {value:.4f}"

    def remaining_s(self, now: float) -> float:
        """Seconds left at most (see the module docstring)."""
        per_epoch = sum(self.epoch_times) / max(1, len(self.epoch_times))
        left = max(0, self.trials * self.epochs - sum(self.done.values()))
        seconds = left * per_epoch / max(1, self.max_concurrent)
        if self.time_budget_s is not None and self.started is not None:
            budget_left = max(0.0, self.time_budget_s - (now - self.started))
            seconds = min(seconds, budget_left + self.epochs * per_epoch)
        return seconds

    def line(self, now: float) -> str:
        per_epoch = sum(self.epoch_times) / max(1, len(self.epoch_times))
        done = sum(self.done.values())
        elapsed = now - (self.started or now)
        return (
            f"progress {bar(elapsed, self.remaining_s(now))}: {done} of "
            f"{self.trials * self.epochs} epochs ({len(self.done)} of "
            f"{self.trials} trials started), {per_epoch:.1f} s per epoch; about "
            f"{duration(self.remaining_s(now))} left at most (ASHA stops weak trials "
            "early)"
        )


def bar(elapsed: float, left: float, width: int = 20) -> str:
    """`[#####---------------] 25%`: the time elapsed over elapsed + the time left at most (so
    the share done is at least this)."""
    share = elapsed / (elapsed + left) if elapsed + left > 0 else 0.0
    filled = round(share * width)
    return f"[{'#' * filled}{'-' * (width - filled)}] {share:.0%}"


def last_error_line(trial) -> str:
    """The last line of the error Tune wrote for `trial` (its driver-side copy)."""
    path = trial.error_file
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except (OSError, TypeError):
        return "(its error is in the search's log)"
    return lines[-1] if lines else "(no message)"


def cpu_estimate(plan, inputs) -> tuple[float, str] | None:
    """(seconds, how) this search would take on this machine's CPUs, from a timed
    forward+backward pass of each model it may train; None when it cannot say."""
    values = inputs.values
    model = values.get("model") or inputs.task.model
    names = list(model.categories) if hasattr(model, "categories") else [model]
    if not all(isinstance(n, str) for n in names):
        return None
    size = int(values.get("image_size") or inputs.task.image_size)
    batch = int(values.get("batch_size") or 128) if not _searched(values, "batch_size") else 128
    n_train = len(inputs.source.labels["train_labels"])
    n_val = len(inputs.source.labels["val_labels"])
    batches = math.ceil(n_train / batch)
    if values.get("max_batches"):
        batches = min(batches, int(values["max_batches"]))
    step = {n: _step_seconds(n, inputs.task, size, batch, plan.cpus_per_worker) for n in names}
    per_image = sum(step.values()) / len(step) / batch
    epoch = per_image * (batches * batch + EVAL_SHARE * n_val)
    epochs = planned_epochs(values)
    total = plan.trials * epochs * epoch / max(1, plan.max_concurrent)
    how = (
        f"measured {', '.join(f'{n} {s:.2f} s' for n, s in step.items())} per batch of "
        f"{batch} at {size} px -> ~{duration(epoch)} per epoch; {plan.trials} trials x "
        f"{epochs} epochs, {plan.max_concurrent} at once"
    )
    return total, how


def _searched(values: dict, key: str) -> bool:
    return hasattr(values.get(key), "sample")


def _step_seconds(name: str, task, size: int, batch: int, cpus: float) -> float:
    """Seconds of one training step (forward+backward) of `batch` images, from a timed one of
    PROBE_IMAGES images after a warm-up, on `cpus` threads."""
    import torch

    from trainables.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cpus)))
    try:
        model = build_model(name, max(1, len(task.classes)), task.channels, size)
        x = torch.rand(min(batch, PROBE_IMAGES), task.channels, size, size)
        for _ in range(2):
            t0 = time.perf_counter()
            model(x).float().mean().backward()
        return (time.perf_counter() - t0) * batch / len(x)
    finally:
        torch.set_num_threads(threads)


def warn_if_slow(plan, inputs, space_path: str) -> None:
    """Before the first trial: a CPU search estimated above an hour is said to be one, with the
    faster options."""
    if plan.gpus_per_trial > 0:
        return
    try:
        found = cpu_estimate(plan, inputs)
    except Exception as err:  # an estimate must never stop a search
        log.info("no time estimate (%s)", err)
        return
    if found is None or found[0] <= SLOW_S:
        return
    seconds, how = found
    presets = sorted(
        glob.glob(os.path.join(os.path.dirname(space_path), f"{inputs.task.name}-*.yaml"))
    )
    faster = [f"--space {os.path.relpath(p)}" for p in presets if "cnn" in p] or []
    faster += [
        "--smoke-test",
        "fewer --trials / --epochs",
        "a GPU (--gpus-per-trial 1 on a machine with one, or --address of a GPU cluster)",
    ]
    log.warning(
        "this search would take about %s on this machine's CPUs (%s); faster: %s",
        duration(seconds),
        how,
        "; ".join(faster),
    )


def summarise(trials: list[dict], plan, wall_s: float, idle: Idle | None = None) -> int:
    """Print the best trial and any failures, the slot use and where the idle slot time went
    (`search.driver.slots`); the exit code (1 only if every trial failed)."""
    errored = [t for t in trials if t["status"] == ERRORED]
    for t in errored:
        log.warning(
            "trial %s errored: %s", t["trial_id"], "".join((t["error"] or "").splitlines()[-1:])
        )
    best = best_of(trials, plan.metric, plan.mode)
    if best is None:
        log.error(
            "no trial produced a %s (%d errored of %d)", plan.metric, len(errored), len(trials)
        )
        return 1
    log.info(
        "\n%d trials in %.0f s (%d errored). Best trial %s: %s = %.4f at epoch %s",
        len(trials),
        wall_s,
        len(errored),
        best["trial_id"],
        plan.metric,
        best[plan.metric],
        best["best_epoch"],
    )
    use = slot_use(trials, wall_s, plan.max_concurrent)
    if use is not None:
        log.info("  slot use: %.2f (%s)", use, slot_use_text(trials, wall_s, plan.max_concurrent))
    if idle is not None:
        log.info("  idle slot time: %s", idle.text())
    log.info("  config: %s", config_of(best))
    log.info("  checkpoint: %s", best["checkpoint_path"])
    log.info("  results: %s", join_path(plan.experiment_path, TRIALS_FILE))
    return 0
