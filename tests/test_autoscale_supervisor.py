"""procguard up autoscaling a worker on a gauge its copies publish: status (text and JSON), the status
API, history, an unknown metric named in one warning, and bad rules refused at up in one line."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

from .conftest import Spawn
from .helpers import PROCGUARD, free_port, free_ports, python_env, wait_for
from .supervisor_workers.stackkit import Stack, write_config

REPO = Path(__file__).resolve().parent.parent
TARGET = "tests.supervisor_workers.targets:publish_gauge"


def _stack(tmp_path: Path, state_dir: Path, spawn: Spawn, *, metric: str = "queue_depth",
           status_port: int = 0, tuning: str = "") -> tuple[Stack, Path]:
    gauge = tmp_path / "gauge"
    gauge.write_text("0")
    config = write_config(
        tmp_path,
        {"w": {"run": TARGET, "interval": "0.05s", "health_port": free_ports(3)}},
        project="gauged",
        defaults={"cwd": str(REPO), "grace": "5s", "env": {"GAUGE_FILE": str(gauge), "GAUGE_NAME": "queue_depth"}},
        status_port=status_port,
    )
    with config.open("a") as toml:
        toml.write(f'\n[workers.w.autoscale]\nmin = 1\nmax = 3\nmetric = "{metric}"\ntarget = 10\n'
                   'interval = "0.3s"\nscale_down_after = "1.5s"\n')
    return Stack(config, state_dir, spawn, project="gauged", tuning=tuning), gauge


def _copies(stack: Stack) -> int:
    return len([w for w in stack.status() or [] if w["worker"] == "w"])


def test_up_scales_on_the_summed_gauge_and_shows_the_rule_everywhere(
    tmp_path: Path, state_dir: Path, spawn: Spawn
) -> None:
    port = free_port()
    stack, gauge = _stack(tmp_path, state_dir, spawn, status_port=port)
    stack.up()
    stack.wait_state("w", "running")
    gauge.write_text("25")  # ceil(25 / 10) = 3 copies
    wait_for(lambda: _copies(stack) == 3, timeout=10, message=lambda: f"3 copies; {stack.output()[-2000:]}")
    stack.wait_state("w:3", "running")
    text = wait_for(lambda: (out := stack.cli("status").stdout) and "now 25 (" in out and out,
                    timeout=10, message="the reading in status")
    assert "w: autoscale 1..3 copies on queue_depth (target 10 per copy): now 25 (3 read), wants 3" in text
    shown = stack.worker("w:2")["autoscale"]  # type: ignore[index]
    assert shown["value"] == 25 and shown["wanted"] == 3 and shown["scale_down_after_seconds"] == 1.5
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workers", timeout=10) as response:
        api = json.load(response)
    rows = api if isinstance(api, list) else api["workers"]
    assert any((w.get("autoscale") or {}).get("metric") == "queue_depth" for w in rows)
    _page_shows_the_rule(port)

    gauge.write_text("0")
    wait_for(lambda: _copies(stack) == 1, timeout=15, message=lambda: f"back to 1; {stack.output()[-2000:]}")
    history = json.loads(stack.cli("history", "--json", "-n", "0").stdout)
    details = [e["detail"] for e in reversed(history) if e["event"] == "scale"]
    assert details[0] == "from 1 to 3 copies; queue_depth 25 (1 read)"
    assert details[-1].startswith("from 3 to 1 copies; queue_depth 0 (3 read)")
    stops = [e for e in history if e["event"] == "stop" and e["worker"] in ("w:2", "w:3")]
    assert {e["by"] for e in stops} == {"operator"} and {e["detail"] for e in stops} == {"autoscale"}


def test_a_metric_no_copy_publishes_is_named_once_and_nothing_changes(
    tmp_path: Path, state_dir: Path, spawn: Spawn
) -> None:
    stack, gauge = _stack(tmp_path, state_dir, spawn, metric="jobs_waiting",
                          tuning="autoscale_missing_warn_s=1")
    gauge.write_text("1000")
    stack.up()
    stack.wait_state("w", "running")
    wait_for(lambda: "autoscale metric 'jobs_waiting' not published" in stack.output(), timeout=15,
             message=lambda: f"the warning; {stack.output()[-2000:]}")
    wait_for(lambda: stack.worker("w")["autoscale"]["why"] == "no copy could be read", timeout=5,  # type: ignore[index]
             message="a reading")
    assert stack.output().count("not published by any copy") == 1
    assert _copies(stack) == 1


def test_bad_rules_are_one_line_exit_2_at_up(tmp_path: Path, state_dir: Path) -> None:
    cases = {
        'min = 3\nmax = 2\nmetric = "q"\ntarget = 1': "workers.w.autoscale.min: 3 is above max 2 (use min <= max)",
        'min = 1\nmax = 2\nmetric = "q"\ntarget = 0': "workers.w.autoscale.target: 0 is not above 0",
    }
    for rule, message in cases.items():
        config = tmp_path / "procguard.toml"
        config.write_text(f'[workers.w]\nrun = "{TARGET}"\nhealth_port = 9500\n[workers.w.autoscale]\n{rule}\n')
        result = subprocess.run([*PROCGUARD, "up", "-c", str(config)], env=python_env(PROCGUARD_STATE_DIR=str(state_dir)),
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    config = tmp_path / "procguard.toml"
    config.write_text('[workers.w]\ncommand = "sleep 100"\nhealth_port = 9500\n[workers.w.autoscale]\n'
                      'min = 1\nmax = 2\nmetric = "q"\ntarget = 5\n')
    result = subprocess.run([*PROCGUARD, "check", "-c", str(config)], env=python_env(), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2 and "workers.w.autoscale: needs a run worker" in result.stderr
    config.write_text(f'[workers.w]\nrun = "{TARGET}"\n[workers.w.autoscale]\nmin = 1\nmax = 2\nmetric = "q"\ntarget = 5\n')
    result = subprocess.run([*PROCGUARD, "check", "-c", str(config)], env=python_env(), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2 and "workers.w.autoscale: needs a health_port" in result.stderr


def _page_shows_the_rule(port: int) -> None:
    """The status page (a real headless Chromium, when installed) shows the rule and the value once."""
    from .test_status_page import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("tr[data-worker='w'] .autoscale", timeout=15_000)
            line = page.locator(".autoscale")
            assert line.count() == 1  # under the first copy only
            text = line.inner_text()
            assert "autoscale 1\u20133 on queue_depth, target 10 per copy: queue_depth 25 (3 read), wants 3" in text
            assert errors == []
        finally:
            browser.close()


def test_reload_keeps_the_autoscaled_count_and_a_rule_change_restarts_nothing(
    tmp_path: Path, state_dir: Path, spawn: Spawn
) -> None:
    stack, gauge = _stack(tmp_path, state_dir, spawn)
    stack.up()
    stack.wait_state("w", "running")
    gauge.write_text("25")
    wait_for(lambda: _copies(stack) == 3, timeout=10, message=lambda: f"3 copies; {stack.output()[-2000:]}")
    for name in ("w:2", "w:3"):
        stack.wait_state(name, "running")
    pids = {w["name"]: w["pid"] for w in stack.status() or []}
    text = stack.config.read_text()
    stack.config.write_text(text.replace("target = 10", "target = 20").replace('"1.5s"', '"60s"'))
    result = stack.cli("reload")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "autoscale 1..3 on queue_depth target 10 -> 1..3 on queue_depth target 20" in result.stdout
    wait_for(lambda: (stack.worker("w") or {}).get("autoscale", {}).get("target") == 20.0, timeout=5,
             message="the new rule in status")
    assert {w["name"]: w["pid"] for w in stack.status() or []} == pids  # nothing restarted, nothing removed
    stack.config.write_text(stack.config.read_text().replace("max = 3", "max = 2"))
    assert stack.cli("reload").returncode == 0
    wait_for(lambda: _copies(stack) == 2, timeout=15, message="the count within the new max")
    assert {w["name"]: w["pid"] for w in stack.status() or []} == {k: v for k, v in pids.items() if k != "w:3"}
