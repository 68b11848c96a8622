"""Generated files for a worker with copies (``instances = 3``), checked by each engine.

- supervisord (real, in the foreground as the test's child): one program
  with ``numprocs = 3`` runs ``web_1`` .. ``web_3``, each ``procguard run
  --name web:K`` with ``PROCGUARD_INSTANCE_INDEX=K`` and its health port
  P+K-1 answering /health; ``stop all`` leaves no process behind;
- systemd: a template unit ``shop-web@.service``, verified by
  ``systemd-analyze verify`` on instantiated names, whose target wants
  ``@1`` .. ``@3`` (and its dependents wait for each);
- Kubernetes: ``replicas: 3`` with the port P in every pod,
  ``kubernetes-validate --strict`` passes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from procguard.cli.main import main
from procguard.config import parse_config
from procguard.deploy import all_settings, render

from .conftest import Spawn
from .helpers import GLOBAL_TIMEOUT, free_ports, python_env, read_output, wait_for
from .http_abuse import get
from .supervisor_workers.stackkit import alive

BIN = Path(sys.executable).parent
SUPERVISORD = BIN / "supervisord"
SUPERVISORCTL = BIN / "supervisorctl"


def _stack_text(port: int, tmp_path: Path | None = None) -> str:
    py = json.dumps(sys.executable)
    logs = f'\n[deploy.supervisor]\nlog_dir = {json.dumps(str(tmp_path / "logs"))}\nstartsecs = 1\n' if tmp_path else ""
    return f"""
[project]
name = "shop"

[defaults]
grace = "5s"
memory_limit = "512MB"

[workers.web]
command = [{py}, "-c", "import time; time.sleep(3600)"]
instances = 3
health_port = {port}

[workers.feeder]
run = "shop.feeder:feed"
instances = 2
depends_on = ["web"]

[workers.single]
command = [{py}, "-c", "import time; time.sleep(3600)"]
{logs}"""


def _write(files: list[Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for record in files:
        path = directory / record.filename
        path.write_text(record.text)
        paths.append(path)
    return paths


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("user", [None, "shop"])
def test_template_units_pass_systemd_analyze_verify(tmp_path: Path, user: str | None) -> None:
    stack = parse_config(_stack_text(9300), path="/srv/shop/procguard.toml")
    paths = _write(render("systemd", stack, all_settings(stack, {"user": user}), workdir="/srv/shop"), tmp_path)
    assert sorted(p.name for p in paths) == ["shop-feeder@.service", "shop-single.service", "shop-web@.service",
                                             "shop.target"]
    target = (tmp_path / "shop.target").read_text()
    assert ("Wants=shop-web@1.service shop-web@2.service shop-web@3.service shop-feeder@1.service "
            "shop-feeder@2.service shop-single.service") in target
    web = (tmp_path / "shop-web@.service").read_text()
    assert '"PROCGUARD_INSTANCE_INDEX=%i"' in web and '"PROCGUARD_INSTANCES=3"' in web
    assert "--name web:%i" in web and "--health-port $$((9299 + %i))" in web
    feeder = (tmp_path / "shop-feeder@.service").read_text()
    assert "After=network-online.target shop-web@1.service shop-web@2.service shop-web@3.service" in feeder
    assert "--name feeder:%i" in feeder and "/bin/sh" not in feeder  # no health port: no arithmetic
    instances = ["shop-web@1.service", "shop-web@3.service", "shop-feeder@2.service", "shop-single.service",
                 "shop.target"]
    result = subprocess.run(["systemd-analyze", "verify", *[f"./{name}" for name in instances]],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
    # systemd really gives copy 3 its number and its port (what `systemctl start shop-web@3` runs)
    shown = subprocess.run(["systemd-analyze", "security", "--offline=yes", "./shop-web@3.service"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r"Overall exposure level for shop-web@3.service: ([0-9.]+)", shown.stdout)
    assert match and float(match.group(1)) <= 2.5, shown.stdout + shown.stderr


def test_kubernetes_runs_copies_as_replicas(tmp_path: Path) -> None:
    stack = parse_config(_stack_text(9300), path="/srv/shop/procguard.toml")
    paths = _write(render("kubernetes", stack, all_settings(stack, {"image": "registry.example/shop:1.0"})), tmp_path)
    manifests = {p.name: json.loads(p.read_text().split("\n", 1)[1]) for p in paths}
    assert {name: m["spec"]["replicas"] for name, m in manifests.items()} == {
        "shop-web.yaml": 3, "shop-feeder.yaml": 2, "shop-single.yaml": 1}
    web = manifests["shop-web.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert web["ports"][0]["containerPort"] == 9300  # every pod has the port P: pods do not share one
    assert "PROCGUARD_INSTANCE_INDEX" not in {e["name"] for e in web["env"]}
    validate = BIN / "kubernetes-validate"
    if not validate.exists():
        pytest.skip("kubernetes-validate is not installed in this environment")
    result = subprocess.run([str(validate), "--strict", *map(str, paths)], capture_output=True, text=True,
                            timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 3, result.stdout
    assert "WARN" not in result.stdout + result.stderr


def _main_conf(tmp_path: Path, include: Path) -> Path:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"""
[unix_http_server]
file={tmp_path}/supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={tmp_path}/supervisord.log
pidfile={tmp_path}/supervisord.pid
childlogdir={tmp_path}/logs
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{tmp_path}/supervisor.sock

[include]
files={include}
""")
    return conf


def _status(conf: Path) -> dict[str, tuple[str, int | None]]:
    result = subprocess.run([str(SUPERVISORCTL), "-c", str(conf), "status"], capture_output=True, text=True,
                            timeout=30, check=False)
    states: dict[str, tuple[str, int | None]] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"(\S+)\s+(\S+)\s*(?:pid (\d+))?", line)
        if match and ":" in match.group(1):
            states[match.group(1)] = (match.group(2), int(match.group(3)) if match.group(3) else None)
    return states


@pytest.mark.slow
@pytest.mark.skipif(not SUPERVISORD.exists(), reason="supervisor is not installed in this environment")
def test_supervisord_runs_numprocs_copies_with_their_ports(tmp_path: Path, spawn: Spawn, state_dir: Path) -> None:
    port = free_ports(3)
    (tmp_path / "logs").mkdir()
    text = _stack_text(port, tmp_path).replace('[workers.feeder]\nrun = "shop.feeder:feed"\ninstances = 2\n'
                                               'depends_on = ["web"]\n', "")
    config = tmp_path / "procguard.toml"
    config.write_text(text)
    out = tmp_path / "deploy"
    assert main(["deploy", "supervisor", "-c", str(config), "-o", str(out)]) == 0
    conf = _main_conf(tmp_path, out / "shop.conf")
    proc = spawn([str(SUPERVISORD), "-n", "-c", str(conf)], env=python_env(), cwd=str(tmp_path))
    names = {"shop:web_1", "shop:web_2", "shop:web_3", "shop:single"}

    def all_running() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"supervisord exited {proc.returncode}:\n{read_output(proc)}")
        states = _status(conf)
        return set(states) == names and all(state == "RUNNING" for state, _pid in states.values())

    wait_for(all_running, timeout=GLOBAL_TIMEOUT * 2, message=lambda: f"all programs RUNNING: {_status(conf)}")
    states = _status(conf)
    for k in (1, 2, 3):
        pid = states[f"shop:web_{k}"][1]
        assert pid is not None
        runner = psutil.Process(pid)  # sh exec'd procguard: the program's pid is the runner's
        cmdline = runner.cmdline()
        assert cmdline[cmdline.index("--name") + 1] == f"web:{k}"
        assert cmdline[cmdline.index("--health-port") + 1] == str(port + k - 1)
        environ = runner.environ()
        assert environ["PROCGUARD_INSTANCE_INDEX"] == str(k) and environ["PROCGUARD_INSTANCES"] == "3"
        wait_for(lambda k=k: get(port + k - 1, "/health")[0] == 200, message=f"web_{k} healthy on P+{k - 1}")
    assert (tmp_path / "logs" / "shop-web_2.out.log").exists()
    family = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    result = subprocess.run([str(SUPERVISORCTL), "-c", str(conf), "stop", "all"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: not [p for p in family if alive(p)], message=lambda: f"no survivors: {[p for p in family if alive(p)]}")
