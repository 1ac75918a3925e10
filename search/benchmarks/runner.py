"""Run the chosen sections over one `Bench`, print the table and write the JSON report.

    from search.benchmarks.runner import SECTIONS, run
    code = run(BenchSettings(quick=True, sections=SECTIONS))   # 1 when a section failed

`search/bench.py` is the command; each section lives in its own module (`overhead` and
`packing`, `data`, `precision` and `mfu`, `memory`, `stream`, `unet`, `ingest`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict

import torch

from search.benchmarks.core import Bench, BenchSettings, sizes_for, stop_ray
from search.benchmarks.ingest import ingest
from search.benchmarks.memory import memory
from search.benchmarks.overhead import overhead, packing
from search.benchmarks.pipelines import data
from search.benchmarks.precision import mfu, precision
from search.benchmarks.probes import machine_info
from search.benchmarks.stream import stream
from search.benchmarks.unet import unet

SECTIONS = (
    "overhead",
    "data",
    "packing",
    "precision",
    "mfu",
    "memory",
    "stream",
    "unet",
    "ingest",
)
RAY_SECTIONS = ("packing", "memory", "stream", "overhead")  # run in this order: see `overhead`
RUNNERS = {
    f.__name__: f for f in (overhead, data, packing, precision, mfu, memory, stream, unet, ingest)
}


def pick_device(choice: str) -> torch.device:
    """`--device`'s value as a device; `auto` is CUDA when one is visible."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda: no CUDA device is visible (torch.cuda.is_available() "
            "is False); use --device cpu or auto"
        )
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def run_sections(b: Bench) -> tuple[dict, list[str]]:
    """Run the chosen sections, Ray's last; ({section: seconds, load average}, failed ones)."""
    order = [s for s in SECTIONS if s not in RAY_SECTIONS] + list(RAY_SECTIONS)  # Ray idle last
    host, failed = {}, []
    try:
        for section in (s for s in order if s in b.settings.sections):
            print(f"[bench] {section} ...", flush=True)
            t0 = time.perf_counter()
            try:
                RUNNERS[section](b)
            except Exception as err:  # one broken section must not lose the others' figures
                traceback.print_exc()
                b.rows(section)("error", None, "", f"{type(err).__name__}: {err}"[:300])
                failed.append(section)
            host[section] = {
                "s": round(time.perf_counter() - t0, 1),
                "load_avg_1m_after": round(os.getloadavg()[0], 2),
            }
    finally:
        stop_ray(b)
    return host, failed


def run(settings: BenchSettings) -> int:
    """Measure `settings.sections`, print the table, write `settings.out`; 1 if a section
    failed."""
    device = pick_device(settings.device)
    b = Bench(settings, device, sizes_for(settings.quick, settings.smoke_test, device))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's console output only: the table
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    machine, started = machine_info(device), time.perf_counter()
    machine["bf16"] = b.bf16  # measured once; the bf16 rows run only where it is fast
    # Ray relays its workers' prints to this stdout: while sections run, keep it for the table
    with contextlib.redirect_stdout(sys.stderr):
        host, failed = run_sections(b)
    report = {
        "machine": machine,
        "settings": {
            "quick": settings.quick,
            "smoke_test": settings.smoke_test,
            "sections": list(settings.sections),
            "compile_budget_s": settings.compile_budget,
            **asdict(b.sizes),
        },
        "elapsed": {**host, "total_s": round(time.perf_counter() - started, 1)},
        "results": b.results,
    }
    with open(settings.out, "w") as f:
        json.dump(report, f, indent=1)
    print(format_table(b.results, SECTIONS))
    total = report["elapsed"]["total_s"]
    print(
        f"\n{machine['device_name']}, {machine['cpu_count']} CPUs, torch {machine['torch']}; "
        f"load average {machine['load_avg_1m']} at start; seconds and load average after "
        f"each section: {host}; total {total} s; wrote {settings.out}"
    )
    return 1 if failed else 0


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
