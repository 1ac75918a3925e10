"""What an experiment folder keeps: best weights without optimizer state, resume state only
while a trial runs, `--keep-checkpoints`, `--max-disk` (issue 21)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from search.driver.checks import UserError
from search.driver.input_checks import check_disk, largest_model
from search.driver.pipeline import main
from search.experiment.quota import human, parse_keep, parse_size
from search.experiment.retention import (
    best_saved,
    finish_trial,
    folder_bytes,
    prune,
    resume_state_dirs,
    slim,
)
from search.experiment.tables import read_table
from trainables.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from trainables.scores import CHECKPOINT_SCORE
from trainables.tasks import get_task


def _trial(tmp_path, make_checkpoint, name: str, epochs: dict, under: str = "") -> str:
    """A trial folder with Ray-style `checkpoint_*` folders: {epoch: checkpoint score} (a
    real checkpoint of one epoch, its epoch and score rewritten; optimizer state kept)."""
    source = load_checkpoint(make_checkpoint("binary", channels=1))
    trial = tmp_path / name
    for epoch, score in epochs.items():
        payload = {**source, "epoch": epoch, "metrics": {CHECKPOINT_SCORE: score}}
        save_checkpoint(trial / under / f"checkpoint_{epoch:06d}", payload)
    return str(trial)


def test_an_ended_trial_keeps_its_best_weights_without_the_optimizer(tmp_path, make_checkpoint):
    trial = _trial(tmp_path, make_checkpoint, "t1", {2: 0.91, 4: float("-inf")})
    resume_bytes = folder_bytes(os.path.join(trial, "checkpoint_000002"))
    freed = finish_trial(trial, "max")
    assert resume_state_dirs(trial) == [] and freed >= 2 * resume_bytes * 0.99
    exported = load_checkpoint(os.path.join(trial, "checkpoint"))
    assert exported["epoch"] == 2  # the best, not the latest
    assert "optimizer" not in exported and "scheduler" not in exported
    assert folder_bytes(os.path.join(trial, "checkpoint")) < 0.6 * resume_bytes
    original = load_checkpoint(make_checkpoint("binary", channels=1))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        a = model_from_checkpoint(exported)(x)
        b = model_from_checkpoint(original)(x)
    assert torch.equal(a, b)
    assert finish_trial(trial, "max") == 0  # nothing left to do


def test_the_best_saved_checkpoint_by_mode_skipping_one_cut_mid_write(tmp_path, make_checkpoint):
    low = _trial(tmp_path, make_checkpoint, "low", {1: 0.2, 3: 0.1, 5: float("inf")}, "train")
    dirs = resume_state_dirs(low)
    assert [os.path.basename(d) for d in dirs] == [f"checkpoint_00000{i}" for i in (1, 3, 5)]
    assert best_saved(dirs, "min").endswith("checkpoint_000003")
    with open(os.path.join(dirs[1], "model.pt"), "r+b") as f:  # a write cut off
        f.truncate(1000)
    assert best_saved(dirs, "min").endswith("checkpoint_000001")
    tied = _trial(tmp_path, make_checkpoint, "tied", {2: 0.5, 6: 0.5})
    assert best_saved(resume_state_dirs(tied), "max").endswith("checkpoint_000002")


@pytest.mark.parametrize(
    "keep, kept", [("all", {"a", "b", "c"}), ("top-2", {"b", "c"}), ("none", set())]
)
def test_keep_checkpoints(tmp_path, make_checkpoint, keep, kept):
    rows = []
    for name, auc in (("a", 0.7), ("b", 0.9), ("c", 0.8)):
        path = _trial(tmp_path, make_checkpoint, name, {1: auc})
        rows.append({"trial_id": name, "trial_path": path, "val_auc": auc, "checkpoint_path": "x"})
    freed = prune(rows, parse_keep(keep), "val_auc", "max")
    assert freed > 0
    holding = {r["trial_id"] for r in rows if r["checkpoint_path"]}
    on_disk = {n for n in "abc" if (tmp_path / n / "checkpoint" / "model.pt").is_file()}
    assert holding == on_disk == kept
    assert not list(tmp_path.rglob("checkpoint_0*"))


def test_sizes_and_policies_parse():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("1.5 GiB") == int(1.5 * 2**30)
    assert parse_size("2000") == 2000 and parse_size("300mb") == 3 * 10**8
    assert parse_keep("top-3") == ("top", 3) and parse_keep("none") == ("none", 0)
    assert human(14_200_000) == "14.2 MB"
    for bad in ("5XB", "lots", "0GB", "-1GB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    for bad in ("top-0", "top", "best", ""):
        with pytest.raises(ValueError):
            parse_keep(bad)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-disk", "5XB"], "--max-disk '5XB' is not a size"),
        (["--keep-checkpoints", "top-0"], "--keep-checkpoints 'top-0' is not all, none or top-K"),
        (["--max-disk", "1GB", "--storage", "s3://b/x"], "--max-disk holds a local experiment"),
    ],
)
def test_disk_flag_mistakes_get_one_line(tmp_path, capsys, flags, message):
    code = main(["--task", "pneumonia", "--data-dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1


def test_a_quota_too_small_for_the_running_trials_is_refused():
    """The same check the search runs right after Ray tells it the concurrency."""
    task = get_task("segfolder")
    name, weights = largest_model({"model": "unet-resnet18", "image_size": 64}, task)
    assert name == "unet-resnet18" and 40e6 < weights < 70e6  # ResNet-18 U-Net, float32
    check_disk(2 * 9 * weights + 3 * weights, 2, 3, {"model": "unet-resnet18"}, task)
    with pytest.raises(UserError, match=r"--max-disk 500.0 MB cannot hold the search: 2 tri"):
        check_disk(500 * 10**6, 2, 3, {"model": "unet-resnet18"}, task)


@pytest.mark.slow
def test_a_search_holds_its_quota_removing_the_weakest_ended_trials(
    tmp_path, make_npz, write_space, run_search
):
    """Nine one-epoch trials one at a time under the smallest quota the check accepts: ended
    trials hold weights alone (no resume state); when the folder would pass the quota, the
    weakest ended trials' weights go (each named on the log), never the best's; the folder
    ends under the quota with the best trial's weights (`--keep-checkpoints top-1`)."""
    task = get_task("pneumonia")
    data = make_npz(task, n=64)
    space = write_space(
        tmp_path / "space.yaml",
        model={"value": "deeper_cnn"},
        lr={"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
    )
    _, weights = largest_model({"model": "deeper_cnn"}, task)
    limit = 9 * weights + weights  # 1 trial at once, 1 protected: the least accepted
    args = ["--task", "pneumonia", "--data-dir", str(data.parent), "--space", space]
    args += ["--trials", "9", "--epochs", "1", "--max-concurrent", "1", "--launcher"]
    args += ["function", "--explain-top", "0", "--storage", str(tmp_path / "runs")]
    args += ["--name", "quota", "--max-disk", str(limit), "--keep-checkpoints", "top-1"]
    proc = run_search(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    exp = tmp_path / "runs" / "quota"
    removed = re.findall(r"--max-disk [\d.]+ MB: removed the weights of trial (\w+)", proc.stderr)
    assert removed, proc.stderr[-3000:]
    rows = {r["trial_id"]: r for r in read_table(str(exp / "trials.parquet"))}
    best = max(r["val_auc"] for r in rows.values())
    (kept,) = [r for r in rows.values() if r["checkpoint_path"]]
    assert kept["val_auc"] == best and kept["trial_id"] not in removed
    assert "optimizer" not in load_checkpoint(kept["checkpoint_path"])
    assert not list(exp.rglob("checkpoint_0*"))
    assert folder_bytes(str(exp)) <= limit
    assert json.loads((exp / "search.json").read_text())["status"] == "finished"
    shutil.rmtree(exp)


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs (root can mount one here and in CI); `grow(mb)` frees space on it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("this machine does not let the test mount a tmpfs")

    def grow(mb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mb}m", str(mount)], check=True)

    yield mount, grow
    subprocess.run(["umount", "-l", str(mount)])


@pytest.mark.slow
def test_a_full_disk_stops_the_search_cleanly_and_resume_continues(
    make_npz, write_space, run_search, small_disk
):
    """Storage on a 40 MB disk, 14 MB checkpoints: the search stops while it can still stop
    cleanly, in one line naming the folder and the space needed (exit 2); every checkpoint on
    the disk loads; once space is freed, `--resume` finishes every trial."""
    mount, grow = small_disk
    task = get_task("pneumonia")
    data = make_npz(task, n=64)
    space = write_space(mount.parent / "space.yaml", min_iter=3, model={"value": "deeper_cnn"})
    args = ["--task", "pneumonia", "--data-dir", str(data.parent), "--space", space]
    args += ["--trials", "3", "--epochs", "3", "--max-concurrent", "1", "--launcher"]
    args += ["function", "--explain-top", "0", "--storage", str(mount), "--name", "full"]
    proc = run_search(*args)
    exp = mount / "full"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and f"the disk holding {exp} is full" in errors[0], errors
    assert re.search(r"need about [\d.]+ MB more", errors[0]) and "--resume" in errors[0]
    assert "Traceback" not in proc.stderr
    saved = list(exp.rglob("model.pt"))
    assert saved
    for path in saved:
        load_checkpoint(path)  # nothing half-written
    assert json.loads((exp / "search.json").read_text())["status"] == "interrupted"
    grow(200)
    resumed = run_search("--resume", str(exp))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = read_table(str(exp / "trials.parquet"))
    assert len(rows) == 3 and all(r["status"] == "finished" for r in rows)
    assert json.loads((exp / "search.json").read_text())["status"] == "finished"


def test_a_running_trials_older_checkpoint_loses_only_its_optimizer_state(
    tmp_path, make_checkpoint
):
    """Ray keeps a running trial's best beside its latest; only the latest is resumed from."""
    trial = _trial(tmp_path, make_checkpoint, "run", {1: 0.8, 2: float("-inf")})
    older, latest = resume_state_dirs(trial)
    size = folder_bytes(older)
    assert slim(older) > size / 2 and slim(older) == 0  # once
    kept = load_checkpoint(older)
    assert "optimizer" not in kept and kept["epoch"] == 1 and "state_dict" in kept
    assert "optimizer" in load_checkpoint(latest)
    assert best_saved([older, latest], "max") == older
