"""The shard cache of an ingest: decoded, resized images in .npy shards plus a JSON manifest each.

    job = DecodeJob(src, root, size=224, mode="auto", masks=False)
    out = decode_batch({"key": keys, "file": files, "mask": masks}, job)   # one shard
    store_outputs(job.root, out)          # writes what a task could not write itself
    index = read_index(job.root)          # {key: Row}: what is decoded, and where
    with ShardReader(job.root) as shards:
        rows = shards.take([index[key] for key in keys])     # uint8 (n, S, S[, 3])

`decode_batch` is the body of every decode task (Ray Data's `map_batches`, or a thread of the
pool when Ray is not up): it reads each file's bytes (a local path, or through pyarrow.fs for
a URI), finds whether the image is grayscale, decodes and resizes it (`search.data.images`),
decodes its mask when there is one, and writes one shard: `<id>.npy` (images: (n, S, S) when
every row is grayscale, else (n, S, S, 3) with grayscale rows repeated over RGB), `<id>.masks
.npy`, then `<id>.json` (the manifest, written last: a shard without one does not exist). A
file that cannot be read is named in the manifest's `bad` with its error, never a row.

A task writes the shard itself when it can reach `root` (a URI, or a local folder that holds
the driver's `marker`: a shared or the same disk); otherwise it returns the shard's bytes and
the driver writes them (`store_outputs`). The manifest lists each row's key (the file's path,
size and mtime_ns, and its mask's), so a later ingest decodes only the files it cannot find.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow.fs as pafs

from search.data import images
from search.experiment.storage import filesystem, is_uri, join_path, write_file

MANIFEST, IMAGES, MASKS = ".json", ".npy", ".masks.npy"


@dataclass(frozen=True)
class DecodeJob:
    """What every decode task of one ingest shares (picklable: it travels to Ray's workers)."""

    src: str
    """The root the files are relative to: a local folder or a URI."""
    root: str
    """The shard folder: a local folder or a URI."""
    size: int
    mode: str
    """`auto` (each image as it is: L or RGB), `L` or `RGB` (forced channels)."""
    masks: bool = False
    marker: str = ""
    """A file in a local `root`: a task that sees it writes its shard itself."""


class Row(NamedTuple):
    """Where one decoded file lives: its shard, its row there, whether it was grayscale."""

    shard: str
    row: int
    gray: bool


def decode_batch(batch: dict[str, np.ndarray], job: DecodeJob) -> dict[str, np.ndarray]:
    """Decode a batch of files into one shard; one output row: its manifest (JSON) and, when
    this task cannot reach `job.root`, the shard's bytes."""
    source = _Source(job.src)
    kept, bad, pixels, masks = [], [], [], []
    for key, rel, mask in zip(batch["key"], batch["file"], batch["mask"], strict=True):
        try:
            image, gray, mask_pixels = _decode_one(source, job, str(rel), str(mask))
        except Exception as err:  # Pillow/pydicom raise OSError, SyntaxError, ValueError, ...
            bad.append([str(rel), _problem(str(rel), err)])
            continue
        kept.append([str(key), bool(gray)])
        pixels.append(image)
        masks.append(mask_pixels)
    manifest = {"id": uuid.uuid4().hex, "node": _node_id(), "rows": kept, "bad": bad}
    image_bytes = _npy_bytes(_stack(pixels, job.size))
    mask_bytes = _npy_bytes(np.stack(masks)) if job.masks and masks else b""
    manifest["bytes"] = [len(image_bytes), len(mask_bytes)]
    if _reachable(job):
        write_shard(job.root, manifest, image_bytes, mask_bytes)
        image_bytes = mask_bytes = b""
    return {
        "manifest": np.array([json.dumps(manifest)], dtype=object),
        "images": np.array([image_bytes], dtype=object),
        "masks": np.array([mask_bytes], dtype=object),
    }


def _decode_one(source: _Source, job: DecodeJob, rel: str, mask_rel: str):
    data = source.read(rel)
    mode = images.image_mode(data, name=rel) if job.mode == "auto" else job.mode
    image = images.decode(data, job.size, mode, name=rel)
    if not mask_rel:
        return image, mode == "L", None
    mask_data = source.read(mask_rel)
    _check_same_size(data, mask_data, rel, mask_rel)
    return image, mode == "L", images.decode_mask(mask_data, job.size, name=mask_rel)


def _problem(rel: str, err: Exception) -> str:
    """One line naming the file and what is wrong with it."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return (text if text.startswith(rel) else f"{rel}: {type(err).__name__}: {text}")[:300]


class _Source:
    """Reads files relative to a local folder, or to a URI through one pyarrow filesystem."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.fs, self.base = filesystem(src) if is_uri(src) else (None, "")

    def read(self, rel: str) -> bytes:
        if self.fs is None:
            with open(os.path.join(self.src, rel), "rb") as f:
                return f.read()
        with self.fs.open_input_stream(f"{self.base.rstrip('/')}/{rel}") as f:
            return f.read()


def _check_same_size(image: bytes, mask: bytes, rel: str, mask_rel: str) -> None:
    sizes = images.image_size(image, name=rel), images.image_size(mask, name=mask_rel)
    if sizes[0] != sizes[1]:
        raise ValueError(
            f"mask {mask_rel} is {sizes[1][0]}x{sizes[1][1]}, its image {rel} is "
            f"{sizes[0][0]}x{sizes[0][1]}"
        )


def _stack(pixels: list[np.ndarray], size: int) -> np.ndarray:
    if not pixels:
        return np.zeros((0, size, size), np.uint8)
    if all(p.ndim == 2 for p in pixels):
        return np.stack(pixels)
    return np.stack([p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2) for p in pixels])


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _reachable(job: DecodeJob) -> bool:
    return is_uri(job.root) or bool(job.marker) and os.path.exists(job.marker)


def write_shard(root: str, manifest: dict, image_bytes: bytes, mask_bytes: bytes) -> None:
    """A shard's files, each atomically, the manifest last: a reader sees the shard only once
    it is whole (`read_index` also checks the sizes the manifest records)."""
    shard = join_path(root, manifest["id"])
    write_file(shard + IMAGES, image_bytes)
    if mask_bytes:
        write_file(shard + MASKS, mask_bytes)
    write_file(shard + MANIFEST, json.dumps(manifest).encode())


def store_outputs(root: str, out: dict[str, np.ndarray]) -> list[dict]:
    """The manifests of decode outputs, writing the shards that came back as bytes."""
    manifests = []
    for text, image_bytes, mask_bytes in zip(
        out["manifest"], out["images"], out["masks"], strict=True
    ):
        manifest = json.loads(text)
        if len(image_bytes):
            write_shard(root, manifest, bytes(image_bytes), bytes(mask_bytes))
        manifests.append(manifest)
    return manifests


def read_index(root: str) -> dict[str, Row]:
    """{key: Row} of every shard under `root` (none yet: empty)."""
    fs, base = filesystem(root)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return {}
    index, listing = {}, fs.get_file_info(pafs.FileSelector(base))
    sizes = {info.path: info.size for info in listing}
    for info in listing:
        if not info.path.endswith(MANIFEST):
            continue
        with fs.open_input_stream(info.path) as f:
            manifest = json.loads(f.read())
        shard = info.path[: -len(MANIFEST)]
        images, masks = manifest["bytes"]
        if sizes.get(shard + IMAGES) != images or masks and sizes.get(shard + MASKS) != masks:
            continue  # cut short (a crash before the data reached the disk): decode it again
        for i, (key, gray) in enumerate(manifest["rows"]):
            index[key] = Row(manifest["id"], i, gray)
    return index
