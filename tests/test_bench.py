"""`search/bench.py` runs and writes what it promises. Not a timed test: no figure is judged.

pytest tests/test_bench.py -m "not slow"   # the table, ratios, flags, probes: seconds
pytest tests/test_bench.py                 # plus the cheap sections, for real
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from search.bench import parse_args
from search.benchmarks.core import Bench, BenchSettings, sizes_for
from search.benchmarks.ondisk import evict, resident_mb, write_npz
from search.benchmarks.precision import mfu, precision
from search.benchmarks.probes import bf16_probe
from search.benchmarks.runner import SECTIONS, format_table
from search.benchmarks.trials import first_step_time
from search.data.node_data import describe, node_arrays
from trainables.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]

CHEAP = ("data", "precision", "mfu")  # no Ray, no GPU: the sections cheap enough for CI
SMOKED = CHEAP  # stream starts Ray and writes a dataset: its rows are checked by hand (note)
EXPECTED = {
    "data": {
        "augment_images_per_s/loader_v2",
        "augment_images_per_s/device_kornia",
        "train_images_per_s/loader_v2",
        "train_images_per_s/device_kornia",
    },
    "precision": {f"{px}px/{v}" for px in (28, 224) for v in ("fp32", "bf16", "bf16_cl")},
    "mfu": {"matmul_fp32_tflops", "28px_fp32_tflops", "matmul_bf16_tflops"},
    "stream": {
        "dataset_mb",
        "first_step_s/small_data",
        "first_step_s/cold",
        "first_step_s/warm",
        "node_mb/1_trial",
        "node_mb/2_trials",
        "target_mb/2_trials",
        "fixed_mb_per_trial",
        "dataset_resident_mb/2_trials",
        "summed_rss_dataset_mb/2_trials",
        *(f"images_per_s/{px}px_{path}" for px in (28, 224) for path in ("resident", "stream")),
        *(f"gpu_busy_pct/{px}px_resident" for px in (28, 224)),
    },
}


def _bench(**settings) -> Bench:
    device = torch.device("cpu")
    return Bench(BenchSettings(**settings), device, sizes_for(True, True, device))


def test_a_row_is_a_ratio_to_its_baseline_and_never_a_non_finite_value():
    b = _bench()
    add = b.rows("data")
    add("base", 4.0, "img/s")
    add("fast", 10.0, "img/s", "twice and a half", vs="base")
    add("broken", float("nan"), "img/s", "why", vs="base")
    add("orphan", 3.0, "img/s", vs="missing")
    rows = b.results["data"]
    assert rows["fast"] == {
        "value": 10.0,
        "unit": "img/s",
        "ratio": 2.5,
        "vs": "base",
        "note": "twice and a half",
    }
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
        ["data", "a"],
        ["data", "b"],
        ["data", "c"],
        ["mfu", "matmul_fp32_tflops"],
    ]
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
    assert args.sections == ("data", "mfu") and args.compile_budget == 120.0
    assert parse_args(["--smoke-test"]).compile_budget == 0.0
    assert parse_args([]).sections == SECTIONS and parse_args([]).compile_budget == 600.0
    with pytest.raises(SystemExit):
        parse_args(["--sections", "data,nope"])


def test_the_full_bench_streams_a_set_of_20000_images_and_quick_compiles_nothing_on_cpu():
    for device in (torch.device("cpu"), torch.device("cuda")):
        stream = sizes_for(False, False, device).stream
        assert stream.train + stream.val >= 20_000 and stream.trials == 4, device
        assert {px for px, *_ in stream.rates} == {28, 224}
    quick = sizes_for(True, False, torch.device("cpu"))
    assert quick.compile_sizes == () and quick.stream.train + quick.stream.val < 20_000


def test_the_bf16_probe_measures_and_names_the_cpu_flags():
    probe = bf16_probe(torch.device("cpu"), budget_s=0.01)
    assert isinstance(probe["fast"], bool) and probe["ratio"] > 0
    assert probe["how"].startswith("measured: bf16 matmul") and "CPU flags: " in probe["how"]


def test_without_fast_bf16_its_rows_say_so_and_fp32_is_still_timed():
    b = _bench(compile_budget=0.0)
    b = dataclasses.replace(b, sizes=dataclasses.replace(b.sizes, precision=((28, 2),)))
    b.bf16_probe = {"fast": False, "ratio": 0.07, "how": "measured: bf16 matmul 0.07x fp32"}
    precision(b)
    mfu(b)
    rows = {f"{s}/{f}": row for s, table in b.results.items() for f, row in table.items()}
    for figure in (
        "precision/28px/bf16",
        "precision/28px/bf16_cl",
        "precision/28px/compile",
        "mfu/matmul_bf16_tflops",
        "mfu/28px_bf16_cl_tflops",
    ):
        assert rows[figure]["value"] is None, figure
        assert rows[figure]["note"].startswith("skipped: no fast bf16 on this cpu (measured: ")
    for figure in ("precision/28px/fp32", "mfu/matmul_fp32_tflops", "mfu/28px_fp32_tflops"):
        assert rows[figure]["value"] > 0, figure


def test_a_written_npz_is_a_medmnist_set_the_node_cache_reads_and_evict_drops_it(tmp_path):
    path = str(tmp_path / "set.npz")
    write_npz(path, n_train=300, n_val=20, size=28)  # 300 > the 256 images drawn once
    with np.load(path) as npz:
        images, labels = npz["train_images"], npz["train_labels"]
        assert images.shape == (300, 28, 28, 3) and npz["val_images"].shape == (20, 28, 28, 3)
        assert images.dtype == np.uint8 and not np.array_equal(images[0], images[256])
        assert labels.ravel().tolist() == [i % 8 for i in range(300)]
    source = dataclasses.replace(
        describe(path, get_task("blood"), 28), cache_dir=str(tmp_path / "cache")
    )
    arrays = node_arrays(source)
    assert isinstance(arrays["train_images"], np.memmap)
    assert np.array_equal(arrays["train_images"], images)
    assert resident_mb([path]) > 0
    evict([path])
    if resident_mb([path]) > 0:
        pytest.skip("this filesystem keeps the pages (tmpfs?): eviction is not checked here")


@pytest.mark.slow
def test_cheap_sections_write_positive_finite_figures(tmp_path):
    """--smoke-test (the --quick path at its smallest) --sections data,precision,mfu on
    CPU: exit 0, a table, and a bench.json whose every figure is a positive finite number or
    says why it was skipped."""
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "search" / "bench.py"),
        "--quick",
        "--smoke-test",
        "--device",
        "cpu",
        "--sections",
        ",".join(SMOKED),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0
    report = json.loads(out.read_text())
    assert {"cpu_count", "torch", "device", "device_name"} <= report["machine"].keys()
    assert report["machine"]["device"] == "cpu" and "how" in report["machine"]["bf16"]
    assert set(report["results"]) == set(SMOKED)
    for section in SMOKED:
        assert EXPECTED[section] <= report["results"][section].keys(), section
    for section, rows in report["results"].items():
        for figure, row in rows.items():
            where = f"{section}/{figure}: {row}"
            if row["value"] is None:  # torch.compile (--smoke-test), bf16 here, GPU rows
                assert row["note"].startswith("skipped"), where
                continue
            assert math.isfinite(row["value"]) and row["value"] > 0, where
            assert row["ratio"] is None or (math.isfinite(row["ratio"]) and row["ratio"] > 0)
    assert "28px/bf16_cl" in proc.stdout and "matmul_fp32_tflops" in proc.stdout
