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
import os
from collections import Counter
from dataclasses import dataclass, field

GPU_SHARE_BY_SIZE = ((64, 0.25), (128, 0.5))
"""(largest image side, GPU share per trial); larger images take a whole GPU."""
HEAD_RESOURCE = "node:__internal_head__"
NODE_GROUP_LABEL = "ray.io/node-group"  # Ray's default node label: the node's type


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

    alive = [n for n in ray.nodes() if n.get("Alive")]
    nodes = tuple(dict(n["Resources"]) for n in alive)
    if local:
        return ClusterView(local=True, nodes=nodes)
    types = node_types_of(_head_autoscaling_config())
    return ClusterView(local=False, nodes=nodes, node_types=types, up_by_type=up_by_type(alive))


def up_by_type(nodes: list[dict]) -> dict:
    """{node type: live nodes of that type}, from the `ray.io/node-group` label Ray gives
    every node an autoscaler starts (`ray.nodes()` "Labels"; Ray sets it from the
    RAY_NODE_TYPE_NAME the autoscaler starts the node with)."""
    types = Counter((n.get("Labels") or {}).get(NODE_GROUP_LABEL) for n in nodes)
    types.pop(None, None)
    return dict(types)


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
    task = ray.remote(num_cpus=0)(read_autoscaling_config).options(scheduling_strategy=on_head)
    try:
        return ray.get(task.remote(ray.get_runtime_context().gcs_address), timeout=60)
    except Exception:  # no answer from the head, or no such file: plan with the nodes up
        return None


def read_autoscaling_config(gcs_address: str) -> dict | None:
    """The YAML this node's autoscaler runs with: `ray start --head --autoscaling-config=F`
    (`ray up` writes F = ~/ray_bootstrap_config.yaml) hands F to the autoscaler's monitor
    process, with `--gcs-address=` of its cluster. Only this cluster's monitor counts (another
    Ray on the same machine may autoscale too); a relative F is read from its folder."""
    import yaml

    ours = [path for path, address in _autoscaling_configs() if address == gcs_address]
    if not ours:
        return None
    with open(ours[0]) as f:
        return yaml.safe_load(f)


def _autoscaling_configs() -> list[tuple[str, str | None]]:
    """(config file, GCS address) of every process on this node that was given
    `--autoscaling-config=`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
            folder = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        flags = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if flags.get("--autoscaling-config"):
            path = os.path.expanduser(flags["--autoscaling-config"])
            found.append((os.path.join(folder, path), flags.get("--gcs-address")))
    return found


def _short(resources: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"
