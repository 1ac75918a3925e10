"""What the machine is doing while a section runs: the host, GPU and CPU use, memory.

    with sampling({"gpu_util": ..., "mem": node_memory}) as samples:   # every 0.5 s, a thread
        grid = tuner.fit()
    info = machine_info(device)                                       # what it ran on

`psutil` comes from Ray's bundled copy, so it is imported after `ray`, inside the probes.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import threading
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
