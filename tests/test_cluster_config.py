"""cluster.yaml must be a valid Ray cluster-launcher config and keep our sizing.

Validation is Ray's own, as `ray up` does it (ray.autoscaler._private.commands.
_bootstrap_config): ``prepare_config`` merges the provider defaults, then
``validate_config`` checks the result against the ``ray-schema.json`` shipped
in the installed ray package and adds Ray's cross-field checks. The later,
provider-specific steps of `ray up` need AWS credentials and are not run.
"""

import copy
import json
import re
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
