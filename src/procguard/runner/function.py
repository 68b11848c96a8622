"""Function mode: call ``package.module:function`` every interval under a ProcessManager.

The loop is the one the README shows, run for the user::

    manager.start()
    while manager.should_continue():
        manager.heartbeat()
        call the function (sync, or awaited when it is async)
        manager.sleep(interval)       # wakes at once on a stop
    return manager.shutdown()

An iteration that raises is logged with its traceback (to the log only,
never to an HTTP response) and counted with ``manager.record_failure``; the
manager stops the worker with ``iteration_failures`` after
``max_failures`` in a row. ``--once`` runs one iteration and stops with
``completed`` (exit status 0), or ``crashed`` (1) if that iteration failed.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..reasons import StopReason

if TYPE_CHECKING:
    from ..manager import ProcessManager

log = logging.getLogger(__name__)

#: Names under which a function asks for the manager.
MANAGER_PARAMETER_NAMES = ("manager", "process_manager", "pm")


def load_target(spec: str) -> Callable[..., Any]:
    """Import ``package.module:function`` and return the callable; UsageError with one line if it fails.

    The current directory is importable (as with ``python -m``), so a
    project's own package works without installing it.
    """
    module_name, _, attr_path = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        msg = f"target {spec!r}: cannot import module {module_name!r} ({error})"
        raise UsageError(msg) from None
    except Exception as error:  # the module itself failed while importing
        log.debug("importing %s failed", module_name, exc_info=True)
        msg = f"target {spec!r}: importing {module_name!r} raised {type(error).__name__}: {error}"
        raise UsageError(msg) from None
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            msg = f"target {spec!r}: module {module_name!r} has no attribute {attr_path!r}"
            raise UsageError(msg) from None
    if not callable(obj):
        msg = f"target {spec!r}: {attr_path!r} is a {type(obj).__name__}, not a function"
        raise UsageError(msg)
    return obj


def wants_manager(func: Callable[..., Any]) -> bool:
    """True when ``func`` should be called with the manager as its argument.

    That is when its first parameter is required, or is named like a
    manager (``manager``, ``process_manager``, ``pm``); a function without
    parameters, or with only optional ones, is called without arguments.
    """
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return False
    positional = [
        p for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if not positional:
        return False
    first = positional[0]
    return first.default is inspect.Parameter.empty or first.name in MANAGER_PARAMETER_NAMES


def is_async(func: Callable[..., Any]) -> bool:
    """True for ``async def`` functions (and objects whose ``__call__`` is one)."""
    call = getattr(type(func), "__call__", None)  # noqa: B004 - the method, not callability
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)


class FunctionLoop:
    """Runs one target function as a managed worker; see the module docstring.

    ``manager`` must not be started yet: :meth:`run` starts it, calls
    ``on_started`` (if given), loops every ``manager.limits.interval_s``, and
    returns ``manager.shutdown()``'s exit status.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        manager: ProcessManager,
        *,
        once: bool = False,
        label: str = "",
        on_started: Callable[[], object] | None = None,
    ) -> None:
        self.func = func
        self.manager = manager
        self.interval_s = manager.limits.interval_s
        self.once = once
        self.label = label or getattr(func, "__qualname__", repr(func))
        self.on_started = on_started
        self._pass_manager = wants_manager(func)
        self.iterations = 0
        self.failures = 0
        self.last_failed = False

    def _call(self) -> Any:
        return self.func(self.manager) if self._pass_manager else self.func()

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        self.last_failed = True
        log.error(
            "iteration %d of %s failed (pid %s)", self.iterations, self.label, os.getpid(), exc_info=error
        )
        self.manager.record_failure(error)

    def _succeeded(self) -> None:
        self.last_failed = False
        self.manager.record_success()

    def run(self) -> int:
        """Start the manager, run the iterations, shut down; return the exit status."""
        self.manager.start()
        try:
            if self.on_started is not None:
                self.on_started()
            if is_async(self.func):
                import asyncio  # only for async targets: it loads ssl and more (about 3 MB RSS)

                asyncio.run(self._run_async())
            else:
                self._run_sync()
        except BaseException as exc:  # sys.exit() in the function: the process exits with its status
            self.manager._crashed_with(exc)
            raise
        finally:
            status = self.manager.shutdown()
        return status

    def _run_sync(self) -> None:
        manager = self.manager
        while manager.should_continue():
            manager.heartbeat()
            self.iterations += 1
            try:
                result = self._call()
                if inspect.isawaitable(result):  # a sync wrapper around a coroutine
                    import asyncio

                    asyncio.run(_as_coroutine(result))
            except Exception as error:
                self._failed(error)
            else:
                self._succeeded()
            if self.once:
                self._complete()
                break
            manager.sleep(self.interval_s)

    async def _run_async(self) -> None:
        manager = self.manager
        while manager.should_continue():
            manager.heartbeat()
            self.iterations += 1
            try:
                await self._call()
            except Exception as error:
                self._failed(error)
            else:
                self._succeeded()
            if self.once:
                self._complete()
                break
            await manager.sleep_async(self.interval_s)

    def _complete(self) -> None:
        if self.last_failed:
            self.manager.request_stop(StopReason.CRASHED, "--once: the one iteration raised")
        else:
            self.manager.request_stop(StopReason.COMPLETED, "--once: one iteration done")


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable

