"""Tests for search/report.py: an experiment folder made by the real writers (search.json by
`Manifest.write`, table rows by `search.experiment.tables.trial_row`/`history_rows` from the
results `train_loop` reports, attribution grids from `save_grid`, test metrics from
`evaluate_predictions`) becomes one self-contained HTML file; missing pieces, errored trials,
one trial and NaN metrics degrade to notes; the CLI rebuilds it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from search.experiment.manifest import Manifest
from search.experiment.storage import write_npz
from search.experiment.tables import history_rows, read_table, trial_row, write_table, write_tables
from search.report import main
from search.reporting.report import build_report
from trainables.attribution import save_grid
from trainables.evaluation import evaluate_predictions, write_json
from trainables.kinds import get_kind
from trainables.scores import ranked
from trainables.train import KNOBS

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
CLASSES = {
    "multiclass": ["basophil", "eosinophil", "lymphocyte"],
    "binary": ["normal", "pneumonia"],
    "multilabel": ["effusion", "nodule", "mass"],
}
SPACE = {
    "method": "bayes",
    "metric": {"name": "val_auc", "goal": "maximize"},
    "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-2},
        "dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5},
        "class_weight_power": {"distribution": "uniform", "min": 0.0, "max": 1.0},
        "aug_cutoff_epoch": {"distribution": "int_uniform", "min": 0, "max": 10},
        "unfreeze_epoch": {"distribution": "int_uniform", "min": 0, "max": 4},
        "model": {"value": "simple_cnn"},
        "epochs": {"value": 4},
    },
}
EPOCHS = 4


class Page(HTMLParser):
    """The report's <img> sources, other src/href attributes, tags and text."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif "src" in attrs or "href" in attrs:
            self.links.append(attrs.get("src") or attrs.get("href"))

    def handle_data(self, data):
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(self.text)

    def pngs(self) -> list[bytes]:
        prefix = "data:image/png;base64,"
        assert all(src.startswith(prefix) for src in self.images), self.images
        return [base64.b64decode(src[len(prefix) :], validate=True) for src in self.images]


def epoch_results(i: int, n: int, rng: np.random.Generator, start: float) -> list[dict]:
    """What `train_loop` reports for trial i of n: the last one errored (nothing reported),
    every third one (from the second) stopped early by ASHA after one epoch, the rest ran
    every epoch; the metric improves every epoch."""
    if i == n - 1:
        return []
    epochs_run = 1 if i % 3 == 1 else EPOCHS
    auc = float(0.6 + 0.35 * rng.random())
    return [
        {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "val_loss": 1.2 / epoch,
            "val_acc": 0.7,
            "val_f1": 0.6,
            "val_auc": auc - 0.05 * (epochs_run - epoch),
            "lr_now": 1e-3,
            "frozen": 0.0,
            "augmented": 1.0,
            "images_per_s": 900.0,
            "time_this_iter_s": 12.5,
            "time_total_s": 12.5 * epoch,
            "timestamp": start + 30 * i + 12.5 * epoch,
        }
        for epoch in range(1, epochs_run + 1)
    ]


def search_tables(kind: str, n: int, rng: np.random.Generator, start: float):
    """(trials, history) rows built by the real row builders of `search.experiment.tables`."""
    trials, history = [], []
    for i in range(n):
        tid = f"trial_{i:03d}"
        results = epoch_results(i, n, rng, start)
        config = {
            "aug_cutoff_epoch": int(rng.integers(0, 11)),
            "class_weight_power": float(rng.random()),
            "dropout": 0.5 * rng.random(),
            "epochs": EPOCHS,
            "lr": float(10 ** rng.uniform(-4, np.log10(3e-2))),
            "model": "simple_cnn",
            "task": f"fake-{kind}",
            "unfreeze_epoch": int(rng.integers(0, 5)),
        }
        error = None if results else RuntimeError("CUDA out of memory\n  File train.py, line 9")
        trials.append(
            trial_row(tid, results, config, error, f"/ray/results/{tid}", "val_auc", "max", EPOCHS)
        )
        history += history_rows(tid, results)
    for t in trials:
        t["attr_focus"] = t["attr_focus_warning"] = None
    return trials, history


def fake_predictions(kind: str, n_classes: int, rng: np.random.Generator, n: int = 60):
    """Stored test labels and the model's probabilities, better than chance."""
    ops = get_kind(kind)
    if ops.exclusive:
        labels = (np.arange(n) % n_classes)[:, None]
    else:
        labels = rng.integers(0, 2, (n, n_classes))
    width = ops.num_outputs(n_classes)
    logits = rng.normal(size=(n, width)) + 1.5 * ops.indicators(labels, n_classes)[:, -width:]
    return labels, ops.probabilities(torch.as_tensor(logits, dtype=torch.float32))


def write_attribution(folder: Path, rng: np.random.Generator, both: bool = True) -> None:
    images = rng.integers(0, 255, (2, 28, 28, 3), dtype=np.uint8)
    maps = rng.random((2, 28, 28)).astype(np.float32)
    save_grid(folder / "gradcam.png", images, maps, ["a", "b"], title="Grad-CAM")
    if both:
        save_grid(folder / "integrated_gradients.png", images, maps, ["a", "b"], title="IG")


def write_manifest(root: Path, kind: str, n: int, start: float) -> None:
    classes = CLASSES[kind]
    Manifest(
        name=root.name,
        task=f"fake-{kind}",
        kind=kind,
        classes=classes,
        metric="val_auc",
        mode="max",
        searcher="optuna",
        seed=0,
        trials=n,
        epochs=EPOCHS,
        launcher="function",
        knobs=list(KNOBS),
        space=SPACE,
        started_at=start,
        finished_at=start + 400.0,
        wall_time_s=400.0,
        split_counts={
            "train": {c: 100 for c in classes},
            "val": {c: 30 if j else 12 for j, c in enumerate(classes)},
        },
    ).write(str(root))


def write_tests(root: Path, winner: dict, kind: str, rng: np.random.Generator) -> None:
    """The winner's test_predictions.npz and test_metrics.json, as after the search."""
    classes = CLASSES[kind]
    winner["checkpoint_path"] = str(root / winner["trial_id"] / "checkpoint")
    labels, probs = fake_predictions(kind, len(classes), rng)
    write_npz(str(root / winner["trial_id"] / "test_predictions.npz"), labels=labels, probs=probs)
    y, scores = get_kind(kind).test_inputs(labels, probs)
    result = evaluate_predictions(kind, y, scores, classes, n_boot=100)
    write_json(
        root / "test_metrics.json",
        {"best_trial": winner["trial_id"], "trials": {winner["trial_id"]: result}},
    )


def make_experiment(root: Path, kind: str = "multiclass", n: int = 7) -> dict:
    """A complete experiment folder; returns {"trials": rows, "winner": id}."""
    rng, start = np.random.default_rng(0), 1.7e9
    trials, history = search_tables(kind, n, rng, start)
    scored = ranked(trials, "val_auc", "max")
    for rank, t in enumerate(scored[:3]):
        t["attr_focus"] = 0.2 if rank == 2 else 0.8 - 0.05 * rank
        t["attr_focus_warning"] = rank == 2
        write_attribution(root / t["trial_id"] / "attribution", rng, both=rank != 1)
    write_manifest(root, kind, n, start)
    winner = scored[0] if scored else None
    if winner is not None:
        write_tests(root, winner, kind, rng)
    write_tables(str(root), trials, history)
    return {"trials": trials, "winner": winner and winner["trial_id"]}


def read(path: str) -> tuple[str, Page]:
    text = Path(path).read_text(encoding="utf-8")
    return text, Page(text)


def check_self_contained(root: Path, text: str, page: Page) -> None:
    assert not page.links, f"external references: {page.links}"
    assert "script" not in page.tags and "link" not in page.tags
    assert all(png.startswith(PNG) for png in page.pngs())
    assert "could not be built" not in text  # no section fell back to its error box
    assert not list(root.glob(".report.html*"))  # the temp file was renamed away


@pytest.fixture
def experiment(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "blood-test"
    root.mkdir()
    return root, make_experiment(root)


def test_full_report(experiment):
    root, info = experiment
    path = build_report(root)
    assert path == str(root / "report.html")
    text, page = read(path)
    check_self_contained(root, text, page)
    words = page.all_text
    for t in info["trials"]:
        assert t["trial_id"] in words
    assert f"The winner: trial {info['winner']}" in words
    embedded = set(page.pngs())
    on_disk = list(root.glob("*/attribution/*.png"))
    assert len(on_disk) == 5  # 3 trials with maps, one of them with Grad-CAM only
    for png_path in on_disk:
        assert png_path.read_bytes() in embedded, f"{png_path} not embedded"
    # best so far, parallel coordinates, importances, learning curves, confusion, ROC + maps
    assert len(page.images) == 6 + len(on_disk)
    assert "95% CI" in words and "sensitivity" in words
    assert "Low focus" in words  # the flagged trial
    assert "Small data" in words and "basophil (12)" in words
    assert "Stopped early by ASHA" in words
    assert "CUDA out of memory" in words and "File train.py" not in words  # first line only


@pytest.mark.parametrize("kind", ["binary", "multilabel"])
def test_other_kinds(tmp_path, kind):
    root = tmp_path / kind
    root.mkdir()
    make_experiment(root, kind=kind, n=4)
    text, page = read(build_report(root))
    check_self_contained(root, text, page)
    assert "ROC curves" in page.all_text
    if kind == "multilabel":
        assert "Confusion per label" in page.all_text


def test_degrades_without_tests_and_attribution(experiment):
    root, info = experiment
    (root / "test_metrics.json").unlink()
    (root / info["winner"] / "test_predictions.npz").unlink()
    for folder in root.glob("*/attribution"):
        shutil.rmtree(folder)
    text, page = read(build_report(root))
    check_self_contained(root, text, page)
    words = page.all_text
    assert "Test metrics: not available" in words
    assert "ROC curves: not available" in words
    assert "no trial has attribution maps" in words
    assert f"The winner: trial {info['winner']}" in words  # still picked from trials.parquet
    np.savez(
        root / info["winner"] / "test_predictions.npz",
        labels=np.arange(4)[:, None] % 3,
        probs=np.ones((4, 7)),
    )
    text, page = read(build_report(root))
    check_self_contained(root, text, page)
    assert "test_predictions.npz does not fit" in page.all_text


def test_single_errored_trial_and_no_metadata(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    info = make_experiment(root, n=1)  # one trial, errored: every metric is null
    assert info["winner"] is None
    (root / "search.json").unlink()
    text, page = read(build_report(root))
    check_self_contained(root, text, page)
    words = page.all_text
    assert "trial_000" in words and "errored" in words
    assert "no trial reported a finite val_auc" in words
    assert "Dataset split sizes: not available" in words


def test_nan_metrics_and_few_trials(tmp_path):
    root = tmp_path / "nan"
    root.mkdir()
    make_experiment(root, n=3)
    trials = read_table(str(root / "trials.parquet"))
    write_table([{**t, "val_auc": float("nan")} for t in trials], str(root / "trials.parquet"))
    text, page = read(build_report(root))
    check_self_contained(root, text, page)
    assert "Parameter importances" in page.all_text
    assert "need 3" in page.all_text


def test_cli_rebuilds_from_the_folder(experiment, capsys):
    root, _ = experiment
    done = subprocess.run(
        [sys.executable, "search/report.py", str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("report.html")
    text, page = read(str(root / "report.html"))
    check_self_contained(root, text, page)
    assert main([str(root / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_report_of_a_real_search(experiment_dir):
    """The folder a real (tiny) search leaves (`experiment_dir`: trained trials, attribution,
    test metrics, all from the search's writers) gives a full report."""
    text, page = read(build_report(experiment_dir))
    check_self_contained(experiment_dir, text, page)
    words = page.all_text
    tested = json.loads((experiment_dir / "test_metrics.json").read_text())["best_trial"]
    assert f"The winner: trial {tested}" in words and "95% CI" in words and "ROC curves" in words
    on_disk = {p.read_bytes() for p in experiment_dir.glob("*/attribution/*.png")}
    assert on_disk and on_disk <= set(page.pngs())
    assert "errored" in words and "Stopped early by ASHA" in words


def test_operating_point_and_calibration_section(tmp_path):
    """Issue 13: how the threshold was chosen, test at it and at 0.5 beside validation, what
    the intervals resample, ECE with a reliability diagram, and a shifted test split flagged."""
    from trainables.calibration import evaluate_split_pair

    root = tmp_path / "binary"
    root.mkdir()
    info = make_experiment(root, kind="binary", n=4)
    rng = np.random.default_rng(0)

    def split(offset: float) -> tuple[np.ndarray, np.ndarray]:
        y = (rng.random(400) < 0.5).astype(np.int64)
        return y[:, None], (np.where(y == 1, 2.0, -2.0) + rng.normal(0, 1, 400) + offset)[:, None]

    result, _ = evaluate_split_pair("binary", CLASSES["binary"], split(2.0), split(5.0))
    assert result["shift"]["shifted"]
    tests = {"best_trial": info["winner"], "trials": {info["winner"]: result}}
    write_json(root / "test_metrics.json", tests)
    text, page = read(build_report(root))
    check_self_contained(root, text, page)
    words = page.all_text
    assert "Operating point and calibration" in words and "Youden's J" in words
    assert "test, threshold 0.5" in words and "validation, chosen threshold" in words
    assert "15 equal-width bins" in words and "reliability diagram" in text
    assert "resamples of the 400 images of each split" in words
    assert "test split looks shifted from validation" in words
