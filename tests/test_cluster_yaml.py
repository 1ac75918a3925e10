"""Checks every Ray cluster launcher file in cluster/ offline, with Ray's own validation.

Each `cluster/*.yaml` is prepared and validated exactly as `ray up` does before it contacts any
machine (`prepare_config` fills in the provider's defaults, `validate_config` applies Ray's
JSON schema and its cross-field checks), with boto3 hidden and sockets closed: what is left
for `ray up` to find is the cloud, SSH and the commands' own run. Beyond the schema, each must
sync this project and `pip install -e` it on every node, pin the Ray version this checkout
runs, name its storage location in exactly one place and hold no credentials.

Run: pytest tests/test_cluster_yaml.py -q   (no network, no AWS account, under 5 s)
"""

import re
import shlex
import shutil
import socket
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).parents[1]
CLUSTER_DIR = ROOT / "cluster"
REHEARSAL = CLUSTER_DIR / "local.yaml"  # Ray's fake provider on one machine: nothing to sync
YAMLS = sorted(p for p in CLUSTER_DIR.glob("*.yaml") if p != REHEARSAL)
ALL_FILES = sorted(p for p in CLUSTER_DIR.iterdir() if p.is_file())

# Keys that would put a secret in the file instead of in the user's own AWS/SSH configuration.
CREDENTIAL_KEYS = {
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_credentials",
    "password",
}
CREDENTIAL_TEXT = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"  # an inlined SSH / TLS key
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # an AWS access key id
    r"|aws_secret_access_key|aws_access_key_id|aws_session_token",
    re.IGNORECASE,
)
STORAGE_ASSIGNMENT = re.compile(r"export MEDSWEEP_STORAGE=(\S+?)'")
RAY_PIN = re.compile(r"ray\[[^\]]*\]==([0-9][\w.]*)")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def prepared(path: Path) -> dict:
    """The config as `ray up` sees it after filling defaults: setup_commands are merged into
    head_setup_commands and worker_setup_commands, node types get min/max workers."""
    return prepare_config(load(path))


def installs_editable(command: str, paths: list[str]) -> bool:
    """Whether `command` is a `pip install -e <one of paths>`."""
    words = shlex.split(command)
    return "pip" in words and any(
        flag == "-e" and target.rstrip("/") in paths for flag, target in pairwise(words)
    )


def walk_keys(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_keys(item)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Fail any test that would need boto3 or the network, as `ray up` would."""
    for module in ("boto3", "botocore"):
        monkeypatch.setitem(sys.modules, module, None)

    def refuse(*args, **kwargs):
        raise AssertionError("cluster YAML checks must not open network connections")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def by_name(paths):
    return pytest.mark.parametrize("path", paths, ids=[p.name for p in paths])


def test_the_launcher_files_are_found():
    """Guards the parametrisations below against an empty glob (a moved cluster/ folder)."""
    assert {"cluster.yaml", "onprem.yaml"} <= {p.name for p in YAMLS}


@by_name(YAMLS)
def test_valid_for_rays_schema(path):
    validate_config(prepared(path))


def test_the_rehearsal_has_the_node_types_of_the_real_cluster():
    """local.yaml mirrors cluster.yaml's shape (a GPU-less head, a GPU worker type from zero)
    and gives the fake provider's monitor every key it reads; the resource rule plans from it
    as from the real file (search.driver.resources.node_types_of)."""
    from search.driver.resources import node_types_of

    local, real = load(REHEARSAL), load(CLUSTER_DIR / "cluster.yaml")
    validate_config(local)  # prepare_config needs the provider's example file, not in the wheel
    assert local["provider"]["type"] == "fake_multinode"
    assert local["head_node_type"] == "ray.head.default"  # the fake provider's fixed head type
    assert "GPU" not in local["available_node_types"]["ray.head.default"]["resources"]
    for config in (local, real):
        (worker,) = node_types_of(config)
        assert worker.name == "gpu_worker" and worker.resources["GPU"] == 1
        assert config["available_node_types"]["gpu_worker"]["min_workers"] == 0
    assert node_types_of(local)[0].max_workers == 2
    for key in (
        "file_mounts",
        "cluster_synced_files",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "setup_commands",
        "auth",
    ):
        assert key in local, f"the fake provider's monitor fails without {key!r}"


@by_name(YAMLS)
def test_syncs_this_project_and_installs_it_on_every_node(path):
    config = prepared(path)
    # `ray up` resolves the local side against its working directory: the repository root.
    remotes = [
        remote.rstrip("/")
        for remote, local in config["file_mounts"].items()
        if (ROOT / local).resolve() == ROOT.resolve()
    ]
    assert remotes, f"{path.name}: no file_mounts entry syncs the repository root ('.')"
    for role in ("head_setup_commands", "worker_setup_commands"):
        assert any(installs_editable(cmd, remotes) for cmd in config[role]), (
            f"{path.name}: {role} never runs `pip install -e {remotes[0]}`"
        )


@by_name(YAMLS)
def test_pins_the_ray_version_of_this_checkout(path):
    commands = prepared(path)["worker_setup_commands"]
    pins = {pin for cmd in commands for pin in RAY_PIN.findall(cmd)}
    assert pins == {ray.__version__}, (
        f"{path.name} installs ray {sorted(pins) or 'unpinned'} but this machine runs "
        f"ray {ray.__version__}; `ray up` needs the same version on both sides"
    )


@by_name(YAMLS)
def test_storage_is_named_in_exactly_one_place(path):
    config = prepared(path)
    text = path.read_text()
    values = STORAGE_ASSIGNMENT.findall(" ".join(config["head_setup_commands"]))
    assert len(values) == 1, f"{path.name}: set MEDSWEEP_STORAGE once, in head_setup_commands"
    (storage,) = values
    assert text.count(storage) == 1, f"{path.name}: {storage} is written more than once"
    assert not STORAGE_ASSIGNMENT.findall(" ".join(config["worker_setup_commands"]))
    if config["provider"]["type"] != "local":
        assert storage.startswith(("s3://", "gs://")), (
            f"{path.name}: a cloud cluster's nodes share no disk; storage must be a bucket, "
            f"not {storage}"
        )


@by_name(YAMLS)
def test_gpu_workers_autoscale_from_zero(path):
    config = prepared(path)
    if config["provider"]["type"] == "local":
        pytest.skip("local provider: fixed hosts, Ray detects their GPUs itself")
    head = config["head_node_type"]
    gpu_types = {
        name: node
        for name, node in config["available_node_types"].items()
        if name != head and node["resources"].get("GPU", 0) >= 1
    }
    assert gpu_types, f"{path.name}: no worker node type advertises a GPU in `resources`"
    for name, node in gpu_types.items():
        assert node["min_workers"] == 0, f"{name}: GPU workers should start only on demand"
        assert node["max_workers"] >= 1, f"{name}: max_workers must allow at least one node"


@by_name(YAMLS)
def test_yaml_holds_no_credentials(path):
    config = load(path)
    found = CREDENTIAL_KEYS & {str(key).lower() for key in walk_keys(config)}
    assert not found, f"{path.name} holds credential keys {sorted(found)}"
    key = config.get("auth", {}).get("ssh_private_key")
    if key is not None:
        assert key.startswith(("~", "/")) and "\n" not in key, (
            f"{path.name}: ssh_private_key must be a path to the key, not the key"
        )


@by_name(ALL_FILES)
def test_no_file_holds_credentials(path):
    match = CREDENTIAL_TEXT.search(path.read_text(errors="replace"))
    assert match is None, f"{path.name} contains credential-like text {match.group()!r}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@by_name(YAMLS)
def test_setup_commands_are_valid_bash(path):
    config = prepared(path)
    for command in dict.fromkeys(config["head_setup_commands"] + config["worker_setup_commands"]):
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, f"{path.name}: {command!r}: {result.stderr}"
