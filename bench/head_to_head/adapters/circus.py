"""circus 0.19 (circusd + the resource_watcher plugin), driven over its ZeroMQ endpoint."""

from __future__ import annotations

import subprocess

from .. import procs
from ..stack import Stack
from .base import Adapter

#: Ports the benchmark gives circusd (its defaults are 5555 and 5556); checked free before a
#: run. No stats_endpoint: setting one would also start circusd-stats, which is off by default.
PORTS = (25555, 25556)

#: resource_watcher: defaults are loop_rate 60 s and max_count 3 (it acts on the 4th
#: consecutive strike, ``count > max_count``); the tightest useful setting checks every
#: second and acts on the first strike.
GUARD = {"defaults": {}, "tight": {"loop_rate": "1", "max_count": "0"}}


class CircusAdapter(Adapter):
    name = "circus"
    stop_command = "circusctl stop --waiting"

    def version(self) -> str:
        result = procs.run([str(self.tools.venv_bin / "circusd"), "--version"])
        return "circus " + result.stdout.strip()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{PORTS[0]}"

    def tcp_ports(self) -> list[int]:
        return list(PORTS)

    def render(self, stack: Stack) -> dict[str, str]:
        run = self.layout.run_dir
        lines = [
            "[circus]",
            f"endpoint = {self.endpoint}",
            f"pubsub_endpoint = tcp://127.0.0.1:{PORTS[1]}",
            f"logoutput = {run}/circusd.log",
            f"pidfile = {run}/circusd.pid",
        ]
        for spec in stack.workers:
            instance = f"{spec.name}-$(circus.wid)" if spec.count > 1 else spec.name
            argv = self.layout.argv(spec, instance)
            lines += [
                "",
                f"[watcher:{spec.name}]",
                f"cmd = {argv[0]}",
                "args = " + " ".join(argv[1:]),
                f"numprocesses = {spec.count}",
                f"working_dir = {run}",
                "copy_env = True",
            ]
        guarded = [spec.name for spec in stack.workers if stack.guard is not None and stack.guard.covers(spec)]
        for watcher in guarded:  # one resource_watcher per watcher: the plugin watches one
            assert stack.guard is not None
            suffix = "" if len(guarded) == 1 else f"_{watcher}"
            lines += [
                "",
                f"[plugin:resource_watcher{suffix}]",
                "use = circus.plugins.resource_watcher.ResourceWatcher",
                f"watcher = {watcher}",
                f"max_mem = {stack.guard.limit_mib}M",
            ]
            lines += [f"{key} = {value}" for key, value in GUARD[stack.guard.mode].items()]
        return {"circus.ini": "\n".join(lines) + "\n"}

    def start_command(self) -> list[str]:
        return [str(self.tools.venv_bin / "circusd"), "--daemon", str(self.layout.run_dir / "circus.ini")]

    def _ctl(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return procs.run([str(self.tools.venv_bin / "circusctl"), "--endpoint", self.endpoint,
                          "--timeout", "120", *args], env=self.env(), timeout=timeout)

    def stop_workers(self) -> subprocess.CompletedProcess[str]:
        return self._ctl("stop", "--waiting")

    def shutdown(self) -> None:
        self._ctl("quit", "--waiting", timeout=60)
        procs.wait_until(lambda: not self.manager_roots(), 15)
