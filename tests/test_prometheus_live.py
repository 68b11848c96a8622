"""A real Prometheus scrapes a running stack over TLS with the token, from the generated scrape config.

The Debian ``prometheus`` binary, started by the test on 127.0.0.1 (a free
port; its storage in the test's temp dir), is given the scrape jobs that
``procguard deploy prometheus`` wrote for the stack, unchanged, and the
test's own copy of the generated alert rules with short ``for:`` durations.
The stack runs under ``procguard up`` with its own state directory: a
command worker and a function worker, both with a health port that speaks
HTTPS only and a token file, and the status page over HTTPS. Checked:

- every target (both workers, the supervisor's status port) is ``up`` in
  /api/v1/targets, and the workers' own series carry their ``worker`` and
  ``stack`` labels;
- stopping a worker on purpose (``procguard stop``) fires
  ``ProcguardWorkerDown`` for that worker, and only for it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import PROCGUARD, free_port, python_env, read_output, wait_for
from .supervisor_workers.stackkit import Stack, worker_cmd, write_config
from .tlsfiles import make_tls_files

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
pytestmark = pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="prometheus (Debian package) missing")

FAST = "start_period_s=0.3,sample_interval_s=0.2"


def _api(port: int, path: str, **query: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def test_prometheus_scrapes_the_stack_over_tls_and_fires_worker_down(tmp_path: Path, spawn: Any) -> None:
    tls = make_tls_files(tmp_path / "tls")
    token_file = tmp_path / "token"
    token_file.write_text("pr0m-t0ken\n")
    project = f"prom{free_port()}"
    ports = {"web": free_port(), "fn": free_port(), "status": free_port()}
    secured = {"health_tls_cert": str(tls.cert), "health_tls_key": str(tls.key),
               "health_token_file": str(token_file)}
    config = write_config(tmp_path, {
        "web": {"command": worker_cmd("ticker.py", tmp_path / "web.ticks"), "health_port": ports["web"],
                **secured},
        "fn": {"run": "tests.supervisor_workers.targets:idle", "interval": "1s", "health_port": ports["fn"],
               **secured},
    }, project=project, defaults={"grace": "5s"}, status_port=ports["status"],
        status_tls_cert=str(tls.cert), status_tls_key=str(tls.key))

    # the files Prometheus gets, as procguard deploy writes them
    out = tmp_path / "prometheus"
    deployed = subprocess.run([*PROCGUARD, "deploy", "prometheus", "-c", str(config), "-o", str(out)],
                              capture_output=True, text=True, timeout=60, check=False, env=python_env())
    assert deployed.returncode == 0, deployed.stderr
    scrape = yaml.safe_load((out / f"{project}-scrape.yml").read_text())
    rules = yaml.safe_load((out / f"{project}-alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule["for"] = "2s"  # the test's own copy: short durations
    rules_file = tmp_path / "alerts.yml"
    rules_file.write_text(json.dumps(rules))
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_file)],
        "scrape_configs": scrape["scrape_configs"],
    }))
    checked = subprocess.run(["promtool", "check", "config", str(prom_config)], capture_output=True, text=True,
                             timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    stack = Stack(config, tmp_path / "state", spawn, project=project, tuning=FAST)
    stack.up()
    for name in ("web", "fn"):
        stack.wait_state(name, "running")

    web_port = free_port()
    prom = spawn([PROMETHEUS, f"--config.file={prom_config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                  f"--web.listen-address=127.0.0.1:{web_port}", "--log.level=warn"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def targets() -> list[dict[str, Any]] | None:
        if prom.poll() is not None:
            raise AssertionError(f"prometheus exited {prom.returncode}: {read_output(prom)}")
        try:
            active = _api(web_port, "/api/v1/targets")["activeTargets"]
        except OSError:
            return None
        return active if len(active) == 3 and all(t["health"] == "up" for t in active) else None

    active = wait_for(targets, timeout=60, interval=0.5,
                      message=lambda: f"all three targets up: {_safe_targets(web_port)}")
    assert {t["labels"].get("worker") for t in active} == {"web", "fn", None}
    assert all(t["labels"]["stack"] == project for t in active)
    assert all(t["scrapeUrl"].startswith("https://127.0.0.1:") for t in active)

    # the workers' own series, scraped with the token over TLS
    def healthy_series() -> set[str] | None:
        result = _api(web_port, "/api/v1/query", query=f'procguard_healthy{{stack="{project}"}} == 1')["result"]
        workers = {r["metric"]["worker"] for r in result}
        return workers if workers == {"web", "fn"} else None

    wait_for(healthy_series, timeout=30, interval=0.5, message="procguard_healthy of both workers")

    # stop one worker on purpose: its port is released, its scrape fails, the alert fires
    stopped = stack.cli("stop", "web")
    assert stopped.returncode == 0, stopped.stderr

    def firing() -> list[dict[str, Any]] | None:
        alerts = _api(web_port, "/api/v1/alerts")["alerts"]
        down = [a for a in alerts if a["labels"]["alertname"] == "ProcguardWorkerDown" and a["state"] == "firing"]
        return down or None

    down = wait_for(firing, timeout=60, interval=0.5,
                    message=lambda: f"ProcguardWorkerDown firing: {_api(web_port, '/api/v1/alerts')}")
    assert [a["labels"]["worker"] for a in down] == ["web"]
    alert = down[0]
    assert alert["labels"]["stack"] == project and alert["labels"]["severity"] == "critical"
    assert "worker web of stack" in alert["annotations"]["summary"]
    assert alert["annotations"]["runbook_url"].endswith("ALERTS.md#procguardworkerdown")


def _safe_targets(port: int) -> object:
    try:
        return [(t["scrapeUrl"], t["health"], t["lastError"]) for t in _api(port, "/api/v1/targets")["activeTargets"]]
    except OSError as error:
        return error
