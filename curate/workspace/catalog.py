"""The catalog: one SQLite file (WAL) holding what many processes write at once and what every reader needs
first. The runs registry (one row per curate, train or eval run, pointing at the run's own DuckDB file) and
the human writes of the review app:

- ``runs``               run_id, kind, name, config, fingerprint, status (running/done/failed), started,
                         finished, output_dir, summary, data_file (the run's DuckDB file, relative to the
                         workspace), pid and host of the process that ran it
- ``labels``             human labels, append-only: record (content id, so a label follows the record into
                         later runs), annotator, verdict (accept / reject), edited messages, tags, note, time;
                         an annotator's current label of a record is their latest (highest ``seq``)
- ``eval_preferences``   human preferences between two eval runs' outputs (base / fine_tune / tie), with the
                         order shown (``left_side``: the model shown as answer 1) and whether the vote was blind
- ``skips``              records an annotator skipped, per curate run (the queue leaves them out)
- ``annotator_settings`` an annotator's queue settings (mode, status filter, score, threshold), as JSON

Every human write carries an ``action_key`` (unique): the same press sent twice, or retried after a busy
error, is stored once. A write is durable when the method returns (``synchronous=FULL``).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from curate.workspace.connections import WorkspaceBusy, connect_sqlite

CATALOG_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, config TEXT, fingerprint TEXT, status TEXT NOT NULL,
    started TEXT, finished TEXT, output_dir TEXT, summary TEXT, data_file TEXT, pid INTEGER, host TEXT);
CREATE TABLE IF NOT EXISTS labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, action_key TEXT UNIQUE, record_id TEXT NOT NULL, run_id TEXT, uid INTEGER,
    annotator TEXT NOT NULL, verdict TEXT NOT NULL CHECK (verdict IN ('accept', 'reject')), edit TEXT, tags TEXT,
    note TEXT, created TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS labels_by_annotator ON labels (annotator, record_id);
CREATE INDEX IF NOT EXISTS labels_by_record ON labels (record_id);
CREATE TABLE IF NOT EXISTS eval_preferences (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, action_key TEXT UNIQUE, base_run TEXT NOT NULL, ft_run TEXT NOT NULL,
    task TEXT NOT NULL, idx INTEGER NOT NULL, annotator TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('base', 'fine_tune', 'tie')), left_side TEXT, blind INTEGER, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS skips (
    annotator TEXT NOT NULL, run_id TEXT NOT NULL, record_id TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (annotator, run_id, record_id));
CREATE TABLE IF NOT EXISTS annotator_settings (annotator TEXT PRIMARY KEY, settings TEXT NOT NULL, updated TEXT NOT NULL);
"""

FORMAT_VERSION = "2"

RUN_COLUMNS = ("run_id", "kind", "name", "status", "started", "finished", "output_dir", "summary")


def now_text() -> str:
    """The current UTC time as stored: ISO text with microseconds, which sorts as time does."""
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def normalize_annotator(name: str) -> str:
    """The one spelling of an annotator's name that is stored and looked up: NFKC, trimmed, inner runs of
    whitespace made one space. Raises ValueError for an empty name, one with control or format characters
    (bidi overrides included), or one over 80 characters."""
    text = " ".join(unicodedata.normalize("NFKC", name or "").split())
    if not text:
        raise ValueError("an annotator name is required")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text):
        raise ValueError("an annotator name may not hold control or formatting characters")
    if len(text) > 80:
        raise ValueError("an annotator name may hold at most 80 characters")
    return text


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class Catalog:
    """The catalog file's API: the runs registry and every human write and read. Each call opens a short
    connection (cheap for SQLite, and safe from any thread of the app)."""

    def __init__(self, catalog_path: str, setup: bool = True):
        self.catalog_path = catalog_path
        self._memory: sqlite3.Connection | None = None
        if catalog_path == ":memory:":
            self._memory = connect_sqlite(":memory:")
        if not setup:  # a reader: never writes to the file just by opening it
            return
        with self._connect() as con:
            if catalog_path != ":memory:":
                con.execute("PRAGMA journal_mode = WAL")  # persistent: readers never wait for the writer
            con.executescript(CATALOG_SQL)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", [FORMAT_VERSION])

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self._memory is not None:
            yield self._memory
            return
        try:
            con = connect_sqlite(self.catalog_path)
        except sqlite3.Error as exc:
            raise WorkspaceBusy(f"the workspace catalog could not be opened ({exc})") from None
        try:
            yield con
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise WorkspaceBusy(f"the workspace catalog stayed locked by another process ({exc})") from None
            raise
        finally:
            con.close()

    def _write(self, sql: str, params: list[Any]) -> int:
        """One statement in its own immediate transaction; the number of rows it changed."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                n = con.execute(sql, params).rowcount
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return n

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[sqlite3.Row]:
        with self._connect() as con:
            return con.execute(sql, params or []).fetchall()

    # -- runs --------------------------------------------------------------------------------------------
    def run(self, run_id: str) -> dict[str, Any] | None:
        """The registry row of ``run_id`` (config and summary parsed, times as datetimes), or None."""
        rows = self._rows("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if not rows:
            return None
        out = dict(rows[0])
        for key in ("config", "summary"):
            if out.get(key) is not None:
                out[key] = json.loads(out[key])
        out["started"], out["finished"] = _time(out["started"]), _time(out["finished"])
        return out

    def runs(self, kind: str | None = None) -> pl.DataFrame:
        """run_id, kind, name, status, started, finished, output_dir, summary (JSON text) of every run (or of
        one kind), newest first."""
        rows = self._rows(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs" + (" WHERE kind = ?" if kind else "") + " ORDER BY started DESC",
                          [kind] if kind else None)
        schema = {c: pl.Utf8 for c in RUN_COLUMNS} | {"started": pl.Datetime("us"), "finished": pl.Datetime("us")}
        return pl.DataFrame([{**dict(r), "started": _time(r["started"]), "finished": _time(r["finished"])} for r in rows],
                            schema=schema, orient="row")

    def _register(self, run_id: str, kind: str, name: str, config: dict, fingerprint: str, output_dir: str, data_file: str) -> str | None:
        """Insert or replace the row of ``run_id`` as running; returns the data file it pointed at before."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                old = con.execute("SELECT data_file FROM runs WHERE run_id = ?", [run_id]).fetchone()
                con.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, 'running', ?, NULL, ?, NULL, ?, ?, ?)",
                            [run_id, kind, name, json.dumps(config, default=str), fingerprint, now_text(), output_dir,
                             data_file, os.getpid(), socket.gethostname()])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return old["data_file"] if old else None

    def finish_run(self, run_id: str, status: str, summary: dict | None = None) -> None:
        """Mark a run done or failed, with its summary (one short transaction)."""
        self._write("UPDATE runs SET status = ?, finished = ?, summary = ? WHERE run_id = ?",
                    [status, now_text(), json.dumps(summary, default=str) if summary is not None else None, run_id])

    def mark_running(self, run_id: str) -> None:
        """A resumed run is running again (same data file, same start)."""
        self._write("UPDATE runs SET status = 'running', finished = NULL, pid = ?, host = ? WHERE run_id = ?",
                    [os.getpid(), socket.gethostname(), run_id])

    # -- labels ------------------------------------------------------------------------------------------
    def add_label(self, record_id: str, annotator: str, verdict: str, *, run_id: str | None = None, uid: int | None = None,
                  edit: list[dict[str, str]] | None = None, tags: list[str] | None = None, note: str | None = None,
                  action_key: str | None = None) -> bool:
        """Store one human label, durably, before returning. With ``action_key``, a second call with the same
        key stores nothing and returns False (a double press, a retry after a busy error); True when stored."""
        if verdict not in ("accept", "reject"):
            raise ValueError(f"verdict must be accept or reject, not {verdict!r}")
        n = self._write("INSERT OR IGNORE INTO labels (action_key, record_id, run_id, uid, annotator, verdict, edit, tags, note, created) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [action_key, record_id, run_id, uid, normalize_annotator(annotator), verdict,
                         json.dumps(edit) if edit else None, json.dumps(tags or []), note, now_text()])
        return n == 1

    def label_rows(self, annotators: list[str] | None = None, current: bool = True) -> pl.DataFrame:
        """Labels (each annotator's latest per record when ``current``): seq, record_id, run_id, uid, annotator,
        verdict, edit (JSON text), tags (list), note, created."""
        where = f"WHERE annotator IN ({', '.join('?' * len(annotators))})" if annotators else ""
        sql = f"SELECT seq, record_id, run_id, uid, annotator, verdict, edit, tags, note, created FROM labels {where}"
        if current:
            sql = f"""SELECT * FROM ({sql}) l WHERE seq = (SELECT max(seq) FROM labels m
                      WHERE m.record_id = l.record_id AND m.annotator = l.annotator)"""
        rows = self._rows(sql + " ORDER BY seq", [normalize_annotator(a) for a in annotators] if annotators else None)
        return pl.DataFrame([{**dict(r), "tags": json.loads(r["tags"] or "[]"), "created": _time(r["created"])} for r in rows],
                            schema={"seq": pl.Int64, "record_id": pl.Utf8, "run_id": pl.Utf8, "uid": pl.Int64, "annotator": pl.Utf8,
                                    "verdict": pl.Utf8, "edit": pl.Utf8, "tags": pl.List(pl.Utf8), "note": pl.Utf8,
                                    "created": pl.Datetime("us")}, orient="row")

    def current_labels(self, annotators: list[str] | None = None) -> pl.DataFrame:
        """Each annotator's latest label per record: record_id, annotator, verdict, edit, tags, note, created."""
        return self.label_rows(annotators).select("record_id", "annotator", "verdict", "edit", "tags", "note", "created")

    def labelled_ids(self, annotator: str) -> list[str]:
        """The record ids ``annotator`` has labelled (any verdict)."""
        return [r[0] for r in self._rows("SELECT DISTINCT record_id FROM labels WHERE annotator = ?", [normalize_annotator(annotator)])]

    # -- skips and settings ------------------------------------------------------------------------------
    def add_skip(self, annotator: str, run_id: str, record_id: str) -> None:
        """Leave ``record_id`` out of ``annotator``'s queue on ``run_id`` (kept across sessions and reloads)."""
        self._write("INSERT OR IGNORE INTO skips VALUES (?, ?, ?, ?)", [normalize_annotator(annotator), run_id, record_id, now_text()])

    def skips(self, annotator: str, run_id: str) -> list[str]:
        """The record ids ``annotator`` skipped on ``run_id``."""
        return [r[0] for r in self._rows("SELECT record_id FROM skips WHERE annotator = ? AND run_id = ? ORDER BY created",
                                         [normalize_annotator(annotator), run_id])]

    def clear_skips(self, annotator: str, run_id: str) -> int:
        """Put ``annotator``'s skipped records of ``run_id`` back in the queue; how many."""
        return self._write("DELETE FROM skips WHERE annotator = ? AND run_id = ?", [normalize_annotator(annotator), run_id])

    def annotator_settings(self, annotator: str) -> dict[str, Any]:
        """The queue settings ``annotator`` last used (empty when none)."""
        rows = self._rows("SELECT settings FROM annotator_settings WHERE annotator = ?", [normalize_annotator(annotator)])
        return json.loads(rows[0][0]) if rows else {}

    def save_annotator_settings(self, annotator: str, settings: dict[str, Any]) -> None:
        """Remember ``annotator``'s queue settings (JSON-serializable values)."""
        self._write("INSERT OR REPLACE INTO annotator_settings VALUES (?, ?, ?)",
                    [normalize_annotator(annotator), json.dumps(settings, sort_keys=True), now_text()])

    # -- eval preferences --------------------------------------------------------------------------------
    def add_preference(self, base_run: str, ft_run: str, task: str, idx: int, annotator: str, choice: str, left_side: str,
                       *, blind: bool = True, action_key: str | None = None) -> bool:
        """Store one preference between the two runs' outputs of example ``idx``, durably; ``left_side`` is
        the model shown as answer 1. Idempotent by ``action_key`` like :meth:`add_label`."""
        if choice not in ("base", "fine_tune", "tie"):
            raise ValueError(f"choice must be base, fine_tune or tie, not {choice!r}")
        if left_side not in ("base", "fine_tune"):
            raise ValueError(f"left_side must be base or fine_tune, not {left_side!r}")
        n = self._write("INSERT OR IGNORE INTO eval_preferences (action_key, base_run, ft_run, task, idx, annotator, choice, "
                        "left_side, blind, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [action_key, base_run, ft_run, task, int(idx), normalize_annotator(annotator), choice, left_side,
                         int(bool(blind)), now_text()])
        return n == 1

    def preferences(self, base_run: str, ft_run: str, task: str | None = None) -> pl.DataFrame:
        """Each annotator's latest preference per example: task, idx, annotator, choice, left_side, blind, created."""
        rows = self._rows(
            f"""SELECT task, idx, annotator, choice, left_side, blind, created FROM eval_preferences p
                WHERE base_run = ? AND ft_run = ? {"AND task = ?" if task else ""}
                  AND seq = (SELECT max(seq) FROM eval_preferences q WHERE q.base_run = p.base_run AND q.ft_run = p.ft_run
                             AND q.task = p.task AND q.idx = p.idx AND q.annotator = p.annotator)
                ORDER BY seq""", [base_run, ft_run, *([task] if task else [])])
        return pl.DataFrame([{**dict(r), "blind": None if r["blind"] is None else bool(r["blind"]), "created": _time(r["created"])} for r in rows],
                            schema={"task": pl.Utf8, "idx": pl.Int64, "annotator": pl.Utf8, "choice": pl.Utf8, "left_side": pl.Utf8,
                                    "blind": pl.Boolean, "created": pl.Datetime("us")}, orient="row")

    def sql_rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """A read-only query of the catalog (SQLite dialect) as dicts: for reports and the app's summaries."""
        return [dict(r) for r in self._rows(sql, params)]


def catalog_exists(path: Path) -> bool:
    """Whether ``path`` holds a catalog file."""
    return (path / "catalog.sqlite").is_file()
