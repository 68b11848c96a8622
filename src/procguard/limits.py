"""Every lifecycle setting of a worker, declared once.

Each field of :class:`WorkerLimits` is one setting. The field gives its name
with its unit (``grace_s``, ``memory_limit_bytes``) and its default; its
:class:`Setting` (declared with the field's default) gives the procguard.toml key, the
command-line flag, what a bare number means, what 0 means, which workers it
applies to and its help. Everything else is derived from these declarations:

- the flags of ``add_lifecycle_arguments`` and ``procguard run``
  (:mod:`procguard.lifecycle_args`) and their ``--help``;
- the procguard.toml keys (:mod:`procguard.config`);
- the settings tables of the docs (:func:`reference_markdown`; a test fails
  when the docs drift from it);
- the ``procguard run`` flags the deploy generators write
  (:meth:`Setting.format`);
- the frozen :class:`WorkerLimits` value that the in-process
  :class:`~procguard.manager.ProcessManager`, ``procguard run`` and the
  supervisor all take, in base units (seconds, bytes, percent), with
  ``None`` for "no limit". Nothing converts it back to text to pass it on:
  the supervisor hands it to the worker it starts as this value's JSON.

Bare numbers keep the seed's units (``--interval`` minutes, ``--max-runtime``
hours, ``--memory-limit`` MB); suffixes work everywhere (``90s``, ``10m``,
``24h``, ``512MB``, ``2GiB``).
"""

from __future__ import annotations

import math
import os
import signal
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from . import units
from .errors import UsageError, shown

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

#: Which workers a setting means something for: "all", "loop" (workers whose
#: loop procguard runs or sees: ProcessManager programs and ``run =`` targets),
#: or "command" (programs procguard runs from outside: ``command =``,
#: ``procguard run -- COMMAND``).
AppliesTo = Literal["all", "loop", "command"]
#: Where a setting has a flag: in every worker CLI (``add_lifecycle_arguments``,
#: the seed's flags), only in ``procguard run``, or nowhere (library only).
FlagScope = Literal["worker", "run", "none"]
Kind = Literal["duration", "size", "percent", "count", "port", "address", "path", "signal"]

#: What a bare number means for each kind of value, in words for help and docs.
_BARE_WORDS = {"s": "seconds", "m": "minutes", "h": "hours", "MB": "MB", "%": "percent"}

#: "The command line's default is the library's" (a ``Setting.cli_default`` not given).
_SAME: Any = object()

#: Default hard memory ceiling: this factor above the memory limit.
HARD_LIMIT_FACTOR = 1.25


class Setting(NamedTuple):
    """How one lifecycle setting is written, parsed, shown and documented (declared on its field).

    A NamedTuple, like :class:`WorkerLimits`: this module is imported by the
    long-lived command runner, which stays small without ``dataclasses``.
    """

    key: str
    kind: Kind
    help: str
    bare: str = ""  # unit of a bare number: "s", "m", "h", "MB", "%"
    zero: str | None = None  # what 0 means; a zero that means "none" is stored as None
    zero_is_none: bool = True
    minimum: float | None = None  # values below are refused (after 0 handling)
    above_zero: bool = False  # 0 refused (a grace of 0 means nothing)
    applies: AppliesTo = "all"
    flag_scope: FlagScope = "worker"
    toml: bool = True
    cli_default: Any = _SAME  # the CLI's default where it differs from the library's
    keyword: str | None = None  # the ProcessManager keyword (its name says the unit); None: not one
    metavar: str = "VALUE"
    #: False: generated files carry its flag only when it differs from the default (a setting added
    #: later, off by default: a file that does not use it runs on a procguard that predates it).
    always_written: bool = True
    field: str = ""  # the WorkerLimits field; filled in from the declaration

    # -- derived names -----------------------------------------------------------

    @property
    def flag(self) -> str:
        """``--max-runtime`` for ``max_runtime``."""
        return "--" + self.key.replace("_", "-")

    @property
    def bare_words(self) -> str:
        """What a bare number means, in words (``"hours"``), or "" when no unit applies."""
        return _BARE_WORDS[self.bare] if self.kind in ("duration", "size") else ""

    @property
    def default(self) -> Any:
        """The library's and procguard.toml's default (base units)."""
        return _FIELD_DEFAULTS[self.field]

    @property
    def flag_default(self) -> Any:
        """The command line's default (base units)."""
        return self.default if self.cli_default is _SAME else self.cli_default

    # -- parsing and formatting -------------------------------------------------------

    def parse(self, value: object, *, what: str = "") -> Any:
        """A user's value (a number in the bare unit, or text with a suffix) in base units.

        ``None`` stays None; a 0 that means "none" becomes None. Raises
        :class:`UsageError` naming ``what`` (a flag, key or keyword), the
        value and what is accepted.
        """
        label = f"{what}: " if what else ""
        if value is None:
            if (self.zero is not None and self.zero_is_none) or self.kind == "path":
                return None
            msg = f"{label}None is not accepted (use {self.accepted()})"
            raise UsageError(msg)
        parsed = _PARSERS[self.kind](self, value, what)
        if self.zero is not None and self.zero_is_none and parsed == 0:
            return None
        if self.above_zero and parsed == 0:
            msg = f"{label}{shown(value)} must be greater than zero (use {self.accepted()})"
            raise UsageError(msg)
        if self.minimum is not None and parsed < self.minimum:
            msg = f"{label}{shown(value)} is out of range (use {self.minimum:g} or more)"
            raise UsageError(msg)
        return parsed

    def format(self, value: Any) -> str:
        """Base units back to the exact, shortest text :meth:`parse` reads (for generated files)."""
        if value is None:
            return "0"
        if self.kind == "duration":
            return format_seconds(float(value))
        if self.kind == "size":
            return format_bytes(int(value))
        if self.kind == "percent":
            number = float(value)
            return str(int(number)) if number == int(number) else repr(number)
        if self.kind == "signal":
            return signal.Signals(value).name.removeprefix("SIG")
        return str(value)

    def accepted(self) -> str:
        """What is accepted, in words."""
        if self.kind == "duration":
            return f"a number of {_BARE_WORDS[self.bare]} or a duration like 90s, 10m, 24h"
        if self.kind == "size":
            return "a number of MB or a size like 512MB, 2GiB"
        if self.kind == "percent":
            return f"a number from 0 to {cpu_maximum():g}"
        if self.kind == "port":
            return "a port from 0 to 65535"
        if self.kind == "address":
            return "an IP address such as 127.0.0.1, 0.0.0.0 or ::1"
        if self.kind == "path":
            return "the path of a file"
        if self.kind == "signal":
            return "one of " + ", ".join(self.format(s) for s in STOP_SIGNALS)
        return "a whole number"

    def describe_default(self, value: Any) -> str:
        """A default for people: in the bare unit where it is whole (``60s``, ``10m``, ``24h``)."""
        if value is None:
            return "none"
        if self.kind == "duration":
            size = units.DURATION_UNITS[self.bare]
            if value % size == 0:
                return f"{value / size:g}{self.bare}"
        if self.kind in ("address", "path"):
            return str(value)
        return self.format(value)


def _parse_duration(s: Setting, value: object, what: str) -> float:
    return units.parse_duration(value, default_unit=s.bare, what=what)


def _parse_size(s: Setting, value: object, what: str) -> int:
    return units.parse_size(value, default_unit=s.bare, what=what)


def _parse_percent(s: Setting, value: object, what: str) -> float:
    return units.parse_percent(value, maximum=cpu_maximum(), what=what)


def _parse_count(s: Setting, value: object, what: str) -> int:
    return units.parse_count(value, what=what)


def _parse_port(s: Setting, value: object, what: str) -> int:
    return units.parse_port(value, what=what)


def _parse_address(s: Setting, value: object, what: str) -> str:
    import ipaddress  # only where an address is parsed

    text = str(value).strip() if isinstance(value, str) else ""
    if text == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        label = f"{what}: " if what else ""
        msg = f"{label}{shown(value)} is not an IP address (use e.g. 127.0.0.1, 0.0.0.0 or ::1)"
        raise UsageError(msg) from None


def _parse_path(s: Setting, value: object, what: str) -> str:
    # Only the text is checked here: whether the file can be read is checked where it is
    # used (procguard.health.tls), so a config can be deployed to a host where the file lives.
    if isinstance(value, str) and value.strip() and "\0" not in value:
        return value
    label = f"{what}: " if what else ""
    msg = f"{label}{shown(value)} is not a file path (use {s.accepted()})"
    raise UsageError(msg)


#: The signals a graceful stop may send a command: each one a program can catch to stop cleanly.
#: KILL and STOP cannot be caught (a grace would mean nothing), the others mean something else.
STOP_SIGNALS: tuple[int, ...] = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
)


def _parse_signal(s: Setting, value: object, what: str) -> int:
    label = f"{what}: " if what else ""
    name = value.strip().upper().removeprefix("SIG") if isinstance(value, str) else ""
    number = getattr(signal, f"SIG{name}", None) if name else None
    if number in STOP_SIGNALS:
        return int(number)
    why = " (it cannot be caught: a graceful stop needs a signal the program can handle)" if name in (
        "KILL", "STOP") else ""
    msg = f"{label}{shown(value)} is not a stop signal{why} (use {s.accepted()})"
    raise UsageError(msg)


_PARSERS: dict[str, Callable[[Setting, object, str], Any]] = {
    "duration": _parse_duration,
    "size": _parse_size,
    "percent": _parse_percent,
    "count": _parse_count,
    "port": _parse_port,
    "address": _parse_address,
    "path": _parse_path,
    "signal": _parse_signal,
}


def cpu_maximum() -> float:
    """The largest CPU limit accepted: 100 percent per CPU of this machine."""
    return 100.0 * (os.cpu_count() or 1)


def format_seconds(seconds: float) -> str:
    """Exact, short, parseable: ``86400.0`` -> ``"24h"``, ``0.5`` -> ``"0.5s"``."""
    if math.isfinite(seconds) and seconds == int(seconds):
        whole = int(seconds)
        for unit, size in (("h", 3600), ("m", 60)):
            if whole >= size and whole % size == 0:
                return f"{whole // size}{unit}"
        return f"{whole}s"
    return f"{seconds!r}s"


def format_bytes(size: int) -> str:
    """``2147483648`` -> ``"2048MB"`` (MB as the seed means it, 2**20); else ``"123B"``."""
    if size % units.MB == 0:
        return f"{size // units.MB}MB"
    return f"{size}B"


#: Each field's :class:`Setting`, in declaration order (``field`` filled in by :func:`_declared`).
_DECLARED: list[Setting] = []


def _setting(default: Any, **meta: Any) -> Any:
    """A field's default, with its :class:`Setting` declared beside it."""
    _DECLARED.append(Setting(**meta))
    return default


class _LimitFields(NamedTuple):
    """The fields of :class:`WorkerLimits`, each with its default and its :class:`Setting`."""

    interval_s: float = _setting(
        600.0,
        key="interval",
        kind="duration",
        bare="m",
        zero="back to back",
        zero_is_none=False,
        applies="loop",
        metavar="DURATION",
        help="time between iterations of the work loop",
    )
    max_runtime_s: float | None = _setting(
        24 * 3600.0,
        key="max_runtime",
        keyword="max_runtime_hours",
        kind="duration",
        bare="h",
        zero="no limit",
        metavar="DURATION",
        help="recycle gracefully after running this long",
    )
    max_iterations: int | None = _setting(
        None,
        key="max_iterations",
        keyword="max_iterations",
        kind="count",
        zero="no limit",
        applies="loop",
        metavar="N",
        help="recycle gracefully after this many iterations",
    )
    runtime_jitter_s: float = _setting(
        0.0,
        key="runtime_jitter",
        keyword="runtime_jitter_s",
        kind="duration",
        bare="s",
        zero="none",
        zero_is_none=False,
        flag_scope="run",
        always_written=False,
        metavar="DURATION",
        help="recycle up to this much before max_runtime, drawn at random for each process, so workers "
        "started together do not all recycle at once (gunicorn's max_requests_jitter)",
    )
    iterations_jitter: int = _setting(
        0,
        key="iterations_jitter",
        keyword="iterations_jitter",
        kind="count",
        zero="none",
        zero_is_none=False,
        applies="loop",
        flag_scope="run",
        always_written=False,
        metavar="N",
        help="recycle up to this many iterations before max_iterations, drawn at random for each process",
    )
    memory_limit_bytes: int | None = _setting(
        2048 * units.MB,
        key="memory_limit",
        keyword="memory_limit_mb",
        kind="size",
        bare="MB",
        zero="no limit",
        metavar="SIZE",
        help="RSS of the worker and all its descendants; over it for memory_strikes samples in a row, "
        "the worker is recycled gracefully",
    )
    memory_strikes: int = _setting(
        3,
        key="memory_strikes",
        keyword="memory_strikes",
        kind="count",
        minimum=1,
        flag_scope="run",
        metavar="N",
        help="consecutive samples over memory_limit before the recycle (one spike is not enough)",
    )
    memory_hard_limit_bytes: int | None = _setting(
        None,
        key="memory_hard_limit",
        keyword="memory_hard_limit_mb",
        kind="size",
        bare="MB",
        zero="1.25 x memory_limit",
        flag_scope="none",
        toml=False,
        metavar="SIZE",
        help="hard ceiling: one sample above it ends the worker at once (default 1.25 x memory_limit)",
    )
    cpu_limit_percent: float | None = _setting(
        80.0,
        key="cpu_limit",
        keyword="cpu_limit_percent",
        kind="percent",
        bare="%",
        zero="no limit",
        metavar="PERCENT",
        help="CPU of the worker's tree averaged over cpu_window, in percent of one core "
        "(up to 100 x the CPU count); over it, the worker is recycled gracefully",
    )
    cpu_window_s: float = _setting(
        60.0,
        key="cpu_window",
        keyword="cpu_window_s",
        kind="duration",
        bare="s",
        above_zero=True,
        flag_scope="run",
        metavar="DURATION",
        help="the window the CPU limit is averaged over; no CPU verdict before one full window has passed",
    )
    grace_s: float = _setting(
        30.0,
        key="grace",
        keyword="grace_s",
        kind="duration",
        bare="s",
        above_zero=True,
        metavar="DURATION",
        help="how long a graceful stop may take (after the drain) before it is forced",
    )
    drain_delay_s: float = _setting(
        0.0,
        key="drain_delay",
        keyword="drain_delay_s",
        kind="duration",
        bare="s",
        metavar="DURATION",
        help="after a stop signal, stay not-ready (/ready 503) but working this long before stopping, "
        "so load balancers stop sending first",
    )
    heartbeat_timeout_s: float | None = _setting(
        60.0,
        key="heartbeat_timeout",
        keyword="heartbeat_timeout_s",
        kind="duration",
        bare="s",
        zero="never",
        applies="loop",
        flag_scope="run",
        metavar="DURATION",
        help="a loop showing no progress for this long is stuck: unhealthy, then stopped "
        "(systemd's WatchdogSec in generated units)",
    )
    max_failures: int | None = _setting(
        5,
        key="max_failures",
        keyword="max_consecutive_failures",
        kind="count",
        zero="never",
        applies="loop",
        flag_scope="run",
        metavar="N",
        help="stop after this many failed iterations in a row",
    )
    health_port: int | None = _setting(
        None,
        key="health_port",
        keyword="health_port",
        kind="port",
        zero="no server",
        cli_default=9091,
        metavar="PORT",
        help="serve /health, /ready and /metrics on this port",
    )
    health_host: str = _setting(
        "127.0.0.1",
        key="health_host",
        keyword="health_host",
        kind="address",
        metavar="ADDRESS",
        help="address the health server binds",
    )
    health_tls_cert: str | None = _setting(
        None,
        key="health_tls_cert",
        keyword="health_tls_cert",
        kind="path",
        metavar="FILE",
        help="serve the health port over HTTPS with this PEM certificate (chain); plain HTTP on the port "
        "is refused; needs health_tls_key",
    )
    health_tls_key: str | None = _setting(
        None,
        key="health_tls_key",
        keyword="health_tls_key",
        kind="path",
        metavar="FILE",
        help="the PEM private key of health_tls_cert",
    )
    health_token_file: str | None = _setting(
        None,
        key="health_token_file",
        keyword="health_token_file",
        kind="path",
        metavar="FILE",
        help="read the bearer token /metrics requires from this file (instead of PROCGUARD_HEALTH_TOKEN)",
    )
    stop_signal: int = _setting(
        int(signal.SIGTERM),
        key="stop_signal",
        kind="signal",
        applies="command",
        flag_scope="run",
        always_written=False,
        metavar="SIGNAL",
        help="the signal a graceful stop sends the command (a drain, a limit, a stop or restart): "
        "TERM, INT, QUIT, HUP, USR1 or USR2; with TERM, a Ctrl-C reaches it as INT",
    )



class WorkerLimits(_LimitFields):
    """The lifecycle settings of one worker, in base units; ``None`` means "no limit".

    Build it from user values with :meth:`from_user` (flags, procguard.toml,
    ProcessManager keywords: each parsed by its :class:`Setting`), or from
    base units directly (``WorkerLimits(memory_limit_bytes=512 * 2**20)``).
    A frozen NamedTuple rather than a dataclass: the long-lived command
    runner imports this module, and ``dataclasses`` (with ``inspect``) would
    be most of its size.
    """

    __slots__ = ()

    if not TYPE_CHECKING:  # the type checker keeps checking the fields' keywords

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._check_ceiling()

    def _check_ceiling(self) -> None:
        if (self.health_tls_cert is None) != (self.health_tls_key is None):
            given, missing = (
                ("health_tls_cert", "health_tls_key") if self.health_tls_key is None
                else ("health_tls_key", "health_tls_cert")
            )
            msg = f"{given} is set without {missing} (give both, or neither for plain HTTP)"
            raise UsageError(msg)
        soft, hard = self.memory_limit_bytes, self.memory_hard_limit_bytes
        if soft and hard and hard < soft:
            msg = (
                f"memory_hard_limit: {format_bytes(hard)} is below memory_limit {format_bytes(soft)} "
                "(use a ceiling at or above the limit)"
            )
            raise UsageError(msg)

    # -- derived values --------------------------------------------------------------

    @property
    def memory_ceiling_bytes(self) -> int | None:
        """The hard memory ceiling: the one given, else ``HARD_LIMIT_FACTOR`` x the memory limit."""
        if self.memory_hard_limit_bytes:
            return self.memory_hard_limit_bytes
        if not self.memory_limit_bytes:
            return None
        return int(self.memory_limit_bytes * HARD_LIMIT_FACTOR)

    @property
    def stop_budget_s(self) -> float:
        """The longest a graceful stop takes: the drain, then the grace."""
        return self.drain_delay_s + self.grace_s

    # -- building -----------------------------------------------------------------------

    @classmethod
    def from_user(
        cls,
        values: Mapping[str, object],
        *,
        base: WorkerLimits | None = None,
        what: Callable[[Setting], str] = lambda s: s.key,
    ) -> WorkerLimits:
        """``base`` (default: the defaults) with ``values`` (keyed by setting key) parsed on top.

        ``what(setting)`` names the source of a value in error messages (a
        flag, a TOML key, a keyword). Unknown keys are a programming error
        (KeyError): callers check them against :data:`SETTINGS_BY_KEY`.
        """
        changes = {}
        for key, raw in values.items():
            setting = SETTINGS_BY_KEY[key]
            changes[setting.field] = setting.parse(raw, what=what(setting))
        return (base or cls()).with_changes(**changes)

    def with_changes(self, **changes: Any) -> WorkerLimits:
        """A copy with some fields (base units) replaced (checked as a new value is)."""
        changed = self._replace(**changes)
        changed._check_ceiling()
        return changed

    # -- the codec (supervisor -> the worker it starts) ----------------------------------

    def to_json(self) -> dict[str, Any]:
        return {s.field: getattr(self, s.field) for s in SETTINGS}

    @classmethod
    def from_json(cls, data: object) -> WorkerLimits:
        """The value :meth:`to_json` wrote; UsageError naming the field when it is not one."""
        if not isinstance(data, dict):
            msg = f"worker settings: {shown(data)} is not an object of settings"
            raise UsageError(msg)
        values: dict[str, Any] = {}
        for name, value in data.items():
            setting = SETTINGS_BY_FIELD.get(name)
            if setting is None:
                msg = f"worker settings: unknown setting {shown(name)}"
                raise UsageError(msg)
            if value is not None and not _is_base(setting, value):
                msg = f"worker settings: {name} = {shown(value)} is not a {setting.kind} in base units"
                raise UsageError(msg)
            values[name] = (
                float(value) if setting.kind in ("duration", "percent") and value is not None else value
            )
        return cls(**values)


def _is_base(setting: Setting, value: object) -> bool:
    """True for a value in base units of the right type (what :meth:`WorkerLimits.to_json` writes)."""
    if setting.kind in ("address", "path"):
        return isinstance(value, str)
    if setting.kind == "signal":
        return value in STOP_SIGNALS and not isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if setting.kind in ("duration", "percent"):
        return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
    return isinstance(value, int) and value >= 0


def _declared() -> tuple[Setting, ...]:
    # strict: a field declared without _setting would shift every Setting onto the wrong field
    pairs = zip(WorkerLimits._fields, _DECLARED, strict=True)
    return tuple(setting._replace(field=name) for name, setting in pairs)


_FIELD_DEFAULTS: dict[str, Any] = dict(WorkerLimits._field_defaults)

#: Every setting, in declaration order.
SETTINGS: tuple[Setting, ...] = _declared()
SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
SETTINGS_BY_FIELD: dict[str, Setting] = {s.field: s for s in SETTINGS}


def flag_help(setting: Setting) -> str:
    """The ``--help`` line of a setting's flag, with its bare unit, default and zero."""
    parts = []
    if setting.bare_words:
        parts.append(f"bare number = {setting.bare_words}")
    parts.append(f"default: {setting.describe_default(setting.flag_default)}")
    if setting.zero is not None:
        parts.append(f"0: {setting.zero}")
    return f"{setting.help} ({'; '.join(parts)})"


_APPLIES_WORDS = {
    "all": "every worker",
    "loop": "loops procguard sees (`run =`, ProcessManager)",
    "command": "commands (`command =`, `procguard run -- COMMAND`)",
}


def reference_markdown() -> str:
    """The settings table of the docs, generated from the declarations above."""
    lines = [
        "| procguard.toml key | flag | ProcessManager keyword | bare number | default | 0 means | applies to "
        "| meaning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        key = f"`{s.key}`" if s.toml else "-"
        keyword = f"`{s.keyword}`" if s.keyword else "-"
        flag = f"`{s.flag}`" if s.flag_scope != "none" else "-"
        if s.flag_scope == "run":
            flag += " (`procguard run`)"
        bare = s.bare_words
        default = s.describe_default(s.default)
        if s.cli_default is not _SAME:
            default += f" (command line: {s.describe_default(s.cli_default)})"
        applies = _APPLIES_WORDS[s.applies]
        lines.append(
            f"| {key} | {flag} | {keyword} | {bare or '-'} | {default} | {s.zero or '-'} | {applies} "
            f"| {s.help} |"
        )
    return "\n".join(lines) + "\n"
