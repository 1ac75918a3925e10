"""What each trial asks for, and how many run at once: decided from the cluster, not the driver.

    view = read_cluster(local=address is None)    # after Ray is connected (--address)
    gpus, why = default_gpus(view, image_size)           # unless --gpus-per-trial is given
    n = concurrency(view, {"CPU": 1, "GPU": 0.25}, slots_per_trial=1)

The rule (stated once, here):
- Local (no `--address`): the machine's GPU if there is one (one whole GPU per trial, as
  before), else the CPU.
- On a cluster (`--address auto`): if any node that is up, or any node type the autoscaler can
  add, has GPUs, every trial asks for a share of one GPU by image size: up to 64 px a quarter
  (four small trials pack one GPU), up to 128 px a half, larger (224 px) a whole GPU. The
  driver's own machine (a CPU head) does not matter. No GPU anywhere: CPU trials.
- `--gpus-per-trial` and `--max-concurrent` always win.
- Concurrency counts what the cluster can grow to: the nodes up now that no autoscaled type
  accounts for, plus every autoscaled node type at its `max_workers`. So a cold autoscaling
  cluster (only the head up) still runs several trials at once, and the pending ones make the
  autoscaler add workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GPU_SHARE_BY_SIZE = ((64, 0.25), (128, 0.5))
"""(largest image side, GPU share per trial); larger images take a whole GPU."""
HEAD_RESOURCE = "node:__internal_head__"


@dataclass(frozen=True)
class NodeType:
    """A kind of node the autoscaler may add."""

    name: str
    resources: dict
    max_workers: int


@dataclass(frozen=True)
class ClusterView:
    """The cluster as far as placement is concerned: nodes up now and node types it can add."""

    local: bool
    """A Ray this command started on its own machine (no `--address`)."""
    nodes: tuple[dict, ...] = ()
    """Total resources of each live node (`ray.nodes()` "Resources")."""
    node_types: tuple[NodeType, ...] = ()
    """Autoscaled worker types (empty on a fixed cluster or without an autoscaler)."""
    up_by_type: dict = field(default_factory=dict)
    """{node type: live nodes of that type}, where the autoscaler reports it."""

    def capacity(self) -> list[dict]:
        """The resources of every node the cluster has or can add, one dict per node."""
        autoscaled = sum(self.up_by_type.get(t.name, 0) for t in self.node_types)
        workers = [n for n in self.nodes if HEAD_RESOURCE not in n]
        fixed = [n for n in self.nodes if HEAD_RESOURCE in n]
        # Live workers beyond those the autoscaler accounts for are fixed nodes too.
        fixed += workers[autoscaled:] if self.node_types else workers
        grown = [dict(t.resources) for t in self.node_types for _ in range(t.max_workers)]
        return fixed + grown

    def total(self, resource: str) -> float:
        return sum(float(n.get(resource, 0)) for n in self.capacity())

    def describe(self) -> str:
        up = f"{len(self.nodes)} node(s) up"
        if not self.node_types:
            return up
        types = ", ".join(
            f"{t.name} {_short(t.resources)} x{t.max_workers}" for t in self.node_types
        )
        return f"{up}; the autoscaler can add {types}"


def gpu_share(image_size: int) -> float:
    """GPUs one trial asks for on a cluster with GPUs, by image side (see the module rule)."""
    for side, share in GPU_SHARE_BY_SIZE:
        if image_size <= side:
            return share
    return 1.0


def default_gpus(view: ClusterView, image_size: int, local_cuda: bool = False):
    """(GPUs per trial, the reason in words) when `--gpus-per-trial` is not given."""
    if view.local:
        if local_cuda:
            return 1.0, "this machine has a GPU"
        return 0.0, "no GPU on this machine"
    gpus = view.total("GPU")
    if gpus <= 0:
        return 0.0, f"no GPU on the cluster: {view.describe()}"
    share = gpu_share(image_size)
    return share, (
        f"{share:g} GPU per trial at {image_size} px: the cluster has or can add "
        f"{gpus:g} GPU(s); {view.describe()}"
    )


def fits(node: dict, request: dict) -> int:
    """How many bundles of `request` fit on one node of resources `node`."""
    counts = []
    for name, amount in request.items():
        if amount > 0:
            counts.append(math.floor(float(node.get(name, 0)) / amount + 1e-9))
    return min(counts) if counts else 0


def concurrency(view: ClusterView, request: dict, slots_per_trial: int = 1) -> int:
    """Trials that fit at once on the cluster at its largest: `request` is what one worker
    (or fold) asks for, `slots_per_trial` how many of those a trial holds. At least 1."""
    slots = sum(fits(node, request) for node in view.capacity())
    return max(1, slots // max(1, slots_per_trial))


def read_cluster(local: bool) -> ClusterView:
    """The view of the connected Ray cluster: live nodes, and the autoscaler's node types."""
    import ray

    nodes = tuple(dict(n["Resources"]) for n in ray.nodes() if n.get("Alive"))
    if local:
        return ClusterView(local=True, nodes=nodes)
    types, up = _autoscaler_types()
    return ClusterView(local=False, nodes=nodes, node_types=types, up_by_type=up)


def _autoscaler_types() -> tuple[tuple[NodeType, ...], dict]:
    """Worker node types the autoscaler may add, and how many of each are up.

    Ray's autoscaler v2 (KubeRay) publishes its config to the GCS; the v1 autoscaler of
    `ray up` and of the fake provider does not, so the config file its monitor runs with is
    read on the head node (where `ray up` / `ray start --autoscaling-config` put it)."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is not None and config.node_group_configs:
        types = tuple(
            NodeType(g.name, dict(g.resources), int(g.max_count))
            for g in config.node_group_configs
            if g.max_count > 0 and g.resources
        )
        return types, _up_by_type()
    return node_types_of(_head_autoscaling_config()), _up_by_type()


def node_types_of(config: dict | None) -> tuple[NodeType, ...]:
    """The worker types of a cluster launcher config (cluster/*.yaml), capped by its
    `max_workers`; types whose `resources` are left to the cloud ({}) count as unknown."""
    if not config:
        return ()
    cap = int(config.get("max_workers", 2))
    head = config.get("head_node_type")
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        count = min(int(spec.get("max_workers", cap)), cap)
        if name != head and count > 0 and spec.get("resources"):
            types.append(NodeType(name, dict(spec["resources"]), count))
    return tuple(types)


def _head_autoscaling_config() -> dict | None:
    """The autoscaler's config file, read by a zero-CPU task on the head node; None when no
    autoscaler runs there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in n["Resources"]]
    if not head:
        return None
    on_head = NodeAffinitySchedulingStrategy(node_id=head[0], soft=False)
    task = ray.remote(num_cpus=0)(_read_monitor_config).options(scheduling_strategy=on_head)
    try:
        return ray.get(task.remote(), timeout=60)
    except Exception:  # no answer from the head: plan with the nodes that are up
        return None


def _read_monitor_config() -> dict | None:
    """The YAML that this node's autoscaler monitor (`monitor.py --autoscaling-config=F`) runs."""
    import os

    import yaml

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith("autoscaler/_private/monitor.py") for a in args):
            continue
        for a in args:
            if a.startswith("--autoscaling-config="):
                path = os.path.expanduser(a.split("=", 1)[1])
                with open(path) as f:
                    return yaml.safe_load(f)
    return None


def _up_by_type() -> dict:
    """{node type: live nodes}, from the status the autoscaler monitor publishes."""
    import json

    from ray.experimental.internal_kv import _internal_kv_get

    try:
        status = _internal_kv_get("__autoscaling_status")
        report = json.loads(status)["autoscaler_report"] if status else {}
    except Exception:  # an older or newer status format: count nothing as autoscaled
        return {}
    return dict(report.get("active_nodes") or {})


def _short(resources: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"
