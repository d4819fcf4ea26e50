"""Conversations from any file curate reads, and the tokenizer they are encoded with.

Training reads its data sources and evaluation its task files through :func:`read_conversations`, so a
record means the same turns on both sides.
"""

from __future__ import annotations

from pathlib import Path


def read_conversations(
    path: str | Path, shape: str = "auto", mapping: dict | None = None, limit: int | None = None
) -> tuple[list[tuple[str, list[dict[str, str]]]], list[dict]]:
    """(``[(where, messages)]``, ``[bad]``) from a file, directory or glob in any shape curate reads.

    ``where`` is ``file:line``; ``bad`` lists ``{where, reason}`` for unreadable or unconvertible records
    (never fatal). ``shape`` and ``mapping`` are curate's (``auto`` detects per record); at most ``limit``
    conversations are read."""
    from curate.readers import expand_paths, read_file
    from curate.shapes import Converter, ShapeError

    conv = Converter(shape, mapping)
    out, bad = [], []
    for file in expand_paths(str(path), Path("/")):
        for batch in read_file(file):
            bad += [{"where": f"{file}:{b.line}", "reason": b.error} for b in batch.bad]
            for line, rec in zip(batch.lines, batch.records):
                try:
                    _shape, roles, contents, _meta, _fixes = conv.convert(rec)
                except ShapeError as exc:
                    bad.append({"where": f"{file}:{line}", "reason": exc.message})
                    continue
                out.append((f"{file}:{line}", [{"role": r, "content": c} for r, c in zip(roles, contents)]))
                if limit and len(out) >= limit:
                    return out, bad
    return out, bad


def load_tokenizer(base: str):
    """The tokenizer of a model folder or hub id, with a pad token (its eos when it has none: padding is
    never a label here, masks come from template spans, so eos is safe)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
