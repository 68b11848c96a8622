"""The ``[deploy.*]`` tables and ``procguard deploy`` flags, parsed into typed settings.

Each target's engine values (stop timeouts, memory ceilings) default to
values *derived* from the worker's own limits, so the timeout and memory
budget (see :mod:`procguard.deploy.budget`) holds without any setting. A
value given here is an explicit override and is checked against that
budget; flags win over the config file.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import StackConfig, WorkerConfig
from ..errors import ConfigError, UsageError, shown
from ..units import MB, parse_count, parse_duration, parse_percent, parse_size

_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,30}\$?\Z")
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*\Z")
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")

#: The stop budget is grace + drain plus these margins (seconds) per engine:
#: supervisord's stopwaitsecs < systemd's TimeoutStopSec, and Kubernetes'
#: terminationGracePeriodSeconds, so the app's own graceful stop always ends first.
SUPERVISOR_STOP_MARGIN_S = 5
SYSTEMD_STOP_MARGIN_S = 10
KUBERNETES_STOP_MARGIN_S = 10


def app_stop_s(worker: WorkerConfig) -> float:
    """The longest a graceful stop of ``worker`` takes: drain delay, then grace."""
    return worker.limits.grace_s + worker.limits.drain_delay_s


def derived_memory_high(limit: int) -> int:
    """Throttle point above the in-process limit (limit + max(25 %, 64 MiB), whole MiB)."""
    return _round_mb(limit + max(limit // 4, 64 * MB))


def derived_memory_max(limit: int) -> int:
    """Hard engine ceiling above the in-process limit (limit + max(50 %, 128 MiB), whole MiB)."""
    return _round_mb(limit + max(limit // 2, 128 * MB))


def _round_mb(size: int) -> int:
    return math.ceil(size / MB) * MB


def _user(value: object) -> str:
    text = str(value)
    if not isinstance(value, str) or not _USER_RE.match(text):
        msg = f"{shown(value)} is not a user name (use a POSIX name like 'analyticbot')"
        raise UsageError(msg)
    return text


def _abs_path(value: object) -> str:
    text = str(value)
    if not isinstance(value, str) or not text.startswith("/"):
        msg = f"{shown(value)} is not an absolute path (use a path like /opt/app/venv)"
        raise UsageError(msg)
    return text.rstrip("/") or "/"


def _abs_paths(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        msg = f'{shown(value)} is not a list of absolute paths (use ["/var/lib/app"])'
        raise UsageError(msg)
    paths = tuple(_abs_path(item) for item in value)
    for path in paths:
        if any(c.isspace() or ord(c) < 0x20 for c in path):
            msg = f"{shown(path)} contains whitespace or control characters (use a plain path)"
            raise UsageError(msg)
    return paths


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        msg = f"{shown(value)} is not true or false"
        raise UsageError(msg)
    return value


def _image(value: object) -> str:
    text = str(value)
    if not isinstance(value, str) or not _IMAGE_RE.match(text) or len(text) > 255:
        msg = f"{shown(value)} is not a container image reference (use e.g. registry.example.com/app:1.0)"
        raise UsageError(msg)
    return text


def _namespace(value: object) -> str:
    text = str(value)
    if not isinstance(value, str) or not _DNS_LABEL_RE.match(text):
        accepted = "use lowercase letters, digits and '-', at most 63"
        msg = f"{shown(value)} is not a Kubernetes namespace ({accepted})"
        raise UsageError(msg)
    return text


def _argv(value: object) -> tuple[str, ...]:
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return tuple(value)
    try:
        argv = tuple(shlex.split(value)) if isinstance(value, str) else ()
    except ValueError:
        argv = ()
    if not argv:
        msg = f'{shown(value)} is not a command (use e.g. "procguard" or ["python", "-m", "procguard"])'
        raise UsageError(msg)
    return argv


def _seconds(value: object) -> float:
    return parse_duration(value)


def _size(value: object) -> int:
    return parse_size(value, default_unit="MB")


def _cpu_percent(value: object) -> float:
    return parse_percent(value, maximum=100.0 * 1024)


def _replicas(value: object) -> int:
    return parse_count(value, minimum=1)


_Conv = Callable[[object], Any]

SYSTEMD_KEYS: dict[str, _Conv] = {
    "user": _user,
    "venv": _abs_path,
    "workdir": _abs_path,
    "timeout_stop": _seconds,
    "memory_high": _size,
    "memory_max": _size,
    "cpu_quota": _cpu_percent,
    "watchdog": _seconds,
    "restart_sec": _seconds,
    "target": _bool,
    "read_write_paths": _abs_paths,
}
SUPERVISOR_KEYS: dict[str, _Conv] = {
    "user": _user,
    "venv": _abs_path,
    "workdir": _abs_path,
    "log_dir": _abs_path,
    "stopwaitsecs": _seconds,
    "startsecs": _seconds,
}
KUBERNETES_KEYS: dict[str, _Conv] = {
    "image": _image,
    "namespace": _namespace,
    "workdir": _abs_path,
    "procguard": _argv,
    "memory_limit": _size,
    "memory_request": _size,
    "cpu_limit": _cpu_percent,
    "cpu_request": _cpu_percent,
    "termination_grace": _seconds,
    "replicas": _replicas,
    "read_write_paths": _abs_paths,
    "run_as_user": lambda v: parse_count(v, minimum=1),
    "health_port": lambda v: parse_count(v, minimum=1),
}
KEYS: dict[str, dict[str, _Conv]] = {
    "systemd": SYSTEMD_KEYS,
    "supervisor": SUPERVISOR_KEYS,
    "kubernetes": KUBERNETES_KEYS,
}

#: CLI flag -> settings key, per target (flags are shared where they make sense).
FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "user": ("systemd", "supervisor"),
    "venv": ("systemd", "supervisor"),
    "workdir": ("systemd", "supervisor", "kubernetes"),
    "image": ("kubernetes",),
    "namespace": ("kubernetes",),
}


def parse_target_settings(
    config: StackConfig, target: str, flags: Mapping[str, object] | None = None
) -> dict[str, Any]:
    """Validated settings of ``target``: ``[deploy.<target>]`` with ``flags`` on top.

    Unknown keys and bad values in the file raise ConfigError (file + key);
    bad flag values raise UsageError naming the flag.
    """
    keys = KEYS[target]
    settings: dict[str, Any] = {}
    for key, raw in config.deploy.get(target, {}).items():
        if key not in keys:
            accepted = ", ".join(sorted(keys))
            raise ConfigError(
                f"unknown key (use one of: {accepted})", path=str(config.path), key=f"deploy.{target}.{key}"
            )
        try:
            settings[key] = keys[key](raw)
        except UsageError as error:
            raise ConfigError(str(error), path=str(config.path), key=f"deploy.{target}.{key}") from None
    for key, raw in (flags or {}).items():
        if raw is None or key not in keys:
            continue
        try:
            settings[key] = keys[key](raw)
        except UsageError as error:
            msg = f"--{key}: {error}"
            raise UsageError(msg) from None
    return settings


@dataclass(frozen=True)
class EngineLimits:
    """The engine-side numbers of one worker, derived or overridden."""

    supervisor_stopwait_s: int
    systemd_timeout_stop_s: int
    kubernetes_termination_s: int
    systemd_memory_high: int | None
    systemd_memory_max: int | None
    kubernetes_memory_limit: int | None
    kubernetes_memory_request: int | None


def engine_limits(worker: WorkerConfig, settings: Mapping[str, Mapping[str, Any]]) -> EngineLimits:
    """Engine values for ``worker``: the overrides in ``settings[target]``, else derived."""
    stop = math.ceil(app_stop_s(worker))
    systemd, supervisor, kube = (settings.get(t, {}) for t in ("systemd", "supervisor", "kubernetes"))
    limit = worker.limits.memory_limit_bytes

    def size_or(key: str, table: Mapping[str, Any], derived: int | None) -> int | None:
        return int(table[key]) if key in table else derived

    k8s_limit = size_or("memory_limit", kube, derived_memory_max(limit) if limit else None)
    return EngineLimits(
        supervisor_stopwait_s=_whole(supervisor.get("stopwaitsecs"), stop + SUPERVISOR_STOP_MARGIN_S),
        systemd_timeout_stop_s=_whole(systemd.get("timeout_stop"), stop + SYSTEMD_STOP_MARGIN_S),
        kubernetes_termination_s=_whole(kube.get("termination_grace"), stop + KUBERNETES_STOP_MARGIN_S),
        systemd_memory_high=size_or("memory_high", systemd, derived_memory_high(limit) if limit else None),
        systemd_memory_max=size_or("memory_max", systemd, derived_memory_max(limit) if limit else None),
        kubernetes_memory_limit=k8s_limit,
        kubernetes_memory_request=size_or(
            "memory_request", kube, _round_mb(min(limit, k8s_limit or limit)) if limit else None
        ),
    )


def _whole(value: object, default: int) -> int:
    if value is None:
        return default
    return math.ceil(float(value))  # type: ignore[arg-type]


def worker_workdir(worker: WorkerConfig, workdir: str) -> str:
    """The worker's working directory on the target: its ``cwd`` resolved against ``workdir``."""
    if not worker.cwd:
        return workdir
    return posixpath.normpath(posixpath.join(workdir, worker.cwd))


def search_path(procguard: Sequence[str]) -> str:
    """``PATH`` for a host engine: the directory of procguard's interpreter, then the system's."""
    first = posixpath.dirname(procguard[0]) if procguard and procguard[0].startswith("/") else ""
    system = ["/usr/local/bin", "/usr/bin", "/bin"]
    return ":".join([first, *[d for d in system if d != first]] if first else system)


def copies_argv(worker: WorkerConfig, argv: list[str], number: str) -> list[str]:
    """The argv of copy ``number`` (the engine's placeholder for the copy's number) of a worker
    with copies: ``sh -c 'exec ...'`` computing its port P+K-1, which neither supervisord nor
    systemd can add up; unchanged without a health port. ``exec`` keeps the runner the main PID."""
    port = worker.limits.health_port
    if port is None:
        return argv
    at = argv.index("--health-port")
    argv = [*argv[:at], "--health-port", "PROCGUARDHEALTHPORT", *argv[at + 2 :]]
    inner = shlex.join(argv).replace("PROCGUARDHEALTHPORT", f"$(({port - 1} + {number}))")
    return ["/bin/sh", "-c", f"exec {inner}"]
