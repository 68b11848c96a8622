"""The seed's worker flags, for ``procguard run`` and for a worker's own CLI.

A worker author adds the flags to their own argparse parser and builds the
manager from the parsed namespace, so that the seed's command line keeps
working as it is::

    parser = argparse.ArgumentParser()
    add_lifecycle_arguments(parser)
    parser.add_argument("--user-id", type=int)
    args = parser.parse_args()
    manager = ProcessManager.from_args(args)

    $ python -m myapp.worker --interval 10 --max-runtime 24 --memory-limit 2048 \\
          --cpu-limit 80 --health-port 9091 --user-id 123 --once

Bare numbers keep the seed's units (``--interval`` minutes, ``--max-runtime``
hours, ``--memory-limit`` MB, ``--grace`` seconds); suffixed values are
accepted everywhere (``90s``, ``10m``, ``24h``, ``512MB``, ``2GiB``). Each
flag is converted by an argparse ``type=`` function that raises
:class:`argparse.ArgumentTypeError` with a message naming the value and what
is accepted, so a bad value is reported by argparse itself as one line and
exit status 2, in ``procguard run`` and in the worker's own CLI alike.

The parsed values are stored in unit-named attributes (``interval_s``,
``max_runtime_s``, ``memory_limit_bytes``, ...), so no caller has to remember
which unit a bare number had.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable
from typing import Any

from . import units
from .errors import UsageError

#: Defaults of DESIGN.md section 3, in the seed's units.
DEFAULT_INTERVAL_MINUTES = 10.0
DEFAULT_MAX_RUNTIME_HOURS = 24.0
DEFAULT_MEMORY_LIMIT_MB = 2048
DEFAULT_CPU_LIMIT_PERCENT = 80.0
DEFAULT_HEALTH_PORT = 9091
DEFAULT_HEALTH_HOST = "127.0.0.1"
DEFAULT_GRACE_S = 30.0
DEFAULT_DRAIN_DELAY_S = 0.0

#: Attribute names the flags are stored under (what ``manager_kwargs_from_args`` reads).
LIFECYCLE_DESTS = (
    "interval_s",
    "max_runtime_s",
    "max_iterations",
    "memory_limit_bytes",
    "cpu_limit_percent",
    "health_port",
    "health_host",
    "grace_s",
    "drain_delay_s",
    "once",
    "name",
    "replace",
)


def _converter(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """Wrap a procguard.units parser as an argparse ``type=`` function.

    argparse prefixes the message with ``argument --flag:``, so the value and
    what is accepted are all that the message itself has to say.
    """

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = name  # argparse names the type in its fallback message
    return convert


def parse_interval(text: str) -> float:
    """``--interval``: seconds between iterations; a bare number is minutes, 0 back to back."""
    return units.parse_duration(text, default_unit="m")


def parse_max_runtime(text: str) -> float:
    """``--max-runtime``: seconds; a bare number is hours, 0 means no limit."""
    return units.parse_duration(text, default_unit="h")


def parse_max_iterations(text: str) -> int | None:
    """``--max-iterations``: a count, 0 means no limit (stored as None)."""
    count = units.parse_count(text)
    return count or None


def parse_memory_limit(text: str) -> int:
    """``--memory-limit``: bytes; a bare number is MB (MiB, as in the seed), 0 means no limit."""
    return units.parse_size(text, default_unit="MB")


def cpu_limit_maximum() -> float:
    """The largest accepted ``--cpu-limit``: 100 percent per CPU of this machine."""
    return 100.0 * (os.cpu_count() or 1)


def parse_cpu_limit(text: str) -> float:
    """``--cpu-limit``: percent of one core (0 to 100 x CPU count), 0 means no limit."""
    return units.parse_percent(text, maximum=cpu_limit_maximum())


def parse_health_port(text: str) -> int:
    """``--health-port``: TCP port 1-65535, or 0 to disable the health server."""
    return units.parse_port(text)


def parse_health_host(text: str) -> str:
    """``--health-host``: an IP address to bind (``localhost`` is accepted too)."""
    value = text.strip()
    if value == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        msg = f"{text!r} is not an IP address (use e.g. 127.0.0.1, 0.0.0.0 or ::1)"
        raise UsageError(msg) from None


def parse_grace(text: str) -> float:
    """``--grace``: seconds a graceful stop may take before it is forced; a bare number is seconds."""
    return units.parse_duration(text, default_unit="s")


def parse_drain_delay(text: str) -> float:
    """``--drain-delay``: seconds to stay not-ready but working after SIGTERM; a bare number is seconds."""
    return units.parse_duration(text, default_unit="s")


def parse_name(text: str) -> str:
    """``--name``: an instance name, as the instance lock accepts it."""
    from .instances.identity import validate_name

    return validate_name(text)


def add_lifecycle_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    group_title: str | None = "lifecycle",
) -> argparse.ArgumentParser | argparse._ArgumentGroup:
    """Add the seed's lifecycle flags to ``parser`` and return the group they went into.

    Flags (bare numbers in the seed's units, suffixes accepted):
    ``--interval`` (minutes, default 10, 0 = back to back), ``--max-runtime``
    (hours, default 24, 0 = no limit), ``--max-iterations`` (count, default
    none), ``--memory-limit`` (MB, default 2048, 0 = no limit),
    ``--cpu-limit`` (percent of one core, 0 to 100 x CPU count, default 80,
    0 = no limit), ``--health-port`` (default 9091, 0 = disabled),
    ``--health-host`` (default 127.0.0.1), ``--grace`` (seconds, default
    30), ``--drain-delay`` (seconds, default 0: after the first SIGTERM or
    SIGINT, /ready turns 503 at once while the work goes on this long, then
    the graceful stop begins), ``--once``, ``--name``, ``--replace``.

    Pass ``group_title=None`` to add the flags to ``parser`` directly.
    """
    target: Any = parser
    if group_title is not None and isinstance(parser, argparse.ArgumentParser):
        target = parser.add_argument_group(group_title)
    add = target.add_argument
    add(
        "--interval", dest="interval_s", metavar="DURATION",
        type=_converter(parse_interval, "interval"),
        default=DEFAULT_INTERVAL_MINUTES * 60,
        help="time between iterations; bare number = minutes, or 90s/10m/1h (default: 10; 0: back to back)",
    )
    add(
        "--max-runtime", dest="max_runtime_s", metavar="DURATION",
        type=_converter(parse_max_runtime, "max_runtime"),
        default=DEFAULT_MAX_RUNTIME_HOURS * 3600,
        help="stop gracefully after this long; bare number = hours (default: 24; 0: no limit)",
    )
    add(
        "--max-iterations", dest="max_iterations", metavar="N",
        type=_converter(parse_max_iterations, "max_iterations"),
        default=None,
        help="stop gracefully after N iterations (default: no limit; 0: no limit)",
    )
    add(
        "--memory-limit", dest="memory_limit_bytes", metavar="SIZE",
        type=_converter(parse_memory_limit, "memory_limit"),
        default=DEFAULT_MEMORY_LIMIT_MB * units.MB,
        help="memory of the worker and its children; bare number = MB, or 512MB/2GiB "
        "(default: 2048; 0: no limit)",
    )
    add(
        "--cpu-limit", dest="cpu_limit_percent", metavar="PERCENT",
        type=_converter(parse_cpu_limit, "cpu_limit"),
        default=DEFAULT_CPU_LIMIT_PERCENT,
        help="CPU averaged over a window, in percent of one core, 0 to 100 x CPU count "
        "(default: 80; 0: no limit)",
    )
    add(
        "--health-port", dest="health_port", metavar="PORT",
        type=_converter(parse_health_port, "health_port"),
        default=DEFAULT_HEALTH_PORT,
        help="serve /health, /ready and /metrics on this port (default: 9091; 0: disabled)",
    )
    add(
        "--health-host", dest="health_host", metavar="ADDRESS",
        type=_converter(parse_health_host, "health_host"),
        default=DEFAULT_HEALTH_HOST,
        help="address the health server binds (default: 127.0.0.1)",
    )
    add(
        "--grace", dest="grace_s", metavar="DURATION",
        type=_converter(parse_grace, "grace"),
        default=DEFAULT_GRACE_S,
        help="how long a graceful stop may take before it is forced; bare number = seconds (default: 30)",
    )
    add(
        "--drain-delay", dest="drain_delay_s", metavar="DURATION",
        type=_converter(parse_drain_delay, "drain_delay"),
        default=DEFAULT_DRAIN_DELAY_S,
        help="after the first SIGTERM/SIGINT, report not-ready (/ready 503) but keep working this long "
        "before stopping, so load balancers stop sending first; bare number = seconds (default: 0)",
    )
    add("--once", dest="once", action="store_true", help="run one iteration and exit")
    add(
        "--name", dest="name", metavar="NAME",
        type=_converter(parse_name, "name"), default=None,
        help="instance name (default: derived from the target)",
    )
    add(
        "--replace", dest="replace", action="store_true",
        help="stop the running instance of NAME first (default: refuse to start)",
    )
    return target


def _none_if_zero(value: float | int | None) -> float | int | None:
    return value if value else None


def manager_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """ProcessManager keyword arguments from a namespace parsed with the lifecycle flags.

    Keeps the seed's constructor names and units (``max_runtime_hours``,
    ``memory_limit_mb``, ``cpu_limit_percent``); a limit of 0 becomes ``None``
    ("no limit"), and ``--health-port 0`` becomes ``health_port=None`` (no
    server). ``--drain-delay`` becomes ``drain_delay_s``, and the manager's
    ``grace_s`` is ``--grace`` plus the drain delay: the manager counts its
    grace from the stop request, while ``--grace`` is the time the stop may
    take once the drain is over. ``--once`` is *not* turned into a limit: the loop that runs the
    iterations decides that (see :func:`interval_seconds` and ``args.once``).
    Flags missing from ``args`` are left out, so the manager's own defaults
    apply.
    """
    kwargs: dict[str, Any] = {}
    if getattr(args, "name", None):
        kwargs["name"] = args.name
    if hasattr(args, "max_runtime_s"):
        kwargs["max_runtime_hours"] = _none_if_zero(args.max_runtime_s / 3600 if args.max_runtime_s else 0)
    if hasattr(args, "memory_limit_bytes"):
        kwargs["memory_limit_mb"] = _none_if_zero(
            args.memory_limit_bytes / units.MB if args.memory_limit_bytes else 0
        )
    if hasattr(args, "cpu_limit_percent"):
        kwargs["cpu_limit_percent"] = _none_if_zero(args.cpu_limit_percent)
    if hasattr(args, "max_iterations"):
        kwargs["max_iterations"] = _none_if_zero(args.max_iterations)
    drain = float(getattr(args, "drain_delay_s", 0.0) or 0.0)
    if hasattr(args, "grace_s"):
        # --grace is what the stop itself may take once the drain is over (as the
        # deploy budgets count it: drain, then grace); the manager counts its grace
        # from the stop request, so it gets both.
        kwargs["grace_s"] = args.grace_s + drain
    if hasattr(args, "drain_delay_s"):
        kwargs["drain_delay_s"] = drain
    if hasattr(args, "health_port"):
        kwargs["health_port"] = args.health_port or None
    if hasattr(args, "health_host"):
        kwargs["health_host"] = args.health_host
    return kwargs


def interval_seconds(args: argparse.Namespace) -> float:
    """Seconds between iterations from parsed flags (the default when the flag is absent)."""
    return float(getattr(args, "interval_s", DEFAULT_INTERVAL_MINUTES * 60))
