"""An experiment is never overwritten: a new search refuses a folder that holds one (use
--resume or another --name), a running search holds a lock on its folder that a second one
reports in one line (pid and host), every path the searcher keeps is relative to the folder
(a copied or moved folder resumes on its own optuna.db and never touches the original), and
SIGTERM ends a real search with exit code 143, its state saved and the resume line printed.

The fast tests call `search.driver.pipeline.main` in this process (each refusal comes before
Ray starts) and drive the Optuna searcher through Tune's save/restore protocol; the slow one
runs search/run.py as a user does.

    pytest tests/test_protect.py -q            # seconds; -m slow: the real search (~1 min)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import optuna
import pytest
from ray import tune

from search.driver.checks import UserError
from search.driver.options import parse_args
from search.driver.pipeline import main
from search.driver.relocate import use_experiment
from search.driver.resume import claim, resumed_args
from search.driver.searcher import BestEpochOptuna, study_storage
from trainables.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2


def digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(capsys, argv: list[str]) -> str:
    """`main(argv)` in this process: exit code 2 and one `error:` line; the line."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    return lines[0]


def as_interrupted(folder: Path, argv: list[str]) -> None:
    """Mark the experiment copy at `folder` as an interrupted search of command line `argv`."""
    info = json.loads((folder / "search.json").read_text())
    info.update(status="interrupted", finished_at=None, argv=argv)
    (folder / "search.json").write_text(json.dumps(info))


def test_a_new_search_refuses_a_folder_that_holds_one(experiment_dir, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    before = digest(experiment_dir)
    args = ["--task", "pneumonia", "--data-dir", "data", "--storage", str(experiment_dir.parent)]
    line = refused(capsys, [*args, "--name", experiment_dir.name])
    assert line == (
        f"error: {experiment_dir} already holds an experiment (finished); pass --resume to "
        "continue it, or another --name"
    )
    stranger = experiment_dir.parent / "notes"
    stranger.mkdir()
    (stranger / "mine.txt").write_text("not a search\n")
    assert "mine.txt" in refused(capsys, [*args, "--name", "notes"])
    assert digest(experiment_dir) == before
    assert [p.name for p in stranger.iterdir()] == ["mine.txt"]


def test_a_folder_in_use_is_refused_with_its_pid_and_host(experiment_dir, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    as_interrupted(experiment_dir, ["--task", "pneumonia", "--data-dir", "data"])
    before = digest(experiment_dir)
    args = ["--task", "pneumonia", "--storage", str(experiment_dir.parent)]
    with claim(str(experiment_dir), resuming=True):
        held = digest(experiment_dir)
        for argv in (["--resume", str(experiment_dir)], [*args, "--name", experiment_dir.name]):
            line = refused(capsys, argv)
            assert line == (
                f"error: {experiment_dir} is in use by a running search (pid {os.getpid()} "
                f"on host {socket.gethostname()}); wait for it or pass another --name"
            )
        assert digest(experiment_dir) == held
    before[".lock"] = held[".lock"]  # the lock file stays; everything else as it was
    assert digest(experiment_dir) == before


def test_a_refused_new_search_leaves_no_folder_behind(tmp_path, capsys, monkeypatch):
    """The lock is taken before the data are read: a search refused there leaves nothing."""
    monkeypatch.chdir(ROOT)
    (tmp_path / "space.yaml").write_text("parameters: {lr: {distribution: uniform}}\n")
    argv = ["--task", "pneumonia", "--data-dir", "data", "--space", str(tmp_path / "space.yaml")]
    refused(capsys, [*argv, "--storage", str(tmp_path / "runs" / "new"), "--name", "x"])
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_search_stopped_before_tune_saved_state_starts_it_again(experiment_dir):
    """What the old message told the user to do by hand ("run it again"), --resume does, in
    the same folder: the new-search refusal would stop the hand-run command now."""
    as_interrupted(experiment_dir, ["--task", "pneumonia", "--data-dir", "data"])
    resumed = resumed_args(parse_args(["--resume", str(experiment_dir)]))
    assert not resumed.restore and not resumed.previous.finished
    assert resumed.path == str(experiment_dir)
    outputs = resumed.settings.outputs
    assert (outputs.storage, outputs.name) == (str(experiment_dir.parent), experiment_dir.name)
    with pytest.raises(UserError, match="no search.json"):
        resumed_args(parse_args(["--resume", str(experiment_dir.parent)]))


def test_resume_of_a_damaged_search_json_is_one_line(experiment_dir, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    text = (experiment_dir / "search.json").read_text()
    (experiment_dir / "search.json").write_text(text[: len(text) // 2])
    before = digest(experiment_dir)
    assert "search.json is damaged" in refused(capsys, ["--resume", str(experiment_dir)])
    assert digest(experiment_dir) == before


def test_resume_of_a_finished_search_writes_nothing(experiment_dir, caplog, monkeypatch):
    monkeypatch.chdir(ROOT)
    before = digest(experiment_dir)
    with caplog.at_level(logging.INFO, logger="medsweep"):
        assert main(["--resume", str(experiment_dir)]) == 0
    assert "finished already" in caplog.text
    assert digest(experiment_dir) == before


def _searcher(folder: Path) -> BestEpochOptuna:
    _, where = study_storage(str(folder), "s")
    space = {"lr": tune.loguniform(1e-4, 1e-2)}
    return BestEpochOptuna(
        2, where, "s", seed=0, space=space, metric="val_auc", mode="max", home=str(folder)
    )


def _unpickled(folder: Path) -> BestEpochOptuna:
    """The searcher as tuner.pkl holds it: built for `folder`, its study not opened yet."""
    where = f"sqlite:///{folder / 'optuna.db'}"
    return BestEpochOptuna(2, where, "s", seed=0, home=str(folder))


def _tell(searcher: BestEpochOptuna, trial_id: str, value: float) -> None:
    searcher.suggest(trial_id)
    for epoch in (1, 2):
        result = {"epoch": epoch, "training_iteration": epoch, "val_auc": value}
        searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result)


def _values(folder: Path) -> list[float]:
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'optuna.db'}")
    return [t.value for t in study.get_trials() if t.value is not None]


def test_a_copied_experiment_resumes_on_its_own_study(tmp_path):
    """Tune pickles the searcher (tuner.pkl) and saves its state; restored in a copy of the
    folder, it opens the copy's optuna.db, and the original stays byte for byte as it was."""
    original = tmp_path / "original"
    searcher = _searcher(original)
    assert searcher.storage == "sqlite:///optuna.db"  # what tuner.pkl and the state keep
    _tell(searcher, "a", 0.6)
    searcher.suggest("running")  # interrupted after its first epoch
    searcher.on_trial_result("running", {"epoch": 1, "training_iteration": 1, "val_auc": 0.6})
    searcher.save(str(original / "searcher-state.pkl"))
    copy = Path(shutil.copytree(original, tmp_path / "copy"))
    before = digest(original)
    with use_experiment(str(copy)):
        restored = _unpickled(original)
        restored.restore(str(copy / "searcher-state.pkl"))
        last = {"epoch": 2, "training_iteration": 2, "val_auc": 0.65}
        restored.on_trial_result("running", last)
        restored.on_trial_complete("running", last)
        _tell(restored, "b", 0.7)
    assert digest(original) == before
    assert _values(copy) == [0.6, 0.65, 0.7] and _values(original) == [0.6]
    moved = Path(shutil.move(copy, tmp_path / "moved"))
    with use_experiment(str(moved)):  # the copy's folder is gone: nothing may open it
        again = _unpickled(copy)
        again.restore(str(moved / "searcher-state.pkl"))
        _tell(again, "c", 0.8)
    assert not copy.exists() and _values(moved) == [0.6, 0.65, 0.7, 0.8]


# --- the real thing: two searches at once, SIGTERM, a copy resumed --------------------------


@pytest.fixture
def search_args(tmp_path, make_npz, write_space):
    data = make_npz(get_task("pneumonia"), n=300)
    lr = {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-2}
    space = write_space(tmp_path / "space.yaml", min_iter=EPOCHS, lr=lr)  # Optuna searches
    args = ["--task", "pneumonia", "--data-dir", str(data.parent), "--space", space]
    args += ["--trials", "2", "--epochs", str(EPOCHS), "--launcher", "function"]
    args += ["--max-concurrent", "1", "--explain-top", "0", "--storage", str(tmp_path / "runs")]
    return [*args, "--name", "term"], tmp_path / "runs" / "term"


def reported(exp: Path) -> bool:
    """The first trial reported an epoch (its result.json has a line)."""
    return any(p.stat().st_size > 0 for p in exp.glob("*/result.json"))


@pytest.mark.slow
def test_sigterm_saves_and_a_copy_resumes_without_touching_the_original(search_args, searches):
    """Two searches started at once with one --name: exactly one runs, the other is refused in
    one line. SIGTERM once its first trial reported: exit 143, search.json `interrupted`, the
    resume line. A copy of the folder, resumed, finishes on its own optuna.db; the original is
    byte for byte as the interrupt left it; a new search with that --name is refused."""
    args, exp = search_args
    first, second = searches.start(*args), searches.start(*args)
    deadline = time.time() + 120
    while first.poll() is None and second.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    loser, winner = (first, second) if first.poll() is not None else (second, first)
    code, out = searches.finish(loser, timeout=60)
    assert code == 2, out[-3000:]
    assert f"error: {exp} is in use by a running search (pid {winner.pid} on host" in out
    searches.wait_for(lambda: reported(exp), "the first trial's report", winner)
    winner.send_signal(signal.SIGTERM)
    code, out = searches.finish(winner)
    assert code == 143, out[-3000:]
    assert f"python search/run.py --resume {exp}" in out
    assert json.loads((exp / "search.json").read_text())["status"] == "interrupted"
    assert "SIGTERM received" not in out  # Ray's failure-signal handler did not take it
    before = digest(exp)
    copy = Path(shutil.copytree(exp, exp.parent / "copy"))
    code, out = searches.finish(searches.start("--resume", str(copy)))
    assert code == 0, out[-3000:]
    assert digest(exp) == before, "resuming the copy changed the original"
    study = optuna.load_study(study_name="term", storage=f"sqlite:///{copy / 'optuna.db'}")
    assert len([t for t in study.get_trials() if t.state.is_finished()]) == 2
    proc = searches.run(*args, timeout=120)
    assert proc.returncode == 2 and "already holds an experiment (interrupted)" in proc.stderr
    assert digest(exp) == before
