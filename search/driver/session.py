"""Connect to Ray (a fresh local instance, or a cluster) and check the search can store there.

    connect_ray(None)       # a fresh local Ray with its own dashboard port
    connect_ray("auto")     # the cluster `ray start` / `ray up` made
    check_storage(args)     # a multi-node cluster needs --storage that every node reaches
"""

from __future__ import annotations

import argparse
import logging


def connect_ray(address: str | None) -> None:
    """Join `address` (`auto`: the cluster `ray start` made), or start a fresh local Ray.

    Plain `ray.init()` would join whatever cluster was started last on this machine. Locally,
    the dashboard gets a free port and every worker is told its URL: Ray Train's placement-group
    cleaner asks the state API, which otherwise gives up when several Ray instances run on one
    machine, and the next trial then waits forever for resources.
    """
    import socket

    import ray

    quiet = {"log_to_driver": True, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    ray.init(address="local", include_dashboard=True, dashboard_port=port,
             runtime_env={"env_vars": env}, **quiet)  # fmt: skip


def check_storage(args: argparse.Namespace) -> None:
    """On a multi-node cluster, refuse a local default storage that workers cannot reach."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and args.storage is None:
        raise SystemExit(
            f"this Ray cluster has {len(nodes)} nodes: checkpoints on this machine's disk are "
            "out of the other nodes' reach. Pass --storage s3://bucket/path (or gs://, or a "
            "shared filesystem path such as /mnt/nfs/runs), or set MEDSWEEP_STORAGE."
        )
    if args.storage is None:
        args.storage = "runs"
