"""The analyticbot collector: the seed's data collection worker, under a ProcessManager.

Run it with the seed's own command line::

    python -m examples.analyticbot.collector --interval 10 --max-runtime 24 \\
        --memory-limit 2048 --cpu-limit 80 --health-port 9091 --user-id 123 --once

or let ``procguard run`` drive it one iteration at a time::

    procguard run examples.analyticbot.collector:collect --interval 1m

Each iteration fetches every channel's statistics from the API, then stores
them in the collector's own SQLite store in ONE transaction: a run row plus
one row per channel, committed together, so a stopped or killed collector
leaves either the whole run or nothing. A SIGTERM in the middle of an
iteration lets the iteration finish (the ProcessManager only stops the loop
between iterations), so a graceful stop loses nothing.

Every call to the API goes through the worker's circuit breaker ``api``
(``manager.circuit``): after ``ANALYTICBOT_API_FAILURES`` (3) failed calls in
a row it opens, and the collector stops calling the API for
``ANALYTICBOT_API_RESET_TIMEOUT`` (30s); its /health stays 200 and names the
open circuit, iterations in between skip the collection, and the first call
after the timeout is a trial that closes the circuit once the API is back.
Restarting the collector would not bring the API back, so the failures the
circuit counts never stop the worker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from procguard import (
    CircuitBreaker,
    CircuitOpenError,
    ProcessManager,
    add_lifecycle_arguments,
    exit_status_of,
)

from . import settings

log = logging.getLogger("analyticbot.collector")

HTTP_TIMEOUT_S = 10.0
#: The API circuit's settings: failed calls in a row that open it, and how long it stays open.
API_FAILURES_ENV = "ANALYTICBOT_API_FAILURES"
API_RESET_TIMEOUT_ENV = "ANALYTICBOT_API_RESET_TIMEOUT"


def api_circuit(manager: ProcessManager) -> CircuitBreaker:
    """The worker's circuit around the API (the same one every iteration)."""
    return manager.circuit(
        "api",
        failure_threshold=int(os.environ.get(API_FAILURES_ENV, "3")),
        reset_timeout=os.environ.get(API_RESET_TIMEOUT_ENV, "30s"),
    )


class CollectionError(RuntimeError):
    """The API could not be read; the iteration stores nothing and is counted as failed."""


def fetch_json(url: str) -> Any:
    """GET ``url`` and decode its JSON body (raises CollectionError on any failure)."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        msg = f"cannot read {url}: {error}"
        raise CollectionError(msg) from error


class DataCollectionService:
    """Collects channel statistics for one user; the process manager is a constructor parameter.

    The service heartbeats once per iteration and asks the manager whether
    to go on, so the manager's limits (runtime, iterations, memory, CPU) and
    its signal handling decide when the loop ends, never the service.
    ``write_delay_s`` slows each row's insert down (simulated slow storage),
    which lets the demo and the tests stop the collector in the middle of a
    write and check that the store is still whole.
    """

    def __init__(
        self,
        process_manager: ProcessManager,
        *,
        api_url: str,
        store_path: Path,
        user_id: int,
        write_delay_s: float = 0.0,
        circuit: CircuitBreaker | None = None,
    ) -> None:
        self.process_manager = process_manager
        self.circuit = circuit
        self.api_url = api_url.rstrip("/")
        self.store_path = store_path
        self.user_id = user_id
        self.write_delay_s = write_delay_s
        self._conn: sqlite3.Connection | None = None

    def _store(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = settings.open_collector_store(self.store_path)
        return self._conn

    def _get(self, url: str) -> Any:
        """One API call, through the circuit when there is one (CircuitOpenError: not called)."""
        if self.circuit is None:
            return fetch_json(url)
        return self.circuit.call(fetch_json, url)

    def fetch(self) -> list[dict[str, Any]]:
        """Every channel's current statistics from the API."""
        channels = self._get(f"{self.api_url}/api/channels")["channels"]
        return [self._get(f"{self.api_url}/api/channels/{c['id']}/stats") for c in channels]

    def store(self, stats: list[dict[str, Any]], started_at: float) -> int:
        """Write one run and all its channel rows in one transaction; return the run id."""
        conn = self._store()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = conn.execute(
                "INSERT INTO collection_runs (user_id, pid, started_at, stored_at, expected_channels)"
                " VALUES (?, ?, ?, ?, ?)",
                (self.user_id, os.getpid(), started_at, time.time(), len(stats)),
            )
            run_id = int(cursor.lastrowid or 0)
            for row in stats:
                if self.write_delay_s:
                    time.sleep(self.write_delay_s)
                conn.execute(
                    "INSERT INTO channel_stats (run_id, channel_id, title, subscribers, views, posts)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, row["channel_id"], row["title"], row["subscribers"], row["views"], row["posts"]),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return run_id

    def collect_once(self) -> int:
        """One iteration: fetch everything, then store it atomically; return the run id."""
        started_at = time.time()
        log.info("collecting for user %s", self.user_id)
        stats = self.fetch()
        run_id = self.store(stats, started_at)
        log.info("stored run %d: %d channels for user %s", run_id, len(stats), self.user_id)
        return run_id

    def run(self, interval_s: float, *, once: bool = False) -> None:
        """Collect until the manager says stop (or once); failures are counted, not fatal."""
        manager = self.process_manager
        while manager.should_continue():
            manager.heartbeat()
            try:
                self.collect_once()
            except CircuitOpenError as refused:
                log.info("collection skipped: %s", refused)
            except CollectionError as error:
                log.warning("iteration failed: %s", error)
                manager.record_failure(error)
            else:
                manager.record_success()
            if once:
                break
            manager.sleep(interval_s)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _env_user_id() -> int:
    return int(os.environ.get("ANALYTICBOT_USER_ID", "1"))


def collect(manager: ProcessManager) -> None:
    """One collection iteration for ``procguard run examples.analyticbot.collector:collect``.

    Configuration comes from the environment (``ANALYTICBOT_API_URL``,
    ``ANALYTICBOT_DATA_DIR``, ``ANALYTICBOT_USER_ID``,
    ``ANALYTICBOT_WRITE_DELAY_MS``) because ``procguard run`` owns the command
    line. The store connection is opened per iteration: cheap next to the
    HTTP calls, and nothing is left open between iterations. While the API
    circuit is open the iteration skips the collection (one log line) without
    calling the API; an API failure raises, and the runner counts the
    iteration as failed (the circuit keeps it from stopping the worker).
    """
    service = DataCollectionService(
        manager,
        api_url=settings.api_url(),
        store_path=settings.data_dir() / settings.COLLECTOR_DB,
        user_id=_env_user_id(),
        write_delay_s=float(os.environ.get("ANALYTICBOT_WRITE_DELAY_MS", "0")) / 1000,
        circuit=api_circuit(manager),
    )
    try:
        service.collect_once()
    except CircuitOpenError as refused:
        log.info("collection skipped: %s", refused)
    finally:
        service.close()


PROG = "analyticbot-collector"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Collect channel statistics into a SQLite store.")
    add_lifecycle_arguments(parser)
    parser.add_argument("--user-id", type=int, default=None,
                        help="user the statistics are collected for (default: $ANALYTICBOT_USER_ID or 1)")
    parser.add_argument(
        "--api-url", help=f"API base URL (default: $ANALYTICBOT_API_URL or {settings.DEFAULT_API_URL})"
    )
    parser.add_argument("--data-dir", help=settings.DATA_DIR_HELP)
    parser.add_argument("--write-delay-ms", type=float, default=0.0,
                        help="pause before each row's insert, to simulate slow storage (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The seed's command line. Bad input (a taken health port, a second
    instance) raises a ProcguardError; run it through ``exit_status_of`` to get
    one line and the error's exit status instead of a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s collector[%(process)d] %(levelname)s %(name)s: %(message)s"
    )
    manager = ProcessManager.from_args(args, name=args.name or "analyticbot-collector")
    service = DataCollectionService(
        manager,
        api_url=settings.api_url(args.api_url),
        store_path=settings.data_dir(args.data_dir) / settings.COLLECTOR_DB,
        user_id=args.user_id if args.user_id is not None else _env_user_id(),
        write_delay_s=args.write_delay_ms / 1000,
        circuit=api_circuit(manager),
    )
    manager.start()
    try:
        service.run(args.interval_s, once=args.once)
    finally:
        service.close()
    return manager.shutdown()


if __name__ == "__main__":
    raise SystemExit(exit_status_of(main, prog=PROG))
