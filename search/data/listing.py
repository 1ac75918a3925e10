"""List a dataset folder once, locally or on object storage, with every file's size and mtime.

    tree = list_tree("cell_images")            # or "s3://bucket/prefix" (through pyarrow.fs)
    tree.subfolders("")                        # ["Parasitized", "Uninfected"]
    tree.images_in("Parasitized")              # ["Parasitized/C33P1thinF_....png", ...]
    tree.files["Parasitized/a.png"]            # (size, mtime_ns): what makes ingest incremental

One listing serves every check of a plan (layout, classes, pairs) and its fingerprint, so a
100,000-file folder is walked once and no file is opened. Names starting with `.` and folders
starting with `__` are left out (caches, `__MACOSX`, Thumbs.db stays but is not an image).
URIs go through `search.experiment.storage.filesystem` (pyarrow.fs): one recursive listing.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from search.data.images import IMAGE_EXTENSIONS
from search.experiment.storage import filesystem, is_uri


@dataclass
class Tree:
    """The files (relative, `/`-separated: {path: (size, mtime_ns)}) and folders under a root."""

    root: str
    files: dict[str, tuple[int, int]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)

    def is_dir(self, rel: str) -> bool:
        return rel == "" or rel in self.dirs

    def subfolders(self, rel: str) -> list[str]:
        """The names of the folders directly in `rel` ("" is the root), sorted."""
        return sorted(posixpath.basename(d) for d in self.dirs if posixpath.dirname(d) == rel)

    def images_in(self, rel: str) -> list[str]:
        """The image files directly in `rel`, as paths relative to the root, sorted."""
        return sorted(
            f
            for f in self.files
            if posixpath.dirname(f) == rel and f.lower().endswith(IMAGE_EXTENSIONS)
        )

    def path(self, rel: str) -> str:
        """The full local path or URI of `rel`."""
        if is_uri(self.root):
            return posixpath.join(self.root.rstrip("/"), rel)
        return os.path.join(self.root, *rel.split("/"))


def _hidden(name: str) -> bool:
    return name.startswith((".", "__"))


def list_tree(root: str) -> Tree:
    """Every visible file and folder under `root` (a local folder or a URI)."""
    tree = Tree(root)
    if is_uri(root):
        _list_uri(tree)
    else:
        _list_local(tree, root, "")
    return tree


def _list_local(tree: Tree, folder: str, rel: str) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            if _hidden(entry.name):
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir():
                tree.dirs.add(child)
                _list_local(tree, entry.path, child)
            elif entry.is_file():
                stat = entry.stat()
                tree.files[child] = (stat.st_size, stat.st_mtime_ns)


def _list_uri(tree: Tree) -> None:
    fs, base = filesystem(tree.root)
    base = base.rstrip("/")
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        rel = info.path[len(base) :].lstrip("/")
        if not rel or any(_hidden(part) for part in rel.split("/")):
            continue
        if info.type == pafs.FileType.Directory:
            tree.dirs.add(rel)
        elif info.type == pafs.FileType.File:
            tree.files[rel] = (int(info.size), int(info.mtime_ns or 0))
    for rel in list(tree.files):  # object stores name folders only through their files
        parent = posixpath.dirname(rel)
        while parent and parent not in tree.dirs:
            tree.dirs.add(parent)
            parent = posixpath.dirname(parent)


def is_folder(root: str) -> bool:
    """`root` exists and is a folder (a URI prefix counts when it holds anything)."""
    if not is_uri(root):
        return os.path.isdir(root)
    fs, base = filesystem(root)
    return fs.get_file_info(base).type == pafs.FileType.Directory
