"""supervisord: one ``<project>.conf`` with a ``[group:<project>]`` and a program per worker.

supervisord's own defaults lose processes and work: ``stopasgroup`` and
``killasgroup`` are off (grandchildren survive a stop) and ``stopwaitsecs``
is 10 s (shorter than a 30 s graceful stop). The generated programs turn
both group flags on, wait longer than the worker's grace plus drain delay,
and list the planned-recycle statuses as expected exits.

A worker with ``instances = N`` is one program with ``numprocs = N``
(processes ``<worker>_1`` .. ``<worker>_N``): each runs under the instance
name ``<worker>:K`` (one lock each), with ``PROCGUARD_INSTANCE_INDEX=K`` and
``PROCGUARD_INSTANCES=N`` and its own log files. supervisord's ``%(process_num)d``
cannot add, so with a health port the command goes through ``/bin/sh -c
'exec ...'`` to give copy K the port P+K-1 (``exec``: the shell becomes the
worker, nothing stays in between).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import StackConfig, WorkerConfig, own_texts, start_order, worker_argv
from ..copies import COUNT_ENV, INDEX_ENV
from ..errors import UsageError
from ..reasons import RECYCLE_STATUSES, SIGNAL_STOP_STATUSES
from ..snapshot import label_environment
from .escape import supervisor_command, supervisor_environment, supervisor_value
from .settings import copies_argv, engine_limits, search_path, worker_workdir
from .writer import RenderedFile, header

#: autorestart per restart policy. "on-failure" restarts "unexpected" exits,
#: so the recycle statuses are left out of exitcodes for it (see below).
_AUTORESTART = {"always": "true", "on-failure": "unexpected", "never": "false"}

DEFAULT_STARTSECS = 2.0

#: Stands for supervisord's ``%(process_num)d`` until the escaping is done (it escapes every ``%``).
_NUM = "PROCGUARDPROCESSNUM"



def conf_name(config: StackConfig) -> str:
    """``<project>.conf`` (for supervisord's ``[include] files``)."""
    return f"{config.project.name}.conf"


#: supervisord has no "retry forever": start_limit = 0 becomes this many retries (its delay grows
#: by a second each time, so this outlasts any outage).
SUPERVISORD_FOREVER = 1_000_000


def _check_account(worker: WorkerConfig) -> None:
    if worker.group:
        msg = (
            f"workers.{worker.name}.group: supervisord has no group per program (it runs a program with its"
            " user's own group): remove group, or deploy to systemd"
        )
        raise UsageError(msg)


def _exitcodes(worker: WorkerConfig) -> str:
    codes = {0} | set(SIGNAL_STOP_STATUSES)
    if worker.restart != "on-failure":
        # With autorestart=unexpected a recycle must count as unexpected to be
        # restarted; with "always"/"never" it is an expected, clean exit.
        codes |= set(RECYCLE_STATUSES)
    return ",".join(str(code) for code in sorted(codes))


def render_program(
    config: StackConfig,
    worker: WorkerConfig,
    settings: Mapping[str, Mapping[str, Any]],
    *,
    procguard: Sequence[str],
    workdir: str,
    priority: int,
) -> list[str]:
    """The ``[program:<worker>]`` section, as lines (pure)."""
    own: Mapping[str, Any] = settings.get("supervisor", {})
    _check_account(worker)
    limits = engine_limits(worker, settings)
    what = f"workers.{worker.name}"
    venv = own.get("venv")
    log_dir = own.get("log_dir", f"/var/log/{config.project.name}")
    prefix = f"{log_dir}/{config.project.name}-{worker.name}"
    log_key = "deploy.supervisor.log_dir"  # the only part of the log file names a user chooses
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
    env["PATH"] = search_path(procguard)
    if venv:
        env["VIRTUAL_ENV"] = venv
    env.update(label_environment(config.project.name, worker.name))
    env.update(worker.env)
    copies = worker.instances > 1
    name = f"{worker.name}:{_NUM}" if copies else worker.name
    texts = [*own_texts(worker), *procguard, *env.values(), prefix, workdir]
    if copies and any(_NUM in text for text in texts):
        msg = f"{what}: the text {_NUM} cannot be written in a generated supervisord file"
        raise UsageError(msg)
    argv = worker_argv(worker, procguard=procguard, name=name)
    if copies:
        env.update({INDEX_ENV: _NUM, COUNT_ENV: str(worker.instances)})
        argv = copies_argv(worker, argv, _NUM)
        prefix += f"_{_NUM}"
    lines = [
        "",
        f"[program:{worker.name}]",
        f"command={supervisor_command(argv, what + '.command')}",
        f"directory={supervisor_value(worker_workdir(worker, workdir), what + '.cwd')}",
    ]
    user = worker.user or own.get("user")  # the worker's own account first, as under procguard up
    if user:
        lines.append(f"user={user}")
    if worker.umask is not None:
        lines.append(f"umask={worker.umask:03o}")
    lines += [
        f"environment={supervisor_environment(env, what)}",
        f"priority={priority}",
        "autostart=true",
        f"autorestart={_AUTORESTART[worker.restart]}",
        f"exitcodes={_exitcodes(worker)}",
        f"startsecs={math.ceil(own.get('startsecs', DEFAULT_STARTSECS))}",
        f"startretries={worker.start_limit or SUPERVISORD_FOREVER}",
        "stopsignal=TERM",
        f"stopwaitsecs={limits.supervisor_stopwait_s}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=false",
        f"stdout_logfile={supervisor_value(prefix + '.out.log', log_key, interpolations=2)}",
        f"stdout_logfile_maxbytes={config.project.log_max_bytes}",
        f"stdout_logfile_backups={config.project.log_backups}",
        f"stderr_logfile={supervisor_value(prefix + '.err.log', log_key, interpolations=2)}",
        f"stderr_logfile_maxbytes={config.project.log_max_bytes}",
        f"stderr_logfile_backups={config.project.log_backups}",
    ]
    if copies:
        lines[2:2] = [
            "process_name=%(program_name)s_%(process_num)d",
            f"numprocs={worker.instances}",
            "numprocs_start=1",
        ]
        lines = [line.replace(_NUM, "%(process_num)d") for line in lines]
    return lines


def render_supervisor(
    config: StackConfig,
    settings: Mapping[str, Mapping[str, Any]],
    *,
    procguard: Sequence[str],
    workdir: str,
) -> list[RenderedFile]:
    """The stack's supervisord include file (pure).

    Programs get increasing ``priority`` in dependency order, so supervisord
    starts a dependency first and stops it last.
    """
    order = start_order(config)
    lines = [
        f"; {header(config.path.name)}",
        f"; Include it from supervisord.conf: [include] files = /path/to/{conf_name(config)}",
        f"[group:{config.project.name}]",
        f"programs={','.join(order)}",
    ]
    for index, name in enumerate(order):
        lines += render_program(
            config,
            config.workers[name],
            settings,
            procguard=procguard,
            workdir=workdir,
            priority=100 + 10 * index,
        )
    return [RenderedFile(conf_name(config), "\n".join(lines) + "\n")]
