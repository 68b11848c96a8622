"""Cost of OpenTelemetry tracing per iteration, against a bare OpenTelemetry span in the same run.

Run: ``python -m bench.bench_tracing [--iterations N] [--rounds R] [--no-write]``.

Three loops, rounds alternating so that machine noise hits them alike, the
best round of each kept (the least noisy estimate of a fixed cost):

- ProcessManager without tracing: ``should_continue()`` + ``heartbeat()``;
- ProcessManager with ``otel=True``: the same loop, each iteration one
  ``procguard.iteration`` span (opened, made current, closed with its
  outcome and duration);
- a bare span: ``with tracer.start_as_current_span("bare"): pass``, what a
  program pays for the least span it could write itself.

All spans go through one SDK ``TracerProvider`` with a ``BatchSpanProcessor``
whose exporter only counts them: the export itself (serialising, HTTP) runs
in the SDK's own thread, batched, and is left out of both traced loops alike.

Then, in fresh processes, what turning tracing on costs a worker once: the
resident memory and the ``start()`` time of a ProcessManager with and
without ``otel=True`` (SDK and OTLP exporter loaded, provider set up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from procguard.manager import ProcessManager

from ._report import machine, write_section


def run_manager(manager: ProcessManager, n: int) -> float:
    """Seconds per iteration of the bare loop around the two calls."""
    started = time.perf_counter()
    for _ in range(n):
        if not manager.should_continue():
            break
        manager.heartbeat()
    return (time.perf_counter() - started) / n


def run_bare_span(tracer: Any, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        with tracer.start_as_current_span("bare"):
            pass
    return (time.perf_counter() - started) / n


def _counting_provider() -> tuple[Any, Any]:
    """A provider whose batch processor hands spans to an exporter that only counts them."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Counting(SpanExporter):
        def __init__(self) -> None:
            self.count = 0

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            self.count += len(spans)
            return SpanExportResult.SUCCESS

    exporter = Counting()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 20))
    trace.set_tracer_provider(provider)  # the manager with otel=True uses the program's provider
    return provider, exporter


def measure(iterations: int, rounds: int) -> dict[str, float]:
    provider, exporter = _counting_provider()
    tracer = provider.get_tracer("bench")
    common: dict[str, Any] = {
        "max_runtime_hours": 0, "memory_limit_mb": 2048, "cpu_limit_percent": 0, "handle_signals": False,
        "terminate_children": False,
    }
    plain = ProcessManager(otel=False, **common).start()
    traced = ProcessManager(otel=True, **common).start()
    best = {"plain": float("inf"), "traced": float("inf"), "bare": float("inf")}
    spans = 0
    try:
        run_manager(plain, iterations // 10)
        run_manager(traced, iterations // 10)
        run_bare_span(tracer, iterations // 10)
        spans += 2 * (iterations // 10)
        for _ in range(rounds):
            best["plain"] = min(best["plain"], run_manager(plain, iterations * 20))
            best["traced"] = min(best["traced"], run_manager(traced, iterations))
            best["bare"] = min(best["bare"], run_bare_span(tracer, iterations))
            spans += 2 * iterations
    finally:
        plain.shutdown()
        traced.shutdown()  # its procguard.shutdown span, then a flush of the program's provider
        spans += 1
        provider.shutdown()
    best["added"] = best["traced"] - best["plain"]
    best["ratio"] = best["added"] / best["bare"]
    best["exported"] = exporter.count
    best["spans"] = spans
    return best


PROBE = """
import json, os, sys, time
def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
from procguard.manager import ProcessManager
before = rss_kb()
m = ProcessManager(otel={otel}, handle_signals=False, max_runtime_hours=0, memory_limit_mb=0, cpu_limit_percent=0)
t = time.perf_counter()
m.start()
took = time.perf_counter() - t
m.should_continue()
print(json.dumps({{"start_s": took, "rss_kb": rss_kb(), "added_kb": rss_kb() - before,
                   "otel": sum(1 for name in sys.modules if name.startswith("opentelemetry"))}}))
m.shutdown()
"""


def footprint(runs: int) -> dict[str, dict[str, float]]:
    """Median start() time and RSS of a fresh worker, with and without tracing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # Nothing listens there and nothing is sent before the stop: the exporter only has to exist.
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_BSP_SCHEDULE_DELAY="600000")
    result: dict[str, dict[str, float]] = {}
    for otel in (False, True):
        samples = []
        for _ in range(runs):
            out = subprocess.run(
                [sys.executable, "-c", PROBE.format(otel=otel)], env=env, capture_output=True, text=True,
                timeout=60, check=True,
            )
            samples.append(json.loads(out.stdout.splitlines()[-1]))
        median = {key: sorted(s[key] for s in samples)[len(samples) // 2] for key in samples[0]}
        result["traced" if otel else "plain"] = median
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100_000, help="per round of each traced loop")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per footprint figure")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    r = measure(args.iterations, args.rounds)
    f = footprint(args.runs)
    plain, traced = f["plain"], f["traced"]
    table = (
        "## Tracing cost (`python -m bench.bench_tracing`)\n\n"
        f"Per iteration, best of {args.rounds} rounds of {args.iterations:,} iterations (the untraced loop "
        f"{args.iterations * 20:,}), rounds alternating; one SDK provider with a `BatchSpanProcessor` whose "
        "exporter only counts the spans (the export itself runs in the SDK's thread, the same for both traced "
        f"loops; {r['exported']:,} of {r['spans']:,} spans reached it); {machine()}.\n\n"
        "| loop | ns per iteration |\n|---|---|\n"
        f"| ProcessManager, tracing off: `should_continue()` + `heartbeat()` | {r['plain'] * 1e9:,.0f} |\n"
        f"| ProcessManager, `otel=True`: the same, one `procguard.iteration` span each | "
        f"{r['traced'] * 1e9:,.0f} |\n"
        f"| bare span: `with tracer.start_as_current_span(\"bare\"): pass` | {r['bare'] * 1e9:,.0f} |\n\n"
        f"What tracing adds to an iteration: **{r['added'] * 1e6:.1f} µs**, {r['ratio']:.2f} x a bare span "
        "(the iteration span also carries the worker, the iteration number, the outcome and the duration).\n\n"
        f"Once per worker, median of {args.runs} fresh processes: `start()` takes "
        f"{plain['start_s'] * 1e3:.1f} ms without tracing and **{traced['start_s'] * 1e3:.1f} ms** with it "
        f"(the SDK and the OTLP/HTTP exporter imported, {traced['otel']:.0f} modules), and the process holds "
        f"{plain['rss_kb'] / 1024:.1f} MB against **{traced['rss_kb'] / 1024:.1f} MB** "
        f"(+{(traced['rss_kb'] - plain['rss_kb']) / 1024:.1f} MB). Without tracing no OpenTelemetry module "
        f"is loaded ({plain['otel']:.0f}).\n"
    )
    print(table)
    if not args.no_write:
        write_section("tracing", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
