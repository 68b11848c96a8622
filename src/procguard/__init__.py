"""procguard: keep long-running Python workers well behaved.

Importing this package starts nothing: no thread, no server, no signal
handler. The public names are loaded lazily so that ``procguard --help``
stays fast.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not from typing: importing it costs ~9 ms on every start of the CLI

__version__ = "0.1.0"

__all__ = [
    "AlreadyRunningError",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigError",
    "ExitStatus",
    "HealthServer",
    "ProcessManager",
    "ProcguardError",
    "StopReason",
    "UsageError",
    "__version__",
    "add_lifecycle_arguments",
    "exit_status_of",
    "serve_health",
]

_LAZY = {
    "CircuitBreaker": "procguard.circuit",
    "CircuitOpenError": "procguard.circuit",
    "ProcessManager": "procguard.manager",
    "HealthServer": "procguard.health.server",
    "serve_health": "procguard.health.server",
    "add_lifecycle_arguments": "procguard.lifecycle_args",
    "StopReason": "procguard.reasons",
    "ExitStatus": "procguard.reasons",
    "ProcguardError": "procguard.errors",
    "UsageError": "procguard.errors",
    "ConfigError": "procguard.errors",
    "AlreadyRunningError": "procguard.errors",
    "exit_status_of": "procguard.errors",
}

if TYPE_CHECKING:
    from typing import Any

    from .circuit import CircuitBreaker, CircuitOpenError
    from .errors import AlreadyRunningError, ConfigError, ProcguardError, UsageError, exit_status_of
    from .health.server import HealthServer, serve_health
    from .lifecycle_args import add_lifecycle_arguments
    from .manager import ProcessManager
    from .reasons import ExitStatus, StopReason


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        msg = f"module 'procguard' has no attribute {name!r}"
        raise AttributeError(msg)
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
