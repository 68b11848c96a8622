"""Cost of ``should_continue()`` + ``heartbeat()`` per iteration, against a pure-Python floor.

Run: ``python -m bench.bench_hotloop [--iterations N] [--rounds R] [--no-write]``.

The floor is the least any implementation of the two calls can cost in
Python: an object whose ``should_continue()`` checks one flag and whose
``heartbeat()`` stores one ``time.monotonic()`` timestamp, called the same way
(bound-method calls in the same loop). The ProcessManager is started with its
monitor thread sampling at the default interval, as in production. Rounds
alternate between the two so that machine noise hits both alike; the best
round of each is compared (the minimum is the least noisy estimator of a
fixed cost). Goal: ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import sys
import time

from procguard.manager import ProcessManager

from ._report import machine, write_section

__all__ = ["machine", "write_section"]  # re-exported for the other benchmarks



class Floor:
    """The minimum: one flag check, one monotonic timestamp."""

    def __init__(self) -> None:
        self.stop = False
        self.last = 0.0

    def should_continue(self) -> bool:
        return not self.stop

    def heartbeat(self) -> None:
        self.last = time.monotonic()


def run_loop(obj: Floor | ProcessManager, n: int) -> float:
    """Seconds per iteration of the bare loop around the two calls."""
    started = time.perf_counter()
    for _ in range(n):
        if not obj.should_continue():
            break
        obj.heartbeat()
    return (time.perf_counter() - started) / n


def run_loop_with_gauge(manager: ProcessManager, n: int) -> float:
    """The same loop plus ``set_gauge("queue_depth", i)`` every iteration (what an autoscaled worker does)."""
    started = time.perf_counter()
    for i in range(n):
        if not manager.should_continue():
            break
        manager.heartbeat()
        manager.set_gauge("queue_depth", i)
    return (time.perf_counter() - started) / n


def measure(iterations: int, rounds: int) -> dict[str, float]:
    manager = ProcessManager(
        max_runtime_hours=0, memory_limit_mb=2048, cpu_limit_percent=0, handle_signals=False,
        terminate_children=False,
    )
    manager.start()
    floor = Floor()
    best = {"floor": float("inf"), "manager": float("inf"), "gauge": float("inf")}
    try:
        run_loop(floor, iterations // 10)
        run_loop(manager, iterations // 10)
        for _ in range(rounds):
            best["floor"] = min(best["floor"], run_loop(floor, iterations))
            best["manager"] = min(best["manager"], run_loop(manager, iterations))
            best["gauge"] = min(best["gauge"], run_loop_with_gauge(manager, iterations))
    finally:
        manager.shutdown()
    best["ratio"] = best["manager"] / best["floor"]
    best["gauge_ratio"] = best["gauge"] / best["floor"]
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    r = measure(args.iterations, args.rounds)
    table = (
        "## ProcessManager hot loop (`python -m bench.bench_hotloop`)\n\n"
        f"`should_continue()` + `heartbeat()` per iteration, best of {args.rounds} rounds of "
        f"{args.iterations:,} iterations, monitor thread running; {machine()}.\n\n"
        "| loop | ns per iteration | ratio to floor |\n|---|---|---|\n"
        f"| floor: flag check + `time.monotonic()` store | {r['floor'] * 1e9:.1f} | 1.00 |\n"
        f"| ProcessManager | {r['manager'] * 1e9:.1f} | **{r['ratio']:.2f}** (goal <= 1.5) |\n"
        f"| ProcessManager + `set_gauge(\"queue_depth\", i)` | {r['gauge'] * 1e9:.1f} | {r['gauge_ratio']:.2f}"
        f" (the gauge: +{(r['gauge'] - r['manager']) * 1e9:.1f} ns) |\n"
    )
    print(table)
    if not args.no_write:
        write_section("manager-hotloop", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
