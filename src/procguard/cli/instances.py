"""``procguard ps``: the instances running now, from their lock records.

For each held instance lock: name, pid, uptime, memory of the whole process
tree, health (``GET /health`` on 127.0.0.1 when the record names a health
port, with a short timeout so one hung worker cannot stall the listing) and
the restart count if the runner/supervisor recorded one. ``--json`` prints
a list of objects with the same fields.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ..reasons import ExitStatus
from ..units import format_duration

if TYPE_CHECKING:
    from ..instances.lock import InstanceRecord

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 0.5


def configure_ps(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("--all", action="store_true", help="also list stale records (lock not held)")
    parser.add_argument("--state-dir", metavar="DIR", help="procguard state directory")


def probe_health(
    port: int, *, host: str = "127.0.0.1", timeout_s: float = HEALTH_TIMEOUT_S
) -> tuple[str, str]:
    """``(status, reason)`` from ``GET /health``: healthy, unhealthy or unreachable."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        body = response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as error:
        return "unreachable", type(error).__name__ if not str(error) else str(error)
    finally:
        conn.close()
    reason = ""
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            reason = str(data.get("reason") or "")
    except ValueError:
        pass
    if response.status == 200:
        return "healthy", reason or "healthy"
    return "unhealthy", reason or f"HTTP {response.status}"


def describe(record: InstanceRecord) -> dict[str, Any]:
    """One row of ``procguard ps``: the JSON object printed by ``--json``."""
    from ..proctree import tree_memory_bytes

    proc = record.process() if record.held else None
    state = "running" if proc is not None else ("unconfirmed" if record.held else "stale")
    row: dict[str, Any] = {
        "name": record.name,
        "state": state,
        # Without a record (or with one it cannot confirm) the kernel still names the holder.
        "pid": proc.pid if proc is not None else (record.pid or record.holder_pid),
        "uptime_seconds": None,
        "memory_mb": None,
        "health": None,
        "health_reason": None,
        "health_port": record.health_port,
        "restarts": record.info.get("restarts"),
        "command": " ".join(record.cmdline),
    }
    if record.error:
        row["error"] = record.error
    if proc is not None:
        try:
            row["uptime_seconds"] = round(max(0.0, time.time() - proc.create_time()), 1)
        except Exception:  # the process may have exited since
            row["uptime_seconds"] = None
        row["memory_mb"] = round(tree_memory_bytes(proc) / (1024 * 1024), 1)
    return row


def run_ps(args: argparse.Namespace) -> int:
    from ..instances.lock import list_instances
    from ..instances.statedir import resolve_state_dir

    state_dir = resolve_state_dir(args.state_dir, create=False)
    records = [r for r in list_instances(state_dir) if args.all or r.held]
    rows = [describe(r) for r in records]
    probes = [(row, row["health_port"]) for row in rows if row["state"] == "running" and row["health_port"]]
    if probes:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(probes))) as pool:
            results = list(pool.map(lambda item: probe_health(item[1]), probes))
        for (row, _port), (status, reason) in zip(probes, results, strict=True):
            row["health"], row["health_reason"] = status, reason
    if args.json:
        print(json.dumps(rows, indent=2))
        return ExitStatus.OK
    if not rows:
        print("no running instances")
        return ExitStatus.OK
    from .table import print_table

    table = [["NAME", "PID", "STATE", "UPTIME", "MEMORY", "HEALTH", "RESTARTS", "COMMAND"]]
    for row in rows:
        command = row["command"] if len(row["command"]) <= 60 else row["command"][:57] + "..."
        table.append(
            [
                row["name"],
                str(row["pid"] or "-"),
                row["state"],
                format_duration(row["uptime_seconds"]) if row["uptime_seconds"] is not None else "-",
                f"{row['memory_mb']:.1f}MB" if row["memory_mb"] is not None else "-",
                row["health"] or "-",
                "-" if row["restarts"] is None else str(row["restarts"]),
                command,
            ]
        )
    print_table(table, right=(1, 3, 4, 6), states=(2, 5))
    return ExitStatus.OK
