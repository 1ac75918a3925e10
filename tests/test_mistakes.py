"""A newcomer's mistakes, typed at search/run.py as a user would: each is refused before Ray
starts, in one line `error: <what is wrong>; <what to do>`, with exit code 2 and no traceback,
naming the flag or the file. Requests the cluster can never satisfy are refused right after Ray
connects (slow: they start Ray).

Every mistake goes through the entry function search/run.py calls (`pipeline.main(argv)`), in
this process, with `RAY_TMPDIR` pointing into the test's folder, so "no Ray session started" is
checked on disk. A handful also run as the command itself, in a process of their own: the exit
code, the one line on stderr and no Ray session, as a shell sees them.

    pytest tests/test_mistakes.py -q      # a few seconds; the GPU refusal is slow (-m slow)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
GOOD_SPACE = {
    "model": {"value": "simple_cnn"},
    "weights": {"value": "none"},
    "lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-2},
}

# id: (arguments after `--task pneumonia --data-dir data`, unless they start with `!`; what the
# message must name). `{d}` is the test's folder of broken files.
MISTAKES = {
    "trials-zero": (["--trials", "0"], "--trials"),
    "trials-negative": (["--trials", "-3"], "--trials"),
    "trials-not-a-number": (["--trials", "abc"], "--trials"),
    "epochs-zero": (["--epochs", "0"], "--epochs"),
    "batch-size-zero": (["--batch-size", "0"], "--batch-size"),
    "time-budget-negative": (["--time-budget", "-5"], "--time-budget"),
    "time-budget-zero": (["--time-budget", "0"], "--time-budget"),
    "max-concurrent-zero": (["--max-concurrent", "0"], "--max-concurrent"),
    "workers-zero": (["--workers-per-trial", "0"], "--workers-per-trial"),
    "gpus-negative": (["--gpus-per-trial", "-1"], "--gpus-per-trial"),
    "cpus-zero": (["--cpus-per-worker", "0"], "--cpus-per-worker"),
    "max-failures": (["--max-failures", "-5"], "--max-failures"),
    "max-failures-forever": (["--max-failures", "-1"], "--max-failures"),
    "ig-baseline-word": (["--ig-baseline", "foo"], "--ig-baseline"),
    "storage-empty": (["--storage", ""], "--storage"),
    "name-too-long": (["--name", "x" * 101], "--name"),
    "split-on-medmnist": (["--split", "patient"], "--split"),
    "address-nothing-there": (["--address", "127.0.0.1:1"], "--address"),
    "cache-dir-is-a-file": (["--cache-dir", "{d}/a-file"], "--cache-dir"),
    "labels-on-medmnist": (["--labels", "x.csv"], "--labels"),
    "table-without-labels": (["!", "--task", "table", "--data-dir", "data"], "--labels"),
    "seed-negative": (["--seed", "-1"], "--seed"),
    "seed-too-big": (["--seed", str(2**32)], "--seed"),
    "folds-one": (["--folds", "1"], "--folds"),
    "folds-negative": (["--folds", "-2"], "--folds"),
    "image-size-zero": (["--image-size", "0"], "--image-size"),
    "test-top-negative": (["--test-top", "-1"], "--test-top"),
    "explain-top-negative": (["--explain-top", "-2"], "--explain-top"),
    "repeat-best-negative": (["--repeat-best", "-1"], "--repeat-best"),
    "ig-steps-zero": (["--ig-steps", "0"], "--ig-steps"),
    "resident-budget-zero": (["--resident-budget-mb", "0"], "--resident-budget-mb"),
    "name-with-slash": (["--name", "a/b"], "--name"),
    "name-dot-dot": (["--name", ".."], "--name"),
    "smoke-test-and-epochs": (["--smoke-test", "--epochs", "3"], "--epochs"),
    "smoke-test-and-trials": (["--smoke-test", "--trials", "5"], "--trials"),
    "operating-point-sens-2": (["--operating-point", "sens=2"], "--operating-point"),
    "storage-ftp": (["--storage", "ftp://x/y"], "ftp://"),
    "storage-proc": (["--storage", "/proc/foo"], "--storage"),
    "storage-is-a-file": (["--storage", "{d}/a-file"], "--storage"),
    "searcher-typo": (["--searcher", "optina"], "--searcher"),
    "early-stopping-typo": (["--early-stopping", "hyperband"], "--early-stopping"),
    "tpe-unknown-key": (["--tpe", "startups=3"], "--tpe 'startups=3'"),
    "tpe-share-too-big": (["--tpe", "startup=1.5"], "--tpe startup=1.5"),
    "tpe-not-yes-no": (["--tpe", "liar=maybe"], "--tpe liar=maybe"),
    "tpe-with-random": (["--tpe", "startup=3", "--searcher", "random"], "--tpe"),
    "no-task": (["!", "--trials", "3"], "--task"),
    "task-typo": (["!", "--task", "patology"], "--task"),
    "data-dir-missing": (["!", "--task", "pneumonia", "--data-dir", "{d}/no-such"], "--data-dir"),
    "folder-task-no-data-dir": (["!", "--task", "malaria"], "--data-dir"),
    "resume-nothing-there": (["!", "--resume", "{d}/no-experiment"], "--resume"),
    "resume-with-epochs": (["!", "--resume", "{d}/no-experiment", "--epochs", "3"], "--epochs"),
    "space-missing": (["--space", "{d}/nope.yaml"], "--space"),
    # files: the file and the problem are named
    "npz-32px-as-28": (
        ["!", "--task", "pneumonia", "--data-dir", "{d}/big", "--space", "{d}/good.yaml"],
        "big/pneumoniamnist.npz",
    ),
    "space-bad-range": (["--space", "{d}/range.yaml"], "range.yaml: parameter 'lr': min 0.1"),
    "space-unknown-key": (["--space", "{d}/key.yaml"], "key.yaml: parameter 'lrate'"),
    "space-not-yaml": (["--space", "{d}/bad.yaml"], "bad.yaml: not valid YAML"),
    "space-not-a-number": (["--space", "{d}/abc.yaml"], "abc.yaml: parameter 'lr': 'abc'"),
    "npz-truncated": (
        ["--data-dir", "{d}/truncated", "--space", "{d}/good.yaml"],
        "truncated/pneumoniamnist.npz",
    ),
    "npz-label-out-of-range": (
        ["--data-dir", "{d}/labels", "--space", "{d}/good.yaml"],
        "labels/pneumoniamnist.npz [train]",
    ),
    "npz-test-labels": (
        ["--data-dir", "{d}/testlabels", "--space", "{d}/good.yaml"],
        "testlabels/pneumoniamnist.npz [test]",
    ),
    "npz-empty": (
        ["--data-dir", "{d}/empty", "--space", "{d}/good.yaml"],
        "empty/pneumoniamnist.npz",
    ),
    "npz-one-class-in-val": (
        ["--data-dir", "{d}/oneclass", "--space", "{d}/good.yaml"],
        "oneclass/pneumoniamnist.npz [val]",
    ),
    "space-dropout-below-0": (["--space", "{d}/dropout.yaml"], "'dropout' can take -0.2"),
    "space-key-twice": (["--space", "{d}/twice.yaml"], "'lr' given twice"),
    "space-misspelt-min": (["--space", "{d}/mn.yaml"], "'mn'"),
    "space-minimise-auc": (["--space", "{d}/goal.yaml"], "worst val_auc"),
    "space-unet-on-classifier": (["--space", "{d}/unet.yaml"], "does not fit a binary"),
    "space-unknown-model": (["--space", "{d}/model.yaml"], "'resnet181' is not a model"),
    "weights-missing-file": (
        ["--space", "{d}/good.yaml", "--weights", "{d}/none.pt"],
        "--weights",
    ),
    "weights-typo": (["--space", "{d}/resnet.yaml", "--weights", "imagnet"], "imagnet"),
    "weights-not-a-state-dict": (
        ["--space", "{d}/resnet.yaml", "--weights", "{d}/a-file"],
        "--weights",
    ),
    "folder-task-on-images-and-masks": (
        ["!", "--task", "folder", "--data-dir", "{d}/seg", "--space", "{d}/good.yaml"],
        "--task segfolder",
    ),
    "folder-one-class": (
        ["!", "--task", "folder", "--data-dir", "{d}/oneclass-folder", "--space", "{d}/good.yaml"],
        "at least 2",
    ),
}


def _arrays(size: int = 28, n: int = 40) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for split in ("train", "val", "test"):
        out[f"{split}_images"] = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    return out


def _npz(folder: Path, **changes) -> None:
    folder.mkdir()
    np.savez(folder / "pneumoniamnist.npz", **{**_arrays(), **changes})


def _broken_files(d: Path) -> None:
    (d / "a-file").write_text("not a folder")
    for name, lr in (
        ("good", GOOD_SPACE["lr"]),
        ("abc", {"value": "abc"}),
        ("range", {"distribution": "uniform", "min": 0.1, "max": 0.01}),
    ):
        params = {**GOOD_SPACE, "lr": lr}
        (d / f"{name}.yaml").write_text(yaml.safe_dump({"parameters": params}))
    (d / "bad.yaml").write_text("parameters: {lr: [1, 2\n")
    spaces = {
        "dropout": {"dropout": {"distribution": "uniform", "min": -0.2, "max": 0.5}},
        "mn": {"lr": {"distribution": "uniform", "mn": 0.001, "max": 0.01}},
        "unet": {"model": {"values": ["simple_cnn", "unet-resnet18"]}},
        "model": {"model": {"values": ["simple_cnn", "resnet181"]}},
        "resnet": {"model": {"value": "resnet18"}},
    }
    for name, params in spaces.items():
        (d / f"{name}.yaml").write_text(yaml.safe_dump({"parameters": {**GOOD_SPACE, **params}}))
    (d / "twice.yaml").write_text("parameters:\n  lr: {value: 0.01}\n  lr: {value: 0.1}\n")
    goal = {"metric": {"name": "val_auc", "goal": "minimize"}, "parameters": GOOD_SPACE}
    (d / "goal.yaml").write_text(yaml.safe_dump(goal))
    (d / "key.yaml").write_text(
        yaml.safe_dump({"parameters": {**GOOD_SPACE, "lrate": {"value": 1}}})
    )
    (d / "empty").mkdir()
    (d / "empty" / "pneumoniamnist.npz").write_bytes(b"")
    (d / "truncated").mkdir()
    real = (DATA / "pneumoniamnist.npz").read_bytes()
    (d / "truncated" / "pneumoniamnist.npz").write_bytes(real[: len(real) // 2])
    _npz(d / "big", **{k: v for k, v in _arrays(size=32).items() if k.endswith("_images")})
    _npz(d / "oneclass", val_labels=np.zeros((40, 1), np.uint8))
    _npz(d / "labels", train_labels=np.full((40, 1), 5, np.uint8))
    _npz(d / "testlabels", test_labels=np.full((40, 1), 7, np.uint8))
    from PIL import Image

    for sub in ("images", "masks"):
        (d / "seg" / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "seg" / sub / "a.png")
    (d / "oneclass-folder" / "cat").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(
            d / "oneclass-folder" / "cat" / f"{i}.png"
        )


# Run as the command itself too: a check of the flags, argparse's own refusals, a file.
AS_COMMANDS = ("trials-zero", "trials-not-a-number", "task-typo", "space-missing", "no-task")


def run_args(args: list[str], d: Path) -> list[str]:
    """The arguments of search/run.py for a MISTAKES entry (`{d}`: the broken files' folder)."""
    args = [a.replace("{d}", str(d)) for a in args]
    if args[:1] == ["!"]:
        args = args[1:]
    else:
        args = ["--task", "pneumonia", "--data-dir", str(DATA), *args]
    return [*args, "--wandb", "off"]


def command(args: list[str], d: Path) -> list[str]:
    return [sys.executable, str(ROOT / "search" / "run.py"), *run_args(args, d)]


def refuse(cmd: list[str], ray_tmp: Path) -> dict:
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return {"code": proc.returncode, "stderr": proc.stderr, "stdout": proc.stdout}


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    """A folder of broken spaces, npz files and folders (see `_broken_files`)."""
    d = tmp_path_factory.mktemp("mistakes")
    _broken_files(d)
    return d


@pytest.fixture
def main_in_process(monkeypatch, capsys, tmp_path):
    """`main_in_process(argv) -> {"code", "stderr", "stdout", "ray_tmp"}`: search/run.py's entry
    function here, as the command calls it (from the repository root), with `RAY_TMPDIR` in
    the test's folder; an argparse refusal's SystemExit becomes its code."""
    from search.driver.pipeline import main

    ray_tmp = tmp_path / "ray-tmp"
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)  # main sets it
    monkeypatch.chdir(ROOT)

    def run(argv: list[str]) -> dict:
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
        out = capsys.readouterr()
        return {"code": code, "stderr": out.err, "stdout": out.out, "ray_tmp": ray_tmp}

    return run


@pytest.fixture(scope="module")
def commands(broken) -> dict:
    """AS_COMMANDS run as search/run.py, four at a time (each answers before importing torch)."""
    with ThreadPoolExecutor(4) as pool:
        futures = {
            key: pool.submit(refuse, command(MISTAKES[key][0], broken), broken / f"ray-{key}")
            for key in AS_COMMANDS
        }
        found = {key: f.result() for key, f in futures.items()}
    for key, r in found.items():
        r["ray_tmp"] = broken / f"ray-{key}"
    return found


def assert_refused(result: dict, named: str, before_ray: bool = True) -> str:
    """Exit code 2, one `error: ` line naming `named`, no traceback and, `before_ray`, no Ray
    session (in `result["ray_tmp"]`); the line."""
    out = result["stderr"] + result["stdout"]
    errors = [line for line in result["stderr"].splitlines() if line.startswith("error: ")]
    assert result["code"] == 2, out[-3000:]
    assert len(errors) == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert named in errors[0], errors[0]
    assert "; " in errors[0], errors[0]  # what is wrong; what to do
    if before_ray:
        assert not (result["ray_tmp"] / "ray").exists(), "a Ray session was started"
    return errors[0]


@pytest.mark.parametrize("key", list(MISTAKES))
def test_mistake_is_refused_in_one_line_before_ray(broken, main_in_process, key):
    args, named = MISTAKES[key]
    assert_refused(main_in_process(run_args(args, broken)), named)


@pytest.mark.parametrize("key", AS_COMMANDS)
def test_the_command_itself_exits_2_with_one_line(commands, key):
    assert_refused(commands[key], MISTAKES[key][1])


def test_a_refused_search_leaves_a_ray_it_did_not_connect_alone(
    ray_cluster, broken, main_in_process
):
    """`main` disconnects only the Ray it connected: this process, joined to the session's
    head, stays joined after a refused search (which is what lets these checks run here)."""
    assert_refused(main_in_process(run_args(MISTAKES["npz-empty"][0], broken)), "empty/")
    assert ray_cluster.is_initialized()


def test_a_mistyped_data_dir_is_not_created(broken, main_in_process):
    main_in_process(run_args(MISTAKES["data-dir-missing"][0], broken))
    assert not (broken / "no-such").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run(
        [*command(["--trials", "0"], tmp_path), "--debug"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr


@pytest.mark.slow
def test_gpus_on_a_cluster_without_gpus_are_refused_once_ray_connects(tmp_path):
    """`--gpus-per-trial 1` on this GPU-less machine would wait PENDING forever: refused after
    Ray connects, and the local session folder this run started is removed."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the request can be met")
    (tmp_path / "good.yaml").write_text(yaml.safe_dump({"parameters": GOOD_SPACE}))
    # Ray's sockets live in its session folder: a pytest tmp_path is too long a path for them
    ray_tmp = Path(tempfile.mkdtemp(prefix="msw-", dir="/tmp"))
    try:
        result = refuse(
            command(["--gpus-per-trial", "1", "--space", "{d}/good.yaml"], tmp_path), ray_tmp
        )
        left = list((ray_tmp / "ray").glob("session_2*"))
        started = (ray_tmp / "ray").is_dir()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    line = assert_refused(result, "--gpus-per-trial 1", before_ray=False)
    assert "no GPU" in line
    assert started, "Ray did start (RAY_TMPDIR is where its sessions go)"
    assert not left, "the session folder was left behind"
