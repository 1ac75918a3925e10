"""Tests for trainables.evaluation: figures computed by hand on tiny examples, the
vectorised bootstrap against scikit-learn, the intervals, the three kinds, and JSON."""

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from trainables.evaluation import (
    HEADLINE,
    _prepare,
    _replicates,
    _weighted_auroc,
    evaluate_predictions,
    to_jsonable,
    write_json,
)
from trainables.kinds import get_kind


def synthetic_multiclass(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def synthetic_multilabel(n: int, rates: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=(n, len(rates))) < rates).astype(np.int64)
    return y, np.clip(0.35 * y + rng.uniform(0, 0.7, y.shape), 0, 1)


def test_binary_by_hand():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05, 0.35])
    # predicted positive: the first three and the 0.7 negative -> TP 3, FN 1, FP 1, TN 5
    r = evaluate_predictions("binary", y, p, ["normal", "pneumonia"], n_boot=200)
    assert r["accuracy"]["value"] == pytest.approx(0.8)
    assert r["sensitivity"] == pytest.approx(3 / 4)
    assert r["specificity"] == pytest.approx(5 / 6)
    assert r["balanced_accuracy"]["value"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert r["auroc"]["value"] == pytest.approx(20 / 24)  # 20 of 24 pairs ranked right
    assert r["per_class"]["pneumonia"] == pytest.approx(
        {
            "precision": 3 / 4,
            "recall": 3 / 4,
            "specificity": 5 / 6,
            "f1": 3 / 4,
            "support": 4,
            "auroc": 20 / 24,
        }
    )
    assert r["macro_f1"]["value"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert r["confusion_matrix"] == {"labels": ["normal", "pneumonia"], "matrix": [[5, 1], [1, 3]]}


def test_multiclass_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0])
    probs = np.full((9, 3), 0.2)
    probs[np.arange(9), pred] = 0.6
    r = evaluate_predictions("multiclass", y, probs, ["a", "b", "c"], n_boot=200)
    assert r["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert r["accuracy"]["value"] == pytest.approx(6 / 9)
    recall = [2 / 3, 1 / 2, 3 / 4]
    specificity = [5 / 6, 6 / 7, 4 / 5]
    precision = [2 / 3, 1 / 2, 3 / 4]
    for c, name in enumerate("abc"):
        assert r["per_class"][name]["recall"] == pytest.approx(recall[c])
        assert r["per_class"][name]["specificity"] == pytest.approx(specificity[c])
        assert r["per_class"][name]["precision"] == pytest.approx(precision[c])
    assert r["balanced_accuracy"]["value"] == pytest.approx(np.mean(recall))
    assert r["macro_recall"] == pytest.approx(np.mean(recall))
    assert r["macro_specificity"] == pytest.approx(np.mean(specificity))
    assert r["auroc"]["value"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))


def test_multiclass_auroc_is_sklearn_one_vs_rest_macro():
    y, probs = synthetic_multiclass(300, 5, seed=0)
    r = evaluate_predictions("multiclass", y[:, None], probs, list("abcde"), n_boot=10)
    assert r["auroc"]["value"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert r["macro_f1"]["value"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))


def test_binary_accepts_positive_probability_or_two_columns():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 100), 0, 1)
    one = evaluate_predictions("binary", y, p, ["neg", "pos"], n_boot=50)
    two = evaluate_predictions("binary", y, np.stack([1 - p, p], 1), ["neg", "pos"], n_boot=50)
    assert one == two
    assert one["auroc"]["value"] == pytest.approx(roc_auc_score(y, p))


def test_multilabel_shapes_and_a_label_without_positives():
    y, p = synthetic_multilabel(400, [0.3, 0.1, 0.05, 0.0], seed=0)
    names = ["effusion", "nodule", "hernia", "none_here"]
    r = evaluate_predictions("multilabel", y, p, names, n_boot=200)
    assert set(r["confusion_matrix"]) == set(names)
    assert all(np.array(m).shape == (2, 2) for m in r["confusion_matrix"].values())
    assert np.array(r["confusion_matrix"]["nodule"]).sum() == 400
    assert r["per_class"]["none_here"]["auroc"] is None  # undefined: no positive
    defined = [roc_auc_score(y[:, j], p[:, j]) for j in range(3)]
    assert r["auroc"]["value"] == pytest.approx(np.mean(defined))
    per_label_acc = np.mean([accuracy_score(y[:, j], p[:, j] >= 0.5) for j in range(4)])
    assert r["accuracy"]["value"] == pytest.approx(per_label_acc)
    assert r["exact_match"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert r["per_class"]["effusion"]["support"] == int(y[:, 0].sum())


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel"])
def test_bootstrap_replicates_equal_sklearn_on_the_original_sample(kind):
    # With every sample drawn once, the vectorised figures must be the point estimates.
    if kind == "multilabel":
        y, p = synthetic_multilabel(300, [0.3, 0.1, 0.2], seed=1)
        names = ["a", "b", "c"]
    elif kind == "binary":
        y, probs = synthetic_multiclass(300, 2, seed=1)
        p, names = probs[:, 1], ["neg", "pos"]
    else:
        y, p = synthetic_multiclass(300, 4, seed=1)
        names = list("abcd")
    r = evaluate_predictions(kind, y, p, names, n_boot=1)
    ops = get_kind(kind)
    y_ind, pred_ind, s_ind = _prepare(ops, y, p, names)
    used = np.zeros(y_ind.shape[1], bool)
    used[ops.auroc_columns(len(names))] = True
    ones = np.ones((len(y_ind), 1), np.float32)
    reps = _replicates(ops.exclusive, ones, y_ind, pred_ind, s_ind, used)
    for name in HEADLINE:
        assert reps[name][0] == pytest.approx(r[name]["value"], abs=1e-6), name


def test_weighted_auroc_matches_sklearn_sample_weight_with_ties():
    rng = np.random.default_rng(0)
    y = rng.uniform(size=300) < 0.3
    s = np.round(rng.uniform(size=300) + 0.3 * y, 1)  # many tied scores
    w = rng.integers(0, 3, size=(300, 6)).astype(np.float32)
    ours = _weighted_auroc(y, s, w)
    for j in range(6):
        assert ours[j] == pytest.approx(roc_auc_score(y, s, sample_weight=w[:, j]), abs=1e-6)
    assert np.isnan(_weighted_auroc(y, s, np.where(y[:, None], 0, w)))[0]  # no positive weight


def test_interval_contains_the_estimate_and_narrows_with_more_samples():
    widths = []
    for n in (150, 2400):
        y, probs = synthetic_multiclass(n, 4, seed=2)
        r = evaluate_predictions("multiclass", y, probs, list("abcd"), n_boot=500, seed=0)
        for name in HEADLINE:
            assert r[name]["ci_low"] <= r[name]["value"] <= r[name]["ci_high"], name
            assert 0 <= r[name]["ci_low"] < r[name]["ci_high"] <= 1, name
        widths.append({name: r[name]["ci_high"] - r[name]["ci_low"] for name in HEADLINE})
    for name in HEADLINE:
        assert widths[1][name] < widths[0][name] / 2, name  # ~1/sqrt(16) expected


def test_bootstrap_is_seeded_and_skips_resamples_without_auroc():
    y = np.array([0] * 29 + [1])
    p = np.linspace(0, 1, 30)
    a = evaluate_predictions("binary", y, p, ["neg", "pos"], n_boot=300, seed=5)
    assert a == evaluate_predictions("binary", y, p, ["neg", "pos"], n_boot=300, seed=5)
    assert a != evaluate_predictions("binary", y, p, ["neg", "pos"], n_boot=300, seed=6)
    boot = a["bootstrap"]
    # P(the only positive is not drawn) = (29/30)**30 ~ 0.36
    assert 60 < boot["n_skipped"] < 160
    assert boot["n_used"] + boot["n_skipped"] == 300


def test_result_is_json_and_write_json_is_atomic(tmp_path):
    y, p = synthetic_multilabel(100, [0.2, 0.0], seed=0)
    r = evaluate_predictions("multilabel", y, p, ["x", "y"], n_boot=20)
    json.dumps(r, allow_nan=False)
    path = tmp_path / "test_metrics.json"
    path.write_text("stale")
    write_json(path, {"result": r, "array": np.arange(3), "nan": np.float32("nan")})
    saved = json.loads(path.read_text())
    assert saved["result"] == r and saved["array"] == [0, 1, 2] and saved["nan"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["test_metrics.json"]
    assert to_jsonable({1: (np.int64(2), float("inf"))}) == {"1": [2, None]}


def test_bootstrap_in_chunks_equals_one_pass(monkeypatch):
    # MAX_CELLS bounds the resample weights held at once; the chunks must not change a figure.
    import trainables.evaluation as E

    y, probs = synthetic_multiclass(600, 9, seed=0)
    names = [str(c) for c in range(9)]
    whole = evaluate_predictions("multiclass", y, probs, names, n_boot=300)
    monkeypatch.setattr(E, "MAX_CELLS", 600 * 7)  # chunks of 7 resamples, the last one short
    assert evaluate_predictions("multiclass", y, probs, names, n_boot=300) == whole
    assert whole["bootstrap"]["n_used"] == 300


def test_errors_name_the_problem():
    y, probs = synthetic_multiclass(20, 3, seed=0)
    with pytest.raises(ValueError, match="choose one of"):
        evaluate_predictions("multi-class", y, probs, list("abc"))
    with pytest.raises(ValueError, match="do not fit"):
        evaluate_predictions("multiclass", y, probs, list("abcd"))
    with pytest.raises(ValueError, match="outside"):
        evaluate_predictions("multiclass", y + 3, probs, list("abc"))
    with pytest.raises(ValueError, match="diverge"):
        evaluate_predictions("multiclass", y, probs * np.nan, list("abc"))
    with pytest.raises(ValueError, match="only 0 and 1"):
        evaluate_predictions("multilabel", 2 * np.ones((20, 3)), probs, list("abc"))


def test_a_threshold_moves_the_predictions_and_is_reported():
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9])
    half = evaluate_predictions("binary", y, p, ["neg", "pos"], n_boot=50)
    low = evaluate_predictions("binary", y, p, ["neg", "pos"], n_boot=50, threshold=0.35)
    assert half["threshold"] == 0.5 and low["threshold"] == 0.35
    assert half["accuracy"]["value"] == 0.5 and low["accuracy"]["value"] == 0.75
    assert (low["sensitivity"], low["specificity"]) == (1.0, 0.5)
    assert low["operating"]["sensitivity"]["value"] == 1.0
    assert low["operating"]["specificity"]["value"] == 0.5
    assert low["auroc"] == half["auroc"]  # the ranking does not depend on the threshold
    yl = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    pl = np.array([[0.9, 0.2], [0.3, 0.3], [0.6, 0.4], [0.1, 0.1]])
    ml = evaluate_predictions(
        "multilabel", yl, pl, ["a", "b"], n_boot=50, threshold=np.array([0.5, 0.25])
    )
    assert ml["threshold"] == {"a": 0.5, "b": 0.25} and ml["exact_match"] == 1.0
    assert ml["auroc_missing"] == [] and ml["bootstrap"]["unit"] == "image"
