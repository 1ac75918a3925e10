"""Tests for `--select` (search/experiment/selection.py): parsing against the figures a kind
computes, the pick on a hand-made table of validation figures (the best by the metric among
those meeting the constraint; the closest named when none does), figures at the threshold
chosen on validation that agree with the test evaluation's, and a bad constraint or K refused
by search/run.py in one line, exit 2, before Ray starts.

    pytest tests/test_selection.py -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search.experiment.selection import (
    FIGURES,
    check_after_flags,
    figures_at_threshold,
    figures_for,
    parse_constraint,
    select_trial,
    validation_figures,
)
from trainables.evaluation import evaluate_predictions

ROOT = Path(__file__).resolve().parents[1]


def test_parse_constraint():
    c = parse_constraint(" Sensitivity >= 0.95 ", "binary")
    assert (c.figure, c.op, c.value, str(c)) == ("sensitivity", ">=", 0.95, "sensitivity>=0.95")
    assert parse_constraint("ece<=0.05", "multilabel").op == "<="
    assert figures_for("multiclass") == FIGURES and figures_for("segmentation") == ()
    for text, named in (
        ("dice>=0.9", "'dice' is not a validation figure of a binary task"),
        ("sensitivity>0.9", "is not FIGURE>=X"),
        ("sensitivity>=1.5", "is not in [0, 1]"),
        ("sensitivity>=abc", "is not FIGURE>=X"),
        ("sensitivity>=1e-", "is not in [0, 1]"),
    ):
        with pytest.raises(ValueError, match="; ") as err:
            parse_constraint(text, "binary")
        assert named in str(err.value)
    with pytest.raises(ValueError, match="choose one of: none"):
        parse_constraint("sensitivity>=0.9", "segmentation")


def test_check_after_flags():
    check_after_flags(None, 0, 1, "segmentation")  # nothing asked: nothing refused
    check_after_flags("npv>=0.9", 3, 3, "multiclass")
    for args, named in (
        ((None, 4, 3, "binary"), "--ensemble 4 is larger than --trials 3"),
        ((None, 1, 3, "binary"), "K >= 2"),
        ((None, 2, 3, "segmentation"), "masks"),
        (("foo>=0.5", 0, 3, "binary"), "'foo'"),
        (("npv>=0.5", 0, 3, "binary", 0), "--test-top 0"),
        ((None, 2, 3, "binary", 0), "--test-top 0"),
    ):
        with pytest.raises(ValueError, match=named):
            check_after_flags(*args)


TABLE = [  # trial, val_auc, validation figures at each trial's own threshold
    ("a", 0.97, {"sensitivity": 0.90, "specificity": 0.95, "ece": 0.02}),
    ("b", 0.95, {"sensitivity": 0.96, "specificity": 0.80, "ece": 0.06}),
    ("c", 0.96, {"sensitivity": 0.97, "specificity": 0.70, "ece": 0.04}),
    ("d", 0.99, {"sensitivity": 0.93, "specificity": 0.96, "ece": float("nan")}),
]
ROWS = [{"trial_id": t, "val_auc": auc, "figures": f} for t, auc, f in TABLE]


@pytest.mark.parametrize(
    "text, selected, met",
    [
        ("sensitivity>=0.95", "c", ["c", "b"]),  # c beats b on val_auc
        ("sensitivity>=0.9", "d", ["d", "a", "c", "b"]),
        ("specificity>=0.9", "d", ["d", "a"]),
        ("ece<=0.05", "a", ["a", "c"]),  # d's ECE is undefined: it does not qualify
    ],
)
def test_select_picks_the_best_trial_meeting_the_constraint(text, selected, met):
    choice = select_trial(ROWS, parse_constraint(text, "binary"), "val_auc", "max")
    assert choice.selected == selected
    assert choice.met == met
    assert f"selected {selected}" in choice.line()


def test_none_meets_it_and_the_closest_is_named():
    choice = select_trial(ROWS, parse_constraint("sensitivity>=0.99", "binary"), "val_auc", "max")
    assert choice.selected is None and choice.met == []
    assert choice.closest == "c" and choice.shortfall == pytest.approx(0.02)
    assert "no trial meets it" in choice.line() and "closest is c" in choice.line()
    record = choice.as_record()
    assert record["closest"] == "c" and set(record["figures"]) == {"a", "b", "c", "d"}


def test_figures_at_the_validation_threshold_match_the_test_evaluation():
    """Sensitivity/specificity agree with `evaluate_predictions` at the same threshold; the
    threshold is the one Youden's J chose."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 * y + 0.65 * rng.random(300), 0, 1).astype(np.float32)[:, None]
    f = figures_at_threshold("binary", 2, y[:, None], p, "youden")
    ref = evaluate_predictions("binary", y, p[:, 0], ["n", "p"], 10, threshold=f["threshold"])
    assert f["sensitivity"] == pytest.approx(ref["sensitivity"])
    assert f["specificity"] == pytest.approx(ref["specificity"])
    assert f["auroc"] == pytest.approx(ref["auroc"]["value"])
    pred = p[:, 0] >= f["threshold"]
    assert f["ppv"] == pytest.approx((pred & (y == 1)).sum() / pred.sum())
    assert f["npv"] == pytest.approx((~pred & (y == 0)).sum() / (~pred).sum())
    fixed = figures_at_threshold("binary", 2, y[:, None], p, "0.5")
    assert fixed["threshold"] == 0.5

    k = 3
    labels = rng.integers(0, k, 200)
    logits = rng.normal(size=(200, k)) + 2 * np.eye(k)[labels]
    figs = validation_figures("multiclass", k, (labels[:, None], logits), "youden", True)
    assert figs["threshold"] is None and figs["temperature"] > 0
    probs = np.exp(logits / figs["temperature"])
    probs /= probs.sum(axis=1, keepdims=True)
    ref = evaluate_predictions("multiclass", labels, probs, ["a", "b", "c"], 10)
    assert figs["sensitivity"] == pytest.approx(ref["operating"]["sensitivity"]["value"])
    assert figs["specificity"] == pytest.approx(ref["operating"]["specificity"]["value"])


@pytest.fixture
def run_main(monkeypatch, capsys, tmp_path):
    """search/run.py's entry function in this process, `RAY_TMPDIR` in the test's folder."""
    from search.driver.pipeline import main

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(ROOT)

    def run(argv: list[str]) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
        return code, capsys.readouterr().err

    return run


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--select", "dice>=0.9"], "'dice' is not a validation figure of a binary task"),
        (["--select", "sensitivity=0.9"], "--select"),
        (["--ensemble", "5", "--trials", "3"], "--ensemble 5 is larger than --trials 3"),
    ],
)
def test_run_refuses_a_bad_constraint_or_k_before_ray(run_main, tmp_path, flags, named):
    args = ["--task", "pneumonia", "--data-dir", "data", "--weights", "none", "--storage"]
    code, err = run_main([*args, str(tmp_path / "runs"), *flags])
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err[-2000:]
    assert len(errors) == 1 and named in errors[0] and "; " in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "ray-tmp" / "ray").exists(), "a Ray session was started"
