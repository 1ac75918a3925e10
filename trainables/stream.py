"""The streaming data path: uint8 rows read from memory-mapped arrays, a batch at a time, ahead.

    rows = Rows([np.load("train_images.npy", mmap_mode="r")])   # nothing is read yet
    rows.take(np.array([5, 1, 9]))                               # (3, H, W[, C]) uint8, that order
    folds = Rows([train_mm, val_mm]).subset(idx)                 # rows of train+val, no copy
    source = Streamed(rows, device)                              # what a trial trains on
    for x in device_batches(source, batch_indices(len(source), 128, True, g)):
        ...                                                      # uint8 (B, C, H, W) on device
    path = choose_path(train_val_bytes, resident_budget(...))    # "resident" or "stream"

`device_batches(x, index_batches)` is the one way the training loop reads images: `x` is either
a uint8 (N, C, H, W) tensor on the device (the resident path: `x[idx]`) or a `Streamed` (a
background thread gathers each batch's rows, sorted, from the memmap into pinned memory when
CUDA is used, in the batch's own order; the main thread copies it to the device with
`non_blocking` on a side stream one batch ahead; `PREFETCH` batches wait in the queue). The
index batches are the same (`trainables.data.batch_indices`, seeded), so both paths train on
the same images in the same order, and the torch RNG (augmentation) is untouched by the thread.

The budget (`resident_budget`, shares in `RESIDENT_SHARES`) says when train+val stay resident
(today's path: one `ray.put`, uint8 on the device) and when they stream. Where the arrays come
from on each node (a per-node cache of raw .npy files, written once under a file lock) is the
search's business: `search/data/node_data.py`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

RESIDENT, STREAM = "resident", "stream"
DATA_PATHS = ("auto", RESIDENT, STREAM)
PREFETCH = 3
"""Batches gathered ahead of the one being trained on."""
RESIDENT_SHARES = {"gpu": 0.5, "ram": 0.5}
"""When train+val stay resident (`resident_budget`):

- a GPU trial copies them onto its device once: they must fit in `gpu` (half) of its share of
  the device's memory (`gpus_per_trial` x total; the rest holds the model, its activations and
  the optimizer), and the node's object store holds them once: in `ram` of the node's memory;
- a CPU trial holds its own (N, C, H, W) copy beside the object store's: `ram` of the node's
  memory over (trials on the node + 1).

Anything larger streams. `--resident-budget-mb` (or `$MEDSWEEP_RESIDENT_BUDGET_MB`) sets the
budget directly."""


def resident_budget(
    node_ram: float, trials_per_node: int, gpu_memory: float = 0.0, gpus_per_trial: float = 0.0
) -> float:
    """Bytes of train+val images that may stay resident (see `RESIDENT_SHARES`)."""
    ram = node_ram * RESIDENT_SHARES["ram"]
    if gpus_per_trial > 0 and gpu_memory > 0:
        return min(gpu_memory * min(gpus_per_trial, 1.0) * RESIDENT_SHARES["gpu"], ram)
    return ram / (max(trials_per_node, 1) + 1)


def choose_path(nbytes: int, budget: float, forced: str = "auto") -> str:
    """`forced` when it is not `auto`; else resident when `nbytes` fit in `budget`."""
    if forced not in DATA_PATHS:
        raise ValueError(f"data path {forced!r}: choose one of {DATA_PATHS}")
    if forced != "auto":
        return forced
    return RESIDENT if nbytes <= budget else STREAM


class Rows:
    """Rows of one or more uint8 arrays (memmaps) laid end to end, optionally through an index
    (`subset`); reading happens only in `take`."""

    def __init__(self, parts: Sequence[np.ndarray], index: np.ndarray | None = None):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.index = None if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1]) if self.index is None else len(self.index)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.parts[0].shape[1:])

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.row_shape))

    def subset(self, idx) -> Rows:
        """Rows `idx` of these rows (no copy)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Rows(self.parts, idx if self.index is None else self.index[idx])

    def take(self, idx, out: np.ndarray | None = None) -> np.ndarray:
        """Rows `idx` in that order, read in ascending order (one pass over the file)."""
        idx = np.asarray(idx, dtype=np.int64)
        rows = idx if self.index is None else self.index[idx]
        if len(rows) and (rows.min() < 0 or rows.max() >= self.offsets[-1]):
            raise IndexError(f"rows {rows.min()}..{rows.max()} out of 0..{self.offsets[-1] - 1}")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        out = np.empty((len(idx), *self.row_shape), np.uint8) if out is None else out
        for p, part in enumerate(self.parts):
            lo, hi = np.searchsorted(ordered, self.offsets[p : p + 2])
            if hi > lo:
                out[order[lo:hi]] = part[ordered[lo:hi] - self.offsets[p]]
        return out

    def __getitem__(self, idx) -> np.ndarray:
        return self.take(np.arange(len(self))[idx])


def as_rows(images) -> Rows:
    """`images` as `Rows` (an array, memmap or `Rows`)."""
    return images if isinstance(images, Rows) else Rows([images])


def is_streamed(images) -> bool:
    """True for data that should stream by default: `Rows` and memory maps."""
    return isinstance(images, Rows | np.memmap)


@dataclass
class Streamed:
    """A split that streams to `device`: what `Trial.x_train` / `x_val` hold on that path."""

    rows: Rows
    device: torch.device

    def __len__(self) -> int:
        return len(self.rows)


def device_batches(
    x: torch.Tensor | Streamed, index_batches: Iterable[torch.Tensor]
) -> Iterator[torch.Tensor]:
    """uint8 (B, C, H, W) image batches on the device, one per index batch (see module)."""
    if isinstance(x, torch.Tensor):
        for idx in index_batches:
            yield x[idx.to(x.device)]
        return
    yield from _prefetched(x, index_batches)


def _to_nchw(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, H, W[, C]) -> (B, C, H, W); channels-last in memory on CUDA (what the model uses),
    contiguous NCHW on the CPU (what the resident path gives, so the numbers match)."""
    x = batch.unsqueeze(1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
    if device.type == "cuda":
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def _prefetched(source: Streamed, index_batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    device = source.device
    cuda = device.type == "cuda"
    host = _HostBatches(source.rows, index_batches, pin=cuda)
    stream = torch.cuda.Stream(device) if cuda else None
    try:
        nxt = _upload(next(host, None), device, stream)
        while nxt is not None:
            current = nxt
            nxt = _upload(next(host, None), device, stream)  # the copy overlaps this step
            if stream is not None:
                torch.cuda.current_stream(device).wait_stream(stream)
                current.record_stream(torch.cuda.current_stream(device))
            yield _to_nchw(current, device)
    finally:
        host.close()


def _upload(batch: torch.Tensor | None, device, stream) -> torch.Tensor | None:
    if batch is None or stream is None:
        return batch
    with torch.cuda.stream(stream):
        return batch.to(device, non_blocking=True)


class _HostBatches:
    """A daemon thread gathering batches of rows into (pinned) host tensors, `PREFETCH` ahead;
    an error in the thread is raised where the batch would have been."""

    _END = object()

    def __init__(self, rows: Rows, index_batches: Iterable[torch.Tensor], pin: bool):
        self.rows, self.pin = rows, pin
        self.queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(index_batches,), daemon=True)
        self.thread.start()

    def _run(self, index_batches: Iterable[torch.Tensor]) -> None:
        try:
            for idx in index_batches:
                if self.stop.is_set():
                    return
                idx = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
                out = torch.empty(
                    (len(idx), *self.rows.row_shape), dtype=torch.uint8, pin_memory=self.pin
                )
                self.rows.take(idx, out=out.numpy())
                self._put(out)
            self._put(self._END)
        except BaseException as err:  # handed to the consumer
            self._put(err)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        item = self.queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
