"""One picklable split reader: what training, folds, attribution and the test prediction take,
whatever the data path.

    reader = SplitReader.resident(arrays, source)   # the driver, Ray up: train/val put once
    reader = SplitReader.node_cached(source)        # streamed: each node maps its own cache
    reader = SplitReader.npz(path, task)            # this process reads the npz (tests, tools)
    data = reader.arrays()                 # a trial, where it runs: {train,val}_images, _labels
    reader.labels("val"), reader.files("train")     # the driver: no image read when node-cached
    reader = reader.with_split("test")     # after the search: the test split, read once
    test = reader.arrays(("test",))        # where the prediction runs

Three small frozen classes behind one interface, so no consumer asks which path it is on:
- `ResidentReader`: each split's arrays put in the object store once (`ray.put`, on the driver:
  Ray must be up), the reader holding only the references; `arrays` is `ray.get`, zero-copy
  read-only arrays on the trial's node. `with_split("test")` reads the test split from the npz
  on the driver, once, after the search, and puts it beside the others: the search's nodes
  need no copy of the npz, as on the resident path they never did.
- `CachedReader`: the descriptor (`search.data.node_data.DataSource`: labels, sizes, the npz's
  path and key); `arrays` maps this node's cache (`node_arrays`: written once per node, then
  memory-mapped by every trial there); `labels`/`files` come from the descriptor, so the driver
  reads no image. Every split, test included, is read where it is used.
- `NpzReader`: the npz read by the calling process at every call (`load_npz`): no Ray, no cache.

A reader pickles small (references, or the descriptor with its labels): it reaches trials
through `tune.with_parameters`, and Ray tasks as an argument. A resident reader's references
die with the driver that put them: a resumed search makes a new reader.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from search.data.node_data import DataSource, node_arrays
from trainables.data import SEARCH_SPLITS, load_npz, npz_headers
from trainables.tasks import Task


class SplitReader(ABC):
    """Reads a dataset's splits (`{split}_images`, `{split}_labels`, `{split}_files` where
    the data has file names) where it is called; build one with `resident`, `node_cached` or
    `npz`."""

    @staticmethod
    def resident(
        arrays: Mapping[str, np.ndarray], source: DataSource | None = None
    ) -> ResidentReader:
        """Put `arrays` (`{split}_*`, as `load_npz` gives them) in the object store, one
        object per split; `source` (the data's descriptor) names the npz that `with_split`
        reads further splits from."""
        import ray

        splits = dict.fromkeys(key.split("_", 1)[0] for key in arrays)
        refs = {
            split: ray.put({k: v for k, v in arrays.items() if k.startswith(f"{split}_")})
            for split in splits
        }
        nbytes = sum(arrays[f"{s}_images"].nbytes for s in SEARCH_SPLITS if s in splits)
        return ResidentReader(refs, nbytes, source)

    @staticmethod
    def node_cached(source: DataSource) -> CachedReader:
        """Read `source` from the node cache of whichever node calls `arrays`."""
        return CachedReader(source)

    @staticmethod
    def npz(path: str, task: Task) -> NpzReader:
        """Read the npz at `path` (validated against `task`) in the calling process."""
        return NpzReader(path, task)

    @property
    @abstractmethod
    def path(self) -> str | None:
        """The npz the splits come from (None: arrays put without a descriptor)."""

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of the train and val images."""

    @abstractmethod
    def arrays(self, splits: Sequence[str] = SEARCH_SPLITS) -> dict:
        """`{split}_images` and `{split}_labels` of `splits` (and `{split}_files` where the
        reader has them), read here."""

    @abstractmethod
    def labels(self, split: str) -> np.ndarray:
        """The labels of `split` (a searched split: a node-cached reader reads no image)."""

    @abstractmethod
    def files(self, split: str) -> np.ndarray | None:
        """The file names of `split` where the reader has them (converted data under
        `--folds`), else None."""

    @abstractmethod
    def patients(self, split: str) -> np.ndarray | None:
        """The patient id of each row of `split` where the data names them (a label table's
        patient column, a folder's file names; under `--folds`), else None."""

    def with_split(self, split: str) -> SplitReader:
        """A reader that can also read `split` (module docstring); this one by default."""
        return self


@dataclass(frozen=True)
class ResidentReader(SplitReader):
    """Splits in the object store: `SplitReader.resident`."""

    refs: Mapping
    """{split: ObjectRef of that split's arrays}."""
    size: int
    """Bytes of the train and val images (`nbytes`)."""
    source: DataSource | None = None

    @property
    def path(self) -> str | None:
        return self.source.path if self.source is not None else None

    @property
    def nbytes(self) -> int:
        return self.size

    def arrays(self, splits: Sequence[str] = SEARCH_SPLITS) -> dict:
        import ray

        missing = [s for s in splits if s not in self.refs]
        if missing:
            raise ValueError(
                f"this reader holds the {sorted(self.refs)} split(s), not {missing}; the test "
                "split is read after the search: reader.with_split('test')"
            )
        out = {}
        for part in ray.get([self.refs[s] for s in splits]):
            out.update(part)
        return out

    def labels(self, split: str) -> np.ndarray:
        return self.arrays((split,))[f"{split}_labels"]

    def files(self, split: str) -> np.ndarray | None:
        return self.arrays((split,)).get(f"{split}_files")

    def patients(self, split: str) -> np.ndarray | None:
        return self.arrays((split,)).get(f"{split}_patients")

    def with_split(self, split: str) -> SplitReader:
        """`split` read from the npz here (the driver) and put beside the others."""
        import ray

        if split in self.refs:
            return self
        if self.source is None:
            raise ValueError(
                f"this reader holds only the arrays it was given, no npz to read {split!r} "
                "from; pass the data's descriptor to SplitReader.resident"
            )
        arrays = load_npz(self.source.path, self.source.task, splits=(split,))
        return ResidentReader({**self.refs, split: ray.put(arrays)}, self.size, self.source)


@dataclass(frozen=True)
class CachedReader(SplitReader):
    """Splits from each node's cache: `SplitReader.node_cached`."""

    source: DataSource

    @property
    def path(self) -> str:
        return self.source.path

    @property
    def nbytes(self) -> int:
        return self.source.nbytes

    def arrays(self, splits: Sequence[str] = SEARCH_SPLITS) -> dict:
        return node_arrays(self.source, splits)

    def labels(self, split: str) -> np.ndarray:
        return self.source.labels[f"{split}_labels"]

    def files(self, split: str) -> np.ndarray | None:
        return self.source.labels.get(f"{split}_files")

    def patients(self, split: str) -> np.ndarray | None:
        return self.source.labels.get(f"{split}_patients")


@dataclass(frozen=True)
class NpzReader(SplitReader):
    """The npz read by the caller at every call: `SplitReader.npz`."""

    file: str
    task: Task

    @property
    def path(self) -> str:
        return self.file

    @property
    def nbytes(self) -> int:
        headers = npz_headers(self.file)
        return sum(
            int(np.prod(shape)) * dtype.itemsize
            for name, (shape, dtype) in headers.items()
            if name in {f"{s}_images" for s in SEARCH_SPLITS}
        )

    def arrays(self, splits: Sequence[str] = SEARCH_SPLITS) -> dict:
        return load_npz(self.file, self.task, splits=splits)

    def labels(self, split: str) -> np.ndarray:
        return self._member(f"{split}_labels", required=True)

    def files(self, split: str) -> np.ndarray | None:
        return self._member(f"{split}_files", required=False)

    def patients(self, split: str) -> np.ndarray | None:
        return self._member(f"{split}_patients", required=False)

    def _member(self, name: str, required: bool) -> np.ndarray | None:
        with np.load(self.file, allow_pickle=False) as npz:
            return npz[name] if required or name in npz.files else None
