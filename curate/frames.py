"""Building canonical batches: from plain Python rows, and the derived columns stages share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from curate.schema import DERIVED_SCHEMA, PROMPT_ROLES, RECORD_SCHEMA, turns_text_expr


def has_tool_calls(messages: pl.Series) -> bool:
    """Whether any turn of any conversation in ``messages`` calls a tool (a look at one Arrow child's nulls)."""
    import pyarrow as pa

    arr = messages.to_arrow()
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    for chunk in chunks:
        values = chunk.values  # the turns of every conversation
        if "tool_calls" in [f.name for f in values.type] and values.field("tool_calls").null_count < len(values):
            return True
    return False


def with_derived(batch: pl.DataFrame, tokenizer: Any = None) -> pl.DataFrame:
    """Add (or recompute) ``prompt_text``, ``response_text``, ``rejected_text``, ``n_chars`` and ``n_tokens``.

    ``tokenizer`` is a :class:`curate.tokens.TokenCounter` or None (then ``n_tokens`` is null).
    """
    calls = has_tool_calls(batch["messages"])
    rejected = (
        turns_text_expr(("assistant",), "rejected", calls=has_tool_calls(batch["rejected"]))
        if "rejected" in batch.columns and batch["rejected"].null_count() < batch.height
        else pl.lit(None, dtype=pl.Utf8)
    )
    batch = batch.with_columns(
        prompt_text=turns_text_expr(PROMPT_ROLES),
        response_text=turns_text_expr(("assistant",), calls=calls),
        rejected_text=rejected,
        n_chars=pl.col("messages")
        .list.eval(pl.element().struct.field("content").str.len_chars())
        .list.sum()
        .cast(pl.Int64),
    )
    if tokenizer is not None:
        counts = tokenizer.count_messages(batch["messages"])
        batch = batch.with_columns(n_tokens=pl.Series(counts, dtype=pl.Int64))
    else:
        batch = batch.with_columns(n_tokens=pl.lit(None, dtype=pl.Int64))
    return batch


def canonical_frame(
    conversations: Sequence[Sequence[dict[str, str] | tuple[str, str]]],
    *,
    tokenizer: Any = None,
    **columns: Iterable[Any],
) -> pl.DataFrame:
    """A canonical batch from conversations given as lists of {role, content} (or (role, content)).

    Meant for tests and small tools; readers build batches column-wise for speed. Other canonical
    columns may be passed by name (``shape=[...]``, ``meta=[...]``); missing ones get defaults.
    """
    msgs = [
        [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in conv] for conv in conversations
    ]
    n = len(msgs)
    data: dict[str, Any] = {
        "uid": list(range(n)),
        "id": [f"rec{i:06d}" for i in range(n)],
        "source_file": ["<memory>"] * n,
        "source_line": list(range(1, n + 1)),
        "shape": ["openai"] * n,
        "kind": ["sft"] * n,
        "messages": msgs,
        "tools": [None] * n,
        "rejected": [None] * n,
        "prompt_turns": [None] * n,
        "label": [None] * n,
        "meta": ["{}"] * n,
        "fixes": [[] for _ in range(n)],
    }
    data.update({k: list(v) for k, v in columns.items()})
    frame = pl.DataFrame({k: data[k] for k in RECORD_SCHEMA}, schema=RECORD_SCHEMA)
    return with_derived(frame, tokenizer)


CANONICAL_COLUMNS = tuple(RECORD_SCHEMA) + tuple(DERIVED_SCHEMA)
