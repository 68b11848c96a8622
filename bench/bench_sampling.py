"""CPU cost of ProcessManager's monitor thread, with 0 and 8 child processes.

Run: ``python -m bench.bench_sampling [--seconds 60] [--no-write]``.

A ProcessManager runs at its defaults (memory and CPU limits on, sampling
every 0.25 s, children counted) while the main thread idles in
``manager.sleep``. The CPU time of the monitor thread alone is read from
``/proc/self/task/<tid>/stat`` before and after the window. As a baseline
in the same run and the same process, a second thread samples the same
tree the obvious way with psutil (``children(recursive=True)``,
``memory_info()`` and ``cpu_times()`` of each, at the same interval), and its
CPU time is read the same way. Goal: <= 0.5 % of one core.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import psutil

from procguard.manager import DEFAULT_SAMPLE_INTERVAL_S, ProcessManager

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def naive_sampler(stop: threading.Event, interval: float, out: list[int]) -> None:
    out.append(threading.get_native_id())
    me = psutil.Process()
    while not stop.wait(interval):
        total = 0
        cpu = 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
                t = p.cpu_times()
                cpu += t.user + t.system
            except psutil.Error:
                pass


def measure(children: int, seconds: float) -> tuple[float, float]:
    kids = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"]) for _ in range(children)
    ]
    manager = ProcessManager(handle_signals=False, terminate_children=False)
    try:
        manager.start()
        monitor = manager._monitor
        assert monitor is not None and monitor.native_id is not None
        stop = threading.Event()
        ids: list[int] = []
        naive = threading.Thread(target=naive_sampler, args=(stop, DEFAULT_SAMPLE_INTERVAL_S, ids), daemon=True)
        naive.start()
        while not ids:
            time.sleep(0.01)
        time.sleep(1.0)  # both past their first samples
        ours0, naive0, t0 = thread_cpu_s(monitor.native_id), thread_cpu_s(ids[0]), time.monotonic()
        manager.sleep(seconds)
        ours1, naive1, t1 = thread_cpu_s(monitor.native_id), thread_cpu_s(ids[0]), time.monotonic()
        stop.set()
        naive.join()
        elapsed = t1 - t0
        return (ours1 - ours0) / elapsed * 100, (naive1 - naive0) / elapsed * 100
    finally:
        manager.shutdown()
        for k in kids:
            k.kill()
            k.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    from .bench_hotloop import machine, write_section

    rows = []
    for n in (0, 8):
        ours, naive = measure(n, args.seconds)
        ratio = f"{ours / naive:.2f}" if naive > 0 else "n/a"
        rows.append(f"| {n} | **{ours:.3f} %** | {naive:.3f} % | {ratio} |")
    procs = len(psutil.pids())
    table = (
        "## ProcessManager sampling overhead (`python -m bench.bench_sampling`)\n\n"
        f"CPU time of the monitor thread over {args.seconds:g} s at the default interval "
        f"({DEFAULT_SAMPLE_INTERVAL_S:g} s), in percent of one core, beside a naive psutil sampler thread "
        f"doing the same job in the same process at the same interval; {procs} processes on the machine; "
        f"{machine()}.\n\n"
        "| child processes | ProcessManager monitor | naive psutil sampler | ratio |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nGoal: <= 0.5 % of one core. The CPU clock of a thread ticks in 1/"
        f"{TICK} s, so figures below ~0.02 % over 60 s are at the resolution limit.\n"
    )
    print(table)
    if not args.no_write:
        write_section("manager-sampling", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
