"""The interface every manager adapter implements, and the parts they share.

An adapter renders its tool's config for a :class:`~..stack.Stack` (a pure
function, tested), starts the stack with the tool's ordinary "start" command
(which daemonizes; the harness is a subreaper, so the daemon becomes its
child), stops it the tool's normal way, and knows how to tell whether its
folder or ports are already in use. Which processes are "the manager" is
decided the same way for every tool: the harness's descendants that are
neither a worker (a process that logged ``ready``) nor below one.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from .. import procs
from ..events import Event, read_events, ready_children, ready_workers
from ..stack import Layout, Stack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tools:
    """Where the benchmark-only installs live (see install.py)."""

    peers_dir: Path
    repo_dir: Path
    python: str = sys.executable

    @property
    def venv_bin(self) -> Path:
        return self.peers_dir / "venv" / "bin"

    @property
    def pm2(self) -> Path:
        return self.peers_dir / "node" / "node_modules" / ".bin" / "pm2"

    @property
    def run_root(self) -> Path:
        return self.peers_dir / "run"


class Adapter:
    """Drive one process manager. Subclasses set ``name`` and implement the tool-specific parts."""

    name = "abstract"
    #: what "the tool's normal stop" is, for the report
    stop_command = ""

    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        self.layout = Layout(run_dir=tools.run_root / self.name, python=tools.python)

    # -- tool-specific ---------------------------------------------------------------
    def version(self) -> str:
        raise NotImplementedError

    def render(self, stack: Stack) -> dict[str, str]:
        """File name (relative to the run dir) -> content, for ``stack``. Pure."""
        raise NotImplementedError

    def start_command(self) -> list[str]:
        """The tool's ordinary "start the stack" command (daemonizing)."""
        raise NotImplementedError

    def stop_workers(self) -> subprocess.CompletedProcess[str]:
        """The tool's normal stop of every worker (what a user types)."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """End the manager itself, the tool's way (teardown, not measured)."""
        raise NotImplementedError

    def tcp_ports(self) -> list[int]:
        """127.0.0.1 ports the tool will listen on."""
        return []

    def env(self) -> dict[str, str]:
        """Environment for the tool's commands."""
        env = dict(os.environ)
        env.pop("PROCGUARD_INSTANCE", None)
        return env

    # -- shared ----------------------------------------------------------------------
    def in_use(self) -> str | None:
        """Why this tool's folder or ports cannot be used now, or None."""
        for port in self.tcp_ports():
            if port_in_use(port):
                return f"{self.name}: port 127.0.0.1:{port} is in use"
        run_dir = self.layout.run_dir
        if run_dir.exists():
            for sock in run_dir.rglob("*.sock"):
                if _unix_socket_answers(sock):
                    return f"{self.name}: {sock} answers; another run is using {run_dir}"
            for proc in psutil.process_iter(["cwd"]):
                cwd = proc.info.get("cwd") or ""
                if cwd == str(run_dir) or cwd.startswith(str(run_dir) + os.sep):
                    return f"{self.name}: process {proc.pid} works in {run_dir}"
        return None

    def prepare(self, stack: Stack) -> None:
        """Fresh run dir with the rendered config and an empty events dir."""
        run_dir = self.layout.run_dir
        if run_dir.exists():
            shutil.rmtree(run_dir)
        self.layout.events_dir.mkdir(parents=True)
        for name, content in self.render(stack).items():
            path = run_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)

    def start(self, stack: Stack) -> subprocess.CompletedProcess[str]:
        """Prepare and run the start command once; workers come up asynchronously."""
        self.prepare(stack)
        return self.start_again()

    def start_again(self) -> subprocess.CompletedProcess[str]:
        """Run the start command once more (the duplicate storm)."""
        result = procs.run(self.start_command(), env=self.env(), cwd=str(self.layout.run_dir))
        if result.returncode != 0:
            log.info("%s start exited %s: %s", self.name, result.returncode,
                     (result.stderr or result.stdout).strip()[-300:])
        return result

    def events(self) -> list[Event]:
        return read_events(self.layout.events_dir)

    def worker_pids(self) -> list[int]:
        """Live workers (processes that logged ``ready`` as a worker)."""
        return [pid for pid in ready_workers(self.events()) if procs.is_alive(pid)]

    def child_pids(self) -> list[int]:
        """Live multiprocessing children of workers."""
        return [pid for pid in ready_children(self.events()) if procs.is_alive(pid)]

    def wait_ready(self, count: int, timeout: float = 60.0) -> bool:
        """Wait until ``count`` workers are alive and ready."""
        return procs.wait_until(lambda: len(self.worker_pids()) >= count, timeout, interval=0.05)

    def manager_side(self) -> list[int]:
        """PIDs of the manager and its helpers: descendants that are not workers or below one."""
        everything = procs.descendants()
        worker_set = set(ready_workers(self.events())) | set(ready_children(self.events()))
        excluded: set[int] = set()
        for proc in everything:
            if proc.pid in worker_set:
                excluded.update(procs.tree_pids(proc.pid))
        result = []
        for proc in everything:
            if proc.pid in excluded:
                continue
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            result.append(proc.pid)
        return result

    def manager_roots(self) -> list[int]:
        """The manager processes that are direct children of the harness (the daemons)."""
        me = os.getpid()
        roots = []
        for pid in self.manager_side():
            try:
                if psutil.Process(pid).ppid() == me:
                    roots.append(pid)
            except psutil.Error:
                pass
        return roots

    def teardown(self) -> list[int]:
        """Shut the tool down its way, then sweep whatever is left; returns the swept PIDs."""
        try:
            if self.manager_roots():  # nothing to ask if the manager is already gone
                self.shutdown()
        except (OSError, subprocess.SubprocessError) as error:
            log.warning("%s shutdown failed: %s", self.name, error)
        return procs.sweep(grace_s=3.0)


def port_in_use(port: int) -> bool:
    """True if something listens on 127.0.0.1:``port`` (TIME_WAIT leftovers do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _unix_socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False
