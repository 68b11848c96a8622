"""supervisord 4 (+ superlance memmon for the memory guard), driven over its unix socket.

supervisord runs in the foreground (``supervisord -n``) in the harness's
background, the way its systemd units (Debian's ``supervisord -n -c ...``) and
container images run it, not daemonized. Daemonizing forks, and a forked
child's RSS leaves out the interpreter's file-backed pages (python binary,
shared libraries) until it touches them again: measured here, the same
supervisord with 50 workers holds 25.3 MB RSS in the foreground and 19.4 MB
daemonized, with the same 14.6 MB of private (anonymous) memory. procguard's
``up --detach`` execs a fresh interpreter, so only the foreground supervisord
is measured the same way (and bench/bench_supervisor.py measures it so too).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from .. import procs
from ..stack import Stack
from .base import Adapter, Tools

#: memmon listens to TICK events; TICK_60 is what superlance's docs recommend, TICK_5 the fastest tick.
TICKS = {"defaults": "TICK_60", "tight": "TICK_5"}


class SupervisordAdapter(Adapter):
    name = "supervisord"
    stop_command = "supervisorctl stop all"

    def version(self) -> str:
        result = procs.run([str(self.tools.venv_bin / "supervisord"), "--version"])
        return "supervisord " + result.stdout.strip()

    @property
    def conf(self) -> str:
        return str(self.layout.run_dir / "supervisord.conf")

    def render(self, stack: Stack) -> dict[str, str]:
        run = self.layout.run_dir
        lines = [
            "[unix_http_server]",
            f"file={run}/supervisor.sock",
            "",
            "[supervisord]",
            f"logfile={run}/supervisord.log",
            f"pidfile={run}/supervisord.pid",
            f"childlogdir={run}/logs",
            f"directory={run}",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{run}/supervisor.sock",
        ]
        for spec in stack.workers:
            instance = f"{spec.name}-%(process_num)02d" if spec.count > 1 else spec.name
            lines += [
                "",
                f"[program:{spec.name}]",
                "command=" + self.layout.command(spec, instance).replace("%", "%%").replace(
                    "%%(process_num)02d", "%(process_num)02d"),
                f"numprocs={spec.count}",
                "process_name=%(program_name)s-%(process_num)02d" if spec.count > 1 else "",
                "autorestart=true",
                f"stdout_logfile={run}/logs/%(program_name)s-%(process_num)02d.log",
                "redirect_stderr=true",
            ]
        if stack.guard is not None:
            lines += [
                "",
                "[eventlistener:memmon]",
                f"command={self.tools.venv_bin}/memmon " + " ".join(
                    # -p names one process; -g covers every process of a numprocs group
                    f"{'-p' if spec.count == 1 else '-g'} {spec.name}={stack.guard.limit_mib}MB"
                    for spec in stack.workers if stack.guard.covers(spec)),
                f"events={TICKS[stack.guard.mode]}",
                f"stderr_logfile={run}/logs/memmon.log",
            ]
        return {"supervisord.conf": "\n".join(line for line in lines if line is not None) + "\n",
                "logs/.keep": ""}

    def __init__(self, tools: Tools) -> None:
        super().__init__(tools)
        #: supervisord processes started by start_again(), waited for at shutdown
        self._started: list[subprocess.Popen[bytes]] = []

    def start_command(self) -> list[str]:
        return [str(self.tools.venv_bin / "supervisord"), "-n", "-c", self.conf]

    def start_again(self) -> subprocess.CompletedProcess[str]:
        """Start ``supervisord -n`` in the background; answer like its daemonizing start would.

        0 once it has written its pidfile (after opening its control socket);
        its exit status (and output) if it exits first, as a second start does
        when the socket is taken.
        """
        self._started = [p for p in self._started if p.poll() is None]  # collect earlier exits
        argv = self.start_command()
        pidfile = Path(self.layout.run_dir) / "supervisord.pid"
        out_path = Path(self.layout.run_dir) / "supervisord.out"
        with open(out_path, "ab") as out:
            proc = procs.popen(argv, env=self.env(), cwd=str(self.layout.run_dir), stdin=subprocess.DEVNULL,
                               stdout=out, stderr=out, start_new_session=True)
        self._started.append(proc)
        deadline = time.monotonic() + 60.0
        while proc.poll() is None and time.monotonic() < deadline:
            if _read(pidfile) == str(proc.pid):
                return subprocess.CompletedProcess(argv, 0, "", "")
            time.sleep(0.02)
        code = proc.returncode if proc.returncode is not None else 1
        text = out_path.read_text(errors="replace")[-300:]
        return subprocess.CompletedProcess(argv, code, "", text)

    def _ctl(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return procs.run([str(self.tools.venv_bin / "supervisorctl"), "-c", self.conf, *args],
                         env=self.env(), timeout=timeout)

    def stop_workers(self) -> subprocess.CompletedProcess[str]:
        return self._ctl("stop", "all")

    def shutdown(self) -> None:
        self._ctl("shutdown", timeout=60)
        procs.wait_until(lambda: not self.manager_roots(), 15)
        started, self._started = self._started, []
        for proc in started:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass  # the harness's sweep ends it by PID


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
