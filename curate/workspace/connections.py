"""Opening the workspace's files so that many processes can share them, and the two errors the workspace
raises: :class:`WorkspaceError` (the path is not a usable workspace: one line for the user, exit 2) and
:class:`WorkspaceBusy` (a file stayed locked by another process past the retry budget: a plain sentence the
app shows instead of a traceback).

DuckDB lets one process write a file, or several read it, never both; a second open waits here with
backoff instead of failing at once. SQLite (the catalog) handles many writers itself: WAL lets readers
go on while one writer commits, ``busy_timeout`` makes a writer wait for the lock, and
``synchronous=FULL`` makes a commit durable (fsynced) before it returns, which is when the app may say
"saved".
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import duckdb

BUSY_SECONDS = 15.0  # how long an open or a write waits for another process before giving up


class WorkspaceError(Exception):
    """The path is not a workspace this version can use; ``str()`` is one line naming the path."""


class WorkspaceBusy(Exception):
    """Another process held a workspace file past the retry budget; ``str()`` says what was busy."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "lock" in text.lower() or "different configuration" in text


def connect_duckdb(path: str, *, read_only: bool, what: str, wait_s: float = BUSY_SECONDS) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to ``path``, retried with jittered backoff while another process holds the file.

    Raises :class:`WorkspaceBusy` naming ``what`` after ``wait_s`` seconds, and :class:`WorkspaceError` when
    the file is not a DuckDB database.
    """
    deadline = time.monotonic() + wait_s
    delay = 0.01
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_lock_error(exc):
                raise WorkspaceError(f"{path}: cannot be opened as a DuckDB file ({str(exc).splitlines()[0]})") from None
            if time.monotonic() > deadline:
                raise WorkspaceBusy(f"{what} is in use by another process (still locked after {wait_s:.0f} s)") from None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)


def connect_sqlite(path: str | Path) -> sqlite3.Connection:
    """A connection to the catalog: WAL, durable commits, waits up to :data:`BUSY_SECONDS` for the write
    lock; autocommit off (``with con:`` is one transaction). Rows come back as :class:`sqlite3.Row`."""
    con = sqlite3.connect(str(path), timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    con.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
    con.execute("PRAGMA synchronous = FULL")
    con.execute("PRAGMA foreign_keys = ON")
    return con
