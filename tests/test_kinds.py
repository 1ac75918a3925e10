"""Every task kind in `trainables.kinds.KINDS` answers its interface consistently: layouts,
loss, probabilities, metrics, counts, what to explain and how one image reads out.

Labels are made from each kind's own layout (`label_width`, `label_max`), so a new kind is
covered by adding it to `KINDS` and its class count to `N_CLASSES` below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.evaluation import evaluate_predictions
from trainables.kinds import KINDS, get_kind, kind_for_classes
from trainables.kinds.base import POS_WEIGHT_CAP

N_CLASSES = {"multiclass": 5, "binary": 2, "multilabel": 4}
CLASSIFIERS = tuple(N_CLASSES)
"""The image-level kinds; a per-pixel kind (segmentation: masks as labels) has its own tests."""
N = 40


def test_every_classification_kind_has_a_class_count_here():
    assert set(N_CLASSES) <= set(KINDS)


def _case(name: str, seed: int = 0):
    """(kind, n_classes, class names, stored labels) with every class present."""
    kind, n = KINDS[name], N_CLASSES[name]
    rng = np.random.default_rng(seed)
    width, high = kind.label_width(n), kind.label_max(n)
    labels = rng.integers(0, high + 1, size=(N, width))
    if width == 1:
        labels[:n, 0] = np.arange(n)  # every class at least once
    else:
        labels[:2] = [[1] * width, [0] * width]  # every label positive and negative once
    return kind, n, [f"class_{c}" for c in range(n)], labels


def _expected_counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Images per class counted by hand: class ids in one column, or 0/1 per label."""
    if labels.shape[1] == 1:
        return np.bincount(labels[:, 0], minlength=n)
    return labels.sum(axis=0)


def _perfect_logits(kind, labels: np.ndarray, n: int) -> torch.Tensor:
    """Logits of +10 for every true class (label) and -10 elsewhere; a one-output kind
    reads the last indicator column, the positive class."""
    ind = kind.indicators(labels, n)
    logits = np.where(ind, 10.0, -10.0)[:, -kind.num_outputs(n) :]
    return torch.tensor(logits, dtype=torch.float32)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_layout_indicators_and_counts(name):
    kind, n, _, labels = _case(name)
    assert kind.name == name and get_kind(name) is kind
    assert 1 <= kind.num_outputs(n) <= n
    ind = kind.indicators(labels, n)
    assert ind.shape == (N, n) and ind.dtype == bool
    if kind.exclusive:
        assert (ind.sum(axis=1) == 1).all()
    counts = kind.class_counts(labels, n)
    assert counts.dtype == np.int64
    assert counts.tolist() == _expected_counts(labels, n).tolist()


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_loss_targets_and_weights_fit_the_outputs(name):
    kind, n, _, labels = _case(name)
    outputs = kind.num_outputs(n)
    targets = kind.loss_targets(torch.as_tensor(labels))
    if targets.dtype == torch.long:  # class ids for a softmax over the outputs
        assert targets.shape == (N,) and int(targets.max()) < outputs
    else:
        assert targets.shape == (N, outputs) and set(targets.unique().tolist()) <= {0.0, 1.0}
    weights = kind.class_weights(labels, n, power=1.0)
    assert weights.shape[-1] == outputs  # (K,) class weights, or (2, L) scale and pos_weight
    assert torch.isfinite(weights).all() and (weights > 0).all()
    assert torch.allclose(kind.class_weights(labels, n, power=0.0), torch.ones_like(weights))
    assert torch.isfinite(kind.make_loss(weights)(_perfect_logits(kind, labels, n), targets))
    loss_fn = kind.make_loss(weights)
    right = _perfect_logits(kind, labels, n)
    good, bad = loss_fn(right, targets), loss_fn(-right, targets)
    assert good.ndim == 0 and math.isfinite(float(good))
    assert float(good) < 0.01 < float(bad)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_probabilities_are_probabilities(name):
    kind, n, _, _ = _case(name)
    logits = 5 * torch.randn(N, kind.num_outputs(n), generator=torch.Generator().manual_seed(0))
    probs = kind.probabilities(logits.requires_grad_(True))
    assert isinstance(probs, np.ndarray) and probs.dtype == np.float32
    assert probs.shape == (N, kind.num_outputs(n))
    assert (probs >= 0).all() and (probs <= 1).all()
    assert kind.predictions(probs).shape[0] == N


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_perfect_predictions_score_one(name):
    kind, n, _, labels = _case(name)
    probs = kind.probabilities(_perfect_logits(kind, labels, n))
    m = kind.metrics(labels, probs)
    assert set(m) == {"acc", "f1", "auc"}
    assert m["acc"] == 1.0 and m["auc"] == 1.0 and m["f1"] == pytest.approx(1.0)
    flipped = kind.metrics(labels, kind.probabilities(-_perfect_logits(kind, labels, n)))
    assert flipped["acc"] < 1.0 and flipped["auc"] < 0.5


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_missing_class_gives_nan_auc_not_an_error(name):
    kind, n, _, labels = _case(name)
    probs = kind.probabilities(torch.randn(N, kind.num_outputs(n)))
    one_value = np.zeros_like(labels)  # one class only / no positive label at all
    assert math.isnan(kind.metrics(one_value, probs)["auc"])  # returns, does not raise
    missing = labels.copy()
    if missing.shape[1] == 1:
        missing[missing == 1] = 0  # class 1 never occurs
    else:
        missing[:, 1] = 0  # label 1 never positive
    auc = kind.metrics(missing, probs)["auc"]
    # The mean over the classes (labels) present, as on the test split (issue 13); with one
    # output (binary) a missing class leaves one class, where AUROC is undefined.
    assert math.isnan(auc) if kind.num_outputs(n) == 1 else 0.0 <= auc <= 1.0


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_explain_targets_point_at_real_rows_and_outputs(name):
    kind, n, _, labels = _case(name)
    probs = kind.probabilities(torch.randn(N, kind.num_outputs(n)))
    rows, targets = kind.explain_targets(labels, probs)
    assert len(rows) == len(targets) > 0
    assert all(0 <= int(r) < N for r in rows)
    assert all(isinstance(t, int) and 0 <= t < kind.num_outputs(n) for t in targets)
    if not kind.exclusive:  # one map per positive label
        assert all(labels[r, t] == 1 for r, t in zip(rows, targets, strict=True))
        assert len(rows) == int(labels.sum())


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_read_out_and_caption_name_real_classes(name):
    kind, n, classes, labels = _case(name)
    probs = kind.probabilities(torch.randn(N, kind.num_outputs(n)))
    for i in range(8):
        out = kind.read_out(classes, probs[i])
        assert set(out["predicted"]) <= set(classes)
        assert list(out["probabilities"]) == classes
        assert all(0.0 <= p <= 1.0 for p in out["probabilities"].values())
        assert out["targets"]
        for index, cls, p in out["targets"]:
            assert 0 <= index < kind.num_outputs(n) and cls in classes and 0.0 <= p <= 1.0
        caption = kind.caption(labels[i], probs[i], out["targets"][0][0], classes)
        assert any(c in caption for c in classes) and "p=" in caption


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_validation_metrics_agree_with_the_test_evaluation(name):
    """The figures a trial reports and the test figures after the search mean the same."""
    kind, n, classes, labels = _case(name, seed=3)
    probs = kind.probabilities(2 * torch.randn(N, kind.num_outputs(n)))
    m = kind.metrics(labels, probs)
    y, scores = kind.test_inputs(labels, probs)
    test = evaluate_predictions(name, y, scores, classes, n_boot=5)
    assert test["kind"] == name and test["n"] == N
    assert test["accuracy"]["value"] == pytest.approx(m["acc"])
    assert test["auroc"]["value"] == pytest.approx(m["auc"])


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_fold_strata_are_class_ids_or_none(name):
    kind, _, _, labels = _case(name)
    strata = kind.fold_strata(labels)
    if kind.exclusive:
        assert strata.tolist() == labels[:, 0].tolist()
    else:
        assert strata is None


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match=r"'multi-class'.*choose one of: multiclass, binary"):
        get_kind("multi-class")


def test_kind_for_classes():
    assert get_kind(kind_for_classes(2)).num_outputs(2) == 1
    assert kind_for_classes(3) == kind_for_classes(7) != kind_for_classes(2)


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="outside 0..4"):
        KINDS["multiclass"].indicators(np.array([[0], [5]]), 5)
    with pytest.raises(ValueError, match="only 0 and 1"):
        KINDS["multilabel"].indicators(np.array([[0, 2], [1, 0]]), 2)


# Figures by hand (moved from test_trainables.py)


def test_class_weights_by_hand():
    labels = np.array([[0]] * 90 + [[1]] * 10)
    multiclass, binary = get_kind("multiclass"), get_kind("binary")
    inverse = multiclass.class_weights(labels, 2, power=1.0)
    assert math.isclose(inverse[1] / inverse[0], 9.0, rel_tol=1e-6)
    counts = torch.tensor([90.0, 10.0])
    assert math.isclose(float((inverse * counts).sum() / counts.sum()), 1.0, rel_tol=1e-6)
    # binary: pos_weight 9 (n_neg / n_pos), scaled so the 100 samples' weights average 1
    scale, pos = binary.class_weights(labels, 2, power=1.0)
    assert torch.allclose(pos, torch.tensor([9.0]))
    assert math.isclose(float(scale), 100 / 180, rel_tol=1e-6)
    assert math.isclose(float(scale * (10 * pos + 90)) / 100, 1.0, rel_tol=1e-6)
    ml = np.array([[1, 0], [0, 0], [0, 0], [0, 1]])
    scale, sqrt = get_kind("multilabel").class_weights(ml, 2, 0.5)
    assert torch.allclose(sqrt, torch.tensor([3.0**0.5, 3.0**0.5]))
    assert torch.allclose(scale * (sqrt + 3) / 4, torch.ones(2))


def test_pos_weight_is_capped_and_says_so(caplog):
    labels = np.zeros((1000, 2), np.int64)
    labels[:1, 0] = 1  # label 0: 1 positive in 1000 -> raw pos_weight 999
    labels[:500, 1] = 1  # label 1: balanced
    with caplog.at_level("INFO", logger="medsweep"):
        scale, pos = get_kind("multilabel").class_weights(labels, 2, power=1.0)
    assert pos.tolist() == [POS_WEIGHT_CAP, 1.0]
    assert "pos_weight capped at 10 for label(s) [0]" in caplog.text
    assert torch.allclose(
        scale * (pos * torch.tensor([1, 500]) + torch.tensor([999, 500])), torch.full((2,), 1000.0)
    )


def test_loss_from_weights_matches_per_sample_weighting():
    """BCE with (scale, pos_weight) equals the mean of per-sample weighted log-losses."""
    labels = np.array([[0]] * 6 + [[1]] * 2)
    kind = get_kind("binary")
    weights = kind.class_weights(labels, 2, power=1.0)
    logits = torch.linspace(-2, 2, 8)[:, None]
    target = kind.loss_targets(torch.as_tensor(labels))
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    w = torch.where(target > 0, weights[0] * weights[1], weights[0])
    assert math.isclose(
        float(kind.make_loss(weights)(logits, target)), float((w * per).mean()), rel_tol=1e-5
    )
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-6)


def test_metrics_by_hand():
    labels = np.array([[0], [0], [1], [1]])
    probs = np.array([[0.1], [0.6], [0.4], [0.9]])  # binary: P(class 1)
    m = get_kind("binary").metrics(labels, probs)
    assert m["acc"] == 0.5 and m["auc"] == 0.75
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.4], [0.1, 0.1]])
    ml = get_kind("multilabel").metrics(y, p)
    assert ml["auc"] == 1.0 and ml["acc"] == 7 / 8


def test_multiclass_macro_f1_and_auc_by_hand():
    kind = get_kind("multiclass")
    labels = np.array([[0], [1], [2], [1]])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    m = kind.metrics(labels, probs)
    assert m["acc"] == 0.75
    # class 0: precision 1/2, recall 1 -> F1 2/3; class 1: 1, 1/2 -> 2/3; class 2: 1, 1 -> 1
    assert math.isclose(m["f1"], (2 / 3 + 2 / 3 + 1) / 3)
    # one-vs-rest AUROC: class 0 scores 0.8 vs {0.2, 0.1, 0.5} -> 1; class 1 {0.7, 0.4} vs
    # {0.1, 0.2} -> 1; class 2 0.7 vs {0.1, 0.1, 0.1} -> 1. Break class 1: 0.4 -> 0.15.
    assert math.isclose(m["auc"], 1.0)
    probs[3] = [0.75, 0.15, 0.1]
    assert math.isclose(kind.metrics(labels, probs)["auc"], (1.0 + 0.75 + 1.0) / 3)


@pytest.mark.parametrize("name", KINDS)
def test_each_kind_picks_one_variant_and_moves_what_it_labels(name):
    """`for_labels` (how code outside the kinds tells image labels from masks) agrees with
    the augmentation: a kind that picks the mask variant moves a mask with each image."""
    kind = KINDS[name]
    picked = kind.for_labels(images="images", masks="masks")
    assert picked in ("images", "masks")
    assert kind.augment_keys()[0] == "input"
    assert ("mask" in kind.augment_keys()) == (picked == "masks")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_readout_notes_say_when_labels_are_independent(name):
    """A multi-label read-out warns that probabilities do not add up to one; one class per
    image needs no note."""
    notes = KINDS[name].readout_notes()
    assert bool(notes) == (not KINDS[name].exclusive)
    assert all("independent" in note for note in notes)


def test_segmentation_is_the_mask_kind():
    assert get_kind("segmentation").for_labels(images=0, masks=1) == 1
    assert [n for n in CLASSIFIERS if KINDS[n].for_labels(images=0, masks=1)] == []
