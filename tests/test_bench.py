"""`search/bench.py` runs and writes what it promises. Not a timed test: no figure is judged.

    pytest tests/test_bench.py -m "not slow"   # the table, ratios, flags: seconds
    pytest tests/test_bench.py                 # plus the bench's cheap sections, run for real
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from search.bench import parse_args
from search.benchmarks.core import Bench, sizes_for
from search.benchmarks.runner import SECTIONS, format_table
from search.benchmarks.trials import first_step_time

CHEAP = ("data", "precision", "mfu")  # no Ray, no GPU: the sections cheap enough for CI
EXPECTED = {
    "data": {
        "augment_images_per_s/loader_v2",
        "augment_images_per_s/device_kornia",
        "train_images_per_s/loader_v2",
        "train_images_per_s/device_kornia",
    },
    "precision": {f"{px}px/{v}" for px in (28, 224) for v in ("fp32", "bf16", "bf16_cl")},
    "mfu": {"matmul_fp32_tflops", "28px_fp32_tflops", "matmul_bf16_tflops"},
}


def _bench() -> Bench:
    device = torch.device("cpu")
    return Bench(argparse.Namespace(), device, sizes_for(True, True, device))


def test_a_row_is_a_ratio_to_its_baseline_and_never_a_non_finite_value():
    b = _bench()
    add = b.rows("data")
    add("base", 4.0, "img/s")
    add("fast", 10.0, "img/s", "twice and a half", vs="base")
    add("broken", float("nan"), "img/s", "why", vs="base")
    add("orphan", 3.0, "img/s", vs="missing")
    rows = b.results["data"]
    assert rows["fast"] == {"value": 10.0, "unit": "img/s", "ratio": 2.5, "vs": "base",
                            "note": "twice and a half"}  # fmt: skip
    assert rows["broken"]["value"] is None and rows["broken"]["ratio"] is None
    assert rows["broken"]["note"] == "not finite (nan); why"
    assert rows["orphan"]["ratio"] is None


def test_the_table_lists_sections_in_order_with_values_and_ratios():
    b = _bench()
    b.rows("mfu")("matmul_fp32_tflops", 0.1234, "TFLOP/s", "peak")
    b.rows("data")("a", 1234.5, "img/s")
    b.rows("data")("b", 2469.0, "img/s", "more", vs="a")
    b.rows("data")("c", None, "img/s", "skipped: no GPU")
    lines = format_table(b.results, SECTIONS).splitlines()
    assert lines[0].split() == ["section", "figure", "value", "ratio", "note"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["data", "a"], ["data", "b"], ["data", "c"], ["mfu", "matmul_fp32_tflops"],
    ]  # fmt: skip
    assert "2,469 img/s" in lines[2] and "2.00x a" in lines[2] and lines[2].endswith("more")
    assert lines[3].split()[2] == "-" and "0.123 TFLOP/s" in lines[4]


def test_first_step_time_takes_off_epoch_one_and_the_smallest_overhead():
    # 100 images per epoch at 50 img/s (2 s of training); reports 0.5 s and 0.3 s after
    # their epochs' training: the first step began at 10 - 2 - 0.3
    times, rates = [10.0, 12.5, 14.8], [50.0, 50.0, 50.0]
    assert first_step_time(times, rates, seen=100) == pytest.approx(7.7)
    assert first_step_time([10.0], [50.0], seen=100) == pytest.approx(8.0)  # one report


def test_flags_choose_sections_and_the_compile_budget():
    args = parse_args(["--quick", "--sections", " data, mfu ,"])
    assert args.sections == ["data", "mfu"] and args.compile_budget == 120.0
    assert parse_args(["--smoke-test"]).compile_budget == 0.0
    assert parse_args([]).sections == list(SECTIONS) and parse_args([]).compile_budget == 600.0
    with pytest.raises(SystemExit):
        parse_args(["--sections", "data,nope"])


@pytest.mark.slow
def test_cheap_sections_write_positive_finite_figures(tmp_path):
    """--smoke-test (the --quick path at its smallest) --sections data,precision,mfu on CPU:
    exit 0, a table, and a bench.json whose every figure is a positive finite number or says
    why it was skipped."""
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, str(ROOT / "search" / "bench.py"), "--quick", "--smoke-test",
        "--device", "cpu", "--sections", ",".join(CHEAP), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0
    report = json.loads(out.read_text())
    assert {"cpu_count", "torch", "device", "device_name"} <= report["machine"].keys()
    assert report["machine"]["device"] == "cpu"
    assert set(report["results"]) == set(CHEAP)
    for section, figures in EXPECTED.items():
        assert figures <= report["results"][section].keys(), section
    for section, rows in report["results"].items():
        for figure, row in rows.items():
            where = f"{section}/{figure}: {row}"
            if row["value"] is None:  # torch.compile: --smoke-test leaves it out
                assert row["note"].startswith("skipped"), where
                continue
            assert math.isfinite(row["value"]) and row["value"] > 0, where
            assert row["ratio"] is None or (math.isfinite(row["ratio"]) and row["ratio"] > 0)
    assert "28px/bf16_cl" in proc.stdout and "matmul_fp32_tflops" in proc.stdout
