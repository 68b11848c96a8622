"""supervisord 4 (+ superlance memmon for the memory guard), driven over its unix socket."""

from __future__ import annotations

import subprocess

from .. import procs
from ..stack import Stack
from .base import Adapter

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
                f"command={self.tools.venv_bin}/memmon -p {stack.guard.program}={stack.guard.limit_mib}MB",
                f"events={TICKS[stack.guard.mode]}",
                f"stderr_logfile={run}/logs/memmon.log",
            ]
        return {"supervisord.conf": "\n".join(line for line in lines if line is not None) + "\n",
                "logs/.keep": ""}

    def start_command(self) -> list[str]:
        return [str(self.tools.venv_bin / "supervisord"), "-c", self.conf]

    def _ctl(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return procs.run([str(self.tools.venv_bin / "supervisorctl"), "-c", self.conf, *args],
                         env=self.env(), timeout=timeout)

    def stop_workers(self) -> subprocess.CompletedProcess[str]:
        return self._ctl("stop", "all")

    def shutdown(self) -> None:
        self._ctl("shutdown", timeout=60)
        procs.wait_until(lambda: not self.manager_roots(), 15)
