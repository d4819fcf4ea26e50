"""Exports of a curate run: the kept set as chat-shaped JSONL and Parquet per split, and the full ledger.

Chat-shaped rows are ``{"id", "messages": [{"role", "content"}], "shape", "source", "meta"}``, the shape
`train` and `evalsuite` read (and most trainers: TRL's SFTTrainer takes ``messages`` as is). Rows are
in input order; the split is a function of the record's content id, so exports are deterministic.
"""

from __future__ import annotations

from pathlib import Path

from curate.workspace import RunStore

SPLITS = ("train", "validation", "test")


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def export_run(ws: RunStore, run_id: str, out_dir: Path) -> dict:
    """Write ``data/{split}.jsonl``, ``data/{split}.parquet``, ``ledger.parquet`` and ``quarantine.jsonl``.

    Returns their paths relative to ``out_dir``.
    """
    data = out_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    rid = _lit(run_id)
    # The kept set is materialized once, in input order; each split file is then a plain filtered scan
    # (DuckDB keeps insertion order), instead of six anti-joins and sorts over every record.
    ws.con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _kept_export AS
            SELECT r.split, r.id, r.messages, r.shape, r.source_file || ':' || r.source_line AS source, r.meta::JSON AS meta
            FROM records r ANTI JOIN rejects j ON r.run_id = j.run_id AND r.uid = j.uid
            WHERE r.run_id = {rid} ORDER BY r.uid"""
    )
    out: dict = {"jsonl": {}, "parquet": {}}
    try:
        for split in SPLITS:
            query = f"SELECT id, messages, shape, source, meta FROM _kept_export WHERE split = {_lit(split)}"
            jsonl, parquet = data / f"{split}.jsonl", data / f"{split}.parquet"
            ws.con.execute(f"COPY ({query}) TO {_lit(str(jsonl))} (FORMAT JSON)")
            ws.con.execute(f"COPY ({query}) TO {_lit(str(parquet))} (FORMAT PARQUET, COMPRESSION SNAPPY)")
            out["jsonl"][split] = str(jsonl.relative_to(out_dir))
            out["parquet"][split] = str(parquet.relative_to(out_dir))
    finally:
        ws.con.execute("DROP TABLE IF EXISTS _kept_export")
    # The ledger: one row per input unit with its outcome. Nothing is lost silently.
    ledger = out_dir / "ledger.parquet"
    ws.con.execute(
        f"""COPY (
              SELECT uid, id, source_file, source_line, status, stage, reason, detail, duplicate_of, split
              FROM ledger WHERE run_id = {rid}
              UNION ALL
              SELECT uid, NULL, source_file, source_line, 'quarantined', 'ingest', error, field, NULL, NULL
              FROM quarantine WHERE run_id = {rid}
              ORDER BY uid) TO {_lit(str(ledger))} (FORMAT PARQUET, COMPRESSION SNAPPY)"""
    )
    quarantine = out_dir / "quarantine.jsonl"
    ws.con.execute(
        f"""COPY (SELECT source_file, source_line, field, error, raw FROM quarantine WHERE run_id = {rid} ORDER BY uid)
            TO {_lit(str(quarantine))} (FORMAT JSON)"""
    )
    out["ledger"] = str(ledger.relative_to(out_dir))
    out["quarantine"] = str(quarantine.relative_to(out_dir))
    return out
