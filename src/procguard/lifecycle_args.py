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

Every flag is derived from its setting's one declaration in
:mod:`procguard.limits` (name, unit of a bare number, default, what 0
means, help): bare numbers keep the seed's units (``--interval`` minutes,
``--max-runtime`` hours, ``--memory-limit`` MB, ``--grace`` seconds) and
suffixed values are accepted everywhere (``90s``, ``10m``, ``24h``,
``512MB``, ``2GiB``). Each flag is converted by an argparse ``type=``
function that raises :class:`argparse.ArgumentTypeError` with a message
naming the value and what is accepted, so a bad value is reported by
argparse itself as one line and exit status 2.

The parsed values are stored under the setting's field name, in base units
(``interval_s``, ``max_runtime_s``, ``memory_limit_bytes``, ...; a limit of
0 is stored as None, "no limit"), and :func:`limits_from_args` turns the
namespace into the :class:`~procguard.limits.WorkerLimits` value.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from .errors import UsageError
from .limits import SETTINGS, Setting, WorkerLimits, flag_help

#: Where the namespace remembers which settings were given on the command line.
_GIVEN = "_procguard_given"


def _converter(setting: Setting) -> Callable[[str], Any]:
    """The setting's parser as an argparse ``type=`` function.

    argparse prefixes the message with ``argument --flag:``, so the value and
    what is accepted are all that the message itself has to say.
    """

    def convert(text: str) -> Any:
        try:
            return setting.parse(text)
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = setting.key  # argparse names the type in its fallback message
    return convert


class _StoreGiven(argparse.Action):
    """Store the value, and remember that it was given (so a base from elsewhere can yield to it)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        given = getattr(namespace, _GIVEN, None)
        if given is None:
            given = set()
            setattr(namespace, _GIVEN, given)
        given.add(self.dest)


def parse_name(text: str) -> str:
    """``--name``: an instance name, as the instance lock accepts it."""
    from .instances.identity import validate_name

    try:
        return validate_name(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_setting_arguments(target: Any, settings: Sequence[Setting]) -> None:
    """Add one flag per setting to ``target`` (a parser or an argument group)."""
    for setting in settings:
        target.add_argument(
            setting.flag,
            dest=setting.field,
            metavar=setting.metavar,
            type=_converter(setting),
            default=setting.flag_default,
            action=_StoreGiven,
            help=flag_help(setting).replace("%", "%%"),
        )


def add_lifecycle_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    group_title: str | None = "lifecycle",
) -> argparse.ArgumentParser | argparse._ArgumentGroup:
    """Add the seed's lifecycle flags to ``parser`` and return the group they went into.

    The flags of every setting a worker's own CLI takes (see the settings
    table in docs/PROCESS_LIFECYCLE_MANAGEMENT.md): ``--interval``,
    ``--max-runtime``, ``--max-iterations``, ``--memory-limit``,
    ``--cpu-limit``, ``--grace``, ``--drain-delay``, ``--health-port``,
    ``--health-host``; and ``--once``, ``--name``, ``--replace``.

    Pass ``group_title=None`` to add the flags to ``parser`` directly.
    """
    target: Any = parser
    if group_title is not None and isinstance(parser, argparse.ArgumentParser):
        target = parser.add_argument_group(group_title)
    add_setting_arguments(target, [s for s in SETTINGS if s.flag_scope == "worker"])
    add = target.add_argument
    add("--once", dest="once", action="store_true", help="run one iteration and exit")
    add(
        "--name",
        dest="name",
        metavar="NAME",
        type=parse_name,
        default=None,
        help="instance name (default: derived from the target)",
    )
    add(
        "--replace",
        dest="replace",
        action="store_true",
        help="stop the running instance of NAME first (default: refuse to start)",
    )
    return target


def given_settings(args: argparse.Namespace) -> set[str]:
    """The fields of the settings given on the command line (not left at their default)."""
    return set(getattr(args, _GIVEN, ()))


def limits_from_args(args: argparse.Namespace, *, base: WorkerLimits | None = None) -> WorkerLimits:
    """The :class:`~procguard.limits.WorkerLimits` of a parsed command line.

    Without ``base``: every setting the parser has a flag for, given or
    defaulted (the command line's defaults). With ``base`` (the settings a
    supervisor handed over): only the flags actually given override it.
    """
    fields = {s.field for s in SETTINGS if hasattr(args, s.field)}
    if base is not None:
        fields &= given_settings(args)
    return (base or WorkerLimits()).with_changes(**{name: getattr(args, name) for name in fields})
