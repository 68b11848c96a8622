"""OpenTelemetry spans for a ProcessManager's iterations and its stop (the ``procguard[otel]`` extra).

Tracing is on when the program asks for it (``ProcessManager(otel=True)``)
or the environment does (:func:`wanted`: an OTLP endpoint or a traces
exporter is set), and off when an operator turned it off
(``OTEL_SDK_DISABLED=true``, ``OTEL_TRACES_EXPORTER=none``). When it is off
this module is the only thing imported, and it imports nothing from
OpenTelemetry: the work loop runs exactly as without tracing.

What one worker emits (:class:`IterationTracer`):

- one ``procguard.iteration`` span per iteration, current while the
  program's code runs, so its own spans and instrumented calls nest under
  it. An iteration runs from one ``should_continue()`` to the next, or to
  the manager's ``sleep()``/``sleep_async()`` when the loop sleeps there
  first: time spent sleeping between iterations is not work, and ending the
  span when the sleep begins sends it while the worker sleeps instead of a
  whole interval later (and keeps it from being lost if the process is
  killed in its sleep);
- one ``procguard.shutdown`` span around the shutdown (the cleanup callbacks
  run under it), linked to the last iteration and carrying the
  ``procguard.stop`` event: the manager's stop outcome, as every other
  surface shows it;
- then a flush of what is still batched, bounded by what is left of the
  grace period.

The spans go to the OTLP/HTTP exporter (protobuf) configured by the standard
``OTEL_EXPORTER_OTLP_*`` variables, batched by the SDK's
``BatchSpanProcessor`` (``OTEL_BSP_*``). A program that installed its own
tracer provider before ``start()`` keeps it: procguard's spans go there, and
procguard only flushes it at the stop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from .outcome import StopOutcome

log = logging.getLogger(__name__)

#: The environment that asks for traces: where to send them, or which exporter to use.
REQUEST_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
)
#: The exporters procguard can set up (``OTEL_TRACES_EXPORTER``, comma separated; default otlp).
EXPORTERS = ("otlp", "console")
#: The OTLP protocol of the exporter procguard installs.
PROTOCOL = "http/protobuf"
#: The longest the stop waits for batched spans to be sent (less when the grace period has less left).
FLUSH_TIMEOUT_S = 5.0
#: What the flush leaves of the grace period, so the stop still ends inside it.
FLUSH_MARGIN_S = 0.25

INSTALL_HINT = "pip install 'procguard[otel]'"

# Span, event and attribute names: what a trace backend is queried by.
ITERATION_SPAN = "procguard.iteration"
SHUTDOWN_SPAN = "procguard.shutdown"
STOP_EVENT = "procguard.stop"
WORKER = "procguard.worker"
ITERATION = "procguard.iteration"
OUTCOME = "procguard.outcome"
DURATION = "procguard.duration_s"
ITERATIONS = "procguard.iterations"
STACK = "procguard.stack"
INSTANCE = "procguard.instance"
REASON = "procguard.reason"
DETAIL = "procguard.detail"
EXIT_STATUS = "procguard.exit_status"
ENDED_BY = "procguard.by"
FIGURE_PREFIX = "procguard.figure."

# An iteration's outcome.
OK = "ok"
ERROR = "error"  # record_failure() was called during it
CRASHED = "crashed"  # the work loop ended in it by an exception or a failing sys.exit()


def _flag(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip().lower()


def wanted(otel: bool | None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a worker traces: ``otel`` when given, else the environment asks; an operator's off wins.

    Standard library only and cheap: it runs at every ``start()``.
    """
    if _flag(environ, "OTEL_SDK_DISABLED") == "true" or _flag(environ, "OTEL_TRACES_EXPORTER") == "none":
        return False
    if otel is not None:
        return bool(otel)
    return any(environ.get(name, "").strip() for name in REQUEST_VARIABLES)


def resource_attributes(
    worker: str, stack: str | None, environ: Mapping[str, str] = os.environ
) -> dict[str, str | int]:
    """procguard's resource attributes: which worker, instance and stack the spans come from.

    ``service.name`` is the worker's name unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` name the service: the operator's word wins.
    """
    from .instances.marker import MARKER_ENV

    attributes: dict[str, str | int] = {WORKER: worker, "process.pid": os.getpid()}
    marker = environ.get(MARKER_ENV)
    if marker:
        attributes[INSTANCE] = marker
    if stack:
        attributes[STACK] = stack
    named = environ.get("OTEL_SERVICE_NAME", "").strip() or any(
        item.partition("=")[0].strip() == "service.name"
        for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
    )
    if not named:
        attributes["service.name"] = worker
    return attributes


def flush_timeout(grace_left_s: float | None) -> float:
    """Seconds the stop may wait for the last spans: at most FLUSH_TIMEOUT_S, inside the grace left."""
    if grace_left_s is None:
        return FLUSH_TIMEOUT_S
    return max(0.0, min(FLUSH_TIMEOUT_S, grace_left_s - FLUSH_MARGIN_S))


class IterationTracer:
    """One worker's spans; see the module docstring. Called by the manager from its loop and its stop.

    Built by :meth:`start`; every method is cheap when there is nothing to do
    and never raises (a tracing failure must not stop the worker).
    """

    __slots__ = (
        "_attached",
        "_context",
        "_last",
        "_outcome",
        "_provider",
        "_span",
        "_started_ns",
        "_token",
        "_trace_api",
        "_tracer",
        "_worker",
    )

    def __init__(self, tracer: Tracer, worker: str, provider: Any) -> None:
        self._tracer = tracer
        self._worker = worker
        #: Flushed at the stop, never shut down: a ProcessManager created after this one in the
        #: same process sends through it too.
        self._provider = provider
        self._span: Span | None = None  # the open span (an iteration's, then the shutdown's)
        self._last: Span | None = None  # the last iteration's, for the shutdown span's link
        self._started_ns = 0
        self._outcome = OK
        self._attached: Context | None = None
        self._token: object = None
        from opentelemetry import context, trace  # kept: imported once, not at every iteration

        self._context: Any = context
        self._trace_api: Any = trace

    @classmethod
    def start(cls, worker: str, stack: str | None, *, explicit: bool) -> IterationTracer | None:
        """Set up tracing for ``worker``; None (with one warning) when OpenTelemetry is not installed.

        ``explicit``: the program asked (``otel=True``): a missing extra is
        then its error (UsageError), not a warning.
        """
        try:
            from opentelemetry import trace

            provider = trace.get_tracer_provider()
            if isinstance(provider, trace.ProxyTracerProvider):  # nobody set one up: procguard does
                provider = _install_provider(worker, stack)
        except ImportError as error:
            msg = f"otel: OpenTelemetry is not installed ({error}); {INSTALL_HINT}"
            if explicit:
                raise UsageError(msg) from None
            log.warning("%s (pid %d): traces asked for by the environment, but %s", worker, os.getpid(), msg)
            return None
        from . import __version__

        return cls(trace.get_tracer("procguard", __version__), worker, provider)

    # -- iterations -------------------------------------------------------------

    def begin(self, iteration: int) -> None:
        """An iteration begins (``should_continue()`` said True): its span opens and becomes current."""
        self.pause()
        try:
            now = time.time_ns()
            span = self._tracer.start_span(
                ITERATION_SPAN, attributes={WORKER: self._worker, ITERATION: iteration}, start_time=now
            )
            self._span, self._last, self._started_ns, self._outcome = span, span, now, OK
            self._make_current(span)
        except Exception:
            log.debug("starting an iteration span failed", exc_info=True)

    def pause(self) -> None:
        """The iteration's work is over (the loop sleeps, or asks again): its span ends."""
        span = self._span
        if span is None:
            return
        self._span = None
        try:
            self._detach()
            now = time.time_ns()
            span.set_attribute(OUTCOME, self._outcome)
            span.set_attribute(DURATION, (now - self._started_ns) / 1e9)
            span.end(end_time=now)
        except Exception:
            log.debug("ending an iteration span failed", exc_info=True)

    def failed(self, error: BaseException | None) -> None:
        """``record_failure()`` during the iteration: its outcome is ``error``."""
        self._mark(ERROR, error)

    def crashed(self, error: BaseException) -> None:
        """The work loop ended inside the iteration by ``error``: its outcome is ``crashed``."""
        self._mark(CRASHED, error)

    def _mark(self, outcome: str, error: BaseException | None) -> None:
        span = self._span
        if span is None or self._last is not span:  # no iteration open (or the shutdown's span is)
            return
        self._outcome = outcome
        try:
            from opentelemetry.trace import Status, StatusCode

            if error is not None:
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"iteration {outcome}"))
        except Exception:
            log.debug("marking an iteration span failed", exc_info=True)

    def _make_current(self, span: Span) -> None:
        self._attached = self._trace_api.set_span_in_context(span)
        self._token = self._context.attach(self._attached)

    def _detach(self) -> None:
        """Make the span we attached no longer current, if it still is.

        It is not when the stop comes from another context than the loop's
        (after ``asyncio.run`` returned, or from the monitor thread): the
        loop's context is gone then, and with it the span's being current.
        """
        attached, self._attached = self._attached, None
        if attached is not None and self._context.get_current() is attached:
            self._context.detach(self._token)

    # -- the stop ---------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """The loop is over: the open iteration ends, the shutdown's span opens (cleanups run under it)."""
        self.pause()
        try:
            last = self._last
            links = [self._trace_api.Link(last.get_span_context())] if last is not None else None
            span = self._tracer.start_span(SHUTDOWN_SPAN, attributes={WORKER: self._worker}, links=links)
            self._span, self._last = span, None
            self._make_current(span)
        except Exception:
            log.debug("starting the shutdown span failed", exc_info=True)

    def finish(self, outcome: StopOutcome, iterations: int, *, grace_left_s: float | None) -> None:
        """The stop is final: the ``procguard.stop`` event, the shutdown span ends, the batch is sent.

        The flush waits at most :func:`flush_timeout` (``grace_left_s``: what
        is left of the grace period, None when it has no limit); what is not
        sent by then is lost.
        """
        span, self._span = self._span, None
        try:
            self._detach()
            if span is not None:
                span.add_event(STOP_EVENT, stop_attributes(outcome))
                span.set_attribute(ITERATIONS, iterations)
                span.set_attribute(REASON, outcome.reason.value)
                if not outcome.expected:
                    from opentelemetry.trace import Status, StatusCode

                    span.set_status(Status(StatusCode.ERROR, outcome.summary()))
                span.end()
        except Exception:
            log.debug("ending the shutdown span failed", exc_info=True)
        self._flush(flush_timeout(grace_left_s))

    def _flush(self, timeout_s: float) -> None:
        started = time.monotonic()
        # The SDK's flush waits as long as the exporter retries (10 s and more against a
        # collector that is down), whatever timeout it is given: the bound is ours.
        done = _bounded(lambda: self._provider.force_flush(int(timeout_s * 1000)), timeout_s)
        took = time.monotonic() - started
        if done:
            log.debug("%s: spans flushed in %.3fs", self._worker, took)
        else:
            log.warning(
                "%s (pid %d): spans not sent within %.1fs (is the collector down?) are lost",
                self._worker, os.getpid(), timeout_s,
            )


def stop_attributes(outcome: StopOutcome) -> dict[str, str | int | float]:
    """The ``procguard.stop`` event's attributes: the outcome's reason, detail, status, who, figures."""
    attributes: dict[str, str | int | float] = {
        REASON: outcome.reason.value,
        DETAIL: outcome.detail,
        ENDED_BY: outcome.by.value,
    }
    if outcome.exit_status is not None:
        attributes[EXIT_STATUS] = outcome.exit_status
    for name, value in outcome.figures.items():
        attributes[FIGURE_PREFIX + name] = value
    return attributes


def _install_provider(worker: str, stack: str | None) -> TracerProvider:
    """procguard's tracer provider (resource, batch, exporters from the environment), made the global one."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    names = [n.strip() for n in _flag(os.environ, "OTEL_TRACES_EXPORTER").split(",") if n.strip()] or ["otlp"]
    for name in names:
        if name not in EXPORTERS:
            log.warning("%s: OTEL_TRACES_EXPORTER=%r: procguard sets up %s only; using otlp",
                        worker, name, " and ".join(EXPORTERS))
    exporters: list[SpanExporter] = []
    if "console" in names:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporters.append(ConsoleSpanExporter())
    if "otlp" in names or not exporters:
        protocol = _flag(os.environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _flag(
            os.environ, "OTEL_EXPORTER_OTLP_PROTOCOL"
        )
        if protocol and protocol != PROTOCOL:
            log.warning(
                "%s: OTLP protocol %r: procguard exports over %s only; point the endpoint at the "
                "collector's OTLP/HTTP port (4318)", worker, protocol, PROTOCOL,
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())
    resource = Resource.create(resource_attributes(worker, stack))
    # No exit hook of the SDK's: it would wait up to 30 s for a collector that is down. The
    # stop flushes, within the grace.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        # Batched, the console's too: printing or sending each span from the loop would cost the loop.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def _bounded(fn: Any, timeout_s: float) -> bool:
    """Run ``fn`` for at most ``timeout_s``: True when it returned in time (it goes on in a daemon thread)."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        except Exception:
            log.debug("flushing spans failed", exc_info=True)
        finally:
            done.set()

    threading.Thread(target=run, name="procguard-otel-flush", daemon=True).start()
    return done.wait(timeout_s)
