"""The status page in a real headless Chromium, plus /api/workers and /metrics over HTTP."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .helpers import REPO_ROOT, free_port, wait_for
from .supervisor_workers.stackkit import Stack, worker_cmd, write_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO_ROOT / "test-artifacts"
FAST = "start_period_s=0.3,sample_interval_s=0.2"


@pytest.fixture
def running(tmp_path: Path, state_dir: Path, spawn: Any) -> tuple[Stack, int]:
    port = free_port()
    config = write_config(tmp_path, {
        "api": {"command": worker_cmd("mpworker.py", tmp_path / "mp", 2), "memory_limit": "100MB"},
        "collector": {"command": worker_cmd("ticker.py", tmp_path / "ticks"), "health_port": free_port()},
        "bot": {"command": worker_cmd("crash.py", tmp_path / "crash", 1), "backoff_initial": "0.05s",
                "start_limit": 3},
        # runs about a second, exits, and is started again: its chart has several runs
        "flaky": {"command": worker_cmd("crash.py", tmp_path / "flaky", 1, 1.0), "backoff_initial": "0.5s",
                  "backoff_max": "0.5s", "start_limit": 1000},
    }, defaults={"grace": "5s"}, status_port=port)
    stack = Stack(config, state_dir, spawn, tuning=FAST)
    stack.up()
    stack.wait_state("api", "running")
    stack.wait_state("collector", "running")
    stack.wait_state("bot", "fatal")
    return stack, port


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def test_api_workers_and_metrics(running: tuple[Stack, int]) -> None:
    _stack, port = running
    base = f"http://127.0.0.1:{port}"

    def workers() -> list[dict[str, Any]] | None:
        code, kind, body = get(base + "/api/workers")
        assert code == 200 and kind == "application/json"
        data = json.loads(body)
        api = next(w for w in data if w["name"] == "api")
        return data if len(api["samples"]) >= 3 and data[2]["state"] == "fatal" else None

    data = wait_for(workers, message="samples in /api/workers")
    assert [w["name"] for w in data] == ["api", "collector", "bot", "flaky"]
    api = data[0]
    assert api["memory_mb"] > 5 and len(api["samples"][0]) == 3
    bot_exit = data[2]["last_exit"]
    assert bot_exit["reason"] == "crashed" and bot_exit["detail"] == "exited with status 1"
    assert bot_exit["explanation"] and bot_exit["status_text"].startswith("1: ")

    code, kind, body = get(base + "/metrics")
    assert code == 200 and kind.startswith("text/plain")
    text = body.decode()
    assert 'worker="api"' in text and 'worker="collector"' in text and 'worker="bot"' in text
    code, kind, _ = get(base + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert code == 200 and kind.startswith("application/openmetrics-text")
    assert get(base + "/nope")[0] == 404
    assert get(base + "/metrics?format=xml")[0] == 400
    page = get(base + "/")
    assert page[0] == 200 and page[1].startswith("text/html")
    assert b"http://" not in page[2] and b"https://" not in page[2]  # no external asset


@pytest.mark.browser
def test_status_page_in_headless_chromium(running: tuple[Stack, int]) -> None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    stack, port = running
    wait_for(lambda: len(_samples(port)) >= 4,
             message="a few samples for the chart")
    wait_for(lambda: len(_worker(port, "flaky").get("run_starts", [])) >= 2,
             timeout=30, message="flaky started twice within its chart's window")
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 520})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("tr[data-worker='bot'] .state.fatal", timeout=15_000)
            rows = page.locator("#workers tr")
            assert rows.count() == 4
            # the header and the tab say which stack this is
            assert page.locator("#project").inner_text().startswith("teststack")
            assert page.title() == "teststack \u00b7 procguard"
            api = page.locator("tr[data-worker='api']")
            assert api.locator(".state").inner_text() == "running"
            cells = api.locator("td").all_inner_texts()
            assert cells[2] == "\u2013"  # no health port, no health
            assert cells[3] == str(stack.worker("api")["pid"])  # type: ignore[index]
            assert cells[6].endswith("MB")
            # a health column: what the worker's health port answers
            page.wait_for_selector("tr[data-worker='collector'] .health.healthy", timeout=15_000)
            last_exit = page.locator("tr[data-worker='bot'] td").nth(8).inner_text()
            # the reason token, its plain words, the figures and what the status number means
            assert "crashed" in last_exit and "exited with a failure status" in last_exit, last_exit
            assert "exited with status 1" in last_exit and "exit 1: failed" in last_exit, last_exit
            assert re.fullmatch(r"[23] of 4 workers running", page.locator("#summary").inner_text())
            # no empty band between the header and the table
            header = page.locator("header").bounding_box()
            table = page.locator("table").bounding_box()
            assert header is not None and table is not None
            assert table["y"] - (header["y"] + header["height"]) <= 20, (header, table)
            # the chart: the memory line (blue) and the memory limit (dashed red) drawn in the plot, below
            # the band the labels sit in; the flaky worker's runs drawn apart
            drawn = page.evaluate("""() => {
                const c = document.querySelector("tr[data-worker='api'] canvas");
                const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                const band = Math.round(LABEL_BAND * (window.devicePixelRatio || 1));
                let blue = 0, red = 0;
                for (let i = 0; i < d.length; i += 4) {
                    if (Math.floor(i / 4 / c.width) <= band) continue;
                    if (d[i+2] - d[i] > 60) blue++;
                    if (d[i] > 150 && d[i+1] < 90 && d[i+2] < 90) red++;
                }
                return {blue, red};
            }""")
            page.wait_for_function(
                "() => Number(document.querySelector(\"tr[data-worker='flaky'] canvas\").dataset.runs) >= 2",
                timeout=15_000,
            )
            page.screenshot(path=str(ARTIFACTS / "status_page.png"), full_page=True)
            assert drawn["blue"] > 20 and drawn["red"] > 20, drawn
            # a run starts at each start the supervisor reports, never a line across the restart
            runs = page.evaluate("""() => segments(
                [[10, 1, 0], [11, 1, 0], [12, 1, 0], [13.5, 1, 0], [14.5, 1, 0], [30, 1, 0], [31, 1, 0]],
                [13.2])""")
            assert [[s[0] for s in run] for run in runs] == [[10, 11, 12], [13.5, 14.5], [30, 31]]
            # it refreshes itself: the 'updated' stamp changes without a reload
            first = page.locator("#updated").inner_text()
            page.wait_for_function(
                "(first) => document.querySelector('#updated').textContent !== first", arg=first, timeout=15_000
            )
            page.screenshot(path=str(ARTIFACTS / "status_page.png"), full_page=True)
            assert errors == []
            assert all(url.startswith(f"http://127.0.0.1:{port}/") for url in requests)
        finally:
            browser.close()


def _worker(port: int, name: str) -> dict[str, Any]:
    code, _, body = get(f"http://127.0.0.1:{port}/api/workers")
    found = [w for w in json.loads(body) if w["name"] == name] if code == 200 else []
    return found[0] if found else {}


def _samples(port: int) -> list[Any]:
    code, _, body = get(f"http://127.0.0.1:{port}/api/workers")
    return json.loads(body)[0]["samples"] if code == 200 else []
