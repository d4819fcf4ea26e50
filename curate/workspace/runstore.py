"""One run's bulk data: a DuckDB file written by the one process that runs it, read-only once it finished.

Tables (every row carries the run's id, so the same SQL reads one run's file or an old shared file):

- ``records``       every normalized input record of a curate run (kept and rejected), with scores and split
- ``rejects``       one row per rejected record: stage, reason, detail, duplicate_of
- ``quarantine``    one row per malformed input unit: file, line, field, error, raw excerpt
- ``stage_counts``  per stage: records in, rejected, out, and counts by reason
- ``clusters``      duplicate clusters per dedup stage: uid, its representative, similarity to it
- ``similar_pairs`` scored candidate pairs of the near-dup stages (near the threshold and above)
- ``split_links``   pairs a dedup stage keeps both of but puts in one split (two tasks on one passage)
- ``train_metrics`` per logged step of a train run: loss, eval_loss, learning rate...
- ``eval_examples`` per example of an eval run: prompt, reference, output, per-example scores, annotations and
                    the statistics a comparison resamples
- ``ledger``        a view: each record with its outcome (kept, or rejected with stage and reason)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from curate.schema import MESSAGES_SQL
from curate.workspace.connections import connect_duckdb

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, kind VARCHAR, name VARCHAR, config JSON, fingerprint VARCHAR,
    status VARCHAR, started TIMESTAMP, finished TIMESTAMP, output_dir VARCHAR, summary JSON);
CREATE TABLE IF NOT EXISTS records (
    run_id VARCHAR, uid BIGINT, id VARCHAR, source_file VARCHAR, source_line BIGINT, shape VARCHAR, kind VARCHAR,
    messages {MESSAGES}, tools VARCHAR, rejected {MESSAGES}, prompt_turns BIGINT, label BOOLEAN,
    meta VARCHAR, fixes VARCHAR[], n_chars BIGINT, n_tokens BIGINT, split VARCHAR, scores VARCHAR);
CREATE TABLE IF NOT EXISTS rejects (
    run_id VARCHAR, uid BIGINT, stage VARCHAR, reason VARCHAR, detail VARCHAR, duplicate_of VARCHAR);
CREATE TABLE IF NOT EXISTS quarantine (
    run_id VARCHAR, uid BIGINT, source_file VARCHAR, source_line BIGINT, field VARCHAR, error VARCHAR, raw VARCHAR);
CREATE TABLE IF NOT EXISTS stage_counts (
    run_id VARCHAR, position INTEGER, stage VARCHAR, n_in BIGINT, n_rejected BIGINT, n_out BIGINT, reasons JSON);
CREATE TABLE IF NOT EXISTS clusters (
    run_id VARCHAR, stage VARCHAR, uid BIGINT, rep_uid BIGINT, similarity DOUBLE);
CREATE TABLE IF NOT EXISTS similar_pairs (
    run_id VARCHAR, stage VARCHAR, uid_a BIGINT, uid_b BIGINT, similarity DOUBLE);
CREATE TABLE IF NOT EXISTS split_links (
    run_id VARCHAR, stage VARCHAR, uid_a BIGINT, uid_b BIGINT, similarity DOUBLE);
CREATE TABLE IF NOT EXISTS train_metrics (
    run_id VARCHAR, step BIGINT, epoch DOUBLE, name VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS eval_examples (
    run_id VARCHAR, task VARCHAR, idx BIGINT, source VARCHAR, prompt JSON, reference VARCHAR, output VARCHAR, scores JSON,
    annotations JSON, stats JSON);
CREATE OR REPLACE VIEW ledger AS
    SELECT r.run_id, r.uid, r.id, r.source_file, r.source_line, r.shape, r.split,
           CASE WHEN j.uid IS NULL THEN 'kept' ELSE 'rejected' END AS status,
           j.stage, j.reason, j.detail, j.duplicate_of
    FROM records r LEFT JOIN rejects j ON r.run_id = j.run_id AND r.uid = j.uid;
""".replace("{MESSAGES}", MESSAGES_SQL)

# Columns a records table written by an earlier version lacks: added (null, kind 'sft') when the file is opened
# for writing, so old and new runs answer the same queries.
ADDED_RECORD_COLUMNS = (
    ("kind", "VARCHAR DEFAULT 'sft'"), ("tools", "VARCHAR"), ("rejected", MESSAGES_SQL), ("prompt_turns", "BIGINT"), ("label", "BOOLEAN"),
)

RUN_TABLES = ("records", "rejects", "quarantine", "stage_counts", "clusters", "similar_pairs", "split_links", "train_metrics", "eval_examples")


class RunStore:
    """The DuckDB file of one run (or an in-memory one): read-write for the process that runs it, read-only
    for everyone else. ``con`` is the DuckDB connection; :meth:`sql` returns Polars frames."""

    def __init__(self, path: str | Path = ":memory:", read_only: bool = False, con: duckdb.DuckDBPyConnection | None = None):
        self.path = str(path)
        self.read_only = read_only
        if con is not None:  # an in-memory workspace hands its stores around open
            self.con = con
        else:
            if self.path != ":memory:" and not read_only:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.con = connect_duckdb(self.path, read_only=read_only, what=f"the run data {Path(self.path).name}")
        self.con.execute("SET enable_progress_bar = false")  # our own progress bars, not DuckDB's
        if not read_only:
            self.con.execute(SCHEMA_SQL)
            for column, sql_type in ADDED_RECORD_COLUMNS:
                self.con.execute(f"ALTER TABLE records ADD COLUMN IF NOT EXISTS {column} {sql_type}")
        self._owned = con is None

    def close(self) -> None:
        """Close the connection, when this store opened it (a handed-in connection stays open)."""
        if self._owned:
            self.con.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------------------------------
    def append(self, table: str, run_id: str, frame: pl.DataFrame) -> None:
        """Append a frame whose columns match the table's (after run_id), in one transaction."""
        if frame.height == 0:
            return
        arrow = frame.to_arrow()  # noqa: F841 - read by DuckDB's replacement scan below
        cols = ", ".join(f'"{c}"' for c in frame.columns)
        self.con.execute(f"INSERT INTO {table} (run_id, {cols}) SELECT ?, {cols} FROM arrow", [run_id])

    def write_stage_counts(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Replace the run's per-stage funnel rows (position, name, in, rejected, out, reasons)."""
        self.con.execute("DELETE FROM stage_counts WHERE run_id = ?", [run_id])
        for r in rows:
            self.con.execute(
                "INSERT INTO stage_counts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [run_id, r["position"], r["name"], r["in"], r["rejected"], r["out"], json.dumps(r["reasons"])],
            )

    # -- reads -----------------------------------------------------------------------------------------------
    def kept_batches(self, run_id: str, columns: list[str], batch_size: int = 50_000) -> Iterator[pl.DataFrame]:
        """Kept records of a run in input order, batch by batch (streamed, never all at once)."""
        cur = self.con.cursor()
        cols = ", ".join(f"r.{c}" for c in columns)
        reader = cur.sql(
            f"""SELECT {cols} FROM records r ANTI JOIN rejects j ON r.run_id = j.run_id AND r.uid = j.uid
                WHERE r.run_id = ? ORDER BY r.uid""",
            params=[run_id],
        ).to_arrow_reader(batch_size)
        for rb in reader:
            yield pl.from_arrow(rb)  # type: ignore[misc]
        cur.close()

    def counts(self, run_id: str) -> dict[str, int]:
        """The run's counts: records, rejected (distinct records) and reject_rows, quarantined, kept, and
        overlap (records also quarantined, which must be 0)."""
        q = self.con.execute(
            """SELECT (SELECT count(*) FROM records WHERE run_id = $1),
                      (SELECT count(*) FROM rejects WHERE run_id = $1),
                      (SELECT count(DISTINCT uid) FROM rejects WHERE run_id = $1),
                      (SELECT count(*) FROM quarantine WHERE run_id = $1),
                      (SELECT count(*) FROM records r SEMI JOIN quarantine q ON r.run_id = q.run_id AND r.uid = q.uid
                        WHERE r.run_id = $1)""",
            [run_id],
        ).fetchall()[0]
        records, reject_rows, rejected, quarantined, overlap = q
        return {
            "records": records,
            "rejected": rejected,
            "reject_rows": reject_rows,
            "quarantined": quarantined,
            "kept": records - rejected,
            "overlap": overlap,
        }

    def sql(self, query: str, params: list[Any] | None = None) -> pl.DataFrame:
        """The result of a SQL query on this run's file, as a Polars frame; ``params`` bind ``?`` / ``$n``."""
        return pl.from_arrow(self.con.sql(query, params=params or None).to_arrow_table())  # type: ignore[return-value]

