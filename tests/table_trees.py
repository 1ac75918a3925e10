"""Label-table datasets made from real pixels (data/pneumoniamnist.npz) for the table source's
tests: a CheXpert-like tree and an NIH ChestX-ray14-like tree.

    from table_trees import chexpert_tree, nih_tree
    tree = chexpert_tree(tmp_path, patients=40)     # tree.data_dir, tree.rows, tree.pixels
    tree = nih_tree(tmp_path, patients=30)

Each returns a `Tree`: the data folder, the table rows as written (dicts of str) and the
source pixels of every image file (relative path -> uint8 array), so a test can check labels
and pixels row by row. Imported by tests (pytest puts tests/ on sys.path), never by the library.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from trainables.tasks import CHEXPERT_OBSERVATIONS, NIH_FINDINGS

ROOT = Path(__file__).resolve().parents[1]
NPZ = ROOT / "data" / "pneumoniamnist.npz"
CHEXPERT = CHEXPERT_OBSERVATIONS
NIH = NIH_FINDINGS
CELLS = ("1.0", "0.0", "-1.0", "")
"""A CheXpert observation cell: positive, negative, uncertain, not mentioned."""


@dataclass
class Tree:
    data_dir: Path
    rows: list[dict[str, str]] = field(default_factory=list)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    """Every image written: path relative to data_dir -> its source pixels."""
    npz_split: dict[str, str] = field(default_factory=dict)
    """Every image's split in pneumonia.csv (train / val / test, by patient)."""
    npz_label: dict[str, int] = field(default_factory=dict)


def pneumonia_images(n: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """`n` images of pneumoniamnist's train split drawn at random, in the order drawn (the
    file groups its labels): (pixels, label)."""
    with np.load(NPZ) as npz:
        images, labels = npz["train_images"], npz["train_labels"][:, 0]
    rows = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return [(images[i], int(labels[i])) for i in rows]


def patient_split(p: int) -> str:
    """The split of patient `p` in pneumonia.csv: every 7th in val, the next in test."""
    return {0: "val", 1: "test"}.get(p % 7, "train")


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",", bom=False) -> None:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)


def chexpert_tree(root: Path, patients: int = 40, ext: str = ".jpg", seed: int = 0) -> Tree:
    """`root/CheXpert-v1.0-small/train/patientNNNNN/studyK/viewV_{frontal,lateral}.jpg`, a
    train.csv (Path, Sex, Age, Frontal/Lateral, AP/PA and the 14 observations holding 1.0,
    0.0, -1.0 and blanks; Pneumonia as the npz label with a few -1.0 and blanks) with 1-4
    images per patient, some lateral; and pneumonia.csv (Path, Pneumonia as 0.0/1.0, split by
    patient: `patient_split`) over the frontal images."""
    rng = np.random.default_rng(seed)
    data_dir = root / "CheXpert-v1.0-small"
    tree = Tree(data_dir)
    images = iter(pneumonia_images(patients * 4))
    for p in range(1, patients + 1):
        for study in range(1, int(rng.integers(1, 3)) + 1):
            views = ["frontal"] + (["lateral"] if rng.uniform() < 0.3 else [])
            for v, view in enumerate(views, start=1):
                pixels, label = next(images)
                rel = f"train/patient{p:05d}/study{study}/view{v}_{view}{ext}"
                _save(data_dir / rel, pixels)
                tree.pixels[rel], tree.npz_label[rel] = pixels, label
                tree.npz_split[rel] = patient_split(p)
                tree.rows.append(_chexpert_row(rng, rel, view, label))
    write_csv(data_dir / "train.csv", tree.rows)
    frontal = [r for r in tree.rows if r["Frontal/Lateral"] == "Frontal"]
    write_csv(data_dir / "pneumonia.csv", [_pneumonia_row(tree, r["Path"]) for r in frontal])
    return tree


def _chexpert_row(rng, rel: str, view: str, label: int) -> dict[str, str]:
    row = {
        "Path": f"CheXpert-v1.0-small/{rel}",
        "Sex": str(rng.choice(["Male", "Female"])),
        "Age": str(int(rng.integers(20, 90))),
        "Frontal/Lateral": view.capitalize(),
        "AP/PA": str(rng.choice(["AP", "PA"])) if view == "frontal" else "",
    }
    for name in CHEXPERT:
        row[name] = str(rng.choice(CELLS, p=[0.25, 0.3, 0.15, 0.3]))
    row["No Finding"] = str(rng.choice(["1.0", ""]))
    row["Pneumonia"] = str(rng.choice(["-1.0", ""])) if rng.uniform() < 0.1 else f"{label}.0"
    return row


def _pneumonia_row(tree: Tree, path: str) -> dict[str, str]:
    rel = path.split("/", 1)[1]
    return {"Path": path, "Pneumonia": f"{tree.npz_label[rel]}.0", "split": tree.npz_split[rel]}


def add_chexpert_valid(tree: Tree, patients: int = 5, first: int = 64541) -> list[str]:
    """valid.csv with `patients` new patients under valid/ (0/1 only, as CheXpert's); the
    relative paths of its frontal images."""
    rng = np.random.default_rng(1)
    rows, frontal = [], []
    images = pneumonia_images(2 * patients, seed=1)
    for i, (pixels, label) in enumerate(images):
        view = "frontal" if i % 2 == 0 else "lateral"
        rel = f"valid/patient{first + i // 2:05d}/study1/view{i % 2 + 1}_{view}.jpg"
        _save(tree.data_dir / rel, pixels)
        tree.pixels[rel] = pixels
        row = _chexpert_row(rng, rel, view, label)
        rows.append({k: v if v != "-1.0" else "0.0" for k, v in row.items()})
        frontal += [rel] if view == "frontal" else []
    write_csv(tree.data_dir / "valid.csv", rows)
    return frontal


def nih_tree(root: Path, patients: int = 30, seed: int = 0) -> Tree:
    """`root/nih/images_00K/images/NNNNNNNN_VVV.png` (PNG), Data_Entry_2017.csv (Image Index,
    Finding Labels joined by |, Follow-up #, Patient ID, ...) with 1-4 images per patient, and
    train_val_list.txt / test_list.txt splitting the patients (every fifth patient in test)."""
    rng = np.random.default_rng(seed)
    data_dir = root / "nih"
    tree = Tree(data_dir)
    images = iter(pneumonia_images(patients * 4))
    lists = {"train_val_list.txt": [], "test_list.txt": []}
    for p in range(1, patients + 1):
        for follow_up in range(int(rng.integers(1, 5))):
            pixels, label = next(images)
            name = f"{p:08d}_{follow_up:03d}.png"
            rel = f"images_{1 + p % 2:03d}/images/{name}"
            _save(data_dir / rel, pixels)
            tree.pixels[rel] = pixels
            findings = [f for f in NIH if f != "Pneumonia" and rng.uniform() < 0.15]
            findings += ["Pneumonia"] if label else []
            row = {"Image Index": name, "Finding Labels": "|".join(findings) or "No Finding"}
            row |= {"Follow-up #": str(follow_up), "Patient ID": str(p)}
            row |= {"Patient Age": str(int(rng.integers(20, 90))), "View Position": "PA"}
            tree.rows.append(row)
            lists["test_list.txt" if p % 5 == 0 else "train_val_list.txt"].append(name)
    write_csv(data_dir / "Data_Entry_2017.csv", tree.rows)
    for name, lines in lists.items():
        (data_dir / name).write_text("\n".join(lines) + "\n")
    return tree
