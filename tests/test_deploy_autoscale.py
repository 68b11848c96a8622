"""``[workers.X.autoscale]`` in the generated files: a HorizontalPodAutoscaler for Kubernetes (validated),
the fixed ``min`` for systemd and supervisord, and ``check`` saying so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from procguard.config import parse_config
from procguard.deploy import all_settings, render
from procguard.deploy.kubernetes import quantity

from .helpers import PROCGUARD, python_env

CONFIG = """
[project]
name = "shop"
[workers.orders]
run = "shop.orders:consume"
health_port = 9300
[workers.orders.autoscale]
min = 2
max = 6
metric = "orders_waiting"
target = 2.5
scale_down_after = "5m"
"""


def _files(target: str, tmp_path: Path) -> dict[str, str]:
    config = parse_config(CONFIG, path=tmp_path / "procguard.toml")
    flags = {"kubernetes": {"image": "registry.example.com/shop:1"}, "systemd": {"venv": "/opt/v", "workdir": "/opt/a"},
             "supervisor": {"venv": "/opt/v", "workdir": "/opt/a"}}[target]
    return {f.filename: f.text for f in render(target, config, all_settings(config, flags))}


def _doc(text: str) -> dict:
    return json.loads(text.split("\n", 1)[1])


def test_kubernetes_gets_a_horizontal_pod_autoscaler_with_the_same_rule(tmp_path: Path) -> None:
    files = _files("kubernetes", tmp_path)
    assert sorted(files) == ["shop-orders-hpa.yaml", "shop-orders.yaml"]
    hpa = _doc(files["shop-orders-hpa.yaml"])
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["kind"] == "HorizontalPodAutoscaler"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop-orders"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    assert spec["metrics"] == [{"type": "Pods", "pods": {"metric": {"name": "orders_waiting"},
                                                         "target": {"type": "AverageValue", "averageValue": "2500m"}}}]
    assert spec["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 300}
    assert spec["behavior"]["scaleUp"] == {"stabilizationWindowSeconds": 0}
    assert "replicas" not in _doc(files["shop-orders.yaml"])["spec"]  # the autoscaler owns the count
    validate = Path(sys.executable).parent / "kubernetes-validate"
    if not validate.exists():
        pytest.skip("kubernetes-validate is not installed in this environment")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = subprocess.run([str(validate), "--strict", *(str(tmp_path / n) for n in files)],
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0 and result.stdout.count("passed") == 2, result.stdout + result.stderr


def test_quantities() -> None:
    assert [quantity(v) for v in (100.0, 1.0, 2.5, 0.001)] == ["100", "1", "2500m", "1m"]


def test_systemd_and_supervisord_run_the_fixed_min(tmp_path: Path) -> None:
    units = _files("systemd", tmp_path)
    assert sorted(n for n in units if n.startswith("shop-orders@")) == ["shop-orders@.service"]
    assert "shop-orders@1.service shop-orders@2.service" in units["shop.target"]
    assert "shop-orders@3" not in units["shop.target"]
    conf = _files("supervisor", tmp_path)["shop.conf"]
    assert "numprocs=2" in conf


def test_check_says_what_each_engine_runs_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "procguard.toml"
    path.write_text(CONFIG)
    result = subprocess.run([*PROCGUARD, "check", "-c", str(path)], env=python_env(), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "    autoscale: 2..6 copies on orders_waiting (target 2.5 per copy, every 5s, down after 5m)" in lines
    assert ("    deploy: systemd and supervisord run a fixed 2 (they cannot scale on a metric);"
            " kubernetes gets a HorizontalPodAutoscaler 2..6 on orders_waiting") in lines
