"""PM2 7 (npm package, own PM2_HOME under the benchmark's folder), driven with its CLI."""

from __future__ import annotations

import json
import subprocess

from .. import procs
from ..stack import Stack
from .base import Adapter

#: PM2 checks max_memory_restart in its worker loop, every PM2_WORKER_INTERVAL ms
#: (30000 by default); the tightest setting used here is 1000 ms.
WORKER_INTERVAL_MS = {"defaults": None, "tight": "1000"}


class PM2Adapter(Adapter):
    name = "pm2"
    stop_command = "pm2 stop all"
    _guard_mode: str | None = None

    def version(self) -> str:
        # Reads package.json instead of `pm2 --version`, which would start a daemon.
        package = self.tools.peers_dir / "node" / "node_modules" / "pm2" / "package.json"
        return "pm2 " + str(json.loads(package.read_text())["version"])

    @property
    def home(self) -> str:
        return str(self.layout.run_dir / "home")

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PM2_HOME"] = self.home
        env["PM2_DISCRETE_MODE"] = "true"
        interval = WORKER_INTERVAL_MS.get(self._guard_mode or "defaults")
        if interval:
            env["PM2_WORKER_INTERVAL"] = interval
        return env

    def render(self, stack: Stack) -> dict[str, str]:
        apps = []
        for spec in stack.workers:
            for instance in spec.instance_names():
                argv = self.layout.argv(spec, instance)
                app: dict[str, object] = {
                    "name": instance,
                    "script": argv[1],
                    "args": argv[2:],
                    "interpreter": argv[0],
                    "cwd": str(self.layout.run_dir),
                    "autorestart": True,
                }
                if stack.guard is not None and stack.guard.covers(spec):
                    app["max_memory_restart"] = f"{stack.guard.limit_mib}M"
                apps.append(app)
        return {"ecosystem.json": json.dumps({"apps": apps}, indent=2) + "\n"}

    def prepare(self, stack: Stack) -> None:
        self._guard_mode = stack.guard.mode if stack.guard is not None else None
        super().prepare(stack)

    def start_command(self) -> list[str]:
        return [str(self.tools.pm2), "start", str(self.layout.run_dir / "ecosystem.json")]

    def _ctl(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return procs.run([str(self.tools.pm2), *args], env=self.env(), timeout=timeout)

    def stop_workers(self) -> subprocess.CompletedProcess[str]:
        return self._ctl("stop", "all")

    def shutdown(self) -> None:
        self._ctl("kill", timeout=60)
        procs.wait_until(lambda: not self.manager_roots(), 15)
