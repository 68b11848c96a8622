"""Where the example stack keeps its files, and the collector store's schema.

Every service takes ``--data-dir``; without it the directory comes from
``$ANALYTICBOT_DATA_DIR``, else ``./analyticbot-data`` under the current
directory. Inside it:

- ``api.sqlite3``: the API's own channel statistics;
- ``collector.sqlite3``: the collector's store (one row per collection run in
  ``collection_runs``, one row per channel and run in ``channel_stats``);
- ``report.json`` / ``report.txt``: the bot's latest report.

The API's address comes from ``--api-url`` or ``$ANALYTICBOT_API_URL``
(default ``http://127.0.0.1:8081``).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

DEFAULT_DATA_DIR = "analyticbot-data"
DEFAULT_API_PORT = 8081
DEFAULT_API_URL = f"http://127.0.0.1:{DEFAULT_API_PORT}"

DATA_DIR_HELP = "data directory (default: $ANALYTICBOT_DATA_DIR or ./analyticbot-data)"

API_DB = "api.sqlite3"
COLLECTOR_DB = "collector.sqlite3"
REPORT_JSON = "report.json"
REPORT_TXT = "report.txt"

#: The collector store. A run row and its channel rows are written in one
#: transaction; ``expected_channels`` lets anyone check that a stored run is
#: complete (it always is: that is the point of the transaction).
COLLECTOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS collection_runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    stored_at REAL NOT NULL,
    expected_channels INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_stats (
    run_id INTEGER NOT NULL REFERENCES collection_runs(run_id),
    channel_id TEXT NOT NULL,
    title TEXT NOT NULL,
    subscribers INTEGER NOT NULL,
    views INTEGER NOT NULL,
    posts INTEGER NOT NULL,
    PRIMARY KEY (run_id, channel_id)
);
"""


def data_dir(explicit: str | None = None) -> Path:
    """The data directory (created if missing): flag, then environment, then ``./analyticbot-data``."""
    path = Path(explicit or os.environ.get("ANALYTICBOT_DATA_DIR") or DEFAULT_DATA_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def api_url(explicit: str | None = None) -> str:
    """Base URL of the API: flag, then ``$ANALYTICBOT_API_URL``, then the default port."""
    return (explicit or os.environ.get("ANALYTICBOT_API_URL") or DEFAULT_API_URL).rstrip("/")


def connect(path: Path, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    """An SQLite connection in WAL mode, so readers (the bot) never block the writer.

    ``isolation_level=None`` leaves transactions to the caller's explicit
    ``BEGIN``/``COMMIT``, which is what makes "all of a run or nothing" easy
    to read in the code.
    """
    conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def open_collector_store(path: Path) -> sqlite3.Connection:
    """Open (and create if needed) the collector store."""
    conn = connect(path)
    conn.executescript(COLLECTOR_SCHEMA)
    return conn
