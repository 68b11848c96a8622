"""The timeout and memory budget across layers, checked before anything is written.

Work is lost when an outer layer gives up before an inner one has finished
its graceful stop (supervisord's 10 s default under gunicorn's 30 s is the
classic case), and a memory limit in the engine below the in-process limit
turns procguard's graceful recycle into a kernel OOM kill. The chain that
must hold, per worker::

    grace + drain  <  supervisord stopwaitsecs  <  systemd TimeoutStopSec
    grace + drain  <  Kubernetes terminationGracePeriodSeconds
    memory_limit   <  systemd MemoryHigh  <=  MemoryMax
    memory_limit   <  Kubernetes resources.limits.memory

Derived values satisfy it by construction; an explicit override in
``[deploy.*]`` that breaks it is refused (exit 2) with the pair and the
value to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import StackConfig, WorkerConfig
from ..errors import UsageError
from ..limits import format_bytes
from .settings import EngineLimits, app_stop_s, engine_limits


@dataclass(frozen=True)
class BudgetViolation:
    """One broken pair: ``inner`` must be below ``outer``; ``fix`` says what to change."""

    worker: str
    inner: str
    outer: str
    fix: str

    def __str__(self) -> str:
        return f"worker {self.worker!r}: {self.inner} must be less than {self.outer}; {self.fix}"


class BudgetError(UsageError):
    """The configured engine limits break the timeout/memory budget (exit 2)."""

    def __init__(self, violations: list[BudgetViolation]) -> None:
        self.violations = violations
        first = str(violations[0])
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(f"timeout/memory budget broken: {first}{more}")


def _secs(value: float) -> str:
    return f"{value:g}s"


def worker_violations(
    worker: WorkerConfig, limits: EngineLimits, overridden: Mapping[str, Mapping[str, Any]]
) -> list[BudgetViolation]:
    """Every broken pair for one worker (empty when the budget holds)."""
    found: list[BudgetViolation] = []
    stop = app_stop_s(worker)
    drain = f" + drain_delay {_secs(worker.limits.drain_delay_s)}" if worker.limits.drain_delay_s else ""
    app = f"grace {_secs(worker.limits.grace_s)}{drain}"
    sup = overridden.get("supervisor", {})
    sysd = overridden.get("systemd", {})

    def add(inner: str, outer: str, fix: str) -> None:
        found.append(BudgetViolation(worker.name, inner, outer, fix))

    if not stop < limits.supervisor_stopwait_s:
        add(
            app,
            f"[deploy.supervisor] stopwaitsecs {limits.supervisor_stopwait_s}s",
            f"raise stopwaitsecs above {_secs(stop)} or lower the worker's grace",
        )
    if not stop < limits.systemd_timeout_stop_s:
        add(
            app,
            f"[deploy.systemd] timeout_stop {limits.systemd_timeout_stop_s}s",
            f"raise timeout_stop above {_secs(stop)} or lower the worker's grace",
        )
    if not stop < limits.kubernetes_termination_s:
        add(
            app,
            f"[deploy.kubernetes] termination_grace {limits.kubernetes_termination_s}s",
            f"raise termination_grace above {_secs(stop)} or lower the worker's grace/drain_delay",
        )

    if not limits.supervisor_stopwait_s < limits.systemd_timeout_stop_s and (
        "stopwaitsecs" in sup or "timeout_stop" in sysd
    ):
        fix = (
            f"raise [deploy.systemd] timeout_stop above {limits.supervisor_stopwait_s}s"
            if "timeout_stop" in sysd
            else f"lower [deploy.supervisor] stopwaitsecs below {limits.systemd_timeout_stop_s}s"
        )
        add(
            f"supervisord stopwaitsecs {limits.supervisor_stopwait_s}s",
            f"systemd TimeoutStopSec {limits.systemd_timeout_stop_s}s",
            fix,
        )

    memory = worker.limits.memory_limit_bytes
    if memory is not None:
        mem = f"memory_limit {format_bytes(memory)}"
        high, top, k8s = limits.systemd_memory_high, limits.systemd_memory_max, limits.kubernetes_memory_limit
        if high is not None and not memory < high:
            add(
                mem,
                f"[deploy.systemd] memory_high {format_bytes(high)}",
                "raise memory_high (or remove it to derive one) or lower the worker's memory_limit",
            )
        if top is not None and not memory < top:
            add(
                mem,
                f"[deploy.systemd] memory_max {format_bytes(top)}",
                "raise memory_max (or remove it to derive one) or lower the worker's memory_limit",
            )
        if (
            high is not None
            and top is not None
            and high > top
            and ("memory_high" in sysd or "memory_max" in sysd)
        ):
            add(
                f"[deploy.systemd] memory_high {format_bytes(high)}",
                f"memory_max {format_bytes(top)} (or equal)",
                "lower memory_high or raise memory_max",
            )
        if k8s is not None and not memory < k8s:
            add(
                mem,
                f"[deploy.kubernetes] memory_limit {format_bytes(k8s)}",
                "raise memory_limit (or remove it to derive one) or lower the worker's memory_limit",
            )
        request = limits.kubernetes_memory_request
        if request is not None and k8s is not None and request > k8s:
            add(
                f"[deploy.kubernetes] memory_request {format_bytes(request)}",
                f"memory_limit {format_bytes(k8s)} (or equal)",
                "lower memory_request",
            )
    return found


def check_budget(config: StackConfig, settings: Mapping[str, Mapping[str, Any]]) -> list[BudgetViolation]:
    """All violations of the stack under the validated ``settings`` per target."""
    found: list[BudgetViolation] = []
    for worker in config.workers.values():
        found += worker_violations(worker, engine_limits(worker, settings), settings)
    return found


def enforce_budget(config: StackConfig, settings: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise :class:`BudgetError` (exit 2) when the budget is broken."""
    found = check_budget(config, settings)
    if found:
        raise BudgetError(found)
