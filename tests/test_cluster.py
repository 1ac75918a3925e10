"""Scale out and survive, on a real Ray cluster on this machine (head + worker, 1 CPU each).

The search runs as `search/run.py --address <cluster>` in a subprocess, as on a real cluster:
a SIGKILLed driver is continued with `--resume`; DDP on 2 workers matches 1 worker; a
multi-node search refuses local storage; S3 storage works against a local S3-compatible server
(moto) on loopback. (Trials placed by the autoscaler and a worker lost mid-trial:
tests/test_autoscale.py.)
"""

from __future__ import annotations

import glob
import os
import signal
import time

import pytest

from search.experiment.tables import read_table
from trainables.data import load_npz
from trainables.tasks import get_task
from trainables.train import train_loop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def checkpoints(exp: str) -> dict[str, int]:
    """Epochs checkpointed so far per trial folder (function launcher: checkpoint_00000N while
    the trial runs; an ended trial keeps its best weights alone, `checkpoint/`: 0 here)."""
    found = {}
    for path in glob.glob(os.path.join(exp, "*", "checkpoint", "model.pt")):
        found[os.path.basename(os.path.dirname(os.path.dirname(path)))] = 0
    for path in glob.glob(os.path.join(exp, "*", "checkpoint_0*")):
        trial = os.path.basename(os.path.dirname(path))
        found[trial] = max(found.get(trial, 0), int(path.rsplit("_", 1)[1]) + 1)
    return found


def redone_epochs(history: list[dict]) -> int:
    """Epochs trained more than once: history rows beyond one per (trial, epoch)."""
    return len(history) - len({(h["trial_id"], h["epoch"]) for h in history})


@pytest.fixture
def blood_npz(make_npz):
    return make_npz(get_task("blood"), n=1200)  # epochs of ~1 s on one core


def test_kill_the_driver_then_resume(cluster, tmp_path, blood_npz, write_space, searches):
    """SIGKILL the driver mid-search; `--resume` completes it: all trials, none twice."""
    exp = str(tmp_path / "runs" / "killed")
    args = [
        "--task",
        "blood",
        "--data-dir",
        str(blood_npz.parent),
        "--space",
        write_space(
            tmp_path / "space.yaml",
            min_iter=3,
            model={"value": "deeper_cnn"},
            batch_size={"value": 64},
            lr={"distribution": "log_uniform_values", "min": 1e-3, "max": 5e-3},
        ),
        "--trials",
        "2",
        "--epochs",
        "3",
        "--launcher",
        "function",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "killed",
        "--address",
        cluster.address,
        "--max-concurrent",
        "1",
        "--explain-top",
        "0",
    ]
    proc = searches.start(*args)
    searches.wait_for(
        lambda: len(checkpoints(exp)) >= 2, "the second trial's first epoch", proc, timeout=240
    )
    killed_at = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = checkpoints(exp)
    code, out = searches.finish(searches.start("--resume", exp, "--address", cluster.address))
    assert code == 0, out[-2000:]
    trials = read_table(os.path.join(exp, "trials.parquet"))
    history = read_table(os.path.join(exp, "history.parquet"))
    assert len(trials) == 2 and len({t["trial_id"] for t in trials}) == 2
    assert all(t["status"] == "finished" and t["epochs_run"] == 3 for t in trials)
    redone = redone_epochs(history)
    print(
        f"kill-driver: checkpoints at kill {before}; epochs redone {redone}; "
        f"resume took {time.time() - killed_at:.1f} s"
    )
    assert redone <= 1  # at most the epoch that was running when the driver died


def test_ddp_two_workers_matches_one(cluster, tmp_path, make_npz, write_space, searches):
    """`--workers-per-trial 2` (gloo, one worker per node) gives the metrics of one worker."""
    task = get_task("blood")
    path = make_npz(task, n=256)
    space = write_space(tmp_path / "space.yaml", lr={"value": 3e-3}, batch_size={"value": 16})
    code, out = searches.finish(
        searches.start(
            "--task",
            "blood",
            "--data-dir",
            str(path.parent),
            "--space",
            space,
            "--trials",
            "1",
            "--epochs",
            "3",
            "--workers-per-trial",
            "2",
            "--cpus-per-worker",
            "0.5",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "ddp",
            "--address",
            cluster.address,
            "--explain-top",
            "0",
            "--test-top",
            "0",
        )
    )
    assert code == 0, out[-2000:]
    (trial,) = read_table(str(tmp_path / "runs" / "ddp" / "trials.parquet"))
    # One worker, same seed, data and global batch (2 x 16 = 32): the plain call.
    single = []
    config = {
        "task": "blood",
        "model": "simple_cnn",
        "epochs": 3,
        "lr": 3e-3,
        "batch_size": 32,
        "weights": "none",
    }
    train_loop(config, lambda m, d: single.append(m), load_npz(path, task))
    best_single = max(m["val_auc"] for m in single)
    print(f"DDP x2 best val_auc {trial['val_auc']:.4f} vs 1 worker {best_single:.4f}")
    assert trial["status"] == "finished" and trial["epochs_run"] == 3
    assert trial["val_auc"] > 0.9 and best_single > 0.9
    assert abs(trial["val_auc"] - best_single) < 0.05


def test_multi_node_refuses_local_default_storage(cluster, tmp_path, make_npz, searches):
    path = make_npz(get_task("blood"))
    args = [
        "--task",
        "blood",
        "--data-dir",
        str(path.parent),
        "--smoke-test",
        "--weights",
        "none",
        "--address",
        cluster.address,
    ]
    code, out = searches.finish(searches.start(*args), timeout=120)
    assert code != 0 and "Pass --storage s3://" in out


def test_search_on_s3_storage(tmp_path, make_npz, s3_server, write_space, searches):
    """A fresh local Ray (`ray.init()`, what a user runs): its trials inherit the S3 settings
    of the driver's environment."""
    import pyarrow.fs as pafs

    env, fs = s3_server
    path = make_npz(get_task("pneumonia"), n=64)
    space = write_space(tmp_path / "space.yaml", lr={"value": 3e-3})
    code, out = searches.finish(
        searches.start(
            "--task",
            "pneumonia",
            "--data-dir",
            str(path.parent),
            "--space",
            space,
            "--trials",
            "2",
            "--epochs",
            "2",
            "--launcher",
            "function",
            "--storage",
            "s3://medsweep-test/runs",
            "--name",
            "s3run",
            env=env,
            local=True,
        )
    )
    assert code == 0, out[-2000:]
    base = "medsweep-test/runs/s3run"
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    names = {i.path.removeprefix(base + "/") for i in infos}
    assert {"trials.parquet", "history.parquet", "search.json", "test_metrics.json"} <= names
    assert sum(n.endswith("checkpoint/model.pt") for n in names) == 2
    assert sum(n.endswith("attribution/gradcam.png") for n in names) == 2
