"""The resource rule (search/driver/resources.py): what a trial asks for and how many run at once.

Pure functions over a `ClusterView`, so every cluster shape is checked in milliseconds; the
autoscaling test (tests/test_autoscale.py) checks the same rule against a real autoscaler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from search.driver.resources import (
    HEAD_RESOURCE,
    NODE_GROUP_LABEL,
    ClusterView,
    NodeType,
    concurrency,
    default_gpus,
    gpu_share,
    node_types_of,
    read_autoscaling_config,
    up_by_type,
)
from search.driver.settings import ResourceSettings, SearchSettings, Settings

HEAD = {"CPU": 8.0, HEAD_RESOURCE: 1.0}
GPU_WORKER = NodeType("gpu_worker", {"CPU": 4, "GPU": 1}, max_workers=8)


def cold_autoscaling_cluster() -> ClusterView:
    """cluster.yaml right after `ray up`: the CPU head only, GPU workers min 0 max 8."""
    return ClusterView(local=False, nodes=(HEAD,), node_types=(GPU_WORKER,))


def test_gpu_node_types_that_are_not_up_yet_give_gpu_trials_and_concurrency_above_one():
    view = cold_autoscaling_cluster()
    gpus, why = default_gpus(view, image_size=28)
    assert gpus == 0.25 and "8 GPU" in why and "gpu_worker" in why
    # 4 trials of a quarter GPU + 1 CPU per worker node, 8 nodes: 32, none on the CPU head.
    assert concurrency(view, {"CPU": 1, "GPU": gpus}) == 32
    assert concurrency(view, {"CPU": 1, "GPU": gpu_share(224)}) == 8


def test_cpu_bounds_trials_per_gpu_node():
    """A node with 1 CPU holds one 1-CPU trial, however small its GPU share."""
    view = ClusterView(
        local=False,
        nodes=({"CPU": 1, HEAD_RESOURCE: 1},),
        node_types=(NodeType("gpu_worker", {"CPU": 1, "GPU": 1}, 2),),
    )
    assert concurrency(view, {"CPU": 1, "GPU": 0.25}) == 2


def test_no_gpu_anywhere_gives_cpu_trials_bounded_by_cpus():
    cpu_type = NodeType("cpu_worker", {"CPU": 16}, max_workers=2)
    view = ClusterView(local=False, nodes=(HEAD,), node_types=(cpu_type,))
    gpus, why = default_gpus(view, image_size=224)
    assert gpus == 0.0 and "no GPU" in why
    assert concurrency(view, {"CPU": 2}) == (8 + 32) // 2


def test_workers_already_up_are_not_counted_twice():
    view = ClusterView(
        local=False,
        nodes=(HEAD, {"CPU": 4, "GPU": 1}, {"CPU": 4, "GPU": 1}),
        node_types=(GPU_WORKER,),
        up_by_type={"gpu_worker": 2},
    )
    assert view.total("GPU") == 8
    assert concurrency(view, {"CPU": 1, "GPU": 1}) == 8


def test_a_fixed_cluster_counts_the_nodes_it_has():
    view = ClusterView(local=False, nodes=(HEAD, {"CPU": 8, "GPU": 2}))
    assert default_gpus(view, 128)[0] == 0.5
    assert concurrency(view, {"CPU": 1, "GPU": 0.5}) == 4


def test_local_uses_this_machine_only():
    view = ClusterView(local=True, nodes=({"CPU": 2, HEAD_RESOURCE: 1},))
    assert default_gpus(view, 28, local_cuda=False)[0] == 0.0
    assert default_gpus(view, 28, local_cuda=True)[0] == 1.0


@pytest.mark.parametrize("size, share", [(28, 0.25), (64, 0.25), (128, 0.5), (224, 1.0)])
def test_gpu_share_by_image_size(size, share):
    assert gpu_share(size) == share


def test_multi_worker_trials_take_several_slots():
    view = cold_autoscaling_cluster()
    assert concurrency(view, {"CPU": 1, "GPU": 1}, slots_per_trial=2) == 4


def _args(gpus_per_trial: float | None = None, smoke_test: bool = False) -> Settings:
    return Settings(
        search=SearchSettings(smoke_test=smoke_test),
        resources=ResourceSettings(address="auto", gpus_per_trial=gpus_per_trial),
    )


def test_explicit_gpus_per_trial_always_wins():
    from search.driver.plan import choose_gpus

    view = cold_autoscaling_cluster()
    assert choose_gpus(_args(gpus_per_trial=0.0), view, 28)[0] == 0.0
    assert choose_gpus(_args(gpus_per_trial=0.5), view, 28)[0] == 0.5
    assert choose_gpus(_args(), view, 28)[0] == 0.25
    assert choose_gpus(_args(smoke_test=True), view, 28)[0] == 0.0  # smoke tests: CPU


def test_nodes_up_are_counted_by_the_node_group_label_the_autoscaler_gives_them():
    nodes = [
        {"Labels": {NODE_GROUP_LABEL: "gpu_worker"}},
        {"Labels": {NODE_GROUP_LABEL: "gpu_worker"}},
        {"Labels": {NODE_GROUP_LABEL: "head"}},
        {"Labels": {}},  # a node started by hand: no type
        {},
    ]
    assert up_by_type(nodes) == {"gpu_worker": 2, "head": 1}


def _wait_for_cmdline(pid: int, flag: bytes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if flag in f.read():
                return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never showed {flag!r} on its command line")


def test_the_autoscaler_config_is_the_file_its_monitor_of_this_cluster_runs_with(tmp_path):
    """Real processes given `--autoscaling-config=` (as `ray start` starts the monitor): a
    relative path is read from that process's folder, and this cluster's monitor wins over
    another cluster's on the same machine."""
    ours, other = tmp_path / "ours", tmp_path / "other"
    for folder, worker in ((ours, "gpu_worker"), (other, "cpu_worker")):
        folder.mkdir()
        config = {"max_workers": 2, "available_node_types": {worker: {"resources": {"CPU": 1}}}}
        (folder / "cluster.yaml").write_text(yaml.safe_dump(config))
    sleepers = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *flags], cwd=folder)
        for folder, flags in (
            (other, ["--autoscaling-config=cluster.yaml", "--gcs-address=10.0.0.9:6379"]),
            (ours, ["--autoscaling-config=cluster.yaml", "--gcs-address=10.0.0.1:6379"]),
        )
    ]
    try:
        for proc in sleepers:  # a loaded machine may not have exec'd them yet
            _wait_for_cmdline(proc.pid, b"--autoscaling-config")
        config = read_autoscaling_config("10.0.0.1:6379")
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()
    assert [t.name for t in node_types_of(config)] == ["gpu_worker"]


@pytest.mark.slow
def test_ray_labels_a_node_with_the_type_it_was_started_as():
    """`up_by_type` reads Ray's default `ray.io/node-group` label (from RAY_NODE_TYPE_NAME, which
    Ray's autoscalers set): this fails, naming it, if a Ray upgrade drops that label."""
    code = (
        "import json, ray; ray.init(address='local', num_cpus=1, include_dashboard=False, "
        "logging_level='ERROR'); print(json.dumps(ray.nodes()[0]['Labels'])); ray.shutdown()"
    )
    env = {**os.environ, "RAY_NODE_TYPE_NAME": "gpu_worker"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    labels = json.loads(out.stdout.strip().splitlines()[-1])
    assert labels.get(NODE_GROUP_LABEL) == "gpu_worker", (
        f"Ray no longer labels a node {NODE_GROUP_LABEL}=<RAY_NODE_TYPE_NAME> ({labels}): "
        "search.driver.resources.up_by_type counts the autoscaled nodes up by that label"
    )
