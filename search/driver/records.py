"""What search.json says of one search (`search.experiment.manifest.Manifest`), built from the
settings, the plan and the inputs: written first as running, again at each phase boundary, then
interrupted or finished.

    steps_manifest = manifest(settings, plan, inputs, started, wall, RUNNING)   # phase search
    manifest(settings, plan, inputs, started, wall, RUNNING, TEST, [SEARCH, ATTRIBUTION])
    steps_manifest.write(plan.experiment_path)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from search.data.sources import Located
from search.driver.plan import Plan
from search.driver.settings import Settings
from search.driver.slots import Idle
from search.driver.warm_start import search_record
from search.experiment.manifest import SEARCH, Manifest
from trainables.config import planned_epochs
from trainables.data import SEARCH_SPLITS
from trainables.tasks import Task

if TYPE_CHECKING:
    from search.driver.steps import Inputs


def manifest(
    settings: Settings,
    plan: Plan,
    inputs: Inputs,
    started: float,
    wall: float | None,
    status: str,
    phase: str | None = SEARCH,
    done: Sequence[str] = (),
    slot_use: float | None = None,
    idle: Idle | None = None,
) -> Manifest:
    """`search.json`: what the report, compare.py and --resume need to know of this search.
    `started`: when it first started; `wall`: seconds searched so far (over resumed parts);
    `phase`: the phase it is in, `done`: the phases it finished (`manifest.PHASES`);
    `slot_use`: once the trials finished, how busy they kept the slots, and `idle` where the
    idle slot time went (`search.driver.slots`)."""
    task = inputs.task
    return Manifest(
        name=plan.name,
        task=task.name,
        kind=task.kind,
        classes=list(task.classes),
        metric=plan.metric,
        mode=plan.mode,
        searcher=plan.searcher,
        seed=plan.seed,
        trials=plan.trials,
        epochs=planned_epochs(inputs.values),
        launcher=plan.launcher,
        knobs=list(inputs.space.searched),
        space=inputs.space.sweep_config,
        started_at=started,
        finished_at=time.time() if status == "finished" else None,
        wall_time_s=wall,
        split_counts=split_counts(task, inputs.source.labels),
        argv=list(settings.argv),
        resources_per_trial=plan.resources_per_trial,
        status=status,
        phase=phase,
        phases_done=list(done),
        foreground=task.foreground,
        extra={
            "data": data_record(inputs.located),
            **search_record(plan, inputs.warm),
            **searcher_record(plan),
            **({} if slot_use is None else {"slot_use": round(slot_use, 4)}),
            **({} if idle is None else {"idle_slot_s": idle.record()}),
        },
    )


def searcher_record(plan: Plan) -> dict:
    """How the searcher and the scheduler were set: `early_stopping`, and `tpe` (the TPE
    sampler's settings as `--tpe` spells them) for the Optuna searcher."""
    record = {"early_stopping": plan.early_stopping}
    if plan.searcher == "optuna":
        from search.driver.tpe import parse_tpe

        record["tpe"] = parse_tpe(plan.tpe, plan.trials).text()
    return record


def data_record(located: Located) -> dict:
    """What search.json says of the data: its source, split rule, policies and the images
    `--skip-bad` left out (each named)."""
    info = located.info
    keep = (
        "split",
        "policies",
        "dropped_by_where",
        "channels",
        "decoded",
        "reused",
        "decode_nodes",
    )
    return {
        "source": located.task.source,
        "file": located.path,
        **{k: info[k] for k in keep if k in info},
        "skipped": list(info.get("skipped", [])),
    }


def split_counts(task: Task, data: dict) -> dict[str, dict[str, int]]:
    """{split: {class: images}} (multilabel: positives per label) of the splits searched."""
    n = len(task.classes)
    return {
        split: {
            c: int(k)
            for c, k in zip(
                task.classes, task.kind_ops.class_counts(data[f"{split}_labels"], n), strict=True
            )
        }
        for split in SEARCH_SPLITS
    }
