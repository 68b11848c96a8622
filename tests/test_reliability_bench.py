"""The reliability bench counts right: each row's check tells a sound system from a broken one.

``python -m bench.reliability`` takes minutes, so it is not run here. Each
row's building block runs once against the real procguard and once against
a deliberately broken stand-in (a runner that is not procguard, starts with
no lock, a cleanup that trusts the record, a server that crashes and prints
tracebacks, a generated file with an added line, a SIGKILL instead of a
SIGTERM): the first must pass and the second must be counted as failed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from bench.reliability import deploy_values, hostile_http, impostors, orphans, sigterm, starts, statedir
from bench.reliability.__main__ import RowResult, render, run_row
from bench.reliability.harness import Tally, alive, processes

from procguard.supervisor.settings import TUNING_ENV

from .helpers import PYTHON, REPO_ROOT, python_env
from .hostile_deploy import KUBERNETES_VALIDATE, SUPERVISORD, SYSTEMD, SYSTEMD_ANALYZE

pytestmark = pytest.mark.slow


def test_tally_counts_problems_and_exceptions_as_failures() -> None:
    tally = Tally(keep=2)
    assert tally.attempt(lambda: []) == []

    def broken() -> list[str]:
        raise TimeoutError("the worker never started")

    assert tally.attempt(broken) == ["TimeoutError: the worker never started"]
    assert tally.attempt(lambda: ["one", "two"]) == ["one", "two"]
    tally.record([])
    tally.record(["one"])
    assert (tally.tried, tally.failed) == (5, 3)
    # the first two distinct problems are kept, each with how often it came; "two" was one too many
    assert tally.problems == ["TimeoutError: the worker never started", "one (x2)"]


def test_a_sigkilled_runner_that_is_not_procguard_leaves_survivors_and_fails(tmp_path: Path) -> None:
    def bare(index: int, out: Path, env: dict[str, str]) -> list[str]:
        return [PYTHON, orphans.FAMILY, str(out), "--spawn"]  # the worker alone: nobody sweeps its family

    kills = orphans.Kills()
    problems = orphans.runner_round(0, tmp_path, kills, launch=bare, deadline=1.0)
    assert problems and problems[0].startswith("alive 1 s after the kill: ")
    # two fork children, the spawn child, the escaped grandchild (and the spawn method's resource tracker)
    assert kills.survivors["command mode: multiprocessing child"] == 2
    assert kills.survivors["command mode: spawn-method child"] == 1
    assert kills.survivors["command mode: double-forked grandchild"] == 1
    assert kills.gone_after == []
    family = [pid for pid, _what in json.loads((tmp_path / "family-0.json").read_text())]
    assert not [p for p in processes(family) if alive(p)]  # the round stopped them (by PID)

    fine = orphans.Kills()
    assert orphans.runner_round(2, tmp_path, fine) == []  # procguard run (command mode): none survives
    # function mode: the children the worker only forks carry the marker too (the runner re-executed with it)
    assert orphans.runner_round(3, tmp_path, fine) == []
    assert not fine.survivors and fine.watched >= 10 and len(fine.gone_after) == 2


def test_a_sigkilled_supervisor_leaves_no_survivors_unless_its_watchdog_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fine = orphans.Kills()
    # three workers' families, the setsid grandchildren included (found by the run id in their marker)
    assert orphans.supervisor_round(0, tmp_path, fine) == []
    assert not fine.survivors and fine.watched >= 15 and len(fine.gone_after) == 1

    monkeypatch.setenv(TUNING_ENV, "watchdog=0")  # the broken stand-in: nobody sweeps after the supervisor
    broken = orphans.Kills()
    problems = orphans.supervisor_round(1, tmp_path, broken, deadline=1.0)
    assert problems and problems[0].startswith("alive 1 s after the kill: ")
    assert broken.survivors["plain worker: double-forked grandchild"] == 1


def test_starts_without_a_lock_are_counted_more_than_one_instance(tmp_path: Path) -> None:
    problems = starts.start_round(3, tmp_path / "state", launch=lambda state: ["sleep", "60"], settle_s=1.0)
    assert "3 of 3 starts still running" in problems[0]
    assert "0 marked 'single' processes" in problems[1]
    assert starts.start_round(3, tmp_path / "state") == []


def test_a_cleanup_that_trusts_the_record_is_counted_signalling_impostors(tmp_path: Path) -> None:
    def trusting(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """A cleanup as a pidfile would do it: signal whatever PID the record names."""
        if argv[0] == "cleanup" and argv[1] != "all":
            path = Path(env["PROCGUARD_STATE_DIR"]) / "instances" / f"{argv[1]}.lock"
            if path.is_file() and path.read_text():
                os.kill(json.loads(path.read_text())["pid"], signal.SIGTERM)
        return subprocess.CompletedProcess(argv, 0, "", "")

    scene = impostors.build_scene(0, tmp_path, reuse=False, per_kind=1)
    try:
        tally = Tally()
        touched = impostors.check_commands(scene, tally, run=trusting)
    finally:
        impostors.teardown(scene)
    assert len(touched) == 2  # recycled-held and stale-exact name a live impostor's PID
    signalled = [p for p in tally.problems if "got signal(s) 15" in p]
    assert len(signalled) == 2
    # and the held name's run --replace did not refuse (in a check of its own, or in the one that saw a signal land)
    assert any(p.startswith("procguard run --name exited 0") for p in tally.problems)
    assert tally.failed in (2, 3)

    scene = impostors.build_scene(1, tmp_path, reuse=impostors.reuse_available(), per_kind=1)
    try:
        tally = Tally()
        assert impostors.check_commands(scene, tally) == set()
    finally:
        impostors.teardown(scene)
    assert tally.failed == 0 and tally.tried == 3 * len(scene.names) + len(scene.watched), tally.problems


#: Answers a probe; shows a traceback to anything else (200 OK) and exits after 60 such requests.
FRAGILE = r"""
import socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
hostile = 0
while hostile < 60:
    conn, _ = listener.accept()
    conn.settimeout(2)
    head = b""
    try:
        while b"\r\n\r\n" not in head and len(head) < 100000:
            data = conn.recv(65536)
            if not data:
                break
            head += data
    except OSError:
        pass
    if head.startswith(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    else:
        hostile += 1
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nTraceback (most recent call last):\n")
    conn.close()
"""


def test_the_attack_counts_tracebacks_foreign_hosts_and_a_server_that_died(spawn) -> None:
    server = spawn([PYTHON, "-c", FRAGILE], stdout=subprocess.PIPE)
    port = int(server.stdout.readline())
    result = hostile_http.attack(port, "/health", requests=300, idle=5, slow=0, slow_s=0.3, host_guard=True,
                                 alive=lambda: server.poll() is None)
    assert result.requests == 300 and result.tracebacks == 60  # then it was gone
    assert result.foreign_served >= 5  # the foreign Host headers come early in the catalogue
    assert len(result.failed_requests) == 60
    assert any("after the attack" in why for why in result.probes_failed)
    assert "the server's process is gone" in result.probes_failed
    tally = Tally()
    result.count_into(tally)
    assert tally.tried == 300 + len(result.probes) + len(result.probes_failed)
    assert tally.failed == 60 + len(result.probes_failed)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None or SYSTEMD is None or not KUBERNETES_VALIDATE.exists()
                    or not SUPERVISORD.exists(), reason="needs systemd, supervisord and kubernetes-validate")
def test_the_engine_checks_catch_a_line_added_to_a_generated_file(tmp_path: Path, state_dir: Path) -> None:
    (case,) = [c for c in deploy_values.make_cases(tmp_path / "cases", every=1000) if c.key == "v0a"]
    public = Path(tempfile.mkdtemp(prefix="procguard-units-"))  # systemd --test reads them as nobody
    try:
        public.chmod(0o755)
        units = public / "v0a"
        assert deploy_values._deploy(case, "systemd", units) == (True, [])
        units.chmod(0o755)
        assert deploy_values.check_systemd(case, units) == []
        service = units / "v0a-v0a.service"
        service.write_text(service.read_text().replace("[Service]\n", "[Service]\nEnvironment=INJECTED=1\n"))
        shutil.rmtree(public / "v0a-runtime")
        assert any("Environment entries" in p for p in deploy_values.check_systemd(case, units))
    finally:
        shutil.rmtree(public, ignore_errors=True)

    manifests = case.directory / "kubernetes"
    assert deploy_values._deploy(case, "kubernetes", manifests) == (True, [])
    assert deploy_values.check_kubernetes([(case, manifests)]) == {"v0a": []}
    (manifest,) = manifests.iterdir()
    comment, body = manifest.read_text().split("\n", 1)
    document = json.loads(body)
    for entry in document["spec"]["template"]["spec"]["containers"][0]["env"]:
        if entry["name"] == "A":
            entry["value"] = "$(HOME)"  # the kubelet would expand it
    manifest.write_text(comment + "\n" + json.dumps(document, indent=2))
    assert any("env A reads back as" in p for p in deploy_values.check_kubernetes([(case, manifests)])["v0a"])

    conf_dir = case.directory / "supervisor"
    assert deploy_values._deploy(case, "supervisor", conf_dir) == (True, [])
    (conf,) = conf_dir.glob("*.conf")
    conf.write_text(conf.read_text().replace("/out/v0a.json ", "/out/v0a.json extra ", 1))
    (tmp_path / "sv").mkdir()
    problems = deploy_values.check_supervisord([(case, conf_dir)], tmp_path / "sv")["v0a"]
    assert any("argv reads back as" in p for p in problems) and any("runner's command line" in p for p in problems)


def test_a_sigkill_mid_iteration_is_counted_as_lost_records(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    api, url = sigterm.start_api(data)
    try:
        records = sigterm.Records()
        assert sigterm.sigterm_round(0, tmp_path, url, data, records, random.Random(3)) == []
        early = random.Random(3)
        early.uniform = lambda a, b: 0.05  # type: ignore[method-assign]  # 50 ms into a 1 s write
        problems = sigterm.sigterm_round(2, tmp_path, url, data, records, early, stop_signal=signal.SIGKILL,
                                         delay_ms=200)
    finally:
        api.terminate()
        api.wait(timeout=30)
    assert f"exit status {-signal.SIGKILL}, expected 143" in problems[0]
    assert "iterations began" in problems[1] and records.lost >= 1


def test_a_start_refused_by_state_directory_contents_is_counted(tmp_path: Path) -> None:
    every = statedir.kinds()
    started: list[float] = []
    assert statedir.start_try("history all garbage", every["history all garbage"], tmp_path / "a", started) == []
    # a state directory writable by others is refused by design: the counter must see the refusal
    refused = statedir.start_try("loose", lambda state, tmp, scene: state.chmod(0o777), tmp_path / "b", started)
    assert refused and "start refused, exit 2" in refused[0]
    assert len(started) == 1


def test_run_row_stops_and_counts_what_a_row_leaves_running(tmp_path: Path) -> None:
    left: list[int] = []

    def sloppy(scale: object, work: Path) -> RowResult:
        left.append(subprocess.Popen(["sleep", "60"]).pid)
        return RowResult(99, "a row that forgets a process", "1 try", 0, "fine", 0.1)

    result = run_row(99, sloppy, None, tmp_path)  # type: ignore[arg-type]
    assert result.failed == 1 and "left running after the row" in result.problems[0]
    assert not psutil.pid_exists(left[0]) or psutil.Process(left[0]).status() == psutil.STATUS_ZOMBIE
    text = render([result, RowResult(1, "a sound row", "3 tries", 0, "0 lost", 1.0)], quick=True, seconds=60)
    assert "| 99 | a row that forgets a process | 1 try | **1 FAILED** |" in text
    assert "| 1 | a sound row | 3 tries | **0** |" in text and "- row 99: left running" in text


def test_run_all_lists_the_reliability_table() -> None:
    listed = subprocess.run([sys.executable, "-m", "bench.run_all", "--list"], cwd=REPO_ROOT, env=python_env(),
                            capture_output=True, text=True, timeout=60, check=True)
    assert "reliability" in listed.stdout.split()
