"""Exports of a curate run: the kept set per split, in the layout each kind of record trains with, and the ledger.

- ``data/{split}.jsonl|parquet``: conversations (``kind`` sft), ``{"id", "messages", "tools", "shape", "source",
  "meta"}``, the shape `train` and `evalsuite` read and TRL's SFTTrainer takes as is. Messages are OpenAI's:
  ``{"role", "content"}``, plus ``tool_calls`` (arguments as JSON text) or ``tool_call_id`` and ``name`` where
  a turn has them; ``tools`` is the JSON text of the tool definitions (SFTTrainer parses it), written only
  when some record has tools.
- ``data/preference/{split}.jsonl|parquet``: preference pairs, TRL's conversational preference layout
  ``{"id", "prompt", "chosen", "rejected", ...}`` (DPOTrainer, ORPO, reward modelling).
- ``data/kto/{split}.jsonl|parquet``: KTO records, ``{"id", "prompt", "completion", "label", ...}``.

The preference and KTO folders exist only when the run kept such records. Rows are in input order; the split
is a function of the record's content id, so exports are deterministic.
"""

from __future__ import annotations

from pathlib import Path

from curate.workspace import RunStore

SPLITS = ("train", "validation", "test")
KIND_FOLDERS = {"sft": "", "preference": "preference", "kto": "kto"}

# A message as JSON with only the keys it uses: a plain turn stays {"role", "content"}.
_MESSAGE_JSON = """CREATE OR REPLACE TEMP MACRO _msg_json(m) AS CASE
    WHEN m.tool_calls IS NOT NULL THEN json_object('role', m.role, 'content', m.content, 'tool_calls', m.tool_calls)
    WHEN m.tool_call_id IS NOT NULL OR m.name IS NOT NULL
        THEN json_object('role', m.role, 'content', m.content, 'tool_call_id', m.tool_call_id, 'name', m.name)
    ELSE json_object('role', m.role, 'content', m.content) END"""


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _columns(kind: str, rich: bool, has_tools: bool, jsonl: bool) -> str:
    """The SELECT list of one kind's export rows. ``rich``: some kept message has tool fields (else messages are
    written as plain {role, content}); ``jsonl``: messages as JSON objects without null keys."""
    if rich and jsonl:
        turns = "list_transform({0}, lambda m: _msg_json(m))"
    elif rich:
        turns = "{0}"
    else:
        turns = "list_transform({0}, lambda m: {{'role': m.role, 'content': m.content}})"
    if kind == "sft":
        cols = [f"{turns.format('messages')} AS messages"]
    else:
        prompt = turns.format("messages[1:prompt_turns]")
        rest = turns.format("messages[prompt_turns + 1:]")
        cols = [f"{prompt} AS prompt"]
        if kind == "preference":
            cols += [f"{rest} AS chosen", f"{turns.format('rejected')} AS rejected"]
        else:
            cols += [f"{rest} AS completion", "label"]
    if has_tools:
        cols.append("tools")
    return ", ".join(["id", *cols, "shape", "source", "meta"])


def export_run(ws: RunStore, run_id: str, out_dir: Path) -> dict:
    """Write the kept records per kind and split (see the module doc), ``ledger.parquet`` and ``quarantine.jsonl``.

    Returns their paths relative to ``out_dir``: ``jsonl`` and ``parquet`` map a split to the conversation files,
    ``preference`` and ``kto`` (present when the run kept such records) map ``jsonl``/``parquet`` to splits."""
    data = out_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    rid = _lit(run_id)
    # The kept set is materialized once, in input order; each split file is then a plain filtered scan
    # (DuckDB keeps insertion order), instead of six anti-joins and sorts over every record.
    ws.con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _kept_export AS
            SELECT r.split, r.id, coalesce(r.kind, 'sft') AS kind, r.messages, r.tools, r.rejected, r.prompt_turns, r.label,
                   r.shape, r.source_file || ':' || r.source_line AS source, r.meta::JSON AS meta
            FROM records r ANTI JOIN rejects j ON r.run_id = j.run_id AND r.uid = j.uid
            WHERE r.run_id = {rid} ORDER BY r.uid"""
    )
    ws.con.execute(_MESSAGE_JSON)
    out: dict = {"jsonl": {}, "parquet": {}}
    try:
        # what the kept records hold, per kind: whether any has tools, any message tool fields
        found = ws.con.execute(
            """SELECT kind, bool_or(tools IS NOT NULL),
                      bool_or(list_bool_or(list_transform(messages || coalesce(rejected, []),
                              lambda m: m.tool_calls IS NOT NULL OR m.tool_call_id IS NOT NULL OR m.name IS NOT NULL)))
               FROM _kept_export GROUP BY kind"""
        ).fetchall()
        kinds = {kind: (bool(has_tools), bool(rich)) for kind, has_tools, rich in found}
        for kind, folder in KIND_FOLDERS.items():
            if kind != "sft" and kind not in kinds:
                continue
            has_tools, rich = kinds.get(kind, (False, False))
            where = data / folder if folder else data
            where.mkdir(parents=True, exist_ok=True)
            target = out if kind == "sft" else out.setdefault(kind, {"jsonl": {}, "parquet": {}})
            for split in SPLITS:
                scan = f"FROM _kept_export WHERE kind = {_lit(kind)} AND split = {_lit(split)}"
                jsonl, parquet = where / f"{split}.jsonl", where / f"{split}.parquet"
                ws.con.execute(f"COPY (SELECT {_columns(kind, rich, has_tools, True)} {scan}) TO {_lit(str(jsonl))} (FORMAT JSON)")
                ws.con.execute(
                    f"COPY (SELECT {_columns(kind, rich, has_tools, False)} {scan}) TO {_lit(str(parquet))} (FORMAT PARQUET, COMPRESSION SNAPPY)"
                )
                target["jsonl"][split] = str(jsonl.relative_to(out_dir))
                target["parquet"][split] = str(parquet.relative_to(out_dir))
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
