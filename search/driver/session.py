"""Connect to Ray (a fresh local instance, or a cluster), check the search can store there, catch
interrupts, and leave no session folder of a local run behind.

    url = connect_ray(None)       # a fresh local Ray with its own dashboard port; its URL
    url = connect_ray("auto")     # the cluster `ray start` / `ray up` made
    storage = check_storage(None) # "runs"; on several nodes: UserError, pass --storage
    with Interrupts() as stop:    # SIGINT / SIGTERM end Tune's run gracefully (state saved)
        grid = tuner.fit()
    stop.reinstall()              # after connecting to Ray: SIGTERM is ours again
    stop.signal                   # None, or the signal that ended the run
    close_ray(remove_session=True)  # ray.shutdown(); a local Ray's /tmp/ray/session_* removed
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator

from search.driver.checks import UserError

log = logging.getLogger("medsweep")
# Whether connect_ray connected this process, and the session folder of the local Ray it started
_STARTED = {"connected": False, "session_dir": None}


def connect_ray(address: str | None) -> str | None:
    """Join `address` (`auto`: the cluster `ray start` made), or start a fresh local Ray; the
    dashboard's URL (None when the cluster runs none).

    Plain `ray.init()` would join whatever cluster was started last on this machine. Locally,
    the dashboard gets a free port and every worker is told its URL: Ray Train's placement-group
    cleaner asks the state API, which otherwise gives up when several Ray instances run on one
    machine, and the next trial then waits forever for resources.
    """
    import socket

    import ray

    quiet = {"log_to_driver": True, "logging_level": logging.WARNING}
    _STARTED["connected"] = True
    if address:
        context = ray.init(address=address, **quiet)
        return _url(context.dashboard_url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    context = ray.init(
        address="local",
        include_dashboard=True,
        dashboard_port=port,
        runtime_env={"env_vars": env},
        **quiet,
    )
    _STARTED["session_dir"] = session_dir()
    return _url(context.dashboard_url)


def _url(address: str | None) -> str | None:
    if not address:
        return None
    return address if "://" in address else f"http://{address}"


def session_dir() -> str | None:
    """This process's Ray session folder (its logs are under `logs/`), if Ray is connected:
    the folder of this node's raylet socket, as `ray.nodes()` reports it."""
    import sys

    if "ray" not in sys.modules:
        return None
    import ray

    if not ray.is_initialized():
        return None
    try:
        context = ray.get_runtime_context()
        node_id, session = context.get_node_id(), context.get_session_name()
        nodes = ray.nodes()
    except Exception:  # not connected (any more): nothing to name
        return None
    for node in nodes:
        socket = node.get("RayletSocketName") or ""
        if node.get("NodeID") == node_id and f"/{session}/" in socket:
            return socket.split(f"/{session}/")[0] + f"/{session}"
    return None


def close_ray(remove_session: bool) -> None:
    """Disconnect what `connect_ray` connected (a Ray this process joined some other way is
    left alone); for a local Ray it started, remove its session folder (2 MB of logs per run,
    kept by Ray forever) when `remove_session`."""
    import shutil

    if not _STARTED["connected"]:
        return
    import ray

    ray.shutdown()
    _STARTED["connected"] = False
    folder = _STARTED["session_dir"]
    _STARTED["session_dir"] = None
    if remove_session and folder and os.path.basename(folder).startswith("session_"):
        shutil.rmtree(folder, ignore_errors=True)
        latest = os.path.join(os.path.dirname(folder), "session_latest")
        if os.path.islink(latest) and os.readlink(latest).rstrip("/") == folder.rstrip("/"):
            os.unlink(latest)


def check_storage(storage: str | None) -> str:
    """The storage a search uses: `storage` (`--storage`), else `runs`; on a multi-node
    cluster, refuse the local default, which the other nodes cannot reach. Changes nothing."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and storage is None:
        raise UserError(
            f"this Ray cluster has {len(nodes)} nodes: checkpoints on this machine's disk are "
            "out of the other nodes' reach. Pass --storage s3://bucket/path (or gs://, or a "
            "shared filesystem path such as /mnt/nfs/runs), or set MEDSWEEP_STORAGE."
        )
    return "runs" if storage is None else storage


EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupts:
    """SIGINT (Ctrl-C) and SIGTERM. Inside `fitting()`, the first one makes Tune stop its
    trials and save the experiment state, as on its own SIGINT (the signal is handed to the
    SIGUSR1 handler Tune installs for exactly that), and `tuner.fit()` returns; elsewhere, or
    on a second signal, KeyboardInterrupt. `signal` records the first. Sets
    TUNE_DISABLE_SIGINT_HANDLER=1: Tune's own handler would hide that the run was interrupted.

    Connecting to Ray makes this process a Ray driver, whose core worker installs Abseil's
    failure-signal handler (crash stacks for SIGSEGV, SIGABRT, ... and SIGTERM) over ours: a
    SIGTERM then dumps a stack and aborts (exit 134). `reinstall()` after the connection
    takes SIGINT and SIGTERM back (Ray's own switch, RAY_DISABLE_FAILURE_SIGNAL_HANDLER,
    would also drop the crash stacks of real faults in the driver and its workers).
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict = {}
        self._fitting = False

    def __enter__(self) -> Interrupts:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in EXIT_CODES:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def reinstall(self) -> None:
        """Handle SIGINT and SIGTERM here again (see the class docstring)."""
        for sig in self._old:
            signal.signal(sig, self._handle)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        self._fitting = True
        try:
            yield
        finally:
            self._fitting = False
            if hasattr(signal, "SIGUSR1"):  # Tune leaves its handler behind after fit
                signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    def _handle(self, sig: int, frame) -> None:
        first = self.signal is None
        self.signal = self.signal or sig
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if first and self._fitting and callable(tune_stop):
            log.warning(
                "\n%s: stopping the trials and saving the search state (send it again "
                "to stop at once)",
                signal.Signals(sig).name,
            )
            tune_stop(sig, frame)
            return
        raise KeyboardInterrupt


def interrupted_code(sig: int | None) -> int:
    """The exit code of a search ended by `sig` (SIGINT 130, SIGTERM 143)."""
    return EXIT_CODES.get(sig, 130)
