"""cluster.yaml passes Ray's own cluster-launcher validation (offline, no credentials)."""

from __future__ import annotations

import copy

import yaml

from search.seam.cluster_info import validate_cluster_config
from tests.conftest import REPO


def test_cluster_yaml_is_a_valid_ray_cluster_config() -> None:
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    prepared = validate_cluster_config(copy.deepcopy(config))
    assert prepared["provider"]["type"] == "aws"
    workers = prepared["available_node_types"]["gpu_worker"]
    assert workers["node_config"]["InstanceType"].startswith(("g5", "g4dn"))
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1  # GPU workers scale from zero
    assert prepared["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert any("pip install" in c and "imagesearch" in c for c in prepared["setup_commands"])
    assert "/home/ray/.ray/auth_token" in prepared["file_mounts"]
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "--dashboard-host=127.0.0.1" in head_start
