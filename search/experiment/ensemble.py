"""Top-k ensembles (`--ensemble K`): the K best trials' probabilities averaged, its own
operating point on validation, test figures with CIs, the paired difference to the best single
trial, and `ensemble.json`, which `search/predict.py` and `search/explain.py` take like a
checkpoint.

    result = evaluate_ensemble(experiment, task, members, val_outs, tested, settings, ids)
    record = read_ensemble("runs/x/ensemble.json")      # members' checkpoints made absolute
    probs = average([member_probs(...), ...], weights)

Each member's probabilities are the kind's activation of its logits divided by the temperature
fitted on validation (`--temperature-scaling`; the one `evaluate_on_test` fitted, read from
its test figures), else 1. The ensemble is their weighted mean (equal weights). Its threshold
is chosen by `--operating-point` on the validation mean, exactly as a single trial's. Test
figures: `trainables.evaluation.evaluate_predictions` (bootstrap CIs over patients where the
npz names them). The difference to the best single trial (the model `evaluate_on_test` put
first) is the test AUROC of the ensemble minus the trial's, with a paired bootstrap: the same
resampled patients (images) for both in every resample.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from search.experiment.after_settings import EvaluationSettings
from search.experiment.layout import CHECKPOINT_DIR, TEST_PREDICTIONS_FILE
from search.experiment.storage import join_path, local_copy, write_text
from trainables.checkpoint import FILENAME
from trainables.evaluation import LEVEL, evaluate_predictions, to_jsonable

ENSEMBLE_FILE = "ensemble.json"
FORMAT = "medsweep-ensemble/1"
N_BOOT = 1000


def member_probs(kind: str, logits: np.ndarray, temperature: float | None) -> np.ndarray:
    """A member's probabilities: the kind's activation of `logits / temperature`."""
    import torch

    from trainables.kinds import get_kind

    z = np.asarray(logits, np.float32) / (temperature or 1.0)
    return get_kind(kind).probabilities(torch.as_tensor(z))


def average(probs: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """The weighted mean of the members' probabilities (equal weights by default)."""
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, np.float64)
    stacked = np.stack([np.asarray(p, np.float64) for p in probs])
    return (np.tensordot(w / w.sum(), stacked, axes=1)).astype(np.float32)


def evaluate_ensemble(
    experiment_path: str,
    task,
    members: list[str],
    val_outs: dict[str, tuple],
    tested: dict,
    settings: EvaluationSettings,
    ids: dict,
) -> dict:
    """The ensemble of `members` (trial ids, best first): figures, difference, record.

    `val_outs`: each member's validation (labels, logits); `tested`: what `evaluate_on_test`
    returned (each member's test figures), whose `<trial>/test_predictions.npz` hold the test
    probabilities; the ensemble is compared with its first member, the best single trial by
    the search's metric (under `--select` the selected trial may be another); `ids`:
    `after.row_ids` (patients). Writes `ensemble.json`; returns the test_metrics.json entry."""
    kind, names = task.kind, list(task.classes)
    temps = {m: _temperature(tested, m) for m in members}
    weights = [1.0 / len(members)] * len(members)
    val_p = average([member_probs(kind, val_outs[m][1], temps[m]) for m in members], weights)
    y_val = val_outs[members[0]][0]
    tests = {m: _test_predictions(experiment_path, m) for m in members}
    y_test, test_p = tests[members[0]]["labels"], average([tests[m]["probs"] for m in members])
    threshold = choose_ensemble_threshold(kind, names, y_val, val_p, settings.operating_point)
    groups = ids.get("val_patients"), ids.get("test_patients")
    result = scored(kind, names, (y_test, test_p), threshold, settings.seed, groups[1])
    on_val = scored(kind, names, (y_val, val_p), threshold, settings.seed, groups[0])
    result["validation"] = {k: on_val[k] for k in ("auroc", "operating", "accuracy", "ece")}
    best = members[0]
    result["difference"] = paired_difference(
        kind, names, y_test, test_p, tests[best]["probs"], settings.seed, groups[1]
    ) | {"against": best}
    record = ensemble_record(task, members, weights, temps, result["threshold"], settings)
    write_text(join_path(experiment_path, ENSEMBLE_FILE), json.dumps(record, indent=2))
    result["members"], result["file"] = members, ENSEMBLE_FILE
    return to_jsonable(result)


def scored(kind: str, names: list[str], split: tuple, threshold, seed: int, groups) -> dict:
    """`evaluate_predictions` of (stored labels, probabilities) at `threshold`, plus `ece`
    (`trainables.calibration.reliability` over the kind's confidence pairs)."""
    from trainables.calibration import reliability
    from trainables.kinds import get_kind

    ops = get_kind(kind)
    y, s = ops.test_inputs(np.asarray(split[0]), split[1])
    result = evaluate_predictions(kind, y, s, names, seed=seed, threshold=threshold, groups=groups)
    truth, scores = ops.test_columns(y, np.asarray(s, np.float64), len(names))
    return result | {"ece": reliability(*ops.calibration_pairs(truth, scores))["ece"]}


def choose_ensemble_threshold(kind: str, names: list[str], labels, probs, point):
    """The `--operating-point` threshold on validation (labels, probabilities), as
    `predicted_columns` takes it (None: the argmax decides)."""
    from trainables.calibration import choose_threshold, parse_operating_point
    from trainables.kinds import get_kind

    ops, point = get_kind(kind), parse_operating_point(point)
    y, s = ops.test_inputs(np.asarray(labels), probs)
    truth, scores = ops.test_columns(y, np.asarray(s, np.float64), len(names))
    return ops.choose_threshold(truth, scores, lambda t, p: choose_threshold(t, p, point))


def _temperature(tested: dict, trial_id: str) -> float | None:
    calibration = (tested["trials"].get(trial_id) or {}).get("calibration") or {}
    return calibration.get("temperature")


def _test_predictions(experiment_path: str, trial_id: str) -> dict:
    path = local_copy(join_path(experiment_path, trial_id, TEST_PREDICTIONS_FILE))
    with np.load(path, allow_pickle=False) as npz:
        return {k: np.asarray(npz[k]) for k in npz.files}


def ensemble_record(task, members, weights, temps, threshold, settings) -> dict:
    """What `ensemble.json` holds: members' checkpoints relative to the experiment folder."""
    return to_jsonable(
        {
            "format": FORMAT,
            "task": task.name,
            "kind": task.kind,
            "classes": list(task.classes),
            "members": [
                {
                    "trial_id": m,
                    "checkpoint": f"{m}/{CHECKPOINT_DIR}/{FILENAME}",
                    "weight": w,
                    "temperature": temps[m],
                }
                for m, w in zip(members, weights, strict=True)
            ],
            "threshold": threshold,
            "operating_point": settings.operating_point,
            "temperature_scaling": settings.temperature_scaling,
        }
    )


def is_ensemble_file(path: str | os.PathLike) -> bool:
    """Whether `path` names an ensemble.json (by its name or its `format`)."""
    path = os.fspath(path)
    if not path.endswith(".json") or not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_ensemble(path: str | os.PathLike) -> dict:
    """`ensemble.json` with each member's `checkpoint` made absolute (relative to the file's
    folder); a ValueError (`<what>; <what to do>`) for a file that is not one, or a member
    whose checkpoint is missing."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        what = f"{path} could not be read as JSON ({err})"
        raise ValueError(f"{what}; pass an ensemble.json") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a medsweep ensemble ({FORMAT}); pass an ensemble.json")
    root = os.path.dirname(os.path.abspath(path))
    for member in record["members"]:
        member["checkpoint"] = os.path.join(root, member["checkpoint"])
        if not os.path.isfile(member["checkpoint"]):
            raise ValueError(
                f"{path}: member {member['trial_id']}'s checkpoint {member['checkpoint']} is "
                "missing; keep the experiment folder whole (retention must keep the members)"
            )
    return record


def paired_difference(
    kind: str, names: list[str], labels, probs_a, probs_b, seed: int = 0, groups=None
) -> dict:
    """Test AUROC of `probs_a` minus `probs_b` on the same `labels`, with a paired percentile
    bootstrap: each resample draws patients (`groups`) or images once, for both."""
    from trainables.kinds import get_kind
    from trainables.kinds.base import known_columns

    ops = get_kind(kind)
    y, a = ops.test_inputs(np.asarray(labels), probs_a)
    b = ops.test_inputs(np.asarray(labels), probs_b)[1]
    truth, s_a = ops.test_columns(y, np.asarray(a, np.float64), len(names))
    s_b = ops.test_columns(y, np.asarray(b, np.float64), len(names))[1]
    y_ind, known = known_columns(truth)
    cols = ops.auroc_columns(len(names))
    unit, index = _units(groups, len(y_ind))
    rng, n_units = np.random.default_rng(seed), int(index.max()) + 1

    ranked_a = [_Ranked(y_ind[:, c], s_a[:, c], known[:, c]) for c in cols]
    ranked_b = [_Ranked(y_ind[:, c], s_b[:, c], known[:, c]) for c in cols]

    def diff(w: np.ndarray) -> float:
        return _mean_auroc(ranked_a, w) - _mean_auroc(ranked_b, w)

    point = diff(np.ones(len(y_ind)))
    draws = (rng.integers(0, n_units, n_units) for _ in range(N_BOOT))
    reps = [diff(np.bincount(d, minlength=n_units)[index]) for d in draws]
    reps = np.asarray([r for r in reps if math.isfinite(r)])
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(reps, [tail, 100 - tail]) if len(reps) else (math.nan, math.nan)
    return {
        "figure": "auroc",
        "value": point,
        "ci_low": float(low),
        "ci_high": float(high),
        "n_boot": N_BOOT,
        "n_used": len(reps),
        "unit": unit,
        "seed": seed,
    }


def _units(groups, n: int) -> tuple[str, np.ndarray]:
    """("patient", row -> patient) where every row names one, else ("image", row -> row)."""
    if groups is None or (np.asarray(groups).astype(str) == "").any():
        return "image", np.arange(n)
    return "patient", np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]


class _Ranked:
    """One column's scores sorted once, so each bootstrap resample's weighted AUROC (the
    Mann-Whitney statistic with ties counted half, which is what `roc_auc_score` gives with
    `sample_weight`) costs two `bincount`s instead of a sort."""

    def __init__(self, positive: np.ndarray, scores: np.ndarray, known: np.ndarray) -> None:
        rows = np.flatnonzero(known)
        order = rows[np.argsort(scores[rows], kind="stable")]
        _, self.group = np.unique(scores[order], return_inverse=True)
        self.order, self.positive = order, positive[order].astype(np.float64)

    def auroc(self, w: np.ndarray) -> float:
        """The AUROC under sample weights `w` (NaN without weight on both classes)."""
        w = w[self.order]
        pos = np.bincount(self.group, w * self.positive)
        neg = np.bincount(self.group, w * (1.0 - self.positive))
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos <= 0 or total_neg <= 0:
            return math.nan
        below = np.cumsum(neg) - neg
        return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))


def _mean_auroc(columns: list[_Ranked], w: np.ndarray) -> float:
    """The mean AUROC over the columns under sample weights `w` (columns without both
    classes among the drawn rows are left out; NaN when none has)."""
    values = [v for v in (c.auroc(w) for c in columns) if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan
