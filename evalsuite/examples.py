"""The examples of a generate task: each record's prompt and its accepted answers, read from any file curate
reads (a suite's ``path``, ``shape``, ``mapping``, ``limit`` and ``references_field``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalsuite.suite import SuiteConfig, TaskConfig


def task_examples(suite: SuiteConfig, task: TaskConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(examples, skipped) of a generate task. Each example: ``source`` (file:line), ``prompt`` (the record's
    turns before its last assistant turn), ``references`` (the accepted answers, a non-empty list) and
    ``reference`` (the first of them, what a one-answer reader shows).

    Without ``references_field`` the one reference is the last assistant turn. With it, the references are
    that turn (when there is one: TriviaQA's ``answer`` mapped to the assistant) followed by that field of the
    raw record (a string, a number, or a list of them: TriviaQA ``aliases``, an NQ-open ``answer`` list), empty
    strings and repeats left out, order kept; the prompt is every turn when the record has no assistant turn.
    A mapping that sends the same field to the assistant (``assistant: aliases``) is read as naming the
    references, not as a turn, since a list is no turn. Records that are unreadable, lack a prompt, or lack
    usable references are skipped with ``{where, reason}``."""
    from chat.conversations import read_conversations

    field = task.references_field
    mapping = _mapping_without(task.mapping, field) if field else task.mapping
    convs, bad = read_conversations(suite.resolve(task.path), task.shape, mapping, task.limit)
    records = _raw_records(suite.resolve(task.path), {where for where, _ in convs}) if field else {}
    examples, skipped = [], [{"where": b["where"], "reason": b["reason"]} for b in bad]
    for where, messages in convs:
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if field and last is None and messages and messages[-1]["role"] == "user":
            prompt = messages  # the answers live in the field, not in a turn
        elif not last:  # None, or an assistant turn with nothing before it to answer
            skipped.append({"where": where, "reason": "no assistant turn after a prompt"})
            continue
        else:
            prompt = messages[:last]
        if field:
            references, problem = _field_references(records.get(where), field)
            if problem:
                skipped.append({"where": where, "reason": problem})
                continue
            if last is not None and messages[last]["content"].strip():  # the record's own answer leads the list
                answer = messages[last]["content"]
                references = [answer] + [r for r in references if r != answer]
        else:
            assert last is not None  # a record without an assistant turn was kept only when its answers come from a field
            references = [messages[last]["content"]]
        examples.append({"source": where, "prompt": prompt, "reference": references[0], "references": references})
    return examples, skipped


def _mapping_without(mapping: dict[str, Any] | None, field: str) -> dict[str, Any] | None:
    """``mapping`` with ``field`` taken out of its assistant columns (the references are read from the field)."""
    if not mapping or "assistant" not in mapping:
        return mapping
    cols = [mapping["assistant"]] if isinstance(mapping["assistant"], str) else list(mapping["assistant"])
    kept = [c for c in cols if c != field]
    out = {k: v for k, v in mapping.items() if k != "assistant"}
    if kept:
        out["assistant"] = kept
    return out


def _raw_records(path: Path, wheres: set[str]) -> dict[str, Any]:
    """The parsed records at ``wheres`` (``file:line``, as :func:`chat.conversations.read_conversations`
    names them), read again from ``path``; stops once every one is found."""
    from curate.readers import expand_paths, read_file

    found: dict[str, Any] = {}
    for file in expand_paths(str(path), Path("/")):
        for batch in read_file(file):
            for line, rec in zip(batch.lines, batch.records):
                where = f"{file}:{line}"
                if where in wheres:
                    found[where] = rec
            if len(found) == len(wheres):
                return found
    return found


def _field_references(rec: Any, field: str) -> tuple[list[str], str | None]:
    """(the accepted answers in ``rec[field]``, None) or ([], why not). A dotted ``field`` reaches into nested
    objects and lists (``answers.text``, ``answers.0``) when no key has the whole name."""
    if not isinstance(rec, dict):
        return [], f"references_field {field!r}: the record is not an object"
    value: Any = rec
    if field in rec:
        value = rec[field]
    else:
        for part in field.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
                value = value[int(part)]
            else:
                return [], f"references_field {field!r}: no such field"
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)  # a numeric answer (42) is the text "42"
        if not isinstance(item, str):
            return [], f"references_field {field!r} must hold a string or a list of strings, got {type(item).__name__}"
        if item.strip() and item not in out:
            out.append(item)
    if not out:
        return [], f"references_field {field!r}: no non-empty answer"
    return out, None
