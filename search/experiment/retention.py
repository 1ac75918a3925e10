"""What a trial's folder keeps on disk: its best weights, and resume state only while it runs.

    freed = finish_trial("runs/x/a1b2c3d4", "max")    # export the best weights, drop the rest
    size = folder_bytes("runs/x")

A running trial writes a checkpoint every epoch (weights, AdamW state, scheduler: about 3x the
weights) and Ray keeps two of them: the best and the latest (`search.driver.launch.
checkpoint_config`). When the trial ends nothing resumes it again, so `finish_trial` writes
`<trial>/checkpoint/model.pt` from the best of them WITHOUT the optimizer state (weights and the
metadata that loads and explains it: `trainables.checkpoint`) and deletes Ray's `checkpoint_*`
folders (with the Train launcher they lie under `<trial>/train/`). `search.driver.disk` calls it
as each trial ends, and `prune` applies `--keep-checkpoints` once the after-search steps that
read checkpoints (attribution, test, `--repeat-best`, `--ensemble`) are done.

Local folders and URIs alike (`pyarrow.fs`, through `search.experiment.storage`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile

import pyarrow.fs as pafs
import torch

from search.experiment.layout import CHECKPOINT_DIR
from search.experiment.storage import filesystem, is_uri, join_path, local_copy, write_file
from trainables.checkpoint import FILENAME, load_checkpoint
from trainables.scores import CHECKPOINT_SCORE, ranked

log = logging.getLogger("medsweep")

RESUME_PREFIX = "checkpoint_"
"""Ray's checkpoint folders: `checkpoint_000003` (Tune), `train/checkpoint_...` (Train)."""
RESUME_ONLY = ("optimizer", "scheduler")
"""Checkpoint keys only a resumed trial reads (`trainables.train._restore`)."""


def folder_bytes(path: str) -> int:
    """The bytes of every file under `path` (0 when it does not exist)."""
    if not is_uri(path):
        total = 0
        for root, _, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:  # removed while we walked (Ray rotates checkpoints)
                    pass
        return total
    fs, fs_path = filesystem(path)
    infos = _listing(fs, fs_path, recursive=True)
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


def resume_state_dirs(trial_path: str) -> list[str]:
    """Ray's `checkpoint_*` folders of a trial (Tune's in the trial folder, Train's under
    `train/`), sorted by name (the latest last)."""
    fs, fs_path = filesystem(trial_path)
    found = []
    for folder in (fs_path, f"{fs_path.rstrip('/')}/train"):
        for info in _listing(fs, folder):
            if info.type == pafs.FileType.Directory and info.base_name.startswith(RESUME_PREFIX):
                found.append(info.path)
    found.sort(key=os.path.basename)
    prefix = trial_path[: len(trial_path) - len(fs_path)] if is_uri(trial_path) else ""
    return [prefix + p for p in found]


def exported_path(trial_path: str) -> str:
    """`<trial>/checkpoint`: the trial's best weights once it ended."""
    return join_path(trial_path, CHECKPOINT_DIR)


def has_export(trial_path: str) -> bool:
    fs, fs_path = filesystem(join_path(exported_path(trial_path), FILENAME))
    return fs.get_file_info(fs_path).type == pafs.FileType.File


def best_saved(dirs: list[str], mode: str) -> str | None:
    """The folder among `dirs` whose `model.pt` holds the best `checkpoint_score` (the
    earliest epoch of equal scores); without scores (the folds driver reports only
    improvements), the latest. Folders whose file does not load (cut off mid-write) are
    skipped; None when none loads."""
    scored = []
    for i, folder in enumerate(dirs):
        meta = _metadata(folder)
        if meta is None:
            continue
        score = meta.get("metrics", {}).get(CHECKPOINT_SCORE)
        finite = isinstance(score, int | float) and math.isfinite(score)
        rank = (score if mode == "max" else -score) if finite else -math.inf
        scored.append((finite, rank, -int(meta.get("epoch", 0)), i, folder))
    if not scored:
        return None
    if not any(s[0] for s in scored):
        return max(scored, key=lambda s: s[3])[4]
    return max(scored, key=lambda s: (s[0], s[1], s[2]))[4]


def export_weights(src_dir: str, dst_dir: str) -> None:
    """`dst_dir/model.pt`: the checkpoint in `src_dir` without the resume-only keys (atomic
    on a local disk: a cut write leaves no file)."""
    ckpt = load_checkpoint(local_copy(src_dir))
    for key in RESUME_ONLY:
        ckpt.pop(key, None)
    write_file(join_path(dst_dir, FILENAME), lambda f: torch.save(ckpt, f))


def slim(folder: str) -> int:
    """Drop the resume-only state from the checkpoint in `folder` (atomically; a file that
    does not load is left as it is); the bytes freed."""
    before = folder_bytes(folder)
    meta = _metadata(folder)
    if meta is None or not any(k in meta for k in RESUME_ONLY):
        return 0
    export_weights(folder, folder)
    return max(0, before - folder_bytes(folder))


def finish_trial(trial_path: str, mode: str) -> int:
    """A trial that will not run again: `<trial>/checkpoint/model.pt` from its best saved
    checkpoint (unless written already), then its resume state deleted; the bytes freed."""
    dirs = resume_state_dirs(trial_path)
    if not dirs:
        return 0
    if not has_export(trial_path):
        best = best_saved(dirs, mode)
        if best is None:  # nothing loadable: keep what is there for a person to look at
            log.warning("%s: no checkpoint of this trial loads; its folders are kept", trial_path)
            return 0
        export_weights(best, exported_path(trial_path))
    return sum(remove_dir(d) for d in dirs)


def prune(trials: list[dict], keep: tuple[str, int], metric: str, mode: str) -> int:
    """`--keep-checkpoints` after every step that reads checkpoints: each trial's resume
    state goes (its best weights exported first), then the weights `keep` does not name
    (`("all", 0)`: none; `("top", K)`: all but the K best by `metric`; `("none", 0)`: all).
    Rows whose weights went get `checkpoint_path` None; the bytes freed."""
    freed = sum(finish_trial(t["trial_path"], mode) for t in trials if t.get("trial_path"))
    policy, top = keep
    kept = {id(t) for t in ranked(trials, metric, mode)[:top]} if policy == "top" else set()
    for row in trials:
        if policy == "all" or id(row) in kept or not row.get("trial_path"):
            continue
        if has_export(row["trial_path"]):
            freed += remove_dir(exported_path(row["trial_path"]))
        row["checkpoint_path"] = None
    return freed


def remove_dir(path: str) -> int:
    """Delete a folder (local or URI); the bytes it held."""
    size = folder_bytes(path)
    fs, fs_path = filesystem(path)
    try:
        fs.delete_dir(fs_path)
    except FileNotFoundError:
        return 0
    return size


def _listing(fs: pafs.FileSystem, path: str, recursive: bool = False) -> list:
    try:
        return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _metadata(folder: str) -> dict | None:
    """A checkpoint's keys without reading its tensors (memory-mapped; a copy for a URI)."""
    local = local_copy(folder)
    path = os.path.join(local, FILENAME)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated, not a checkpoint: the caller skips it
        return None
    finally:
        if local != folder:
            _drop_local(local)


def _drop_local(path: str) -> None:
    import shutil

    if path.startswith(tempfile.gettempdir()):
        shutil.rmtree(path, ignore_errors=True)
