"""The models the test split is read for: the search's best trials, or the one `--select`
picks, plus the `--ensemble K` of the K best; test_metrics.json gains `selection` and
`ensemble`.

    out = evaluate_models(trials, experiment_path, task, reader, settings, "sensitivity>=0.95", 3)

Without `select` and `ensemble` this is `after.evaluate_on_test`, unchanged. Otherwise the
validation split is predicted first (every trial with a checkpoint for `--select`, the K members
for `--ensemble`; Ray tasks asking for `settings.resources`, or in this process without), the
selection is made on those figures (`search.experiment.selection`), and then
`evaluate_on_test` reads the test split once for the selected trial first, the next best up
to `--test-top`, and the ensemble's members; the ensemble is built from their saved test
probabilities (`search.experiment.ensemble`).
"""

from __future__ import annotations

import json
import logging

import ray

from search.experiment import after
from search.experiment.after_settings import EvaluationSettings, Reader
from search.experiment.ensemble import evaluate_ensemble
from search.experiment.layout import TEST_METRICS_FILE
from search.experiment.selection import (
    Selection,
    parse_constraint,
    select_trial,
    validation_figures,
)
from search.experiment.storage import join_path, write_text
from trainables.evaluation import to_jsonable

log = logging.getLogger("medsweep")


def evaluate_models(
    trials: list[dict],
    experiment_path: str,
    task,
    reader: Reader,
    settings: EvaluationSettings,
    select: str | None = None,
    ensemble: int = 0,
) -> dict | None:
    """Selection, test figures and ensemble (module docstring); the test_metrics.json dict."""
    if not select and not ensemble:
        return after.evaluate_on_test(trials, experiment_path, task, reader, settings)
    ranked = after.with_checkpoints(trials, settings.metric, settings.mode)
    if not ranked:
        return None
    members = [t["trial_id"] for t in ranked[:ensemble]] if ensemble else []
    wanted = ranked if select else [t for t in ranked if t["trial_id"] in members]
    val_outs = predict_validation(wanted, reader, settings.resources)
    selection = choose(ranked, val_outs, task, settings, select) if select else None
    order = order_for_test(ranked, selection, settings.top_k, members)
    out = after.evaluate_on_test(trials, experiment_path, task, reader, settings, order)
    if selection is not None:
        out["selection"] = selection.as_record() | {"line": selection.line()}
    if len(members) >= 2:
        ids = after.row_ids(reader.path)
        out["ensemble"] = evaluate_ensemble(
            experiment_path, task, members, val_outs, out, settings, ids
        )
    elif ensemble:
        out["ensemble"] = {"skipped": f"{len(members)} trial(s) with a checkpoint; K >= 2"}
        log.warning("--ensemble %d: only %d trial(s) have a checkpoint", ensemble, len(members))
    text = json.dumps(to_jsonable(out), indent=2, allow_nan=False)
    write_text(join_path(experiment_path, TEST_METRICS_FILE), text)
    return out


def predict_validation(chosen: list[dict], reader: Reader, resources) -> dict[str, tuple]:
    """{trial_id: (validation labels, logits)} of each trial's best checkpoint."""
    if resources is None:
        outs = [after.predict_split(t["checkpoint_path"], reader, "val") for t in chosen]
    else:
        remote, ref = predict_split_task.options(**resources), ray.put(reader)
        outs = ray.get([remote.remote(t["checkpoint_path"], ref, "val") for t in chosen])
    return {t["trial_id"]: out for t, out in zip(chosen, outs, strict=True)}


@ray.remote
def predict_split_task(checkpoint_path: str, reader: Reader, split: str) -> tuple:
    """`after.predict_split` as a Ray task (where the trials run)."""
    return after.predict_split(checkpoint_path, reader, split)


def choose(
    ranked: list[dict], val_outs: dict, task, settings: EvaluationSettings, select: str
) -> Selection:
    """The `--select` decision on each trial's validation figures (logged in one line)."""
    constraint = parse_constraint(select, task.kind)
    rows = [
        {
            "trial_id": t["trial_id"],
            settings.metric: t.get(settings.metric),
            "figures": validation_figures(
                task.kind,
                len(task.classes),
                val_outs[t["trial_id"]],
                settings.operating_point,
                settings.temperature_scaling,
            ),
        }
        for t in ranked
    ]
    selection = select_trial(rows, constraint, settings.metric, settings.mode)
    log.info(selection.line())
    return selection


def order_for_test(
    ranked: list[dict], selection: Selection | None, top_k: int, members: list[str]
) -> list[str]:
    """The trials whose test figures are computed: the selected one (else the best) first,
    the next best up to `top_k`, then the ensemble's members not among them."""
    ids = [t["trial_id"] for t in ranked]
    first = selection.selected if selection and selection.selected else ids[0]
    order = [first] + [i for i in ids if i != first][: max(top_k, 1) - 1]
    return order + [m for m in members if m not in order]
