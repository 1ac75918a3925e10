"""How busy a search kept its trial slots, and where the idle time went.

    use = slot_use(trials, wall_s=246.0, slots=2)                 # 0.77
    idle = idle_split(history, started_at, wall_s=246.0, slots=2)
    idle.text()   # "13 s starting trials, 68 s with no trial left to start, 4 s collecting"

Slot use is the seconds spent inside trials over the search's wall time x the trials it runs
at once (1.0: never a slot idle). The idle slot-seconds are split by what the search was
doing: `starting` while trials were still to start (Tune's set-up, a trial's process and data
coming up between one trial and the next), `tail` once none was left to start (the last
trials running with slots free: ASHA made the trials uneven), `collecting` after the last
trial ended (tables, checkpoints). A trial's span is from its first epoch's timestamp minus
the time it had run to its last epoch's timestamp (history.parquet; Tune stamps whole
seconds, so each figure is good to about a second per trial).
"""

from __future__ import annotations

from dataclasses import dataclass


def slot_use(trials: list[dict], wall_s: float | None, slots: int) -> float | None:
    """Seconds inside trials / (wall time x slots); None without a wall time."""
    if not wall_s or slots < 1:
        return None
    return inside_s(trials) / (wall_s * slots)


def inside_s(trials: list[dict]) -> float:
    return sum(t.get("wall_time_s") or 0.0 for t in trials)


def slot_use_text(trials: list[dict], wall_s: float, slots: int) -> str:
    return f"trials ran {inside_s(trials):.0f} s in {wall_s:.0f} s x {slots} slot(s)"


@dataclass(frozen=True)
class Idle:
    """Idle slot-seconds of a search, by what it was doing (see the module docstring)."""

    starting: float
    tail: float
    collecting: float

    def text(self) -> str:
        return (
            f"{self.starting:.0f} s starting trials, {self.tail:.0f} s with no trial left to "
            f"start, {self.collecting:.0f} s collecting results"
        )

    def record(self) -> dict:
        return {k: round(v, 1) for k, v in vars(self).items()}


def spans(history: list[dict]) -> list[tuple[float, float]]:
    """(start, end) of each trial, in seconds since the epoch, from its reported epochs."""
    by_trial: dict[str, list[dict]] = {}
    for row in history:
        if row.get("timestamp") is not None:
            by_trial.setdefault(row["trial_id"], []).append(row)
    out = []
    for rows in by_trial.values():
        first = min(rows, key=lambda r: r["timestamp"])
        end = max(r["timestamp"] for r in rows)
        out.append((first["timestamp"] - (first.get("time_total_s") or 0.0), end))
    return out


def idle_split(history: list[dict], started_at: float, wall_s: float, slots: int) -> Idle | None:
    """The idle slot-seconds of the search phase [started_at, started_at + wall_s], split;
    None without trials that reported."""
    found = spans(history)
    if not found or slots < 1:
        return None
    stop = started_at + wall_s
    found = [(max(s, started_at), min(e, stop)) for s, e in found]
    last_start, last_end = max(s for s, _ in found), max(e for _, e in found)
    cuts = sorted({started_at, stop, last_start, last_end, *(t for span in found for t in span)})
    idle = {"starting": 0.0, "tail": 0.0, "collecting": 0.0}
    for a, b in zip(cuts, cuts[1:], strict=False):
        if not started_at <= a < b <= stop:
            continue
        mid = (a + b) / 2
        running = sum(s <= mid < e for s, e in found)
        phase = "starting" if mid < last_start else "tail" if mid < last_end else "collecting"
        idle[phase] += max(0, slots - running) * (b - a)
    return Idle(**idle)
