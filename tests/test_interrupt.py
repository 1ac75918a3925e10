"""An interrupt is an interrupt: SIGINT during a search (before and after the first checkpoint)
stops the trials, saves the state, prints the `--resume` line and exits 130, with no test
evaluation, attribution or report; `--resume` then finishes the search and reads the test split
once, and a second `--resume` of the finished search redoes nothing (exit 0).

Small: a tiny npz, the simple CNN, the function launcher, one trial at a time.
"""

from __future__ import annotations

import glob
import json
import signal
import subprocess
from pathlib import Path

import pytest

from search.experiment.tables import read_table
from trainables.tasks import get_task

pytestmark = pytest.mark.slow
EPOCHS = 2


def checkpoints(exp: Path) -> list[str]:
    return glob.glob(str(exp / "*" / "checkpoint_0*"))


def started(exp: Path) -> bool:
    """A trial's folder exists: Tune's loop runs (its interrupt handler is in place)."""
    return exp.is_dir() and any(p.is_dir() for p in exp.iterdir())


def status(exp: Path) -> str:
    return json.loads((exp / "search.json").read_text())["status"]


@pytest.fixture
def search_args(tmp_path, make_npz, write_space):
    def make(name: str) -> tuple[list[str], Path]:
        data = make_npz(get_task("pneumonia"), n=600)
        space = write_space(tmp_path / "space.yaml", min_iter=EPOCHS)
        args = [
            "--task",
            "pneumonia",
            "--data-dir",
            str(data.parent),
            "--space",
            space,
            "--trials",
            "2",
            "--epochs",
            str(EPOCHS),
            "--launcher",
            "function",
            "--max-concurrent",
            "1",
            "--explain-top",
            "0",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            name,
        ]
        return args, tmp_path / "runs" / name

    return make


def interrupt(searches, proc: subprocess.Popen, exp: Path, ready, what: str) -> None:
    """SIGINT the search once `ready()`; it exits 130 with the resume line and nothing of a
    partial search."""
    searches.wait_for(ready, what, proc)
    proc.send_signal(signal.SIGINT)
    code, out = searches.finish(proc)
    assert code == 130, out[-3000:]
    assert f"python search/run.py --resume {exp}" in out
    assert status(exp) == "interrupted"
    for partial in ("test_metrics.json", "report.html", "trials.parquet"):
        assert not (exp / partial).exists(), f"{partial} of a partial search"


def test_sigint_before_and_after_a_checkpoint_each_resumed(search_args, searches):
    """One search interrupted twice (before its first checkpoint, then after one in the resumed
    run), resumed to its end, then resumed once more: the test split is read once. (It runs on
    the session's Ray head: a driver's SIGINT ends its own trials, not the cluster.)"""
    args, exp = search_args("sig")
    interrupt(
        searches,
        searches.start(*args),
        exp,
        lambda: started(exp) and not checkpoints(exp),
        "the first trial to start",
    )
    interrupt(
        searches,
        searches.start("--resume", str(exp)),
        exp,
        lambda: bool(checkpoints(exp)),
        "the first checkpoint",
    )
    code, out = searches.finish(searches.start("--resume", str(exp)))
    assert code == 0, out[-3000:]
    assert status(exp) == "finished"
    trials = read_table(str(exp / "trials.parquet"))
    assert len(trials) == 2 and all(t["epochs_run"] == EPOCHS for t in trials)
    assert (exp / "test_metrics.json").is_file() and (exp / "report.html").is_file()
    tested = (exp / "test_metrics.json").stat().st_mtime_ns
    code, out = searches.finish(searches.start("--resume", str(exp)), timeout=120)
    assert code == 0 and "finished already" in out, out[-2000:]
    assert (exp / "test_metrics.json").stat().st_mtime_ns == tested  # the test split read once
