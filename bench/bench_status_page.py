"""The status page of ``procguard up --status-port`` under abuse: what it costs the supervisor.

Run: ``python -m bench.bench_status_page [--idle 3000] [--baseline SRC] [--no-write]``

A real supervisor (``procguard up`` in the foreground, one idle worker) serves
its status page on a free port of 127.0.0.1. The script reads the
supervisor's threads and RSS from /proc/PID/status and, in turn:

1. **before**: after warming every route up (50 requests each);
2. **during** ``--idle`` idle connections (half of them send part of a
   request head and stop): threads and RSS once all are open, and the
   latency of 200 ``GET /api/workers`` from a normal client meanwhile;
3. **after** they are closed;
4. **slowloris**: 100 connections that send one byte of a never-ending head
   every 0.5 s for up to 12 s: how many the server cuts off, and when;
5. **hostile requests**: 500 with ``Host: evil.example`` (DNS rebinding),
   500 ``OPTIONS``/``TRACE``: their status codes, and how many bodies
   leaked a worker's name.

``--baseline SRC`` also measures a supervisor run from another source tree
(for instance the previous commit's ``src/``, exported with ``git archive``),
with the same script in the same session. Everything it starts, it stops
(by pid). Writes its section of docs/benchmarks.md
(``<!-- bench:status_page -->``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._report import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PROJECT = f"benchpage{os.getpid()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def get(port: int, path: str, host: str = "127.0.0.1", method: str = "GET") -> tuple[int, bytes]:
    return exchange(port, f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())


def status(pid: int) -> tuple[int, float]:
    """(threads, RSS in MB) of ``pid``."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024


def latencies_ms(port: int, count: int = 200) -> tuple[list[float], int]:
    """Latencies of ``count`` sequential ``GET /api/workers``, and how many failed (no 200 within 10 s)."""
    result, failed = [], 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            code, _ = get(port, "/api/workers")
        except OSError:
            code = 0
        if code != 200:
            failed += 1
            continue
        result.append((time.perf_counter() - started) * 1000)
    return result, failed


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_answering(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: the supervisor exited with {proc.returncode}")
        try:
            if get(port, "/api/supervisor")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("bench: the status page never answered")


def slowloris(port: int, count: int = 100, give_up_s: float = 12.0) -> list[float]:
    """Seconds until each trickling connection was cut off (``give_up_s`` when it never was)."""
    socks = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /api/workers HTTP/1.1\r\n")
        except OSError:
            continue  # not even accepted: counted as not cut off
        sock.setblocking(False)
        socks.append(sock)
    started = time.monotonic()
    cut: dict[int, float] = {}
    while len(cut) < count and time.monotonic() - started < give_up_s:
        for index, sock in enumerate(socks):
            if index in cut:
                continue
            try:
                if sock.recv(100) == b"":
                    cut[index] = time.monotonic() - started
                    continue
            except BlockingIOError:
                pass
            except OSError:
                cut[index] = time.monotonic() - started
                continue
            try:
                sock.send(b"X")
            except OSError:
                cut[index] = time.monotonic() - started
        time.sleep(0.5)
    for sock in socks:
        sock.close()
    return [cut.get(i, give_up_s) for i in range(count)]  # missing connections: never cut


def run(idle: int, src: Path) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, idle + 512)), hard))
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="procguard-bench-page-") as tmp:
        config = Path(tmp) / "procguard.toml"
        config.write_text(
            f'[project]\nname = "{PROJECT}"\n\n[workers.idle]\n'
            f'command = ["{PY}", "-c", "import time\\nwhile True: time.sleep(3600)"]\n'
        )
        env = dict(os.environ, PYTHONPATH=str(src), PROCGUARD_STATE_DIR=str(Path(tmp) / "state"),
                   PROCGUARD_LOG_LEVEL="WARNING")
        log = open(Path(tmp) / "up.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([PY, "-m", "procguard", "up", "-c", str(config), "--status-port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_answering(port, proc)
            pid = int(json.loads(get(port, "/api/supervisor")[1])["pid"])
            for _ in range(50):
                for path in ("/", "/api/workers", "/metrics"):
                    get(port, path)
            time.sleep(1)
            before = status(pid)
            quiet = latencies_ms(port)
            socks = []
            for i in range(idle):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                if i % 2:
                    sock.sendall(b"GET /api/workers HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                socks.append(sock)
            time.sleep(1)
            during = status(pid)
            loaded = latencies_ms(port)
            during = (max(during[0], status(pid)[0]), max(during[1], status(pid)[1]))
            for sock in socks:
                sock.close()
            time.sleep(7)  # past the request timeout: whatever the server still held is gone
            after = status(pid)
            cut = slowloris(port)
            hostile: collections.Counter[int | str] = collections.Counter()
            leaked = 0
            for i in range(500):
                try:
                    code, body = get(port, "/api/workers" if i % 2 else "/metrics", host="evil.example")
                except OSError:
                    hostile["no answer"] += 1
                    continue
                hostile[code] += 1
                leaked += b"idle" in body
            methods: collections.Counter[int | str] = collections.Counter()
            for i in range(500):
                try:
                    methods[get(port, "/", method="OPTIONS" if i % 2 else "TRACE")[0]] += 1
                except OSError:
                    methods["no answer"] += 1
            alive = proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    quiet, quiet_failed = quiet
    loaded, loaded_failed = loaded
    return {
        "failed": (quiet_failed, loaded_failed),
        "idle": idle, "before": before, "during": during, "after": after,
        "quiet_ms": (statistics.median(quiet), p(quiet, 0.99)) if quiet else (float("nan"),) * 2,
        "loaded_ms": (statistics.median(loaded), p(loaded, 0.99)) if loaded else (float("nan"),) * 2,
        "slowloris_cut": sum(1 for t in cut if t < 12.0), "slowloris_s": (min(cut), max(cut)),
        "hostile": dict(hostile), "leaked": leaked, "methods": dict(methods), "alive": alive,
    }


def _counts(counter: dict[object, int]) -> str:
    return ", ".join(f"{n} x {code}" for code, n in sorted(counter.items(), key=str))


def render(results: list[tuple[str, dict[str, object]]]) -> str:
    idle = results[0][1]["idle"]
    lines = [
        "## Status page under abuse (`python -m bench.bench_status_page`)",
        "",
        f"A real `procguard up --status-port` (one idle worker) on 127.0.0.1; {machine()}. "
        "Threads and RSS of the supervisor from /proc/PID/status: before (every route warmed up), "
        f"during {idle:,} idle connections (half of them stopped mid-head), and 7 s after they closed; "
        "the latency of 200 `GET /api/workers` from a normal client before and during.",
        "",
        "| server | threads before / during / after | RSS before / during / after "
        "| `/api/workers` p50 / p99 before | during (failed of 200) |",
        "|---|---|---|---|---|",
    ]
    for label, r in results:
        before, during, after = r["before"], r["during"], r["after"]  # type: ignore[misc]
        quiet, loaded, failed = r["quiet_ms"], r["loaded_ms"], r["failed"]  # type: ignore[misc]
        lines.append(
            f"| {label} | {before[0]} / {during[0]} / {after[0]} "
            f"| {before[1]:.1f} / {during[1]:.1f} / {after[1]:.1f} MB "
            f"| {quiet[0]:.2f} / {quiet[1]:.2f} ms | {loaded[0]:.2f} / {loaded[1]:.2f} ms ({failed[1]}) |"
        )
    lines += [
        "",
        "Then 100 slowloris connections (one byte of a never-ending head every 0.5 s, given up after 12 s), "
        "500 requests with `Host: evil.example` (DNS rebinding) and 500 `OPTIONS`/`TRACE`:",
        "",
        "| server | slowloris cut off (after) | `Host: evil.example` | bodies naming a worker | `OPTIONS` / `TRACE` |",
        "|---|---|---|---|---|",
    ]
    for label, r in results:
        low, high = r["slowloris_s"]  # type: ignore[misc]
        lines.append(
            f"| {label} | {r['slowloris_cut']} of 100 ({low:.1f}-{high:.1f} s) "
            f"| {_counts(r['hostile'])} | {r['leaked']} | {_counts(r['methods'])} |"  # type: ignore[arg-type]
        )
    if len(results) > 1:
        lines += [
            "",
            "`before` is the status page as it was (http.server's ThreadingHTTPServer, a thread per "
            "connection, no timeout, any Host), measured by the same script in the same session with "
            "`--baseline` pointing at the previous commit's `src/` (exported with `git archive`).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_status_page", description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=3000, help="idle connections to open (default 3000)")
    parser.add_argument("--baseline", type=Path, metavar="SRC",
                        help="also measure the supervisor from this source tree (e.g. an older commit's src/)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    results = [("now (selector loop)", run(args.idle, ROOT / "src"))]
    if args.baseline is not None:
        results.append(("before", run(args.idle, args.baseline.resolve())))
    text = render(results)
    print(text)
    if not args.no_write:
        write_section("status_page", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
