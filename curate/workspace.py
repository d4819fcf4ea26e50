"""The DuckDB workspace: one file per project holding runs, records, rejects, quarantine and stage counts.

Every write goes through this small API (the app and the CLIs read through it too). Tables:

- ``runs``          run_id, kind, name, config, fingerprint, status (running/done/failed), times, summary
- ``records``       every normalized input record of a curate run (kept and rejected), with scores and split
- ``rejects``       one row per rejected record: stage, reason, detail, duplicate_of
- ``quarantine``    one row per malformed input unit: file, line, field, error, raw excerpt
- ``stage_counts``  per stage: records in, rejected, out, and counts by reason
- ``clusters``      duplicate clusters of a run per dedup stage: uid, its representative, similarity to it
- ``similar_pairs`` scored candidate pairs of the near-dup stages (near the threshold and above), for the
                    report's similarity histogram
- ``split_links``   pairs a dedup stage keeps both of but puts in one split (two tasks on one passage)
- ``train_metrics`` per logged step of a train run (kind 'train' in ``runs``): loss, eval_loss, learning rate...
- ``eval_examples`` per example of an eval run (kind 'eval'): prompt, reference, output, per-example scores,
                    annotations (the judge's verdicts and rationales)
- ``labels``        human labels, append-only: record (content id, so a label follows the record into later
                    runs), annotator, verdict (accept / reject), edited messages, tags, note, time; the
                    current label of an annotator is their latest
- ``eval_preferences`` blind human preferences between two eval runs' outputs (base / fine_tune / tie)
- ``embedding_cache`` sentence embeddings by model and text hash, shared by all runs: a re-run with other
                    thresholds does not re-encode
- ``ledger``        a view: each record with its outcome (kept, or rejected with stage and reason)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, kind VARCHAR, name VARCHAR, config JSON, fingerprint VARCHAR,
    status VARCHAR, started TIMESTAMP, finished TIMESTAMP, output_dir VARCHAR, summary JSON);
CREATE TABLE IF NOT EXISTS records (
    run_id VARCHAR, uid BIGINT, id VARCHAR, source_file VARCHAR, source_line BIGINT, shape VARCHAR,
    messages STRUCT(role VARCHAR, content VARCHAR)[], meta VARCHAR, fixes VARCHAR[],
    n_chars BIGINT, n_tokens BIGINT, split VARCHAR, scores VARCHAR);
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
    annotations JSON);
-- workspaces made before judge annotations existed
ALTER TABLE eval_examples ADD COLUMN IF NOT EXISTS annotations JSON;
CREATE TABLE IF NOT EXISTS labels (
    record_id VARCHAR, run_id VARCHAR, uid BIGINT, annotator VARCHAR, verdict VARCHAR, edit JSON, tags VARCHAR[],
    note VARCHAR, created TIMESTAMP);
CREATE TABLE IF NOT EXISTS eval_preferences (
    base_run VARCHAR, ft_run VARCHAR, task VARCHAR, idx BIGINT, annotator VARCHAR, choice VARCHAR,
    left_side VARCHAR, created TIMESTAMP);
CREATE TABLE IF NOT EXISTS embedding_cache (
    model VARCHAR, text_hash UBIGINT, embedding FLOAT[], PRIMARY KEY (model, text_hash));
CREATE OR REPLACE VIEW ledger AS
    SELECT r.run_id, r.uid, r.id, r.source_file, r.source_line, r.shape, r.split,
           CASE WHEN j.uid IS NULL THEN 'kept' ELSE 'rejected' END AS status,
           j.stage, j.reason, j.detail, j.duplicate_of
    FROM records r LEFT JOIN rejects j ON r.run_id = j.run_id AND r.uid = j.uid;
"""

RUN_TABLES = ("records", "rejects", "quarantine", "stage_counts", "clusters", "similar_pairs", "split_links", "train_metrics", "eval_examples")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored as naive UTC


class Workspace:
    """A DuckDB workspace file (or ``:memory:``)."""

    def __init__(self, path: str | Path = ":memory:", read_only: bool = False):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(self.path, read_only=read_only)
        self.con.execute("SET enable_progress_bar = false")  # our own progress bars, not DuckDB's
        if not read_only:
            self.con.execute(SCHEMA_SQL)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- runs ------------------------------------------------------------------------------------------------
    def run(self, run_id: str) -> dict[str, Any] | None:
        cur = self.con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()  # drain: DuckDB blocks the connection while a result is unfinished
        if not rows:
            return None
        row = rows[0]
        out = dict(zip(cols, row))
        for key in ("config", "summary"):
            if isinstance(out.get(key), str):
                out[key] = json.loads(out[key])
        return out

    def runs(self, kind: str | None = None) -> pl.DataFrame:
        sql = "SELECT run_id, kind, name, status, started, finished, output_dir FROM runs"
        args: list[Any] = []
        if kind:
            sql += " WHERE kind = ?"
            args.append(kind)
        return self.sql(sql + " ORDER BY started", args)

    def start_run(self, run_id: str, kind: str, name: str, config: dict, fingerprint: str, output_dir: str) -> None:
        """Register a run, first clearing whatever an earlier attempt with the same id left behind."""
        self.con.execute("BEGIN")
        try:
            self.delete_run(run_id)
            self.con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, 'running', ?, NULL, ?, NULL)",
                [run_id, kind, name, json.dumps(config, default=str), fingerprint, _now(), output_dir],
            )
            self.con.execute("COMMIT")
        except Exception:
            self.con.execute("ROLLBACK")
            raise

    def finish_run(self, run_id: str, status: str, summary: dict | None = None) -> None:
        self.con.execute(
            "UPDATE runs SET status = ?, finished = ?, summary = ? WHERE run_id = ?",
            [status, _now(), json.dumps(summary, default=str) if summary is not None else None, run_id],
        )

    def delete_run(self, run_id: str) -> None:
        for table in RUN_TABLES:
            self.con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        self.con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])

    # -- writes ----------------------------------------------------------------------------------------------
    def append(self, table: str, run_id: str, frame: pl.DataFrame) -> None:
        """Append a frame whose columns match the table's (after run_id), in one transaction."""
        if frame.height == 0:
            return
        arrow = frame.to_arrow()  # noqa: F841 - read by DuckDB's replacement scan below
        cols = ", ".join(f'"{c}"' for c in frame.columns)
        self.con.execute(f"INSERT INTO {table} (run_id, {cols}) SELECT ?, {cols} FROM arrow", [run_id])

    def write_stage_counts(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        self.con.execute("DELETE FROM stage_counts WHERE run_id = ?", [run_id])
        for r in rows:
            self.con.execute(
                "INSERT INTO stage_counts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [run_id, r["position"], r["name"], r["in"], r["rejected"], r["out"], json.dumps(r["reasons"])],
            )

    def add_label(self, record_id: str, annotator: str, verdict: str, *, run_id: str | None = None, uid: int | None = None,
                  edit: list[dict[str, str]] | None = None, tags: list[str] | None = None, note: str | None = None) -> None:
        """Store one human label at once (autocommit: a crash or another tab loses nothing)."""
        if verdict not in ("accept", "reject"):
            raise ValueError(f"verdict must be accept or reject, not {verdict!r}")
        if not annotator.strip():
            raise ValueError("an annotator name is required")
        self.con.execute(
            "INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [record_id, run_id, uid, annotator.strip(), verdict, json.dumps(edit) if edit else None, tags or [], note, _now()],
        )

    def current_labels(self, annotators: list[str] | None = None) -> pl.DataFrame:
        """Each annotator's latest label per record: record_id, annotator, verdict, edit, tags, note, created."""
        where = "WHERE annotator IN (SELECT unnest(?))" if annotators else ""
        return self.sql(
            f"""SELECT record_id, annotator, verdict, edit, tags, note, created FROM labels {where}
                QUALIFY row_number() OVER (PARTITION BY record_id, annotator ORDER BY created DESC) = 1""",
            [annotators] if annotators else None,
        )

    def add_preference(self, base_run: str, ft_run: str, task: str, idx: int, annotator: str, choice: str, left_side: str) -> None:
        if choice not in ("base", "fine_tune", "tie"):
            raise ValueError(f"choice must be base, fine_tune or tie, not {choice!r}")
        self.con.execute("INSERT INTO eval_preferences VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [base_run, ft_run, task, idx, annotator.strip(), choice, left_side, _now()])

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
        return pl.from_arrow(self.con.sql(query, params=params or None).to_arrow_table())  # type: ignore[return-value]

    # -- embedding cache -------------------------------------------------------------------------------------
    def cached_embeddings(self, model: str, hashes: Any) -> tuple[Any, Any]:
        """The cached vectors of ``model`` for those of ``hashes`` (uint64 text hashes) that are cached.

        Returns (found hashes as uint64, float32 matrix with one row per found hash), in no particular
        order; (empty, empty 0 x 0) when none is cached.
        """
        import numpy as np
        import pyarrow as pa

        wanted = pa.table({"text_hash": pa.array(np.unique(np.asarray(hashes, dtype=np.uint64)))})  # noqa: F841 - read by DuckDB
        table = self.con.sql(
            "SELECT c.text_hash, c.embedding FROM embedding_cache c SEMI JOIN wanted w ON c.text_hash = w.text_hash WHERE c.model = ?",
            params=[model],
        ).to_arrow_table()
        if table.num_rows == 0:
            return np.empty(0, dtype=np.uint64), np.empty((0, 0), dtype=np.float32)
        found = table.column("text_hash").to_numpy().astype(np.uint64, copy=False)
        lists = table.column("embedding").combine_chunks()
        flat = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if flat.size % found.size:
            raise ValueError(f"embedding cache for {model!r} holds vectors of different sizes")
        return found, flat.reshape(found.size, -1)

    def store_embeddings(self, model: str, hashes: Any, matrix: Any, chunk: int = 50_000) -> None:
        """Add ``matrix`` rows (float32, one per hash) to the cache of ``model``.

        Idempotent: hashes already cached for the model (or repeated in ``hashes``) keep their first vector.
        Each chunk is its own insert, so an interrupted run keeps what it stored.
        """
        import numpy as np
        import pyarrow as pa

        hashes = np.asarray(hashes, dtype=np.uint64)
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        hashes, first = np.unique(hashes, return_index=True)
        matrix = matrix[first]
        dim = matrix.shape[1] if matrix.ndim == 2 else 0
        for start in range(0, hashes.size, chunk):
            h, m = hashes[start : start + chunk], matrix[start : start + chunk]
            offsets = pa.array(np.arange(0, (h.size + 1) * dim, dim, dtype=np.int32))
            arrow = pa.table({"text_hash": pa.array(h), "embedding": pa.ListArray.from_arrays(offsets, pa.array(m.reshape(-1)))})  # noqa: F841
            self.con.execute("INSERT OR IGNORE INTO embedding_cache SELECT ?, text_hash, embedding FROM arrow", [model])
