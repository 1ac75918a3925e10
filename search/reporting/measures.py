"""The numbers behind two report figures: ROC curves of the test split and fANOVA parameter
importances of the search.

    curves = roc_curves("multiclass", labels, probs, classes)   # [(name, fpr, tpr, auc)]
    scores = param_importances(configs, values, space["parameters"], knobs, "max")

What a class's positives and scores are comes from the task's kind (`trainables.kinds`);
importances come from optuna's fANOVA over an in-memory study rebuilt from the trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from search.experiment.sweep import infer_distribution
from trainables.kinds import get_kind
from trainables.kinds.base import known_columns
from trainables.scores import is_finite

LOG_DISTRIBUTIONS = ("log_uniform_values", "q_log_uniform_values", "log_uniform")
MIN_TRIALS = 3


def roc_curves(
    kind: str, labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """(name, fpr, tpr, auc) per class (one-vs-rest) or label; binary: the positive class.
    Classes with no positive or no negative test example are left out. A ValueError (or an
    IndexError for class ids beyond `classes`) when the arrays do not fit the task."""
    from sklearn.metrics import auc, roc_curve

    ops, n = get_kind(kind), len(classes)
    labels, probs = np.asarray(labels), np.asarray(probs, float)
    probs = probs.reshape(len(probs), -1)
    widths = {ops.num_outputs(n), n}  # binary: one sigmoid output, or both columns
    if probs.shape[1] not in widths or len(labels) != len(probs):
        raise ValueError(
            f"{kind} with {n} classes needs labels (N, ...) and probs (N, "
            f"{ops.num_outputs(n)}); got {labels.shape} and {probs.shape}"
        )
    positive, known = known_columns(ops.truth(labels, n))
    scores = ops.score_columns(probs)
    out = []
    for j in ops.auroc_columns(n):
        y, rows = positive[known[:, j], j], known[:, j]  # an unknown (-1) label is left out
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, scores[rows, j])
            out.append((str(classes[j]), fpr, tpr, float(auc(fpr, tpr))))
    return out


def param_importances(
    configs: Sequence[dict],
    values: Sequence[float],
    parameters: dict,
    knobs: Sequence[str],
    mode: str,
) -> dict[str, float]:
    """fANOVA importances (``optuna.importance.get_param_importances``) of an in-memory study
    rebuilt from the trials with a finite value; ``parameters`` is the W&B sweep config's
    ``parameters``. A ValueError saying why when fewer than 3 trials fit the space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {k: d for k in knobs if (d := optuna_distribution(parameters.get(k))) is not None}
    if not dists:
        raise ValueError("no searched knob has a distribution in search.json's space")
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for config, value in zip(configs, values, strict=True):
        if not is_finite(value):
            continue
        params = {k: _param(config.get(k), d) for k, d in dists.items()}
        try:
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=dists, value=value)
            )
        except (ValueError, TypeError):
            continue  # a missing value, or one outside the recorded space (the file changed)
    if len(study.trials) < MIN_TRIALS:
        raise ValueError(
            f"{len(study.trials)} completed trial(s) fit the space; need {MIN_TRIALS}"
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.get_param_importances(study, evaluator=evaluator)


def optuna_distribution(spec: dict | None):
    """The optuna distribution of one W&B sweep parameter; None for a constant."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dist = infer_distribution(spec)
    if dist in (None, "constant"):
        return None
    if dist == "categorical":
        return CategoricalDistribution(spec["values"])
    low, high = float(spec["min"]), float(spec["max"])
    if dist == "log_uniform":  # W&B: the bounds are natural logs
        return FloatDistribution(math.exp(low), math.exp(high), log=True)
    if dist == "int_uniform":
        return IntDistribution(int(low), int(high))
    return FloatDistribution(low, high, log=dist in LOG_DISTRIBUTIONS)


def _param(value, dist):
    from optuna.distributions import IntDistribution

    whole = isinstance(value, float) and value.is_integer()
    return int(value) if isinstance(dist, IntDistribution) and whole else value
