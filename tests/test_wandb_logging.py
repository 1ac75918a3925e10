"""W&B, offline: one run per Tune trial, media afterwards, the agent's entry point, the spaces.

Run: pytest tests/test_wandb_logging.py -q   (about 30 s on 2 cores; one Ray start)

W&B 0.31 writes an offline run only as its transaction log (`run-<id>.wandb`; `files/` holds no
config.yaml or wandb-summary.json until `wandb sync`), and the SDK ships no Python reader of
it, so `read_offline_run` parses the format: a 7-byte header (`:W&B`, 0xBEE1, version 0), then
LevelDB-log records in 32 KiB blocks, each record a `wandb_internal_pb2.Record`.
"""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from ray import tune
from wandb.proto import wandb_internal_pb2

from search.data.reader import SplitReader
from search.driver.launch import function_driver
from search.driver.plan import Plan
from search.tracking.runs import log_media, make_callbacks, resolve_mode
from search.tracking.schema import validate_sweep_config
from trainables.checkpoint import load_checkpoint
from trainables.data import load_npz
from trainables.tasks import TASK_NAMES, get_task

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "fake-key-1234567890abcdef1234567890abcdef12345678"
SPACES = sorted((ROOT / "spaces").glob("*.yaml"))
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path):
    """The protobuf records of a `.wandb` transaction log, in order."""
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B log"
    pos, chunks = 7, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer / zero padding
            pos += left
            continue
        if pos + 7 + length > len(data):
            return  # a record still being written
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def _update(target: dict, items) -> None:
    """Apply W&B's key/value items; a `nested_key` path becomes nested dicts."""
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = target
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)


def read_offline_run(run_dir: Path) -> dict:
    """id, name, group, job_type, tags, config, history (one dict per step), summary, and
    `ended`: whether the log holds the run's exit record yet."""
    (log_file,) = run_dir.glob("run-*.wandb")
    run = {"config": {}, "history": [], "summary": {}, "ended": False}
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.update(
                id=r.run_id,
                name=r.display_name,
                group=r.run_group,
                job_type=r.job_type,
                tags=list(r.tags),
            )
            _update(run["config"], r.config.update)
        elif kind == "config":
            _update(run["config"], record.config.update)
        elif kind == "history":
            run["history"].append({})
            _update(run["history"][-1], record.history.item)
        elif kind == "summary":
            _update(run["summary"], record.summary.update)
        elif kind == "exit":
            run["ended"] = True
    return run


def offline_runs(wandb_dir: Path) -> dict[str, dict]:
    """{run id: run} for every offline run under `<wandb_dir>/wandb/`, each complete on disk."""
    runs = [read_offline_run(d) for d in sorted((wandb_dir / "wandb").glob("offline-run-*"))]
    assert all(run["ended"] for run in runs), "a W&B run log has no exit record: not flushed"
    return {run["id"]: run for run in runs}


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.fixture
def planted_key(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    return FAKE_KEY


# --- resolve_mode --------------------------------------------------------------------------


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_mode_flag_wins_and_a_bad_flag_names_the_choices(no_login, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert [resolve_mode(m) for m in ("online", "offline", "off")] == ["online", "offline", "off"]
    with pytest.raises(ValueError, match="choose one of online, offline, off"):
        resolve_mode("onlne")


def test_default_mode_is_online_only_when_logged_in(no_login, monkeypatch):
    assert resolve_mode(None) == "offline"  # no key anywhere
    no_login.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    assert resolve_mode(None) == "online"  # `wandb login` writes this netrc entry
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert resolve_mode(None) == "offline"  # a key for another host does not count
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode(None) == "offline"  # the user's own WANDB_MODE is respected
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None) == "off"


def test_unreadable_netrc_means_offline(no_login):
    no_login.write_text("machine api.wandb.ai login\n")  # a parse error
    assert resolve_mode(None) == "offline"


def test_online_without_a_key_fails_before_any_trial_naming_the_fix(no_login, monkeypatch):
    (callback,) = make_callbacks("online", "p", "g", ["t"])
    with pytest.raises(ValueError, match="wandb login"):
        callback.setup()  # Tune calls it before the first trial starts
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    callback.setup()
    (offline,) = make_callbacks("offline", "p", "g", ["t"])
    monkeypatch.delenv("WANDB_API_KEY")
    offline.setup()  # offline needs no key


# --- one W&B run per Tune trial ------------------------------------------------------------


@pytest.mark.slow
def test_each_trial_is_one_offline_run(ray_cluster, ray_head, tmp_path, make_npz, planted_key):
    task = get_task("blood")
    data = load_npz(make_npz(task, n=48), task)
    plan = Plan(
        name="wb",
        storage=str(tmp_path / "runs"),
        trials=2,
        metric="val_auc",
        mode="max",
        launcher="function",
    )
    space = {
        "task": "blood",
        "model": "simple_cnn",
        "weights": "none",
        "epochs": 2,
        "batch_size": 16,
        "lr": tune.grid_search([1e-3, 3e-3]),
    }
    callbacks = make_callbacks(
        "offline",
        "medsweep-test",
        "wb",
        ["blood", "random"],
        wandb_dir=str(tmp_path / "runs" / "wb"),
    )
    reader = SplitReader.resident(data)
    trainable = tune.with_parameters(function_driver, reader=reader, plan=plan)
    grid = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(metric="val_auc", mode="max"),
        run_config=tune.RunConfig(
            name="wb", storage_path=plan.storage, callbacks=callbacks, verbose=0
        ),
    ).fit()
    assert grid.num_errors == 0

    runs = offline_runs(tmp_path / "runs" / "wb")
    assert len(runs) == 2
    for result in grid:
        trial_id = result.metrics["trial_id"]
        run = runs[trial_id]  # run id = trial id
        assert (run["name"], run["group"], run["job_type"]) == (trial_id, "wb", "trial")
        assert run["tags"] == ["blood", "random"]
        assert {k: run["config"][k] for k in result.config} == result.config
        assert [h["_step"] for h in run["history"]] == [1, 2]  # one step per epoch
        history = result.metrics_dataframe
        assert [h["val_auc"] for h in run["history"]] == pytest.approx(list(history["val_auc"]))
        assert [h["epoch"] for h in run["history"]] == [1, 2]

    assert files_holding(tmp_path, planted_key) == []  # W&B runs, tuner.pkl, results
    assert files_holding(ray_head.session_dir / "logs", planted_key) == []  # runtime_env_agent.log


def test_mode_off_gives_no_callbacks_and_no_runs(tmp_path):
    assert make_callbacks("off", "p", "g", ["t"]) == []
    (tmp_path / "t1" / "attribution").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "t1" / "attribution" / "gradcam.png")
    log_media("off", "p", "g", str(tmp_path), [{"trial_id": "t1"}])
    assert not (tmp_path / "wandb").exists()
    with pytest.raises(ValueError, match="choose one of"):
        make_callbacks("offlin", "p", "g", [])


# --- media after the search ----------------------------------------------------------------


def test_media_go_to_a_media_run_per_trial(tmp_path, planted_key):
    exp = tmp_path / "exp"
    for name in ("gradcam", "integrated_gradients"):
        (exp / "a" / "attribution").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(
            exp / "a" / "attribution" / f"{name}.png"
        )
    tested = {
        "best_trial": "a",
        "trials": {
            "a": {"confusion_matrix": {"labels": ["x", "y"], "matrix": [[5, 1], [2, 7]]}},
            "b": {"confusion_matrix": {"l1": [[3, 1], [0, 2]], "l2": [[4, 0], [1, 1]]}},
        },
    }
    (exp / "test_metrics.json").write_text(json.dumps(tested))
    trials = [{"trial_id": t} for t in ("a", "b", "c")]  # c: nothing to show, no run

    log_media("offline", "medsweep-test", "exp", str(exp), trials)

    runs = offline_runs(exp)
    assert sorted(runs) == ["a-media", "b-media"]
    for trial_id in ("a", "b"):
        run = runs[f"{trial_id}-media"]
        assert (run["name"], run["group"], run["job_type"]) == (trial_id, "exp", "media")
    logged = runs["a-media"]["history"][0]
    assert {k for k in logged if not k.startswith("_")} == {
        "attribution/gradcam",
        "attribution/integrated_gradients",
        "test/confusion_matrix",
    }
    assert logged["attribution/gradcam"]["_type"] == "image-file"
    assert logged["attribution/gradcam"]["width"] == 30
    assert set(runs["b-media"]["history"][0]) >= {"test/confusion_matrix"}
    assert len(list(exp.glob("wandb/offline-run-*/files/media/images/*/*.png"))) == 4
    assert files_holding(exp, planted_key) == []


# --- the wandb agent's entry point ---------------------------------------------------------


@pytest.mark.slow
def test_wandb_trial_runs_one_trial_as_the_agent_calls_it(tmp_path, pneumonia_subset, planted_key):
    data = pneumonia_subset(train=192, val=96, test=32)  # real X-rays: AUROC moves per epoch
    env = {**os.environ, "MEDSWEEP_DATA_DIR": str(data.parent), "WANDB_DIR": str(tmp_path)}
    env.pop("WANDB_PROJECT", None)
    args = [
        "--task=pneumonia",
        "--model=simple_cnn",
        "--weights=none",
        "--epochs=3",
        "--batch_size=16",
        "--lr=1e-03",
        "--dropout=0.1",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "search" / "wandb_trial.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    (run,) = offline_runs(tmp_path).values()
    assert run["config"]["lr"] == 1e-3 and run["config"]["weights"] == "none"
    assert run["config"]["task"] == "pneumonia" and run["config"]["epochs"] == 3
    assert [h["epoch"] for h in run["history"]] == [1, 2, 3]
    aucs = [h["val_auc"] for h in run["history"]]
    assert run["summary"]["val_auc"] == max(aucs)  # the best epoch, not the last
    assert run["summary"]["best_epoch"] == aucs.index(max(aucs)) + 1
    (kept,) = tmp_path.glob("wandb/offline-run-*/files/checkpoint")
    ckpt = load_checkpoint(str(kept))  # the best epoch's model, not the last one's
    assert ckpt["epoch"] == run["summary"]["best_epoch"]
    assert ckpt["metrics"]["val_auc"] == pytest.approx(max(aucs))
    assert files_holding(tmp_path / "wandb", planted_key) == []


def test_best_keeper_keeps_the_best_epochs_checkpoint_not_the_last(tmp_path):
    """train_loop hands a checkpoint over every epoch; only the best epoch's stays."""
    import wandb

    from search.driver.agent import BestKeeper

    with wandb.init(project="t", dir=str(tmp_path), mode="offline") as run:
        keeper = BestKeeper(run, "val_loss", "min")
        for epoch, loss in enumerate([0.9, 0.4, 0.6, float("nan")], start=1):
            folder = tmp_path / f"epoch{epoch}"
            folder.mkdir()
            (folder / "model.pt").write_text(str(epoch))
            keeper({"val_loss": loss, "epoch": epoch}, str(folder))
        kept = Path(keeper.checkpoint_dir, "model.pt").read_text()
    assert (keeper.best, keeper.best_epoch, kept) == (0.4, 2, "2")


def test_wandb_trial_parses_the_agents_arguments():
    from search.wandb_trial import parse_args

    args, settings = parse_args(
        [
            "--lr=1e-05",
            "--epochs=3",
            "--weights=none",
            "--task=chest",
            "--flag=True",
            "--data-dir",
            "/d",
        ]
    )
    assert settings == {"lr": 1e-5, "epochs": 3, "weights": "none", "task": "chest", "flag": True}
    assert args.data_dir == "/d"
    with pytest.raises(SystemExit):
        parse_args(["stray"])


# --- spaces are W&B sweep configs ----------------------------------------------------------


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_space_is_a_valid_wandb_sweep_for_the_trial_program(path):
    cfg = yaml.safe_load(path.read_text())
    validate_sweep_config(cfg)
    assert cfg["program"] == "search/wandb_trial.py"
    assert (ROOT / cfg["program"]).is_file()
    task = cfg["parameters"]["task"]["value"]  # spaces/<task>.yaml, <task or its prefix>-<preset>
    assert task in TASK_NAMES
    assert path.stem == task or ("-" in path.stem and task.startswith(path.stem.split("-")[0]))


@pytest.mark.parametrize("path", SPACES[:1], ids=lambda p: p.stem)
def test_a_malformed_space_is_rejected_with_the_schemas_message(path):
    cfg = yaml.safe_load(path.read_text())
    cfg["parameters"]["lr"]["distribution"] = "log_uniform_value"
    with pytest.raises(
        ValueError,
        match=r"parameters\.lr\.distribution: 'log_uniform_value' is "
        "not one of",
    ):
        validate_sweep_config(cfg)
