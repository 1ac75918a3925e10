"""Shared fixtures: synthetic data, the real samples, one Ray head for the session, real
checkpoints and a real experiment folder, and the runners of search/run.py.

Tests make their own data (`make_npz`, `make_malaria`, `synthetic_arrays`) or read the real
samples shipped in `data/`; nothing is downloaded. One Ray head (`ray_head`: `ray start --head`
in a temp dir of its own, on free ports, 2 CPUs) serves the session: subprocess searches
(`run_search`, `searches`) join it with `--address` instead of each paying `ray.init`, and
in-process Ray tests connect to it (`ray_cluster`); it is stopped by PID at the end. A search
that must start its own Ray, as a user's does, passes `local=True`. Checkpoints
(`make_checkpoint`) come from `trainables.train.train_loop`, and experiment folders
(`experiment_factory`, `experiment_dir`) from the writers the search itself uses
(`search.experiment.tables`, `.after`, `.manifest`), fed by real training runs. Test modules
take these as fixtures, never by importing this module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
PNEUMONIA = DATA / "pneumoniamnist.npz"
ISBI = DATA / "isbi2012-membranes"
FAKE_CLASSES = {
    "multiclass": ("basophil", "eosinophil", "lymphocyte"),
    "binary": ("normal", "pneumonia"),
    "multilabel": ("effusion", "nodule", "mass"),
}
EXPERIMENT_EPOCHS = 2
# NIH naming: infected patients give cells of both classes, healthy ones only Uninfected.
MALARIA_INFECTED = ("C33P1thinF", "C100P61ThinF", "C39P4thinF_original", "C186P147NThinF")
MALARIA_HEALTHY = ("C1_thinF", "C2NThinF")

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _synthetic_arrays(
    kind: str, n_classes: int, channels: int, size: int = 28, n: int = 96, seed: int = 0
) -> dict[str, np.ndarray]:
    """Learnable data: each class is a bright square in its own place on a noisy background."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n), ("val", max(n // 2, 2 * n_classes)), ("test", n // 2)):
        shape = (count, size, size) + ((channels,) if channels == 3 else ())
        images = rng.integers(0, 60, size=shape, dtype=np.uint8)
        if kind == "multilabel":
            labels = rng.integers(0, 2, size=(count, n_classes))
            present = [np.flatnonzero(row) for row in labels]
        else:
            labels = (np.arange(count) % n_classes).reshape(-1, 1)
            present = [[int(c)] for c in labels[:, 0]]
        cell = size // 4
        for i, classes in enumerate(present):
            for c in classes:
                r, q = divmod(int(c) % 16, 4)
                images[i, r * cell : (r + 1) * cell, q * cell : (q + 1) * cell] = 220
        if kind == "segmentation":  # the painted squares are the masks, (N, H, W) 0/1
            labels = (images if channels == 1 else images[..., 0]) == 220
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    return arrays


@pytest.fixture
def synthetic_arrays():
    """`synthetic_arrays(kind, n_classes, channels, size=28, n=96, seed=0) -> {split arrays}`:
    learnable npz-layout arrays (see `_synthetic_arrays`)."""
    return _synthetic_arrays


@pytest.fixture
def fake_classes() -> dict[str, tuple[str, ...]]:
    """{kind: class names} of the `fake-<kind>` tasks that `make_checkpoint` and
    `experiment_factory` train."""
    return FAKE_CLASSES


@pytest.fixture
def make_npz(tmp_path):
    """Write a synthetic npz for a task's kind/classes/channels; returns its path."""

    def make(task, size: int = 28, n: int = 96, name: str | None = None, seed: int = 0) -> Path:
        arrays = _synthetic_arrays(task.kind, len(task.classes), task.channels, size, n, seed)
        from trainables.data import npz_name

        path = tmp_path / (name or npz_name(task.flag, size))
        np.savez_compressed(path, **arrays)
        return path

    return make


@pytest.fixture
def pneumonia_path() -> Path:
    """The real PneumoniaMNIST sample shipped in data/ (a missing file fails, never skips)."""
    assert PNEUMONIA.is_file(), f"{PNEUMONIA} is missing: it ships with the repository"
    return PNEUMONIA


@pytest.fixture
def isbi_path() -> Path:
    """The ISBI 2012 membranes sample shipped in data/ (30 EM images + masks)."""
    assert (ISBI / "images").is_dir(), f"{ISBI} is missing: it ships with the repository"
    return ISBI


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """Converted data of the whole session (and of the searches it starts) goes to a folder of
    its own, never to the user's ~/.cache/medsweep/data (`--cache-dir`'s default)."""
    folder = tmp_path_factory.mktemp("medsweep-data-cache")
    previous = os.environ.get("MEDSWEEP_CACHE_DIR")
    os.environ["MEDSWEEP_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("MEDSWEEP_CACHE_DIR", None)
    else:
        os.environ["MEDSWEEP_CACHE_DIR"] = previous


# --- one Ray head for the session ---------------------------------------------------------

HEAD_MARK = "MEDSWEEP_TEST_RAY_HEAD"
"""Set in the environment of `ray start`, so every process of the head (workers rename
themselves `ray::...`) carries it: that is how `RayHead.stop` finds them."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str, bytes]]:
    """{pid: (parent pid, command line, environment)} of every live process this user may
    read."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            state, parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if state != "Z":  # a zombie has ended; only its parent's wait is missing
            found[int(pid)] = (int(parent), cmd, environ)
    return found


def _processes_of(temp_dir: str) -> set[int]:
    """The processes of the head in `temp_dir`: those that name it on their command line or
    carry its mark, and their descendants; never this process."""
    table = _processes()
    mark = f"{HEAD_MARK}={temp_dir}".encode()
    found = {p for p, (_, cmd, env) in table.items() if temp_dir in cmd or mark in env}
    while True:
        children = {p for p, (parent, _, _) in table.items() if parent in found} - found
        if not children:
            break
        found |= children
    return found - {os.getpid()}


@dataclass(frozen=True)
class RayHead:
    """A Ray head this session started with `ray start --head`."""

    address: str
    """host:port of its GCS: what `--address` and `ray.init(address=...)` take."""
    temp_dir: str
    """Its own temp dir: session folders, logs, sockets."""

    @property
    def session_dir(self) -> Path:
        return Path(self.temp_dir, "session_latest").resolve()

    def is_up(self) -> bool:
        """Its GCS answers on its port."""
        host, port = self.address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError:
            return False
        return True

    def stop(self) -> int:
        """SIGKILL its processes by PID (never `ray stop`: that stops every Ray instance on the
        machine, other sessions' included); how many are still there afterwards."""
        for _ in range(20):
            pids = _processes_of(self.temp_dir)
            if not pids:
                return 0
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.25)
        return len(_processes_of(self.temp_dir))


def start_ray_head(num_cpus: int = 2) -> RayHead:
    """`ray start --head` on free ports in a temp dir of its own (short: Ray's sockets live in
    it), with its dashboard (Ray Train's placement-group cleanup asks its state API)."""
    from ray.util import get_node_ip_address

    temp_dir = tempfile.mkdtemp(prefix="msw-ray-", dir="/tmp")
    port, dashboard = _free_port(), _free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",  # so its drivers need no token (NOTES.md)
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}",  # as connect_ray does
        HEAD_MARK: temp_dir,
    }
    args = ["start", "--head", "--port", str(port), "--num-cpus", str(num_cpus)]
    args += ["--temp-dir", temp_dir, "--disable-usage-stats", "--include-dashboard", "true"]
    args += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)]
    args += ["--ray-client-server-port", str(_free_port())]
    exe = str(Path(sys.executable).with_name("ray"))
    out = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=300)
    head = RayHead(f"{get_node_ip_address()}:{port}", temp_dir)
    if out.returncode != 0:
        head.stop()
        raise AssertionError(out.stdout[-2000:] + out.stderr[-2000:])
    return head


@pytest.fixture(scope="session")
def ray_head():
    """One Ray head (2 CPUs, as CI has) for the whole session: the searches that `run_search`
    and `searches` start join it (`--address`) instead of each starting Ray, and `ray_cluster`
    connects this process to it. Stopped by PID at the end; none of its processes may outlive
    that."""
    head = start_ray_head()
    yield head
    left = head.stop()
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    assert left == 0, f"{left} process(es) of the session's Ray head outlived its stop"


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """This process connected to the session's Ray head, for in-process Ray tests."""
    import ray

    ray.init(address=ray_head.address, configure_logging=False)
    yield ray
    ray.shutdown()


# --- image folders ------------------------------------------------------------------------


def _png(path: Path, size: tuple[int, int], value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    pixels = np.clip(rng.normal(value, 20, shape), 0, 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(pixels).save(path)


def _malaria(root: Path, cells: int = 5) -> Path:
    src = root / "cell_images"
    for p, prefix in enumerate(MALARIA_INFECTED + MALARIA_HEALTHY):
        classes = ("Parasitized", "Uninfected") if prefix in MALARIA_INFECTED else ("Uninfected",)
        for name in classes:
            for i in range(cells):
                size = (100, 120) if i % 2 else (130, 90)
                file = f"{prefix}_IMG_2015060{p}_104722_cell_{i}.png"
                _png(src / name / file, size, 80 if name == "Parasitized" else 170)
    return src


@pytest.fixture
def write_png():
    """`write_png(path, (width, height), value, mode="RGB")`: a noisy PNG around `value`."""
    return _png


@pytest.fixture
def make_malaria():
    """`make_malaria(root, cells=5) -> root/cell_images`: NIH-named cell images of 4 infected
    patients (both classes) and 2 healthy ones (Uninfected only), `cells` per class each."""
    return _malaria


# --- running search/run.py ------------------------------------------------------------------


def _write_space(path: Path, min_iter: int = 1, **parameters) -> str:
    base = {
        "model": {"value": "simple_cnn"},
        "weights": {"value": "none"},
        "batch_size": {"value": 32},
    }
    config = {
        "method": "bayes",
        "metric": {"name": "val_auc", "goal": "maximize"},
        "parameters": {**base, **parameters},
        "early_terminate": {"type": "hyperband", "min_iter": min_iter, "eta": 2},
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def write_space():
    """`write_space(path, min_iter=1, **parameters) -> str`: a space file (simple_cnn, no
    weights, batch 32, val_auc, hyperband eta 2 from `min_iter`; min_iter = epochs: ASHA stops
    nothing) with `parameters` laid over it."""
    return _write_space


class Searches:
    """search/run.py as a user runs it, in subprocesses with W&B off. A search joins the
    session's Ray head (`--address`, started on first use) unless `local=True` (a fresh
    `ray.init()` of its own, what a user gets) or its arguments name an address."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def command(
        self, args: tuple[str, ...], local: bool, verbose: bool = True, wandb: str = "off"
    ) -> list[str]:
        """search/run.py with `args`, `--wandb` and (`verbose`) `--verbose`: a test sees Ray's
        and the workers' output as well as medsweep's unless it checks the quiet console."""
        args = list(args)
        if not local and "--address" not in args:
            args += ["--address", self._request.getfixturevalue("ray_head").address]
        args += ["--wandb", wandb] + (["--verbose"] if verbose else [])
        return [sys.executable, str(ROOT / "search" / "run.py"), *args]

    @staticmethod
    def env(extra: dict | None = None) -> dict:
        base = {"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
        return {**os.environ, **base, **(extra or {})}

    def run(
        self,
        *args: str,
        timeout: int = 600,
        local: bool = False,
        env: dict | None = None,
        verbose: bool = True,
        wandb: str = "off",
    ) -> subprocess.CompletedProcess:
        """Run to the end; the CompletedProcess (its output tails are printed)."""
        cmd, env = self.command(args, local, verbose, wandb), self.env(env)
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        print(proc.stdout[-3000:], proc.stderr[-6000:])
        return proc

    def start(
        self, *args: str, local: bool = False, env: dict | None = None, group: bool = False
    ) -> subprocess.Popen:
        """Start in the background; its output (stdout and stderr) goes to `proc.stdout`, a
        file: a pipe nobody reads fills up and blocks the search. `group`: in a process group
        of its own (`os.killpg(proc.pid, sig)` signals it and every process it started, as a
        terminal's Ctrl-C does)."""
        log = tempfile.TemporaryFile(mode="w+")
        proc = subprocess.Popen(
            self.command(args, local),
            cwd=ROOT,
            env=self.env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=group,
        )
        proc.stdout = log
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
        """Wait for a started search; (exit code, its output; the tail is printed)."""
        proc.wait(timeout=timeout)
        proc.stdout.seek(0)
        out = proc.stdout.read()
        print(out[-4000:])
        return proc.returncode, out

    @staticmethod
    def wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
        """Poll `predicate`; fail with the search's output if it ends first or time runs out."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            if proc.poll() is not None:
                proc.stdout.seek(0)
                out = proc.stdout.read()[-3000:]
                raise AssertionError(f"the search ended before {what}:\n{out}")
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def searches(request) -> Searches:
    """`searches.run(*args, local=False, env=None)`, `.start(...)`, `.finish(proc)`,
    `.wait_for(predicate, what, proc)`: search/run.py in subprocesses (see `Searches`)."""
    return Searches(request)


@pytest.fixture
def run_search(searches):
    """`run_search(*args, timeout=600, local=False)`: `searches.run`, search/run.py to its end
    on the session's Ray head (`local=True`: a fresh local Ray); the CompletedProcess."""
    return searches.run


# --- real checkpoints and experiment folders -------------------------------------------------


def fake_task(kind: str, channels: int = 3, image_size: int = 28, classes=None):
    """A task record of `kind` that is in no registry (`fake-<kind>`)."""
    from trainables.tasks import Task

    return Task(
        name=f"fake-{kind}",
        flag=f"fake{kind}",
        kind=kind,
        classes=tuple(classes or FAKE_CLASSES[kind]),
        channels=channels,
        model="simple_cnn",
        image_size=image_size,
    )


def _train(task, arrays: dict, config: dict, report) -> BaseException | None:
    """`train_loop` on the CPU; the exception it raised, if any."""
    import torch

    from trainables.train import Placement, train_loop

    base = {"task": task.name, "model": "simple_cnn", "weights": "none", "batch_size": 16}
    cpu = Placement(device=torch.device("cpu"))
    try:
        train_loop({**base, **config}, report, arrays, task=task, placement=cpu)
    except _StopTrial:
        return None
    except Exception as err:  # an errored trial, as Tune records it
        return err
    return None


class _StopTrial(Exception):
    """Raised from `report` to end a trial after an epoch, as ASHA does."""


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """`make_checkpoint(kind="multiclass", channels=3, image_size=28, classes=None) -> Path`:
    the folder of a real checkpoint (`model.pt`), written by one epoch of `train_loop` on
    synthetic data of a `fake-<kind>` task. Shared by the session: copy it before changing it."""
    made: dict[tuple, Path] = {}

    def make(
        kind: str = "multiclass", channels: int = 3, image_size: int = 28, classes=None
    ) -> Path:
        key = (kind, channels, image_size, tuple(classes or ()))
        if key not in made:
            task = fake_task(kind, channels, image_size, classes)
            arrays = _synthetic_arrays(kind, len(task.classes), channels, image_size, n=32)
            folder = tmp_path_factory.mktemp(f"checkpoint-{kind}") / "checkpoint"

            def keep(metrics: dict, checkpoint_dir: str | None) -> None:
                shutil.copytree(checkpoint_dir, folder, dirs_exist_ok=True)

            error = _train(task, arrays, {"epochs": 1, "dropout": 0.1, "lr": 3e-3}, keep)
            assert error is None, error
            made[key] = folder
        return made[key]

    return make


def _trial_config(i: int, n: int) -> tuple[dict, int | None]:
    """Trial i of n: its config, and the epoch after which it stops early (None: it does not).
    The last trial errors (lr 1e30: a NaN loss); every third from the second stops early."""
    rng = np.random.default_rng(i)
    config = {
        "epochs": EXPERIMENT_EPOCHS,
        "seed": i,
        "lr": float(10 ** rng.uniform(-3, -2)),
        "dropout": float(0.3 * rng.random()),
        "class_weight_power": float(rng.random()),
        "aug_cutoff_epoch": int(rng.integers(0, 2)),
    }
    if i == n - 1:
        config["lr"] = 1e30
    return config, (1 if i % 3 == 1 and i != n - 1 else None)


def _run_trial(root: Path, task, arrays: dict, i: int, n: int) -> tuple[dict, list[dict]]:
    """One trial as Tune leaves it (`<trial>/checkpoint_00000k` per epoch); its table rows."""
    from search.experiment.tables import history_rows, trial_row

    trial_id, config = f"trial_{i:03d}", _trial_config(i, n)[0]
    stop_after = _trial_config(i, n)[1]
    trial_path, rows, started = root / trial_id, [], time.time()

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        name = f"checkpoint_{int(metrics['epoch']) - 1:06d}"
        shutil.copytree(checkpoint_dir, trial_path / name)
        rows.append(
            {
                **metrics,
                "checkpoint_dir_name": name,
                "node_id": "node-0",
                "time_total_s": time.time() - started,
                "timestamp": time.time(),
            }
        )
        if stop_after is not None and metrics["epoch"] >= stop_after:
            raise _StopTrial

    error = _train(task, arrays, config, report)
    full = {"task": task.name, "model": "simple_cnn", **config}
    row = trial_row(
        trial_id, rows, full, error, str(trial_path), task.metric, task.mode, EXPERIMENT_EPOCHS
    )
    return row, history_rows(trial_id, rows)


def _explain(root: Path, task, arrays: dict, trials: list[dict]) -> None:
    """Attribution for every trial with a checkpoint, as the search's after-step writes it."""
    from search.experiment import after
    from trainables.attribution import choose_panel

    panel = choose_panel(arrays["val_labels"], task.kind, 2, seed=0)
    images, labels = arrays["val_images"][panel], arrays["val_labels"][panel]
    focus = {
        t["trial_id"]: after.explain_checkpoint(
            t["checkpoint_path"],
            str(root / t["trial_id"] / after.ATTRIBUTION_DIR),
            (images, labels),
            {"n_samples": 2, "steps": 4},
        )
        for t in after.with_checkpoints(trials, task.metric, task.mode)
    }
    after.attach_focus(trials, focus)


def _space_config(task) -> dict:
    return {
        "method": "bayes",
        "metric": {"name": task.metric, "goal": "maximize"},
        "parameters": {
            "lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-2},
            "dropout": {"distribution": "uniform", "min": 0.0, "max": 0.3},
            "class_weight_power": {"distribution": "uniform", "min": 0.0, "max": 1.0},
            "aug_cutoff_epoch": {"distribution": "int_uniform", "min": 0, "max": 1},
            "model": {"value": "simple_cnn"},
            "epochs": {"value": EXPERIMENT_EPOCHS},
        },
    }


def build_experiment(root: Path, kind: str = "multiclass", trials: int = 4) -> Path:
    """A finished search's folder at `root`, written by the search's own writers (see
    `experiment_factory`)."""
    from search.driver.records import split_counts
    from search.experiment import after
    from search.experiment.manifest import Manifest
    from search.experiment.tables import export_checkpoints, write_tables
    from trainables.train import KNOBS

    task = fake_task(kind)
    arrays = _synthetic_arrays(kind, len(task.classes), task.channels, 28, n=64)
    data_path = root.parent / f"{root.name}-data.npz"
    np.savez(data_path, **arrays)
    started = time.time()
    results = [_run_trial(root, task, arrays, i, trials) for i in range(trials)]
    rows = [row for row, _ in results]
    history = [h for _, rows_ in results for h in rows_]
    export_checkpoints(rows, str(root))
    _explain(root, task, arrays, rows)
    from search.data.reader import SplitReader

    settings = after.EvaluationSettings(task.metric, task.mode)
    after.evaluate_on_test(rows, str(root), task, SplitReader.npz(str(data_path), task), settings)
    write_tables(str(root), rows, history)
    space = _space_config(task)
    knobs = [k for k in KNOBS if k in space["parameters"]]
    Manifest(
        name=root.name,
        task=task.name,
        kind=kind,
        classes=list(task.classes),
        metric=task.metric,
        mode=task.mode,
        searcher="optuna",
        seed=0,
        trials=trials,
        epochs=EXPERIMENT_EPOCHS,
        launcher="function",
        knobs=knobs,
        space=space,
        started_at=started,
        finished_at=time.time(),
        wall_time_s=time.time() - started,
        split_counts=split_counts(task, arrays),
        argv=["--task", task.name],
        resources_per_trial={"cpu": 1.0, "gpu": 0.0},
    ).write(str(root))
    return root


@pytest.fixture(scope="session")
def experiment_factory(tmp_path_factory):
    """`experiment_factory(kind="multiclass", trials=4) -> Path`: a finished search's folder,
    made once per session per (kind, trials) and shared: copy it before changing it.

    Trials train for real (`train_loop`, `EXPERIMENT_EPOCHS` epochs, a `fake-<kind>` task of
    `FAKE_CLASSES[kind]` on synthetic 28 px data); the last errors (NaN loss), every third from
    the second stops early after epoch 1, the rest finish. The folder holds what a search
    leaves: trials.parquet, history.parquet, search.json, each trial's checkpoint_00000k/ and
    checkpoint/, attribution/ (Grad-CAM, IG, maps.npz) for every trial with a checkpoint, and
    test_metrics.json plus <trial>/test_predictions.npz for the best trial. No report.html."""
    made: dict[tuple[str, int], Path] = {}

    def make(kind: str = "multiclass", trials: int = 4) -> Path:
        if (kind, trials) not in made:
            root = tmp_path_factory.mktemp(f"experiments-{kind}-{trials}") / f"{kind}-search"
            root.mkdir()
            made[kind, trials] = build_experiment(root, kind, trials)
        return made[kind, trials]

    return make


@pytest.fixture
def experiment_dir(tmp_path, experiment_factory) -> Path:
    """A private copy of `experiment_factory()` (multiclass, 4 trials) to change freely. As in
    any copied experiment folder, the tables' `checkpoint_path` and `trial_path` still name the
    original's folders."""
    source = experiment_factory()
    return Path(shutil.copytree(source, tmp_path / source.name))


# --- a small slice of the real sample (searcher and repeat tests) ---------------------------


@pytest.fixture
def pneumonia_subset(tmp_path, pneumonia_path):
    """`pneumonia_subset(train=400, val=160, test=160, seed=0) -> Path`: random rows of the real
    PneumoniaMNIST sample as `<tmp>/subset/pneumoniamnist.npz` (pass its folder as
    --data-dir): seconds per epoch, and validation scores that neither saturate nor tie."""

    def make(train: int = 400, val: int = 160, test: int = 160, seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        out = {}
        with np.load(pneumonia_path) as npz:
            for split, n in (("train", train), ("val", val), ("test", test)):
                rows = np.sort(rng.choice(len(npz[f"{split}_labels"]), n, replace=False))
                out[f"{split}_images"] = npz[f"{split}_images"][rows]
                out[f"{split}_labels"] = npz[f"{split}_labels"][rows]
        path = tmp_path / "subset" / "pneumoniamnist.npz"
        path.parent.mkdir(exist_ok=True)
        np.savez(path, **out)
        return path

    return make


@pytest.fixture
def s3_server():
    """moto's S3-compatible server on loopback, with a bucket; the env to reach it."""
    import pyarrow.fs as pafs

    port = _free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
    }
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint,
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    try:
        deadline = time.time() + 30
        while not _try(lambda: fs.create_dir("medsweep-test")):
            assert time.time() < deadline, "moto's S3 server did not start in 30 s"
            time.sleep(0.2)
        yield env, fs
    finally:
        server.terminate()
        server.wait(timeout=10)


def _try(fn) -> bool:
    try:
        fn()
        return True
    except OSError:
        return False
