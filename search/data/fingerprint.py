"""Every data fingerprint medsweep computes, in one place: which data a search trains on.

    values["data_fingerprint"] = data_fingerprint(data_file, seed=seed, folds=folds)
    key = npz_key(npz_path)                 # a node cache's key (reads the zip directory only)
    digest = conversion_fingerprint(head, parts, file_stats)   # a conversion's cache check

`data_fingerprint` is what every checkpoint records (`TrainConfig.data_fingerprint`).
Computed once on the driver, before Ray starts: a MedMNIST npz is named by its MD5 (for an
official file, the digest `medmnist.INFO` lists; a subset or variant has its own); converted
data by the fingerprint stored in its npz (`conversion_fingerprint`), which reading the npz
again would not give.
`split` is the rule that made train/val/test ("medmnist" for the official split, else the
folder split: premade, patient or cell), `seed` the search seed that drew it (and the folds),
`folds` the number of folds (0: the given train/val); a fold's trial adds its `fold` index.

`npz_key` names an npz by its zip directory (every member's name, size and CRC-32, as the zip
records them: nothing is hashed again, and of a URI only the directory travels): the streaming
path's node caches are keyed by it (`search.data.node_data`). `conversion_fingerprint` is the
converted sources' (folders, segfolders, tables: `search.data.conversion`) check that a cached
conversion is still current: the conversion settings, the labels, and every source image's
relative path, size and mtime; the npz stores it and `data_fingerprint` reports it as
`folder_hash`.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np

from search.experiment.storage import filesystem, is_uri

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


def npz_key(path: str) -> str:
    """A content key of an npz (local path or URI) from its zip directory: every member's name,
    size and CRC-32."""
    with _open_zip(path) as zf:
        entries = sorted((i.filename, i.file_size, i.CRC) for i in zf.infolist())
    return hashlib.sha256(repr(entries).encode()).hexdigest()[:20]


def conversion_fingerprint(head: dict, parts: dict, file_stats: dict) -> str:
    """A planned conversion's fingerprint (`search.data.conversion.Conversion`): its settings
    (`head`), each split's size and labels, and every file's relative path, size and mtime:
    what decides whether a converted npz is still current."""
    digest = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
    for split in sorted(parts):
        files, labels = parts[split]
        digest.update(f"{split}\0{len(files)}\n".encode())
        if labels is not None:
            digest.update(np.ascontiguousarray(labels).tobytes())
    for rel in sorted(file_stats):
        size, mtime = file_stats[rel]
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def path_tag(path: str) -> str:
    """A short tag of a path (8 hex digits): two datasets may share a folder name."""
    return hashlib.sha256(path.encode()).hexdigest()[:8]


def _open_zip(path: str) -> zipfile.ZipFile:
    if not is_uri(path):
        return zipfile.ZipFile(path)
    fs, fs_path = filesystem(path)
    return zipfile.ZipFile(fs.open_input_file(fs_path))
