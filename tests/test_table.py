"""The table source (`search.data.table`): CheXpert-like and NIH-like trees of real pixels
(data/pneumoniamnist.npz, `table_trees`) planned and ingested back to the same labels under each
policy and the same pixels; patient-disjoint splits; the row filter; every bad input refused
with one `<what>; <what to do>` line before a pixel is read; and unknown (-1) multi-label
entries masked out of the loss, the metrics and the operating point.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score
from table_trees import (
    CHEXPERT,
    NIH,
    add_chexpert_valid,
    chexpert_tree,
    nih_tree,
    write_csv,
)

from search.data.settings import DataSettings
from search.data.table import PRESETS, plan_table
from trainables.calibration import evaluate_split_pair
from trainables.evaluation import evaluate_predictions
from trainables.kinds import get_kind
from trainables.tasks import get_task

POLICY = {"ignore": -1, "zeros": 0, "ones": 1}


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    return chexpert_tree(tmp_path_factory.mktemp("chexpert"), patients=40)


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    return nih_tree(tmp_path_factory.mktemp("nih"), patients=30)


def plan(task: str, data_dir, **flags):
    settings = DataSettings(task=task, data_dir=str(data_dir), **flags)
    return plan_table(get_task(task), settings, image_size=28, seed=0)


def by_file(conversion) -> dict[str, tuple[str, np.ndarray]]:
    """{file: (split, label row)} of a planned conversion."""
    out = {}
    for split, (files, labels) in conversion.parts.items():
        out |= {f: (split, labels[i]) for i, f in enumerate(files)}
    return out


def expected_row(row: dict, uncertain, blank: str) -> list[int]:
    """A CheXpert row's 14 labels by hand: `uncertain` one policy or {column: policy}."""
    out = []
    for name in CHEXPERT:
        cell = row[name]
        policy = uncertain.get(name, "ignore") if isinstance(uncertain, dict) else uncertain
        value = {"1.0": 1, "0.0": 0, "-1.0": POLICY[policy], "": POLICY[blank]}[cell]
        out.append(value)
    return out


def frontal(tree) -> list[dict]:
    return frontal_rows(tree.rows)


def frontal_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["Frontal/Lateral"] == "Frontal"]


# --- CheXpert -------------------------------------------------------------------------------


def test_chexpert_preset_reads_the_papers_policies_frontal_views_and_patients(chexpert):
    task, conversion = plan("chexpert", chexpert.data_dir)
    assert task.kind == "multilabel" and task.classes == CHEXPERT
    rows = by_file(conversion)
    assert len(rows) == len(frontal(chexpert))  # lateral views filtered out
    assert conversion.info["dropped_by_where"] == len(chexpert.rows) - len(frontal(chexpert))
    for row in frontal(chexpert):
        rel = row["Path"].split("/", 1)[1]  # the CSV's paths start with the folder's name
        want = expected_row(row, PRESETS["chexpert"]["uncertain"], "zeros")
        assert rows[rel][1].tolist() == want, rel
    assert conversion.info["split"] == "patient"
    assert _patients_apart(conversion)
    assert conversion.parts["train"][1].dtype == np.int8


@pytest.mark.parametrize("uncertain", ["ignore", "zeros", "ones"])
@pytest.mark.parametrize("blank", ["zeros", "ignore"])
def test_each_policy_gives_the_labels_by_hand(chexpert, uncertain, blank):
    _, conversion = plan("chexpert", chexpert.data_dir, uncertain=uncertain, blank=blank)
    rows = by_file(conversion)
    for row in frontal(chexpert):
        rel = row["Path"].split("/", 1)[1]
        assert rows[rel][1].tolist() == expected_row(row, uncertain, blank), rel
    assert conversion.info["policies"]["uncertain"] == dict.fromkeys(CHEXPERT, uncertain)
    values = np.concatenate([labels for _, labels in conversion.parts.values()])
    assert ((values == -1).any()) == (uncertain == "ignore" or blank == "ignore")


def test_chexpert_valid_csv_is_the_test_split(tmp_path):
    tree = chexpert_tree(tmp_path, patients=25)
    valid = add_chexpert_valid(tree, patients=6)
    _, conversion = plan("chexpert", tree.data_dir)
    assert conversion.parts["test"][0] == sorted(valid)
    assert conversion.info["split"] == "premade" and _patients_apart(conversion)
    assert {f.split("/")[0] for f in conversion.parts["val"][0]} == {"train"}  # carved by patient


def _patients_apart(conversion) -> bool:
    sets = [set(conversion.extra[f"{s}_patients"]) for s in ("train", "val", "test")]
    assert all(sets) and all("" not in s for s in sets)
    return not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_where_keeps_only_matching_rows(chexpert):
    _, conversion = plan("chexpert", chexpert.data_dir, where="Sex=Female")
    want = {r["Path"].split("/", 1)[1] for r in chexpert.rows if r["Sex"] == "Female"}
    assert set(by_file(conversion)) == want  # the flag replaces the preset's filter
    _, conversion = plan("chexpert", chexpert.data_dir, where="Frontal/Lateral!=Frontal")
    assert all("lateral" in f for f in by_file(conversion))


def test_a_generic_table_with_a_split_column_keeps_it(chexpert):
    task, conversion = plan("table", chexpert.data_dir, labels="pneumonia.csv")
    assert task.kind == "binary" and task.classes == ("0", "1")
    for rel, (split, label) in by_file(conversion).items():
        assert split == chexpert.npz_split[rel] and label.tolist() == [chexpert.npz_label[rel]]
    assert conversion.info["split"] == "premade"


def test_data_dir_as_a_uri_reads_through_pyarrow_fs(chexpert):
    _, local = plan("chexpert", chexpert.data_dir)
    _, uri = plan("chexpert", Path(chexpert.data_dir).as_uri())
    assert {s: p[0] for s, p in uri.parts.items()} == {s: p[0] for s, p in local.parts.items()}
    assert uri.file_stats == local.file_stats


# --- NIH ChestX-ray14 -------------------------------------------------------------------------


def test_chestxray14_preset_reads_findings_lists_and_patients(nih):
    task, conversion = plan("chestxray14", nih.data_dir)
    assert task.kind == "multilabel" and task.classes == NIH
    rows = by_file(conversion)
    test_list = set((nih.data_dir / "test_list.txt").read_text().split())
    for row in nih.rows:
        rel = next(f for f in rows if f.endswith("/" + row["Image Index"]))
        assert rel.split("/")[1:] == ["images", row["Image Index"]]  # found under images_00N/
        tokens = [] if row["Finding Labels"] == "No Finding" else row["Finding Labels"].split("|")
        assert rows[rel][1].tolist() == [int(c in tokens) for c in NIH]
        assert (rows[rel][0] == "test") == (row["Image Index"] in test_list)
    assert conversion.info["split"] == "premade" and _patients_apart(conversion)


def test_one_hot_columns_are_one_class_per_image(tmp_path, nih):
    rows = [{"file": r["Image Index"], "A": "0", "B": "0", "C": "0"} for r in nih.rows]
    for i, row in enumerate(rows):
        row["ABC"[i % 3]] = "1.0"
    write_csv(nih.data_dir / "onehot.csv", rows)
    task, conversion = plan("table", nih.data_dir, labels="onehot.csv", patient_regex=r"^(\d+)_")
    assert task.kind == "multiclass" and task.classes == ("A", "B", "C")
    got = by_file(conversion)
    for i, row in enumerate(rows):
        rel = next(f for f in got if f.endswith(row["file"]))
        assert got[rel][1].tolist() == [i % 3]
    assert conversion.info["split"] == "patient" and _patients_apart(conversion)


def test_bom_semicolons_tsv_and_parquet_read_alike(tmp_path, chexpert):
    _, base = plan("chexpert", chexpert.data_dir)
    write_csv(chexpert.data_dir / "bom.csv", chexpert.rows, delimiter=";", bom=True)
    write_csv(chexpert.data_dir / "tab.tsv", chexpert.rows, delimiter="\t")
    table = pa.table({k: [r[k] for r in chexpert.rows] for k in chexpert.rows[0]})
    pq.write_table(table, chexpert.data_dir / "train.parquet")
    for name in ("bom.csv", "tab.tsv", "train.parquet"):
        _, other = plan("chexpert", chexpert.data_dir, labels=name)
        for split in base.parts:
            assert other.parts[split][0] == base.parts[split][0], name
            assert np.array_equal(other.parts[split][1], base.parts[split][1]), name


# --- bad input ------------------------------------------------------------------------------


def _bad_table(tree, mutate) -> str:
    rows = [dict(r) for r in tree.rows]
    mutate(rows)
    write_csv(tree.data_dir / "bad.csv", rows)
    return "bad.csv"


def _drop(rows, name):
    for r in rows:
        r.pop(name)


BAD = {
    "no path column": (
        lambda rows: _drop(rows, "Path"),
        {},
        r"bad.csv has no path column 'Path' \(its columns: Sex, .*\); pass --path-column NAME",
    ),
    "missing files": (
        lambda rows: [r.update(Path=r["Path"] + ".gone") for r in frontal_rows(rows)[:7]],
        {},
        r"7 of \d+ image path\(s\) listed in bad.csv are not under .* \(e.g\. .*\.gone.*\); pass",
    ),
    "unknown label value": (
        lambda rows: rows[0].update(Edema="maybe"),
        {},
        r"label column 'Edema' holds 1 unknown value\(s\) \('maybe'\); a label column holds",
    ),
    "one class": (
        lambda rows: [r.update(Fracture="0.0") for r in rows],
        {},
        r"label column\(s\) 'Fracture' \(all 0\) hold one class only; leave them out",
    ),
    "duplicate paths": (
        lambda rows: rows.append(dict(rows[0])),
        {},
        r"1 image path\(s\) in column 'Path' are listed more than once .*; keep one row",
    ),
    "patient in two splits": (
        lambda rows: [r.update(split="train" if i % 2 else "test") for i, r in enumerate(rows)],
        {},
        r"patient\(s\) have images in both the given train and test splits .*; fix the split",
    ),
    "regex without a group": (
        lambda rows: None,
        {"patient_regex": r"patient\d+"},
        r"--patient-regex 'patient\\\\d\+' has no group; put the patient part in parentheses",
    ),
    "unknown where column": (
        lambda rows: None,
        {"where": "View=PA"},
        r"bad.csv has no --where column 'View' \(its columns: Path, .*\); pass --where",
    ),
    "empty after where": (
        lambda rows: None,
        {"where": "Sex=Other"},
        r"--where 'Sex=Other' leaves no row of bad.csv .*; change the value or drop --where",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_clean_line(chexpert, case):
    mutate, flags, message = BAD[case]
    labels = _bad_table(chexpert, mutate)
    with pytest.raises(ValueError) as err:
        plan("chexpert", chexpert.data_dir, labels=labels, **flags)
    text = str(err.value)
    assert "\n" not in text and "; " in text, text
    assert re.search(message, text), text


def test_a_patient_in_two_split_lists_is_refused(nih, tmp_path):
    names = [r["Image Index"] for r in nih.rows]
    (nih.data_dir / "a.txt").write_text("\n".join(names[:-1]))
    (nih.data_dir / "b.txt").write_text(names[-1])  # the last image's patient is in a.txt too
    with pytest.raises(ValueError, match=r"both the given train and test splits"):
        plan("chestxray14", nih.data_dir, split_lists="a.txt,b.txt")


def test_no_label_table_or_path_column_is_refused(chexpert):
    with pytest.raises(ValueError, match=r"--task table reads a label table; pass --labels FILE"):
        plan("table", chexpert.data_dir)
    write_csv(chexpert.data_dir / "nopath.csv", [{"x": "a.png", "label": "1"}])
    with pytest.raises(ValueError, match=r"has no image path column .*; pass --path-column NAME"):
        plan("table", chexpert.data_dir, labels="nopath.csv")


# --- pixels after ingest ----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["chexpert", "nih"])
def test_ingest_reads_back_the_same_pixels_and_labels(chexpert, nih, tmp_path, which):
    """PNG exact, JPEG within 2 levels on average; labels and extras as planned."""
    from search.data.ingest import run

    tree = chexpert if which == "chexpert" else nih
    _, conversion = plan("chexpert" if which == "chexpert" else "chestxray14", tree.data_dir)
    path = str(tmp_path / "table.npz")
    info = run(conversion, path, skip_bad=False)
    assert info["channels"] == 1
    with np.load(path) as npz:
        for split, (files, labels) in conversion.parts.items():
            assert np.array_equal(npz[f"{split}_labels"], labels)
            assert npz[f"{split}_files"].tolist() == files
            images = npz[f"{split}_images"]
            source = np.stack([tree.pixels[f] for f in files])
            diff = np.abs(images.astype(int) - source.astype(int)).mean()
            assert diff <= (2.0 if which == "chexpert" else 0.0), (split, diff)
        assert json.loads(str(npz["info"]))["split"] == conversion.info["split"]


# --- unknown labels (-1) in the multilabel kind -------------------------------------------------


def _masked_case(seed: int = 0, n: int = 300, labels: int = 3):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=(n, labels)) < 0.4).astype(np.int8)
    logits = rng.normal(size=(n, labels)) + 2.0 * y
    unknown = rng.uniform(size=(n, labels)) < 0.2
    stored = np.where(unknown, -1, y).astype(np.int8)
    return y, stored, logits.astype(np.float32), ~unknown


def test_loss_ignores_unknown_entries():
    y, stored, logits, known = _masked_case()
    kind = get_kind("multilabel")
    loss = kind.make_loss()(torch.tensor(logits), kind.loss_targets(torch.tensor(stored)))
    full = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(y, dtype=torch.float32), reduction="none"
    )
    assert float(loss) == pytest.approx(float(full[torch.tensor(known)].mean()), rel=1e-5)
    weights = kind.class_weights(stored, 3, power=1.0)
    pos = (stored == 1).sum(axis=0)
    neg = (stored == 0).sum(axis=0)
    assert np.allclose(weights[1].numpy(), neg / pos, rtol=1e-5)  # unknowns count nowhere


def test_metrics_and_test_figures_use_each_labels_known_rows():
    y, stored, logits, known = _masked_case()
    kind = get_kind("multilabel")
    probs = kind.probabilities(torch.tensor(logits))
    by_hand = [roc_auc_score(y[known[:, j], j], probs[known[:, j], j]) for j in range(3)]
    assert kind.metrics(stored, probs)["auc"] == pytest.approx(np.mean(by_hand))
    r = evaluate_predictions("multilabel", stored, probs, list("abc"), n_boot=50)
    for j, name in enumerate("abc"):
        assert r["per_class"][name]["auroc"] == pytest.approx(by_hand[j])
        assert r["per_class"][name]["support"] == int(y[known[:, j], j].sum())
        assert sum(map(sum, r["confusion_matrix"][name])) == int(known[:, j].sum())
    assert kind.label_min(3) == -1 and get_kind("binary").label_min(2) == 0
    with pytest.raises(ValueError, match="only 0 and 1"):
        kind.indicators(np.array([[0, 2], [1, -1]]), 2)


def test_operating_point_and_calibration_skip_unknown_entries():
    y, stored, logits, known = _masked_case(seed=1)
    r, _ = evaluate_split_pair("multilabel", list("abc"), (stored, logits), (stored, logits))
    # every label's threshold equals the one chosen on its known rows alone
    for j, name in enumerate("abc"):
        rows = known[:, j]
        one = (y[rows, j : j + 1], logits[rows, j : j + 1])
        alone, _ = evaluate_split_pair("multilabel", ["x"], one, one)
        assert r["threshold"][name] == pytest.approx(alone["threshold"]["x"])
    assert sum(r["calibration"]["val"]["count"]) == int(known.sum())


# --- a search on the table vs the same images as an npz -------------------------------------


def _best_val_auc(runs: Path, name: str) -> float:
    from search.experiment.tables import read_table as read_parquet

    trials = read_parquet(str(runs / name / "trials.parquet"))
    return max(t["val_auc"] for t in trials if t["val_auc"] is not None)


@pytest.mark.slow
def test_a_search_on_the_table_matches_the_npz_search(tmp_path, run_search, write_space):
    """The CheXpert-like tree's pneumonia.csv (frontal PNGs, 0/1 labels, a split column) and
    the same images written as a MedMNIST npz, searched with the same seed and one fixed
    config (no augmentation: the two tasks' augmentations differ): val AUROC within 0.02."""
    tree = chexpert_tree(tmp_path / "tree", patients=300, ext=".png")
    arrays = {}
    for split in ("train", "val", "test"):
        files = sorted(f for f, s in tree.npz_split.items() if s == split and "frontal" in f)
        arrays[f"{split}_images"] = np.stack([tree.pixels[f] for f in files])
        arrays[f"{split}_labels"] = np.array([[tree.npz_label[f]] for f in files], np.uint8)
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "pneumoniamnist.npz", **arrays)
    fixed = {
        "lr": {"value": 3e-3},
        "dropout": {"value": 0.1},
        "class_weight_power": {"value": 0.5},
        "aug_cutoff_epoch": {"value": 0},
        "image_size": {"value": 28},
    }
    common = ("--trials", "1", "--epochs", "3", "--launcher", "function", "--seed", "0")
    common += ("--storage", str(tmp_path / "runs"), "--explain-top", "0")
    table = run_search(
        *("--task", "table", "--data-dir", str(tree.data_dir), "--labels", "pneumonia.csv"),
        *("--cache-dir", str(tmp_path / "cache"), "--name", "table"),
        *("--space", write_space(tmp_path / "table.yaml", **fixed), *common),
    )
    assert table.returncode == 0, table.stderr[-2000:]
    npz = run_search(
        *("--task", "pneumonia", "--data-dir", str(tmp_path / "npz"), "--name", "npz"),
        *("--space", write_space(tmp_path / "npz.yaml", **fixed), *common),
    )
    assert npz.returncode == 0, npz.stderr[-2000:]
    a, b = _best_val_auc(tmp_path / "runs", "table"), _best_val_auc(tmp_path / "runs", "npz")
    print(f"val AUROC: table {a:.4f}, npz {b:.4f} ({len(arrays['val_labels'])} val images)")
    assert abs(a - b) <= 0.02


def test_a_table_mistake_is_one_line_from_the_command_before_ray(chexpert, capsys):
    """search/run.py itself (in process): exit 2, one `error:` line, no Ray session."""
    import ray

    from search.driver.pipeline import main

    labels = _bad_table(chexpert, BAD["missing files"][0])
    argv = ["--task", "table", "--data-dir", str(chexpert.data_dir), "--labels", labels]
    connected = ray.is_initialized()  # another test of this session may have connected
    code = main([*argv, "--wandb", "off"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: 7 of "), err
    assert ray.is_initialized() == connected  # the command started no Ray
