"""systemd units for a stack: one hardened ``<project>-<worker>.service`` per worker.

The unit runs ``procguard run`` (``config.worker_argv``) with absolute paths.
Every worker is ``Type=notify``, so systemd knows when the worker is really
up and (with ``WatchdogSec``) restarts it when the watchdog pings stop: a
function worker's ProcessManager pings while its loop's heartbeat is fresh;
the runner of a command worker pings while the command is alive and within
its limits (``WatchdogSec`` defaults to 60 s there). Planned recycles exit
with statuses listed in ``SuccessExitStatus`` so they are restarted without
being logged as failures; memory and stop timeouts sit above the worker's
own, so its graceful stop always comes first. The hardening block keeps
``systemd-analyze security`` exposure low while leaving network access.

A worker with ``instances = N`` is a template unit ``<project>-<worker>@.service``
whose instance is the copy's number K (``%i``): ``<project>-<worker>@1.service``
.. ``@N.service`` are what the target wants (and what to enable without the
target). Copy K runs under the instance name ``<worker>:K``, with
``PROCGUARD_INSTANCE_INDEX=K``, ``PROCGUARD_INSTANCES=N`` and its own runtime
directory; systemd's specifiers cannot add, so with a health port the command
goes through ``/bin/sh -c 'exec ...'`` to give copy K the port P+K-1.

The health port's TLS certificate and key and the token file are handed in
as credentials (``LoadCredential=``): systemd reads them as root and gives
the unit's own (possibly dynamic) user a private copy in ``%d``, the
credentials directory, which the ``procguard run`` flags point at. A key
readable by root only thus works without opening its permissions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import StackConfig, WorkerConfig, own_texts, start_order, worker_argv
from ..copies import COUNT_ENV, INDEX_ENV
from ..errors import UsageError
from ..reasons import RECYCLE_STATUSES, SIGNAL_STOP_STATUSES
from ..snapshot import label_environment
from ..units import MB
from .escape import (
    check_systemd_lines,
    systemd_environment,
    systemd_exec_line,
    systemd_path,
    systemd_path_list,
    systemd_specifiers,
    systemd_text,
)
from .settings import copies_argv, engine_limits, search_path, worker_workdir
from .writer import RenderedFile, header

#: Paths under which ProtectHome=yes would hide the program or its data.
_HOME_PREFIXES = ("/home/", "/root/", "/run/user/")

_RESTART = {"always": "always", "on-failure": "on-failure", "never": "no"}

#: ``WatchdogSec`` of a command worker without ``heartbeat_timeout`` (or a
#: ``[deploy.systemd] watchdog``): its runner pings every few seconds while the
#: command is alive and healthy, so this only has to outlast a stalled runner.
COMMAND_WATCHDOG_S = 60.0

#: Hardening that keeps network access (AF_INET/AF_INET6) and psutil's /proc
#: reads working, and lets multiprocessing use /dev/shm.
_HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "RemoveIPC=yes",
    "PrivateUsers=yes",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources",
    "SystemCallErrorNumber=EPERM",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "UMask=0077",
)


def _credentials(worker: WorkerConfig) -> dict[str, str]:
    """The files the worker's health port needs (setting field -> path), when it serves one."""
    limits = worker.limits
    if not limits.health_port:
        return {}
    files = {
        "health_tls_cert": limits.health_tls_cert,
        "health_tls_key": limits.health_tls_key,
        "health_token_file": limits.health_token_file,
    }
    return {field: path for field, path in files.items() if path is not None}


def unit_name(config: StackConfig, worker: WorkerConfig | str) -> str:
    """``<project>-<worker>.service``, or the template ``<project>-<worker>@.service`` of a worker
    with copies."""
    if isinstance(worker, str):
        worker = config.workers[worker]
    at = "@" if worker.instances > 1 else ""
    return f"{config.project.name}-{worker.name}{at}.service"


def unit_instances(config: StackConfig, worker: WorkerConfig | str) -> list[str]:
    """The units that run ``worker``: its one unit, or ``<project>-<worker>@K.service`` for each copy."""
    if isinstance(worker, str):
        worker = config.workers[worker]
    if worker.instances == 1:
        return [unit_name(config, worker)]
    return [f"{config.project.name}-{worker.name}@{k}.service" for k in range(1, worker.instances + 1)]


#: Stands for the unit's instance (``%i``, the copy's number) until the escaping is done.
_INSTANCE = "PROCGUARDUNITINSTANCE"



def target_name(config: StackConfig) -> str:
    """``<project>.target``: starts and stops the whole stack."""
    return f"{config.project.name}.target"


def _seconds(value: float) -> str:
    return str(math.ceil(value)) if value >= 1 or value == 0 else f"{math.ceil(value * 1000)}ms"


def _megabytes(size: int) -> str:
    return f"{math.ceil(size / MB)}M"


def render_unit(
    config: StackConfig,
    worker: WorkerConfig,
    settings: Mapping[str, Mapping[str, Any]],
    *,
    procguard: Sequence[str],
    workdir: str,
) -> RenderedFile:
    """The ``.service`` file of one worker (pure)."""
    own: Mapping[str, Any] = settings.get("systemd", {})
    limits = engine_limits(worker, settings)
    project = config.project.name
    what = f"workers.{worker.name}"
    venv = own.get("venv")
    with_target = own.get("target", True)
    deps = [unit for other in worker.depends_on for unit in unit_instances(config, other)]
    copies = worker.instances > 1
    copy = f":{_INSTANCE}" if copies else ""

    unit = [
        f"# {header(config.path.name)}",
        "[Unit]",
        f"Description={systemd_text(f'procguard worker {project}/{worker.name}')}{copy}",
        f"After={' '.join(['network-online.target', *deps])}",
        f"Wants={' '.join(['network-online.target', *deps])}",
    ]
    if with_target:
        unit.append(f"PartOf={target_name(config)}")
    if worker.start_limit:
        unit += [
            f"StartLimitIntervalSec={_seconds(worker.start_limit_interval_s)}",
            f"StartLimitBurst={worker.start_limit}",
        ]
    else:
        unit.append("StartLimitIntervalSec=0")  # start_limit = 0: restarted forever, never failed for good

    if copies and any(_INSTANCE in text for text in [*own_texts(worker), *procguard, workdir, venv or ""]):
        msg = f"{what}: the text {_INSTANCE} cannot be written in a generated systemd unit"
        raise UsageError(msg)
    credentials = _credentials(worker)
    if credentials:  # the flags name placeholders, replaced by %d/<id> once the line is escaped
        placeholders = {field: f"procguard-credential-{field}" for field in credentials}
        worker = dataclasses.replace(worker, limits=worker.limits.with_changes(**placeholders))
    argv = worker_argv(worker, procguard=procguard, name=worker.name + copy)
    if copies:
        argv = copies_argv(worker, argv, _INSTANCE)
    exec_line = systemd_exec_line(argv, what + ".command")
    for field in credentials:
        exec_line = exec_line.replace(f"procguard-credential-{field}", f"%d/{field}")
    # The main process speaks sd_notify in both modes: a function worker's
    # ProcessManager sends READY=1 and, while its loop's heartbeat is fresh,
    # WATCHDOG=1; a command worker's runner sends READY=1 once the command is
    # started and WATCHDOG=1 while it is alive and healthy (the command itself
    # gets no NOTIFY_SOCKET). Both send STOPPING=1 when a stop begins.
    service = [
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_line}",
    ]
    for field, path in credentials.items():
        service.append(f"LoadCredential={field}:{systemd_path(path, f'{what}.{field}')}")
    cwd = worker_workdir(worker, workdir)
    service.append(f"WorkingDirectory={systemd_path(cwd, what + '.cwd')}")
    user = worker.user or own.get("user")  # the worker's own account first, as under procguard up
    service.append(f"User={user}" if user else "DynamicUser=yes")
    if worker.group:
        service.append(f"Group={worker.group}")
    if worker.umask is not None:
        service.append(f"UMask={worker.umask:04o}")
    env: dict[str, str] = {"PYTHONUNBUFFERED": systemd_environment("PYTHONUNBUFFERED", "1")}
    # Programs named without a path (command = "python ...") resolve in the venv first.
    env["PATH"] = systemd_environment("PATH", search_path(procguard))
    if venv:
        env["VIRTUAL_ENV"] = systemd_environment("VIRTUAL_ENV", venv)
    # procguard's state directory (instance locks, registry) must be writable under
    # ProtectSystem=strict and must not be a symlink (procguard refuses one). With a
    # named user the stack shares StateDirectory=procguard/<project> (%S = /var/lib).
    # With DynamicUser every unit has its own uid, and systemd turns StateDirectory
    # into a symlink into /var/lib/private, so each unit gets its own
    # RuntimeDirectory (%t = /run) instead. Names are validated to [A-Za-z0-9_-].
    if user:
        state_lines = [f"StateDirectory=procguard/{project}", "StateDirectoryMode=0700"]
        env["PROCGUARD_STATE_DIR"] = f'"PROCGUARD_STATE_DIR=%S/procguard/{project}"'
    else:
        runtime = f"procguard-{project}-{worker.name}" + ("-" + _INSTANCE if copies else "")
        state_lines = [f"RuntimeDirectory={runtime}", "RuntimeDirectoryMode=0700"]
        env["PROCGUARD_STATE_DIR"] = f'"PROCGUARD_STATE_DIR=%t/{runtime}"'
    for name, value in label_environment(project, worker.name).items():
        env[name] = systemd_environment(name, value)
    if copies:
        env[INDEX_ENV] = systemd_environment(INDEX_ENV, _INSTANCE)
        env[COUNT_ENV] = systemd_environment(COUNT_ENV, str(worker.instances))
    for name, value in worker.env.items():
        env[name] = systemd_environment(name, value, what + ".env")
    service += [f"Environment={line}" for line in env.values()]
    service += [
        *state_lines,
        f"SyslogIdentifier={project}-{worker.name}" + ("-" + _INSTANCE if copies else ""),
        "StandardOutput=journal",
        "StandardError=journal",
        "",
        f"Restart={_RESTART[worker.restart]}",
        f"RestartSec={_seconds(own.get('restart_sec', max(1.0, worker.backoff_initial_s)))}",
        f"SuccessExitStatus={' '.join(str(s) for s in sorted(RECYCLE_STATUSES | SIGNAL_STOP_STATUSES))}",
    ]
    if worker.restart == "on-failure":
        # Recycles are successes (not logged as failures) but still restarted.
        service.append(f"RestartForceExitStatus={' '.join(str(s) for s in sorted(RECYCLE_STATUSES))}")
    default_watchdog = worker.limits.heartbeat_timeout_s
    if worker.run is None:
        default_watchdog = default_watchdog or COMMAND_WATCHDOG_S
    watchdog = own.get("watchdog", default_watchdog)
    if watchdog:
        service.append(f"WatchdogSec={_seconds(watchdog)}")
    service += [
        f"TimeoutStopSec={limits.systemd_timeout_stop_s}",
        "KillMode=control-group",
        "KillSignal=SIGTERM",
    ]
    if limits.systemd_memory_high is not None and limits.systemd_memory_max is not None:
        service += [
            f"MemoryHigh={_megabytes(limits.systemd_memory_high)}",
            f"MemoryMax={_megabytes(limits.systemd_memory_max)}",
            "MemorySwapMax=0",
        ]
    cpu_quota = own.get("cpu_quota")
    if cpu_quota is None and worker.limits.cpu_limit_percent is not None:
        cpu_quota = math.ceil(worker.limits.cpu_limit_percent * 1.25)
    if cpu_quota:
        service.append(f"CPUQuota={math.ceil(cpu_quota)}%")

    paths = [p for p in (venv, workdir, cwd) if p]
    protect_home = "read-only" if any((p + "/").startswith(_HOME_PREFIXES) for p in paths) else "yes"
    service += ["", f"ProtectHome={protect_home}", *_HARDENING]
    writable = own.get("read_write_paths", ())
    if writable:
        # Everything else is read-only under ProtectSystem=strict.
        service.append(f"ReadWritePaths={systemd_path_list(writable, 'deploy.systemd.read_write_paths')}")

    install = ["", "[Install]", f"WantedBy={target_name(config) if with_target else 'multi-user.target'}"]
    text = "\n".join([*unit, *service, *install]) + "\n"
    text = text.replace(_INSTANCE, "%i")
    check_systemd_lines(text, what)
    return RenderedFile(unit_name(config, worker), text)


def render_target(config: StackConfig) -> RenderedFile:
    """``<project>.target``: ``systemctl start/stop <project>.target`` for the whole stack."""
    units = " ".join(unit for name in start_order(config) for unit in unit_instances(config, name))
    text = (
        "\n".join(
            [
                f"# {header(config.path.name)}",
                "[Unit]",
                f"Description={systemd_text(f'procguard stack {config.project.name}')}",
                f"Wants={units}",
                "",
                "[Install]",
                "WantedBy=multi-user.target",
            ]
        )
        + "\n"
    )
    return RenderedFile(target_name(config), text)


def render_systemd(
    config: StackConfig,
    settings: Mapping[str, Mapping[str, Any]],
    *,
    procguard: Sequence[str],
    workdir: str,
) -> list[RenderedFile]:
    """All units of the stack (pure): one service per worker, plus the target.

    ``procguard`` is the absolute command that starts procguard (e.g.
    ``["/opt/app/venv/bin/python", "-m", "procguard"]``); ``workdir`` the
    absolute working directory (where function targets import from).
    """
    files = [
        render_unit(config, worker, settings, procguard=procguard, workdir=workdir)
        for worker in config.workers.values()
    ]
    if settings.get("systemd", {}).get("target", True):
        files.append(render_target(config))
    return files


__all__ = [
    "render_systemd",
    "render_target",
    "render_unit",
    "systemd_specifiers",
    "target_name",
    "unit_instances",
    "unit_name",
]
