"""cluster.yaml must be a valid Ray cluster-launcher config and keep our sizing.

Validation is Ray's own, as `ray up` does it (ray.autoscaler._private.commands.
_bootstrap_config): ``prepare_config`` merges the provider defaults, then
``validate_config`` checks the result against the ``ray-schema.json`` shipped
in the installed ray package and adds Ray's cross-field checks. The later,
provider-specific steps of `ray up` need AWS credentials and are not run.
"""

import copy
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).parents[1] / "cluster.yaml"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

# EC2 accelerator families: g*, p* (NVIDIA), inf*/trn* (Neuron), dl* (Gaudi).
GPU_INSTANCE_FAMILY = re.compile(r"^(g|p|inf|trn|dl)\d", re.IGNORECASE)


def load_config() -> dict:
    with CLUSTER_YAML.open() as f:
        return yaml.safe_load(f)


def ray_validate(config: dict) -> dict:
    """Validate like `ray up` does; returns the prepared (defaults-merged) config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def gpu_count(node_type: dict) -> int:
    return node_type.get("resources", {}).get("GPU", 0)


def test_cluster_yaml_is_valid_and_sized_for_pixlake():
    config = load_config()

    # The file as written is valid against Ray's schema (no typos hidden by
    # defaults), and the prepared config passes Ray's own validator.
    assert RAY_SCHEMA.is_file()
    jsonschema.validate(config, json.loads(RAY_SCHEMA.read_text()))
    prepared = ray_validate(config)

    assert config["cluster_name"] == "pixlake"
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] == "us-west-2"

    node_types = config["available_node_types"]
    head_name = config["head_node_type"]
    head = node_types[head_name]

    # Head: no GPU, neither declared nor auto-detected from a GPU instance type.
    assert gpu_count(head) == 0
    assert not GPU_INSTANCE_FAMILY.match(head["node_config"]["InstanceType"])

    workers = {n: t for n, t in node_types.items() if n != head_name}

    # GPU group scales from zero, and the global cap lets it actually scale.
    gpu_groups = [t for t in workers.values() if gpu_count(t) >= 1]
    assert gpu_groups, "no worker node type with GPU resources"
    for group in gpu_groups:
        assert group["min_workers"] == 0
        assert group["max_workers"] >= 1
        assert GPU_INSTANCE_FAMILY.match(group["node_config"]["InstanceType"])
    assert config["max_workers"] >= max(g["max_workers"] for g in gpu_groups)

    # CPU decode group: autoscaling, no GPU.
    cpu_groups = [
        t
        for t in workers.values()
        if gpu_count(t) == 0
        and not GPU_INSTANCE_FAMILY.match(t["node_config"]["InstanceType"])
    ]
    assert cpu_groups, "no CPU worker node type for decode"
    assert all(g.get("min_workers", 0) == 0 and g["max_workers"] >= 1 for g in cpu_groups)

    # The project is synced to the nodes and installed from there.
    assert config["file_mounts"]["~/pixlake"] == "."

    # Setup reaches head and workers (after Ray merges setup_commands in),
    # with torch/torchvision pinned and installed before pixlake.
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = prepared[key]
        torch_idx = next(
            i for i, c in enumerate(commands)
            if "torch==2.14.1" in c.split() and "torchvision==0.29.1" in c.split()
        )
        pixlake_idx = next(
            i for i, c in enumerate(commands) if "pip install -e ~/pixlake" in c
        )
        assert torch_idx < pixlake_idx, key

    assert any("--head" in c and "--port=6379" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


def ray_start(commands: list) -> tuple[dict, list]:
    """The environment a node's `ray start` runs with (``export`` / ``VAR=`` before it on its
    line) and its arguments."""
    (line,) = [c for c in commands if "ray start" in c]
    env = {}
    for part in line.split(";"):
        words = shlex.split(part)
        if words[:2] == ["ray", "start"]:
            return env, words[2:]
        for w in words[1:] if words[:1] == ["export"] else words:
            if "=" in w:
                env.update([w.split("=", 1)])
    raise AssertionError(line)


# What `ray start` runs before starting a node (ray/scripts/scripts.py, Ray 2.60): a head
# first turns token auth on if RAY_AUTH_MODE is unset and a token exists; head and worker
# then require a token if the mode is token (never creating one). Prints the mode it ends in.
RAY_START_AUTH = """
import sys
from ray._private.authentication.authentication_token_setup import (
    ensure_token_if_auth_enabled, maybe_enable_token_auth_if_token_available)
from ray._raylet import AuthenticationMode, get_authentication_mode
if sys.argv[1] == "head":
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
ensure_token_if_auth_enabled(None, create_token_if_missing=False)
print(get_authentication_mode() == AuthenticationMode.TOKEN and "token" or "disabled")
"""


def auth_mode_of_ray_start(node: str, env: dict, home: Path) -> str:
    """The auth mode `ray start` would give a ``node`` ("head"/"worker") with ``env`` and ``home``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    done = subprocess.run([sys.executable, "-c", RAY_START_AUTH, node], env={**clean, **env, "HOME": str(home)},
                          capture_output=True, text=True, timeout=120)
    return done.stdout.strip() if done.returncode == 0 else f"refused: {done.stderr.strip().splitlines()[-1]}"


@pytest.mark.slow  # a Python subprocess per node: Ray reads the token mode once per process
def test_every_node_starts_ray_with_token_auth_and_the_synced_token(tmp_path):
    config = load_config()
    # The token of the machine that runs `ray up` reaches every node at Ray's default path.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    node_home = tmp_path / "node"
    (node_home / ".ray").mkdir(parents=True)
    (node_home / ".ray" / "auth_token").write_text("t" * 32)
    bare = tmp_path / "bare"
    bare.mkdir()
    for node, key in (("head", "head_start_ray_commands"), ("worker", "worker_start_ray_commands")):
        env, _ = ray_start(config[key])
        assert env.get("RAY_AUTH_MODE") == "token", key
        assert auth_mode_of_ray_start(node, env, node_home) == "token", key
        # Without the synced token Ray refuses to start the node rather than run it open.
        assert auth_mode_of_ray_start(node, env, bare).startswith("refused"), key
    # Why the mode is set explicitly: Ray 2.60's `ray start` without it and without a token
    # runs the cluster with authentication off.
    assert auth_mode_of_ray_start("head", {}, bare) == "disabled"


def test_dashboard_and_job_api_listen_on_the_heads_loopback_only():
    _, args = ray_start(load_config()["head_start_ray_commands"])
    hosts = [a.split("=", 1)[1] for a in args if a.startswith("--dashboard-host=")]
    # Ray's default is loopback too; written out so that nobody widens it unnoticed.
    assert len(hosts) == 1 and ipaddress.ip_address(hosts[0]).is_loopback, args


def _unknown_top_level_key(c):
    c["max_worker"] = 4  # typo of max_workers


def _max_workers_wrong_type(c):
    c["max_workers"] = "sixteen"


def _unknown_node_type_key(c):
    c["available_node_types"]["worker.gpu.a10g"]["min_worker"] = 0


def _gpu_resource_wrong_type(c):
    c["available_node_types"]["worker.gpu.a10g"]["resources"] = {"GPU": "1"}


def _head_type_missing(c):
    c["head_node_type"] = "no.such.type"


@pytest.mark.parametrize(
    "break_config, error, match",
    [
        pytest.param(_unknown_top_level_key, jsonschema.ValidationError,
                     "max_worker", id="unknown-top-level-key"),
        pytest.param(_max_workers_wrong_type, jsonschema.ValidationError,
                     "not of type 'integer'", id="max_workers-not-int"),
        pytest.param(_unknown_node_type_key, jsonschema.ValidationError,
                     "min_worker", id="unknown-node-type-key"),
        pytest.param(_gpu_resource_wrong_type, jsonschema.ValidationError,
                     "not of type 'integer'", id="gpu-resource-not-int"),
        pytest.param(_head_type_missing, ValueError,
                     "head_node_type", id="head-type-not-defined"),
    ],
)
def test_validator_rejects_broken_config(break_config, error, match):
    broken = load_config()
    break_config(broken)
    with pytest.raises(error, match=match):
        ray_validate(broken)
