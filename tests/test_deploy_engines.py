"""Generated files pass their engine's own checker: systemd-analyze, kubernetes-validate.

Also the properties each file promises (Type=notify, budgets above the
worker's own limits, probes, security context), read from the rendered
text, and the budget check refusing overrides that break the chain.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from procguard.cli.main import main
from procguard.config import parse_config
from procguard.deploy import all_settings, render
from procguard.deploy.budget import BudgetError, check_budget
from procguard.reasons import RECYCLE_STATUSES
from procguard.units import MB

STACK = f"""
[project]
name = "shop"

[defaults]
memory_limit = "512MB"
grace = "20s"

[workers.api]
command = ["{sys.executable}", "-m", "http.server", "8000"]
health_port = 9191
restart = "on-failure"

[workers.collector]
run = "shop.collector:collect"
interval = "5m"
heartbeat_timeout = "2m"
drain_delay = "5s"
health_port = 9192
depends_on = ["api"]

[workers.bot]
command = "python -m shop.bot"
memory_limit = 0
cpu_limit = 0
restart = "never"
"""

SECURITY_GOAL = 2.5

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def _write(files: list, directory: Path) -> list[Path]:  # type: ignore[type-arg]
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for record in files:
        path = directory / record.filename
        path.write_text(record.text)
        paths.append(path)
    return paths


def _unit(text: str) -> dict[str, list[str]]:
    """Directive -> values, in order (a unit may repeat a directive)."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.fixture
def stack():  # type: ignore[no-untyped-def]
    return parse_config(STACK, path="/srv/shop/procguard.toml")


@needs_systemd
@pytest.mark.parametrize("user", [None, "shop"])
def test_units_pass_systemd_analyze_verify_and_score_low(stack, tmp_path: Path, user: str | None) -> None:  # type: ignore[no-untyped-def]
    settings = all_settings(stack, {"user": user})
    paths = _write(render("systemd", stack, settings, workdir="/srv/shop"), tmp_path)
    assert sorted(p.name for p in paths) == [
        "shop-api.service", "shop-bot.service", "shop-collector.service", "shop.target",
    ]
    result = subprocess.run(  # noqa: PLW1510 - the status is asserted
        ["systemd-analyze", "verify", *[f"./{p.name}" for p in paths]],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr) == "", result.stdout + result.stderr

    for path in paths:
        if path.suffix != ".service":
            continue
        result = subprocess.run(  # noqa: PLW1510 - the status is asserted
            ["systemd-analyze", "security", "--offline=yes", f"./{path.name}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
        assert match, result.stdout + result.stderr
        score = float(match.group(1))
        print(f"systemd-analyze security {path.name} (user={user}): {score}")
        assert score <= SECURITY_GOAL, result.stdout


def test_unit_contents_follow_the_contract(stack) -> None:  # type: ignore[no-untyped-def]
    files = {f.filename: f.text for f in render("systemd", stack, all_settings(stack), workdir="/srv/shop")}
    api, collector, bot = (_unit(files[f"shop-{n}.service"]) for n in ("api", "collector", "bot"))
    # every worker's main process speaks sd_notify: the manager (function workers, WATCHDOG=1 from
    # heartbeats) or the runner (command workers, WATCHDOG=1 while the command is alive and healthy)
    for unit in (api, collector, bot):
        assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    for unit in (api, collector, bot):
        assert unit["KillMode"] == ["control-group"]
        assert unit["ExecStart"][0].startswith(f"{sys.executable} -m procguard run ")
        assert unit["WorkingDirectory"] == ["/srv/shop"]
        assert unit["ProtectSystem"] == ["strict"]
        assert unit["NoNewPrivileges"] == ["yes"]
        assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
        assert unit["DynamicUser"] == ["yes"]
        assert unit["StartLimitBurst"] == ["5"]
        assert unit["StartLimitIntervalSec"] == ["60"]
        statuses = {int(s) for s in unit["SuccessExitStatus"][0].split()}
        assert statuses >= set(RECYCLE_STATUSES) | {130, 143}
        assert unit["PartOf"] == ["shop.target"]
    assert api["Restart"] == ["on-failure"]
    assert {int(s) for s in api["RestartForceExitStatus"][0].split()} == set(RECYCLE_STATUSES)
    assert collector["Restart"] == ["always"] and bot["Restart"] == ["no"]
    # stop budget: above grace (+ drain)
    assert int(api["TimeoutStopSec"][0]) > 20
    assert int(collector["TimeoutStopSec"][0]) > 25
    # memory above the in-process limit, CPU quota above the in-process CPU limit
    assert int(api["MemoryHigh"][0].rstrip("M")) * MB > 512 * MB
    assert int(api["MemoryMax"][0].rstrip("M")) >= int(api["MemoryHigh"][0].rstrip("M"))
    assert int(api["CPUQuota"][0].rstrip("%")) > 80
    assert "MemoryMax" not in bot and "CPUQuota" not in bot
    # watchdog from the heartbeat timeout (command workers: 60 s without one); dependency ordering
    assert collector["WatchdogSec"] == ["120"]
    assert api["WatchdogSec"] == ["60"] and bot["WatchdogSec"] == ["60"]
    # the drain delay reaches the worker's command line
    assert " --drain-delay 5s " in collector["ExecStart"][0] and " --heartbeat-timeout 2m " in collector["ExecStart"][0]
    assert " --drain-delay 0s " in api["ExecStart"][0] and "--heartbeat-timeout" not in api["ExecStart"][0]
    assert "shop-api.service" in collector["After"][0] and "shop-api.service" in collector["Wants"][0]
    assert _unit(files["shop.target"])["Wants"] == ["shop-api.service shop-collector.service shop-bot.service"]


def test_units_use_the_venv_and_user_given(stack) -> None:  # type: ignore[no-untyped-def]
    settings = all_settings(stack, {"user": "shop", "venv": "/opt/shop/venv"})
    files = {f.filename: f.text for f in render("systemd", stack, settings, workdir="/home/shop/app")}
    unit = _unit(files["shop-bot.service"])
    assert unit["ExecStart"][0].startswith("/opt/shop/venv/bin/python -m procguard run --name bot ")
    assert unit["User"] == ["shop"] and "DynamicUser" not in unit
    # one user: the stack shares a persistent state directory
    assert unit["StateDirectory"] == ["procguard/shop"] and unit["StateDirectoryMode"] == ["0700"]
    assert '"PROCGUARD_STATE_DIR=%S/procguard/shop"' in unit["Environment"]
    # DynamicUser: one uid per unit, so one (non-symlink) runtime directory per unit
    dynamic = _unit(
        {f.filename: f.text for f in render("systemd", stack, all_settings(stack), workdir="/srv")}["shop-bot.service"]
    )
    assert dynamic["RuntimeDirectory"] == ["procguard-shop-bot"] and dynamic["RuntimeDirectoryMode"] == ["0700"]
    assert '"PROCGUARD_STATE_DIR=%t/procguard-shop-bot"' in dynamic["Environment"]
    assert "StateDirectory" not in dynamic
    assert '"PATH=/opt/shop/venv/bin:/usr/local/bin:/usr/bin:/bin"' in unit["Environment"]
    # the app lives under /home: ProtectHome must not hide it
    assert unit["ProtectHome"] == ["read-only"]


def test_manifests_pass_kubernetes_validate_strict(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    validate = Path(sys.executable).parent / "kubernetes-validate"
    if not validate.exists():
        pytest.skip("kubernetes-validate is not installed in this environment")
    settings = all_settings(stack, {"image": "registry.example/shop:1.0", "namespace": "shop"})
    paths = _write(render("kubernetes", stack, settings), tmp_path)
    assert sorted(p.name for p in paths) == ["shop-api.yaml", "shop-bot.yaml", "shop-collector.yaml"]
    result = subprocess.run(  # noqa: PLW1510 - the status is asserted
        [str(validate), "--strict", *map(str, paths)], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 3, result.stdout
    assert "WARN" not in result.stdout + result.stderr


def test_manifest_contents_follow_the_contract(stack) -> None:  # type: ignore[no-untyped-def]
    settings = all_settings(stack, {"image": "registry.example/shop:1.0", "namespace": "shop"})
    files = {f.filename: json.loads(f.text.split("\n", 1)[1]) for f in render("kubernetes", stack, settings)}
    collector = files["shop-collector.yaml"]
    assert collector["metadata"]["namespace"] == "shop"
    pod = collector["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    command = container["command"]
    assert command[:3] == ["procguard", "run", "shop.collector:collect"]
    assert command[command.index("--health-host") + 1] == "0.0.0.0"
    assert command[command.index("--health-port") + 1] == "9192"
    live, ready, startup = container["livenessProbe"], container["readinessProbe"], container["startupProbe"]
    assert live["httpGet"]["path"] == "/health" and ready["httpGet"]["path"] == "/ready"
    assert startup["httpGet"]["path"] == "/health"
    for probe in (live, ready, startup):
        assert probe["timeoutSeconds"] > 1
    assert live["periodSeconds"] * live["failureThreshold"] > ready["periodSeconds"] * ready["failureThreshold"]
    assert spec["terminationGracePeriodSeconds"] > 20 + 5
    limit = container["resources"]["limits"]["memory"]
    assert int(limit.rstrip("Mi")) > 512
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    annotations = pod["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "9192", "prometheus.io/path": "/metrics"}
    # a worker without a health port still gets one inside its pod (probes need it)
    bot = files["shop-bot.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert bot["command"][bot["command"].index("--health-port") + 1] == "9091"
    assert bot["command"][bot["command"].index("--health-host") + 1] == "0.0.0.0"
    assert "memory" not in bot["resources"].get("limits", {})


def test_kubernetes_needs_an_image(stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "procguard.toml"
    path.write_text(STACK)
    assert main(["deploy", "kubernetes", "-c", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "--image" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- the timeout/memory budget

BUDGET_BREAKS = [
    ("[deploy.supervisor]\nstopwaitsecs = 20\n", "grace 20s must be less than [deploy.supervisor] stopwaitsecs 20s"),
    ("[deploy.systemd]\ntimeout_stop = '15s'\n", "grace 20s must be less than [deploy.systemd] timeout_stop 15s"),
    (
        "[deploy.supervisor]\nstopwaitsecs = 40\n[deploy.systemd]\ntimeout_stop = 35\n",
        "supervisord stopwaitsecs 40s must be less than systemd TimeoutStopSec 35s",
    ),
    (
        "[deploy.kubernetes]\ntermination_grace = 22\n",
        "worker 'collector': grace 20s + drain_delay 5s must be less than [deploy.kubernetes] termination_grace 22s",
    ),
    ("[deploy.systemd]\nmemory_high = '512MB'\n", "memory_limit 512MB must be less than [deploy.systemd] memory_high 512MB"),
    ("[deploy.systemd]\nmemory_max = 500\n", "memory_limit 512MB must be less than [deploy.systemd] memory_max 500MB"),
    ("[deploy.kubernetes]\nmemory_limit = '256MB'\n", "memory_limit 512MB must be less than [deploy.kubernetes] memory_limit 256MB"),
]


@pytest.mark.parametrize(("extra", "expected"), BUDGET_BREAKS)
def test_deploy_refuses_a_broken_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, expected: str) -> None:
    path = tmp_path / "procguard.toml"
    path.write_text(STACK + extra)
    config = parse_config(STACK + extra)
    assert check_budget(config, all_settings(config))
    for target in ("systemd", "supervisor", "kubernetes"):
        out = tmp_path / target
        code = main(["deploy", target, "-c", str(path), "-o", str(out), "--image", "registry.example/shop:1"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1, err
        assert expected in err, err
        assert "; raise" in err or "; lower" in err
        assert not out.exists()


def test_derived_values_always_satisfy_the_budget() -> None:
    for grace, drain, memory in [("1s", "0s", "1MB"), ("30s", "0s", "2GiB"), ("300s", "120s", "64GiB"), ("0.5s", "0.2s", 0)]:
        config = parse_config(
            f"[workers.w]\nrun = 'm:f'\ngrace = '{grace}'\ndrain_delay = '{drain}'\nmemory_limit = '{memory}'\n"
        )
        assert check_budget(config, all_settings(config)) == []


def test_budget_error_lists_every_violation() -> None:
    config = parse_config(STACK + "[deploy.supervisor]\nstopwaitsecs = 1\n")
    with pytest.raises(BudgetError) as info:
        render("supervisor", config, all_settings(config), workdir="/srv")
    assert len(info.value.violations) == 3
    assert "(and 2 more)" in str(info.value)


def test_kubernetes_procguard_command_is_configurable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_config(STACK + "[deploy.kubernetes]\nimage = 'r.example/shop:1'\nprocguard = 'python -m procguard'\n")
    files = {f.filename: json.loads(f.text.split("\n", 1)[1]) for f in render("kubernetes", config, all_settings(config))}
    command = files["shop-api.yaml"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["python", "-m", "procguard", "run"]

    path = tmp_path / "procguard.toml"
    path.write_text(STACK + "[deploy.kubernetes]\nimage = 'r.example/shop:1'\nprocguard = 'python \"unclosed'\n")
    assert main(["check", "-c", str(path)]) == 2
    assert "deploy.kubernetes.procguard: 'python \"unclosed' is not a command" in capsys.readouterr().err
