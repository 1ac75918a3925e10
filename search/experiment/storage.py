"""Paths and storage URIs alike: one module for everything that reads or writes an experiment.

    path = join_path(experiment, trial_id, "checkpoint")   # local path or s3:// / gs:// URI
    write_text(join_path(experiment, "search.json"), text)  # atomic locally
    write_file(join_path(experiment, "trials.parquet"), lambda f: pq.write_table(table, f))
    info = read_json(join_path(experiment, "search.json"))  # None when the file is missing

Local files are written atomically (`trainables.files.write_atomic`, the one implementation:
a temp file in the same folder, then `os.replace`); URIs go through `pyarrow.fs`, which is also
what Ray uses for S3/GCS, from here and nowhere else.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np
import pyarrow.fs as pafs

from trainables.files import write_atomic


def is_uri(path: str) -> bool:
    """True for `s3://...`, `gs://...` and other URIs; False for local paths."""
    return "://" in str(path)


def join_path(base: str, *parts: str) -> str:
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def absolute(path: str) -> str:
    """An absolute local path, or the URI unchanged."""
    return path if is_uri(path) else os.path.abspath(path)


def same_place(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    return pafs.FileSystem.from_uri(absolute(path))


def write_file(path: str, data: bytes | Callable[[BinaryIO], object]) -> None:
    """Write `data` (bytes, or a function that writes to a binary file) to a path or URI: a
    local path atomically (`trainables.files.write_atomic`), a URI through `pyarrow.fs`."""
    if not is_uri(path):
        write_atomic(path, data)
        return
    fs, fs_path = filesystem(path)
    fs.create_dir(fs_path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(fs_path) as f:
        data(f) if callable(data) else f.write(data)


def write_bytes(path: str, data: bytes) -> None:
    write_file(path, data)


def read_bytes(path: str) -> bytes | None:
    """A file's bytes; None when it does not exist."""
    if not is_uri(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
    fs, fs_path = filesystem(path)
    if fs.get_file_info(fs_path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(fs_path) as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def read_text(path: str) -> str:
    """A text file's contents; FileNotFoundError names the path when it is missing."""
    data = read_bytes(path)
    if data is None:
        raise FileNotFoundError(f"{path} does not exist")
    return data.decode()


def read_json(path: str) -> dict | None:
    """A JSON file's contents; None when it does not exist."""
    data = read_bytes(path)
    return None if data is None else json.loads(data)


def write_npz(path: str, **arrays) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def copy_dir(src: str, dst: str) -> None:
    """Copy a folder between local paths and/or URIs, file by file.

    (`pyarrow.fs.copy_files` takes an S3 prefix for a single object.)
    """
    src_fs, src_path = filesystem(src)
    dst_fs, dst_path = filesystem(dst)
    dst_fs.create_dir(dst_path, recursive=True)
    for info in src_fs.get_file_info(pafs.FileSelector(src_path, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        target = dst_path + info.path[len(src_path.rstrip("/")) :]
        dst_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with src_fs.open_input_stream(info.path) as f, dst_fs.open_output_stream(target) as g:
            g.write(f.read())


def local_copy(path: str) -> str:
    """A local folder with the contents of `path` (the path itself when it is local)."""
    if not is_uri(path):
        return path
    local = tempfile.mkdtemp(prefix="medsweep-copy-")
    copy_dir(path, local)
    return local


@contextlib.contextmanager
def local_dir(target: str) -> Iterator[str]:
    """A local folder to write into; uploaded to `target` afterwards when it is a URI."""
    if not is_uri(target):
        os.makedirs(target, exist_ok=True)
        yield target
        return
    with tempfile.TemporaryDirectory(prefix="medsweep-out-") as tmp:
        yield tmp
        copy_dir(tmp, target)
