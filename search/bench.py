"""Measure the search against plain PyTorch and the device's limit; print a table, write JSON.

    python search/bench.py --quick                     # CPU: about 4 minutes on 2 cores
    python search/bench.py --device cuda --out bench.json
    python search/bench.py --quick --sections data,precision,mfu
    python search/bench.py --smoke-test                # every path at its smallest (tests)

Every figure is measured side by side in one run and given as a ratio to its baseline:
- overhead: one trial under Ray Tune + Ray Train (launcher `train`) and as a plain Tune function
  (`function`), against the same `train_loop` called here: images/s, trial start -> first step.
- data: device-resident uint8 images + kornia on the device against a DataLoader with workers
  and per-sample torchvision v2 transforms, alone and with a model step.
- packing: 1, 2, 4, 8 trials sharing one GPU, utilisation through NVML (CPU: 1 vs 2 trials).
- precision: fp32, bf16 autocast, bf16 + channels_last, torch.compile; resnet18, 28 and 224 px.
- mfu: FLOP/s of a resnet18 training step over the device's matmul rate measured here.
- memory: the Ray node's memory with 1 and N trials (the dataset sits once in the object
  store), and the Tune driver's memory after many tiny trials.
A benchmark, not a test: nothing is asserted (`tests/test_bench.py` checks that it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch

from search.benchmarks import sections as S
from trainables.data import channel_stats, make_augment, to_device_images

SECTIONS = ("overhead", "data", "packing", "precision", "mfu", "memory")
RAY_SECTIONS = ("packing", "memory", "overhead")  # run in this order: see `overhead`
NO_GPU = "skipped: no GPU"


@dataclass
class Bench:
    """One run's settings, shared Ray state and results: {section: {figure: row}}."""

    args: argparse.Namespace
    device: torch.device
    sizes: S.Sizes
    results: dict = field(default_factory=dict)
    storage: str = ""
    data_ref: list | None = None
    ray_init_s: float | None = None

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def threads(self) -> int | None:
        """CPU steps run on 1 thread, as a trial's worker does (1 CPU: OMP_NUM_THREADS=1); it
        also keeps their ratios steadier on a shared host."""
        return None if self.gpu else 1

    def rows(self, section: str) -> Callable:
        """`add(figure, value, unit, note="", vs=None)` for `section`; the ratio is `value`
        over the value of figure `vs` of the same section."""
        table = self.results.setdefault(section, {})

        def add(figure: str, value: float | None, unit: str, note: str = "", vs=None) -> None:
            if value is not None and not math.isfinite(value):
                value, note = None, f"not finite ({value}); {note}"
            base = table.get(vs, {}).get("value") if vs else None
            ratio = value / base if value is not None and base else None
            table[figure] = {"value": value, "unit": unit, "ratio": ratio, "vs": vs, "note": note}

        return add

    def trial_config(self, **overrides) -> dict:
        fixed = {"task": "blood", "model": self.sizes.model, "weights": "none", "image_size": 28}
        run = {"epochs": self.sizes.epochs, "batch_size": self.sizes.batch, "lr": 1e-3, "seed": 0}
        return {**fixed, **run, **overrides}


def start_ray(b: Bench) -> None:
    """Ray started as run.py starts it, and the overhead data put once, as run.py puts data."""
    if b.data_ref is not None:
        return
    import ray

    from search.driver.session import connect_ray

    started = time.perf_counter()
    connect_ray(None)  # a fresh local instance with its own dashboard port, never another's
    b.ray_init_s = time.perf_counter() - started
    b.storage = tempfile.mkdtemp(prefix="medsweep-bench-")
    b.data_ref = [ray.put(S.synthetic_data(b.sizes.n_train, b.sizes.n_val, 28))]


def overhead(b: Bench) -> None:
    """One trial under Train, under a plain Tune function, and as a plain call, side by side.

    Runs last of the Ray sections, and Train last in it: a finished Train trial has been seen to
    keep its workers' placement group (1 CPU) for minutes when the Ray instance shared its
    dashboard port with another on the host (run.py's connect_ray avoids that); a leak would
    starve later runs, and `cpus_held_after` reports one."""
    start_ray(b)
    add, gpus = b.rows("overhead"), 1.0 if b.gpu else 0.0
    add("ray_init_s", b.ray_init_s, "s", "run.py's connect_ray: a local Ray instance")
    data = S.ray_get(b.data_ref)  # zero-copy from the object store, as a trial reads it
    S.plain_call(b.trial_config(epochs=1, max_batches=2), data, b.device, threads=1)  # warm-up
    plain = S.plain_call(b.trial_config(), data, b.device, threads=1)
    runs, held = {}, {}
    for k in ("function", "train"):
        runs[k] = S.run_trials(b.storage, k, b.trial_config(), b.data_ref, gpus=gpus)
        held[k] = S.held_cpus(wait_s=20.0)
    trial = {k: run["trials"][0] for k, run in runs.items()}
    what = f"{b.sizes.model}, {b.sizes.n_train} images x {b.sizes.epochs} epochs, 1 thread"
    add("images_per_s/plain", S.steady(plain["rates"]), "img/s", f"train_loop here; {what}")
    for k in ("function", "train"):
        rate = S.steady(trial[k]["rates"])
        add(f"images_per_s/{k}", rate, "img/s", f"launcher {k}; epochs 2+", "images_per_s/plain")
    add("first_step_s/plain", plain["first_step_s"], "s", "call -> first step")
    add("first_step_s/function", trial["function"]["start_to_first_step_s"], "s",
        "Tune on_trial_start -> first step (from result stamps)")  # fmt: skip
    add("first_step_s/train", trial["train"]["start_to_first_step_s"], "s",
        "TorchTrainer + worker group start-up", "first_step_s/function")  # fmt: skip
    add("fit_to_first_step_s/function", trial["function"]["fit_to_first_step_s"], "s",
        "Tuner.fit() -> first step: adds Tune set-up and the trial actor's start")  # fmt: skip
    add("fit_to_first_step_s/train", trial["train"]["fit_to_first_step_s"], "s", "",
        "fit_to_first_step_s/function")  # fmt: skip
    add("trial_wall_s/plain", plain["wall_s"], "s", "whole trial")
    for k in ("function", "train"):
        add(f"trial_wall_s/{k}", runs[k]["wall_s"], "s", "Tuner.fit()", "trial_wall_s/plain")
    for k in ("function", "train"):
        add(f"cpus_held_after/{k}", held[k], "CPU", "still reserved 20 s after Tuner.fit() "
            "returned (a leaked placement group when > 0)")  # fmt: skip


def data(b: Bench) -> None:
    """Device-resident uint8 + kornia against a DataLoader with workers + torchvision v2."""
    add, size, batch, workers = b.rows("data"), 28, b.sizes.batch, b.sizes.workers
    arrays = S.synthetic_data(b.sizes.n_train, b.sizes.n_val, size)
    mean, std = channel_stats(arrays["train_images"])
    m, s = (torch.tensor(v, device=b.device).view(1, -1, 1, 1) for v in (mean, std))

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return (images - m) / s

    x = to_device_images(arrays["train_images"], b.device)
    y = torch.from_numpy(arrays["train_labels"]).to(b.device)
    augment = make_augment(("hflip", "rotate", "crop"), 3, size).to(b.device)
    what = f"{b.sizes.n_train} images, {size} px, batch {batch}; best epoch of {b.sizes.rounds}"
    what += "" if b.gpu else "; main process on 1 thread, as in a trial"
    for label, model in (("augment", None), ("train", b.sizes.model)):
        # each pipeline trains a model of its own (or none: the pipeline alone)
        step = partial(S.model_step, model, size, b.device) if model else lambda: None
        pipes = {
            "loader_v2": S.loader_epochs(arrays, b.device, batch, workers, normalise, step()),
            "device_kornia": S.device_epochs(x, y, augment, normalise, batch, step()),
        }
        turns = {k: partial(next, pipe) for k, pipe in pipes.items()}
        with S.torch_threads(b.threads):
            rates = S.interleaved(turns, b.sizes.rounds)
        for pipe in pipes.values():
            pipe.close()  # the loader's workers stop here
        also = "" if model is None else f" + {model} step"
        base = f"{label}_images_per_s/loader_v2"
        add(base, rates["loader_v2"], "img/s", f"DataLoader, {workers} workers, v2 per image"
            f"{also}; {what}")  # fmt: skip
        add(f"{label}_images_per_s/device_kornia", rates["device_kornia"], "img/s",
            f"uint8 on {b.device.type}, kornia per batch{also}", base)  # fmt: skip


def packing(b: Bench) -> None:
    """Total images/s of n trials sharing one GPU, against one alone; CPU: 1 vs 2 trials."""
    add = b.rows("packing")
    try:
        probes, nvml = S.nvml_probes(), "NVML"
    except Exception as err:  # no driver, no library or no device: say which
        probes, nvml = {}, f"NVML unavailable: {type(err).__name__}"
    if not b.gpu:
        for n in (1, 2, 4, 8):
            add(f"gpu_images_per_s/{n}_trials", None, "img/s", f"{NO_GPU}; {nvml}")
        probes = {"cpu_util": S.cpu_util}
    start_ray(b)
    launcher = "train" if b.gpu else "function"  # on CPU, Train's start-up would dominate
    key, where = ("gpu", "on one GPU") if b.gpu else ("cpu", "CPU analogue, 1 CPU each")
    for n in b.sizes.packing:
        gpus = 1.0 / n if b.gpu else 0.0
        run = S.run_trials(b.storage, launcher, b.trial_config(), b.data_ref, n, gpus=gpus,
                           probes=probes)  # fmt: skip
        total = sum(S.steady(t["rates"]) for t in run["trials"])
        together = f"; all training together {S.overlap(run['trials']):.0%} of the time"
        add(f"{key}_images_per_s/{n}_trials", total, "img/s", f"{n} trial(s) {where}, launcher "
            f"{launcher}; sum of steady img/s{together if n > 1 else ''}",
            f"{key}_images_per_s/1_trials")  # fmt: skip
        util = run["samples"].get(f"{key}_util", [])
        source = nvml if b.gpu else "machine-wide, host is shared"
        if util:
            add(f"{key}_util_pct/{n}_trials", sum(util) / len(util), "%", f"mean; {source}")
        if run["samples"].get("gpu_mem_gb"):
            add(f"gpu_mem_gb/{n}_trials", max(run["samples"]["gpu_mem_gb"]), "GB", "peak; NVML")


def precision(b: Bench) -> None:
    """fp32 vs bf16 autocast vs bf16 + channels_last vs torch.compile, resnet18 train steps."""
    add, steps = b.rows("precision"), b.sizes.steps
    cpu = "" if b.gpu else f"; CPU: 1 thread, small batch, best of {b.sizes.rounds} x {steps}"
    with (
        S.torch_threads(b.threads),
        tempfile.TemporaryDirectory(prefix="medsweep-inductor-") as cache,
    ):
        for size, batch in b.sizes.precision:
            runs = {}
            for variant in ("fp32", "bf16", "bf16_cl"):
                step = S.variant_step(variant, size, batch, b.device)
                step()  # warm-up
                runs[variant] = partial(S.images_per_s, step, batch, b.device, steps, 30.0)
            rates = S.interleaved(runs, b.sizes.rounds, warmup=0)
            for variant, rate in rates.items():
                add(f"{size}px/{variant}", rate, "img/s", f"batch {batch}{cpu}", f"{size}px/fp32")
            _compile_rows(b, add, size, batch, cache)  # a fresh cache: a cold compile


def _compile_rows(b: Bench, add: Callable, size: int, batch: int, cache: str) -> None:
    figure, budget = f"{size}px/compile", b.args.compile_budget
    if size not in b.sizes.compile_sizes or budget <= 0:
        why = "--compile-budget 0" if budget <= 0 else "224 px not compiled with --quick on CPU"
        return add(figure, None, "img/s", f"skipped: {why}")
    spec = {"size": size, "batch": batch, "device": b.device.type, "steps": b.sizes.steps,
            "rounds": b.sizes.rounds, "budget_s": 30.0, "threads": b.threads}  # fmt: skip
    try:
        out = S.compile_in_child(spec, budget, cache)
    except TimeoutError as err:
        return add(figure, None, "img/s", f"skipped: {err}")
    add(figure, out["compiled"], "img/s", f"bf16 + channels_last compiled: "
        f"{out['compiled'] / out['eager']:.2f}x eager, timed in turns in a child process",
        f"{size}px/fp32")  # fmt: skip
    add(f"{size}px/compile_s", out["compile_s"], "s", "first step, cold inductor cache")


def mfu(b: Bench) -> None:
    """Achieved FLOP/s of a resnet18 training step over the matmul rate, timed in turns."""
    add, n = b.rows("mfu"), b.sizes.matmul_n
    dtypes = {"bf16": torch.bfloat16} if b.gpu else {"fp32": torch.float32, "bf16": torch.bfloat16}
    for name, dtype in dtypes.items():
        variant, runs, flops = "bf16_cl" if name == "bf16" else "fp32", {}, {}
        runs["matmul"] = S.matmul_run(b.device, dtype, n)
        for size, batch in b.sizes.precision[: 2 if b.gpu else 1]:
            step = S.variant_step(variant, size, batch, b.device)
            flops[size] = S.step_flops(step) / batch  # one step, which also warms it up
            runs[size] = partial(S.images_per_s, step, batch, b.device, b.sizes.steps, 30.0)
        with S.torch_threads(b.threads):
            rates = S.interleaved(runs, b.sizes.rounds + 1, warmup=0)
        peak = f"matmul_{name}_tflops"
        add(peak, rates.pop("matmul") / 1e12, "TFLOP/s", f"{n}x{n} matmul, timed in turns")
        for size, rate in rates.items():
            add(f"{size}px_{variant}_tflops", flops[size] * rate / 1e12, "TFLOP/s",
                f"ratio = MFU; {flops[size] / 1e9:.2f} GFLOP/image fwd+bwd, counted as direct "
                "convolutions (FlopCounterMode): Winograd kernels do less, so CPUs can pass 1",
                peak)  # fmt: skip


def memory(b: Bench) -> None:
    """The node's memory with 1 and N trials, and Tune's driver after many tiny trials."""
    import ray

    start_ray(b)
    add, n = b.rows("memory"), b.sizes.memory_trials
    # a large validation split: every epoch evaluates it all, so trials hold the data for
    # long enough to overlap whatever their actors' start-up (a few short training steps)
    arrays = S.synthetic_data(b.sizes.memory_images, b.sizes.memory_images // 4, 28)
    images = f"{len(arrays['train_images'])} + {len(arrays['val_images'])} RGB 28 px images"
    add("dataset_mb", sum(a.nbytes for a in arrays.values()) / 2**20, "MB", f"{images}, put once")
    store_before = S.node_memory()["store_mb"]  # the overhead section's data is there too
    ref = [ray.put(arrays)]
    del arrays  # the driver keeps no copy of its own
    peak = {}
    config, probes = b.trial_config(epochs=6, max_batches=2), {"mem": S.node_memory}
    for k in (1, n):
        gpus = 1.0 / k if b.gpu else 0.0
        run = S.run_trials(b.storage, "function", config, ref, k, gpus=gpus, probes=probes)
        peak[k] = max(run["samples"]["mem"], key=lambda m: (m["readers"], m["node_mb"]))
    add("node_mb/1_trial", peak[1]["node_mb"], "MB", "summed PSS of this Ray node's processes")
    add(f"node_mb/{n}_trials", peak[n]["node_mb"], "MB",
        f"{peak[n]['readers']} processes reading the dataset", "node_mb/1_trial")  # fmt: skip
    extra = (peak[n]["node_mb"] - peak[1]["node_mb"]) / max(n - 1, 1)
    if peak[n]["readers"] < n:  # a busy host started the trials too far apart
        extra, why = None, f"skipped: only {peak[n]['readers']} of {n} trials overlapped"
    else:
        why = "torch, model and (CPU, RGB) an NCHW copy of the images"
    add("per_extra_trial_mb", extra, "MB", why, "dataset_mb")
    add(f"object_store_mb/{n}_trials", peak[n]["store_mb"] - store_before, "MB",
        "object-store pages resident, each counted once (PSS)", "dataset_mb")  # fmt: skip
    add(f"summed_rss_store_mb/{n}_trials", peak[n]["reader_store_rss_mb"], "MB",
        "what summed RSS would claim: each reader maps the same pages", "dataset_mb")  # fmt: skip
    _driver_rows(b, add)


def _driver_rows(b: Bench, add: Callable) -> None:
    trials, at_once = b.sizes.tiny_trials, os.cpu_count() or 1
    import optuna  # noqa: F401  (Tune itself is warm: the fits above ran in this process)

    before = S.driver_uss_mb()
    wall = S.tiny_trials(b.storage, trials, at_once)
    after = S.driver_uss_mb()
    add("driver_uss_mb/before", before, "MB", "the Tune driver (this process), private memory")
    add(f"driver_uss_mb/after_{trials}_trials", after, "MB", "tiny trials, each reports once; "
        "OptunaSearch behind ConcurrencyLimiter", "driver_uss_mb/before")  # fmt: skip
    growth = (after - before) * 1024 / trials
    add("driver_growth_kb_per_trial", growth, "KB", "USS growth / trials")
    add("tiny_trials_per_s", trials / wall, "trials/s", f"{at_once} at once, actors reused")


RUNNERS = {f.__name__: f for f in (overhead, data, packing, precision, mfu, memory)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (CPU: about 4 minutes)")
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes: checks every path "
                   "runs, in about a minute on CPU; its figures mean little")  # fmt: skip
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="bench.json", help="JSON file to write (default bench.json)")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument(
        "--compile-budget",
        type=float,
        help="seconds each torch.compile may take "
        "(0 skips it; default 120 with --quick, 600 without, 0 with --smoke-test)",
    )
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        p.error(f"--sections: unknown {unknown}; choose from {','.join(SECTIONS)}")
    args.sections = chosen
    if args.compile_budget is None:
        args.compile_budget = 0.0 if args.smoke_test else 120.0 if args.quick else 600.0
    return args


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (torch.cuda.is_available() "
                         "is False); use --device cpu or auto")  # fmt: skip
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def run_sections(b: Bench) -> tuple[dict, list[str]]:
    """Run the chosen sections, Ray's last; ({section: seconds, load average}, failed ones)."""
    order = [s for s in SECTIONS if s not in RAY_SECTIONS] + list(RAY_SECTIONS)  # Ray idle last
    host, failed = {}, []
    try:
        for section in (s for s in order if s in b.args.sections):
            print(f"[bench] {section} ...", flush=True)
            t0 = time.perf_counter()
            try:
                RUNNERS[section](b)
            except Exception as err:  # one broken section must not lose the others' figures
                traceback.print_exc()
                b.rows(section)("error", None, "", f"{type(err).__name__}: {err}"[:300])
                failed.append(section)
            host[section] = {"s": round(time.perf_counter() - t0, 1),
                             "load_avg_1m_after": round(os.getloadavg()[0], 2)}  # fmt: skip
    finally:
        _stop_ray(b)
    return host, failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    b = Bench(args, device, S.sizes_for(args.quick, args.smoke_test, device))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's console output only: the table
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    machine, started = S.machine_info(device), time.perf_counter()
    # Ray relays its workers' prints to this stdout: while sections run, keep it for the table
    with contextlib.redirect_stdout(sys.stderr):
        host, failed = run_sections(b)
    report = {
        "machine": machine,
        "settings": {"quick": args.quick, "smoke_test": args.smoke_test, "sections":
                     args.sections, "compile_budget_s": args.compile_budget, **asdict(b.sizes)},
        "elapsed": {**host, "total_s": round(time.perf_counter() - started, 1)},
        "results": b.results,
    }  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(S.format_table(b.results, SECTIONS))
    total = report["elapsed"]["total_s"]
    print(f"\n{machine['device_name']}, {machine['cpu_count']} CPUs, torch {machine['torch']}; "
          f"load average {machine['load_avg_1m']} at start; seconds and load average after "
          f"each section: {host}; total {total} s; wrote {args.out}")  # fmt: skip
    return 1 if failed else 0


def _stop_ray(b: Bench) -> None:
    if b.data_ref is None:
        return
    import ray

    ray.shutdown()  # only the local instance this run started; never `ray stop`
    shutil.rmtree(b.storage, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
