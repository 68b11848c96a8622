"""The status page in a real headless Chromium, plus /api/workers and /metrics over HTTP."""

from __future__ import annotations

import json
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
        "api": {"command": worker_cmd("mpworker.py", tmp_path / "mp", 2)},
        "collector": {"command": worker_cmd("ticker.py", tmp_path / "ticks")},
        "bot": {"command": worker_cmd("crash.py", tmp_path / "crash", 1), "backoff_initial": "0.05s",
                "start_limit": 3},
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
    assert [w["name"] for w in data] == ["api", "collector", "bot"]
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
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 420})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("tr[data-worker='bot'] .state.fatal", timeout=15_000)
            rows = page.locator("#workers tr")
            assert rows.count() == 3
            api = page.locator("tr[data-worker='api']")
            assert api.locator(".state").inner_text() == "running"
            cells = api.locator("td").all_inner_texts()
            assert cells[2] == str(stack.worker("api")["pid"])  # type: ignore[index]
            assert cells[5].endswith("MB")
            last_exit = page.locator("tr[data-worker='bot'] td").nth(7).inner_text()
            # the reason token, its plain words, the figures and what the status number means
            assert "crashed" in last_exit and "exited with a failure status" in last_exit, last_exit
            assert "exited with status 1" in last_exit and "exit 1: failed" in last_exit, last_exit
            assert page.locator("#summary").inner_text() == "2 of 3 workers running"
            # the chart has been drawn: some pixels in the memory colour
            drawn = page.evaluate("""() => {
                const c = document.querySelector("tr[data-worker='api'] canvas");
                const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                let blue = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i+2] - d[i] > 60) blue++;
                return blue;
            }""")
            page.screenshot(path=str(ARTIFACTS / "status_page.png"), full_page=True)
            assert drawn > 20
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


def _samples(port: int) -> list[Any]:
    code, _, body = get(f"http://127.0.0.1:{port}/api/workers")
    return json.loads(body)[0]["samples"] if code == 200 else []
