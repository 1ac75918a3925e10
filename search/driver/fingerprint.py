"""Which data a search trains on, as every checkpoint records it (`TrainConfig.data_fingerprint`).

    values["data_fingerprint"] = data_fingerprint(data_file, seed=args.seed, folds=args.folds)

Computed once on the driver, before Ray starts: a MedMNIST npz is named by its MD5 (for an
official file, the digest `medmnist.INFO` lists; a subset or variant has its own); a converted
folder by the fingerprint stored in its npz (relative path, size and mtime of every image plus
the conversion settings: `search.driver.folders`), which reading the npz again would not give.
`split` is the rule that made train/val/test ("medmnist" for the official split, else the
folder split: premade, patient or cell), `seed` the search seed that drew it (and the folds),
`folds` the number of folds (0: the given train/val); a fold's trial adds its `fold` index.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

CHUNK = 1 << 22


def data_fingerprint(path: str, seed: int = 0, folds: int = 0, fold: int | None = None) -> dict:
    """{"file", "md5" or "folder_hash", "split", "seed", "folds", "fold"} of an npz path."""
    out = {
        "file": os.path.basename(path),
        "split": "medmnist",
        "seed": int(seed),
        "folds": int(folds or 0),
        "fold": fold,
    }
    if not os.path.isfile(path):  # a URI: the name is all the driver can cheaply say
        out["file"] = path
        return out
    with np.load(path, allow_pickle=False) as npz:
        if "fingerprint" in npz.files:
            out["folder_hash"] = str(npz["fingerprint"])
            info = json.loads(str(npz["info"])) if "info" in npz.files else {}
            out["split"] = info.get("split", "folder")
            return out
    out["md5"] = file_md5(path)
    return out


def file_md5(path: str) -> str:
    """The MD5 hex digest of a file, read in 4 MiB chunks (about 1 s per GB)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
