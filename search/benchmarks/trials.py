"""Trials run for timing: through the search's real tuner, and as a plain call of `train_loop`.

    run = run_trials(storage, "function", config, reader, n_trials=2)   # driver-side clock
    run = run_trials(storage, "function", config, SplitReader.node_cached(source), 4)  # streamed
    run["trials"][0]["rates"], run["trials"][0]["start_to_first_step_s"], run["wall_s"]
    plain = plain_call(config, data, device, threads=1)                  # the same loop, here

The start of training is read from report timestamps alone (`first_step_time`), so the
trainable is the search's own, unchanged.
"""

from __future__ import annotations

import statistics
import time
import uuid

import torch

from search.benchmarks.probes import sampling
from search.benchmarks.timing import torch_threads
from search.data.reader import SplitReader


def first_step_time(report_times: list[float], rates: list[float], seen: int) -> float:
    """When training's first step began, from report timestamps alone: the first report less
    epoch 1's training (`seen / rate`) and less its evaluation + report, taken as the smallest
    gap between later reports less their epoch's training (an epoch that met a busy spell of
    the host costs more, so the smallest is the closest)."""
    pairs = zip(report_times, report_times[1:], rates[1:], strict=False)
    gaps = [later - earlier - seen / rate for earlier, later, rate in pairs]
    return report_times[0] - seen / rates[0] - max(min(gaps, default=0.0), 0.0)


def plain_call(config: dict, data: dict, device: torch.device, threads: int) -> dict:
    """`train_loop` called as a plain function here, with a trial's thread count."""
    from trainables.train import Placement, train_loop

    times, rates = [], []

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        times.append(time.perf_counter())
        rates.append(metrics["images_per_s"])

    with torch_threads(threads):
        started = time.perf_counter()
        train_loop(config, report, data, placement=Placement(device=device))
        wall = time.perf_counter() - started
    seen = _seen(config, len(data["train_images"]))
    return {
        "rates": rates,
        "first_step_s": max(first_step_time(times, rates, seen) - started, 0.0),
        "wall_s": wall,
    }


def _seen(config: dict, n: int) -> int:
    """Training images an epoch sees, of `n` training images."""
    cap = config.get("max_batches", 0) * config["batch_size"]
    return min(n, cap) if cap else n


def _clock():
    from ray import tune

    class Clock(tune.Callback):
        """Driver-side perf_counter stamps: each trial's actor start and each of its results."""

        def __init__(self):
            self.started: dict[str, float] = {}
            self.results: dict[str, list[tuple[float, float]]] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.setdefault(trial.trial_id, time.perf_counter())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            stamp = (time.perf_counter(), result["images_per_s"])
            self.results.setdefault(trial.trial_id, []).append(stamp)

    return Clock()


def run_trials(
    storage: str,
    launcher: str,
    config: dict,
    reader: SplitReader,
    n_trials: int = 1,
    cpus: float = 1.0,
    gpus: float = 0.0,
    probes: dict | None = None,
    every_s: float = 0.5,
) -> dict:
    """`n_trials` identical trials at once through `search.driver.tuner`'s real path; per-trial
    timings from a driver-side clock (a Tune callback); `probes` sampled every `every_s`."""
    clock = _clock()
    tuner = _fixed_tuner(storage, launcher, config, reader, n_trials, cpus, gpus, clock)
    held_cpus(wait_s=20.0)  # the last run's actors give their CPUs back asynchronously
    with sampling(probes or {}, every_s) as samples:
        started = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - started
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n_trials} {launcher} trial(s) failed: {errors[0]}")
    seen = _seen(config, len(reader.labels("train")))
    trials = []
    for trial_id, stamps in clock.results.items():
        times, rates = [t for t, _ in stamps], [r for _, r in stamps]
        first = max(first_step_time(times, rates, seen), clock.started[trial_id])
        since = {
            "start_to_first_step_s": first - clock.started[trial_id],
            "fit_to_first_step_s": first - started,
        }
        trials.append({"rates": rates, "training": (first, times[-1]), **since})
    return {"wall_s": wall, "trials": trials, "samples": samples}


def _fixed_tuner(storage, launcher, config, reader, n_trials, cpus, gpus, clock):
    """The search's tuner for `n_trials` copies of `config`: the space fixes every setting and
    ASHA's grace period is the whole run, so no trial stops early."""
    from search.driver.plan import Plan
    from search.driver.space import parse_space
    from search.driver.tuner import build_tuner
    from trainables.tasks import get_task

    task = get_task(config["task"])
    owned = ("seed", "max_batches")
    space = parse_space(
        {
            "parameters": {k: {"value": v} for k, v in config.items() if k not in owned},
            "early_terminate": {"type": "hyperband", "min_iter": config["epochs"], "eta": 2},
        },
        task,
    )
    plan = Plan(
        name=f"{launcher}-{n_trials}x-{uuid.uuid4().hex[:6]}",
        storage=storage,
        trials=n_trials,
        metric=task.metric,
        mode=task.mode,
        searcher="random",
        launcher=launcher,
        max_concurrent=n_trials,
        cpus_per_worker=cpus,
        gpus_per_trial=gpus,
        verbose=0,
    )
    return build_tuner(plan, space, reader, dict(config), callbacks=[clock])


def held_cpus(wait_s: float) -> float:
    """CPUs still reserved after waiting up to `wait_s` for Ray to free them (it does so
    asynchronously); more than 0 once no trial runs means something kept its reservation."""
    import ray

    total, deadline = ray.cluster_resources().get("CPU", 0.0), time.monotonic() + wait_s
    while True:
        held = total - ray.available_resources().get("CPU", 0.0)
        if held < 1e-6 or time.monotonic() > deadline:
            return max(held, 0.0)
        time.sleep(0.2)


def overlap(trials: list[dict]) -> float:
    """The share of the mean trial's training time during which all `trials` were training."""
    together = min(t["training"][1] for t in trials) - max(t["training"][0] for t in trials)
    mean = statistics.mean(t["training"][1] - t["training"][0] for t in trials)
    return max(together, 0.0) / mean
