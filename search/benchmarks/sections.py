"""Measuring helpers of `search/bench.py`: sizes, data, step timers, Ray runs, probes.

    sizes = sizes_for(quick=True, smoke=False, device=torch.device("cpu"))
    data = synthetic_data(2048, 256, size=28)
    run = run_trials(storage, "function", config, data_ref, n_trials=2)   # driver-side clock
    rates = interleaved({"fp32": time_fp32, "bf16": time_bf16}, rounds=3)  # best of each, in turns

`search/bench.py` decides which figures are taken. `python -m search.benchmarks.sections compile
SPEC` is the child process that `compile_in_child` time-boxes (a compile cannot be stopped
in-process). `psutil` comes from Ray's bundled copy, so it is imported after `ray`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version

import numpy as np
import torch

from trainables import metrics as M
from trainables.data import batch_indices
from trainables.models import build_model

CLASSES = 8  # the `blood` task: 8 classes, RGB


@dataclass(frozen=True)
class Sizes:
    """How much each section measures; `--quick` on CPU keeps the whole run near 4 minutes."""

    n_train: int
    epochs: int
    model: str
    precision: tuple[tuple[int, int], ...]
    """(image size, batch) pairs of the precision and MFU sections."""
    steps: int
    compile_sizes: tuple[int, ...]
    matmul_n: int
    packing: tuple[int, ...]
    memory_images: int
    memory_trials: int
    tiny_trials: int
    workers: int
    rounds: int
    """Turns each contender gets in interleaved timings (the best one counts)."""
    batch: int = 128
    n_val: int = 256


def sizes_for(quick: bool, smoke: bool, device: torch.device) -> Sizes:
    """GPU: resnet18 trials and full-size steps; CPU: simple_cnn trials and small steps."""
    cpus, tiny, epochs = os.cpu_count() or 1, 30 if quick else 200, 3 if quick else 5
    if smoke:  # every code path, the least work: for tests, not for figures
        return Sizes(
            n_train=512, epochs=2, model="simple_cnn", precision=((28, 8), (224, 2)), steps=1,
            compile_sizes=(28,), matmul_n=512, packing=(1, 2), memory_images=4096,
            memory_trials=min(2, cpus), tiny_trials=6, workers=2, rounds=1,
        )  # fmt: skip
    if device.type == "cuda":
        return Sizes(
            n_train=32768 if quick else 65536, epochs=epochs, model="resnet18",
            precision=((28, 256), (224, 128)), steps=10 if quick else 30,
            compile_sizes=(28, 224), matmul_n=8192, packing=(1, 2, 4, 8),
            memory_images=65536, memory_trials=4, tiny_trials=tiny, workers=min(8, cpus),
            rounds=3,
        )  # fmt: skip
    return Sizes(
        n_train=2048, epochs=epochs, model="simple_cnn",
        precision=((28, 32), (224, 8)) if quick else ((28, 64), (224, 16)),
        steps=3 if quick else 6, compile_sizes=(28,) if quick else (28, 224),
        matmul_n=2048 if quick else 4096, packing=(1, 2), memory_images=16384,
        memory_trials=min(2, cpus), tiny_trials=tiny, workers=2, rounds=2,
    )  # fmt: skip


def machine_info(device: torch.device) -> dict:
    """What the figures were measured on (load average too: this host may be shared)."""
    cpu = _cpu_model()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": version("ray"),
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def synthetic_data(n_train: int, n_val: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 RGB images in the MedMNIST layout, labels cycling over 8 classes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % CLASSES).reshape(-1, 1).astype(np.uint8)
    return arrays


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady(rates: list[float]) -> float:
    """The median epoch rate, leaving out epoch 1 (it pays for first-touch costs)."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


# -- training steps -----------------------------------------------------------------------------


def variant_step(variant: str, size: int, batch: int, device: torch.device) -> Callable:
    """One resnet18 training step on a fixed batch; `compile` is bf16 + channels_last, compiled."""
    torch.manual_seed(0)
    model = build_model("resnet18", CLASSES, 3, size).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    if variant in ("bf16_cl", "compile"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if variant == "compile" else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bf16 = variant != "fp32"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def images_per_s(step: Callable, batch: int, device: torch.device, steps: int, budget_s: float):
    """Images/s over `steps` calls of `step` (fewer if `budget_s` runs out; at least one)."""
    sync(device)
    done, started = 0, time.perf_counter()
    while done < steps and (done == 0 or time.perf_counter() - started < budget_s):
        step()
        done += 1
    sync(device)
    return batch * done / (time.perf_counter() - started)


def interleaved(runs: dict[str, Callable[[], float]], rounds: int, warmup: int = 1) -> dict:
    """The best rate of each of `runs` over `rounds`, taking turns so that a busy spell of a
    shared host hits every contender alike; each is called `warmup` times first."""
    best = dict.fromkeys(runs, 0.0)
    for turn in range(warmup + rounds):
        for name, run in runs.items():
            rate = run()
            if turn >= warmup:
                best[name] = max(best[name], rate)
    return best


def step_flops(step: Callable) -> int:
    """FLOPs of one call of `step` (forward + backward; the optimizer's are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_run(device: torch.device, dtype: torch.dtype, n: int) -> Callable[[], float]:
    """A timer of the device's matmul rate (FLOP/s) on n x n products, for `interleaved`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    per = 10 if device.type == "cuda" else 2

    def run() -> float:
        sync(device)
        started = time.perf_counter()
        for _ in range(per):
            a @ b
        sync(device)
        return 2 * n**3 * per / (time.perf_counter() - started)

    return run


def compile_in_child(spec: dict, budget_s: float, cache_dir: str) -> dict:
    """Compile time and images/s of the `compile` variant, in a child killed after `budget_s`."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    if spec["device"] == "cpu":
        env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"  # no pool of compile workers on a small host
    cmd = [sys.executable, "-m", "search.benchmarks.sections", "compile", json.dumps(spec)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=budget_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child's own session: it and its helpers
        child.communicate()
        raise TimeoutError(f"torch.compile ran past its {budget_s:.0f} s time box") from None
    if child.returncode != 0:
        raise RuntimeError(f"compile child failed: {err.strip().splitlines()[-1:]}")
    return json.loads(out.strip().splitlines()[-1])


def _compile_child(spec: dict) -> dict:
    """Compile time, then compiled and eager bf16 + channels_last steps timed in turns."""
    device, size, batch = torch.device(spec["device"]), spec["size"], spec["batch"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    eager = variant_step("bf16_cl", size, batch, device)
    compiled = variant_step("compile", size, batch, device)
    eager()
    started = time.perf_counter()
    compiled()
    sync(device)
    compile_s = time.perf_counter() - started
    compiled()  # the second call may compile again (the optimizer's state now exists)
    steps = {"eager": eager, "compiled": compiled}
    runs = {k: partial(images_per_s, step, batch, device, spec["steps"], spec["budget_s"])
            for k, step in steps.items()}  # fmt: skip
    return {"compile_s": compile_s, **interleaved(runs, spec["rounds"], warmup=0)}


# -- data pipelines -----------------------------------------------------------------------------


class _Images(torch.utils.data.Dataset):
    """uint8 HWC numpy images -> per-sample torchvision v2 transforms, as a DataLoader reads."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1)
        return self.transform(image), torch.from_numpy(self.labels[i])


def v2_transform(size: int) -> Callable:
    """torchvision v2's counterpart of `make_augment(("hflip", "rotate", "crop"), 3, size)`."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.RandomRotation(15.0)], p=0.5),
            v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1)),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def loader_epochs(data: dict, device, batch: int, workers: int, normalise, step=None):
    """Yield images/s of successive epochs through a DataLoader whose workers persist."""
    transform = v2_transform(data["train_images"].shape[1])
    dataset = _Images(data["train_images"], data["train_labels"], transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
    )  # fmt: skip
    while True:
        seen, started = 0, time.perf_counter()
        for images, labels in loader:
            images = normalise(images.to(device, non_blocking=True))
            if step is not None:
                step(images, labels.to(device, non_blocking=True))
            seen += len(images)
        sync(device)
        yield seen / (time.perf_counter() - started)


def device_epochs(x, y, augment, normalise, batch: int, step=None):
    """Yield images/s of successive epochs over device-resident uint8 images, indexed and
    augmented per batch as in `train_one_epoch`."""
    generator = torch.Generator().manual_seed(0)
    while True:
        seen, started = 0, time.perf_counter()
        for idx in batch_indices(len(x), batch, True, generator):
            idx = idx.to(x.device)
            images = normalise(augment(x[idx].float().div_(255.0)))
            if step is not None:
                step(images, y[idx])
            seen += len(idx)
        sync(x.device)
        yield seen / (time.perf_counter() - started)


def model_step(name: str, size: int, device: torch.device) -> Callable:
    """`train_one_epoch`'s step for `name` (bf16 + channels_last on a GPU, as `train_loop`)."""
    torch.manual_seed(0)
    model = build_model(name, CLASSES, 3, size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = M.make_loss("multiclass")

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(images)
        loss = loss_fn(logits.float(), M.loss_targets("multiclass", labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # train_one_epoch reads the loss every step

    return step


# -- Ray runs -----------------------------------------------------------------------------------


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
    from trainables.train import train_loop

    times, rates = [], []

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        times.append(time.perf_counter())
        rates.append(metrics["images_per_s"])

    with torch_threads(threads):
        started = time.perf_counter()
        train_loop(config, report, data, device=device)
        wall = time.perf_counter() - started
    seen = _seen(config, data)
    return {
        "rates": rates,
        "first_step_s": max(first_step_time(times, rates, seen) - started, 0.0),
        "wall_s": wall,
    }


def _seen(config: dict, data: dict) -> int:
    n = len(data["train_images"])
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
    data_ref: list,
    n_trials: int = 1,
    cpus: float = 1.0,
    gpus: float = 0.0,
    probes: dict | None = None,
) -> dict:
    """`n_trials` identical trials at once through `search.driver.tuner`'s real path; per-trial timings.

    The space fixes every setting and ASHA's grace period is the whole run, so no trial stops
    early. `build_tuner` takes no callbacks, so the clock is added to the run config it built.
    """
    from search.driver.space import parse_space
    from search.driver.tuner import Plan, build_tuner
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
    tuner = build_tuner(plan, space, data_ref, dict(config))
    clock = _clock()
    held_cpus(wait_s=20.0)  # the last run's actors give their CPUs back asynchronously
    tuner._local_tuner.get_run_config().callbacks = [clock]
    with sampling(probes or {}) as samples:
        started = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - started
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n_trials} {launcher} trial(s) failed: {errors[0]}")
    seen = _seen(config, ray_get(data_ref))
    trials = []
    for trial_id, stamps in clock.results.items():
        times, rates = [t for t, _ in stamps], [r for _, r in stamps]
        first = max(first_step_time(times, rates, seen), clock.started[trial_id])
        since = {"start_to_first_step_s": first - clock.started[trial_id],
                 "fit_to_first_step_s": first - started}  # fmt: skip
        trials.append({"rates": rates, "training": (first, times[-1]), **since})
    return {"wall_s": wall, "trials": trials, "samples": samples}


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


def ray_get(data_ref: list) -> dict:
    import ray

    return ray.get(data_ref[0])


def tiny_trial(config: dict) -> None:
    """A trial that reports once: what Tune's driver costs per trial, without training."""
    from ray import tune

    tune.report({"val_auc": 1.0 / (1.0 + abs(math.log10(config["lr"]) + 2.5))})


def tiny_trials(storage: str, n: int, max_concurrent: int) -> float:
    """Run `n` tiny trials with the search's own searcher (Optuna TPE); returns the wall time.

    Actors are reused: a fresh actor per trial costs seconds here (see the overhead section's
    `fit_to_first_step_s`), and the driver's memory is what is measured."""
    from ray import tune

    from search.driver.space import parse_space
    from search.driver.tuner import Plan, build_searcher
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
        tune.with_resources(tiny_trial, {"cpu": 1}),
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


# -- probes -------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside the block (None: left as they are)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def sampling(probes: dict[str, Callable], every_s: float = 0.5) -> Iterator[dict[str, list]]:
    """Call each probe every `every_s` seconds in a thread while the block runs."""
    samples: dict[str, list] = {name: [] for name in probes}
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            for name, probe in probes.items():
                with contextlib.suppress(Exception):  # a process may exit mid-read
                    samples[name].append(probe())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def nvml_probes(index: int = 0) -> dict[str, Callable[[], float]]:
    """GPU utilisation (%) and memory used (GB) through NVML; raises where there is no GPU."""
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    return {
        "gpu_util": lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
        "gpu_mem_gb": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 1e9,
    }


def cpu_util() -> float:
    """Machine-wide CPU use in % since the last call (the host may run others' work too)."""
    import psutil

    return psutil.cpu_percent(interval=None)


def node_memory() -> dict:
    """Memory of this Ray node, the processes this one started: their summed PSS (shared pages
    split among the processes that map them), the object store's resident pages counted once,
    and, for the trial processes that read the dataset, its pages summed as RSS would."""
    import psutil

    me = psutil.Process()
    snapshot = {"node_mb": 0.0, "store_mb": 0.0, "reader_store_rss_mb": 0.0, "readers": 0}
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            store = [m for m in proc.memory_maps(grouped=True) if "plasma" in m.path]
            store_pss = sum(m.pss for m in store) / 2**20
            store_rss = sum(m.rss for m in store) / 2**20
            snapshot["store_mb"] += store_pss
            if proc.pid == me.pid:  # the driver: only its share of the object store counts
                snapshot["node_mb"] += store_pss
                continue
            snapshot["node_mb"] += proc.memory_full_info().pss / 2**20
            if store_rss > 1.0:
                snapshot["readers"] += 1
                snapshot["reader_store_rss_mb"] += store_rss
    return snapshot


def driver_uss_mb() -> float:
    """This process's private memory (USS): unlike RSS, it does not shrink when the kernel
    drops shared library pages under a neighbour's memory pressure."""
    import psutil

    gc.collect()
    return psutil.Process().memory_full_info().uss / 2**20


# -- output -------------------------------------------------------------------------------------


def format_table(results: dict, sections: tuple[str, ...]) -> str:
    """The results as aligned text: section, figure, value, ratio, note."""
    lines = [("section", "figure", "value", "ratio", "note")]
    for section in sections:
        for figure, row in results.get(section, {}).items():
            value = "-" if row["value"] is None else f"{_fmt(row['value'])} {row['unit']}"
            ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x {row['vs']}"
            lines.append((section, figure, value, ratio, row["note"]))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line[:4], widths, strict=True)) + "  " + line[4]
        for line in lines
    )


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


if __name__ == "__main__" and sys.argv[1:2] == ["compile"]:
    print(json.dumps(_compile_child(json.loads(sys.argv[2]))))
