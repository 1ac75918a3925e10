"""The bench's record and sizes: settings, the shared Ray state, and the results table.

    settings = BenchSettings(quick=True, sections=("data", "mfu"))   # what bench.py's flags say
    b = Bench(settings, device, sizes_for(settings.quick, settings.smoke_test, device))
    add = b.rows("data")                       # add(figure, value, unit, note="", vs=None)
    add("x/new", 2.0, "img/s", "what it is", vs="x/base")   # ratio = 2.0 / x/base's value
    start_ray(b)                               # once per run, for the sections that use Ray

`search.benchmarks.runner` runs the sections (one module each, or one per pair) over a `Bench`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from search.benchmarks.probes import bf16_probe
from search.data.reader import SplitReader

CLASSES = 8  # the `blood` task: 8 classes, RGB
NO_GPU = "skipped: no GPU"


@dataclass(frozen=True)
class BenchSettings:
    """What search/bench.py's flags decide: `quick` / `smoke_test` sizes, `device` (auto, cpu,
    cuda), the JSON file `out`, the `sections` to run (`runner.SECTIONS` order), and the
    seconds each torch.compile may take (`compile_budget`, 0 skips it; search/bench.py's
    default: `default_compile_budget`)."""

    quick: bool = False
    smoke_test: bool = False
    device: str = "auto"
    out: str = "bench.json"
    sections: tuple[str, ...] = ()
    compile_budget: float = 600.0


def default_compile_budget(quick: bool, smoke_test: bool) -> float:
    """Seconds each torch.compile may take: 0 (none) for a smoke test, 120 quick, else 600."""
    return 0.0 if smoke_test else 120.0 if quick else 600.0


@dataclass(frozen=True)
class StreamSizes:
    """The stream section's sizes: a 224-px dataset on disk, rates, trials."""

    train: int
    val: int
    """Images of the 224-px RGB dataset written to disk (20,000 = 3.0 GB in the full bench)."""
    rates: tuple[tuple[int, str, int, int, int], ...]
    """(image size, model, images, batch, batches per turn): streamed against resident."""
    trial: tuple[str, int, int, int]
    """(model, batch, batches per epoch (0: all), epochs) of the trials on the 224-px set."""
    trials: int = 4
    """Concurrent trials of the node-memory rows (against 1)."""


@dataclass(frozen=True)
class Sizes:
    """How much each section measures; `--quick` on CPU keeps the whole run under 5 minutes
    on 2 cores (torch.compile left out: a cold compile takes minutes there)."""

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
    stream: StreamSizes
    batch: int = 128
    n_val: int = 256
    memory_epochs: int = 6


def sizes_for(quick: bool, smoke: bool, device: torch.device) -> Sizes:
    """GPU: resnet18 trials and full-size steps; CPU: simple_cnn trials and small steps."""
    stream = stream_sizes(quick, smoke, device)
    if smoke:  # every code path, the least work: for tests, not for figures
        return _smoke_sizes(stream)
    if device.type == "cuda":
        return _gpu_sizes(quick, stream)
    if quick:
        return _quick_cpu_sizes(stream)
    return _cpu_sizes(stream)


def _smoke_sizes(stream: StreamSizes) -> Sizes:
    return Sizes(
        n_train=512,
        epochs=2,
        model="simple_cnn",
        precision=((28, 8), (224, 2)),
        steps=1,
        compile_sizes=(28,),
        matmul_n=512,
        packing=(1, 2),
        memory_images=4096,
        memory_trials=min(2, os.cpu_count() or 1),
        tiny_trials=6,
        workers=2,
        rounds=1,
        stream=stream,
    )


def _gpu_sizes(quick: bool, stream: StreamSizes) -> Sizes:
    return Sizes(
        n_train=32768 if quick else 65536,
        epochs=3 if quick else 5,
        model="resnet18",
        precision=((28, 256), (224, 128)),
        steps=10 if quick else 30,
        compile_sizes=(28, 224),
        matmul_n=8192,
        packing=(1, 2, 4, 8),
        memory_images=65536,
        memory_trials=4,
        tiny_trials=30 if quick else 200,
        workers=min(8, os.cpu_count() or 1),
        rounds=3,
        stream=stream,
    )


def _quick_cpu_sizes(stream: StreamSizes) -> Sizes:
    """Measured: 2 cores, 1 thread per step, whole run under 5 minutes."""
    return Sizes(
        n_train=1024,
        epochs=3,
        model="simple_cnn",
        precision=((28, 16), (224, 4)),
        steps=2,
        compile_sizes=(),
        matmul_n=1024,
        packing=(1, 2),
        memory_images=8192,
        memory_trials=min(2, os.cpu_count() or 1),
        tiny_trials=20,
        workers=2,
        rounds=2,
        stream=stream,
        memory_epochs=4,
    )


def _cpu_sizes(stream: StreamSizes) -> Sizes:
    return Sizes(
        n_train=2048,
        epochs=5,
        model="simple_cnn",
        precision=((28, 64), (224, 16)),
        steps=6,
        compile_sizes=(28, 224),
        matmul_n=4096,
        packing=(1, 2),
        memory_images=16384,
        memory_trials=min(2, os.cpu_count() or 1),
        tiny_trials=200,
        workers=2,
        rounds=2,
        stream=stream,
    )


def stream_sizes(quick: bool, smoke: bool, device: torch.device) -> StreamSizes:
    """Full: 18,000 + 2,000 images (3.0 GB) on disk; `--quick` and `--smoke-test`: small sets
    (the rows say the size)."""
    if smoke:
        return StreamSizes(
            train=96,
            val=8,
            trials=2,
            trial=("simple_cnn", 4, 1, 1),
            rates=((28, "simple_cnn", 256, 64, 2), (224, "resnet18", 8, 2, 1)),
        )
    if device.type == "cuda":  # trials read every image: the memory rows hold the whole set
        big = (28, "simple_cnn", 65536, 512, 64), (224, "resnet18", 4096, 128, 16)
        train = 4000 if quick else 18000
        return StreamSizes(train=train, val=train // 9, trial=("simple_cnn", 128, 0, 2), rates=big)
    rates = ((28, "simple_cnn", 2048, 128, 4), (224, "resnet18", 256, 4, 2))
    if quick:
        return StreamSizes(train=1000, val=32, trial=("simple_cnn", 8, 1, 2), rates=rates)
    full = ((28, "simple_cnn", 4096, 128, 16), (224, "resnet18", 512, 8, 4))
    # a small validation split: every epoch of a trial evaluates it all (minutes on a CPU)
    return StreamSizes(train=19800, val=200, trial=("simple_cnn", 8, 4, 3), rates=full)


def synthetic_data(n_train: int, n_val: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 RGB images in the MedMNIST layout, labels cycling over 8 classes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % CLASSES).reshape(-1, 1).astype(np.uint8)
    return arrays


@dataclass
class Bench:
    """One run's settings, shared Ray state and results: {section: {figure: row}}."""

    settings: BenchSettings
    device: torch.device
    sizes: Sizes
    results: dict = field(default_factory=dict)
    storage: str = ""
    reader: SplitReader | None = None
    """The overhead data in the object store (`start_ray`), as the search's trials read it."""
    ray_init_s: float | None = None
    bf16_probe: dict | None = None
    """`probes.bf16_probe` of the device, once per run (see `bf16`)."""

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def bf16(self) -> dict:
        """Whether bf16 is fast here and how that was decided: bf16 rows are timed only then
        (a CPU that emulates bf16 takes minutes per row)."""
        if self.bf16_probe is None:
            self.bf16_probe = bf16_probe(self.device)
        return self.bf16_probe

    def bf16_skipped(self) -> str:
        return f"skipped: no fast bf16 on this {self.device.type} ({self.bf16['how']})"

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
    if b.reader is not None:
        return
    from search.driver.session import connect_ray

    started = time.perf_counter()
    connect_ray(None)  # a fresh local instance with its own dashboard port, never another's
    b.ray_init_s = time.perf_counter() - started
    b.storage = tempfile.mkdtemp(prefix="medsweep-bench-")
    b.reader = SplitReader.resident(synthetic_data(b.sizes.n_train, b.sizes.n_val, 28))


def stop_ray(b: Bench) -> None:
    """Shut down the Ray instance `start_ray` started (if it did) and remove its storage."""
    if b.reader is None:
        return
    import ray

    ray.shutdown()  # only the local instance this run started; never `ray stop`
    shutil.rmtree(b.storage, ignore_errors=True)
