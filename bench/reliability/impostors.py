"""Row 4: lock records and markers that name a process which is not the instance: never signalled.

Every round builds, in a fresh state directory, one record per instance
name, each pointing at an *impostor*: a live process of ours that logs any
signal it receives (and then exits), so a signal cannot go unnoticed. The
kinds, two names each:

- ``reused``: a real ``procguard run`` is SIGKILLed, leaving its lock record
  behind, and its PID is handed to the impostor (``ns_last_pid``, root
  only: the PID really is reused; elsewhere the kind is skipped);
- ``reused-held``: the same, and another process holds the lock (as an
  inherited lock descriptor would);
- ``recycled-held``: a held lock whose record names the impostor's PID with
  another start time (what a recycled PID looks like);
- ``stale-exact``: a record with the impostor's exact identity that nobody
  holds (a leftover: whoever wrote it is gone);
- ``marker-other-dir`` / ``marker-old``: the impostor carries the name's
  marker of another state directory, or an older procguard's marker that
  names none.

Then ``procguard cleanup all``, ``procguard cleanup NAME`` for every name
and ``procguard run --name NAME --replace -- true`` for every name run
against them. A check is one (command, impostor it had to look at), plus
one last look at every impostor and lock holder after all the commands; it
fails if any of them got a signal or died, or the command exited with
anything but its documented status.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from tests.helpers import python_env, wait_for, wait_for_file
from tests.test_lock import CANARY

from procguard.instances.identity import boot_id, find_marked
from procguard.instances.lock import lock_path
from procguard.instances.statedir import namespace_of
from procguard.procstat import start_ticks

from .harness import PROCGUARD, PYTHON, ROOT, RowResult, Tally, alive, kill_all, one_line, stop

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
KINDS = ("reused", "reused-held", "recycled-held", "stale-exact", "marker-other-dir", "marker-old")
PER_KIND = 2
OTHER_NAMESPACE = "0badcafe"
#: How long a signal sent just before a command returned may take to show in the impostor's log.
SETTLE_S = 0.5

#: Holds the given lock files (flock) and, where given, writes the record into them; logs any signal.
HOLDER = r"""
import fcntl, json, os, signal, sys, time
log, ready, jobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def note(signum, frame):
    with open(log, "a") as f:
        f.write(f"{signum}\n")
    os._exit(3)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
    signal.signal(s, note)
fds = []
for path, record in jobs:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if record is not None:
        os.ftruncate(fd, 0)
        os.write(fd, record.encode())
    fds.append(fd)
open(ready, "w").write(str(os.getpid()))
while True:
    time.sleep(60)
"""


@dataclass
class Watched:
    """A process that must never get a signal: an impostor or a lock holder."""

    proc: subprocess.Popen[bytes]
    log: Path
    what: str

    def touched(self) -> str | None:
        said = self.log.read_text().split() if self.log.exists() else []
        if said:
            return f"{self.what} (pid {self.proc.pid}) got signal(s) {', '.join(said)}"
        if self.proc.poll() is not None:
            return f"{self.what} (pid {self.proc.pid}) died (status {self.proc.returncode})"
        return None


@dataclass
class Scene:
    state: Path
    env: dict[str, str]
    names: dict[str, str] = field(default_factory=dict)  # name -> kind
    held: set[str] = field(default_factory=set)
    watched: list[Watched] = field(default_factory=list)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _canary(scene: Scene, tag: str, what: str, env: dict[str, str] | None = None,
            at_pid: int | None = None) -> Watched | None:
    log, ready = scene.state.parent / f"{tag}.signals", scene.state.parent / f"{tag}.ready"
    argv = [PYTHON, "-c", CANARY, str(log), str(ready)]
    proc = _start_at(at_pid, argv, env or scene.env) if at_pid else subprocess.Popen(argv, env=env or scene.env)
    if proc is None:
        return None
    scene.started.append(proc)
    wait_for_file(ready, proc=proc)
    watched = Watched(proc, log, what)
    scene.watched.append(watched)
    return watched


def _start_at(pid: int, argv: list[str], env: dict[str, str], attempts: int = 300) -> subprocess.Popen[bytes] | None:
    """Start ``argv`` as PID ``pid`` (forced PID reuse), or None when the kernel will not allow it."""
    for _ in range(attempts):
        try:
            NS_LAST_PID.write_text(str(pid - 1))
        except OSError:
            return None
        proc = subprocess.Popen(argv, env=env)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


def reuse_available() -> bool:
    return os.geteuid() == 0 and os.access(NS_LAST_PID, os.W_OK)


def _record(name: str, pid: int, create_time: float, ticks: int | None) -> str:
    return json.dumps({"version": 1, "name": name, "pid": pid, "create_time": create_time, "start_ticks": ticks,
                       "boot_id": boot_id(), "cmdline": ["impostor"], "health_port": None, "marker": None,
                       "started_at": create_time, "info": {}})


def _real_record(scene: Scene, name: str) -> int:
    """A real ``procguard run`` of ``name``, SIGKILLed once its command runs; its PID, now free."""
    runner = subprocess.Popen([*PROCGUARD, "run", "--name", name, "--health-port", "0", "--grace", "1", "--",
                               "sleep", "3600"], env=scene.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    namespace = namespace_of(scene.state)
    try:
        wait_for(lambda: runner.poll() is not None or find_marked(name, namespace=namespace), timeout=60,
                 message=f"{name}'s command to start")
        pid = runner.pid
        runner.kill()
        runner.wait(timeout=30)
        # its watchdog stops the command; wait for that so nothing of it is left to clean up
        wait_for(lambda: not [p for p in find_marked(name, namespace=namespace) if alive(p)], timeout=30,
                 message=f"the watchdog of {name} to stop its command")
        return pid
    finally:
        stop(runner)


def build_scene(round_index: int, work: Path, *, reuse: bool, per_kind: int = PER_KIND) -> Scene:
    state = work / f"round-{round_index}" / "state"
    state.parent.mkdir(parents=True)
    scene = Scene(state, python_env(PROCGUARD_STATE_DIR=str(state), PROCGUARD_LOG_LEVEL="WARNING"))
    held_jobs: list[tuple[str, str | None]] = []
    for kind in KINDS:
        if kind.startswith("reused") and not reuse:
            continue
        for k in range(per_kind):
            name = f"imp-{kind}-{k}"
            scene.names[name] = kind
            path = str(lock_path(name, state))
            if kind.startswith("reused"):
                pid = _real_record(scene, name)
                if _canary(scene, name, f"impostor at the reused pid of {name}", at_pid=pid) is None:
                    msg = f"could not start an impostor at pid {pid}"
                    raise RuntimeError(msg)
                if kind == "reused-held":
                    held_jobs.append((path, None))
            elif kind in ("recycled-held", "stale-exact"):
                watched = _canary(scene, name, f"impostor named by {name}'s record")
                assert watched is not None
                pid = watched.proc.pid
                created = psutil.Process(pid).create_time()
                ticks = start_ticks(pid)
                if kind == "recycled-held":
                    held_jobs.append((path, _record(name, pid, created - 1000.0, (ticks or 0) + 7)))
                else:
                    Path(path).write_text(_record(name, pid, created, ticks))
                    Path(path).chmod(0o600)
            else:
                namespace = OTHER_NAMESPACE if kind == "marker-other-dir" else None
                marker = f"{name}:{namespace}-{'0' * 12}" if namespace else f"{name}:{'0' * 12}"
                _canary(scene, name, f"impostor carrying the marker {marker}",
                        env={**scene.env, "PROCGUARD_INSTANCE": marker})
    if held_jobs:
        log, ready = state.parent / "holder.signals", state.parent / "holder.ready"
        holder = subprocess.Popen([PYTHON, "-c", HOLDER, str(log), str(ready), json.dumps(held_jobs)], env=scene.env)
        scene.started.append(holder)
        wait_for_file(ready, proc=holder)
        scene.watched.append(Watched(holder, log, "the process holding the locks"))
        scene.held = {Path(path).name.removesuffix(".lock") for path, _ in held_jobs}
    return scene


Command = tuple[list[str], list[str], tuple[int, ...]]  # argv, names it must look at, accepted exit statuses


def commands(scene: Scene) -> list[Command]:
    found: list[Command] = [(["cleanup", "all", "--grace", "1", "--json"], list(scene.names), (0,))]
    for name in scene.names:
        found.append((["cleanup", name, "--grace", "1", "--json"], [name], (0,)))
    for name in scene.names:
        statuses = (3,) if name in scene.held else (0,)
        found.append((["run", "--name", name, "--replace", "--grace", "0.2", "--health-port", "0", "--", "true"],
                      [name], statuses))
    return found


def check_commands(scene: Scene, tally: Tally, *, run: Callable[[list[str], dict[str, str]],
                   subprocess.CompletedProcess[str]] | None = None) -> set[int]:
    """Run every command against the scene; one check per (command, name in its scope).

    Then, after SETTLE_S, one last check of every watched process. Returns the PIDs of the
    watched processes that were signalled or died.
    """
    run = run or (lambda argv, env: subprocess.run([*PROCGUARD, *argv], env=env, cwd=ROOT, capture_output=True,
                                                    text=True, timeout=120, check=False))
    touched: set[int] = set()
    for argv, scope, statuses in commands(scene):
        result = run(argv, scene.env)
        what = f"procguard {' '.join(argv[:2])}"
        failures = [] if result.returncode in statuses else [f"{what} exited {result.returncode}: "
                                                             f"{one_line(result.stderr)}"]
        for watched in scene.watched:
            why = None if watched.proc.pid in touched else watched.touched()
            if why:
                touched.add(watched.proc.pid)
                failures.append(f"after {what}: {why}")
        for position in range(len(scope)):  # the last check of the command takes whatever is left
            tally.record(failures[position:] if position == len(scope) - 1 else failures[position:position + 1])
    # a signal sent by a command that did not wait for it lands a moment later: one more check per process
    time.sleep(SETTLE_S)
    for watched in scene.watched:
        why = None if watched.proc.pid in touched else watched.touched()
        if why:
            touched.add(watched.proc.pid)
        tally.record([f"after all the commands: {why}"] if why else [])
    return touched


def teardown(scene: Scene) -> None:
    procs = []
    for proc in scene.started:
        if proc.poll() is None:
            try:
                procs.append(psutil.Process(proc.pid))
            except psutil.Error:
                pass
    kill_all(procs)
    for proc in scene.started:
        proc.wait(timeout=30)


def run_impostors(checks: int, work: Path) -> RowResult:
    started = time.monotonic()
    tally = Tally()
    reuse = reuse_available()
    rounds = signalled = 0
    while tally.tried < checks:
        try:
            scene = build_scene(rounds, work, reuse=reuse)
        except Exception as exc:  # a scene that cannot be built is a failed check, never a silent skip
            tally.record([f"round {rounds} could not be set up: {type(exc).__name__}: {exc}"])
            rounds += 1
            continue
        try:
            signalled += len(check_commands(scene, tally))
        finally:
            teardown(scene)
        rounds += 1
    kinds = [k for k in KINDS if reuse or not k.startswith("reused")]
    figures = (f"{signalled} impostors or lock holders signalled; "
               f"{rounds} rounds of {len(kinds) * PER_KIND} impostors ({', '.join(kinds)})")
    if not reuse:
        figures += "; forced PID reuse needs root: the reused kinds were not run"
    return RowResult(4, "PID-reuse impostors: lock records and markers naming a live process that is not the "
                     "instance, read by `procguard cleanup all`, `cleanup NAME` and `run --name NAME --replace`",
                     f"{tally.tried} checks", tally.failed, figures, time.monotonic() - started, tally.problems)
