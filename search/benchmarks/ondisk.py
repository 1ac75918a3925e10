"""Datasets on disk for the stream section: written in chunks, dropped from the page cache,
and how much of them the page cache holds.

    write_npz(path, n_train=18000, n_val=2000, size=224)   # 3.0 GB, in constant memory
    evict([path])                  # this file's clean pages leave the page cache (nobody else's)
    resident_mb([path, ...])       # MB of these files in the page cache (mincore), shared or not

The npz is what a user has (MedMNIST's layout, uncompressed), so the node cache that the
streaming path writes from it (`search.data.node_data`) is measured as a trial meets it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import zipfile
from collections.abc import Iterable, Iterator

import numpy as np

from search.benchmarks.core import CLASSES

_POOL = 256
"""Random images drawn once and written again shifted by the chunk's number: a 3 GB set is
written at disk speed rather than at the random generator's (about 0.1 GB/s here)."""


def write_npz(path: str, n_train: int, n_val: int, size: int, seed: int = 0) -> int:
    """Random RGB uint8 images and labels cycling over `CLASSES`, in MedMNIST's npz layout
    (`{train,val}_images`, `{train,val}_labels`), written chunk by chunk; its size in bytes."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (min(_POOL, max(n_train, n_val)), size, size, 3), np.uint8)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for split, n in (("train", n_train), ("val", n_val)):
            _member(zf, f"{split}_images", (n, size, size, 3), _chunks(pool, n))
            labels = (np.arange(n) % CLASSES).reshape(-1, 1).astype(np.uint8)
            _member(zf, f"{split}_labels", labels.shape, iter([labels]))
    return os.path.getsize(path)


def _chunks(pool: np.ndarray, n: int) -> Iterator[np.ndarray]:
    out = np.empty_like(pool)
    for i, start in enumerate(range(0, n, len(pool))):
        rows = min(len(pool), n - start)
        np.add(pool[:rows], np.uint8(i % 256), out=out[:rows])  # wraps: still uniform bytes
        yield out[:rows]


def _member(zf: zipfile.ZipFile, name: str, shape: tuple, chunks: Iterable[np.ndarray]) -> None:
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": tuple(shape)}
    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk).data)


def files_under(folder: str, suffix: str = ".npy") -> list[str]:
    """The files ending in `suffix` under `folder` (a node cache's arrays)."""
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.endswith(suffix)
    )


def evict(paths: Iterable[str]) -> None:
    """Write back, then drop these files' pages from the page cache (POSIX_FADV_DONTNEED): a
    cold read of them without dropping the whole machine's cache (which needs root and
    slows everyone's work)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_mb(paths: Iterable[str]) -> float:
    """MB of these files held in the page cache, mapped by a process or not (mincore(2) on a
    fresh mapping, which touches no page)."""
    return sum(_resident_bytes(p) for p in paths) / 2**20


def _resident_bytes(path: str) -> int:
    size = os.path.getsize(path)
    if size == 0:
        return 0
    libc = _libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            return int((np.frombuffer(vec, np.uint8) & 1).sum()) * mmap.PAGESIZE
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc
