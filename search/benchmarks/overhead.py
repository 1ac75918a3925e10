"""Sections `overhead` and `packing`: what Ray costs a trial, and trials sharing one device.

    overhead(b)   # one trial under Train, under a plain Tune function, and as a plain call
    packing(b)    # total images/s of 1, 2, 4, 8 trials on one GPU (CPU: 1 vs 2 trials)

Run through `python search/bench.py --sections overhead,packing`.
"""

from __future__ import annotations

from search.benchmarks import trials as T
from search.benchmarks.core import NO_GPU, Bench, start_ray
from search.benchmarks.probes import cpu_util, nvml_probes
from search.benchmarks.timing import steady


def overhead(b: Bench) -> None:
    """One trial under Train, under a plain Tune function, and as a plain call, side by side.

    Runs last of the Ray sections, and Train last in it: a finished Train trial has been seen to
    keep its workers' placement group (1 CPU) for minutes when the Ray instance shared its
    dashboard port with another on the host (run.py's connect_ray avoids that); a leak would
    starve later runs, and `cpus_held_after` reports one."""
    start_ray(b)
    add, gpus = b.rows("overhead"), 1.0 if b.gpu else 0.0
    add("ray_init_s", b.ray_init_s, "s", "run.py's connect_ray: a local Ray instance")
    data = b.reader.arrays()  # zero-copy from the object store, as a trial reads it
    T.plain_call(b.trial_config(epochs=1, max_batches=2), data, b.device, threads=1)  # warm-up
    plain = T.plain_call(b.trial_config(), data, b.device, threads=1)
    runs, held = {}, {}
    for k in ("function", "train"):
        runs[k] = T.run_trials(b.storage, k, b.trial_config(), b.reader, gpus=gpus)
        held[k] = T.held_cpus(wait_s=20.0)
    trial = {k: run["trials"][0] for k, run in runs.items()}
    what = f"{b.sizes.model}, {b.sizes.n_train} images x {b.sizes.epochs} epochs, 1 thread"
    add("images_per_s/plain", steady(plain["rates"]), "img/s", f"train_loop here; {what}")
    for k in ("function", "train"):
        rate = steady(trial[k]["rates"])
        add(f"images_per_s/{k}", rate, "img/s", f"launcher {k}; epochs 2+", "images_per_s/plain")
    add("first_step_s/plain", plain["first_step_s"], "s", "call -> first step")
    add(
        "first_step_s/function",
        trial["function"]["start_to_first_step_s"],
        "s",
        "Tune on_trial_start -> first step (from result stamps)",
    )
    add(
        "first_step_s/train",
        trial["train"]["start_to_first_step_s"],
        "s",
        "TorchTrainer + worker group start-up",
        "first_step_s/function",
    )
    add(
        "fit_to_first_step_s/function",
        trial["function"]["fit_to_first_step_s"],
        "s",
        "Tuner.fit() -> first step: adds Tune set-up and the trial actor's start",
    )
    add(
        "fit_to_first_step_s/train",
        trial["train"]["fit_to_first_step_s"],
        "s",
        "",
        "fit_to_first_step_s/function",
    )
    add("trial_wall_s/plain", plain["wall_s"], "s", "whole trial")
    for k in ("function", "train"):
        add(f"trial_wall_s/{k}", runs[k]["wall_s"], "s", "Tuner.fit()", "trial_wall_s/plain")
    for k in ("function", "train"):
        add(
            f"cpus_held_after/{k}",
            held[k],
            "CPU",
            "still reserved 20 s after Tuner.fit() returned (a leaked placement group when > 0)",
        )


def packing(b: Bench) -> None:
    """Total images/s of n trials sharing one GPU, against one alone; CPU: 1 vs 2 trials."""
    add = b.rows("packing")
    try:
        probes, nvml = nvml_probes(), "NVML"
    except Exception as err:  # no driver, no library or no device: say which
        probes, nvml = {}, f"NVML unavailable: {type(err).__name__}"
    if not b.gpu:
        for n in (1, 2, 4, 8):
            add(f"gpu_images_per_s/{n}_trials", None, "img/s", f"{NO_GPU}; {nvml}")
        probes = {"cpu_util": cpu_util}
    start_ray(b)
    launcher = "train" if b.gpu else "function"  # on CPU, Train's start-up would dominate
    key, where = ("gpu", "on one GPU") if b.gpu else ("cpu", "CPU analogue, 1 CPU each")
    for n in b.sizes.packing:
        gpus = 1.0 / n if b.gpu else 0.0
        run = T.run_trials(
            b.storage, launcher, b.trial_config(), b.reader, n, gpus=gpus, probes=probes
        )
        total = sum(steady(t["rates"]) for t in run["trials"])
        together = f"; all training together {T.overlap(run['trials']):.0%} of the time"
        add(
            f"{key}_images_per_s/{n}_trials",
            total,
            "img/s",
            f"{n} trial(s) {where}, launcher "
            f"{launcher}; sum of steady img/s{together if n > 1 else ''}",
            f"{key}_images_per_s/1_trials",
        )
        util = run["samples"].get(f"{key}_util", [])
        source = nvml if b.gpu else "machine-wide, host is shared"
        if util:
            add(f"{key}_util_pct/{n}_trials", sum(util) / len(util), "%", f"mean; {source}")
        if run["samples"].get("gpu_mem_gb"):
            add(f"gpu_mem_gb/{n}_trials", max(run["samples"]["gpu_mem_gb"]), "GB", "peak; NVML")
