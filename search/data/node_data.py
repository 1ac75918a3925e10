"""The streaming path's data on each node: a small descriptor on the driver, a per-node cache of
raw .npy files on the workers, memory-mapped by every trial of the node.

    source = describe(npz_path, task, image_size)        # the driver: no image is read
    source = describe(npz_path, task, image_size, labels=file_arrays(npz_path))  # + file names
    arrays = node_arrays(source)                 # a worker: {train,val}_images memmaps + labels
    test = node_arrays(source, ("test",))        # after the search, where the test task runs

Trials and the after-search work take the descriptor inside a split reader
(`search.data.reader.SplitReader.node_cached`), which calls `node_arrays` where it reads.

`describe` reads the npz's zip directory and the labels: its `key` is the npz's content
fingerprint (`search.data.fingerprint.npz_key`: the zip directory, nothing is hashed again).
`node_arrays` runs on the node that trains: the first process there takes a file lock
(`<cache>/<key>.lock`, filelock), writes each split's members as uncompressed .npy files
(`<cache>/<key>/{split}_images.npy`, a temp file then `os.replace`, so a reader never sees half
a file), and every later process finds them and maps them (`np.load(mmap_mode="r")`): the
images live once per node, in the page cache, shared by all its trials. The npz comes from
its local path when this node has the same file, from storage when the path is a URI (copied
down once, under the same lock), or, for MedMNIST tasks, from medmnist's URL (downloaded once
per node, `search.data.downloads`). The cache folder is `$MEDSWEEP_NODE_CACHE` (as the
driver saw it, else as the node sees it) or `<tmp>/medsweep-node-cache`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from filelock import FileLock

from search.data.downloads import ensure_dataset
from search.data.fingerprint import npz_key
from search.experiment.storage import filesystem, is_uri
from trainables.data import SEARCH_SPLITS, STATS_KEY, channel_stats, inspect_npz
from trainables.files import write_atomic
from trainables.tasks import Task

log = logging.getLogger("medsweep")
CACHE_ENV = "MEDSWEEP_NODE_CACHE"
_CHUNK = 16 << 20


@dataclass(frozen=True)
class DataSource:
    """What a streamed trial is handed instead of the arrays (a few KB plus the labels)."""

    path: str
    """The npz: a local path (the same on every node, or fetched per node) or a URI."""
    key: str
    """Content fingerprint of the npz (zip members' names, sizes, CRC-32s)."""
    task: Task
    image_size: int
    sizes: dict
    """Image bytes per split described."""
    labels: dict
    """`{train,val}_labels` (and `{train,val}_files` where the npz has them)."""
    downloadable: bool = False
    """A missing npz may be downloaded on the node (MedMNIST: `search.data.downloads`)."""
    cache_dir: str | None = None
    """The driver's `$MEDSWEEP_NODE_CACHE`, if set (else each node's own, or the default)."""

    @property
    def nbytes(self) -> int:
        """Bytes of the train and val images."""
        return sum(self.sizes.get(s, 0) for s in SEARCH_SPLITS)


def describe(
    path: str,
    task: Task,
    image_size: int,
    labels: dict | None = None,
    downloadable: bool = False,
) -> DataSource:
    """The descriptor of `path` for streamed trials (the driver; reads no image: of a URI,
    only the zip directory, the .npy headers and the labels travel). `labels` adds arrays
    (the `{split}_files` and `_patients` of converted data); `downloadable`: a node without
    the file may download it (MedMNIST)."""
    if is_uri(path):
        fs, fs_path = filesystem(path)
        with fs.open_input_file(fs_path) as f:
            found, sizes = inspect_npz(f, task, name=path)
    else:
        found, sizes = inspect_npz(path, task)
    return DataSource(
        path=path,
        key=npz_key(path),
        task=task,
        image_size=image_size,
        sizes=sizes,
        labels={**found, **(labels or {})},
        downloadable=downloadable,
        cache_dir=os.environ.get(CACHE_ENV),
    )


def cache_root(source: DataSource) -> str:
    root = source.cache_dir or os.environ.get(CACHE_ENV)
    return root or os.path.join(tempfile.gettempdir(), "medsweep-node-cache")


def node_arrays(source: DataSource, splits: Sequence[str] = SEARCH_SPLITS) -> dict:
    """`{split}_images` (read-only memmaps of this node's cache) and `{split}_labels` of
    `splits`, plus the descriptor's file names; the cache is written on first use."""
    folder = os.path.join(cache_root(source), source.key)
    names = [f"{s}_{part}" for s in splits for part in ("images", "labels")]
    if not all(os.path.isfile(os.path.join(folder, f"{n}.npy")) for n in names):
        os.makedirs(cache_root(source), exist_ok=True)
        with FileLock(folder + ".lock"):
            _fill(source, folder, names)
    out = {n: np.load(os.path.join(folder, f"{n}.npy"), mmap_mode="r") for n in names}
    if "train" in splits:
        out[STATS_KEY] = _train_stats(folder, out["train_images"])
    for split in splits:
        out[f"{split}_labels"] = np.array(out[f"{split}_labels"])  # small: in memory
        if f"{split}_files" in source.labels:
            out[f"{split}_files"] = source.labels[f"{split}_files"]
    return out


def _train_stats(folder: str, images: np.ndarray) -> tuple[list[float], list[float]]:
    """The training images' channel mean and std, computed once per node beside the cache
    (at 224 px `channel_stats` reads ~300 MB: seconds that a warm trial start need not pay)."""
    path = os.path.join(folder, "train_channel_stats.json")
    if not os.path.isfile(path):
        with FileLock(folder + ".lock"):
            if not os.path.isfile(path):
                mean, std = channel_stats(images)
                write_atomic(path, json.dumps({"mean": mean, "std": std}).encode())
    with open(path) as f:
        stats = json.load(f)
    return stats["mean"], stats["std"]


def cached_files(source: DataSource) -> list[str]:
    """The .npy files this node's cache holds for `source` (what a test counts)."""
    folder = os.path.join(cache_root(source), source.key)
    return (
        sorted(f for f in os.listdir(folder) if f.endswith(".npy"))
        if os.path.isdir(folder)
        else []
    )


def _fill(source: DataSource, folder: str, names: list[str]) -> None:
    """Under the node's lock: write the missing members of `names` into `folder`."""
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, f"{n}.npy"))]
    if not missing:
        return  # another process of this node wrote them while this one waited
    os.makedirs(folder, exist_ok=True)
    started = time.perf_counter()
    npz, fetched = _local_npz(source, folder)
    try:
        with zipfile.ZipFile(npz) as zf:
            need = sum(zf.getinfo(f"{n}.npy").file_size for n in missing)
            _check_space(folder, need)
            for name in missing:
                _extract(zf, f"{name}.npy", os.path.join(folder, f"{name}.npy"))
    finally:
        if fetched:
            os.remove(npz)
    log.warning(
        "node cache: %s -> %s (%.1f MB) in %.1f s",
        os.path.basename(source.path),
        folder,
        need / 2**20,
        time.perf_counter() - started,
    )


def _local_npz(source: DataSource, folder: str) -> tuple[str, bool]:
    """(a local copy of the npz, whether it was fetched for this fill and may be removed)."""
    if is_uri(source.path):
        return _download_uri(source.path, os.path.join(folder, "source.npz")), True
    if not os.path.isfile(source.path) and source.downloadable:
        ensure_dataset(source.task, source.image_size, os.path.dirname(source.path))
    if not os.path.isfile(source.path):
        raise FileNotFoundError(
            f"{source.path} is not on this node ({os.uname().nodename}); streamed data must be "
            "readable on every node: put it on a shared filesystem, or pass --data-dir on "
            "storage (s3://, gs://) that every node reaches"
        )
    if npz_key(source.path) != source.key:
        raise ValueError(
            f"{source.path} on this node ({os.uname().nodename}) differs from the driver's "
            "copy (another version of the file?); give every node the same file"
        )
    return source.path, False


def _extract(zf: zipfile.ZipFile, member: str, target: str) -> None:
    """One member, streamed (constant memory) into place atomically."""
    with zf.open(member) as src:
        write_atomic(target, lambda dst: shutil.copyfileobj(src, dst, _CHUNK))


def _check_space(folder: str, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need * 1.05:
        raise OSError(
            f"node cache {folder}: {need / 2**30:.1f} GB needed, {free / 2**30:.1f} GB free; "
            f"point ${CACHE_ENV} at a larger local disk"
        )


def _download_uri(uri: str, target: str) -> str:
    """Copy `uri` to the local `target` atomically; `target`."""
    fs, fs_path = filesystem(uri)
    with fs.open_input_stream(fs_path) as src:
        write_atomic(target, lambda dst: shutil.copyfileobj(src, dst, _CHUNK))
    return target
