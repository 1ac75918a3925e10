"""`--objective`: the metrics one search optimises, read and checked before Ray starts.

    objectives = parse_objectives("val_auc:max,val_ece:min")  # (("val_auc", "max"), ...)
    check_objectives(objectives, task, "optuna")   # ValueError: a figure the kind lacks, ...
    objectives = search_objectives(settings.search.objective, space.metric, space.mode)

Each objective is `METRIC:max` or `METRIC:min`, comma-separated. A metric is a figure every
epoch reports: `train_loss`, or `val_<figure>` for each of the task kind's
`Kind.validation_figures()` (image kinds: loss, acc, f1, auc, ece; segmentation: loss, dice,
iou, pixel_acc). Each has one sensible direction (`DIRECTION`: losses and the calibration error
go down, the rest up), and the other one is refused: a search that maximises its loss is never
what was meant. The FIRST objective is the search's metric: ASHA stops on it, and a trial's best
epoch (its checkpoint and its row in trials.parquet) is chosen by it; the others are read at
that epoch (`search.driver.searcher`). Several objectives need the Optuna searcher (the W&B
engine and random search optimise one number). Without `--objective` the search optimises the
space's metric alone, exactly as before.

Mistakes are ValueErrors of one line, `<what is wrong>; <what to do>`, which
`search.driver.warm_start.check_search` turns into `UserError`s before Ray starts (this module
imports nothing, so the plan can read the flag too).
"""

from __future__ import annotations

Objectives = tuple[tuple[str, str], ...]
"""(metric, mode) pairs, the first the search's metric."""
MODES = ("max", "min")
LOWER_IS_BETTER = ("loss", "ece")
"""Figures (after `val_`/`train_`) whose direction is `min`; every other one is `max`."""
EXAMPLE = "--objective val_auc:max,val_ece:min"


def parse_objectives(text: str | None) -> Objectives:
    """The (metric, mode) pairs of `--objective` (empty when not given); a ValueError for a
    malformed or repeated entry."""
    if text is None:
        return ()
    pairs = []
    for part in text.split(","):
        metric, sep, mode = part.strip().partition(":")
        metric, mode = metric.strip(), mode.strip()
        if not sep or not metric or mode not in MODES:
            raise ValueError(
                f"--objective {text}: {part.strip()!r} is not METRIC:max or METRIC:min; "
                f"pass e.g. {EXAMPLE}"
            )
        pairs.append((metric, mode))
    metrics = [m for m, _ in pairs]
    if len(set(metrics)) < len(metrics):
        raise ValueError(f"--objective {text}: a metric appears twice; name each metric once")
    return tuple(pairs)


def search_objectives(text: str | None, metric: str, mode: str) -> Objectives:
    """What the search optimises: `--objective`'s pairs, else the space's metric alone."""
    return parse_objectives(text) or ((metric, mode),)


def direction(metric: str) -> str:
    """The mode a metric is optimised in (`LOWER_IS_BETTER`)."""
    figure = metric.split("_", 1)[-1]
    return "min" if figure in LOWER_IS_BETTER else "max"


def reported_metrics(task) -> tuple[str, ...]:
    """The metrics every epoch of a trial of `task` (a `trainables.tasks.Task`) reports."""
    return ("train_loss", *(f"val_{f}" for f in task.kind_ops.validation_figures()))


def check_objectives(objectives: Objectives, task, searcher: str) -> None:
    """A ValueError (one line) for a metric the task's trials do not report, the wrong
    direction, or several objectives with a searcher that optimises one number."""
    reported = reported_metrics(task)
    for metric, mode in objectives:
        if metric not in reported:
            raise ValueError(
                f"--objective: {metric!r} is not a figure {task.kind} trials report; choose "
                f"from {', '.join(reported)} (e.g. {EXAMPLE})"
            )
        if mode != direction(metric):
            raise ValueError(
                f"--objective: {metric}:{mode} optimises {metric} the wrong way; pass "
                f"{metric}:{direction(metric)}"
            )
    if len(objectives) > 1 and searcher != "optuna":
        raise ValueError(
            f"--objective with {len(objectives)} objectives needs Optuna's multi-objective "
            f"search, and --searcher {searcher} optimises one number; drop --searcher "
            "(optuna is the default) or pass one objective"
        )
