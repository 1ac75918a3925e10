"""Measure the search against plain PyTorch and the device's limit; print a table, write JSON.

    python search/bench.py --quick                     # CPU: under 5 minutes on 2 cores
    python search/bench.py --device cuda --out bench.json
    python search/bench.py --quick --sections data,precision,mfu
    python search/bench.py --sections stream           # the streaming path on a 3.0 GB set
    python search/bench.py --smoke-test                # every path at its smallest (tests)

Every figure is measured side by side in one run and given as a ratio to its baseline:
- overhead: one trial under Ray Tune + Ray Train (launcher `train`) and as a plain Tune function
  (`function`), against the same `train_loop` called here: images/s, trial start -> first step.
- data: device-resident uint8 images + kornia on the device against a DataLoader with workers
  and per-sample torchvision v2 transforms, alone and with a model step.
- packing: 1, 2, 4, 8 trials sharing one GPU, utilisation through NVML (CPU: 1 vs 2 trials).
- precision: fp32, bf16 autocast, bf16 + channels_last, torch.compile; resnet18, 28 and 224 px.
- mfu: FLOP/s of a resnet18 training step over the device's matmul rate measured here.
  bf16 rows run only where bf16 is fast: a short measured probe (bf16 against fp32 matmul and
  convolution; the CPU's avx512_bf16 / amx_bf16 flags are named beside it), else they say why.
  `--quick` on a CPU compiles nothing (a cold torch.compile takes minutes there).
- memory: the Ray node's memory with 1 and N trials (the dataset sits once in the object
  store), and the Tune driver's memory after many tiny trials.
- stream: on a synthetic 224-px set written to disk (20,000 images, 3.0 GB; `--quick` a small
  set): node memory with 1 and 4 streamed trials against the set's size, images/s streamed
  against resident (28 and 224 px), time to first step with the node cache warm and cold
  against a small-data trial's, GPU busy % on a GPU.
- ingest: a synthetic CheXpert-layout set (20,000 grayscale JPEGs of 320x390, a CSV with the
  14 observations; `--quick` 5,000) decoded to 224 px: the Ray Data ingest and its thread pool
  against today's threaded reader, images/s, driver peak RSS at a quarter and all of the set,
  and a second ingest after 1% of the files changed.
A benchmark, not a test: nothing is asserted (`tests/test_bench.py` checks that it runs).
The sections live in search/benchmarks/ (one module each, or one per pair).
"""

from __future__ import annotations

import argparse
import sys

from search.benchmarks.core import BenchSettings, default_compile_budget
from search.benchmarks.runner import SECTIONS, run


def parse_args(argv: list[str] | None = None) -> BenchSettings:
    """The bench's settings from its flags (an unknown section: an error, exit code 2)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="small sizes (CPU: under 5 minutes on 2 cores)"
    )
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="tiny sizes: checks every path "
        "runs, in about a minute on CPU; its figures mean little",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="bench.json", help="JSON file to write (default bench.json)")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument(
        "--compile-budget",
        type=float,
        help="seconds each torch.compile may take "
        "(0 skips it; default 120 with --quick, 600 without, 0 with --smoke-test)",
    )
    args = p.parse_args(argv)
    chosen = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        p.error(f"--sections: unknown {unknown}; choose from {','.join(SECTIONS)}")
    if args.compile_budget is None:
        args.compile_budget = default_compile_budget(args.quick, args.smoke_test)
    return BenchSettings(**{**vars(args), "sections": chosen})


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
