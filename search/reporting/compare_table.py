"""The comparison's summary: one line per searcher, over its repeats, as data and plain text.

    table = searcher_table(rows, mode="max")       # rows: search.reporting.comparison's
    print(format_table(table, "val_auc", "auroc"))

Final best and test figure are mean ± sample std over repeats; stopped-early and errored trials
are counted; wall time and CPU/GPU hours are per search, mean over repeats. Time to target: the
mean wall time (and trials) each searcher took to reach the reference searcher's final mean best
(`REFERENCE`, random search with ASHA, when it ran; else the first searcher), and its ratio to
the reference's own time (below 1: sooner); `search.reporting.anytime`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from search.experiment.tables import ERRORED, STOPPED_EARLY
from search.reporting.anytime import (
    Reach,
    by_repeat,
    final_best,
    final_mean,
    searchers,
    time_to_target,
)

REFERENCE = "random"
"""The searcher whose final mean best is every searcher's target."""

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
        f"time to target{per}s",
        f"vs {REFERENCE}" if spaced else "vs ref",
        f"wall s{per}search",
        f"CPU·h{per}search",
        f"GPU·h{per}search",
    ]


def reference(rows: list[dict]) -> str | None:
    """The searcher whose final mean best is the target: `REFERENCE` when it ran."""
    names = searchers(rows)
    return REFERENCE if REFERENCE in names else (names[0] if names else None)


def searcher_table(rows: list[dict], mode: str = "max") -> list[dict]:
    """One line per searcher: final best and test metric (mean ± std over repeats), time to
    the reference's final mean best, counts."""
    table = []
    ref = reference(rows)
    target = final_mean(rows, ref) if ref else None
    reach = {s: time_to_target(rows, s, target, mode) for s in searchers(rows)} if target else {}
    for searcher in searchers(rows):
        runs = by_repeat([r for r in rows if r["searcher"] == searcher])
        finals = [final_best(run) for run in runs.values()]
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
                "target": target,
                "reference": ref,
                "reach": reach.get(searcher),
                "vs_reference": _ratio(reach.get(searcher), reach.get(ref)),
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
    return "\n".join(text + ["", target_note(table, metric), RESOURCE_NOTE])


def target_note(table: list[dict], metric: str) -> str:
    """What the time-to-target columns mean, with the target's value."""
    target = next((t["target"] for t in table if t.get("target") is not None), None)
    if target is None:
        return "Time to target: no reference searcher's final best to aim at."
    ref = table[0]["reference"]
    return (
        f"Time to target: mean wall time (trials) to a best {metric} of {target:.4f}, {ref}'s "
        f"final mean best; k/n repeats reached it (one that did not counts with its whole "
        f"length: >=, a lower bound); vs {ref}: the ratio of the times (below 1: sooner)."
    )


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
        _reach(t["reach"]),
        _num(t["vs_reference"], 2),
        _num(t["wall_s"], 0),
        _sig(t["cpu_h"]),
        _sig(t["gpu_h"]),
    ]


def _ratio(mine: Reach | None, ref: Reach | None) -> float | None:
    if mine is None or ref is None or mine.seconds is None or not ref.seconds:
        return None
    return mine.seconds / ref.seconds


def _reach(reach: Reach | None) -> str:
    """`60 (15.7) 3/3`; `>=60` when a repeat never reached the target (counted with its whole
    length, the mean is a lower bound)."""
    if reach is None or reach.seconds is None:
        return "-"
    bound = ">=" if reach.reached < reach.repeats else ""
    return (
        f"{bound}{reach.seconds:.0f} ({bound}{reach.trials:.1f}) {reach.reached}/{reach.repeats}"
    )


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
