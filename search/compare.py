"""Compare searchers on one task: same space, trainable, budget and hardware, several seeds.

    python search/compare.py --task pathology --searchers optuna,ray-optuna,random,wandb-bayes \\
        --trials 30 --repeats 3 [--epochs 4] [--launcher auto] [--out runs/compare-pathology]
    python search/compare.py ... --searchers "optuna,optuna[startup=10],random[stop=none]"
    python search/compare.py ... --wandb-sweep ENTITY/PROJECT/SWEEP_ID   # add a real W&B sweep
    python search/compare.py ... -- --max-concurrent 2                  # after --: to run.py

A searcher is run.py's `--searcher` value, with settings in brackets if wanted: `stop=none`
(`--early-stopping none`: every trial runs its epochs, the user's own loop over configs) and,
for optuna, the keys of `--tpe` (startup, multivariate, liar). The default runs medsweep's
searcher, Optuna's own TPE settings, Ray's stock OptunaSearch (told the last epoch, as most
Tune scripts do), random search with and without ASHA, and W&B's Bayes engine.

Each (searcher, repeat k) is one `search/run.py` search in a subprocess with seed k, named
`compare-<task>-<searcher>-r<k>` under --out, its log beside it (`<name>.log`); a finished one
is reused and an interrupted one resumed, so an interrupted comparison picks up where it
stopped.
Attribution maps are skipped (`--explain-top 0`); the best trial of each search is evaluated
on the test split as usual. Then it writes

  <out>/compare.parquet  one row per (searcher, repeat, trial): trial order, metric,
                         best-so-far, wall time since the search started, status, resources
  <out>/compare.html     best-so-far against trial number and against wall time (mean line,
                         95% band over repeats), the summary table; self-contained

and prints the summary table as plain text: final best and the test figure of each search's
winner (mean +/- sd), and the time each searcher took to reach random search's final mean
best, as a ratio to random's own. Trials are ordered by when they finished, the
moment their searcher learnt the result. `--wandb-sweep` reads the runs of a sweep run on W&B's
service (`wandb sweep` + `wandb agent`, program `search/wandb_trial.py`) and adds it as one more
searcher; it needs W&B online and is skipped with a message otherwise.

`--launcher` defaults to `auto`, as in run.py (function for one worker per trial, train for
DDP), and is passed to every search. The work is in `search.driver.comparison`; the rows,
table and page in `search.reporting.comparison`, `compare_table` and `compare_page`. A mistake
(a flag, an unknown task, a space file that does not load, a file as --out) is one line,
`error: ...; ...`, exit code 2, before any search starts.
"""

from __future__ import annotations

import argparse
import os
import sys

from search.driver.checks import UserError, user_errors
from search.driver.comparison import CompareSettings, parse_methods, run_comparison
from search.driver.options import Parser
from search.driver.plan import LAUNCHERS

DEFAULT_SEARCHERS = (
    "optuna,optuna[startup=10,multivariate=no,liar=no],ray-optuna,random,random[stop=none],"
    "wandb-bayes"
)
"""medsweep's default; Optuna's own TPE settings; Ray's stock OptunaSearch (last epoch); random
search with ASHA; random search without early stopping (a hand-written loop); W&B's engine."""


def parse_args(argv: list[str] | None = None) -> tuple[CompareSettings, list[str]]:
    """(the comparison's settings, the arguments after `--`, passed to every search)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = Parser(
        prog="search/compare.py",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--task", required=True)
    p.add_argument(
        "--searchers",
        default=DEFAULT_SEARCHERS,
        help="comma-separated run.py --searcher values, each optionally with settings in "
        "brackets: stop=asha|none (--early-stopping) and, for optuna, --tpe's keys "
        f"(default {DEFAULT_SEARCHERS})",
    )
    p.add_argument("--trials", type=int, default=30, help="trials per search (default 30)")
    p.add_argument("--repeats", type=int, default=3, help="searches per searcher, seeds 0..R-1")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the space's)")
    p.add_argument("--data-dir", help="folder with the npz files (run.py's default otherwise)")
    p.add_argument("--space", help="space file (default spaces/<task>.yaml)")
    p.add_argument(
        "--launcher",
        default="auto",
        choices=("auto", *LAUNCHERS),
        help="as in run.py (default auto); passed to every search",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="default 1 if a GPU is visible, else 0; the same for every searcher",
    )
    p.add_argument(
        "--out", help="folder for the searches and results (default runs/compare-<task>)"
    )
    p.add_argument(
        "--wandb-sweep",
        metavar="ENTITY/PROJECT/ID",
        help="also read this W&B sweep's runs (needs W&B online)",
    )
    args = p.parse_args(argv)
    try:
        searchers = tuple(m.spec for m in parse_methods(args.searchers))
        settings = CompareSettings(**{**vars(args), "searchers": searchers})
    except ValueError as err:
        p.error(str(err))
    return settings, passthrough


def check(settings: CompareSettings) -> None:
    """A `UserError` for an unknown task, a space file that does not load for it, or an
    --out that is a file: what every search would fail on."""
    from search.driver.space import default_space_path, load_space
    from trainables.tasks import get_task

    with user_errors("fix --task or --space"):
        task = get_task(settings.task)
        load_space(settings.space or default_space_path(task), task, {"epochs": settings.epochs})
    out = settings.out
    if out and os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file; pass a folder (made if missing)")


def main(argv: list[str] | None = None) -> int:
    args, passthrough = parse_args(argv)
    try:
        check(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_comparison(args, passthrough)


if __name__ == "__main__":
    sys.exit(main())
