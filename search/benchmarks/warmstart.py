"""Warm start against a cold start, same seeds: the best validation AUROC after trials 1, 3, 6.

    python -m search.benchmarks.warmstart             # the issue's measurement: 3 seeds, 12 / 6
    python -c "from search.benchmarks.warmstart import Run, main; \
        main(Run(seeds=(0,), earlier_trials=4, trials=2, epochs=1))"    # a quick smoke run

For each seed S (`Run`): an earlier search of `earlier_trials` trials (12; search seed 100 + S,
so the warm search does not replay its own suggestions), then a `trials`-trial search (6) with
`--seed S` twice: cold, and with `--warm-start` of that earlier search. Every search is
search/run.py as a user runs it (`--task pneumonia --data-dir data --space
spaces/pneumonia-cnn.yaml`, no attribution, no test split, W&B off), in the `storage` folder
(default runs/warmstart-bench), reusing a finished earlier search already there. The figure is
the running best of the new search's own trials' `val_auc` in start order (the carried trials
trained in the earlier search and are not counted), after its 1st, 3rd and 6th trial; the table
goes to stdout and to `<storage>/warmstart.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from search.experiment.manifest import Manifest
from search.reporting.figures import running_best
from search.reporting.folder import load_experiment

ROOT = Path(__file__).resolve().parents[2]
AFTER = (1, 3, 6)
SEARCH = (
    "--task pneumonia --data-dir data --space spaces/pneumonia-cnn.yaml "
    "--explain-top 0 --test-top 0 --wandb off"
).split()


@dataclass(frozen=True)
class Run:
    """What is measured (the defaults: the issue's measurement)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    earlier_trials: int = 12
    trials: int = 6
    epochs: int | None = None
    """Epochs per trial (None: the space's, 6)."""
    storage: str = "runs/warmstart-bench"
    address: str | None = None
    """A Ray cluster to join (None: a local Ray per search)."""


def run_search(storage: Path, name: str, trials: int, seed: int, extra: list[str]) -> Path:
    """search/run.py to its end (kept when it finished already); the experiment folder."""
    folder = storage / name
    done = Manifest.read_optional(str(folder))
    if done is not None and done.finished:
        return folder
    cmd = [sys.executable, str(ROOT / "search" / "run.py"), *SEARCH, "--name", name]
    cmd += ["--storage", str(storage), "--trials", str(trials), "--seed", str(seed), *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "WANDB_MODE": "offline"})
    return folder


def best_after(folder: Path, after: tuple[int, ...] = AFTER) -> dict[int, float | None]:
    """{n: the best val_auc among the search's first n trials (start order)}."""
    exp = load_experiment(folder)
    best = running_best([exp.value(t) for t in exp.trials], exp.mode)
    return {n: (float(best[n - 1]) if n <= len(best) else None) for n in after}


def measure(args: Run) -> list[dict]:
    """One row per (seed, start): the best val_auc after each of AFTER's trial counts."""
    storage, rows = Path(args.storage).resolve(), []
    common = [] if args.epochs is None else ["--epochs", str(args.epochs)]
    common += [] if args.address is None else ["--address", args.address]
    for seed in args.seeds:
        earlier = run_search(storage, f"earlier-s{seed}", args.earlier_trials, 100 + seed, common)
        warm_flags = [*common, "--warm-start", str(earlier)]
        for start, extra in (("cold", common), ("warm", warm_flags)):
            folder = run_search(storage, f"{start}-s{seed}", args.trials, seed, extra)
            record = Manifest.read(str(folder)).extra.get("warm_start", {})
            rows.append({"seed": seed, "start": start, **best_after(folder), **record})
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table, with each start's mean over seeds."""
    head = ["seed", "start", *(f"best after {n}" for n in AFTER), "carried", "did not fit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["seed"], r["start"], *(_f(r[n]) for n in AFTER)]
        cells += [r.get("carried", "-"), r.get("did_not_fit", "-")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    for start in ("cold", "warm"):
        mine = [r for r in rows if r["start"] == start]
        means = [_mean([r[n] for r in mine]) for n in AFTER]
        lines.append(f"| mean | {start} | " + " | ".join(map(_f, means)) + " | | |")
    return "\n".join(lines)


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def main(run: Run | None = None) -> int:
    """Measure, print the table, write `<storage>/warmstart.json`."""
    run = run or Run()
    rows = measure(run)
    text = table(rows)
    print(text)
    out = Path(run.storage) / "warmstart.json"
    out.write_text(json.dumps({"rows": rows, "table": text}, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
