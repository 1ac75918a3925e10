"""Carry out a planned `Conversion`: decode and resize every image on the cluster, write the npz.

    conversion = plan_folder(...)[1]                  # the driver, before Ray: no pixel read
    path = cache_file(conversion, cache_dir)
    info = run(conversion, path)                      # after Ray connects (or without Ray)
    info = run(conversion, path, skip_bad=True)       # bad files dropped, listed in info

Decoding runs as Ray Data `map_batches` over every CPU of the cluster when Ray is initialised
(`ray.is_initialized()`: the driver connects first), else in a thread pool on this machine
(tests, tools). Each task decodes a batch of files into one shard of the shard cache
(`search.data.shards`: `<cache>/shards/<key>/`, or `shards=` a folder or URI every node can
reach); the driver then streams the rows, in the conversion's order, into the npz members
(`search.data.npz_stream`): its memory does not grow with the number of images. Shards are
keyed by each file's (path, size, mtime), so a second ingest after some files were added or
changed decodes only those; the arrays come out the same whatever the history.

Every file that cannot be read is collected: one ValueError names the count and the first few,
or with `skip_bad` those rows (their labels and per-row extras too) are dropped and listed in
`info["skipped"]`. Channels None means 1 when every image is grayscale, else 3.

The npz: `{split}_images` uint8 (N, S, S[, 3]), `{split}_labels` (given, or the masks for
segmentation), the conversion's `extra` arrays, `fingerprint` and `info` (JSON: the
conversion's info plus `channels`, `image_size`, `skipped`, `decoded`, `reused` and
`decode_nodes`, {node id: files decoded there}).
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from filelock import FileLock

from search.data.conversion import Conversion, is_current
from search.data.fingerprint import path_tag
from search.data.npz_stream import ShardReader, Streamed, write_members
from search.data.shards import DecodeJob, Row, decode_batch, read_index, store_outputs
from search.experiment.storage import is_uri, join_path
from trainables.data import SPLITS
from trainables.files import write_atomic

log = logging.getLogger("medsweep")
SHARD_FORMAT = 1  # part of the shard folder's key: bump it when decoding changes
CHUNK_ROWS = 128
SHOWN_BAD = 5


@dataclass(frozen=True)
class Item:
    """One row to decode: its image (and mask) and the key its shard row is found by."""

    key: str
    file: str
    mask: str = ""


def ensure(conversion: Conversion, path: str, skip_bad: bool = False) -> dict:
    """The info of the npz at `path`: the cached one when its fingerprint is the
    conversion's, else ingested now, under a file lock (another process may be building it)."""
    fingerprint = conversion.fingerprint()
    info = is_current(path, fingerprint)
    if info is None:
        with FileLock(path + ".lock"):
            info = is_current(path, fingerprint)  # built while this process waited
            if info is None:
                info = run(conversion, path, skip_bad=skip_bad)
    return info


def run(
    conversion: Conversion, path: str, skip_bad: bool = False, shards: str | None = None
) -> dict:
    """Decode what the shard cache lacks, write the npz at `path` atomically; its info."""
    job = decode_job(conversion, shards or os.path.join(os.path.dirname(path), "shards"))
    items = {split: _items(conversion, split) for split in _splits(conversion)}
    index = read_index(job.root)
    todo = list(
        {it.key: it for rows in items.values() for it in rows if it.key not in index}.values()
    )
    manifests = decode(todo, job)
    for manifest in manifests:
        for i, (key, gray) in enumerate(manifest["rows"]):
            index[key] = Row(manifest["id"], i, gray)
    bad = {rel: err for m in manifests for rel, err in m["bad"]}
    total = sum(len(rows) for rows in items.values())
    if bad and not skip_bad:
        raise ValueError(bad_files_message(conversion.src, bad, total))
    kept = {
        split: [i for i, it in enumerate(rows) if it.key in index] for split, rows in items.items()
    }
    rows = {split: [index[items[split][i].key] for i in kept[split]] for split in items}
    channels = conversion.channels or (1 if all(r.gray for rs in rows.values() for r in rs) else 3)
    info = {
        **conversion.info,
        "channels": channels,
        "image_size": conversion.image_size,
        "skipped": [{"file": rel, "error": bad[rel]} for rel in sorted(bad)],
        "decoded": len(todo),
        "reused": total - len(todo),
        "decode_nodes": dict(Counter(m["node"] for m in manifests for _ in m["rows"])),
    }
    assemble(conversion, path, job.root, rows, kept, info)
    return info


def decode_job(conversion: Conversion, shards: str) -> DecodeJob:
    """The decode settings and the shard folder they key: `<shards>/<key>`."""
    mode = {None: "auto", 1: "L", 3: "RGB"}[conversion.channels]
    masks = conversion.masks is not None
    head = [SHARD_FORMAT, conversion.src, conversion.image_size, mode, masks]
    folder = join_path(shards, path_tag(json.dumps(head)))
    return DecodeJob(conversion.src, folder, conversion.image_size, mode, masks)


def _splits(conversion: Conversion) -> list[str]:
    return [s for s in SPLITS if s in conversion.parts] + sorted(
        set(conversion.parts) - set(SPLITS)
    )


def _items(conversion: Conversion, split: str) -> list[Item]:
    files = conversion.parts[split][0]
    masks = conversion.masks[split] if conversion.masks else [""] * len(files)
    return [Item(_key(conversion, f, m), f, m) for f, m in zip(files, masks, strict=True)]


def _key(conversion: Conversion, rel: str, mask: str) -> str:
    parts = [rel, *_stat(conversion, rel)]
    if mask:
        parts += [mask, *_stat(conversion, mask)]
    return "\0".join(map(str, parts))


def _stat(conversion: Conversion, rel: str) -> tuple[int, int]:
    if rel in conversion.file_stats:
        return conversion.file_stats[rel]
    if is_uri(conversion.src):
        raise ValueError(f"{rel}: not in the conversion's file_stats; list it when planning")
    stat = os.stat(os.path.join(conversion.src, rel))
    return stat.st_size, stat.st_mtime_ns


def decode(todo: list[Item], job: DecodeJob) -> list[dict]:
    """Decode `todo` into new shards (Ray Data when Ray is up, else threads); the manifests."""
    if not todo:
        return []
    import ray

    marker = ""
    if not is_uri(job.root):
        os.makedirs(job.root, exist_ok=True)
        marker = os.path.join(job.root, f".driver-{uuid.uuid4().hex}")
        open(marker, "w").close()
    job = DecodeJob(job.src, job.root, job.size, job.mode, job.masks, marker)
    try:
        if ray.is_initialized():
            return _with_ray_data(todo, job)
        return _with_threads(todo, job)
    finally:
        if marker:
            os.remove(marker)


def _columns(items: list[Item]) -> dict[str, np.ndarray]:
    return {
        "key": np.array([it.key for it in items], dtype=object),
        "file": np.array([it.file for it in items], dtype=object),
        "mask": np.array([it.mask for it in items], dtype=object),
    }


def _batch_size(n: int, cpus: float) -> int:
    """About 4 batches per CPU (load balance), 16 to 256 files each."""
    return max(16, min(256, math.ceil(n / max(1.0, 4 * cpus))))


def _with_threads(todo: list[Item], job: DecodeJob) -> list[dict]:
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    size = _batch_size(len(todo), workers)
    batches = [_columns(todo[i : i + size]) for i in range(0, len(todo), size)]
    with ThreadPoolExecutor(max(1, min(8, workers))) as pool:  # Pillow releases the GIL
        outputs = list(pool.map(lambda batch: decode_batch(batch, job), batches))
    return [m for out in outputs for m in store_outputs(job.root, out)]


def _with_ray_data(todo: list[Item], job: DecodeJob) -> list[dict]:
    import ray

    size = _batch_size(len(todo), ray.cluster_resources().get("CPU", 1.0))
    rows = [{"key": it.key, "file": it.file, "mask": it.mask} for it in todo]
    blocks = math.ceil(len(rows) / size)
    ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        decode_batch, fn_kwargs={"job": job}, batch_size=size, batch_format="numpy"
    )
    log.info("ingest: decoding %d file(s) in %d Ray Data task(s)", len(rows), blocks)
    manifests = []
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        manifests += store_outputs(job.root, out)
    return manifests


def bad_files_message(src: str, bad: dict[str, str], total: int) -> str:
    """`<n> of <total> image(s) in <src> could not be read; <what to do>:` and the first few,
    one a line."""
    lines = [f"  {bad[rel]}" for rel in sorted(bad)[:SHOWN_BAD]]
    if len(bad) > SHOWN_BAD:
        lines.append(f"  (and {len(bad) - SHOWN_BAD} more)")
    return (
        f"{len(bad)} of {total} image(s) in {src} could not be read; fix or delete them "
        "(git-lfs pointers and truncated downloads look like this), or pass --skip-bad to "
        "leave them out:\n" + "\n".join(lines)
    )


def assemble(
    conversion: Conversion,
    path: str,
    root: str,
    rows: dict[str, list[Row]],
    kept: dict[str, list[int]],
    info: dict,
) -> None:
    """Stream the rows into the npz at `path` (atomically), in the conversion's order."""
    size = conversion.image_size
    shape = (size, size) if info["channels"] == 1 else (size, size, 3)
    stats: dict[str, list[float]] = {}
    with ShardReader(root) as shards:
        members: dict = {}
        for split, split_rows in rows.items():
            refs = [(r.shard, r.row) for r in split_rows]
            members[f"{split}_images"] = Streamed(
                (len(refs), *shape), np.uint8, _chunks(shards, refs, shape, ".npy")
            )
            labels = conversion.parts[split][1]
            if labels is None:  # segmentation: the masks are the labels
                chunks = _mask_chunks(shards, refs, size, stats.setdefault(split, [0, 0, 0, 0]))
                members[f"{split}_labels"] = Streamed((len(refs), size, size), np.uint8, chunks)
            else:
                members[f"{split}_labels"] = np.asarray(labels)[kept[split]]
        members.update(_extras(conversion, kept))
        members["fingerprint"] = np.array(conversion.fingerprint())
        members["info"] = lambda: np.array(json.dumps(_final_info(conversion, info, stats, kept)))
        write_atomic(path, lambda f: write_members(f, members))


def _chunks(shards: ShardReader, refs: list, shape: tuple, suffix: str):
    for start in range(0, len(refs), CHUNK_ROWS):
        yield shards.take(refs[start : start + CHUNK_ROWS], shape, suffix)


def _mask_chunks(shards: ShardReader, refs: list, size: int, stats: list):
    """The mask rows; counts into `stats` [images with background, with foreground,
    foreground pixels, pixels] on the way."""
    for chunk in _chunks(shards, refs, (size, size), ".masks.npy"):
        flat = chunk.reshape(len(chunk), -1).astype(bool)
        stats[0] += int((~flat).any(1).sum())
        stats[1] += int(flat.any(1).sum())
        stats[2] += int(flat.sum())
        stats[3] += flat.size
        yield chunk


def _extras(conversion: Conversion, kept: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """The extra arrays; per-row ones (`{split}_...` of the split's length) keep kept rows."""
    out = {}
    for name, array in conversion.extra.items():
        split = name.split("_", 1)[0]
        array = np.asarray(array)
        if split in kept and array.ndim and len(array) == len(conversion.parts[split][0]):
            array = array[kept[split]]
        out[name] = array
    return out


def _final_info(conversion: Conversion, info: dict, stats: dict, kept: dict) -> dict:
    """The info with counts after skipped rows, and the masks' counts and foreground share."""
    classes = conversion.extra.get("classes")
    if stats:
        names = [str(c) for c in classes] if classes is not None else ["background", "foreground"]
        info["counts"] = {s: {names[0]: int(v[0]), names[1]: int(v[1])} for s, v in stats.items()}
        info["foreground"] = {s: v[2] / v[3] if v[3] else 0.0 for s, v in stats.items()}
    elif info["skipped"] and classes is not None and "counts" in info:
        from search.data.folder_split import count_labels

        labels = {f"{s}_labels": np.asarray(conversion.parts[s][1])[kept[s]] for s in kept}
        info["counts"] = count_labels(labels, [str(c) for c in classes])
    return info
