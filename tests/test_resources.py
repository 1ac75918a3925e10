"""The resource rule (search/driver/resources.py): what a trial asks for and how many run at once.

Pure functions over a `ClusterView`, so every cluster shape is checked in milliseconds; the
autoscaling test (tests/test_autoscale.py) checks the same rule against a real autoscaler.
"""

from __future__ import annotations

import pytest

from search.driver.resources import (
    HEAD_RESOURCE,
    ClusterView,
    NodeType,
    concurrency,
    default_gpus,
    gpu_share,
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


def test_the_ray_internal_behind_the_autoscaler_node_types_is_still_there():
    """`search.driver.resources._autoscaler_types` reads the node groups autoscaler v2
    (KubeRay) publishes through a Ray internal (Ray 2.60 has no public call for it): this
    fails, naming it, when a Ray upgrade moves it."""
    import importlib

    state = importlib.import_module("ray._private.state").state
    assert callable(getattr(state, "get_cluster_config", None)), (
        "ray._private.state.state.get_cluster_config() is gone: "
        "search.driver.resources._autoscaler_types reads the autoscaler's node groups "
        "through it; find where this Ray release publishes them"
    )
