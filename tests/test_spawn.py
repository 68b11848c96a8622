"""Spawning children that cannot become orphans: marker, session, parent-death signal,
subreaper, reaping and pidfd handles -- all on real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from procguard.instances.childproc import ChildHandle
from procguard.instances.marker import MARKER_ENV, new_marker
from procguard.instances.spawn import (
    parent_death_signal_preexec,
    spawn_process,
)

from .helpers import PYTHON, TEST_NAMESPACE, python_env, wait_for, wait_for_file

INTROSPECT = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
sig = ctypes.c_int(0)
libc.prctl(2, ctypes.byref(sig), 0, 0, 0)          # PR_GET_PDEATHSIG
print(json.dumps({"marker": os.environ.get("PROCGUARD_INSTANCE"),
                  "session_leader": os.getsid(0) == os.getpid(),
                  "pdeathsig": sig.value,
                  "stdin_is_devnull": os.path.samestat(os.fstat(0), os.stat(os.devnull)),
                  "fds": sorted(int(x) for x in os.listdir("/proc/self/fd"))}))
"""


def test_child_gets_marker_session_and_parent_death_signal() -> None:
    marker = new_marker("spawntest", TEST_NAMESPACE)
    stray_r, stray_w = os.pipe()
    os.set_inheritable(stray_w, True)  # would leak without close_fds
    try:
        proc = spawn_process([PYTHON, "-c", INTROSPECT], marker=marker, env=python_env(),
                             stdout=subprocess.PIPE)
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(stray_r)
        os.close(stray_w)
    info = json.loads(out)
    assert info["marker"] == marker
    assert info["session_leader"] is True
    assert info["pdeathsig"] == signal.SIGTERM
    assert info["stdin_is_devnull"] is True
    assert stray_w not in info["fds"]


def test_options_can_turn_session_and_pdeathsig_off() -> None:
    proc = spawn_process([PYTHON, "-c", INTROSPECT], marker=new_marker("spawntest", TEST_NAMESPACE), env=python_env(),
                         stdout=subprocess.PIPE, new_session=False, parent_death_signal=None)
    out, _ = proc.communicate(timeout=30)
    info = json.loads(out)
    assert info["session_leader"] is False and info["pdeathsig"] == 0
    assert MARKER_ENV not in os.environ  # the parent's environment is untouched


#: Spawns a child through spawn_process, reports its pid, then waits to be killed.
INTERMEDIATE = r"""
import os, sys, time
from procguard.instances.spawn import spawn_process
child_code = ("import os, signal, sys, time\n"
              "def on_term(s, f):\n"
              "    open(sys.argv[1], 'w').write('SIGTERM'); os._exit(0)\n"
              "signal.signal(signal.SIGTERM, on_term)\n"
              "open(sys.argv[2], 'w').write(str(os.getpid()))\n"
              "time.sleep(600)\n")
p = spawn_process([sys.executable, "-c", child_code, sys.argv[1], sys.argv[2]], marker="spawntest:x")
time.sleep(600)
"""


def test_child_dies_when_parent_is_sigkilled(spawn, tmp_path: Path) -> None:
    got, ready = tmp_path / "got", tmp_path / "child.pid"
    parent = spawn([PYTHON, "-c", INTERMEDIATE, str(got), str(ready)])
    child = psutil.Process(int(wait_for_file(ready, proc=parent)))
    parent.kill()
    parent.wait(timeout=10)
    assert wait_for_file(got) == "SIGTERM"
    wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, message="child exit")


def test_parent_gone_before_prctl_race_is_handled() -> None:
    # Pretend our parent is pid 1: getppid() differs, so the child must signal itself.
    proc = subprocess.Popen(
        [PYTHON, "-c", "import time; time.sleep(600)"],
        preexec_fn=parent_death_signal_preexec(signal.SIGTERM, parent_pid=1),  # noqa: PLW1509
    )
    try:
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


SUBREAPER = r"""
import json, os, subprocess, sys, time
from procguard.instances.childproc import reap_children
from procguard.instances.spawn import become_child_subreaper
assert become_child_subreaper()
escapee_file = sys.argv[1]
code = ("import os, sys, time\n"
        "if os.fork(): os._exit(0)\n"
        "os.setsid()\n"
        "if os.fork(): os._exit(0)\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
        "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "time.sleep(600)\n")
launcher = subprocess.Popen([sys.executable, "-c", code, escapee_file])
launcher.wait()
while not os.path.exists(escapee_file):
    time.sleep(0.01)
escapee = int(open(escapee_file).read())
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    with open(f"/proc/{escapee}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    if ppid == os.getpid():
        break
    time.sleep(0.01)
adopted = ppid == os.getpid()
kept = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])
os.kill(escapee, 9)
reaped = []
while time.monotonic() < deadline and escapee not in [pid for pid, _ in reaped]:
    reaped += reap_children(exclude={kept.pid})
    time.sleep(0.01)
print(json.dumps({"adopted": adopted, "reaped": [pid for pid, _ in reaped], "escapee": escapee,
                  "kept_status": kept.wait(timeout=10)}))
"""


def test_subreaper_adopts_and_reaps_escapees_but_leaves_popen_children(spawn, tmp_path: Path) -> None:
    proc = spawn([PYTHON, "-c", SUBREAPER, str(tmp_path / "escapee")])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    info = json.loads(out)
    assert info["adopted"] is True
    assert info["escapee"] in info["reaped"]
    assert info["kept_status"] == 7  # its exit status was not stolen by reap_children


def test_child_handle_signals_through_pidfd_and_never_after_exit() -> None:
    proc = spawn_process([PYTHON, "-c", "import time; time.sleep(600)"], marker=new_marker("spawntest", TEST_NAMESPACE),
                         env=python_env())
    with ChildHandle.of(proc) as handle:
        try:
            assert handle.has_pidfd
            assert handle.is_alive()
            assert handle.wait(timeout=0.05) is None
            assert handle.terminate()
            assert handle.wait(timeout=30) == -signal.SIGTERM
            assert not handle.is_alive()
            # The pid may be recycled from now on; the pidfd still names the dead child.
            assert handle.send_signal(signal.SIGKILL) is False
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_child_handle_group_signal_reaches_grandchildren(tmp_path: Path) -> None:
    ready = tmp_path / "grandchild"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(ready)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(600)\n")
    proc = spawn_process([PYTHON, "-c", code], marker=new_marker("spawntest", TEST_NAMESPACE), env=python_env())
    with ChildHandle.of(proc) as handle:
        grandchild = psutil.Process(int(wait_for_file(ready, proc=proc)))
        try:
            assert handle.signal_group(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            wait_for(lambda: not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE,
                     message="grandchild killed with the group")
            assert handle.signal_group(signal.SIGKILL) is False  # leader gone: never killpg a stale group
        finally:
            for p in (proc,):
                if p.poll() is None:
                    p.kill()
                    p.wait()


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "waitpid"])
def test_child_handle_without_popen_reaps_the_child_itself(pidfd: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command runner's watching stage inherits its child over an exec: no Popen, the handle reaps."""
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open")  # an old kernel: the waitpid fallback
    pid = os.posix_spawn(PYTHON, [PYTHON, "-c", "import time; time.sleep(600)"], python_env())
    handle = ChildHandle(pid)
    try:
        assert handle.has_pidfd is pidfd
        assert handle.is_alive()
        assert handle.wait(timeout=0.05) is None
        assert handle.terminate()
        assert handle.wait(timeout=30) == -signal.SIGTERM
        assert not handle.is_alive()
        assert handle.send_signal(signal.SIGKILL) is False  # never after it was reaped
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped by the handle
    finally:
        if handle.returncode is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        handle.close()
