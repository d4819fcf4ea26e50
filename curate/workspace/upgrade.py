"""Converting a single-file DuckDB workspace of an earlier version into a workspace folder: each run's rows
into a data file of its own, registered with its original times, status and summary; labels and
preferences into the catalog, in their original order; the embedding cache into its file. The old file is
opened read-only and never changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from curate.workspace import DUCKDB_MAGIC, RUN_TABLES, Workspace, WorkspaceError
from curate.workspace.catalog import now_text


def _has(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = 'old' AND table_name = ?", [table]).fetchall()[0][0])


def upgrade(old: str | Path, new: str | Path) -> dict[str, int]:
    """Copy ``old`` (a single-file workspace) into the new folder ``new``; counts of what was copied.
    Raises :class:`WorkspaceError` when ``old`` is not a DuckDB file or ``new`` is not empty."""
    old, new = Path(old), Path(new)
    if not old.is_file():
        raise WorkspaceError(f"{old}: no such file")
    with open(old, "rb") as fh:
        if fh.read(16)[8:12] != DUCKDB_MAGIC:
            raise WorkspaceError(f"{old} is not a DuckDB file, so not an old workspace")
    if new.exists() and (not new.is_dir() or any(new.iterdir())):
        raise WorkspaceError(f"{new} exists and is not empty: name a new folder")
    ws = Workspace(new)
    con = duckdb.connect()
    con.execute(f"ATTACH '{old}' AS old (READ_ONLY)")
    counts = {"runs": 0, "labels": 0, "preferences": 0, "embeddings": 0}
    runs = con.execute(
        "SELECT run_id, kind, name, config, fingerprint, status, started, finished, output_dir, summary FROM old.runs ORDER BY started"
    ).fetchall()
    for run_id, kind, name, config, fingerprint, status, started, finished, output_dir, summary in runs:
        store = ws.begin_run(run_id, kind, name, json.loads(config) if config else {}, fingerprint, output_dir or "")
        store.con.execute(f"ATTACH '{old}' AS old (READ_ONLY)")
        for table in RUN_TABLES:
            if _has(store.con, table):
                store.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM old.{table} WHERE run_id = ?", [run_id])
        store.con.execute("DETACH old")
        store.close()
        ws._write("UPDATE runs SET status = ?, started = ?, finished = ?, summary = ?, pid = NULL WHERE run_id = ?",
                  [status, str(started) if started else now_text(), str(finished) if finished else None, summary, run_id])
        counts["runs"] += 1
    if _has(con, "labels"):
        for record_id, run_id, uid, annotator, verdict, edit, tags, note, created in con.execute(
                "SELECT record_id, run_id, uid, annotator, verdict, edit, tags, note, created FROM old.labels ORDER BY created").fetchall():
            ws._write("INSERT INTO labels (record_id, run_id, uid, annotator, verdict, edit, tags, note, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      [record_id, run_id, uid, annotator, verdict, edit, json.dumps(list(tags or [])), note, str(created)])
            counts["labels"] += 1
    if _has(con, "eval_preferences"):
        old_votes = "SELECT base_run, ft_run, task, idx, annotator, choice, left_side, created FROM old.eval_preferences ORDER BY created"
        for row in con.execute(old_votes).fetchall():
            # whether these votes were blind is unknown: the page showed both models' names before the vote
            ws._write("INSERT INTO eval_preferences (base_run, ft_run, task, idx, annotator, choice, left_side, blind, created) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)", [*row[:7], str(row[7])])
            counts["preferences"] += 1
    if _has(con, "embedding_cache"):
        for (model,) in con.execute("SELECT DISTINCT model FROM old.embedding_cache").fetchall():
            table = con.execute("SELECT text_hash, embedding FROM old.embedding_cache WHERE model = ?", [model]).fetchnumpy()
            import numpy as np

            matrix = np.stack(table["embedding"]) if len(table["embedding"]) else np.empty((0, 0), np.float32)
            ws.store_embeddings(model, table["text_hash"], matrix)
            counts["embeddings"] += len(table["text_hash"])
    con.close()
    return counts
