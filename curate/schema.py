"""The canonical record schema every reader produces and every stage consumes.

A batch of canonical records is a Polars DataFrame with these columns:

- ``uid``          Int64: position of the record in the run's input (unique per input record, the ledger key)
- ``id``           Utf8: stable content hash of the normalized messages (equal content, equal id)
- ``source_file``  Utf8: path of the input file
- ``source_line``  Int64: 1-based line (JSONL, CSV data row) or element/row number (JSON array, Parquet)
- ``shape``        Utf8: the input layout the record was read from (alpaca, sharegpt, openai, llamafactory_dpo,
                   oasst_tree, ...; see :mod:`curate.shapes`)
- ``kind``         Utf8: what the record trains: ``sft`` (a conversation), ``preference`` (a prompt with a
                   chosen and a rejected completion) or ``kto`` (a prompt and one completion labeled good or bad)
- ``messages``     List(Struct(role, content, tool_calls, tool_call_id, name)), OpenAI's message shape: roles are
                   system, user, assistant and tool; an assistant turn may carry ``tool_calls``
                   ([{id, type, function: {name, arguments}}], arguments a JSON text as in OpenAI's API), a tool
                   turn answers one call (``tool_call_id``, and the tool's ``name``). For a preference or KTO
                   record: the prompt, then the chosen (or labeled) completion
- ``tools``        Utf8: the JSON list of tool definitions offered to the model (OpenAI's
                   ``[{"type": "function", "function": {name, description, parameters}}]``), null when none
- ``rejected``     the rejected completion's turns (same struct as ``messages``), null unless ``kind`` is preference
- ``prompt_turns`` Int64: how many leading turns of ``messages`` are the prompt (the rest is the completion),
                   null for ``sft``
- ``label``        Boolean: whether the completion is desirable (KTO), null unless ``kind`` is kto
- ``meta``         Utf8: JSON object of every input field the shape did not consume
- ``fixes``        List(Utf8): normalizations that changed the record (placeholder_input, eos_marker, ...)

Derived columns shared by stages (computed once, after normalization):

- ``prompt_text``   system, user and tool turns joined by blank lines
- ``response_text`` assistant turns (their text, and their tool calls as ``name(arguments)``) joined by blank lines
- ``rejected_text`` the rejected completion's assistant turns, the same way (null unless a preference pair)
- ``n_chars``       characters over all turns
- ``n_tokens``      tokens over all turns with the configured tokenizer (null when none is configured)
"""

from __future__ import annotations

import polars as pl

ROLES = ("system", "user", "assistant", "tool")
KINDS = ("sft", "preference", "kto")

TOOL_CALL = pl.Struct({"id": pl.Utf8, "type": pl.Utf8, "function": pl.Struct({"name": pl.Utf8, "arguments": pl.Utf8})})
MESSAGE = pl.Struct(
    {"role": pl.Utf8, "content": pl.Utf8, "tool_calls": pl.List(TOOL_CALL), "tool_call_id": pl.Utf8, "name": pl.Utf8}
)
MESSAGES = pl.List(MESSAGE)
# The same struct as DuckDB spells it (the workspace's records table)
MESSAGES_SQL = (
    "STRUCT(role VARCHAR, content VARCHAR, tool_calls STRUCT(id VARCHAR, type VARCHAR, "
    "function STRUCT(name VARCHAR, arguments VARCHAR))[], tool_call_id VARCHAR, name VARCHAR)[]"
)

RECORD_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "uid": pl.Int64,
    "id": pl.Utf8,
    "source_file": pl.Utf8,
    "source_line": pl.Int64,
    "shape": pl.Utf8,
    "kind": pl.Utf8,
    "messages": MESSAGES,
    "tools": pl.Utf8,
    "rejected": MESSAGES,
    "prompt_turns": pl.Int64,
    "label": pl.Boolean,
    "meta": pl.Utf8,
    "fixes": pl.List(pl.Utf8),
}

DERIVED_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "prompt_text": pl.Utf8,
    "response_text": pl.Utf8,
    "rejected_text": pl.Utf8,
    "n_chars": pl.Int64,
    "n_tokens": pl.Int64,
}

# Columns of a reject row, as stages return them and as the workspace stores them.
REJECT_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "uid": pl.Int64,
    "stage": pl.Utf8,
    "reason": pl.Utf8,
    "detail": pl.Utf8,
    "duplicate_of": pl.Utf8,
}

QUARANTINE_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "uid": pl.Int64,
    "source_file": pl.Utf8,
    "source_line": pl.Int64,
    "field": pl.Utf8,
    "error": pl.Utf8,
    "raw": pl.Utf8,
}


def role_code_expr(col: str = "messages") -> pl.Expr:
    """The sequence of roles as a compact string, 's' 'u' 'a' per turn (e.g. "suaua").

    Structure checks become regular expressions over this string, vectorized.
    """
    return (
        pl.col(col)
        .list.eval(pl.element().struct.field("role").str.slice(0, 1))
        .list.join("")
    )


def turns_text_expr(roles: tuple[str, ...], col: str = "messages", sep: str = "\n\n", calls: bool = False) -> pl.Expr:
    """The contents of the turns whose role is in ``roles``, joined by ``sep``; with ``calls``, each turn's tool
    calls follow its content as ``name(arguments)`` lines (what an assistant turn that calls a tool says)."""
    el = pl.element()
    text = el.struct.field("content")
    if calls:
        call = pl.element().struct.field("function")
        called = el.struct.field("tool_calls").list.eval(
            pl.concat_str([call.struct.field("name"), pl.lit("("), call.struct.field("arguments"), pl.lit(")")])
        ).list.join("\n")
        text = pl.concat_str([text.fill_null(""), called.fill_null("")], separator="\n").str.strip_chars("\n")
    return pl.col(col).list.eval(text.filter(el.struct.field("role").is_in(list(roles)))).list.join(sep)


PROMPT_ROLES = ("system", "user", "tool")  # what the model reads: tool results are input, never a target
