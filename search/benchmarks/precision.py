"""Sections `precision` and `mfu`: resnet18 training steps by number format, and their FLOP/s.

    precision(b)   # fp32, bf16 autocast, bf16 + channels_last, torch.compile; 28 and 224 px
    mfu(b)         # FLOP/s of those steps over the device's matmul rate measured here

`python -m search.benchmarks.precision compile SPEC` is the child process that
`compile_in_child` time-boxes (a compile cannot be stopped in-process). Run the sections
through `python search/bench.py --sections precision,mfu`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial

import torch

from search.benchmarks.core import CLASSES, Bench
from search.benchmarks.timing import images_per_s, interleaved, sync, torch_threads
from trainables.models import build_model

VARIANTS = ("fp32", "bf16", "bf16_cl")
"""The eager variants; all but fp32 need fast bf16 (`Bench.bf16`)."""


def precision(b: Bench) -> None:
    """fp32 vs bf16 autocast vs bf16 + channels_last vs torch.compile, resnet18 train steps."""
    add, steps = b.rows("precision"), b.sizes.steps
    cpu = "" if b.gpu else f"; CPU: 1 thread, small batch, best of {b.sizes.rounds} x {steps}"
    with (
        torch_threads(b.threads),
        tempfile.TemporaryDirectory(prefix="medsweep-inductor-") as cache,
    ):
        for size, batch in b.sizes.precision:
            runs = {}
            for variant in VARIANTS if b.bf16["fast"] else VARIANTS[:1]:
                step = variant_step(variant, size, batch, b.device)
                step()  # warm-up
                runs[variant] = partial(images_per_s, step, batch, b.device, steps, 30.0)
            rates = interleaved(runs, b.sizes.rounds, warmup=0)
            for variant in VARIANTS:
                note = f"batch {batch}{cpu}" if variant in rates else b.bf16_skipped()
                add(f"{size}px/{variant}", rates.get(variant), "img/s", note, f"{size}px/fp32")
            _compile_rows(b, add, size, batch, cache)  # a fresh cache: a cold compile


def _compile_rows(b: Bench, add: Callable, size: int, batch: int, cache: str) -> None:
    figure, budget = f"{size}px/compile", b.settings.compile_budget
    if not b.bf16["fast"]:  # the compiled step is bf16 + channels_last
        return add(figure, None, "img/s", b.bf16_skipped())
    if size not in b.sizes.compile_sizes or budget <= 0:
        why = "--compile-budget 0" if budget <= 0 else f"{size} px not compiled in this mode"
        if budget > 0 and not b.gpu and not b.sizes.compile_sizes:
            why = "--quick on a CPU compiles nothing (a cold compile takes minutes there)"
        return add(figure, None, "img/s", f"skipped: {why}")
    spec = {
        "size": size,
        "batch": batch,
        "device": b.device.type,
        "steps": b.sizes.steps,
        "rounds": b.sizes.rounds,
        "budget_s": 30.0,
        "threads": b.threads,
    }
    try:
        out = compile_in_child(spec, budget, cache)
    except TimeoutError as err:
        return add(figure, None, "img/s", f"skipped: {err}")
    add(
        figure,
        out["compiled"],
        "img/s",
        f"bf16 + channels_last compiled: "
        f"{out['compiled'] / out['eager']:.2f}x eager, timed in turns in a child process",
        f"{size}px/fp32",
    )
    add(f"{size}px/compile_s", out["compile_s"], "s", "first step, cold inductor cache")


def mfu(b: Bench) -> None:
    """Achieved FLOP/s of a resnet18 training step over the matmul rate, timed in turns."""
    add, n = b.rows("mfu"), b.sizes.matmul_n
    dtypes = {"bf16": torch.bfloat16} if b.gpu else {"fp32": torch.float32, "bf16": torch.bfloat16}
    if not b.bf16["fast"]:
        del dtypes["bf16"]
        for figure in (
            "matmul_bf16_tflops",
            *(f"{s}px_bf16_cl_tflops" for s, _ in b.sizes.precision[: 2 if b.gpu else 1]),
        ):
            add(figure, None, "TFLOP/s", b.bf16_skipped())
    for name, dtype in dtypes.items():
        variant, runs, flops = "bf16_cl" if name == "bf16" else "fp32", {}, {}
        runs["matmul"] = matmul_run(b.device, dtype, n)
        for size, batch in b.sizes.precision[: 2 if b.gpu else 1]:
            step = variant_step(variant, size, batch, b.device)
            flops[size] = step_flops(step) / batch  # one step, which also warms it up
            runs[size] = partial(images_per_s, step, batch, b.device, b.sizes.steps, 30.0)
        with torch_threads(b.threads):
            rates = interleaved(runs, b.sizes.rounds + 1, warmup=0)
        peak = f"matmul_{name}_tflops"
        add(peak, rates.pop("matmul") / 1e12, "TFLOP/s", f"{n}x{n} matmul, timed in turns")
        for size, rate in rates.items():
            add(
                f"{size}px_{variant}_tflops",
                flops[size] * rate / 1e12,
                "TFLOP/s",
                f"ratio = MFU; {flops[size] / 1e9:.2f} GFLOP/image fwd+bwd, counted as direct "
                "convolutions (FlopCounterMode): Winograd kernels do less, so CPUs can pass 1",
                peak,
            )


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
    cmd = [sys.executable, "-m", "search.benchmarks.precision", "compile", json.dumps(spec)]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    runs = {
        k: partial(images_per_s, step, batch, device, spec["steps"], spec["budget_s"])
        for k, step in steps.items()
    }
    return {"compile_s": compile_s, **interleaved(runs, spec["rounds"], warmup=0)}


if __name__ == "__main__" and sys.argv[1:2] == ["compile"]:
    print(json.dumps(_compile_child(json.loads(sys.argv[2]))))
