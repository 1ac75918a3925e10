"""Operating point, calibration, patient bootstrap, unweighted val loss and the data fingerprint
(issue 13): `trainables.calibration`, the evaluation it feeds, and what after the search writes.

Fast: tiny synthetic scores, a session checkpoint (conftest `make_checkpoint`), a converted
NIH-named malaria folder; no Ray.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from search.data.fingerprint import data_fingerprint
from search.data.folders import convert_folder
from search.data.reader import SplitReader
from search.experiment.after import evaluate_on_test, row_ids
from search.experiment.after_settings import EvaluationSettings
from trainables.calibration import (
    BINS,
    OperatingPoint,
    choose_threshold,
    evaluate_split_pair,
    fit_temperature,
    parse_operating_point,
    reliability,
    shift_check,
)
from trainables.checkpoint import load_checkpoint
from trainables.evaluation import evaluate_predictions
from trainables.kinds import get_kind
from trainables.tasks import TASK_NAMES, get_task


def _scores(n: int, seed: int, offset: float = 0.0, scale: float = 1.0):
    """0/1 truth and logits: positives around +1.5, negatives around -1.5, plus `offset`."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    z = (np.where(y == 1, 1.5, -1.5) + rng.normal(0, 1.2, n) + offset) * scale
    return y, z.astype(np.float32)


# --- parse and choose -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("youden", OperatingPoint("youden")),
        ("0.5", OperatingPoint("fixed", 0.5)),
        ("sens=0.95", OperatingPoint("sens", 0.95)),
        (" Spec = 0.9 ", OperatingPoint("spec", 0.9)),
        (0.25, OperatingPoint("fixed", 0.25)),
    ],
)
def test_parse_operating_point_forms(text, want):
    assert parse_operating_point(text) == want


@pytest.mark.parametrize("text", ["yuden", "1.5", "-0.1", "sens=", "spec=x", "nan", "sens=2"])
def test_parse_operating_point_rejects_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="youden, a number in \\[0, 1\\].*sens=0.95.*spec=0.95"):
        parse_operating_point(text)


def test_thresholds_meet_their_rule_and_are_optimal():
    y, z = _scores(500, 0)
    p = 1 / (1 + np.exp(-z))
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    youden = choose_threshold(y, p, parse_operating_point("youden"))
    sens_at = lambda t: ((p >= t) & (y == 1)).sum() / (y == 1).sum()  # noqa: E731
    spec_at = lambda t: ((p < t) & (y == 0)).sum() / (y == 0).sum()  # noqa: E731
    assert math.isclose(sens_at(youden) + spec_at(youden) - 1, float((tpr - fpr).max()))
    t95 = choose_threshold(y, p, parse_operating_point("sens=0.95"))
    assert sens_at(t95) >= 0.95
    assert all(sens_at(t) < 0.95 for t in thr if t > t95)  # the highest such threshold
    s90 = choose_threshold(y, p, parse_operating_point("spec=0.9"))
    assert spec_at(s90) >= 0.9
    assert all(spec_at(t) < 0.9 for t in thr if t < s90)  # the lowest: the best sensitivity
    assert choose_threshold(y, p, parse_operating_point("0.3")) == 0.3
    assert choose_threshold(np.ones(5), p[:5], parse_operating_point("youden")) == 0.5


# --- ECE, reliability, temperature ----------------------------------------------------------


def test_reliability_and_ece_by_hand():
    conf = np.array([0.05, 0.05, 0.95, 0.95, 0.5, 0.5])
    hit = np.array([0, 0, 1, 0, 1, 0])
    r = reliability(conf, hit)
    assert r["bins"] == BINS == 15 and r["binning"] == "equal-width" and len(r["edges"]) == 16
    assert sum(r["count"]) == 6 and r["count"][0] == 2 and r["count"][14] == 2
    # bins: |0 - 0.05| * 2, |0.5 - 0.95| * 2, |0.5 - 0.5| * 2, over 6 samples
    assert math.isclose(r["ece"], (0.1 + 0.9 + 0.0) / 6)
    assert r["frequency"][1] is None  # an empty bin
    assert reliability(np.full(100, 0.7), np.arange(100) < 70)["ece"] < 1e-12


def test_temperature_recovers_an_overconfident_scale():
    y, z = _scores(4000, 1)
    kind = get_kind("binary")
    target = kind.loss_targets(torch.as_tensor(y[:, None]))
    t1 = fit_temperature(z[:, None], target, kind.make_loss())
    t3 = fit_temperature(3 * z[:, None], target, kind.make_loss())
    assert math.isclose(t3 / t1, 3.0, rel_tol=0.02)
    multi = get_kind("multiclass")
    logits = np.stack([-z, z], axis=1) * 4
    t = fit_temperature(logits, multi.loss_targets(torch.as_tensor(y)), multi.make_loss())
    assert t > 1.5  # softened


# --- the val/test pair ----------------------------------------------------------------------


def test_binary_pair_threshold_from_validation_beats_half_and_flags_a_shift():
    """Validation and test logits pushed up alike (as a short-trained model's are): Youden on
    validation moves the threshold up, test accuracy rises over 0.5's, the shift check is quiet;
    a test split shifted further is flagged."""
    y_v, z_v = _scores(600, 2, offset=2.5)
    y_t, z_t = _scores(600, 3, offset=2.5)
    names = ["normal", "pneumonia"]
    r, probs = evaluate_split_pair(
        "binary", names, (y_v[:, None], z_v[:, None]), (y_t[:, None], z_t[:, None])
    )
    assert r["threshold"] > 0.8 and r["operating_point"]["rule"] == "youden"
    assert "Youden" in r["operating_point"]["how"]
    half = r["at_default_threshold"]
    assert half["threshold"] == 0.5
    assert r["accuracy"]["value"] > half["accuracy"]["value"] + 0.1
    for split in ("val", "test"):
        cal = r["calibration"][split]
        assert 0 <= cal["ece"] <= 1 and cal["bins"] == 15 and sum(cal["count"]) == 600
    assert r["calibration"]["temperature"] is None and not r["shift"]["shifted"]
    assert probs.shape == (600, 1)
    y_s, z_s = _scores(600, 4, offset=5.0)
    shifted, _ = evaluate_split_pair(
        "binary", names, (y_v[:, None], z_v[:, None]), (y_s[:, None], z_s[:, None])
    )
    assert shifted["shift"]["shifted"] and "specificity" in shifted["shift"]["figures"]


def test_pair_with_temperature_lowers_validation_ece():
    y_v, z_v = _scores(800, 5, scale=8.0)
    y_t, z_t = _scores(800, 6, scale=8.0)
    plain, _ = evaluate_split_pair("binary", ["a", "b"], (y_v, z_v[:, None]), (y_t, z_t[:, None]))
    scaled, probs = evaluate_split_pair(
        "binary", ["a", "b"], (y_v, z_v[:, None]), (y_t, z_t[:, None]), temperature_scaling=True
    )
    assert scaled["calibration"]["temperature"] > 3  # 8x logits: about 4x overconfident
    assert scaled["calibration"]["val"]["ece"] < plain["calibration"]["val"]["ece"] * 0.75
    assert scaled["calibration"]["test"]["ece"] < plain["calibration"]["test"]["ece"]
    t = scaled["calibration"]["temperature"]
    assert np.allclose(probs[:, 0], 1 / (1 + np.exp(-z_t / t)), atol=1e-5)


def test_multilabel_thresholds_per_label_and_multiclass_keeps_argmax():
    rng = np.random.default_rng(7)
    y = (rng.random((300, 3)) < [0.1, 0.3, 0.5]).astype(np.int64)
    z = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1, y.shape) + [1.0, 0.0, -1.0]
    r, _ = evaluate_split_pair("multilabel", list("abc"), (y, z), (y, z), "spec=0.8")
    assert set(r["threshold"]) == {"a", "b", "c"} and len(set(r["threshold"].values())) == 3
    for name, spec in zip("abc", [r["per_class"][c]["specificity"] for c in "abc"], strict=True):
        assert spec >= 0.8, name  # chosen on this very split, so the rule holds on it
    ids = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 2 * np.eye(4)[ids]
    m, _ = evaluate_split_pair("multiclass", list("wxyz"), (ids, logits), (ids, logits))
    assert m["threshold"] is None and "at_default_threshold" not in m
    assert 0 <= m["calibration"]["test"]["ece"] <= 1
    assert m["accuracy"]["value"] == (logits.argmax(1) == ids).mean()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_class_missing_from_validation_is_averaged_out_and_named(caplog):
    rng = np.random.default_rng(8)
    y_v = rng.integers(0, 2, 120)  # classes 2 and 3 never occur in validation
    y_t = rng.integers(0, 4, 120)
    logits = rng.normal(size=(120, 4)).astype(np.float32)
    with caplog.at_level("WARNING", logger="medsweep"):
        r, _ = evaluate_split_pair("multiclass", list("abcd"), (y_v, logits), (y_t, logits))
        metrics = get_kind("multiclass").metrics(y_v[:, None], logits)
    assert math.isfinite(metrics["auc"])  # the trial is still scored
    assert r["validation"]["auroc_missing"] == ["c", "d"] and r["auroc_missing"] == []
    assert r["validation"]["auroc"]["value"] is not None
    assert any("validation" in w and "c, d" in w for w in r["warnings"])
    assert "averages the other classes" in caplog.text


def test_shift_check_needs_disjoint_intervals():
    a = {
        "operating": {
            "sensitivity": {"ci_low": 0.8, "ci_high": 0.9},
            "specificity": {"ci_low": 0.7, "ci_high": 0.8},
        }
    }
    b = {
        "operating": {
            "sensitivity": {"ci_low": 0.85, "ci_high": 0.95},
            "specificity": {"ci_low": 0.2, "ci_high": 0.3},
        }
    }
    assert shift_check(a, b) == {"shifted": True, "figures": ["specificity"]}
    assert shift_check(a, a) == {"shifted": False, "figures": []}
    assert not shift_check(a, {"operating": {}})["shifted"]


# --- patients -------------------------------------------------------------------------------


def test_patient_bootstrap_is_wider_when_patients_repeat_and_named():
    y, z = _scores(60, 9)
    y, z = np.repeat(y, 5), np.repeat(z, 5)  # each patient: 5 copies of one image
    p = 1 / (1 + np.exp(-z))
    patients = np.repeat([f"P{i}" for i in range(60)], 5)
    by_image = evaluate_predictions("binary", y, p, ["a", "b"])
    by_patient = evaluate_predictions("binary", y, p, ["a", "b"], groups=patients)
    assert by_image["bootstrap"]["unit"] == "image" and by_image["bootstrap"]["n_units"] == 300
    assert by_patient["bootstrap"]["unit"] == "patient"
    assert by_patient["bootstrap"]["n_units"] == 60
    width = lambda r: r["accuracy"]["ci_high"] - r["accuracy"]["ci_low"]  # noqa: E731
    assert width(by_patient) > 1.5 * width(by_image)
    assert by_patient["accuracy"]["value"] == by_image["accuracy"]["value"]
    sorted_ids = np.array([f"P{i:03d}" for i in range(300)])  # in row order once sorted
    one_each = evaluate_predictions("binary", y, p, ["a", "b"], groups=sorted_ids)
    assert one_each["accuracy"] == by_image["accuracy"]  # one image per patient: the same draws
    anonymous = evaluate_predictions("binary", y, p, ["a", "b"], groups=np.full(300, ""))
    assert anonymous["bootstrap"]["unit"] == "image"


def test_after_writes_patients_ids_and_the_operating_point(
    tmp_path, make_malaria, make_checkpoint
):
    src = make_malaria(tmp_path)
    path, classes, _ = convert_folder(str(src), 28, split="patient", seed=0)
    ids = row_ids(path)
    assert ids["test_patients"] is not None and all(ids["test_patients"])
    task = get_task("malaria")
    ckpt = make_checkpoint("binary", 3, 28, classes=tuple(classes))
    trials = [{"trial_id": "t0", "checkpoint_path": str(ckpt), "val_auc": 0.9}]
    settings = EvaluationSettings("val_auc", "max", operating_point="sens=0.9")
    reader = SplitReader.npz(path, task)
    out = evaluate_on_test(trials, str(tmp_path / "exp"), task, reader, settings)
    r = out["trials"]["t0"]
    assert r["bootstrap"]["unit"] == "patient"
    assert r["bootstrap"]["n_units"] == len(set(ids["test_patients"]))
    assert r["operating_point"]["rule"] == "sens" and r["operating_point"]["chosen_on"]
    assert r["validation"]["bootstrap_unit"] == "patient"
    written = json.loads((tmp_path / "exp" / "test_metrics.json").read_text())
    assert written["trials"]["t0"]["calibration"]["test"]["bins"] == 15
    with np.load(tmp_path / "exp" / "t0" / "test_predictions.npz") as npz:
        assert npz["ids"].tolist() == ids["test_files"].tolist()
        assert npz["patients"].tolist() == ids["test_patients"].tolist()
        assert npz["logits"].shape == npz["probs"].shape


# --- the loss, the focus and the data --------------------------------------------------------


def test_val_loss_is_unweighted():
    from trainables.train import evaluate
    from trainables.trial import Step

    kind = get_kind("binary")
    labels = np.array([[0]] * 30 + [[1]] * 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 1))
    weighted = kind.make_loss(kind.class_weights(labels, 2, power=1.0))
    step = Step(kind, weighted, lambda x: x, lambda: torch.autocast("cpu", enabled=False), 8)
    x = torch.randint(0, 255, (32, 3, 4, 4), dtype=torch.uint8)
    with torch.no_grad():
        logits = model(x.float() / 255)
    target = kind.loss_targets(torch.as_tensor(labels))
    got = evaluate(model, step, x, labels)["loss"]
    assert math.isclose(got, float(kind.make_loss()(logits, target)), rel_tol=1e-5)
    assert not math.isclose(got, float(weighted(logits, target)), rel_tol=1e-3)


def test_foreground_is_defined_for_single_cells_only():
    assert {n for n in TASK_NAMES if get_task(n).foreground == "otsu"} == {"blood", "malaria"}
    for name in ("pathology", "chest", "pneumonia", "derma", "folder"):
        assert get_task(name).foreground is None


def test_data_fingerprint_of_an_npz_and_a_converted_folder(tmp_path, make_malaria, pneumonia_path):
    fp = data_fingerprint(str(pneumonia_path), seed=3, folds=0)
    assert fp["md5"] == hashlib.md5(pneumonia_path.read_bytes()).hexdigest()
    assert fp | {"md5": None} == {
        "file": "pneumoniamnist.npz",
        "split": "medmnist",
        "seed": 3,
        "folds": 0,
        "fold": None,
        "md5": None,
    }
    path, _, _ = convert_folder(str(make_malaria(tmp_path)), 28, split="cell", seed=1)
    folder = data_fingerprint(path, seed=1, folds=5, fold=2)
    assert folder["split"] == "cell" and len(folder["folder_hash"]) == 64 and "md5" not in folder
    assert (folder["folds"], folder["fold"]) == (5, 2)


def test_checkpoint_carries_the_data_fingerprint(tmp_path):
    from trainables.tasks import Task
    from trainables.train import Placement, train_loop

    task = Task(
        name="fp",
        flag="fp",
        kind="binary",
        classes=("a", "b"),
        channels=1,
        model="simple_cnn",
        image_size=28,
    )
    rng = np.random.default_rng(0)
    arrays = {
        f"{s}_{k}": v
        for s in ("train", "val")
        for k, v in (
            ("images", rng.integers(0, 255, (16, 28, 28), dtype=np.uint8)),
            ("labels", np.arange(16).reshape(-1, 1) % 2),
        )
    }
    fingerprint = {
        "file": "x.npz",
        "md5": "abc",
        "split": "medmnist",
        "seed": 0,
        "folds": 0,
        "fold": None,
    }
    saved = []

    def keep(metrics, checkpoint_dir):
        saved.append(load_checkpoint(checkpoint_dir))

    config = {"task": "fp", "epochs": 1, "batch_size": 8, "data_fingerprint": fingerprint}
    train_loop(config, keep, arrays, task=task, placement=Placement(device=torch.device("cpu")))
    assert saved[0]["data"] == fingerprint
