"""The cluster for real: cluster/local.yaml under Ray's fake autoscaling provider.

A real autoscaler (Ray's `fake_multinode` provider) adds `gpu_worker` nodes (1 CPU, 1 fake
GPU) to a CPU-only head when trials ask for GPUs, and removes them when idle. The documented
cluster command runs against it with no `--gpus-per-trial`: trials must ask for a GPU share,
land on the added workers (never on the head), and the workers must go once the search ends.
In the same search a worker is killed mid-trial (a spot reclaim): the trial resumes from its
checkpoint on another node and no epoch is trained twice. Everything started is stopped by its
processes (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from search.experiment.tables import read_table
from trainables.tasks import get_task

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's head node id
EPOCHS = 3  # a worker is lost after a first epoch: two are left to resume
LR = {"distribution": "log_uniform_values", "min": 1e-3, "max": 5e-3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ip() -> str:
    from ray.util import get_node_ip_address

    return get_node_ip_address()


class FakeCluster:
    """`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=cluster/local.yaml` in a temp
    dir of its own, on free ports, stopped by the processes that mention that dir or port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self._seen: set[int] = set()  # pids found to be this cluster's
        self.temp_dir = str(root / "ray")
        self.address = f"{_node_ip()}:{self.port}"
        self.env = {
            **os.environ,
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": "disabled",
            "RAY_FAKE_CLUSTER": "1",
            "PYTHONUNBUFFERED": "1",
        }
        config = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
        config["provider"]["gcs_address"] = self.address  # workers join this head
        self.config_path = root / "local.yaml"
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self) -> None:
        cmd = [
            "ray",
            "start",
            "--head",
            "--port",
            str(self.port),
            "--num-cpus",
            "1",
            "--num-gpus",
            "0",
            f"--autoscaling-config={self.config_path}",
            "--temp-dir",
            self.temp_dir,
            "--dashboard-port",
            str(_free_port()),
            "--ray-client-server-port",
            str(_free_port()),
            "--disable-usage-stats",
        ]
        exe = str(Path(sys.executable).with_name("ray"))
        out = subprocess.run(
            [exe, *cmd[1:]], env=self.env, capture_output=True, text=True, timeout=180
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    def nodes(self) -> list[dict]:
        """Live nodes as [{"id", "gpu"}], asked by a fresh driver (this process has its Ray)."""
        code = (
            "import json, ray; ray.init(logging_level='ERROR'); print('NODES', json.dumps([{'id': "
            "n['NodeID'], 'gpu': n['Resources'].get('GPU', 0)} for n in ray.nodes() "
            "if n['Alive']]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120
        )
        # Ray may print autoscaler events ("(autoscaler +0s) Resized to 1 CPUs.") around it
        lines = [x for x in out.stdout.splitlines() if x.startswith("NODES ")]
        assert lines, out.stdout[-2000:] + out.stderr[-2000:]
        return json.loads(lines[-1].removeprefix("NODES "))

    def monitor_log(self) -> str:
        logs = sorted(Path(self.temp_dir).glob("session_*/logs/monitor.log"))
        return logs[-1].read_text() if logs else ""

    def own(self, procs: dict[int, tuple[int, str, dict]]) -> set[int]:
        """The pids in `procs` that belong to this cluster: those whose command line names its
        temp dir or port, the processes they started (workers and agents rename themselves to
        `ray::...`: found by their parent, or by their raylet once orphaned). Fake node ids
        (`fff...00001`) repeat in every fake cluster: another one on this machine (a CI run's,
        a rehearsal) must never be matched."""
        pattern = re.compile(re.escape(self.temp_dir) + "|:" + str(self.port) + r"\b")
        ours = {pid for pid, (_, cmd, _) in procs.items() if pattern.search(cmd)}
        while True:
            more = {
                pid
                for pid, (ppid, _, env) in procs.items()
                if pid not in ours
                and (
                    ppid in ours
                    or _int(env.get("RAY_RAYLET_PID")) in ours
                    or (  # its raylet was ours and is gone (pids are reused: check the address)
                        _int(env.get("RAY_RAYLET_PID")) in self._seen
                        and env.get("RAY_ADDRESS") == self.address
                    )
                )
            }
            if not more:
                break
            ours |= more
        self._seen |= ours
        return ours

    def kill_node(self, node_id: str) -> int:
        """SIGKILL every process of one fake node of this cluster (its raylet, and the workers
        and agents under it, whose environment `ray::` renaming may have overwritten): a
        reclaimed VM."""
        procs = _processes()
        ours = self.own(procs)
        node = {p for p in ours if procs[p][2].get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") == node_id}
        while more := {p for p in ours - node if procs[p][0] in node}:
            node |= more
        return _kill(node)

    def stop(self, timeout: float = 60) -> int:
        """Kill what `start` began, until none of its processes is left (a SIGKILLed process
        can take a while to go on a loaded machine, and a raylet may have forked a worker just
        before it died); returns how many are still there after `timeout` seconds."""
        deadline = time.time() + timeout
        while True:
            left = _kill(self.own(_processes()))
            if left == 0 or time.time() > deadline:
                return left
            time.sleep(1)


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _processes() -> dict[int, tuple[int, str, dict]]:
    """{pid: (parent pid, command line, environment)} of this machine's processes but this one
    (zombies, with no command line, left out)."""
    procs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if not cmd:
            continue
        env = dict(e.decode(errors="replace").split("=", 1) for e in raw if b"=" in e)
        procs[int(pid)] = (ppid, cmd, env)
    return procs


def _kill(pids) -> int:
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    return killed


@pytest.fixture(scope="module")
def fake_cluster(request):
    root = Path(tempfile.mkdtemp(prefix="medsweep-fake-"))
    cluster = FakeCluster(root)
    failed = request.session.testsfailed
    try:
        cluster.start()
        yield cluster
    finally:
        left = cluster.stop()
        if request.session.testsfailed > failed:  # keep Ray's logs of a failure
            print(f"fake cluster's Ray logs kept: {cluster.temp_dir}/session_*/logs")
        else:
            shutil.rmtree(root, ignore_errors=True)
    assert left == 0, f"{left} process(es) of the fake cluster outlived the stop"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A synthetic PneumoniaMNIST-shaped npz, large enough for epochs of a few seconds."""
    import numpy as np

    from trainables.data import npz_name

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("data")
    arrays = {}
    for split, n in (("train", 1500), ("val", 200), ("test", 200)):
        labels = rng.integers(0, 2, size=(n, 1))
        images = rng.integers(0, 120, size=(n, 28, 28)) + 100 * labels[:, :, None]
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    np.savez_compressed(root / npz_name(get_task("pneumonia").flag, 28), **arrays)
    return root


def _search(cluster: FakeCluster, data_dir: Path, runs: Path, name: str, *extra: str):
    """The documented cluster command (cluster/README.md): no --gpus-per-trial."""
    cmd = [
        sys.executable,
        str(ROOT / "search" / "run.py"),
        "--task",
        "pneumonia",
        "--data-dir",
        str(data_dir),
        "--address",
        "auto",
        "--storage",
        str(runs),
        "--name",
        name,
        "--wandb",
        "off",
        *extra,
    ]
    log = tempfile.TemporaryFile(mode="w+")  # a file: a full pipe would block the search
    return subprocess.Popen(
        cmd, cwd=ROOT, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, text=True
    ), log


def _finish(proc, log, timeout: int = 600) -> str:
    proc.wait(timeout=timeout)
    log.seek(0)
    out = log.read()
    assert proc.returncode == 0, out[-4000:]
    return out


def _space(write_space, path: Path, epochs: int) -> str:
    """simple_cnn, batch 64, lr searched; ASHA's grace period is the whole run."""
    return write_space(path, min_iter=epochs, batch_size={"value": 64}, lr=LR)


def test_trials_go_to_the_gpu_workers_the_autoscaler_adds_and_survive_losing_one(
    fake_cluster, data_dir, tmp_path, write_space
):
    """One search from a cold cluster: the autoscaler adds gpu_workers, every trial runs on
    them; one worker is then killed mid-trial, its trial resumes on another node without
    training an epoch twice; once the search ends, the workers go."""
    assert [n["id"] for n in fake_cluster.nodes()] == [FAKE_HEAD_NODE_ID]  # cold: head only
    exp, started = tmp_path / "runs" / "scale", time.time()
    proc, log = _search(
        fake_cluster,
        data_dir,
        tmp_path / "runs",
        "scale",
        "--space",
        _space(write_space, tmp_path / "space.yaml", EPOCHS),
        "--trials",
        "4",
        "--epochs",
        str(EPOCHS),
        "--max-failures",
        "2",
        "--explain-top",
        "0",
    )
    victim_trial, victim = _kill_a_worker_after_its_first_epoch(fake_cluster, exp, proc)
    out = _finish(proc, log)
    ended = time.time()
    assert re.search(r"each trial asks for 1 CPU, 0.25 GPU \(0.25 GPU per trial at 28 px", out)
    assert "2 trial(s) at once" in out  # 2 gpu_workers of 1 CPU each, none up at the start
    trials = read_table(str(exp / "trials.parquet"))
    history = read_table(str(exp / "history.parquet"))
    assert len(trials) == 4
    assert all(t["status"] == "finished" and t["epochs_run"] == EPOCHS for t in trials)
    workers = {t["node_id"] for t in trials}
    assert FAKE_HEAD_NODE_ID not in workers and None not in workers
    assert FAKE_HEAD_NODE_ID not in {h["node_id"] for h in history}
    moved = next(t for t in trials if t["trial_id"] == victim_trial)
    assert victim in moved["nodes"] and moved["node_id"] != victim, moved["nodes"]
    redone = len(history) - len({(h["trial_id"], h["epoch"]) for h in history})
    assert redone == 0, f"{redone} epoch(s) trained twice"
    launches = re.findall(
        r"^(\S+ \S+),\d+.*Adding (\d+) node\(s\) of type gpu_worker",
        fake_cluster.monitor_log(),
        flags=re.M,
    )
    assert launches, "the autoscaler launched no gpu_worker"
    added = [n for _, n in launches]
    first = datetime.strptime(launches[0][0], "%Y-%m-%d %H:%M:%S").timestamp() - started
    gone = _wait_for_scale_down(fake_cluster, timeout=150)
    per_node = {w: sum(t["node_id"] == w for t in trials) for w in workers}
    print(
        f"autoscale: first gpu_worker launch {first:.0f} s after the search started; "
        f"workers launched {sum(map(int, added))} in {len(added)} launch(es); "
        f"trials per node {sorted(per_node.values())}; lost worker: trial {victim_trial} "
        f"moved {moved['nodes']}; search {ended - started:.0f} s; workers gone {gone:.0f} s "
        "after the search ended"
    )


def _kill_a_worker_after_its_first_epoch(cluster: FakeCluster, exp: Path, proc) -> tuple:
    """SIGKILL the node of the first trial seen with an epoch reported and one still to train
    (a reclaimed spot VM); (that trial, that node). A trial seen only once finished (the
    results reach the experiment folder by a sync that can lag) has left its node: not it."""
    deadline = time.time() + 300

    def running() -> list:
        return [(t, node) for t, (node, n) in _trial_nodes(exp).items() if 1 <= n < EPOCHS]

    while not (found := running()):
        assert proc.poll() is None, "the search ended before a worker could be lost"
        assert time.time() < deadline, f"no trial mid-run in 300 s: {_trial_nodes(exp)}"
        time.sleep(0.5)
    victim_trial, victim = found[0]
    assert victim != FAKE_HEAD_NODE_ID
    assert cluster.kill_node(victim) > 0
    return victim_trial, victim


def _wait_for_scale_down(cluster: FakeCluster, timeout: float) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if [n["id"] for n in cluster.nodes()] == [FAKE_HEAD_NODE_ID]:
            return time.time() - t0
        time.sleep(3)
    raise AssertionError(f"workers still up {timeout} s after the search: {cluster.nodes()}")


def _trial_nodes(exp: Path) -> dict[str, tuple[str, int]]:
    """{trial: (node it last reported from, epochs reported)} from the trials' result.json."""
    found = {}
    for result in exp.glob("*/result.json"):
        # complete lines only: the file may be caught mid-copy from the driver's staging dir
        lines = [json.loads(x) for x in result.read_text().split("\n")[:-1] if x.strip()]
        if lines and lines[-1].get("node_id"):
            found[result.parent.name] = (lines[-1]["node_id"], len(lines))
    return found
