"""Write an npz member by member, a chunk of rows at a time, from rows kept in .npy shards.

    with ShardReader(root) as shards:
        chunks = (shards.take(rows[i : i + 256], (224, 224)) for i in range(0, len(rows), 256))
        members = {"train_images": Streamed((len(rows), 224, 224), np.uint8, chunks),
                   "train_labels": labels}
        write_atomic(path, lambda f: write_members(f, members))

`write_members` writes each member through zipfile's member writer (`force_zip64`, stored,
not deflated: the trials and the node caches read members as raw .npy), the .npy header first
and then the rows as they come, so no member is ever whole in memory. `ShardReader` reads single
rows out of shard files (local or URI, through pyarrow.fs) with positioned reads: nothing is
memory-mapped, so the pages read do not stay in this process's resident memory.
"""

from __future__ import annotations

import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from typing import BinaryIO, NamedTuple

import numpy as np

from search.experiment.storage import filesystem, join_path

OPEN_FILES = 32


class Streamed(NamedTuple):
    """A member written from chunks of rows: its full shape and dtype, and the chunks."""

    shape: tuple[int, ...]
    dtype: np.dtype | type
    chunks: Iterable[np.ndarray]


def write_members(f: BinaryIO, members: dict) -> None:
    """An npz (`name` -> `name.npy`) into an open file; each value an array, a `Streamed`, or a
    function returning an array, called when its member is written."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in members.items():
            if callable(value):  # computed when its turn comes (after the members before it)
                value = value()
            with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                if isinstance(value, Streamed):
                    _write_streamed(out, value, name)
                else:
                    np.lib.format.write_array(out, np.asarray(value), allow_pickle=False)


def _write_streamed(out: BinaryIO, value: Streamed, name: str) -> None:
    dtype = np.dtype(value.dtype)
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(value.shape),
    }
    np.lib.format.write_array_header_2_0(out, header)
    rows = 0
    for chunk in value.chunks:
        chunk = np.ascontiguousarray(chunk, dtype=dtype)
        out.write(chunk.reshape(-1).view(np.uint8).data)  # no copy
        rows += len(chunk)
    if rows != value.shape[0]:
        raise RuntimeError(f"{name}: wrote {rows} rows, its header says {value.shape[0]}")


class _Shard(NamedTuple):
    file: object  # a pyarrow RandomAccessFile
    offset: int
    row_shape: tuple[int, ...]
    row_bytes: int


class ShardReader:
    """Rows out of the .npy shards under `root` (a local folder or a URI)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fs = filesystem(root)[0]
        self._open: OrderedDict[str, _Shard] = OrderedDict()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        for shard in self._open.values():
            shard.file.close()
        self._open.clear()

    def take(self, rows: list[tuple[str, int]], row_shape: tuple[int, ...], suffix=".npy"):
        """uint8 (len(rows), *row_shape) from (shard id, row) pairs; a grayscale row read into
        an RGB shape is repeated over the channels."""
        out = np.empty((len(rows), *row_shape), np.uint8)
        for i, (shard_id, row) in enumerate(rows):
            shard = self._shard(shard_id + suffix)
            data = shard.file.read_at(shard.row_bytes, shard.offset + row * shard.row_bytes)
            pixels = np.frombuffer(data, np.uint8).reshape(shard.row_shape)
            out[i] = pixels[..., None] if len(shard.row_shape) < len(row_shape) else pixels
        return out

    def _shard(self, name: str) -> _Shard:
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        f = self.fs.open_input_file(filesystem(join_path(self.root, name))[1])
        version = np.lib.format.read_magic(f)
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
        if dtype != np.uint8:
            raise ValueError(f"{name}: a shard of {dtype}, expected uint8; delete the shard cache")
        shard = _Shard(f, f.tell(), tuple(shape[1:]), int(np.prod(shape[1:], dtype=np.int64)))
        self._open[name] = shard
        if len(self._open) > OPEN_FILES:
            self._open.popitem(last=False)[1].file.close()
        return shard
