"""Single instance per name: the flock-based InstanceLock, with real processes.

Fault injection: concurrent starts, SIGKILLed holders, orphaned fork
children, children that exec. The helper scripts below are also used by
test_cleanup.py and test_ps.py.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from procguard.errors import AlreadyRunningError, UsageError
from procguard.instances.identity import boot_id
from procguard.instances.lock import InstanceLock, list_instances, lock_path, read_instance

from .helpers import PYTHON, python_env, wait_for, wait_for_file

#: A process that takes the lock of NAME (with a marker), optionally serves
#: /health, starts marked children and a setsid double-forked escapee, then
#: writes what it started to READY as JSON and sleeps until signalled.
HOLDER = r"""
import http.server, json, os, sys, threading, time
from procguard.instances.lock import InstanceLock
from procguard.instances.marker import new_marker
from procguard.instances.statedir import namespace_of
from procguard.instances.spawn import spawn_process

cfg = json.loads(sys.argv[1])
ready = cfg["ready"]
marker = new_marker(cfg["name"], namespace_of())
lock = InstanceLock.acquire(cfg["name"], marker=marker, info=cfg.get("info"))
out = {"holder": os.getpid(), "marker": marker, "children": [], "escapee": None}
if "health" in cfg:
    code = cfg["health"]
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok" if code == 200 else "unhealthy",
                               "reason": "healthy" if code == 200 else "stuck"}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lock.update(health_port=server.server_address[1])
for _ in range(cfg.get("children", 0)):
    p = spawn_process([sys.executable, "-c", "import time; time.sleep(600)"], marker=marker)
    out["children"].append(p.pid)
if cfg.get("escapee"):
    esc_file = ready + ".escapee"
    code = ("import os, time\n"
            "if os.fork(): os._exit(0)\n"
            "os.setsid()\n"
            "if os.fork(): os._exit(0)\n"
            f"open({esc_file!r} + '.tmp', 'w').write(str(os.getpid()))\n"
            f"os.rename({esc_file!r} + '.tmp', {esc_file!r})\n"
            "time.sleep(600)\n")
    p = spawn_process([sys.executable, "-c", code], marker=marker, parent_death_signal=None)
    p.wait()
    while not os.path.exists(esc_file):
        time.sleep(0.01)
    out["escapee"] = int(open(esc_file).read())
if cfg.get("ignore_term"):
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(ready + ".tmp", "w") as f:
    json.dump(out, f)
os.rename(ready + ".tmp", ready)
while True:
    time.sleep(60)
"""

#: A process that records any catchable signal it receives in its log (and
#: exits), otherwise sleeps: proof that nothing was sent to it.
CANARY = r"""
import os, signal, sys, time
log, ready = sys.argv[1], sys.argv[2]
def note(signum, frame):
    with open(log, "a") as f:
        f.write(f"{signum}\n")
    os._exit(3)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
    signal.signal(s, note)
open(ready, "w").write(str(os.getpid()))
while True:
    time.sleep(60)
"""


def start_holder(spawn, tmp_path: Path, name: str, **cfg) -> tuple[object, dict]:
    ready = tmp_path / f"{name}-{len(list(tmp_path.glob('*')))}.ready"
    cfg.update(name=name, ready=str(ready))
    proc = spawn([PYTHON, "-c", HOLDER, json.dumps(cfg)])
    info = json.loads(wait_for_file(ready, proc=proc))
    return proc, info


def start_canary(spawn, tmp_path: Path, tag: str, **kwargs) -> tuple[object, Path]:
    log = tmp_path / f"canary-{tag}.signals"
    ready = tmp_path / f"canary-{tag}.ready"
    proc = spawn([PYTHON, "-c", CANARY, str(log), str(ready)], **kwargs)
    wait_for_file(ready, proc=proc)
    return proc, log


def assert_untouched(proc, log: Path) -> None:
    assert not log.exists() or log.read_text() == "", f"canary got signals: {log.read_text()}"
    assert proc.poll() is None, "canary died"


def test_acquire_records_holder_and_refuses_second_start(state_dir: Path) -> None:
    with InstanceLock.acquire("collector", info={"restarts": 2}, health_port=9091, marker="collector:abc") as lock:
        assert lock.held
        path = lock_path("collector")
        assert path.parent == state_dir / "instances"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
        data = json.loads(path.read_text())
        me = psutil.Process()
        assert data["pid"] == os.getpid()
        assert data["create_time"] == pytest.approx(me.create_time())
        assert data["boot_id"] == boot_id()
        assert data["cmdline"]
        assert data["health_port"] == 9091
        assert data["marker"] == "collector:abc"
        assert data["info"] == {"restarts": 2}

        with pytest.raises(AlreadyRunningError) as excinfo:
            InstanceLock.acquire("collector")
        assert excinfo.value.pid == os.getpid()
        assert f"PID {os.getpid()}" in str(excinfo.value)
        assert "--replace" in str(excinfo.value)

        record = read_instance("collector")
        assert record is not None and record.held and record.live
        assert record.pid == os.getpid() and record.health_port == 9091
        lock.update({"restarts": 3})
        assert read_instance("collector").info["restarts"] == 3
    # Released: the file stays (never unlinked), the lock is free again.
    assert path.exists()
    assert not read_instance("collector").held
    InstanceLock.acquire("collector").release()


@pytest.mark.parametrize("bad", ["../x", "", "a/b", "/etc/passwd", ".hidden", "x" * 200, "a\nb", "..", "na me"])
def test_invalid_names_are_usage_errors(state_dir: Path, bad: str) -> None:
    with pytest.raises(UsageError, match="not valid"):
        InstanceLock.acquire(bad)
    # Nothing was created anywhere for the bad name.
    assert not list(state_dir.parent.rglob("*.lock"))


def test_list_instances_reports_held_and_stale(state_dir: Path) -> None:
    assert list_instances() == []
    InstanceLock.acquire("old").release()
    with InstanceLock.acquire("new"):
        records = {r.name: r for r in list_instances()}
        assert set(records) == {"old", "new"}
        assert records["new"].held and records["new"].live
        assert not records["old"].held and not records["old"].live


CONCURRENT_DRIVER = r"""
import json, os, sys
from procguard.errors import AlreadyRunningError
from procguard.instances.lock import InstanceLock

name, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
summary = []
for _ in range(rounds):
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(go_w); os.close(done_w); os.close(res_r)
            os.read(go_r, 1)                      # EOF when the parent says go
            try:
                lock = InstanceLock.acquire(name)
                msg = f"W {os.getpid()}\n"
            except AlreadyRunningError as e:
                msg = f"R {e.pid}\n"
            except BaseException as e:
                msg = f"E {type(e).__name__}\n"
            os.write(res_w, msg.encode())
            os.read(done_r, 1)                    # hold until everyone tried
            os._exit(0)
        pids.append(pid)
    os.close(go_r); os.close(done_r); os.close(res_w)
    os.close(go_w)                                # go: all n start at once
    data = b""
    while data.count(b"\n") < n:
        chunk = os.read(res_r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(done_w)
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(res_r)
    summary.append(data.decode().split())
print(json.dumps(summary))
"""


def test_fifty_concurrent_starts_exactly_one_wins(state_dir: Path, spawn) -> None:
    rounds, n = 20, 50
    proc = spawn([PYTHON, "-c", CONCURRENT_DRIVER, "race", str(n), str(rounds)])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    assert len(summary) == rounds
    for tokens in summary:
        outcomes = list(zip(tokens[::2], tokens[1::2], strict=True))
        assert len(outcomes) == n
        winners = [pid for kind, pid in outcomes if kind == "W"]
        refused = [pid for kind, pid in outcomes if kind == "R"]
        assert len(winners) == 1, outcomes
        assert len(refused) == n - 1, outcomes
        # Every refusal names the process that actually won.
        assert set(refused) == set(winners), outcomes


def test_sigkilled_holder_frees_the_lock_at_once(state_dir: Path, spawn, tmp_path: Path) -> None:
    proc, info = start_holder(spawn, tmp_path, "victim")
    with pytest.raises(AlreadyRunningError):
        InstanceLock.acquire("victim")
    t0 = time.monotonic()
    os.kill(info["holder"], signal.SIGKILL)

    def try_acquire() -> InstanceLock | None:
        try:
            return InstanceLock.acquire("victim")
        except AlreadyRunningError:
            return None

    lock = wait_for(try_acquire, interval=0.001, message="lock freed by the SIGKILLed holder")
    elapsed = time.monotonic() - t0
    lock.release()
    proc.wait(timeout=10)
    sys.stderr.write(f"lock free {elapsed * 1000:.1f} ms after SIGKILL\n")
    # The kernel frees it as the process exits (goal < 100 ms); generous for a noisy machine.
    assert elapsed < 1.0


ORPHANING_HOLDER = r"""
import multiprocessing, os, sys, time
from procguard.instances.lock import InstanceLock

def child(path):
    open(path + ".tmp", "w").write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(600)

if __name__ == "__main__":
    name, child_file, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    lock = InstanceLock.acquire(name)
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=child, args=(child_file,), daemon=True)
    p.start()
    while not os.path.exists(child_file):
        time.sleep(0.01)
    open(ready, "w").write(str(os.getpid()))
    time.sleep(600)
"""


def _fd_targets(pid: int) -> list[str]:
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return fds


def test_orphaned_multiprocessing_child_does_not_hold_the_lock(state_dir: Path, spawn, tmp_path: Path) -> None:
    child_file, ready = tmp_path / "child.pid", tmp_path / "ready"
    proc = spawn([PYTHON, "-c", ORPHANING_HOLDER, "orphaner", str(child_file), str(ready)])
    wait_for_file(ready, proc=proc)
    child = psutil.Process(int(child_file.read_text()))
    try:
        path = str(lock_path("orphaner"))
        assert path in _fd_targets(proc.pid)
        assert path not in _fd_targets(child.pid), "fork child inherited the lock fd"
        os.kill(proc.pid, signal.SIGKILL)  # the daemon child is orphaned, still running
        proc.wait(timeout=10)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        lock = InstanceLock.acquire("orphaner")  # would fail if the orphan held the lock
        lock.release()
    finally:
        child.kill()
        child.wait(timeout=10)


EXEC_HOLDER = r"""
import subprocess, sys, time
from procguard.instances.lock import InstanceLock
lock = InstanceLock.acquire(sys.argv[1])
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], close_fds=False)
open(sys.argv[2], "w").write(str(p.pid))
time.sleep(600)
"""


def test_exec_child_does_not_inherit_the_lock(state_dir: Path, spawn, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = spawn([PYTHON, "-c", EXEC_HOLDER, "execer", str(ready)])
    child = psutil.Process(int(wait_for_file(ready, proc=proc)))
    try:
        assert str(lock_path("execer")) not in _fd_targets(child.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert child.is_running()
        InstanceLock.acquire("execer").release()
    finally:
        child.kill()
        child.wait(timeout=10)


def test_lock_is_released_by_context_manager_even_on_error(state_dir: Path) -> None:
    with pytest.raises(RuntimeError), InstanceLock.acquire("boom"):
        raise RuntimeError("worker failed")
    assert not read_instance("boom").held


def test_the_lock_primitive_runs_no_cleanup_policy(state_dir: Path) -> None:
    """Taking and releasing a lock loads neither cleanup nor psutil; --replace lives one level up."""
    code = (
        "import inspect, sys\n"
        "from procguard.instances.lock import InstanceLock\n"
        "InstanceLock.acquire('primitive').release()\n"
        "assert 'replace' not in inspect.signature(InstanceLock.acquire).parameters\n"
        "print(sorted(m for m in sys.modules if m.startswith(('procguard.instances.cleanup', 'psutil'))))\n"
    )
    result = subprocess.run([PYTHON, "-c", code], env=python_env(), capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
