"""``procguard deploy prometheus``: the scrape config and the alert rules, checked by promtool.

- ``promtool check config`` reads the generated scrape config (with the TLS
  and token files it names present), ``promtool check rules`` the rules;
- ``promtool test rules``: for every alert, series in, the alert (with its
  labels and its expanded summary, description and runbook) out, and
  series that must not fire it;
- every metric an alert reads is one procguard really exports;
- the scrape config carries scheme, CA, credentials file and labels through,
  and refuses a token Prometheus cannot read.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from procguard.config import load_config
from procguard.deploy.prometheus import ScrapeOptions, alert_rules, scrape_config

from .helpers import PROCGUARD, python_env

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) missing")

STACK = "pgtest"
#: The labels a scraped worker's series carry (the scrape config's target labels, plus job and instance).
LOOP = {"job": "procguard", "instance": "127.0.0.1:9001", "stack": STACK, "worker": "loop"}
CMD = {"job": "procguard-2", "instance": "127.0.0.1:9002", "stack": STACK, "worker": "cmd"}


def _config(tmp_path: Path, *, token_in_env: bool = False) -> Path:
    (tmp_path / "cert.pem").write_text("placeholder: promtool checks that the file exists\n")
    (tmp_path / "key.pem").write_text("placeholder\n")
    (tmp_path / "token").write_text("t0ken\n")
    cmd_extra = 'env = { PROCGUARD_HEALTH_TOKEN = "t0ken" }\n' if token_in_env else ""
    path = tmp_path / "procguard.toml"
    path.write_text(
        f'[project]\nname = "{STACK}"\nstatus_port = 9100\n\n'
        '[workers.loop]\nrun = "pkg.mod:work"\nhealth_port = 9001\nheartbeat_timeout = "60s"\n'
        'health_tls_cert = "cert.pem"\nhealth_tls_key = "key.pem"\nhealth_token_file = "token"\n\n'
        f'[workers.cmd]\ncommand = "sleep 1000"\nhealth_port = 9002\nmemory_limit = "100MB"\ninstances = 2\n{cmd_extra}\n'
        '[workers.quiet]\ncommand = "sleep 1000"\n'
    )
    return path


def _deploy(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROCGUARD, "deploy", "prometheus", "-c", str(config), "-o", str(out), *extra],
                          capture_output=True, text=True, timeout=60, check=False, env=python_env())


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, check=False)


def test_the_generated_files_pass_promtool(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = _deploy(config, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    scrape, alerts = tmp_path / "out" / f"{STACK}-scrape.yml", tmp_path / "out" / f"{STACK}-alerts.yml"
    out = result.stdout.splitlines()
    assert out[:3] == [str(scrape), str(alerts), "next:"], out
    assert "  promtool check config /etc/prometheus/prometheus.yml" in out  # what to run next
    checked = _promtool("check", "config", str(scrape))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = _promtool("check", "rules", str(alerts))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    # and promtool reads what we meant
    jobs = {job["job_name"]: job for job in yaml.safe_load(scrape.read_text())["scrape_configs"]}
    assert set(jobs) == {"procguard", "procguard-2", "procguard-supervisor"}
    loop = jobs["procguard"]
    assert loop["scheme"] == "https" and loop["tls_config"]["ca_file"] == str(tmp_path / "cert.pem")
    assert loop["authorization"] == {"type": "Bearer", "credentials_file": str(tmp_path / "token")}
    assert loop["static_configs"] == [{"targets": ["127.0.0.1:9001"], "labels": {"stack": STACK, "worker": "loop"}}]
    assert loop["honor_labels"] is True
    cmd = jobs["procguard-2"]
    assert cmd["scheme"] == "http" and "authorization" not in cmd and "tls_config" not in cmd
    assert cmd["static_configs"] == [  # each copy its port P+K-1 and its `copy` label
        {"targets": ["127.0.0.1:9002"], "labels": {"stack": STACK, "worker": "cmd", "copy": "1"}},
        {"targets": ["127.0.0.1:9003"], "labels": {"stack": STACK, "worker": "cmd", "copy": "2"}},
    ]
    assert jobs["procguard-supervisor"]["static_configs"] == [{"targets": ["127.0.0.1:9100"],
                                                               "labels": {"stack": STACK}}]
    # a worker without a health port is not a target
    assert "quiet" not in scrape.read_text()


def test_a_token_prometheus_cannot_read_is_refused_unless_a_credentials_file_is_given(tmp_path: Path) -> None:
    config = _config(tmp_path, token_in_env=True)
    result = _deploy(config, tmp_path / "out")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "workers.cmd" in result.stderr and "--credentials-file" in result.stderr
    assert not (tmp_path / "out").exists()
    result = _deploy(config, tmp_path / "out", "--credentials-file", "/etc/prometheus/procguard.token",
                     "--ca-file", "/etc/prometheus/procguard-ca.pem", "--server-name", "workers.internal")
    assert result.returncode == 0, result.stderr
    jobs = yaml.safe_load((tmp_path / "out" / f"{STACK}-scrape.yml").read_text())["scrape_configs"]
    https = next(job for job in jobs if job["scheme"] == "https")
    assert https["tls_config"] == {"min_version": "TLS12", "ca_file": "/etc/prometheus/procguard-ca.pem",
                                   "server_name": "workers.internal"}
    assert all(job["authorization"]["credentials_file"] == "/etc/prometheus/procguard.token"
               for job in jobs if job["job_name"] != "procguard-supervisor")
    relative = _deploy(config, tmp_path / "out2", "--credentials-file", "procguard.token")
    assert relative.returncode == 2 and "--credentials-file" in relative.stderr and "absolute" in relative.stderr


def test_every_alert_reads_metrics_procguard_exports(tmp_path: Path) -> None:
    from procguard.health import exposition
    from procguard.supervisor import metrics

    exported = set(re.findall(r"procguard_[a-z_]+", Path(exposition.__file__).read_text()))
    exported |= set(re.findall(r"procguard_[a-z_]+", Path(metrics.__file__).read_text()))
    exported.add("procguard_circuit_state")  # the circuit breaker's gauge (2 = open)
    rules = alert_rules(load_config(_config(tmp_path)))["groups"][0]["rules"]
    used = {name for rule in rules for name in re.findall(r"procguard_[a-z_]+", rule["expr"])}
    assert used and used <= exported, used - exported
    for rule in rules:
        notes = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(notes)
        assert "{{ $labels.worker }}" in notes["summary"] and "{{ $labels.worker }}" in notes["description"]
        anchor = notes["runbook_url"].rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower()


# -- promtool test rules: every alert, firing and not firing ------------------------------------------


def _series(name: str, labels: dict[str, str], values: str, **extra: str) -> dict[str, str]:
    all_labels = {**labels, **extra}
    inner = ",".join(f'{k}="{v}"' for k, v in all_labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _expanded(rule: dict[str, Any], labels: dict[str, str], value: str) -> dict[str, str]:
    """The rule's annotations as Prometheus expands them for ``labels`` and ``value`` (already formatted)."""
    out = {}
    for key, template in rule["annotations"].items():
        text = template
        for name, label_value in labels.items():
            text = text.replace(f"{{{{ $labels.{name} }}}}", label_value)
        out[key] = re.sub(r"\{\{ \$value( \| \w+)? \}\}", value, text)
    return out


def _case(rules: dict[str, dict[str, Any]], alert: str, series: list[dict[str, str]], *, fires_at: str,
          quiet_at: str, labels: dict[str, str], value: str) -> dict[str, Any]:
    rule = rules[alert]
    exp_labels = {**labels, "severity": rule["labels"]["severity"]}
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": quiet_at, "alertname": alert, "exp_alerts": []},
            {"eval_time": fires_at, "alertname": alert,
             "exp_alerts": [{"exp_labels": exp_labels, "exp_annotations": _expanded(rule, labels, value)}]},
        ],
    }


def test_promtool_unit_tests_for_every_alert(tmp_path: Path) -> None:
    group = alert_rules(load_config(_config(tmp_path)))
    rules_file = tmp_path / "alerts.yml"
    rules_file.write_text(json.dumps(group))
    rules = {rule["alert"]: rule for rule in group["groups"][0]["rules"]}
    sup = {"job": "procguard-supervisor", "instance": "127.0.0.1:9100", "stack": STACK}
    tests = [
        # down: the loop's endpoint stops answering at 2m; the command's and the supervisor's
        # target labels never fire it (the supervisor has no worker label)
        _case(rules, "ProcguardWorkerDown", [
            _series("up", LOOP, "1 1 0 0 0 0 0"),
            _series("up", CMD, "1 1 1 1 1 1 1"),
            _series("up", sup, "0 0 0 0 0 0 0"),
        ], quiet_at="2m", fires_at="4m", labels=LOOP, value="0"),
        # unhealthy for 5 minutes fires; flapping never stays 5 minutes
        _case(rules, "ProcguardWorkerUnhealthy", [
            _series("procguard_healthy", LOOP, "1 0 0 0 0 0 0 0 0"),
            _series("procguard_healthy", CMD, "1 0 1 0 1 0 1 0 1"),
        ], quiet_at="4m", fires_at="7m", labels=LOOP, value="0"),
        # four new start times in the hour: over the threshold (3); the command restarted 3 times: not
        _case(rules, "ProcguardWorkerRestartingOften", [
            _series("procguard_start_time_seconds", LOOP, "100 100 200 300 400 500 500"),
            _series("procguard_start_time_seconds", CMD, "100 200 300 400 400 400 400"),
        ], quiet_at="3m", fires_at="6m",
            labels=LOOP, value="4"),
        # 95 % of the limit for 10 minutes fires; 80 % does not
        _case(rules, "ProcguardMemoryNearLimit", [
            _series("procguard_memory_resident_bytes", CMD, "95x15"),
            _series("procguard_memory_limit_bytes", CMD, "100x15"),
            _series("procguard_memory_resident_bytes", LOOP, "80x15"),
            _series("procguard_memory_limit_bytes", LOOP, "100x15"),
        ], quiet_at="5m", fires_at="12m", labels=CMD, value="95%"),
        # heartbeat 40 s old, over half of the 60 s timeout, for 2 minutes; 20 s is fine
        _case(rules, "ProcguardHeartbeatStale", [
            _series("procguard_heartbeat_age_seconds", LOOP, "10 40 40 40 40 40 40"),
            _series("procguard_heartbeat_age_seconds", {**LOOP, "instance": "127.0.0.1:9003"}, "20x6"),
        ], quiet_at="2m", fires_at="4m", labels=LOOP, value="40s"),
        # an open circuit (2) for 5 minutes fires; half-open (1) does not
        _case(rules, "ProcguardCircuitOpen", [
            _series("procguard_circuit_state", LOOP, "0 2 2 2 2 2 2 2 2", circuit="db"),
            _series("procguard_circuit_state", LOOP, "1 1 1 1 1 1 1 1 1", circuit="api"),
        ], quiet_at="4m", fires_at="7m", labels={**LOOP, "circuit": "db"}, value="2"),
    ]
    assert {t["alert_rule_test"][0]["alertname"] for t in tests} == set(rules)  # one test per alert
    unit = tmp_path / "alerts_test.yml"
    unit.write_text(json.dumps({"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": tests}))
    result = _promtool("test", "rules", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_rules_test_fails_when_an_alert_does_not_fire(tmp_path: Path) -> None:
    """The unit tests above can fail: a series that never crosses the threshold makes promtool say so."""
    group = alert_rules(load_config(_config(tmp_path)))
    rules_file = tmp_path / "alerts.yml"
    rules_file.write_text(json.dumps(group))
    rules = {rule["alert"]: rule for rule in group["groups"][0]["rules"]}
    test = _case(rules, "ProcguardWorkerDown", [_series("up", LOOP, "1 1 1 1 1 1")],
                 quiet_at="2m", fires_at="4m", labels=LOOP, value="0")
    unit = tmp_path / "alerts_test.yml"
    unit.write_text(json.dumps({"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": [test]}))
    result = _promtool("test", "rules", str(unit))
    assert result.returncode != 0
    assert "ProcguardWorkerDown" in result.stdout + result.stderr


def test_scrape_config_without_anything_to_scrape_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "procguard.toml"
    path.write_text('[workers.w]\ncommand = "sleep 1"\n')
    result = _deploy(path, tmp_path / "out")
    assert result.returncode == 2 and "nothing to scrape" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert scrape_config(load_config(_config(tmp_path)), ScrapeOptions())["scrape_configs"]
