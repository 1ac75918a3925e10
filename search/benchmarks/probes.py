"""What the machine is doing while a section runs: the host, GPU and CPU use, memory.

    with sampling({"gpu_util": ..., "mem": node_memory}) as samples:   # every 0.5 s, a thread
        grid = tuner.fit()
    info = machine_info(device)                                       # what it ran on
    bf16 = bf16_probe(device)          # {"fast": bool, "how": "measured: ... ; CPU flags: ..."}

`psutil` comes from Ray's bundled copy, so it is imported after `ray`, inside the probes.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version

import torch


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


FAST_BF16 = 0.5
"""bf16 counts as fast when its matmul and convolution run at least this share of fp32's rate
(below it, a CPU without bf16 units emulates it: 0.07x fp32 has been seen, minutes per row)."""
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_probe(device: torch.device, budget_s: float = 0.05) -> dict:
    """Whether bf16 is fast on `device`: on a CPU, a measured probe (a 256x256 matmul and a
    3x3 convolution, bf16 against fp32, one thread, about `budget_s` each; well under a
    second even where bf16 is emulated), with the CPU's bf16 flags named beside it."""
    if device.type == "cuda":
        fast = torch.cuda.is_bf16_supported()
        return {"fast": fast, "ratio": None, "how": f"torch.cuda.is_bf16_supported() is {fast}"}
    flags = [f for f in BF16_FLAGS if f in cpu_flags()]
    a, w = torch.randn(256, 256), torch.nn.Conv2d(32, 32, 3, padding=1)
    x, a16 = torch.randn(8, 32, 28, 28), a.bfloat16()
    ops = {
        "matmul": (lambda: a @ a, lambda: a16 @ a16),
        "conv": (lambda: w(x), lambda: _autocast_bf16(w, x)),
    }
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            ratios = {
                k: _rate(bf16, budget_s) / _rate(fp32, budget_s) for k, (fp32, bf16) in ops.items()
            }
    finally:
        torch.set_num_threads(previous)
    ratio = min(ratios.values())
    measured = ", ".join(f"{k} {r:.2f}x" for k, r in ratios.items())
    named = ", ".join(flags) if flags else f"neither {' nor '.join(BF16_FLAGS)}"
    how = f"measured: bf16 {measured} fp32 (fast at >= {FAST_BF16}x); CPU flags: {named}"
    return {"fast": ratio >= FAST_BF16, "ratio": round(ratio, 3), "how": how}


def _autocast_bf16(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return module(x)


def _rate(op, budget_s: float) -> float:
    """Calls of `op` per second over about `budget_s` (after one warm-up call)."""
    op()
    done, started = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - started < budget_s:
        op()
        done += 1
    return done / (time.perf_counter() - started)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


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


def node_memory(files: str | None = None) -> dict:
    """Memory of this Ray node, the processes this one started: their summed PSS (shared pages
    split among the processes that map them), the object store's resident pages counted once,
    and, for the trial processes that read the dataset, its pages summed as RSS would.

    `files`: a folder of memory-mapped dataset files (a node cache); their mapped pages are
    counted the same way (`file_*`), in the object store's place."""
    import psutil

    me = psutil.Process()
    snapshot = {
        "node_mb": 0.0,
        "store_mb": 0.0,
        "reader_store_rss_mb": 0.0,
        "readers": 0,
        "file_pss_mb": 0.0,
        "reader_file_rss_mb": 0.0,
        "file_readers": 0,
    }
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            maps = proc.memory_maps(grouped=True)
            store_pss, store_rss = _mapped_mb(maps, lambda path: "plasma" in path)
            file_pss, file_rss = _mapped_mb(
                maps, lambda path: bool(files) and path.startswith(files or "")
            )
            snapshot["store_mb"] += store_pss
            snapshot["file_pss_mb"] += file_pss
            if proc.pid == me.pid:  # the driver: only its share of the shared pages counts
                snapshot["node_mb"] += store_pss + file_pss
                continue
            snapshot["node_mb"] += proc.memory_full_info().pss / 2**20
            if store_rss > 1.0:
                snapshot["readers"] += 1
                snapshot["reader_store_rss_mb"] += store_rss
            if file_rss > 1.0:
                snapshot["file_readers"] += 1
                snapshot["reader_file_rss_mb"] += file_rss
    return snapshot


def _mapped_mb(maps, chosen: Callable[[str], bool]) -> tuple[float, float]:
    """(PSS, RSS) in MB of the mappings whose path is `chosen`."""
    picked = [m for m in maps if chosen(m.path)]
    return sum(m.pss for m in picked) / 2**20, sum(m.rss for m in picked) / 2**20


def driver_uss_mb() -> float:
    """This process's private memory (USS): unlike RSS, it does not shrink when the kernel
    drops shared library pages under a neighbour's memory pressure."""
    import psutil

    gc.collect()
    return psutil.Process().memory_full_info().uss / 2**20
