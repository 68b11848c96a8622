"""Module loggers that import :mod:`logging` when they first log.

Why: ``logging`` brings ``traceback``, ``linecache``, ``tokenize`` and
``textwrap`` with it, about 1.6 MB in every process that imports it. A
standalone command runner watches its command for days and logs only when
something happens (a limit, a signal, the end): with these loggers it pays
for ``logging`` at that moment, not for the whole run. The ``procguard``
entry point then hands over how logging is set up
(:func:`configure_when_used`) instead of setting it up at once. In a process
that has ``logging`` loaded anyway, a deferred logger is a plain logger.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

#: How logging is set up, run once just before the first message of any deferred logger.
_CONFIGURE: Callable[[], None] | None = None


def configure_when_used(configure: Callable[[], None]) -> None:
    """Run ``configure`` (e.g. ``logging.basicConfig``) just before the first deferred message."""
    global _CONFIGURE
    _CONFIGURE = configure


def _configured() -> None:
    global _CONFIGURE
    configure, _CONFIGURE = _CONFIGURE, None
    if configure is not None:
        configure()


class DeferredLogger:
    """``logging.getLogger(name)``, looked up (and ``logging`` imported) on the first message."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    @property
    def logger(self) -> logging.Logger:
        if self._logger is None:
            import logging

            _configured()
            self._logger = logging.getLogger(self.name)
        return self._logger

    def debug(self, msg: str, *args: object) -> None:
        self.logger.debug(msg, *args)

    def info(self, msg: str, *args: object) -> None:
        self.logger.info(msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self.logger.warning(msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self.logger.error(msg, *args)


def get_logger(name: str) -> DeferredLogger:
    """The deferred logger of a module (``get_logger(__name__)``)."""
    return DeferredLogger(name)
