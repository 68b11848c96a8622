"""``procguard.toml``, parsed and validated once into typed, frozen settings.

Everything downstream (``procguard up``, ``procguard check``, the deploy
renderers) works from :class:`StackConfig` and never sees raw TOML: a value
is converted to seconds, bytes or a percentage here, once (bare numbers keep
the seed's units), so a typo in a config is reported before anything
starts, with the file, the key and what is accepted
(:class:`~procguard.errors.ConfigError`, exit status 2). A worker's
lifecycle keys (``memory_limit``, ``grace``, ...) are the settings of
:mod:`procguard.limits`, declared there once and parsed into the worker's
:class:`~procguard.limits.WorkerLimits`; the keys here are the stack's own
(how to run the worker, restarts, dependencies).

Layout::

    [project]            # name, status_port, status_host, status_tls_cert/key, log_max_bytes, log_backups
    [defaults]           # any worker key; merged under every worker (env tables merge too)
    [workers.NAME]       # run = "pkg.mod:fn"  or  command = "prog --flag" / ["prog", "--flag"]
    [deploy.systemd]     # raw tables, validated by procguard.deploy
    [deploy.supervisor]
    [deploy.kubernetes]
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shlex
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, get_args

from .autoscale import AutoscaleRule, parse_rule
from .copies import MAX_INSTANCES, copy_port
from .copies import parse_count as parse_instances
from .errors import ConfigError, UsageError, shown
from .limits import SETTINGS, SETTINGS_BY_KEY, Setting, WorkerLimits
from .listen_fds import ListenAddress, parse_listen
from .units import MB, parse_count, parse_duration, parse_port, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

logger = logging.getLogger(__name__)

RestartPolicy = Literal["always", "on-failure", "never"]
RESTART_POLICIES: tuple[str, ...] = get_args(RestartPolicy)
#: What a worker waits for from one it depends on: alive through its start period, or /ready 200.
DependsOn = Literal["running", "ready"]
DEPENDS_CONDITIONS: tuple[str, ...] = get_args(DependsOn)

DEFAULT_FILENAME = "procguard.toml"

#: Worker and project names end up in file names, unit names and Kubernetes
#: object names, so they are kept to a set every one of those accepts.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")
NAME_ACCEPTED = "letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters"

_TARGET_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")
#: ``procguard logs supervisor`` is the supervisor's own log (``supervisor.log`` beside the
#: workers' logs, which a worker of that name would write into).
SUPERVISOR_NAME = "supervisor"
#: Worker names the commands give a meaning of their own, and why.
RESERVED_NAMES = {
    "all": "'all' selects every worker in procguard start/stop/restart/signal/logs",
    SUPERVISOR_NAME: "'supervisor' is the supervisor's own name: 'procguard logs supervisor' shows its log",
}
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

DEPLOY_TARGETS: tuple[str, ...] = ("systemd", "supervisor", "kubernetes")


@dataclass(frozen=True)
class WorkerConfig:
    """One ``[workers.NAME]`` table with ``[defaults]`` merged under it.

    ``limits`` holds the lifecycle settings (base units, ``None`` = no limit);
    the other fields say how the stack runs the worker. Exactly one of
    ``run`` (function mode) and ``command`` (an external program) is set. A
    relative ``cwd`` is relative to the config file's directory (``procguard
    up``) or to the deploy working directory (``procguard deploy``).
    Durations are seconds. ``instances`` is how many copies run
    (:mod:`procguard.copies`); ``limits.health_port`` is the first copy's.
    ``env`` already holds what the ``env_file`` files say, under the
    table's own values. ``depends_on`` maps each worker this one waits for
    to what it waits for: ``"running"`` (alive through its start period)
    or ``"ready"`` (its health port's /ready answers 200).
    """

    name: str
    run: str | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    env_file: tuple[str, ...] = ()
    cwd: str | None = None
    limits: WorkerLimits = field(default_factory=WorkerLimits)
    restart: RestartPolicy = "always"
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_reset_s: float = 60.0
    start_limit: int = 5
    start_limit_interval_s: float = 60.0
    depends_on: Mapping[str, DependsOn] = field(default_factory=lambda: MappingProxyType({}))
    instances: int = 1
    #: ``[workers.NAME.autoscale]`` (None: a fixed number of copies).
    autoscale: AutoscaleRule | None = None
    user: str | None = None
    group: str | None = None
    umask: int | None = None
    listen: ListenAddress | None = None
    ready_after_s: float = 2.0
    ready_timeout_s: float = 60.0

    @property
    def most_copies(self) -> int:
        """The most copies the worker may run: ``autoscale``'s max, else ``instances``."""
        return self.autoscale.max if self.autoscale is not None else self.instances

    def waits_for_ready(self, other: str) -> bool:
        """True when this worker starts only once ``other`` answers /ready with 200."""
        return self.depends_on.get(other) == "ready"

    @property
    def mode(self) -> str:
        """``"function"`` (``run =``) or ``"command"``."""
        return "function" if self.run is not None else "command"


@dataclass(frozen=True)
class ProjectConfig:
    """The ``[project]`` table: what the whole stack shares."""

    name: str
    status_port: int = 0
    status_host: str = "127.0.0.1"
    status_tls_cert: str | None = None
    status_tls_key: str | None = None
    log_max_bytes: int = 10 * MB
    log_backups: int = 3


@dataclass(frozen=True)
class StackConfig:
    """A whole validated ``procguard.toml``."""

    path: pathlib.Path
    project: ProjectConfig
    workers: Mapping[str, WorkerConfig]
    deploy: Mapping[str, Mapping[str, Any]]


# ---------------------------------------------------------------------------
# key -> converter tables (each key declared once; the docs list these)


class _Ctx:
    """Where a value came from, so every error names file and key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, path=self.path, key=key)


def _wrap(convert: Callable[[object], Any]) -> Callable[[_Ctx, str, object], Any]:
    def converter(ctx: _Ctx, key: str, value: object) -> Any:
        try:
            return convert(value)
        except UsageError as error:
            raise ctx.error(key, str(error)) from None

    return converter


def _str(ctx: _Ctx, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ctx.error(key, f"{shown(value)} is not a string (use a quoted string)")
    if "\x00" in value:
        raise ctx.error(key, f"{shown(value)} contains a NUL character (not accepted)")
    return value


def _nonempty_str(ctx: _Ctx, key: str, value: object) -> str:
    text = _str(ctx, key, value)
    if not text.strip():
        raise ctx.error(key, "is empty (use a non-empty string)")
    return text


def _name(ctx: _Ctx, key: str, value: object) -> str:
    text = _str(ctx, key, value)
    if not NAME_RE.match(text):
        raise ctx.error(key, f"{shown(text)} is not a valid name (use {NAME_ACCEPTED})")
    return text


def _str_list(ctx: _Ctx, key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return _split(ctx, key, value)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ctx.error(key, f'{shown(value)} is not a list of strings (use ["a", "b"] or a string)')
    for item in value:
        _str(ctx, key, item)
    return tuple(value)


def _split(ctx: _Ctx, key: str, value: str) -> tuple[str, ...]:
    _str(ctx, key, value)
    try:
        return tuple(shlex.split(value))
    except ValueError as error:
        raise ctx.error(key, f"{shown(value)} cannot be split like a shell command ({error})") from None


def _command(ctx: _Ctx, key: str, value: object) -> tuple[str, ...]:
    argv = _str_list(ctx, key, value)
    if not argv or not argv[0].strip():
        raise ctx.error(key, "is empty (use a program and its arguments)")
    return argv


def _target(ctx: _Ctx, key: str, value: object) -> str:
    text = _str(ctx, key, value).strip()
    if not _TARGET_RE.match(text):
        raise ctx.error(key, f'{shown(text)} is not a function target (use "package.module:function")')
    return text


def _env(ctx: _Ctx, key: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ctx.error(key, f'{shown(value)} is not a table (use env = {{ NAME = "value" }})')
    env: dict[str, str] = {}
    for name, item in value.items():
        if not _ENV_NAME_RE.match(name):
            raise ctx.error(f"{key}.{name}", "is not a valid variable name (use letters, digits and '_')")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ctx.error(f"{key}.{name}", f"{shown(item)} is not a string or number")
        text = item if isinstance(item, str) else str(item)
        if "\x00" in text:
            raise ctx.error(f"{key}.{name}", "contains a NUL character (not accepted)")
        env[name] = text
    return env


def _paths(ctx: _Ctx, key: str, value: object) -> tuple[str, ...]:
    """One path or a list of paths (later ones win), each a non-empty string."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        accepted = 'use ".env" or [".env", "local.env"]'
        raise ctx.error(key, f"{shown(value)} is not a path or a list of paths ({accepted})")
    return tuple(_nonempty_str(ctx, key, item) for item in items)


def _depends_on(ctx: _Ctx, key: str, value: object) -> Mapping[str, str]:
    """A list of names (each waited for running) or a table ``{ name = "running" | "ready" }``."""
    if isinstance(value, dict):
        accepted = " or ".join(f'"{c}"' for c in DEPENDS_CONDITIONS)
        for name, condition in value.items():
            if condition not in DEPENDS_CONDITIONS:
                raise ctx.error(f"{key}.{name}", f"{shown(condition)} is not a condition (use {accepted})")
        return MappingProxyType(dict(value))
    return MappingProxyType(dict.fromkeys(_str_list(ctx, key, value), "running"))


_POSIX_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?\Z", re.IGNORECASE)


def _account(ctx: _Ctx, key: str, value: object) -> str:
    """A user or group: a POSIX name or a numeric id (looked up when the worker starts)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    text = _str(ctx, key, value).strip()
    if not (_POSIX_NAME_RE.match(text) or text.isdigit()):
        raise ctx.error(key, f"{shown(value)} is not a user or group (use a name like 'app' or a numeric id)")
    return text


def _umask(ctx: _Ctx, key: str, value: object) -> int:
    """An octal mask: ``"027"`` / ``"0o027"`` as text, or the number written as an integer (``0o027``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"(0o)?[0-7]{1,4}", value.strip()):
        number = int(value.strip().removeprefix("0o"), 8)
    else:
        number = -1
    if not 0 <= number <= 0o777:
        raise ctx.error(key, f'{shown(value)} is not a umask (use octal text like "027", or 0o027)')
    return number


_HOST_RE = re.compile(r"[A-Za-z0-9._:%-]{1,253}\Z")


def _host(ctx: _Ctx, key: str, value: object) -> str:
    text = _str(ctx, key, value)
    if not _HOST_RE.match(text):
        accepted = "use e.g. 127.0.0.1, 0.0.0.0, ::1 or a host name"
        raise ctx.error(key, f"{shown(text)} is not an address ({accepted})")
    return text


def _autoscale(ctx: _Ctx, key: str, value: object) -> AutoscaleRule:
    try:
        return parse_rule(_table(ctx, key, value))
    except UsageError as error:
        inner, _, message = str(error).partition(": ")
        raise ctx.error(f"{key}.{inner}", message) from None


def _restart(ctx: _Ctx, key: str, value: object) -> str:
    if value not in RESTART_POLICIES:
        accepted = ", ".join(RESTART_POLICIES)
        raise ctx.error(key, f"{shown(value)} is not a restart policy (use one of: {accepted})")
    return str(value)


def _none_if_zero(convert: Callable[[object], Any]) -> Callable[[object], Any]:
    def converter(value: object) -> Any:
        result = convert(value)
        return None if result == 0 else result

    return converter


def _positive(convert: Callable[[object], float], accepted: str) -> Callable[[object], float]:
    def converter(value: object) -> float:
        result = convert(value)
        if result <= 0:
            raise UsageError(f"{shown(value)} must be greater than zero (use {accepted})")
        return result

    return converter


_Converter = Callable[[_Ctx, str, object], Any]


class Key(NamedTuple):
    """One TOML key, declared once: the field it fills, its converter, its documentation."""

    field: str
    convert: _Converter
    doc: str


def _lifecycle(setting: Setting) -> _Converter:
    def converter(ctx: _Ctx, key: str, value: object) -> Any:
        try:
            return setting.parse(value)
        except UsageError as error:
            raise ctx.error(key, str(error)) from None

    return converter


#: The stack's own ``[workers.NAME]`` / ``[defaults]`` keys: how to run the worker.
_STACK_KEYS: dict[str, Key] = {
    "run": Key("run", _target, '`"package.module:function"` called every interval (function mode)'),
    "command": Key("command", _command, "a program: a string split like a shell, or a list taken as is"),
    "args": Key("args", _str_list, "extra arguments appended to `command`"),
    "env": Key("env", _env, "environment variables (a table; `[defaults]` and worker tables merge)"),
    "env_file": Key(
        "env_file",
        _paths,
        "dotenv file(s) (`NAME=value` lines, quotes, `#` comments, `export`), relative to the config file's"
        " directory, read at `check`, `up` and `reload`; `env` wins over them, a later file over an earlier",
    ),
    "cwd": Key("cwd", _nonempty_str, "working directory, relative to the config file's directory"),
    "restart": Key("restart", _restart, "`always` (default), `on-failure` or `never`"),
    "backoff_initial": Key("backoff_initial_s", _wrap(parse_duration), "first restart delay; default 0.5s"),
    "backoff_max": Key("backoff_max_s", _wrap(parse_duration), "longest restart delay; default 30s"),
    "backoff_reset": Key(
        "backoff_reset_s", _wrap(parse_duration), "running this long resets the backoff; default 60s"
    ),
    "start_limit": Key(
        "start_limit",
        _wrap(parse_count),
        "failed starts within `start_limit_interval` before the worker is FATAL; default 5;"
        " 0 = never FATAL: retry forever, paced by the backoff",
    ),
    "start_limit_interval": Key(
        "start_limit_interval_s",
        _wrap(_positive(parse_duration, "a duration like 60s")),
        "window of `start_limit`; default 60s",
    ),
    "depends_on": Key(
        "depends_on",
        _depends_on,
        'workers started before (and stopped after) this one: a list (each waited for until it is running),'
        ' or a table `{ api = "ready" }` to wait until its health port\'s /ready answers 200',
    ),
    "instances": Key(
        "instances",
        _wrap(parse_instances),
        f"copies of this worker, each its own process `NAME:K` with health port P+K-1; 1 to"
        f" {MAX_INSTANCES}, default 1 (in `[workers.NAME]` only)",
    ),
    "autoscale": Key(
        "autoscale",
        _autoscale,
        "`[workers.NAME.autoscale]`: `min`, `max`, `metric`, `target`, `scale_down_after` (default 5m),"
        " `interval` (default 5s): run ceil(sum of `metric` over the copies / `target`) copies within"
        " [min, max]; a `run` worker with a `health_port` (in `[workers.NAME]` only)",
    ),
    "user": Key(
        "user",
        _account,
        "run the worker as this user (name or id) under `procguard up` started as root; its groups too",
    ),
    "group": Key("group", _account, "run the worker with this group (default: the user's own group)"),
    "umask": Key("umask", _umask, 'file mode mask of the worker, octal text like "027"; default: inherited'),
    "listen": Key(
        "listen",
        _wrap(parse_listen),
        '`"HOST:PORT"` bound once by `procguard up` and handed to every copy and generation as fd 3'
        " (`LISTEN_FDS`/`LISTEN_PID`, systemd's protocol); in `[workers.NAME]` only",
    ),
    "ready_after": Key(
        "ready_after_s",
        _wrap(parse_duration),
        "`procguard reload NAME`: a new process is ready once it has run this long (and, for a `run`"
        " worker with a health port, its /ready answers 200); default 2s",
    ),
    "ready_timeout": Key(
        "ready_timeout_s",
        _wrap(_positive(parse_duration, "a duration like 60s")),
        "`procguard reload NAME`: a new process not ready within this is stopped and the old one kept;"
        " default 60s",
    ),
}

#: Keys that describe one worker and have no meaning in ``[defaults]``.
_WORKER_ONLY = frozenset({"instances", "autoscale", "listen"})

#: The lifecycle keys, from their one declaration in procguard.limits.
LIFECYCLE_KEYS: dict[str, Key] = {
    s.key: Key(s.field, _lifecycle(s), s.help) for s in SETTINGS if s.toml
}

#: Every ``[workers.NAME]`` / ``[defaults]`` key.
WORKER_KEYS: dict[str, Key] = {**_STACK_KEYS, **LIFECYCLE_KEYS}

#: Lifecycle keys that mean something only for a loop procguard runs (``run =`` workers).
_LOOP_ONLY: frozenset[str] = frozenset(s.field for s in SETTINGS if s.applies == "loop")
#: Lifecycle keys that mean something only for a program run from outside (``command =`` workers).
_COMMAND_ONLY: frozenset[str] = frozenset(s.field for s in SETTINGS if s.applies == "command")

#: ``[project]`` keys.
PROJECT_KEYS: dict[str, Key] = {
    "name": Key(
        "name", _name, "stack name (unit, group, object names); default: the config's directory name"
    ),
    "status_port": Key(
        "status_port", _wrap(parse_port), "`procguard up` status page and API; default 0 = off"
    ),
    "status_host": Key("status_host", _host, "address of the status page; default 127.0.0.1"),
    "status_tls_cert": Key(
        "status_tls_cert",
        _lifecycle(SETTINGS_BY_KEY["health_tls_cert"]),
        "serve the status page, `/api/workers` and `/metrics` over HTTPS with this PEM certificate "
        "(plain HTTP refused); needs status_tls_key; default: plain HTTP",
    ),
    "status_tls_key": Key(
        "status_tls_key", _lifecycle(SETTINGS_BY_KEY["health_tls_key"]),
        "the PEM private key of status_tls_cert"
    ),
    "log_max_bytes": Key(
        "log_max_bytes",
        _wrap(lambda v: parse_size(v, default_unit="B")),
        "rotate a worker's log at this size; bare number = bytes; default 10MB",
    ),
    "log_backups": Key("log_backups", _wrap(parse_count), "rotated log files kept per worker; default 3"),
}


def reference_markdown() -> str:
    """The procguard.toml keys of the stack as Markdown tables, generated from the declarations above.

    The lifecycle keys (``memory_limit``, ``grace``, ...) have their own table,
    :func:`procguard.limits.reference_markdown`.
    """
    lines = ["| `[project]` key | meaning |", "|---|---|"]
    lines += [f"| `{key}` | {spec.doc} |" for key, spec in PROJECT_KEYS.items()]
    lines += ["", "| `[workers.NAME]` / `[defaults]` key | meaning |", "|---|---|"]
    lines += [f"| `{key}` | {spec.doc} |" for key, spec in _STACK_KEYS.items()]
    return "\n".join(lines) + "\n"


_SECTIONS = ("project", "defaults", "workers", "deploy")
_LIFECYCLE_FIELDS = frozenset(s.field for s in SETTINGS)


def _accepted(keys: Sequence[str]) -> str:
    return ", ".join(sorted(keys))


def _table(ctx: _Ctx, key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ctx.error(key, f"{shown(value)} is not a table (use [{shown(key, quote=False)}])")
    return value


def _convert(ctx: _Ctx, prefix: str, table: Mapping[str, Any], keys: Mapping[str, Key]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in keys:
            raise ctx.error(f"{prefix}.{key}", f"unknown key (use one of: {_accepted(list(keys))})")
        spec = keys[key]
        values[spec.field] = spec.convert(ctx, f"{prefix}.{key}", raw)
    return values


def _default_project_name(path: pathlib.Path) -> str:
    """The config file's directory name, made usable as a unit/file name."""
    raw = path.parent.name or "procguard"
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-_")[:63]
    return name or "procguard"


def _read_env_files(ctx: _Ctx, key: str, base: pathlib.Path, files: Sequence[str]) -> dict[str, str]:
    """The variables of ``files`` (relative to ``base``), a later file winning; one line per mistake."""
    from .dotenv import parse_dotenv

    env: dict[str, str] = {}
    for name in files:
        path = base / name
        try:
            data = _read_config_bytes(path, hint="")
            text = data.decode("utf-8")
        except ConfigError as error:
            raise ctx.error(key, str(error)) from None
        except UnicodeDecodeError:
            raise ctx.error(key, f"{path}: cannot read the file as UTF-8 text") from None
        try:
            env.update(parse_dotenv(text, where=str(path)))
        except UsageError as error:
            raise ctx.error(key, str(error)) from None
    return env


def _check_depends(ctx: _Ctx, workers: Mapping[str, WorkerConfig]) -> None:
    for worker in workers.values():
        for other in worker.depends_on:
            if other == worker.name or other not in workers:
                known = [n for n in workers if n != worker.name]
                raise ctx.error(
                    f"workers.{worker.name}.depends_on",
                    f"{shown(other)} is not another worker of this file"
                    f" (use one of: {_accepted(known) or 'none'})",
                )
            if worker.waits_for_ready(other) and not workers[other].limits.health_port:
                raise ctx.error(
                    f"workers.{worker.name}.depends_on.{other}",
                    f"{other} has no health_port, so its readiness cannot be read"
                    f' (give {other} a health_port, or use "running")',
                )
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*trail[trail.index(name) :], name])
            raise ctx.error(f"workers.{name}.depends_on", f"dependency cycle {cycle} (remove one of these)")
        state[name] = 1
        for other in workers[name].depends_on:
            visit(other, [*trail, name])
        state[name] = 2

    for name in workers:
        visit(name, [])


#: Keys that name a file; a relative path is relative to the config file's directory.
_PATH_KEYS = (
    *(s.field for s in SETTINGS if s.kind == "path"),
    "status_tls_cert",
    "status_tls_key",
)


def _beside(config_path: pathlib.Path, value: str) -> str:
    return str(config_path.parent / value)  # an absolute value stays as it is


def port_owners(
    project: ProjectConfig, workers: Mapping[str, WorkerConfig], *, counts: Mapping[str, int] | None = None
) -> dict[int, str]:
    """Which port is whose: the status port and each copy's health port (P+K-1).

    ``counts`` overrides a worker's number of copies (``procguard scale``
    checks the ports of the count it is asked for). The first owner of a
    port wins; :func:`port_clash` says which port is taken twice.
    """
    return _owners(project, workers, counts or {})[0]


def _owners(
    project: ProjectConfig, workers: Mapping[str, WorkerConfig], counts: Mapping[str, int]
) -> tuple[dict[int, str], tuple[str, int, str] | None]:
    owners: dict[int, str] = {}
    clash: tuple[str, int, str] | None = None
    if project.status_port:
        owners[project.status_port] = "project.status_port"
    for worker in workers.values():
        if worker.listen is not None:
            who = f"workers.{worker.name}.listen"
            if worker.listen.port in owners and clash is None:
                clash = (who, worker.listen.port, owners[worker.listen.port])
            owners.setdefault(worker.listen.port, who)
    for worker in workers.values():
        count = counts.get(worker.name, worker.most_copies)
        for index in range(1, count + 1):
            port = copy_port(worker.limits.health_port, index)
            if port is None:
                break
            who = f"workers.{worker.name}.health_port"
            if count > 1:
                who += f" (copy {index} of {count})"
            if port in owners or port > 65535:
                if clash is None:
                    clash = (who, port, owners.get(port, "nothing: past 65535"))
                continue
            owners[port] = who
    return owners, clash


def port_clash(
    project: ProjectConfig, workers: Mapping[str, WorkerConfig], *, counts: Mapping[str, int] | None = None
) -> str | None:
    """The first port two owners share (or past 65535), in one line naming both; None if none."""
    clash = _owners(project, workers, counts or {})[1]
    if clash is None:
        return None
    who, port, other = clash
    if port > 65535:
        return f"{who}: port {port} is past 65535 (use a lower health_port or fewer instances)"
    fewer = " or fewer instances" if "(copy " in who + other else ""
    return f"{who}: port {port} is already used by {other} (use a free port{fewer})"


def _check_ports(ctx: _Ctx, project: ProjectConfig, workers: Mapping[str, WorkerConfig]) -> None:
    clash = port_clash(project, workers)
    if clash is not None:
        raise ConfigError(clash, path=ctx.path)


def _check_autoscale(
    ctx: _Ctx, prefix: str, values: dict[str, Any], limits: WorkerLimits, *, given_instances: bool
) -> None:
    """An autoscaled worker publishes its metric (a ``run`` worker) where it can be read (a
    ``health_port``); it starts ``instances`` copies (default ``min``), within [min, max]."""
    rule: AutoscaleRule = values["autoscale"]
    if values.get("run") is None:
        msg = (
            "needs a run worker (the copies publish the metric with set_gauge; a command's health port"
            " is answered by procguard, which cannot see the program's gauges)"
        )
        raise ctx.error(f"{prefix}.autoscale", msg)
    if not limits.health_port:
        raise ctx.error(
            f"{prefix}.autoscale", "needs a health_port (copy K publishes its metric on port P+K-1; add one)"
        )
    if not given_instances:
        values["instances"] = rule.min
    elif not rule.min <= values["instances"] <= rule.max:
        msg = f"{values['instances']} is outside autoscale's {rule.min}..{rule.max} (use a count within)"
        raise ctx.error(f"{prefix}.instances", msg)


def parse_config(text: str, *, path: str | pathlib.Path = DEFAULT_FILENAME) -> StackConfig:
    """Parse and validate the text of a ``procguard.toml``; pure (reads no file).

    Raises :class:`~procguard.errors.ConfigError` naming ``path``, the key and
    what is accepted for the first mistake found.
    """
    file_path = pathlib.Path(path).absolute()
    ctx = _Ctx(str(path))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML ({error})", path=str(path)) from None

    for section in data:
        if section not in _SECTIONS:
            raise ctx.error(section, f"unknown section (use one of: {', '.join(_SECTIONS)})")

    project_values = _convert(ctx, "project", _table(ctx, "project", data.get("project", {})), PROJECT_KEYS)
    project_values.setdefault("name", _default_project_name(file_path))
    for key in _PATH_KEYS:
        if project_values.get(key) is not None:
            project_values[key] = _beside(file_path, project_values[key])
    if (project_values.get("status_tls_cert") is None) != (project_values.get("status_tls_key") is None):
        raise ctx.error("project", "status_tls_cert and status_tls_key go together (give both, or neither)")
    project = ProjectConfig(**project_values)

    raw_defaults = _table(ctx, "defaults", data.get("defaults", {}))
    for key in sorted(_WORKER_ONLY & set(raw_defaults)):
        raise ctx.error(f"defaults.{key}", "applies to one worker only (put it in [workers.NAME])")
    defaults = _convert(ctx, "defaults", raw_defaults, WORKER_KEYS)

    raw_workers = _table(ctx, "workers", data.get("workers", {}))
    if not raw_workers:
        raise ctx.error("workers", "no workers defined (add a [workers.NAME] table with run or command)")
    workers: dict[str, WorkerConfig] = {}
    for name, raw in raw_workers.items():
        prefix = f"workers.{name}"
        if not NAME_RE.match(name):
            raise ctx.error(prefix, f"{shown(name)} is not a valid worker name (use {NAME_ACCEPTED})")
        if name in RESERVED_NAMES:
            raise ctx.error(prefix, f"{shown(name)} is reserved ({RESERVED_NAMES[name]}; use another name)")
        own = _convert(ctx, prefix, _table(ctx, prefix, raw), WORKER_KEYS)
        values = {**defaults, **own}
        if "env" in defaults and "env" in own:
            values["env"] = {**defaults["env"], **own["env"]}
        from_files = _read_env_files(ctx, f"{prefix}.env_file", file_path.parent, values.get("env_file", ()))
        values["env"] = MappingProxyType({**from_files, **values.get("env", {})})
        has_run, has_command = values.get("run") is not None, values.get("command") is not None
        if has_run == has_command:
            which = "both" if has_run else "neither"
            raise ctx.error(
                prefix,
                f'{which} of run and command given (use run = "package.module:function" '
                'or command = "program args", exactly one)',
            )
        lifecycle = {f: values.pop(f) for f in list(values) if f in _LIFECYCLE_FIELDS}
        if has_command:
            for key in own:
                if key in LIFECYCLE_KEYS and LIFECYCLE_KEYS[key].field in _LOOP_ONLY:
                    raise ctx.error(
                        f"{prefix}.{key}", "applies to run workers only, not to a command (remove it here)"
                    )
            # [defaults] values for run workers do not concern a command.
            lifecycle = {f: v for f, v in lifecycle.items() if f not in _LOOP_ONLY}
        else:
            for key in own:
                if key in LIFECYCLE_KEYS and LIFECYCLE_KEYS[key].field in _COMMAND_ONLY:
                    raise ctx.error(
                        f"{prefix}.{key}",
                        "applies to command workers only: a run worker is stopped by procguard's own"
                        " runner (remove it here)",
                    )
            lifecycle = {f: v for f, v in lifecycle.items() if f not in _COMMAND_ONLY}
        if has_run and values.get("args"):
            raise ctx.error(f"{prefix}.args", "args apply to command workers only (put them in command)")
        if values.get("backoff_max_s", 30.0) < values.get("backoff_initial_s", 0.5):
            raise ctx.error(f"{prefix}.backoff_max", "is smaller than backoff_initial (use a larger value)")
        for key in _PATH_KEYS:
            if lifecycle.get(key) is not None:
                lifecycle[key] = _beside(file_path, lifecycle[key])
        try:
            limits = WorkerLimits().with_changes(**lifecycle)
        except UsageError as error:
            raise ctx.error(prefix, str(error)) from None
        if "autoscale" in values:
            _check_autoscale(ctx, prefix, values, limits, given_instances="instances" in own)
        workers[name] = WorkerConfig(name=name, limits=limits, **values)

    _check_depends(ctx, workers)
    _check_ports(ctx, project, workers)

    raw_deploy = _table(ctx, "deploy", data.get("deploy", {}))
    deploy: dict[str, Mapping[str, Any]] = {}
    for target, table in raw_deploy.items():
        if target not in DEPLOY_TARGETS:
            accepted = ", ".join(DEPLOY_TARGETS)
            raise ctx.error(f"deploy.{target}", f"unknown deploy target (use one of: {accepted})")
        deploy[target] = MappingProxyType(dict(_table(ctx, f"deploy.{target}", table)))

    return StackConfig(
        path=file_path,
        project=project,
        workers=MappingProxyType(workers),
        deploy=MappingProxyType(deploy),
    )


#: The most a procguard.toml may hold. A real one is a few kilobytes; the
#: bound keeps a wrong ``-c`` (a log, an image, ``/dev/zero``) from being read
#: into memory, or forever.
MAX_CONFIG_BYTES = 1 << 20


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def _read_config_bytes(file_path: pathlib.Path, *, hint: str) -> bytes:
    """The file's bytes: a regular file (symlinks followed) of at most MAX_CONFIG_BYTES.

    Opened without blocking (a named pipe with no writer would otherwise
    hang the open) and checked with ``fstat`` on the open descriptor, so
    what is read is what was checked.
    """
    where = str(file_path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(file_path, flags)
    except FileNotFoundError:
        raise ConfigError(f"no such file{hint}", path=where) from None
    except OSError as error:
        raise ConfigError(f"cannot open the file ({error.strerror})", path=where) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            msg = f"is {_file_kind(mode)}, not a regular file (use a procguard.toml file)"
            raise ConfigError(msg, path=where)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:  # st_size is not trusted: /proc files report 0
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise ConfigError(f"cannot read the file ({error.strerror})", path=where) from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        limit = MAX_CONFIG_BYTES // (1 << 20)
        msg = f"is larger than {limit} MiB, the most a config may be (is it the right file?)"
        raise ConfigError(msg, path=where)
    return b"".join(chunks)


def load_config(path: str | pathlib.Path | None = None) -> StackConfig:
    """Read and validate ``path`` (default: ``./procguard.toml``).

    A missing or unreadable file, anything but a regular file (a directory,
    a device, a pipe) and a file over :data:`MAX_CONFIG_BYTES` are a
    :class:`ConfigError` naming it; nothing is read past that bound.
    """
    file_path = pathlib.Path(path if path is not None else DEFAULT_FILENAME)
    hint = " (pass -c FILE or run where procguard.toml is)" if path is None else ""
    data = _read_config_bytes(file_path, hint=hint)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        msg = f"cannot read the file as UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})"
        raise ConfigError(msg, path=str(file_path)) from None
    # Universal newlines, as reading the file in text mode did.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    config = parse_config(text, path=file_path)
    logger.debug("loaded %s: %d workers", file_path, len(config.workers))
    return config


# ---------------------------------------------------------------------------
# the command line of a worker in a generated production file


def lifecycle_flags(worker: WorkerConfig, *, health_host: str | None = None) -> list[str]:
    """The ``procguard run`` flags that carry this worker's settings, for a generated file.

    Every setting with a flag that applies to the worker's mode is spelled
    out (from its declaration in :mod:`procguard.limits`), so the worker
    does not depend on the defaults of the procguard version that runs it
    (a setting declared ``always_written=False`` only when it is set);
    ``health_host`` overrides the bind address (the Kubernetes renderer
    passes ``0.0.0.0``). ``procguard up`` does not use this: it hands the
    settings over as a value.
    """
    flags: list[str] = []
    limits = worker.limits
    for setting in SETTINGS:
        if setting.flag_scope == "none":
            continue
        if setting.applies == ("loop" if worker.run is None else "command"):
            continue
        value = getattr(limits, setting.field)
        if setting.kind == "path" and (value is None or not limits.health_port):
            continue  # a file only where one is named, and only for a port that is served
        if not setting.always_written and value == setting.default:
            continue
        if setting.key == "health_host":
            if not limits.health_port:
                continue
            value = health_host or value
        flags += [setting.flag, setting.format(value)]
    return flags


def own_texts(worker: WorkerConfig) -> list[str]:
    """Every text of a worker's own that a generated file carries (program, arguments, env, cwd).

    A renderer that stands a placeholder in for a copy's number until its
    escaping is done checks first that none of these holds the placeholder.
    """
    return [worker.run or "", *(worker.command or ()), *worker.args, *worker.env.values(), worker.cwd or ""]


def worker_argv(
    worker: WorkerConfig,
    *,
    procguard: Sequence[str],
    name: str | None = None,
    health_host: str | None = None,
) -> list[str]:
    """The command line that runs ``worker`` under ``procguard run`` in a generated file.

    ``procguard`` is how to invoke procguard (``[sys.executable, "-m",
    "procguard"]`` or ``["/opt/venv/bin/procguard"]``). ``name`` overrides the
    instance name (default: the worker's name); ``health_host`` overrides
    the bind address.
    """
    instance = name or worker.name
    flags = lifecycle_flags(worker, health_host=health_host)
    if worker.run is not None:
        return [*procguard, "run", worker.run, "--name", instance, *flags]
    assert worker.command is not None  # guaranteed by parse_config
    return [*procguard, "run", "--name", instance, *flags, "--", *worker.command, *worker.args]


def start_order(config: StackConfig, names: Sequence[str] | None = None) -> list[str]:
    """Worker names in an order that starts each after what it depends on.

    ``names`` selects workers (their dependencies are included); file order
    is kept where dependencies allow. Stop in the reverse order.
    """
    wanted = list(config.workers) if names is None else list(names)
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        for other in config.workers[name].depends_on:
            visit(other)
        ordered.append(name)

    for name in wanted:
        if name not in config.workers:
            msg = f"unknown worker {shown(name)} (use one of: {', '.join(config.workers)})"
            raise UsageError(msg)
        visit(name)
    return ordered
