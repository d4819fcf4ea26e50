"""Building canonical batches: from plain Python rows, and the derived columns stages share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from curate.schema import DERIVED_SCHEMA, RECORD_SCHEMA, turns_text_expr


def with_derived(batch: pl.DataFrame, tokenizer: Any = None) -> pl.DataFrame:
    """Add (or recompute) ``prompt_text``, ``response_text``, ``n_chars`` and ``n_tokens``.

    ``tokenizer`` is a :class:`curate.tokens.TokenCounter` or None (then ``n_tokens`` is null).
    """
    batch = batch.with_columns(
        prompt_text=turns_text_expr(("system", "user")),
        response_text=turns_text_expr(("assistant",)),
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
        "messages": msgs,
        "meta": ["{}"] * n,
        "fixes": [[] for _ in range(n)],
    }
    data.update({k: list(v) for k, v in columns.items()})
    frame = pl.DataFrame({k: data[k] for k in RECORD_SCHEMA}, schema=RECORD_SCHEMA)
    return with_derived(frame, tokenizer)


CANONICAL_COLUMNS = tuple(RECORD_SCHEMA) + tuple(DERIVED_SCHEMA)
