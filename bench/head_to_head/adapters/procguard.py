"""procguard's own supervisor, driven through its documented CLI (docs/SUPERVISOR.md).

``procguard up -c FILE --detach`` starts the stack, ``procguard down`` is the
normal stop; the state directory is the benchmark's own (PROCGUARD_STATE_DIR).
"""

from __future__ import annotations

import json
import subprocess

from .. import procs
from ..stack import Stack, WorkerSpec
from .base import Adapter

#: The supervisor samples every worker's process tree every 2 s (every 0.25 s
#: while a worker is near its memory limit) and acts on the second consecutive
#: strike; its tightest setting samples every 0.5 s regularly (the
#: PROCGUARD_SUPERVISOR_TUNING variable, meant for tests and benchmarks).
TUNING = {"defaults": None, "tight": "sample_interval_s=0.5"}


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class ProcguardAdapter(Adapter):
    name = "procguard"
    stop_command = "procguard down"
    #: extra [defaults] keys for one scenario (e.g. the restart scenario's start limit)
    defaults: dict[str, str] = {}
    _guard_mode: str | None = None

    def version(self) -> str:
        result = procs.run([self.tools.python, "-m", "procguard", "--version"], env=self.env())
        return result.stdout.strip() or "procguard (unknown version)"

    @property
    def conf(self) -> str:
        return str(self.layout.run_dir / "procguard.toml")

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PROCGUARD_STATE_DIR"] = str(self.layout.run_dir / "state")
        env["PYTHONPATH"] = str(self.tools.repo_dir / "src")
        env.pop("PROCGUARD_SUPERVISOR_TUNING", None)
        tuning = TUNING.get(self._guard_mode or "defaults")
        if tuning:
            env["PROCGUARD_SUPERVISOR_TUNING"] = tuning
        return env

    def render(self, stack: Stack) -> dict[str, str]:
        lines = ["[project]", 'name = "bench"', "", "[defaults]", 'restart = "always"']
        lines += [f"{key} = {value}" for key, value in self.defaults.items()]
        for spec in stack.workers:
            for instance in spec.instance_names():
                lines += ["", f"[workers.{instance}]", *self._program(spec, instance),
                          f"cwd = {_toml_str(str(self.layout.run_dir))}"]
                if instance in stack.health_ports:
                    lines.append(f"health_port = {stack.health_ports[instance]}")
                if stack.guard is not None and stack.guard.covers(spec):
                    lines.append(f'memory_limit = "{stack.guard.limit_mib}MB"')
        return {"procguard.toml": "\n".join(lines) + "\n"}

    def _program(self, spec: WorkerSpec, instance: str) -> list[str]:
        """A command worker's ``command``, or a function worker's ``run``, ``interval`` and ``env``."""
        if spec.function is None:
            argv = self.layout.argv(spec, instance)
            return ["command = [" + ", ".join(_toml_str(a) for a in argv) + "]"]
        env = {"BENCH_EVENTS": str(self.layout.events_dir), "BENCH_NAME": instance,
               "PYTHONPATH": str(self.layout.workers_dir)}
        return [f"run = {_toml_str(f'{spec.script}:{spec.function}')}",
                f'interval = "{spec.interval_s:g}s"',
                "env = { " + ", ".join(f"{k} = {_toml_str(v)}" for k, v in env.items()) + " }"]

    def prepare(self, stack: Stack) -> None:
        self._guard_mode = stack.guard.mode if stack.guard is not None else None
        super().prepare(stack)
        state = self.layout.run_dir / "state"
        state.mkdir(mode=0o700, exist_ok=True)
        state.chmod(0o700)

    def start_command(self) -> list[str]:
        return [self.tools.python, "-m", "procguard", "up", "-c", self.conf, "--detach"]

    def _ctl(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return procs.run([self.tools.python, "-m", "procguard", *args], env=self.env(), timeout=timeout,
                         cwd=str(self.layout.run_dir))

    def stop_workers(self) -> subprocess.CompletedProcess[str]:
        return self._ctl("down", "-c", self.conf)

    def shutdown(self) -> None:
        self._ctl("down", "-c", self.conf, timeout=60)
        procs.wait_until(lambda: not self.manager_roots(), 15)

    def status(self) -> list[dict[str, object]]:
        """``procguard status --json`` (the contract's list of worker objects)."""
        result = self._ctl("status", "--json", "-c", self.conf, timeout=30)
        try:
            data = json.loads(result.stdout)
        except ValueError:
            return []
        return data if isinstance(data, list) else []
