"""The supervisor's parts on their own: logs, history, control socket, tree sampling, watchdog."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from procguard.instances.childproc import tree_pids
from procguard.instances.marker import MARKER_ENV, new_marker, new_run, run_pattern
from procguard.supervisor import control
from procguard.supervisor.history import Event, History, read_events
from procguard.supervisor.logs import LineSplitter, RotatingFile, WorkerOutput, follow, tail
from procguard.supervisor.procscan import TreeSampler
from procguard.supervisor.watchdog import KILL_AFTER_S, watchdog_argv

from .helpers import PYTHON, python_env, wait_for, wait_for_file
from .helpers import TEST_NAMESPACE as NS
from .supervisor_workers.stackkit import alive, worker_cmd

# -- logs ------------------------------------------------------------------------


def test_rotating_file_keeps_the_configured_backups(tmp_path: Path) -> None:
    log = RotatingFile(tmp_path / "api.log", max_bytes=100, backups=2)
    for i in range(30):
        log.write(b"line %02d 0123456789\n" % i)
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["api.log", "api.log.1", "api.log.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert stat.S_IMODE((tmp_path / "api.log").stat().st_mode) == 0o600
    assert (tmp_path / "api.log").read_bytes().splitlines()[-1] == b"line 29 0123456789"


def test_line_splitter_keeps_partial_lines_and_cuts_huge_ones() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"a\nb") == [b"a"]
    assert splitter.feed(b"c\n") == [b"bc"]
    assert splitter.feed(b"x" * 70_000) == [b"x" * 70_000]
    assert splitter.feed(b"tail") == []
    assert splitter.flush() == [b"tail"]


def test_worker_output_prefixes_terminal_and_stamps_file(tmp_path: Path) -> None:
    terminal_path = tmp_path / "terminal"
    with open(terminal_path, "wb") as terminal:
        out = WorkerOutput("api", RotatingFile(tmp_path / "api.log", max_bytes=0, backups=0),
                           terminal=terminal, width=9, clock=lambda: 0.0)
        out.feed(b"hello\nwor")
        out.feed(b"ld\n")
        out.close()
    shown = terminal_path.read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in shown] == ["api       | hello", "api       | world"]
    logged = (tmp_path / "api.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in logged] == ["hello", "world"]


def test_tail_and_follow(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    path.write_bytes(b"".join(b"%d\n" % i for i in range(5000)))
    assert tail(path, 3) == [b"4997", b"4998", b"4999"]
    assert tail(path, 0) == []
    got: list[bytes] = []
    done = threading.Event()

    def reader() -> None:
        for chunk in follow(path, poll_s=0.01, keep_going=lambda: not done.is_set()):
            got.append(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        wait_for(thread.is_alive, message="follower running")
        # rotation: the file is replaced, the follower reopens it
        wait_for(lambda: _append_until_seen(path, got, b"first\n"), message="appended data followed")
        os.replace(path, tmp_path / "w.log.1")
        wait_for(lambda: _append_until_seen(path, got, b"after rotation\n"), message="data after rotation")
    finally:
        done.set()
        thread.join(timeout=10)


def _append_until_seen(path: Path, got: list[bytes], data: bytes) -> bool:
    if data in b"".join(got):
        return True
    with open(path, "ab") as handle:
        handle.write(data)
    return False


# -- history ----------------------------------------------------------------------


def test_history_newest_first_per_project(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    history = History(db)
    history.record(Event("p", "api", 1.0, "start", pid=10))
    history.record(Event("p", "api", 2.0, "stop", pid=10, reason="exit 1", exit_status=1,
                         runtime_seconds=1.0, peak_memory_bytes=3 * 1024 * 1024))
    history.record(Event("other", "api", 3.0, "start", pid=11))
    history.close()
    events = read_events(db, project="p")
    assert [(e.event, e.time) for e in events] == [("stop", 2.0), ("start", 1.0)]
    assert events[0].to_json()["peak_memory_mb"] == 3.0
    assert len(read_events(db, project="p", limit=1)) == 1
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert read_events(tmp_path / "missing.sqlite") == []


# -- control socket ----------------------------------------------------------------


class _Loop:
    """A tiny selectors loop in a thread, like the supervisor's, for the control server."""

    def __init__(self, path: Path) -> None:
        self.selector = selectors.DefaultSelector()
        self.held: list[control.Peer] = []
        self.stop = threading.Event()
        self.server = control.ControlServer(path, self.handle, self.selector)
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def handle(self, request: dict[str, Any], peer: control.Peer) -> None:
        if request.get("cmd") == "hold":
            peer.send({"ok": True}, close=False)
            self.held.append(peer)
        else:
            peer.send({"ok": True, "echo": request})

    def run(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.05):
                key.data()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for peer in self.held:
            peer.close()
        self.server.close()


def test_control_roundtrip_modes_and_long_paths(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = control.socket_path(deep, "proj")
    assert len(str(path)) > 108  # needs the /proc/self/fd detour
    loop = _Loop(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        reply = control.request(path, {"cmd": "status", "x": 1}, project="proj")
        assert reply == {"ok": True, "echo": {"cmd": "status", "x": 1}}
        sock = control.connect(path, project="proj")
        sock.sendall(b"not json\n")
        assert json.loads(sock.recv(4096))["exit_status"] == 2
        sock.close()
        held = control.connect(path, project="proj")
        held.sendall(b'{"cmd": "hold"}\n')
        assert not control.wait_closed(held, 0.2)  # acknowledged, kept open
    finally:
        loop.close()
    assert control.wait_closed(held, 5)
    held.close()
    with pytest.raises(control.NotRunningError, match="no supervisor is running for stack 'proj'") as info:
        control.request(path, {"cmd": "status"}, project="proj")
    assert info.value.exit_status == 3


# -- tree sampling -------------------------------------------------------------------


def test_tree_sampler_counts_children(tmp_path: Path, spawn: Any) -> None:
    pidfile = tmp_path / "pids"
    proc = spawn(worker_cmd("mpworker.py", pidfile, 2))
    pids = [int(p) for p in wait_for_file(pidfile, proc=proc).split()]
    assert set(pids) <= set(tree_pids(proc.pid))
    sample = TreeSampler(proc.pid).sample()
    assert sample is not None
    assert sample.num_processes >= 3
    assert sample.memory_bytes > 3 * 1024 * 1024
    assert TreeSampler(2**22 + 12345).sample() is None


# A root (5 MB) with two subtrees: a helper (hog.py, 1 MB) whose own child holds
# 40 MB, and a plain 30 MB child. Prints "ready HELPER" when all have allocated.
TREE = """
import os, subprocess, sys, time
helper = subprocess.Popen([sys.executable, sys.argv[1], "1", "--children", "1", "--child-mb", "40"],
                          stdout=subprocess.PIPE)
assert helper.stdout.readline() == b"ready\\n"
other = subprocess.Popen([sys.executable, sys.argv[1], "30"], stdout=subprocess.PIPE)
assert other.stdout.readline() == b"ready\\n"
block = b"x" * (5 * 1024 * 1024)
print("ready", helper.pid, flush=True)
time.sleep(120)
"""


def test_tree_sampler_leaves_excluded_subtrees_out(spawn: Any) -> None:
    hog = Path(__file__).parent / "manager_workers" / "hog.py"
    proc = spawn([PYTHON, "-c", TREE, str(hog)])
    assert proc.stdout is not None
    word, helper = proc.stdout.readline().split()
    assert word == b"ready"
    sampler = TreeSampler(proc.pid)
    whole = sampler.sample()
    sampler.set_excluded({int(helper), proc.pid})  # the root itself is always counted
    without = sampler.sample()
    sampler.set_excluded(set())
    again = sampler.sample()
    assert whole is not None and without is not None and again is not None
    assert (whole.num_processes, without.num_processes, again.num_processes) == (4, 2, 4)
    mb = 1024 * 1024
    assert whole.memory_bytes - without.memory_bytes >= 40 * mb  # the helper's child's 40 MB went too
    assert without.memory_bytes >= 35 * mb  # the root's 5 MB and the other child's 30 MB stay
    assert abs(again.memory_bytes - whole.memory_bytes) < 8 * mb


# A root that starts and stops 20 MB children on request (one line on stdin each), from its main
# thread or from a second thread that stays alive ("thread"): such a child is in that thread's
# children list, not the main thread's.
ROOT = """
import subprocess, sys, threading, time
kids = []
def start():
    kid = subprocess.Popen([sys.executable, "-c", "import time; b = b'x' * (20 << 20); print('ok', flush=True); time.sleep(120)"],
                           stdout=subprocess.PIPE)
    kid.stdout.readline()
    kids.append(kid)
for line in sys.stdin:
    word = line.strip()
    if word == "start":
        start()
    elif word == "thread":
        threading.Thread(target=lambda: (start(), time.sleep(120)), daemon=True).start()
        while len(kids) < 1:
            time.sleep(0.01)
    elif word == "stop":
        kid = kids.pop()
        kid.kill()
        kid.wait()
    print(" ".join(str(k.pid) for k in kids), flush=True)
"""


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _ask(proc: subprocess.Popen[bytes], word: str) -> list[int]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(word.encode() + b"\n")
    proc.stdin.flush()
    return [int(pid) for pid in proc.stdout.readline().split()]


def test_tree_sampler_follows_children_that_come_and_go_and_gives_its_files_back(spawn: Any) -> None:
    proc = spawn([PYTHON, "-c", ROOT], stdin=subprocess.PIPE)
    baseline = _open_fds()
    sampler = TreeSampler(proc.pid)
    alone = sampler.sample()
    assert alone is not None and alone.num_processes == 1
    assert _open_fds() == baseline + 2  # the root's stat and children, kept open between samples
    _ask(proc, "start")
    _ask(proc, "start")
    both = sampler.sample()
    assert both is not None and both.num_processes == 3
    assert both.memory_bytes - alone.memory_bytes >= 40 * 1024 * 1024
    assert _open_fds() == baseline + 6
    again = sampler.sample()  # read again through the kept files: the same tree
    assert again is not None and again.num_processes == 3
    assert _ask(proc, "stop") != []
    one = sampler.sample()
    assert one is not None and one.num_processes == 2
    assert _open_fds() == baseline + 4  # the stopped child's files are closed
    sampler.close()
    assert _open_fds() == baseline
    assert _ask(proc, "stop") == []  # no orphan of ours outlives the test
    proc.kill()
    proc.wait()
    assert sampler.sample() is None  # reaped: its files no longer read
    assert _open_fds() == baseline


def test_tree_sampler_counts_a_child_started_by_another_thread(spawn: Any) -> None:
    proc = spawn([PYTHON, "-c", ROOT], stdin=subprocess.PIPE)
    sampler = TreeSampler(proc.pid)
    alone = sampler.sample()
    assert alone is not None and alone.num_processes == 1
    _ask(proc, "thread")
    both = sampler.sample()
    assert both is not None and both.num_processes == 2, "the thread's child was missed"
    assert both.memory_bytes - alone.memory_bytes >= 20 * 1024 * 1024
    sampler.close()


# -- watchdog ------------------------------------------------------------------------


def test_watchdog_kills_listed_groups_on_eof_and_spares_removed_ones(tmp_path: Path, spawn: Any) -> None:
    kept_file, spared_file = tmp_path / "kept", tmp_path / "spared"
    kept = spawn(worker_cmd("mpworker.py", kept_file, 2), start_new_session=True)
    spared = spawn(worker_cmd("slowstop.py", spared_file, -1), start_new_session=True)  # ignores SIGTERM
    victims = [int(p) for p in wait_for_file(kept_file, proc=kept).split()]
    wait_for_file(spared_file, proc=spared)
    watchdog = spawn(watchdog_argv(), stdin=subprocess.PIPE, start_new_session=True)
    assert watchdog.stdin is not None
    watchdog.stdin.write(b"+%d\n+%d\n-%d\n+1\n+0\n+-5\ngarbage\n+%d\n" % (kept.pid, spared.pid, spared.pid, kept.pid))
    watchdog.stdin.close()  # as if the supervisor died
    wait_for(lambda: not any(alive(pid) for pid in victims), timeout=KILL_AFTER_S + 10,
             message="the listed group to be gone")
    assert watchdog.wait(timeout=10) == 0
    assert alive(spared.pid)
    spared.send_signal(signal.SIGKILL)


def test_watchdog_kills_what_ignores_sigterm_and_exits_quietly_when_empty(tmp_path: Path, spawn: Any) -> None:
    stubborn_file = tmp_path / "stubborn"
    stubborn = spawn(worker_cmd("slowstop.py", stubborn_file, -1), start_new_session=True)
    wait_for_file(stubborn_file, proc=stubborn)
    watchdog = spawn(watchdog_argv(), stdin=subprocess.PIPE, start_new_session=True)
    watchdog.communicate(b"+%d\n" % stubborn.pid, timeout=KILL_AFTER_S + 10)
    assert watchdog.returncode == 0
    wait_for(lambda: not alive(stubborn.pid), message="SIGKILL after the TERM wait")
    empty = spawn(watchdog_argv(), stdin=subprocess.PIPE)
    empty.communicate(b"", timeout=10)
    assert empty.returncode == 0


def test_watchdog_stops_what_carries_a_marker_of_its_run_whatever_group_it_is_in(spawn: Any) -> None:
    run = new_run()
    other_run = next(r for r in iter(new_run, None) if r != run)

    def marked(name: str, run_id: str) -> subprocess.Popen[bytes]:
        env = python_env(**{MARKER_ENV: new_marker(name, NS, run=run_id)})
        return spawn(["sleep", "600"], env=env, start_new_session=True)  # in no group the watchdog lists

    escaped = marked("p.api", run)
    next_supervisors = marked("p.api", other_run)  # the same stack started again: another run
    other_stack = marked("q.api", run)
    watchdog = spawn(watchdog_argv(pattern=run_pattern("p", NS, run)), stdin=subprocess.PIPE,
                     start_new_session=True)
    watchdog.communicate(b"", timeout=2 * KILL_AFTER_S + 10)  # EOF with no group listed
    assert watchdog.returncode == 0
    wait_for(lambda: not alive(escaped.pid), message="the escaped process of this run to be stopped")
    assert alive(next_supervisors.pid) and alive(other_stack.pid)


def test_unfinished_starts_are_closed_once_with_what_is_known(tmp_path: Path) -> None:
    from procguard.supervisor.history import SUPERVISOR_DIED, close_unfinished_runs, unfinished_starts

    db = tmp_path / "history.sqlite"
    assert unfinished_starts(db, "p") == []
    history = History(db)
    history.record(Event("p", "api", 1.0, "start", pid=10))
    history.record(Event("p", "api", 2.0, "stop", pid=10, reason="exit 1", exit_status=1))
    history.record(Event("p", "api", 3.0, "start", pid=11))  # open: its supervisor died
    history.record(Event("p", "db", 4.0, "start", pid=12))  # open, and still running at the next 'up'
    history.record(Event("p", "bot", 5.0, "start", pid=13))
    history.record(Event("p", "bot", 6.0, "stop", pid=13, reason="requested", exit_status=0))
    history.record(Event("other", "api", 7.0, "start", pid=14))  # another stack's: not ours to close
    history.close()
    assert [(e.worker, e.pid) for e in unfinished_starts(db, "p")] == [("api", 11), ("db", 12)]
    written = close_unfinished_runs(db, "p", now=10.0, survivors={12, 99})
    assert [(e.worker, e.event, e.pid, e.reason, e.exit_status, e.runtime_seconds) for e in written] == [
        ("api", "stop", 11, SUPERVISOR_DIED, None, None),
        ("db", "stop", 12, SUPERVISOR_DIED, None, 6.0),
    ]
    assert [(e.worker, e.event, e.time) for e in read_events(db, project="p", limit=2)] == [
        ("db", "stop", 10.0), ("api", "stop", 10.0)]
    assert unfinished_starts(db, "p") == []
    assert close_unfinished_runs(db, "p", now=11.0) == []
    assert [e.pid for e in unfinished_starts(db, "other")] == [14]


def test_shared_rotating_file_counts_other_writers_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.log"
    opened: list[int] = []
    log = RotatingFile(path, max_bytes=1000, backups=1, on_open=opened.append, shared=True)
    other = os.open(path, os.O_WRONLY | os.O_APPEND)  # like stderr pointing at the same file
    try:
        os.write(other, b"x" * 980 + b"\n")
        log.write(b"a line that no longer fits\n")  # 981 + 27 > 1000: rotate first
        assert (tmp_path / "supervisor.log.1").read_bytes() == b"x" * 980 + b"\n"
        assert path.read_bytes() == b"a line that no longer fits\n"
        assert len(opened) == 2  # opened, then reopened after the rotation
    finally:
        os.close(other)
        log.close()


# -- health probes -----------------------------------------------------------------------


def _http_once(status: bytes) -> tuple[int, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer)
    thread.start()
    return port, thread


def test_probe_health_reads_the_status_line() -> None:
    from procguard.supervisor.probe import probe_health

    for status, expected in ((b"200 OK", (True, "HTTP 200")), (b"503 Unavailable", (False, "HTTP 503"))):
        port, thread = _http_once(status)
        assert probe_health("127.0.0.1", port, 5.0) == expected
        thread.join(timeout=10)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    ok, detail = probe_health("127.0.0.1", port, 2.0)
    assert not ok and detail


def test_prober_probes_targets_past_their_delay_and_wakes_the_loop() -> None:
    from procguard.supervisor.probe import Prober, ProbeResult, ProbeTarget
    from procguard.supervisor.settings import Settings

    woken = threading.Event()
    asked: list[int] = []

    def probe(host: str, port: int, timeout: float) -> tuple[bool, str]:
        asked.append(port)
        return port == 1, f"port {port}"

    settings = Settings(probe_delay_s=5.0, probe_period_s=0.01, probe_timeout_s=1.0)
    prober = Prober(settings, wake=woken.set, clock=lambda: 100.0, probe=probe)
    prober.set_targets({"up": ProbeTarget("127.0.0.1", 1, 3, 90.0), "young": ProbeTarget("127.0.0.1", 2, 1, 99.0)})
    prober.start()
    try:
        wait_for(woken.is_set, message="a probe round")
        results: list[ProbeResult] = []
        wait_for(lambda: results.extend(prober.results()) or len(results) >= 2, message="two results")
    finally:
        prober.stop()
        prober.join()
    assert set(asked) == {1}  # 'young' started 1 s ago: within its probe delay
    assert {(r.name, r.generation, r.ok, r.detail) for r in results} == {("up", 3, True, "port 1")}


def test_prober_reads_a_targets_own_check_instead_of_asking_http() -> None:
    """A function worker's port is the supervisor's own: its verdict is read directly, never over HTTP."""
    from procguard.supervisor.probe import Prober, ProbeResult, ProbeTarget
    from procguard.supervisor.settings import Settings

    asked: list[int] = []

    def probe(host: str, port: int, timeout: float) -> tuple[bool, str]:
        asked.append(port)
        return True, "HTTP 200"

    prober = Prober(Settings(probe_delay_s=0.0, probe_period_s=0.01), wake=lambda: None, clock=lambda: 100.0,
                    probe=probe)
    verdict = (False, "HTTP 503: no update from worker for 6.0 s")
    prober.set_targets({"fn": ProbeTarget("127.0.0.1", 7, 2, 90.0, check=lambda: verdict)})
    prober.start()
    try:
        results: list[ProbeResult] = []
        wait_for(lambda: results.extend(prober.results()) or results, message="a result")
    finally:
        prober.stop()
        prober.join()
    assert asked == []
    assert (results[0].name, results[0].generation, results[0].ok, results[0].detail) == ("fn", 2, *verdict)


def test_the_health_mapping_travels_over_the_link_and_is_taken_once() -> None:
    from procguard.health.shared import create_buffer
    from procguard.limits import WorkerLimits
    from procguard.parent_link import HealthMapping, ParentLink
    from procguard.supervisor.worker_link import WorkerLink

    link = WorkerLink(WorkerLimits())
    fd, _buffer = create_buffer()
    child = socket.socket(fileno=os.dup(link.child_fd))
    try:
        os.set_inheritable(fd, True)  # as pass_fds leaves it in the worker
        link.send_health_mapping(HealthMapping(fd, 4096, 8123))
        worker_end = ParentLink(child)
        assert worker_end.health_mapping(8124) is None  # a manager serving another port does not take it
        mapping = worker_end.health_mapping(8123)
        assert mapping is not None and (mapping.fd, mapping.size, mapping.port) == (fd, 4096, 8123)
        assert not os.get_inheritable(fd)  # the worker's own children never hold it
        assert worker_end.health_mapping(8123) is None  # taken once
    finally:
        child.close()
        link.close()
        os.close(fd)
    for junk in (None, [], {"fd": 3}, {"fd": -1, "size": 1, "port": 1}, {"fd": True, "size": 1, "port": 1},
                 {"fd": "3", "size": 1, "port": 1}):
        assert HealthMapping.from_json(junk) is None, junk


def test_supervisors_starting_together_share_one_history_file(tmp_path: Path, spawn: Any) -> None:
    """Two stacks in one state directory open the same history file at the same moment.

    Switching a new SQLite file to WAL can answer "database is locked" at once
    to the second opener; every one of them must still start and record.
    """
    go = tmp_path / "go"
    db = tmp_path / "history.sqlite3"
    code = (
        "import sys, os, time\n"
        "from pathlib import Path\n"
        "from procguard.supervisor.history import Event, History\n"
        "go = Path(sys.argv[1])\n"
        "while not go.exists(): time.sleep(0.001)\n"
        "h = History(Path(sys.argv[2]))\n"
        "h.record(Event(project=sys.argv[3], worker='w', time=time.time(), event='start', pid=os.getpid()))\n"
        "h.close()\n"
    )
    procs = [spawn([PYTHON, "-c", code, str(go), str(db), f"p{i}"]) for i in range(8)]
    go.write_text("go")
    for proc in procs:
        wait_for(lambda p=proc: p.poll() is not None, message="a history opener to finish")
        _out, err = proc.communicate()
        assert proc.returncode == 0, err.decode()
    assert sorted(e.project for e in read_events(db, limit=0)) == [f"p{i}" for i in range(8)]


# -- the ready pipe of up --detach ------------------------------------------------------


def test_the_daemons_answer_is_read_word_by_word() -> None:
    from procguard.supervisor.startup import DaemonAnswer, parse_answer

    assert parse_answer("ready 4242") == DaemonAnswer("ready", supervisor_pid="4242")
    assert parse_answer("already 17") == DaemonAnswer("already", supervisor_pid="17")
    assert parse_answer("error 2 bad config: x") == DaemonAnswer("error", exit_status=2, detail="bad config: x")
    assert parse_answer("error x y").exit_status == 1
    died = parse_answer("")
    assert (died.word, died.exit_status) == ("", 1) and "exited before starting" in died.detail
