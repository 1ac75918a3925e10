"""A planned conversion of image files into the npz the trials read, and where it is cached.

    conversion = Conversion(src, parts, image_size=64, channels=None, settings={...})
    path = cache_file(conversion, cache_dir)      # <cache>/<name>-<fingerprint>.npz
    if not is_current(path):
        info = search.data.ingest.run(conversion, path, skip_bad=False)   # decode, write

Every file-based source (folder, malaria, segfolder, table) plans a `Conversion` on the driver
before Ray starts (listing, labels, split and fingerprint: every check that needs no pixel), and
`search.data.ingest` carries it out once Ray is up (decode and resize as Ray Data tasks over the
cluster, incremental). The converted npz lives in a cache folder keyed by the fingerprint,
outside the sources (`--cache-dir`, `$MEDSWEEP_CACHE_DIR`, else `$XDG_CACHE_HOME/medsweep/data`):
nothing is written into the user's data folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from search.data.fingerprint import conversion_fingerprint

FORMAT_VERSION = 3  # part of every fingerprint: bump it when a conversion changes


@dataclass(frozen=True)
class Conversion:
    """What to decode, how, and the arrays that go beside the images."""

    src: str
    """The root the files are relative to: a local folder or a URI (s3://bucket/prefix)."""
    parts: dict[str, tuple[list[str], np.ndarray]]
    """{split: (image files relative to src, labels)}: labels (N, 1) class ids, (N, C) 0/1
    (multilabel; -1 = unknown, masked out), or for segmentation None (the masks are decoded)."""
    image_size: int
    channels: int | None
    """1, 3, or None: 1 when every image is grayscale, else 3."""
    settings: dict
    """The conversion settings that change the result (split, seed, policies, ...)."""
    name: str = "dataset"
    """A readable stem for the cache file (the data folder's name, or the task's)."""
    masks: dict[str, list[str]] | None = None
    """Segmentation: {split: mask files relative to src}, in the order of `parts`."""
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    """Arrays stored as given: `classes`, `{split}_files`, `{split}_patients`, ..."""
    info: dict = field(default_factory=dict)
    """JSON-able facts stored in the npz's `info` (counts, split, ...)."""
    file_stats: dict[str, tuple[int, int]] = field(default_factory=dict)
    """{relative file: (size, mtime_ns)} of every image and mask, as listed: the fingerprint's
    input and what makes a second ingest incremental."""

    def fingerprint(self) -> str:
        """The settings, the image size and channels, every split's labels, and every file's
        path, size and mtime (`search.data.fingerprint.conversion_fingerprint`)."""
        head = {
            "format": FORMAT_VERSION,
            "image_size": self.image_size,
            "channels": self.channels,
            **self.settings,
        }
        return conversion_fingerprint(head, self.parts, self.file_stats)


def default_cache_dir() -> str:
    """`$MEDSWEEP_CACHE_DIR`, else `$XDG_CACHE_HOME/medsweep/data` (~/.cache/medsweep/data)."""
    if os.environ.get("MEDSWEEP_CACHE_DIR"):
        return os.environ["MEDSWEEP_CACHE_DIR"]
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return os.path.join(xdg, "medsweep", "data")


def cache_file(conversion: Conversion, cache_dir: str | None = None) -> str:
    """The npz this conversion is kept as: `<cache>/<name>-<fingerprint[:16]>.npz`."""
    root = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    os.makedirs(root, exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in conversion.name) or "data"
    return os.path.join(root, f"{name}-{conversion.fingerprint()[:16]}.npz")


def is_current(path: str, fingerprint: str) -> dict | None:
    """The stored `info` of the npz at `path` when it was built from `fingerprint`, else None
    (missing, damaged or stale: build it again)."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["fingerprint"]) != fingerprint:
                return None
            return json.loads(str(npz["info"]))
    except (OSError, ValueError, KeyError):
        return None


def stat_files(src: str, files: list[str]) -> dict[str, tuple[int, int]]:
    """{file: (size, mtime_ns)} of local files relative to `src` (one stat each)."""
    out = {}
    for rel in files:
        st = os.stat(os.path.join(src, rel))
        out[rel] = (st.st_size, st.st_mtime_ns)
    return out
