"""An interrupt is an interrupt, in every phase: SIGINT or SIGTERM, to the driver or to its
whole process group (a terminal's Ctrl-C reaches Ray's processes too), before the first
checkpoint, mid-search, during attribution, during the test prediction and during the report
each exits 130 / 143 with the `--resume` line, and search.json says `interrupted`, the phase it
was in and the phases done. Nothing runs on a partial search; `--resume` redoes no finished
phase: no Tune restore once the trials finished, explained trials keep their maps, the test
split is read once. A resume of the finished search redoes nothing (exit 0).

One search, interrupted in each phase in turn and resumed each time. Small: a tiny npz (a
large test split, so the test prediction lasts), the simple CNN, the function launcher, one
trial at a time. The first run and the one interrupted during attribution start their own local
Ray (its processes are in the driver's process group, as under a terminal, and must all be gone
when it exits); the others join the session's Ray head. Each signal after the search phase is
sent while the driver is stopped (SIGSTOP) in the phase search.json names, so no phase is
raced. Fast tests check search.json's phase fields, and the per-trial part of attribution: a
trial whose maps are written is not explained again.

    pytest tests/test_interrupt.py -q -m "not slow"   # seconds; the chain: several minutes
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from search.experiment import after
from search.experiment.after_settings import ExplainSettings
from search.experiment.manifest import PHASES, Manifest
from search.experiment.tables import read_table
from trainables.data import npz_name
from trainables.tasks import get_task

EPOCHS = 2
TEST_IMAGES = 3000
MARK = "MEDSWEEP_TEST_INTERRUPT"
"""Set in each search's environment, so every process it starts carries it."""


def checkpoints(exp: Path) -> list[str]:
    return glob.glob(str(exp / "*" / "checkpoint_0*"))


def started(exp: Path) -> bool:
    """A trial's folder exists: Tune's loop runs (its interrupt handler is in place)."""
    return exp.is_dir() and any(p.is_dir() for p in exp.iterdir())


def manifest(exp: Path) -> dict:
    """search.json ({} before it is written; it is written atomically)."""
    try:
        return json.loads((exp / "search.json").read_text())
    except FileNotFoundError:
        return {}


def in_phase(exp: Path, phase: str):
    return lambda: manifest(exp).get("phase") == phase


def stamps(exp: Path, pattern: str) -> dict[str, int]:
    """{path: mtime_ns} of the files matching `pattern` under `exp`."""
    return {str(p): p.stat().st_mtime_ns for p in sorted(exp.glob(pattern))}


def ours(mark: str) -> list[int]:
    """Live processes whose environment carries `mark`: what the searches started."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and f"{MARK}={mark}".encode() in environ:
            found.append(int(pid))
    return found


def no_strays(mark: str) -> None:
    """Every process a search started has ended (within 30 s); any left are killed, and fail."""
    deadline = time.time() + 30
    while (left := ours(mark)) and time.time() < deadline:
        time.sleep(0.2)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived their search: {left}"


@pytest.fixture
def search_args(tmp_path, synthetic_arrays, write_space):
    task = get_task("pneumonia")
    arrays = synthetic_arrays(task.kind, 2, task.channels, n=600)
    big = synthetic_arrays(task.kind, 2, task.channels, n=2 * TEST_IMAGES, seed=1)
    arrays.update(test_images=big["test_images"], test_labels=big["test_labels"])
    np.savez_compressed(tmp_path / npz_name(task.flag, 28), **arrays)
    space = write_space(tmp_path / "space.yaml", min_iter=EPOCHS)
    args = ["--task", "pneumonia", "--data-dir", str(tmp_path), "--space", space]
    args += ["--trials", "2", "--epochs", str(EPOCHS), "--launcher", "function"]
    args += ["--max-concurrent", "1", "--test-top", "2", "--storage", str(tmp_path / "runs")]
    return [*args, "--name", "sig"], tmp_path / "runs" / "sig"


class Chain:
    """One experiment's invocations: each started, signalled when `ready`, and checked."""

    def __init__(self, searches, exp: Path, mark: str) -> None:
        self.searches, self.exp, self.env = searches, exp, {MARK: mark}
        self.mark = mark

    def start(self, *args: str, local: bool) -> subprocess.Popen:
        return self.searches.start(*args, local=local, env=self.env, group=True)

    def interrupt(self, proc, ready, what: str, sig: int, group: bool) -> str:
        """Send `sig` (to the driver, or to its group) once `ready()`; it exits 130 / 143
        with the resume line, search.json says interrupted, no process it started is left.
        Its output."""
        self.searches.wait_for(ready, what, proc)
        (os.killpg if group else os.kill)(proc.pid, sig)
        return self.check(proc, sig)

    def interrupt_in(self, proc, phase: str, sig: int, group: bool) -> str:
        """`interrupt` once search.json says `phase`, with the driver stopped meanwhile
        (SIGSTOP): only it moves search.json to the next phase, so the signal lands in this
        one."""
        self.searches.wait_for(in_phase(self.exp, phase), f"the {phase} phase", proc)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            assert in_phase(self.exp, phase)(), f"the {phase} phase was over before the signal"
            (os.killpg if group else os.kill)(proc.pid, sig)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        return self.check(proc, sig)

    def check(self, proc, sig: int) -> str:
        code, out = self.searches.finish(proc)
        assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], out[-3000:]
        assert f"python search/run.py --resume {self.exp}" in out
        assert "SIGTERM received" not in out  # Ray's failure-signal handler did not take it
        assert manifest(self.exp)["status"] == "interrupted"
        no_strays(self.mark)
        return out

    def done(self, phase: str, *done: str) -> None:
        info = manifest(self.exp)
        assert (info["phase"], info["phases_done"]) == (phase, list(done)), info


def test_search_json_phases_and_files_from_before_them(experiment_dir):
    """A finished search.json (written before the fields existed: no phase) reads as
    reportable; an interrupted one is reportable only when it was in its report phase."""
    info = manifest(experiment_dir)
    old = {k: v for k, v in info.items() if k not in ("phase", "phases_done")}
    m = Manifest.from_dict(old)
    assert (m.phase, m.phases_done, m.reportable) == (None, [], True)
    cut = {**old, "status": "interrupted", "finished_at": None}
    for phase in PHASES:
        done = list(PHASES[: PHASES.index(phase)])
        m = Manifest.from_dict({**cut, "phase": phase, "phases_done": done})
        assert m.reportable == (phase == "report") and m.to_dict()["phases_done"] == done


def test_explained_trials_keep_their_maps(experiment_dir):
    """An attribution step interrupted after some trials' maps were written redoes none of
    them: their files stay as they were, their focus is read back from maps.npz."""
    trials = read_table(str(experiment_dir / "trials.parquet"))
    before = stamps(experiment_dir, "*/attribution/*")
    settings = ExplainSettings("val_auc", "max", top_k=2)
    # every chosen trial is explained already: neither the task nor the data is read
    focus = after.explain_trials(trials, str(experiment_dir), None, None, settings)
    best = after.with_checkpoints(trials, "val_auc", "max")[:2]
    assert focus == pytest.approx({t["trial_id"]: t["attr_focus"] for t in best})
    assert stamps(experiment_dir, "*/attribution/*") == before


@pytest.mark.slow
def test_interrupts_in_every_phase_each_resumed_without_redoing_a_phase(
    search_args, searches, tmp_path
):
    """SIGINT before the first checkpoint and SIGTERM after it (the search phase), SIGINT to
    the group during attribution, SIGTERM to the driver during the test prediction, SIGINT to
    the group during the report; each resumed; the last resume finishes with every earlier
    phase's files untouched, and one more resume redoes nothing."""
    args, exp = search_args
    chain = Chain(searches, exp, str(tmp_path))
    partial = ("test_metrics.json", "report.html", "trials.parquet")
    proc = chain.start(*args, local=True)
    ready = lambda: started(exp) and not checkpoints(exp)  # noqa: E731
    chain.interrupt(proc, ready, "the first trial to start", signal.SIGINT, group=True)
    proc = chain.start("--resume", str(exp), local=False)
    ready = lambda: bool(checkpoints(exp))  # noqa: E731
    chain.interrupt(proc, ready, "the first checkpoint", signal.SIGTERM, group=False)
    chain.done("search")
    assert not any((exp / f).exists() for f in partial), "results of a partial search"

    proc = chain.start("--resume", str(exp), local=True)
    chain.interrupt_in(proc, "attribution", signal.SIGINT, group=True)
    chain.done("attribution", "search")
    trials = read_table(str(exp / "trials.parquet"))
    assert len(trials) == 2 and all(t["epochs_run"] == EPOCHS for t in trials)

    proc = chain.start("--resume", str(exp), local=False)
    out = chain.interrupt_in(proc, "test", signal.SIGTERM, group=False)
    chain.done("test", "search", "attribution")
    assert "Trial status" not in out, "Tune restored a search whose trials had all finished"
    maps = stamps(exp, "*/attribution/*")
    assert len(maps) == 6 and not (exp / "test_metrics.json").exists()

    proc = chain.start("--resume", str(exp), local=False)
    chain.interrupt_in(proc, "report", signal.SIGINT, group=True)
    chain.done("report", "search", "attribution", "test", "repeat")
    tested = stamps(exp, "*/test_predictions.npz") | stamps(exp, "test_metrics.json")
    assert len(tested) == 3 and not (exp / "report.html").exists()

    code, out = searches.finish(chain.start("--resume", str(exp), local=False))
    assert code == 0, out[-3000:]
    info = manifest(exp)
    assert info["status"] == "finished" and info["phase"] is None
    assert info["phases_done"] == ["search", "attribution", "test", "repeat", "report"]
    assert (exp / "report.html").is_file()
    assert stamps(exp, "*/attribution/*") == maps, "attribution redone"
    tested_now = stamps(exp, "*/test_predictions.npz") | stamps(exp, "test_metrics.json")
    assert tested_now == tested, "the test split read again"
    assert "attribution maps for" not in out and "test: finished in an earlier run" in out
    code, out = searches.finish(chain.start("--resume", str(exp), local=False), timeout=120)
    assert code == 0 and "finished already" in out, out[-2000:]
    assert stamps(exp, "*/test_predictions.npz") | stamps(exp, "test_metrics.json") == tested
    no_strays(chain.mark)
