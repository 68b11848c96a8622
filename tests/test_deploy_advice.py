"""``procguard deploy`` warns in one line when its files cannot work as generated, and says what to
run next; the supervisord warning is checked against a real supervisord."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Spawn
from .helpers import GLOBAL_TIMEOUT, PROCGUARD, python_env, read_output, wait_for
from .test_deploy_supervisord import SUPERVISORD, _main_conf, _status

WARNING = "procguard deploy: warning: "


def _config(tmp_path: Path, extra: str = "") -> Path:
    py = json.dumps(sys.executable)
    config = tmp_path / "procguard.toml"
    config.write_text(
        f"""
[project]
name = "shop"

[workers.api]
command = [{py}, "-c", "import time; time.sleep(3600)"]

[workers.mailer]
command = [{py}, "-c", "import time; time.sleep(3600)"]
{extra}"""
    )
    return config


def _deploy(config: Path, target: str, *flags: str) -> subprocess.CompletedProcess[str]:
    if target == "systemd" and "--venv" not in flags:
        # The interpreter of a checkout under /tmp (a CI clone) would be warned about too: name one
        # outside it, so each test sees only the warning it is about.
        flags = ("--venv", "/srv/shop/venv", *flags)
    return subprocess.run([*PROCGUARD, "deploy", target, "-c", str(config), *flags], env=python_env(),
                          capture_output=True, text=True, check=False, timeout=60)


def _warnings(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = result.stderr.splitlines()
    assert all(line.startswith(WARNING) for line in lines), result.stderr  # nothing else on stderr
    return [line[len(WARNING) :] for line in lines]


def _steps(result: subprocess.CompletedProcess[str]) -> list[str]:
    _, marker, steps = result.stdout.partition("next:\n")
    assert marker, result.stdout
    return [line.strip() for line in steps.splitlines()]


def test_systemd_workdir_under_tmp_is_hidden_by_private_tmp(tmp_path: Path) -> None:
    config = _config(tmp_path)
    out = tmp_path / "units"
    result = _deploy(config, "systemd", "--workdir", "/tmp/shop", "-o", str(out))
    assert result.returncode == 0
    (line,) = _warnings(result)
    assert line.startswith("WorkingDirectory=/tmp/shop (workers api, mailer) is under /tmp"), line
    assert "PrivateTmp=yes" in line and "--workdir" in line
    assert "WorkingDirectory=/tmp/shop" in (out / "shop-api.service").read_text()  # what it warns about
    assert "PrivateTmp=yes" in (out / "shop-api.service").read_text()

    clean = _deploy(config, "systemd", "--workdir", "/srv/shop", "--user", "root", "-o", str(out))
    assert clean.returncode == 0 and clean.stderr == ""
    printed = _deploy(config, "systemd", "--workdir", "/var/tmp/shop", "-o", "-")
    assert printed.returncode == 0 and printed.stdout.startswith("# ---- ")
    assert "under /var/tmp" in _warnings(printed)[0] and "next:" not in printed.stdout


def test_unknown_user_and_dynamic_user_under_root(tmp_path: Path) -> None:
    config = _config(tmp_path)
    out = tmp_path / "units"
    result = _deploy(config, "systemd", "--workdir", "/srv/shop", "--user", "no-such-user-here", "-o", str(out))
    assert result.returncode == 0
    assert _warnings(result) == [
        "user 'no-such-user-here' does not exist on this machine: systemd cannot run the workers as it "
        "(create it, or pass --user with an existing one)"
    ]
    result = _deploy(config, "systemd", "--workdir", "/root/shop", "-o", str(out))
    (line,) = _warnings(result)
    assert line.startswith("/root/shop is under /root, which the units' DynamicUser=yes cannot read"), line


def test_systemd_next_steps_install_what_was_written(tmp_path: Path) -> None:
    config = _config(tmp_path)
    out = tmp_path / "units"
    result = _deploy(config, "systemd", "--workdir", "/srv/shop", "--user", "root", "-o", str(out))
    steps = _steps(result)
    copy = shlex.split(steps[0])
    assert copy[:2] == ["sudo", "cp"] and copy[-1] == "/etc/systemd/system/"
    assert sorted(copy[2:-1]) == sorted(str(path) for path in out.iterdir())
    assert steps[1:3] == ["sudo systemctl daemon-reload", "sudo systemctl enable --now shop.target"]
    # without the stack's target, each service is enabled
    no_target = _config(tmp_path, "\n[deploy.systemd]\ntarget = false\n")
    steps = _steps(_deploy(no_target, "systemd", "--workdir", "/srv/shop", "--user", "root", "-o",
                           str(tmp_path / "bare")))
    assert steps[2] == "sudo systemctl enable --now shop-api.service shop-mailer.service"


def test_kubernetes_next_steps(tmp_path: Path) -> None:
    config = _config(tmp_path)
    out = tmp_path / "k8s"
    result = _deploy(config, "kubernetes", "--image", "registry.example/shop:1", "--namespace", "shop",
                     "-o", str(out))
    assert result.returncode == 0 and result.stderr == ""
    assert _steps(result) == [
        "kubectl create namespace shop  # once, if missing",
        f"kubectl apply -f {out}/",
        "kubectl get deployments -l app.kubernetes.io/name=shop",
    ]


@pytest.mark.skipif(not SUPERVISORD.exists(), reason="supervisor is not installed in this environment")
def test_supervisord_log_dir_that_does_not_exist(tmp_path: Path, spawn: Spawn, state_dir: Path) -> None:
    logs = tmp_path / "logs"
    config = _config(tmp_path, f"\n[deploy.supervisor]\nlog_dir = {json.dumps(str(logs))}\nstartsecs = 1\n")
    out = tmp_path / "deploy"
    result = _deploy(config, "supervisor", "-o", str(out))
    assert result.returncode == 0
    assert _warnings(result) == [
        f"log directory {logs} does not exist on this machine: supervisord will not start the programs "
        f"until it does (mkdir -p {logs}, or set log_dir in [deploy.supervisor])"
    ]
    steps = _steps(result)
    assert steps[0] == f"sudo cp {out}/shop.conf /etc/supervisor/conf.d/"
    assert steps[1:3] == ["sudo supervisorctl reread", "sudo supervisorctl update"]

    # the warning is true: a real supervisord refuses the file as generated...
    (tmp_path / "sdlogs").mkdir()
    conf = _main_conf(tmp_path, out / "shop.conf")
    conf.write_text(conf.read_text().replace(f"childlogdir={tmp_path}/logs", f"childlogdir={tmp_path}/sdlogs"))
    refused = subprocess.run([str(SUPERVISORD), "-n", "-c", str(conf)], env=python_env(), capture_output=True,
                             text=True, check=False, timeout=60, cwd=tmp_path)
    assert refused.returncode != 0 and str(logs) in refused.stdout + refused.stderr, refused
    # ... and runs it once the directory the warning names exists (no warning then)
    logs.mkdir()
    assert _deploy(config, "supervisor", "-o", str(out)).stderr == ""
    proc = spawn([str(SUPERVISORD), "-n", "-c", str(conf)], env=python_env(), cwd=str(tmp_path))

    def running() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"supervisord exited {proc.returncode}:\n{read_output(proc)}")
        states = _status(conf)
        return len(states) == 2 and all(state == "RUNNING" for state, _ in states.values())

    wait_for(running, timeout=GLOBAL_TIMEOUT * 2, message=lambda: f"both programs RUNNING: {_status(conf)}")
    subprocess.run([str(SUPERVISORD.parent / "supervisorctl"), "-c", str(conf), "shutdown"],
                   capture_output=True, timeout=60, check=False)
    proc.wait(timeout=GLOBAL_TIMEOUT * 2)
