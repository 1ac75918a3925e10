"""`search/bench.py` runs and writes what it promises. Not a timed test: no figure is judged."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

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
