"""Conversations from any file curate reads, and the tokenizer they are encoded with.

Training reads its data sources and evaluation its task files through :func:`read_conversations`, so a
record means the same turns on both sides.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_conversations(
    path: str | Path, shape: str = "auto", mapping: dict | None = None, limit: int | None = None
) -> tuple[list[tuple[str, list[dict[str, str]]]], list[dict]]:
    """(``[(where, messages)]``, ``[bad]``) from a file, directory or glob in any shape curate reads: as
    :func:`read_chats` without the tool definitions."""
    chats, bad = read_chats(path, shape, mapping, limit)
    return [(where, messages) for where, messages, _tools in chats], bad


def read_chats(
    path: str | Path, shape: str = "auto", mapping: dict | None = None, limit: int | None = None
) -> tuple[list[tuple[str, list[dict[str, Any]], str | None]], list[dict]]:
    """(``[(where, messages, tools)]``, ``[bad]``) from a file, directory or glob in any shape curate reads:
    OpenAI-style message dicts (tool calls included) and the JSON text of the record's tool definitions (None
    when it has none).

    A preference pair reads as its prompt and chosen completion; a KTO record labeled undesirable is listed in
    ``bad``, never returned as an example to imitate.

    ``where`` is ``file:line``; ``bad`` lists ``{where, reason}`` for unreadable or unconvertible records
    (never fatal). ``shape`` and ``mapping`` are curate's (``auto`` detects per record); at most ``limit``
    conversations are read."""
    bad: list[dict] = []
    out: list[tuple[str, list[dict[str, Any]], str | None]] = []
    for where, record in iter_records(path, bad, shape, mapping):
        if record.extra is not None and record.extra.kind == "kto" and record.extra.label is False:
            bad.append({"where": where, "reason": "a KTO record labeled undesirable: not an example to imitate"})
            continue
        out.append((where, message_dicts(record), record.extra.tools if record.extra is not None else None))
        if limit and len(out) >= limit:
            break
    return out, bad


def read_records(path: str | Path, shape: str = "auto", mapping: dict | None = None, limit: int | None = None,
                 trees: str = "best") -> tuple[list[tuple[str, Any]], list[dict]]:
    """(``[(where, record)]``, ``[bad]``) like :func:`read_conversations`, but every converted record whole
    (:class:`curate.shapes.Converted`: kind, tool calls, the rejected side of a pair, a KTO label), for training
    objectives that need more than the conversation."""
    bad: list[dict] = []
    out = list(itertools.islice(iter_records(path, bad, shape, mapping, trees), limit))
    return out, bad


def iter_records(path: str | Path, bad: list[dict], shape: str = "auto", mapping: dict | None = None,
                 trees: str = "best") -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for every record of a file, directory or glob, read lazily; unreadable or
    unconvertible records are appended to ``bad`` as ``{where, reason}``."""
    from curate.readers import expand_paths, read_file
    from curate.shapes import Converter, ShapeError

    conv = Converter(shape, mapping, trees=trees)
    for file in expand_paths(str(path), Path("/")):
        for batch in read_file(file):
            bad += [{"where": f"{file}:{b.line}", "reason": b.error} for b in batch.bad]
            for line, rec in zip(batch.lines, batch.records):
                try:
                    made = conv.records(rec)
                except ShapeError as exc:
                    bad.append({"where": f"{file}:{line}", "reason": exc.message})
                    continue
                for r in made:
                    yield f"{file}:{line}", r


def rejected_dicts(record) -> list[dict]:  # type: ignore[no-untyped-def]
    """A preference pair's prompt followed by its rejected completion, as OpenAI-style message dicts."""
    prompt = message_dicts(record)[: record.extra.prompt_turns]
    roles, contents, turns = record.extra.rejected
    out = []
    for i, (role, content) in enumerate(zip(roles, contents)):
        message = {"role": role, "content": content}
        if turns is not None and turns[i]:
            message.update({k: v for k, v in turns[i].items() if v is not None})
        out.append(message)
    return prompt + out


def message_dicts(record) -> list[dict]:  # type: ignore[no-untyped-def]
    """The turns of a converted record (:class:`curate.shapes.Converted`) as OpenAI-style message dicts: role and
    content, plus ``tool_calls`` / ``tool_call_id`` / ``name`` where the turn has them. A preference pair gives
    its prompt and chosen completion."""
    turns = record.extra.turns if record.extra is not None else None
    out = []
    for i, (role, content) in enumerate(zip(record.roles, record.contents)):
        message = {"role": role, "content": content}
        if turns is not None and turns[i]:
            message.update({k: v for k, v in turns[i].items() if v is not None})
        out.append(message)
    return out


def load_tokenizer(base: str):
    """The tokenizer of a model folder or hub id, with a pad token (its eos when it has none: padding is
    never a label here, masks come from template spans, so eos is safe)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
