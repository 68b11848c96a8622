"""Generated systemd units, supervisord configs and Kubernetes manifests carry TLS and the token through.

- systemd: the certificate, key and token file are ``LoadCredential=``
  entries and the ``procguard run`` flags point at ``%d/<id>``; the unit
  passes ``systemd-analyze verify``, and the command line really runs:
  ``procguard run`` with the flags as systemd expands them (``%d`` replaced
  by a directory holding the files) serves HTTPS;
- supervisord: the generated group, run by a real supervisord, serves the
  worker's health port over HTTPS with the token and refuses plain HTTP;
- Kubernetes: probes use ``scheme: HTTPS``; the files come from Secrets
  mounted read-only; ``PROCGUARD_HEALTH_TOKEN`` is a ``secretKeyRef``, its
  value never in the manifest; ``kubernetes-validate --strict`` passes.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from procguard.config import parse_config
from procguard.deploy import all_settings, render

from .helpers import GLOBAL_TIMEOUT, PROCGUARD, free_port, python_env, read_output, wait_for
from .test_deploy_supervisord import SUPERVISORD, _main_conf, _status
from .tlsfiles import TlsFiles, https_get, make_tls_files, plain_exchange

TOKEN = "dep10y-t0ken"
SECRET_IN_ENV = "inline-secret-value-never-in-a-manifest"


def _toml(tls: TlsFiles, token_file: Path, port: int, *, extra: str = "") -> str:
    return f"""
[project]
name = "shop"

[workers.api]
command = "sleep 3600"
health_port = {port}
health_tls_cert = {json.dumps(str(tls.cert))}
health_tls_key = {json.dumps(str(tls.key))}
health_token_file = {json.dumps(str(token_file))}
{extra}
[workers.bot]
command = "sleep 3600"
health_port = {port + 1 if port < 65535 else port - 1}
env = {{ PROCGUARD_HEALTH_TOKEN = "{SECRET_IN_ENV}" }}
"""


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("deploytls"))


def _token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_hands_the_files_in_as_credentials(tls: TlsFiles, tmp_path: Path, spawn: Any) -> None:
    port = free_port()
    config = parse_config(_toml(tls, _token(tmp_path), port), path="/srv/shop/procguard.toml")
    files = {f.filename: f.text for f in render("systemd", config, all_settings(config), workdir="/srv/shop",
                                                  procguard=[sys.executable, "-m", "procguard"])}
    unit = files["shop-api.service"]
    lines = unit.splitlines()
    assert f"LoadCredential=health_tls_cert:{tls.cert}" in lines
    assert f"LoadCredential=health_tls_key:{tls.key}" in lines
    assert f"LoadCredential=health_token_file:{tmp_path / 'token'}" in lines
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    for flag, field in (("--health-tls-cert", "health_tls_cert"), ("--health-tls-key", "health_tls_key"),
                        ("--health-token-file", "health_token_file")):
        assert f"{flag} %d/{field}" in exec_start
    assert "LoadCredential" not in files["shop-bot.service"]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", *[f"./{name}" for name in files]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr

    # the command line as systemd runs it: %d is the credentials directory holding the copies
    creds = tmp_path / "credentials"
    creds.mkdir()
    for field, source in (("health_tls_cert", tls.cert), ("health_tls_key", tls.key),
                          ("health_token_file", tmp_path / "token")):
        (creds / field).write_bytes(Path(source).read_bytes())
    argv = shlex.split(exec_start.removeprefix("ExecStart=").replace("%d", str(creds)))
    assert argv[:3] == [sys.executable, "-m", "procguard"]
    proc = spawn(argv, env=python_env(PROCGUARD_STATE_DIR=str(tmp_path / "state")))

    def serving() -> bool:
        assert proc.poll() is None, read_output(proc)
        try:
            return https_get(port, "/health", tls.cert)[0] == 200
        except OSError:
            return False

    wait_for(serving, message="the unit's command line serving HTTPS")
    assert https_get(port, "/metrics", tls.cert, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


@pytest.mark.skipif(not SUPERVISORD.exists(), reason="supervisor is not installed in this environment")
def test_supervisord_runs_the_worker_with_https_and_the_token(
    tls: TlsFiles, tmp_path: Path, spawn: Any, state_dir: Path
) -> None:
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    config = tmp_path / "procguard.toml"
    config.write_text(_toml(tls, _token(tmp_path), port,
                            extra=f"\n[deploy.supervisor]\nlog_dir = {json.dumps(str(logs))}\nstartsecs = 1\n"))
    out = tmp_path / "deploy"
    deployed = subprocess.run([*PROCGUARD, "deploy", "supervisor", "-c", str(config), "-o", str(out)],
                              capture_output=True, text=True, timeout=60, check=False, env=python_env())
    assert deployed.returncode == 0, deployed.stderr
    text = (out / "shop.conf").read_text()
    assert "--health-tls-cert" in text and "--health-token-file" in text
    conf = _main_conf(tmp_path, out / "shop.conf")
    proc = spawn([str(SUPERVISORD), "-n", "-c", str(conf)], env=python_env(), cwd=str(tmp_path))

    def running() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"supervisord exited {proc.returncode}:\n{read_output(proc)}")
        states = _status(conf)
        return len(states) == 2 and all(state == "RUNNING" for state, _pid in states.values())

    wait_for(running, timeout=GLOBAL_TIMEOUT * 2, message=lambda: f"both programs RUNNING: {_status(conf)}")

    def healthy() -> bool:
        try:
            return https_get(port, "/health", tls.cert)[0] == 200
        except OSError:
            return False

    wait_for(healthy, message="the supervised worker's HTTPS health port")
    assert https_get(port, "/metrics", tls.cert)[0] == 401
    assert https_get(port, "/metrics", tls.cert, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert b"this port speaks HTTPS" in plain_exchange(port)
    subprocess.run([str(SUPERVISORD.parent / "supervisorctl"), "-c", str(conf), "stop", "all"],
                   capture_output=True, timeout=60, check=False)


def test_kubernetes_references_secrets_and_probes_https(tls: TlsFiles, tmp_path: Path) -> None:
    config = parse_config(_toml(tls, _token(tmp_path), 9091), path="/srv/shop/procguard.toml")
    settings = all_settings(config, {"image": "registry.example/shop:1.0", "namespace": "shop"})
    files = render("kubernetes", config, settings)
    for record in files:
        assert SECRET_IN_ENV not in record.text and TOKEN not in record.text
        assert str(tls.key) not in record.text  # paths of this machine stay here: the pod reads the Secret
    api = yaml.safe_load(next(f.text for f in files if f.filename == "shop-api.yaml"))
    pod = api["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    command = container["command"]
    assert command[command.index("--health-tls-cert") + 1] == "/etc/procguard/tls/tls.crt"
    assert command[command.index("--health-tls-key") + 1] == "/etc/procguard/tls/tls.key"
    assert command[command.index("--health-token-file") + 1] == "/etc/procguard/token/token"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["health-tls"]["secret"]["secretName"] == "shop-health-tls"
    assert volumes["health-token"]["secret"]["secretName"] == "shop-health-token"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["health-tls"]["readOnly"] is True and mounts["health-token"]["readOnly"] is True
    assert api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scheme"] == "https"

    bot = yaml.safe_load(next(f.text for f in files if f.filename == "shop-bot.yaml"))
    bot_container = bot["spec"]["template"]["spec"]["containers"][0]
    token_env = [e for e in bot_container["env"] if e["name"] == "PROCGUARD_HEALTH_TOKEN"]
    assert token_env == [{"name": "PROCGUARD_HEALTH_TOKEN",
                          "valueFrom": {"secretKeyRef": {"name": "shop-health-token", "key": "token"}}}]
    assert "scheme" not in bot_container["livenessProbe"]["httpGet"]  # plain where TLS is off

    validate = Path(sys.executable).parent / "kubernetes-validate"
    if not validate.exists():
        pytest.skip("kubernetes-validate is not installed in this environment")
    paths = []
    for record in files:
        path = tmp_path / record.filename
        path.write_text(record.text)
        paths.append(str(path))
    result = subprocess.run([str(validate), "--strict", *paths], capture_output=True, text=True, timeout=180,
                            check=False)
    assert result.returncode == 0 and result.stdout.count("passed") == 2, result.stdout + result.stderr
    assert "WARN" not in result.stdout + result.stderr
