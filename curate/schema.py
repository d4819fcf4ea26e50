"""The canonical record schema every reader produces and every stage consumes.

A batch of canonical records is a Polars DataFrame with these columns:

- ``uid``          Int64: position of the record in the run's input (unique per input record, the ledger key)
- ``id``           Utf8: stable content hash of the normalized messages (equal content, equal id)
- ``source_file``  Utf8: path of the input file
- ``source_line``  Int64: 1-based line (JSONL, CSV data row) or element/row number (JSON array, Parquet)
- ``shape``        Utf8: alpaca, dolly, sharegpt, openai, prompt_completion or mapped
- ``messages``     List(Struct(role, content)): roles are system, user, assistant
- ``meta``         Utf8: JSON object of every input field the shape did not consume
- ``fixes``        List(Utf8): normalizations that changed the record (placeholder_input, eos_marker, ...)

Derived columns shared by stages (computed once, after normalization):

- ``prompt_text``   system and user turns joined by blank lines
- ``response_text`` assistant turns joined by blank lines
- ``n_chars``       characters over all turns
- ``n_tokens``      tokens over all turns with the configured tokenizer (null when none is configured)
"""

from __future__ import annotations

import polars as pl

ROLES = ("system", "user", "assistant")

MESSAGE = pl.Struct({"role": pl.Utf8, "content": pl.Utf8})
MESSAGES = pl.List(MESSAGE)

RECORD_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "uid": pl.Int64,
    "id": pl.Utf8,
    "source_file": pl.Utf8,
    "source_line": pl.Int64,
    "shape": pl.Utf8,
    "messages": MESSAGES,
    "meta": pl.Utf8,
    "fixes": pl.List(pl.Utf8),
}

DERIVED_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "prompt_text": pl.Utf8,
    "response_text": pl.Utf8,
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


def turns_text_expr(roles: tuple[str, ...], col: str = "messages", sep: str = "\n\n") -> pl.Expr:
    """The contents of the turns whose role is in ``roles``, joined by ``sep``."""
    return (
        pl.col(col)
        .list.eval(
            pl.element()
            .filter(pl.element().struct.field("role").is_in(list(roles)))
            .struct.field("content")
        )
        .list.join(sep)
    )
