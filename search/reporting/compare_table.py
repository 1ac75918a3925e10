"""The comparison's summary: one line per searcher, over its repeats, as data and plain text.

    table = searcher_table(rows)                   # rows: search.reporting.comparison's
    print(format_table(table, "val_auc", "auroc"))

Final best and test figure are mean ± sample std over repeats; stopped-early and errored trials
are counted; wall time and CPU/GPU hours are per search, mean over repeats.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from search.experiment.tables import ERRORED, STOPPED_EARLY

RESOURCE_NOTE = (
    "CPU·h / GPU·h: per search, the sum over its trials of (trial wall time × CPUs or GPUs the "
    "trial held), mean over repeats; a Ray Train driver's 0.01 CPU is left out."
)


def columns(metric: str, test_name: str | None, spaced: bool = False) -> list[str]:
    """The table's column names; `spaced` (the page) adds "(mean ± std)" and spaces."""
    best, test = f"best {metric}", f"test {test_name or '-'}"
    if spaced:
        best, test = f"{best} (mean ± std)", f"{test} (mean ± std)"
    per = " / " if spaced else "/"
    return [
        "searcher",
        "repeats",
        "trials",
        best,
        test,
        "stopped early",
        "errored",
        f"wall s{per}search",
        f"CPU·h{per}search",
        f"GPU·h{per}search",
    ]


def searcher_table(rows: list[dict]) -> list[dict]:
    """One line per searcher: final best and test metric (mean ± std over repeats), counts."""
    table = []
    for searcher in searchers(rows):
        runs = by_repeat([r for r in rows if r["searcher"] == searcher])
        finals = [_last_best(run) for run in runs.values()]
        tests = [
            r["test_metric"] for run in runs.values() for r in run if r["test_metric"] is not None
        ]
        mine = [r for run in runs.values() for r in run]
        table.append(
            {
                "searcher": searcher,
                "repeats": len(runs),
                "trials": len(mine),
                "best": _mean_std([f for f in finals if f is not None]),
                "test": _mean_std(tests),
                "stopped_early": sum(r["status"] == STOPPED_EARLY for r in mine),
                "errored": sum(r["status"] == ERRORED for r in mine),
                "wall_s": _mean([_max(r["wall_time_s"] for r in run) for run in runs.values()]),
                "cpu_h": _mean([_sum(r["cpu_s"] for r in run) for run in runs.values()], 3600),
                "gpu_h": _mean([_sum(r["gpu_s"] for r in run) for run in runs.values()], 3600),
            }
        )
    return table


def format_table(table: list[dict], metric: str, test_name: str | None) -> str:
    """The summary table as aligned plain text (for the terminal and the release note)."""
    head = columns(metric, test_name)
    lines = [head] + [cells(t) for t in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text + ["", RESOURCE_NOTE])


def cells(t: dict) -> list[str]:
    """One searcher's line as text cells, in `columns()` order."""
    return [
        t["searcher"],
        str(t["repeats"]),
        str(t["trials"]),
        _pm(t["best"]),
        _pm(t["test"]),
        f"{t['stopped_early']}/{t['trials']}",
        str(t["errored"]),
        _num(t["wall_s"], 0),
        _sig(t["cpu_h"]),
        _sig(t["gpu_h"]),
    ]


def searchers(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["searcher"] for r in rows))


def by_repeat(rows: list[dict]) -> dict[int, list[dict]]:
    runs: dict[int, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["repeat"], r["trial_order"])):
        runs.setdefault(r["repeat"], []).append(r)
    return runs


def _last_best(run: list[dict]) -> float | None:
    values = [r["best_so_far"] for r in run if r["best_so_far"] is not None]
    return values[-1] if values else None


def _mean_std(values: list[float]) -> tuple[float, float, int] | None:
    """(mean, sample std, n); std 0 for a single value."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def _mean(values: list[float | None], unit: float = 1.0) -> float | None:
    known = [v / unit for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _sum(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _max(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _pm(stat: tuple[float, float, int] | None) -> str:
    return "-" if stat is None else f"{stat[0]:.4f} ± {stat[1]:.4f} (n={stat[2]})"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _sig(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
