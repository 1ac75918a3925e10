"""Section `memory`: the Ray node's memory with 1 and N trials, and the Tune driver's growth.

    memory(b)   # the dataset sits once in the object store; the driver after many tiny trials

Run through `python search/bench.py --sections memory`.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable

from search.benchmarks.core import Bench, start_ray, synthetic_data
from search.benchmarks.probes import driver_uss_mb, node_memory
from search.benchmarks.trials import run_trials
from search.data.reader import SplitReader


def memory(b: Bench) -> None:
    """The node's memory with 1 and N trials, and Tune's driver after many tiny trials."""
    start_ray(b)
    add, n = b.rows("memory"), b.sizes.memory_trials
    # a large validation split: every epoch evaluates it all, so trials hold the data for
    # long enough to overlap whatever their actors' start-up (a few short training steps)
    arrays = synthetic_data(b.sizes.memory_images, b.sizes.memory_images // 4, 28)
    images = f"{len(arrays['train_images'])} + {len(arrays['val_images'])} RGB 28 px images"
    add("dataset_mb", sum(a.nbytes for a in arrays.values()) / 2**20, "MB", f"{images}, put once")
    store_before = node_memory()["store_mb"]  # the overhead section's data is there too
    reader = SplitReader.resident(arrays)
    del arrays  # the driver keeps no copy of its own
    peak = {}
    config = b.trial_config(epochs=b.sizes.memory_epochs, max_batches=2)
    probes = {"mem": node_memory}
    for k in (1, n):
        gpus = 1.0 / k if b.gpu else 0.0
        run = run_trials(b.storage, "function", config, reader, k, gpus=gpus, probes=probes)
        peak[k] = max(run["samples"]["mem"], key=lambda m: (m["readers"], m["node_mb"]))
    add("node_mb/1_trial", peak[1]["node_mb"], "MB", "summed PSS of this Ray node's processes")
    add(
        f"node_mb/{n}_trials",
        peak[n]["node_mb"],
        "MB",
        f"{peak[n]['readers']} processes reading the dataset",
        "node_mb/1_trial",
    )
    extra = (peak[n]["node_mb"] - peak[1]["node_mb"]) / max(n - 1, 1)
    if peak[n]["readers"] < n:  # a busy host started the trials too far apart
        extra, why = None, f"skipped: only {peak[n]['readers']} of {n} trials overlapped"
    else:
        why = "torch, model and (CPU, RGB) an NCHW copy of the images"
    add("per_extra_trial_mb", extra, "MB", why, "dataset_mb")
    add(
        f"object_store_mb/{n}_trials",
        peak[n]["store_mb"] - store_before,
        "MB",
        "object-store pages resident, each counted once (PSS)",
        "dataset_mb",
    )
    add(
        f"summed_rss_store_mb/{n}_trials",
        peak[n]["reader_store_rss_mb"],
        "MB",
        "what summed RSS would claim: each reader maps the same pages",
        "dataset_mb",
    )
    _driver_rows(b, add)


def _driver_rows(b: Bench, add: Callable) -> None:
    trials, at_once = b.sizes.tiny_trials, os.cpu_count() or 1
    import optuna  # noqa: F401  (Tune itself is warm: the fits above ran in this process)

    before = driver_uss_mb()
    wall = tiny_trials(b.storage, trials, at_once)
    after = driver_uss_mb()
    add("driver_uss_mb/before", before, "MB", "the Tune driver (this process), private memory")
    add(
        f"driver_uss_mb/after_{trials}_trials",
        after,
        "MB",
        "tiny trials, each reports once; OptunaSearch behind ConcurrencyLimiter",
        "driver_uss_mb/before",
    )
    growth = (after - before) * 1024 / trials
    add("driver_growth_kb_per_trial", growth, "KB", "USS growth / trials")
    add("tiny_trials_per_s", trials / wall, "trials/s", f"{at_once} at once, actors reused")


def tiny_trial(metric: str) -> Callable[[dict], None]:
    """A trial that reports `metric` once: what Tune's driver costs per trial, no training."""

    def tiny_trial(config: dict) -> None:
        from ray import tune

        tune.report({metric: 1.0 / (1.0 + abs(math.log10(config["lr"]) + 2.5))})

    return tiny_trial


def tiny_trials(storage: str, n: int, max_concurrent: int) -> float:
    """Run `n` tiny trials with the search's own searcher (Optuna TPE); returns the wall time.

    Actors are reused: a fresh actor per trial costs seconds here (see the overhead section's
    `fit_to_first_step_s`), and the driver's memory is what is measured."""
    from ray import tune

    from search.driver.plan import Plan
    from search.driver.space import parse_space
    from search.driver.tuner import build_searcher
    from trainables.tasks import get_task

    task = get_task("blood")
    lr = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}
    space = parse_space({"parameters": {"lr": lr}}, task)
    plan = Plan(
        name=f"tiny-{uuid.uuid4().hex[:6]}",
        storage=storage,
        trials=n,
        metric=task.metric,
        mode=task.mode,
        max_concurrent=max_concurrent,
        verbose=0,
    )
    tuner = tune.Tuner(
        tune.with_resources(tiny_trial(task.metric), {"cpu": 1}),
        param_space=space.domains,
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            num_samples=n,
            search_alg=build_searcher(plan, space),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=plan.name, storage_path=storage, verbose=0),
    )
    started = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - started
