"""``procguard up`` against supervisord and a bare Popen loop, measured in one run.

Run: ``python -m bench.bench_supervisor [--workers 50] [--seconds 60] [--baseline SRC]
[--footprint-only] [--no-write]``

1. **Footprint**: the supervisor's RSS and CPU (nanoseconds, from the
   scheduler) while it supervises N idle workers for ``--seconds``, its
   memory/CPU sampling of every worker on: once at the default memory limit,
   once with a 200 MB limit each; side by side in the same window with
   supervisord (``supervisor`` from PyPI, in this environment) supervising
   the same N programs (in the foreground: see "How" in the section it
   writes), and with ``--baseline``, a procguard from another source tree.
2. **Restart latency** after a crash: from the worker's last words (a
   timestamp written just before ``exit(1)``) to the replacement's first
   (a timestamp written first thing), for a *first* crash (each run outlives
   ``backoff_reset``, so every crash is a first one), against a bare
   ``while True: Popen(...).wait()`` loop restarting the same program.
3. **down** of N workers that each take 0.5 s to stop after SIGTERM: wall
   time of ``procguard down`` vs ``supervisorctl stop all``.
4. **Survivors** after SIGKILL of the supervisor when each of 10 workers has
   4 ``multiprocessing`` children (daemon=True), counted 2 s later, for
   procguard and for supervisord with ``stopasgroup``/``killasgroup``.

Everything it starts, it stops (by pid). Writes its section of
docs/benchmarks.md (``<!-- bench:supervisor -->``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench.bench_hotloop import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent

#: A second procguard in the footprint run gives every idle worker this (small) memory limit.
SMALL_LIMIT = "200MB"

IDLE = "import time\nwhile True:\n    time.sleep(3600)\n"
CRASHY = textwrap.dedent("""
    import sys, time
    path = sys.argv[1]
    with open(path, "a") as f:
        f.write("start %.6f\\n" % time.time())
    time.sleep(0.3)
    with open(path, "a") as f:
        f.write("exit %.6f\\n" % time.time())
    sys.exit(1)
""")
SLOWSTOP = textwrap.dedent("""
    import signal, sys, time
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print("ready", flush=True)
    while not stop:
        time.sleep(0.05)
    time.sleep(0.5)
    sys.exit(0)
""")
MPWORKER = textwrap.dedent("""
    import multiprocessing, os, sys, time
    def child():
        while True:
            time.sleep(1)
    if __name__ == "__main__":
        multiprocessing.set_start_method("fork")
        kids = [multiprocessing.Process(target=child, daemon=True) for _ in range(4)]
        for k in kids:
            k.start()
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write(" ".join(str(p) for p in [os.getpid()] + [k.pid for k in kids]))
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
        while True:
            time.sleep(1)
""")


def env(state: Path, src: Path = ROOT / "src") -> dict[str, str]:
    result = dict(os.environ)
    result["PYTHONPATH"] = os.pathsep.join([str(src), result.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result["PROCGUARD_STATE_DIR"] = str(state)
    result["PROCGUARD_LOG_LEVEL"] = "WARNING"
    return result


def wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] not in (b"Z", b"X")


def kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


# -- the two supervisors -------------------------------------------------------------


class Procguard:
    """A stack under ``procguard up`` (foreground process, so we hold its pid)."""

    def __init__(self, work: Path, programs: dict[str, list[str]], *, src: Path = ROOT / "src",
                 label: str = "procguard", **worker_keys: str) -> None:
        self.dir = work / label
        self.dir.mkdir()
        lines = ['[project]', 'name = "bench"', '', '[defaults]', 'grace = "10s"']
        lines += [f'{key} = "{value}"' for key, value in worker_keys.items()]
        for name, argv in programs.items():
            quoted = ", ".join(f'"{part}"' for part in argv)
            lines += ["", f"[workers.{name}]", f"command = [{quoted}]"]
        self.config = self.dir / "procguard.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.env = env(self.dir / "state", src)
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([PY, "-m", "procguard", *args, "-c", str(self.config)], env=self.env,
                              capture_output=True, timeout=120, check=False)

    def up(self) -> int:
        self.proc = subprocess.Popen([PY, "-m", "procguard", "up", "-c", str(self.config)], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self.proc.pid

    def running(self, count: int) -> bool:
        result = self.cli("status", "--json")
        if result.returncode != 0:
            return False
        import json

        return sum(w["state"] == "running" for w in json.loads(result.stdout)) >= count

    def watchdog_pid(self) -> int | None:
        assert self.proc is not None
        for child in psutil.Process(self.proc.pid).children():
            if "procguard-watchdog" in child.cmdline():
                return child.pid
        return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.cli("down")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc.pid)


class Supervisord:
    """The same programs under supervisord 4 (installed from PyPI into this environment)."""

    def __init__(self, work: Path, programs: dict[str, list[str]], *, group_signals: bool = False) -> None:
        self.dir = work / "supervisord"
        self.dir.mkdir()
        self.sock = self.dir / "s.sock"
        lines = [
            "[unix_http_server]", f"file={self.sock}",
            "[supervisord]", f"logfile={self.dir / 'supervisord.log'}", f"pidfile={self.dir / 'pid'}",
            "nodaemon=true", "loglevel=warn",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]", f"serverurl=unix://{self.sock}",
        ]
        for name, argv in programs.items():
            lines += [f"[program:{name}]", "command=" + " ".join(argv), "autorestart=true", "startsecs=1",
                      "stopwaitsecs=10", f"stdout_logfile={self.dir / (name + '.log')}", "redirect_stderr=true"]
            if group_signals:
                lines += ["stopasgroup=true", "killasgroup=true"]
        self.config = self.dir / "supervisord.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def up(self) -> int:
        self.proc = subprocess.Popen([str(BIN / "supervisord"), "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self.proc.pid

    def ctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.config), *args],
                              capture_output=True, timeout=120, check=False)

    def running(self, count: int) -> bool:
        return self.ctl("status").stdout.count(b"RUNNING") >= count

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc.pid)


# -- measurements --------------------------------------------------------------------------


def footprint(work: Path, workers: int, seconds: float, baseline: Path | None = None) -> dict[str, float]:
    """RSS and CPU of each supervisor over the same window, side by side.

    ``procguard``: every worker at the default memory limit (memory sampled: a limit is on
    unless a worker sets 0); ``procguard_small``: the same with a 200 MB limit, where idle
    workers have less room and are sampled at the regular pace; ``baseline``: a procguard
    from another source tree, at the default limit.
    """
    idle = work / "idle.py"
    idle.write_text(IDLE)
    programs = {f"w{i:02d}": [PY, str(idle)] for i in range(workers)}
    stacks = {
        "procguard": Procguard(work, programs),
        "procguard_small": Procguard(work, programs, label="small", memory_limit=SMALL_LIMIT),
    }
    if baseline is not None:
        stacks["baseline"] = Procguard(work, programs, src=baseline, label="baseline")
    sd = Supervisord(work, programs)
    try:
        procs = {name: stack.up() for name, stack in stacks.items()}
        procs["supervisord"] = sd.up()
        wait(lambda: sd.running(workers) and all(stack.running(workers) for stack in stacks.values()),
             240, "all workers running")
        time.sleep(3)  # let start-up garbage settle before the window opens
        watchdog = stacks["procguard"].watchdog_pid()
        if watchdog:
            procs["watchdog"] = watchdog
        before = {name: cpu_ns(pid) for name, pid in procs.items()}
        started = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - started
        result = {}
        for name, pid in procs.items():
            used = cpu_ns(pid) - before[name]
            result[f"{name}_cpu_ms"] = used / 1e6
            result[f"{name}_cpu_percent"] = used / 1e9 / elapsed * 100
            result[f"{name}_rss_mb"] = psutil.Process(pid).memory_info().rss / 2**20
            result[f"{name}_anon_mb"] = anon_mb(pid)
        reference = max(result["supervisord_cpu_ms"], 1e-9)
        result["cpu_ratio"] = (result["procguard_cpu_ms"] + result.get("watchdog_cpu_ms", 0.0)) / reference
        for name in stacks:
            result[f"{name}_cpu_ratio"] = result[f"{name}_cpu_ms"] / reference
        return result
    finally:
        for stack in stacks.values():
            stack.stop()
        sd.stop()


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in nanoseconds (the scheduler's own count).

    The first field of ``/proc/PID/task/TID/schedstat`` is the time each thread
    spent on a CPU, kept in nanoseconds; the user/system times psutil reports
    advance in 10 ms clock ticks, which at a few tenths of a percent over a
    minute is mostly rounding.
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as handle:
                total += int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


def anon_mb(pid: int) -> float:
    """Private (anonymous) resident memory: RSS without the file-backed pages every Python shares."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def restart_latency(work: Path, samples: int) -> dict[str, float]:
    crashy = work / "crashy.py"
    crashy.write_text(CRASHY)

    def latencies(path: Path) -> list[float]:
        events = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
        gaps = []
        for (kind, t), (next_kind, next_t) in itertools.pairwise(events):
            if kind == "exit" and next_kind == "start":
                gaps.append(float(next_t) - float(t))
        return gaps

    bare_file = work / "bare.txt"
    for _ in range(samples + 1):
        subprocess.Popen([PY, str(crashy), str(bare_file)]).wait()
    bare = latencies(bare_file)

    pg_file = work / "pg.txt"
    pg = Procguard(work, {"crashy": [PY, str(crashy), str(pg_file)]},
                   backoff_reset="0.2s", start_limit="1000")
    try:
        pg.up()
        wait(lambda: len(latencies(pg_file)) >= samples, 120, "procguard restarts")
    finally:
        pg.stop()
    ours = latencies(pg_file)[:samples]
    return {
        "bare_ms": statistics.median(bare) * 1000,
        "procguard_ms": statistics.median(ours) * 1000,
        "procguard_p90_ms": sorted(ours)[int(len(ours) * 0.9) - 1] * 1000,
        "samples": float(len(ours)),
    }


def down_time(work: Path, workers: int) -> dict[str, float]:
    slow = work / "slowstop.py"
    slow.write_text(SLOWSTOP)
    programs = {f"s{i:02d}": [PY, str(slow)] for i in range(workers)}
    pg, sd = Procguard(work, programs), Supervisord(work, programs)
    try:
        pg.up()
        sd.up()
        wait(lambda: pg.running(workers) and sd.running(workers), 180, "all slow workers running")
        started = time.monotonic()
        result = pg.cli("down")
        pg_s = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        started = time.monotonic()
        sd.ctl("stop", "all")
        sd_s = time.monotonic() - started
        return {"procguard_s": pg_s, "supervisord_s": sd_s}
    finally:
        pg.stop()
        sd.stop()


def survivors(work: Path, workers: int = 10) -> dict[str, float]:
    mp = work / "mpworker.py"
    mp.write_text(MPWORKER)
    result = {}
    for label in ("procguard", "supervisord"):
        sub = work / label
        sub.mkdir()
        programs = {f"m{i}": [PY, str(mp), str(sub / f"m{i}.pids")] for i in range(workers)}
        runner = Procguard(sub, programs) if label == "procguard" else Supervisord(sub, programs, group_signals=True)
        pid = runner.up()
        family: list[int] = []
        try:
            pidfiles = [sub / f"m{i}.pids" for i in range(workers)]
            wait(lambda files=pidfiles: all(f.exists() for f in files), 120, f"{label} workers")
            for i in range(workers):
                family += [int(p) for p in (sub / f"m{i}.pids").read_text().split()]
            os.kill(pid, signal.SIGKILL)
            assert runner.proc is not None
            runner.proc.wait()
            time.sleep(2.0)
            left = [p for p in family if alive(p)]
            result[f"{label}_survivors"] = float(len(left))
            result[f"{label}_processes"] = float(len(family))
        finally:
            for p in family:
                if alive(p):
                    os.kill(p, signal.SIGKILL)
    return result


def render(workers: int, seconds: float, fp: dict[str, float], rl: dict[str, float], dt: dict[str, float],
           sv: dict[str, float], baseline_name: str = "--baseline") -> str:
    pg_rss = fp["procguard_rss_mb"]
    wd_rss = fp.get("watchdog_rss_mb", 0.0)
    ratio = rl["procguard_ms"] / rl["bare_ms"]
    return textwrap.dedent(f"""\
    ## Supervisor (`procguard up`)

    `python -m bench.bench_supervisor --workers {workers} --seconds {seconds:g}` on {machine()};
    supervisord {_supervisord_version()} measured in the same run, on the same programs.

    | measure | procguard up | supervisord | goal |
    |---|---|---|---|
    | RSS, {workers} idle workers | {pg_rss:.1f} MB (+ watchdog {wd_rss:.1f} MB) | {fp['supervisord_rss_mb']:.1f} MB | <= supervisord |
    | of which private (RssAnon) | {fp['procguard_anon_mb']:.1f} MB (+ watchdog {fp.get('watchdog_anon_mb', 0.0):.1f} MB) | {fp['supervisord_anon_mb']:.1f} MB | |
    | CPU, {workers} idle workers, {seconds:g} s, default memory limit (2 GiB) | {_cpu(fp, 'procguard')} (watchdog {fp.get('watchdog_cpu_ms', 0.0):.1f} ms) | {_cpu(fp, 'supervisord')} | <= supervisord: **{fp['cpu_ratio']:.2f}x** |
    | CPU, the same with a 200 MB memory limit each | {_cpu(fp, 'procguard_small')} | | **{fp['procguard_small_cpu_ratio']:.2f}x** |
    | restart after a first crash (exit -> replacement running), median of {rl['samples']:.0f} | {rl['procguard_ms']:.1f} ms (p90 {rl['procguard_p90_ms']:.1f} ms) | | <= 2x bare Popen loop: {rl['bare_ms']:.1f} ms -> **{ratio:.2f}x** |
    | stop {workers} workers that take 0.5 s each (`down` / `stop all`) | {dt['procguard_s']:.2f} s | {dt['supervisord_s']:.2f} s | <= 1 s |
    | survivors 2 s after SIGKILL of the supervisor (10 workers x 4 mp children) | {sv['procguard_survivors']:.0f} of {sv['procguard_processes']:.0f} | {sv['supervisord_survivors']:.0f} of {sv['supervisord_processes']:.0f} (stopasgroup, killasgroup) | 0 |

    How: both supervisors run in the foreground from a fresh interpreter: `procguard up`, and
    `supervisord` with `nodaemon=true` and the `unix_http_server`/`rpcinterface` sections
    `supervisorctl` needs (how its systemd units and container images run it). A daemonizing
    supervisord forks, and a forked process's RSS leaves out the interpreter's file-backed pages
    until it touches them again: about 6 MB less RSS for the same private memory, which is why an
    earlier head-to-head run showed supervisord at 18.5 MB; bench/head_to_head now runs it with `-n` too.
    RSS is the supervisor process alone; the watchdog (a `/bin/sh` script in its own session that
    kills the workers' process groups if the supervisor dies) is listed beside it. CPU is the time
    every thread of the process spent on a CPU over the window, in nanoseconds
    (`/proc/PID/task/*/schedstat`; user+system times come in 10 ms ticks, mostly rounding at these
    levels); all the supervisors run side by side in the same window. Idle command workers are
    spawned directly (no `procguard run` per worker) and sampled through their kept-open
    `/proc/PID/stat` and children list, not a scan of all of /proc. Under the default 2 GiB limit an
    idle worker is sampled every 10 s (a 50 MB/s leak would still be seen long before 60 % of its
    limit); under 200 MB it is sampled every 2 s, so the cost of each sample shows.{_baseline(fp, baseline_name)}
    """)


def _cpu(fp: dict[str, float], name: str) -> str:
    return f"{fp[name + '_cpu_percent']:.3f} % ({fp[name + '_cpu_ms']:.1f} ms)"


def _baseline(fp: dict[str, float], name: str) -> str:
    if "baseline_cpu_ms" not in fp:
        return ""
    return (f" In the same window, procguard {name} (default limit) used {_cpu(fp, 'baseline')}:"
            f" **{fp['baseline_cpu_ratio']:.2f}x** supervisord.")


def _supervisord_version() -> str:
    result = subprocess.run([str(BIN / "supervisord"), "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0, help="footprint window (default 60)")
    parser.add_argument("--restarts", type=int, default=15, help="restart samples (default 15)")
    parser.add_argument("--no-write", action="store_true", help="print, do not update docs/benchmarks.md")
    parser.add_argument("--baseline", type=Path, metavar="SRC",
                        help="also run a procguard from this source tree (e.g. an earlier commit's src/, "
                             "exported with git archive) in the footprint window")
    parser.add_argument("--baseline-name", default="--baseline", metavar="TEXT",
                        help="what the baseline is, in the report (e.g. 'before abc1234')")
    parser.add_argument("--footprint-only", action="store_true",
                        help="measure the footprint (RSS, CPU) alone and print it (implies --no-write)")
    args = parser.parse_args(argv)
    if not (BIN / "supervisord").exists():
        raise SystemExit("bench: supervisord not found next to this Python (pip install supervisor)")
    work = Path(tempfile.mkdtemp(prefix="pg-bench-sup-"))
    try:
        print("footprint ...", flush=True)
        (work / "fp").mkdir()
        fp = footprint(work / "fp", args.workers, args.seconds, args.baseline and args.baseline.resolve())
        print(fp, flush=True)
        if args.footprint_only:
            return 0
        print("restart latency ...", flush=True)
        (work / "rl").mkdir()
        rl = restart_latency(work / "rl", args.restarts)
        print(rl, flush=True)
        print("down ...", flush=True)
        (work / "dt").mkdir()
        dt = down_time(work / "dt", args.workers)
        print(dt, flush=True)
        print("survivors ...", flush=True)
        (work / "sv").mkdir()
        sv = survivors(work / "sv")
        print(sv, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(args.workers, args.seconds, fp, rl, dt, sv, args.baseline_name)
    print(text)
    if not args.no_write:
        write_section("supervisor", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
