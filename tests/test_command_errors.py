"""Every command answers a mistake in one line, `error: <what>; <what to do>`, exit code 2,
argparse's own errors included, and leaves a finished experiment folder byte for byte as it
was: run, report, explain, compare and wandb_trial, each called in this process through its
`main(argv)` (no Ray: each mistake is refused before anything heavy starts).

report.py also refuses a folder that is not a complete experiment (no or truncated search.json
or trials.parquet, a partial search, a stranger's folder) and writes nothing there: a report
that is there already stays.

    pytest tests/test_command_errors.py -q
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from search import compare, explain, report, wandb_trial
from search.driver import pipeline

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "run": pipeline.main,
    "report": report.main,
    "explain": explain.main,
    "compare": compare.main,
    "wandb_trial": wandb_trial.main,
}
OLD_REPORT = b"<html>the report a finished search wrote</html>"

# id: (command, arguments, what the line names). `{exp}`: the finished experiment folder,
# `{tmp}`: the test's own folder (holding `file`, a plain file, and `bad.yaml`).
MISTAKES = {
    "report-no-folder": ("report", [], "experiment_dir"),
    "report-unknown-flag": ("report", ["{exp}", "--open"], "--open"),
    "report-missing-folder": ("report", ["{tmp}/nope"], "does not exist"),
    "report-a-file": ("report", ["{tmp}/file"], "is a file"),
    "explain-no-images": ("explain", ["{exp}/trial_000/checkpoint"], "images"),
    "explain-steps-text": (
        "explain",
        ["{exp}/trial_000/checkpoint", "x.png", "--steps", "a"],
        "--steps",
    ),
    "explain-not-a-checkpoint": (
        "explain",
        ["{exp}/history.parquet", "{tmp}/file"],
        "not a medsweep checkpoint",
    ),
    "explain-missing-checkpoint": ("explain", ["{tmp}/nope", "{tmp}/file"], "no checkpoint"),
    "explain-out-dir-a-file": (
        "explain",
        ["{exp}/trial_000/checkpoint", "{tmp}/file", "--out-dir", "{exp}/search.json"],
        "--out-dir",
    ),
    "explain-missing-image": (
        "explain",
        ["{exp}/trial_000/checkpoint", "{tmp}/nope.png"],
        "nope.png",
    ),
    "explain-not-an-image": (
        "explain",
        ["{exp}/trial_000/checkpoint", "{exp}/search.json"],
        "search.json",
    ),
    "compare-no-task": ("compare", [], "--task"),
    "compare-unknown-task": ("compare", ["--task", "patology"], "patology"),
    "compare-trials-text": ("compare", ["--task", "pneumonia", "--trials", "many"], "--trials"),
    "compare-unknown-searcher": ("compare", ["--task", "pneumonia", "--searchers", "tpe"], "tpe"),
    "compare-out-a-file": (
        "compare",
        ["--task", "pneumonia", "--out", "{exp}/search.json"],
        "--out",
    ),
    "compare-bad-space": (
        "compare",
        ["--task", "pneumonia", "--space", "{tmp}/bad.yaml"],
        "bad.yaml",
    ),
    "compare-missing-space": (
        "compare",
        ["--task", "pneumonia", "--space", "{tmp}/no.yaml"],
        "no.yaml",
    ),
    "wandb-unknown-setting": ("wandb_trial", ["--drpout=0.1"], "drpout"),
    "wandb-unknown-task": ("wandb_trial", ["--task=patology"], "patology"),
    "wandb-text-for-a-number": ("wandb_trial", ["--task=pneumonia", "--lr=fast"], "lr"),
    "wandb-epochs-zero": ("wandb_trial", ["--task=pneumonia", "--epochs=0"], "epochs"),
    "wandb-stray-argument": ("wandb_trial", ["lr"], "'lr'"),
    "wandb-bad-split": ("wandb_trial", ["--split", "diagonal"], "--split"),
    "run-trials-text": ("run", ["--task", "pneumonia", "--trials", "abc"], "--trials"),
    "run-existing-experiment": (
        "run",
        [
            "--task",
            "pneumonia",
            "--data-dir",
            "data",
            "--storage",
            "{exp_parent}",
            "--name",
            "{exp_name}",
        ],
        "already holds an experiment (finished)",
    ),
    "run-resume-of-a-stranger": ("run", ["--resume", "{tmp}"], "no search.json"),
}


def digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(experiment_factory) -> tuple[Path, dict[str, str]]:
    """The session's finished experiment (shared: it must never change) and its digest."""
    root = experiment_factory()
    return root, digest(root)


@pytest.fixture
def call(capsys, monkeypatch):
    """`call(command, argv) -> (exit code, stdout, stderr)`, in this process."""
    monkeypatch.chdir(ROOT)

    def run(command: str, argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = COMMANDS[command](argv)
        except SystemExit as stop:
            code = stop.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def assert_one_line(code: int, out: str, err: str, named: str) -> str:
    """Exit code 2 and exactly one line on stderr, `error: <what>; <what to do>`; the line."""
    lines = err.strip().splitlines()
    assert code == 2, (code, out[-2000:], err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert "; " in lines[0], lines[0]
    assert named in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("key", list(MISTAKES))
def test_a_mistake_is_one_line_and_the_experiment_stays(key, finished, call, tmp_path):
    command, argv, named = MISTAKES[key]
    root, before = finished
    (tmp_path / "file").write_text("not what was asked for\n")
    (tmp_path / "bad.yaml").write_text("parameters: [lr\n")
    places = {
        "exp": str(root),
        "exp_parent": str(root.parent),
        "exp_name": root.name,
        "tmp": str(tmp_path),
    }
    assert_one_line(*call(command, [a.format(**places) for a in argv]), named)
    assert digest(root) == before, "the finished experiment changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "file"]


def _drop(name: str):
    return lambda root: (root / name).unlink()


def _truncate(name: str):
    def cut(root: Path) -> None:
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[: len(data) // 2])

    return cut


def _status(status: str):
    def mark(root: Path) -> None:
        info = json.loads((root / "search.json").read_text())
        (root / "search.json").write_text(json.dumps({**info, "status": status}))

    return mark


# id: (how the copy is damaged, what the line names)
DAMAGED = {
    "no-search-json": (_drop("search.json"), "no search.json"),
    "truncated-search-json": (_truncate("search.json"), "search.json is damaged"),
    "no-trials": (_drop("trials.parquet"), "no trials.parquet"),
    "truncated-trials": (_truncate("trials.parquet"), "trials.parquet is damaged"),
    "truncated-history": (_truncate("history.parquet"), "history.parquet is damaged"),
    "truncated-test-metrics": (_truncate("test_metrics.json"), "test_metrics.json is damaged"),
    "interrupted": (_status("interrupted"), "--resume"),
    "running": (_status("running"), "is running"),
}


@pytest.mark.parametrize("key", list(DAMAGED))
def test_report_refuses_an_incomplete_experiment_and_keeps_its_report(
    key, finished, call, tmp_path
):
    damage, named = DAMAGED[key]
    copy = Path(shutil.copytree(finished[0], tmp_path / "copy"))
    damage(copy)
    (copy / "report.html").write_bytes(OLD_REPORT)
    before = digest(copy)
    line = assert_one_line(*call("report", [str(copy)]), named)
    assert str(copy) in line
    assert digest(copy) == before, "report.py wrote into an incomplete experiment"


def test_report_refuses_a_stranger_folder_and_writes_nothing(call, tmp_path):
    (tmp_path / "notes.txt").write_text("my own files\n")
    assert_one_line(*call("report", [str(tmp_path)]), "not an experiment folder")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_report_of_a_complete_experiment_replaces_the_report(finished, call, tmp_path):
    """The refusals above are not a report.py that refuses everything."""
    copy = Path(shutil.copytree(finished[0], tmp_path / "copy"))
    (copy / "report.html").write_bytes(OLD_REPORT)
    code, out, err = call("report", [str(copy)])
    assert code == 0, err[-3000:]
    assert out.strip() == str(copy / "report.html")
    assert (copy / "report.html").read_bytes() != OLD_REPORT
