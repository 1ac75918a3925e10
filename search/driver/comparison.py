"""Run a searcher comparison: one `search/run.py` search per (searcher, repeat), then its rows,
table and page (`search.reporting.comparison`, `compare_table`, `compare_page`).

    code = run_comparison(CompareSettings("blood", ("optuna", "random[stop=none]")), passthrough)

`CompareSettings` is what search/compare.py's flags decide. A searcher is run.py's
`--searcher` value, optionally with settings in brackets (`parse_method`): `stop=asha|none`
(`--early-stopping`) and the TPE keys of `--tpe` (`startup`, `multivariate`, `liar`), e.g.
`optuna[startup=10,multivariate=no,liar=no]` for Optuna's own TPE defaults. Each search runs in
a subprocess with seed = repeat, named `compare-<task>-<searcher>-r<k>` under `settings.out`,
its log beside it; a finished one is reused, an interrupted one resumed (`--resume`). W&B
stays off in the searches so it is out of the timing; `--wandb-sweep` reads a sweep run on
W&B's service afterwards (`read_sweep`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from search.driver.plan import SEARCHERS
from search.driver.tpe import DEFAULTS as TPE_DEFAULTS
from search.driver.tpe import parse_tpe
from search.experiment.manifest import Manifest
from search.experiment.tables import write_table
from search.reporting.anytime import searchers
from search.reporting.compare_page import write_html
from search.reporting.compare_table import format_table, searcher_table
from search.reporting.comparison import TEST_FIGURE, summarise, sweep_rows

ROOT = Path(__file__).resolve().parents[2]
RUN_PY = ROOT / "search" / "run.py"
METHOD = re.compile(r"([\w-]+)(?:\[([^\]]*)\])?")
"""`searcher` or `searcher[key=value,...]`."""
STOP = ("asha", "none")


@dataclass(frozen=True)
class Method:
    """One searcher of the comparison: run.py's `--searcher` and its settings."""

    spec: str
    """As typed (its name in the table and the plots)."""
    searcher: str
    stop: str = "asha"
    tpe: tuple[tuple[str, str], ...] = ()

    def run_args(self) -> list[str]:
        args = ["--searcher", self.searcher, "--early-stopping", self.stop]
        if self.tpe:
            args += ["--tpe", ",".join(f"{k}={v}" for k, v in self.tpe)]
        return args

    @property
    def slug(self) -> str:
        """The spec as a folder name: `random[stop=none]` -> `random-stop-none`."""
        return re.sub(r"[^\w.]+", "-", self.spec).strip("-")


def parse_methods(text: str) -> tuple[Method, ...]:
    """`optuna,random[stop=none]` -> the Methods; a ValueError names what is wrong."""
    text = text.strip()
    methods, at = [], 0
    while at < len(text):
        match = METHOD.match(text, at)
        if not match:
            raise ValueError(f"--searchers {text[at:]!r}: expected NAME or NAME[key=value,...]")
        methods.append(parse_method(match.group(0)))
        at = match.end()
        if at < len(text) and text[at] != ",":
            raise ValueError(f"--searchers: expected ',' after {match.group(0)!r}")
        at += 1
    if not methods:
        raise ValueError("--searchers: name at least one")
    if len({m.spec for m in methods}) < len(methods):
        raise ValueError("--searchers: a searcher is named twice")
    return tuple(methods)


def parse_method(spec: str) -> Method:
    """`random[stop=none]` -> Method; `stop` for every searcher, TPE keys for optuna only."""
    match = METHOD.fullmatch(spec.strip())
    if not match or match.group(1) not in SEARCHERS:
        raise ValueError(f"--searchers {spec!r}: choose from {', '.join(SEARCHERS)}")
    searcher, stop, tpe = match.group(1), "asha", []
    for part in filter(None, (p.strip() for p in (match.group(2) or "").split(","))):
        key, _, value = (s.strip() for s in part.partition("="))
        if key == "stop" and value in STOP:
            stop = value
        elif key in TPE_DEFAULTS and searcher == "optuna" and value:
            tpe.append((key, value))
        else:
            raise ValueError(
                f"--searchers {spec!r}: {part!r} is not a setting; use stop=asha|none, and "
                f"for optuna {', '.join(f'{k}=...' for k in TPE_DEFAULTS)}"
            )
    method = Method(spec.strip(), searcher, stop, tuple(tpe))
    if tpe:
        try:
            parse_tpe(",".join(f"{k}={v}" for k, v in tpe), trials=10)
        except ValueError as err:
            raise ValueError(f"--searchers {spec!r}: {err}") from None
    return method


@dataclass(frozen=True)
class CompareSettings:
    """A comparison: `task`, the `searchers` (run.py's `--searcher` values), `trials` per
    search, `repeats` per searcher (seeds 0..R-1); `epochs`, `data_dir`, `space`, `launcher`
    and `gpus_per_trial` (None: 1 if a GPU is visible, else 0) passed to every search; `out`
    (None: runs/compare-<task>); `wandb_sweep`: a W&B sweep whose runs are read too."""

    task: str
    searchers: tuple[str, ...] = ("optuna", "wandb-bayes", "random")
    trials: int = 30
    repeats: int = 3
    epochs: int | None = None
    data_dir: str | None = None
    space: str | None = None
    launcher: str = "auto"
    gpus_per_trial: float | None = None
    out: str | None = None
    wandb_sweep: str | None = None

    def __post_init__(self) -> None:
        parse_methods(",".join(self.searchers))  # a ValueError for a spec run.py would refuse
        if self.trials < 1 or self.repeats < 1:
            raise ValueError("--trials and --repeats must be at least 1")


def run_name(task: str, searcher: str, repeat: int) -> str:
    return f"compare-{task}-{parse_method(searcher).slug}-r{repeat}"


def search_command(
    settings: CompareSettings, searcher: str, repeat: int, passthrough: list[str]
) -> list[str]:
    """The `search/run.py` command line of one (searcher, repeat)."""
    cmd = [
        sys.executable,
        str(RUN_PY),
        "--task",
        settings.task,
        "--name",
        run_name(settings.task, searcher, repeat),
        "--storage",
        settings.out,
        *parse_method(searcher).run_args(),
        "--seed",
        str(repeat),
        "--trials",
        str(settings.trials),
        "--launcher",
        settings.launcher,
        "--gpus-per-trial",
        str(settings.gpus_per_trial),
        "--explain-top",
        "0",
    ]
    for flag, value in (
        ("--epochs", settings.epochs),
        ("--data-dir", settings.data_dir),
        ("--space", settings.space),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += ["--wandb", "off"]  # W&B stays out of the timing
    return cmd + passthrough


def resume_command(folder: str, passthrough: list[str]) -> list[str]:
    """The command that continues an interrupted search: its folder and `--address`, the one
    flag of `passthrough` that `--resume` takes anew."""
    return [sys.executable, str(RUN_PY), "--resume", folder, *address_flags(passthrough)]


def address_flags(passthrough: list[str]) -> list[str]:
    """`--address` from the flags passed to every search: the one flag `--resume` takes anew."""
    for i, arg in enumerate(passthrough):
        if arg == "--address" and i + 1 < len(passthrough):
            return passthrough[i : i + 2]
        if arg.startswith("--address="):
            return [arg]
    return []


def search_env(passthrough: list[str]) -> dict[str, str]:
    """The environment of a search: its own local Ray unless an address is given.

    `ray.init()` without an address joins the newest cluster started on this machine (found
    through /tmp/ray), another user's included; RAY_ADDRESS=local makes it start its own.
    """
    env = dict(os.environ)
    if "RAY_ADDRESS" not in env and not any(a.startswith("--address") for a in passthrough):
        env["RAY_ADDRESS"] = "local"
    return env


def run_search(
    settings: CompareSettings, searcher: str, repeat: int, passthrough: list[str]
) -> str:
    """Run one search (or reuse a finished one); its folder."""
    name = run_name(settings.task, searcher, repeat)
    folder = os.path.join(settings.out, name)
    previous = Manifest.read_optional(folder)
    if previous is not None and previous.finished:
        print(f"{name}: reusing the finished search in {folder} (delete it to rerun)")
        return folder
    log_path = os.path.join(settings.out, f"{name}.log")
    cmd = search_command(settings, searcher, repeat, passthrough)
    if previous is not None:  # interrupted: it goes on where it stopped
        cmd = resume_command(folder, passthrough)
    print(f"{name}: {'resuming' if previous else 'running'}, log in {log_path}", flush=True)
    with open(log_path, "a" if previous else "w") as log:
        proc = subprocess.run(
            cmd, env=search_env(passthrough), stdout=log, stderr=subprocess.STDOUT
        )
    if proc.returncode != 0:
        tail = Path(log_path).read_text().splitlines()[-15:]
        print(
            f"{name}: exit code {proc.returncode}; last lines of {log_path}:\n  "
            + "\n  ".join(tail)
        )
    return folder


def read_sweep(path: str, metric: str, mode: str, limit: int | None = None) -> list[dict]:
    """A W&B sweep's rows, or [] with a message when W&B is offline or unreachable."""
    from search.tracking.runs import resolve_mode

    if resolve_mode(None) != "online":
        print(
            f"--wandb-sweep {path}: skipped, W&B is offline here (no API key, or "
            "WANDB_MODE=offline); run `wandb login` and compare again"
        )
        return []
    import wandb

    try:
        return sweep_rows(wandb.Api(timeout=30).sweep(path).runs, metric, mode, limit)
    except Exception as err:  # no network, a wrong path, no access: the rest still stands
        print(f"--wandb-sweep {path}: skipped ({type(err).__name__}: {err})")
        return []


def run_comparison(settings: CompareSettings, passthrough: list[str]) -> int:
    """Every (searcher, repeat) search, then compare.parquet, compare.html and the table on
    stdout; the exit code (1 when no search produced trials)."""
    from search.driver.space import default_space_path, load_space
    from trainables.tasks import get_task

    task = get_task(settings.task)
    space_path = settings.space or default_space_path(task)
    space = load_space(space_path, task, fixed={"epochs": settings.epochs})
    settings = resolved(settings, task.name)
    os.makedirs(settings.out, exist_ok=True)
    run_dirs = {
        (searcher, k): run_search(settings, searcher, k, passthrough)
        for k in range(settings.repeats)
        for searcher in settings.searchers
    }
    rows = summarise(run_dirs, space.metric, space.mode)
    if settings.wandb_sweep:
        rows += read_sweep(settings.wandb_sweep, space.metric, space.mode, settings.trials)
    if not rows:
        print("no search produced trials; see the logs in", settings.out)
        return 1
    parquet = os.path.join(settings.out, "compare.parquet")
    page = os.path.join(settings.out, "compare.html")
    write_table(rows, parquet)
    title = f"{task.name}: {', '.join(searchers(rows))}, {settings.trials} trials"
    write_html(rows, page, space.metric, space.mode, title)
    table = format_table(
        searcher_table(rows, space.mode), space.metric, TEST_FIGURE.get(space.metric)
    )
    print(f"\n{table}\n\n{page}\n{parquet}")
    return 0


def resolved(settings: CompareSettings, task: str) -> CompareSettings:
    """`settings` with `out` an absolute folder and `gpus_per_trial` decided."""
    out = os.path.abspath(settings.out or os.path.join("runs", f"compare-{task}"))
    gpus = settings.gpus_per_trial
    if gpus is None:
        import torch

        gpus = 1.0 if torch.cuda.is_available() else 0.0
    return dataclasses.replace(settings, out=out, gpus_per_trial=gpus)
