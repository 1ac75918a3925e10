"""Section `stream`: the streaming data path on a synthetic 224-px dataset written to disk.

    stream(b)   # node memory with 1 and 4 trials, images/s streamed against resident (28 and
                # 224 px), time to first step with the node cache warm, cold, and small data

The dataset (`StreamSizes.train` + `val` random RGB uint8 images at 224 px: 20,000 = 3.0 GB in
the full bench, a smaller set with --quick, named in the rows) is written as an npz into a
temporary folder (`$TMPDIR`), cached per node by `search.data.node_data` as a trial on that
path does, and deleted after. Node memory is the bench's (`probes.node_memory`: summed PSS of
the node's processes) with the dataset's pages counted once from the page cache (mincore), so
a page only cached and a page mapped by four trials both count once. Run through
`python search/bench.py --sections stream`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from search.benchmarks.core import NO_GPU, Bench, start_ray, synthetic_data
from search.benchmarks.ondisk import evict, files_under, resident_mb, write_npz
from search.benchmarks.probes import node_memory, nvml_probes, sampling
from search.benchmarks.timing import interleaved, sync, torch_threads
from search.benchmarks.trials import run_trials
from search.data.node_data import DataSource, cache_root, describe
from search.data.reader import SplitReader
from trainables.data import channel_stats
from trainables.stream import RESIDENT, STREAM
from trainables.tasks import get_task
from trainables.train import Placement, train_loop, train_one_epoch
from trainables.trial import setup

TASK = "blood"  # 8 classes, RGB: what `synthetic_data` and `write_npz` label
MEMORY_EVERY_S = 2.0
"""Seconds between node-memory samples: one reads every process's smaps (about 60 ms for a
process with torch loaded), so sampling every 0.5 s would take most of a core of 2."""
MEMORY_TARGET = 1.3
"""Node memory with N trials <= idle + 1.3 x the dataset + N x one trial's fixed cost."""


def stream(b: Bench) -> None:
    """Streamed against resident images/s, time to first step, node memory with 1 and N."""
    add = b.rows("stream")
    with tempfile.TemporaryDirectory(prefix="medsweep-stream-") as tmp:
        source = _dataset(b, add, tmp)
        _rate_rows(b, add, source, tmp)
        _first_step_rows(b, add, source)
        _memory_rows(b, add, source)


def _dataset(b: Bench, add: Callable, tmp: str) -> DataSource:
    s, path = b.sizes.stream, os.path.join(tmp, "stream224.npz")
    started = time.perf_counter()
    write_npz(path, s.train, s.val, 224)
    wrote = time.perf_counter() - started
    source = describe(path, get_task(TASK), 224)
    source = dataclasses.replace(source, cache_dir=os.path.join(tmp, "node-cache"))
    mode = "--smoke-test" if b.settings.smoke_test else "--quick" if b.settings.quick else ""
    size = f"{mode}: a small set" if mode else "the full set"
    add(
        "dataset_mb",
        source.nbytes / 2**20,
        "MB",
        f"{s.train} + {s.val} RGB 224 px uint8 "
        f"images ({size}); an npz written in {wrote:.1f} s, deleted after",
    )
    return source


def _rate_rows(b: Bench, add: Callable, big: DataSource, tmp: str) -> None:
    """Images/s of training steps over resident images against the same images streamed
    from the node cache's memmaps (page cache warm: where both fit), taking turns."""
    for size, model, n, batch, batches in b.sizes.stream.rates:
        source = big if size == 224 else _small_source(tmp, n, size)
        data = _first(SplitReader.node_cached(source).arrays(), n)
        resident = {k: np.array(v) for k, v in data.items()}  # in memory, then on the device
        trials = {
            RESIDENT: _trial(b, model, size, batch, resident, RESIDENT),
            STREAM: _trial(b, model, size, batch, data, STREAM),
        }
        busy: dict[str, list[float]] = {}
        turns = {
            k: partial(_epoch_rate, t, batches, busy.setdefault(k, []), b.gpu)
            for k, t in trials.items()
        }
        rounds = b.sizes.rounds + 1  # a turn is short: one more steadies the best of each
        with torch_threads(b.threads):
            rates = interleaved(turns, rounds)
        what = (
            f"{model}, {size} px, batch {batch}, {batches} batches per turn, best of "
            f"{rounds}; {len(resident['train_images'])} images"
        )
        base = f"images_per_s/{size}px_{RESIDENT}"
        add(base, rates[RESIDENT], "img/s", f"uint8 on {b.device.type} (today's path); {what}")
        add(
            f"images_per_s/{size}px_{STREAM}",
            rates[STREAM],
            "img/s",
            "memmap -> thread -> (pinned) batch -> device, one batch ahead; target >= 0.90x",
            base,
        )
        for k in (RESIDENT, STREAM):
            _busy_row(b, add, f"gpu_busy_pct/{size}px_{k}", busy[k], "in its turns")
        del turns, trials, data, resident  # the memmaps close: the driver maps nothing below


def _small_source(tmp: str, n: int, size: int) -> DataSource:
    path = os.path.join(tmp, f"stream{size}.npz")
    write_npz(path, n, 64, size)
    source = describe(path, get_task(TASK), size)
    return dataclasses.replace(source, cache_dir=os.path.join(tmp, "node-cache"))


def _first(arrays: dict, n: int) -> dict:
    """The first `n` training images (still memmaps) and a few validation images."""
    keep = {"train": n, "val": 8}
    return {
        f"{split}_{part}": arrays[f"{split}_{part}"][:k]
        for split, k in keep.items()
        for part in ("images", "labels")
    }


def _trial(b: Bench, model: str, size: int, batch: int, data: dict, path: str):
    """A trial's state built by `train_loop`'s own `setup`, on the `path` data path."""
    config = b.trial_config(model=model, image_size=size, batch_size=batch, epochs=1)
    with torch_threads(b.threads):
        placement = Placement(device=b.device, data_path=path)
        return setup(config, data, placement, task=get_task(TASK))


def _epoch_rate(trial, batches: int, busy: list, gpu: bool) -> float:
    """Images/s of one `train_one_epoch` of `batches` batches (GPU busy % sampled meanwhile)."""
    probes = _nvml() if gpu else {}
    trial = dataclasses.replace(trial, cfg=dataclasses.replace(trial.cfg, max_batches=batches))
    with sampling(probes, every_s=0.05) as samples:
        sync(trial.device)
        started = time.perf_counter()
        _, seen = train_one_epoch(trial, trial.model, torch.Generator().manual_seed(0), True)
        sync(trial.device)
        elapsed = time.perf_counter() - started
    busy.extend(samples.get("gpu_util", []))
    return seen / elapsed


def _first_step_rows(b: Bench, add: Callable, big: DataSource) -> None:
    """Call -> first training step of `train_loop` on the node: small data in memory (today's
    path), the 224-px set with the node cache written first (cold), and with it there (warm).
    Plain calls in this process: a launcher adds the same actor start to each."""
    model, batch, _, _ = b.sizes.stream.trial
    small = synthetic_data(b.sizes.n_train, b.sizes.n_val, 28)
    folder = os.path.join(cache_root(big), big.key)
    config = b.trial_config(model=model, batch_size=batch, epochs=1, max_batches=1)
    starts = {"small": _first_step(b, {**config, "image_size": 28}, lambda: small)}
    shutil.rmtree(folder, ignore_errors=True)  # the node holds no cache of the set ...
    evict([big.path])  # ... and the npz is read from disk, as from a shared filesystem
    big_config = {**config, "image_size": 224}
    reader = SplitReader.node_cached(big)  # what a streamed trial is handed
    starts["cold"] = _first_step(b, big_config, reader.arrays)
    starts["warm"] = _first_step(b, big_config, reader.arrays)
    add(
        "first_step_s/small_data",
        starts["small"],
        "s",
        f"{b.sizes.n_train} RGB 28 px images "
        "in memory, resident (today's path); train_loop called here",
    )
    add(
        "first_step_s/cold",
        starts["cold"],
        "s",
        "224-px set: node cache written first (npz dropped from the page cache), then streamed",
        "first_step_s/small_data",
    )
    add(
        "first_step_s/warm",
        starts["warm"],
        "s",
        "224-px set already in the node cache (a second trial on the node); target <= 1.20x",
        "first_step_s/small_data",
    )
    images = reader.arrays()["train_images"]
    started = time.perf_counter()
    channel_stats(images)
    add(
        "channel_stats_s/warm",
        time.perf_counter() - started,
        "s",
        "of which trainables.data."
        f"channel_stats over {min(len(images), 2048)} of the set's images",
        "first_step_s/warm",
    )


class _FirstStep(Exception):
    """Raised by the hook at the first module call: the trial's first step has begun."""


def _first_step(b: Bench, config: dict, read_data: Callable[[], dict]) -> float:
    """Seconds from the call (data opened first, as a launcher does) to the first step's first
    module call (augmentation or the model); the trial stops there."""

    def hook(module, args):
        raise _FirstStep

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        with torch_threads(b.threads), contextlib.suppress(_FirstStep):
            started = time.perf_counter()
            placement = Placement(device=b.device)
            train_loop(config, _no_report, read_data(), placement=placement, task=get_task(TASK))
            raise RuntimeError("train_loop finished without a training step")
        return time.perf_counter() - started
    finally:
        handle.remove()


def _no_report(metrics: dict, checkpoint_dir: str | None) -> None:
    return None


def _memory_rows(b: Bench, add: Callable, big: DataSource) -> None:
    """Node memory with 1 and N streamed trials at once (the search's tuner, launcher
    `function`, the node cache warm) against the dataset's size."""
    start_ray(b)
    s, dataset = b.sizes.stream, big.nbytes / 2**20
    model, batch, batches, epochs = s.trial
    reader = SplitReader.node_cached(big)
    reader.arrays()  # warm: the cache is on the node (the first-step rows wrote it)
    folder = os.path.join(cache_root(big), big.key)
    probe = partial(_held, folder, files_under(folder))
    config = b.trial_config(
        model=model, image_size=224, batch_size=batch, epochs=epochs, max_batches=batches
    )
    idle, peaks, busy, walls = probe(), {}, [], {}
    for k in (1, s.trials):
        cpus = min(1.0, (os.cpu_count() or 1) / k)
        probes = {"mem": probe, **(_nvml() if b.gpu else {})}
        run = run_trials(
            b.storage,
            "function",
            config,
            reader,
            k,
            cpus=cpus,
            gpus=1.0 / k if b.gpu else 0.0,
            probes=probes,
            every_s=MEMORY_EVERY_S,
        )
        peaks[k] = max(run["samples"]["mem"], key=lambda m: (m["file_readers"], m["held_mb"]))
        busy, walls[k] = run["samples"].get("gpu_util", []), run["wall_s"]
    _memory_table(add, dataset, idle, peaks, s.trials, cpus)
    what = f"{model} at 224 px, {epochs} epochs of {batches or 'all'} batches of {batch}"
    add("trial_wall_s/1_trial", walls[1], "s", f"Tuner.fit(), launcher function; {what}")
    add(f"trial_wall_s/{s.trials}_trials", walls[s.trials], "s", "at once", "trial_wall_s/1_trial")
    _busy_row(b, add, f"gpu_busy_pct/{s.trials}_trials", busy, "while they ran")


def _memory_table(add: Callable, dataset: float, idle: dict, peaks: dict, n: int, cpus: float):
    one, many = peaks[1], peaks[n]
    base = idle["held_mb"] - idle["dataset_mb"]
    fixed = one["held_mb"] - base - one["dataset_mb"]
    reads = f"{many['file_readers']} of {n} trials mapping the set"
    add(
        "node_mb/idle",
        base,
        "MB",
        "Ray's processes and the driver's shared pages, no trial; the dataset's pages left out",
    )
    add(
        "node_mb/1_trial",
        one["held_mb"],
        "MB",
        "summed PSS of the node's processes, the "
        "dataset's pages counted once (page cache, mincore)",
        "dataset_mb",
    )
    add(
        "fixed_mb_per_trial",
        fixed,
        "MB",
        "1 trial less idle less the dataset's pages: torch, model, batches in flight",
    )
    add(
        f"target_mb/{n}_trials",
        base + MEMORY_TARGET * dataset + n * fixed,
        "MB",
        f"idle + {MEMORY_TARGET} x dataset + {n} x fixed",
    )
    if many["file_readers"] < n:  # a busy host started the trials too far apart
        value, why = None, f"skipped: only {reads}"
    else:
        value, why = (
            many["held_mb"],
            (
                f"{reads}, {cpus:g} CPU each; "
                f"{many['held_mb'] / dataset:.2f}x dataset; "
                "<= 1.00x meets the target"
            ),
        )
    add(f"node_mb/{n}_trials", value, "MB", why, f"target_mb/{n}_trials")
    add(
        f"dataset_resident_mb/{n}_trials",
        many["dataset_mb"],
        "MB",
        "the set's pages in the page cache: held once for all trials",
        "dataset_mb",
    )
    add(
        f"summed_rss_dataset_mb/{n}_trials",
        many["reader_file_rss_mb"],
        "MB",
        "what summed RSS would claim: each trial maps the same pages",
        "dataset_mb",
    )


def _held(folder: str, files: list[str]) -> dict:
    """`node_memory` with the node cache's pages counted once from the page cache: the mapped
    ones (in the processes' PSS) replaced by every resident one (mincore)."""
    snapshot = node_memory(files=folder)
    snapshot["dataset_mb"] = resident_mb(files)
    snapshot["held_mb"] = snapshot["node_mb"] - snapshot["file_pss_mb"] + snapshot["dataset_mb"]
    return snapshot


def _busy_row(b: Bench, add: Callable, figure: str, samples: list, when: str) -> None:
    if not b.gpu:
        return add(figure, None, "%", NO_GPU)
    if not samples:
        return add(figure, None, "%", "skipped: no NVML samples (NVML unavailable?)")
    add(figure, statistics.mean(samples), "%", f"mean NVML utilisation {when}")


def _nvml() -> dict:
    with contextlib.suppress(Exception):  # no NVML library: the busy rows say so
        return {"gpu_util": nvml_probes()["gpu_util"]}
    return {}
