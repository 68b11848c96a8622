"""``procguard ps``: running instances with pid, uptime, memory, health and restarts."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from procguard.instances.lock import InstanceLock

from .helpers import PROCGUARD, python_env
from .test_lock import start_holder


def ps(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROCGUARD, "ps", *args], env=python_env(), capture_output=True, text=True, timeout=60,
                          check=False)


def test_ps_lists_running_instances_with_health(state_dir: Path, spawn, tmp_path: Path) -> None:
    good, bad = f"good{uuid.uuid4().hex[:6]}", f"bad{uuid.uuid4().hex[:6]}"
    _, good_info = start_holder(spawn, tmp_path, good, health=200, children=1, info={"restarts": 3})
    _, bad_info = start_holder(spawn, tmp_path, bad, health=503)
    InstanceLock.acquire("stale").release()

    result = ps("--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {good, bad}  # the stale record is hidden
    g, b = rows[good], rows[bad]
    assert g["pid"] == good_info["holder"] and g["state"] == "running"
    assert g["health"] == "healthy" and g["restarts"] == 3
    assert g["uptime_seconds"] is not None and g["uptime_seconds"] >= 0
    assert g["memory_mb"] > 1.0
    assert isinstance(g["health_port"], int)
    assert b["pid"] == bad_info["holder"]
    assert b["health"] == "unhealthy" and b["health_reason"] == "stuck"
    assert b["restarts"] is None

    text = ps()
    assert text.returncode == 0
    assert good in text.stdout and "healthy" in text.stdout and str(good_info["holder"]) in text.stdout

    everything = json.loads(ps("--all", "--json").stdout)
    assert {row["name"]: row["state"] for row in everything}["stale"] == "stale"


def test_ps_without_instances(state_dir: Path) -> None:
    result = ps()
    assert result.returncode == 0
    assert "no running instances" in result.stdout
    assert json.loads(ps("--json").stdout) == []


def test_ps_health_unreachable_does_not_stall(state_dir: Path) -> None:
    with InstanceLock.acquire("deaf", health_port=1):  # nothing listens on port 1
        rows = json.loads(ps("--json").stdout)
    [row] = rows
    assert row["health"] == "unreachable"
