"""Timers every section shares: rates of a step, contenders timed in turns, thread counts.

    rate = images_per_s(step, batch, device, steps=10, budget_s=30.0)
    rates = interleaved({"fp32": time_fp32, "bf16": time_bf16}, rounds=3)  # best of each, in turns
    with torch_threads(1):  # as a trial's single-CPU worker runs
        ...

`images_per_s` synchronises the device before each reading of the clock.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady(rates: list[float]) -> float:
    """The median epoch rate, leaving out epoch 1 (it pays for first-touch costs)."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


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


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside the block (None: left as they are)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
