"""The examples of a task, read from any file curate reads (a suite's ``path``, ``shape``, ``mapping``, ``limit``,
``references_field`` and ``reference_turn``): a generate task's prompts and accepted answers (and the tools a
record offers), a preference task's pairs.

Records are read by :mod:`chat.conversations` (:func:`~chat.conversations.read_chats` for conversations and
their tools, :func:`~chat.conversations.iter_records` for pairs), as training reads its data, so a record
means the same turns in training and in evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evalsuite.suite import SuiteConfig, TaskConfig


def _tool_list(text: str | None) -> list[dict[str, Any]] | None:
    """Tool definitions (OpenAI's shape) from the JSON text curate keeps them as, or None."""
    return json.loads(text) if text else None


def reference_call(message: dict[str, Any]) -> str:
    """The reference text of an assistant tool-call turn: its calls as a JSON list of ``{"name", "arguments"}``
    (arguments as an object where its JSON text parses), which :func:`evalsuite.metrics.toolcall.parse_tool_calls`
    reads back as the same calls."""
    calls = []
    for call in message["tool_calls"]:
        fn = call["function"]
        args: Any = fn.get("arguments") or "{}"
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            pass  # kept as text: it does not parse as a call, so the example has no reference tool
        calls.append({"name": fn["name"], "arguments": args})
    return json.dumps(calls, ensure_ascii=False)


def task_examples(suite: SuiteConfig, task: TaskConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(examples, skipped) of a generate task. Each example: ``source`` (file:line), ``prompt`` (the record's
    turns before its last assistant turn), ``references`` (the accepted answers, a non-empty list),
    ``reference`` (the first of them, what a one-answer reader shows) and, when the record offers tools,
    ``tools`` (OpenAI's tool definitions).

    Without ``references_field`` the one reference is the last assistant turn. With it, the references are
    that turn (when there is one: TriviaQA's ``answer`` mapped to the assistant) followed by that field of the
    raw record (a string, a number, or a list of them: TriviaQA ``aliases``, an NQ-open ``answer`` list), empty
    strings and repeats left out, order kept; the prompt is every turn when the record has no assistant turn.
    A mapping that sends the same field to the assistant (``assistant: aliases``) is read as naming the
    references, not as a turn, since a list is no turn. Records that are unreadable, lack a prompt, or lack
    usable references are skipped with ``{where, reason}``.

    With ``reference_turn: tool_call`` every assistant turn that calls a tool is an example: the prompt is the
    turns before it, the reference its calls (:func:`reference_call`); a record without tools or without such a
    turn is skipped with a reason."""
    from chat.conversations import read_chats

    field = task.references_field
    mapping = _mapping_without(task.mapping, field) if field else task.mapping
    chats, bad = read_chats(suite.resolve(task.path), task.shape, mapping, task.limit)
    convs = [(where, messages, _tool_list(tools)) for where, messages, tools in chats]
    if task.reference_turn == "tool_call":
        return _tool_call_examples(convs, [{"where": b["where"], "reason": b["reason"]} for b in bad])
    raw = _raw_records(suite.resolve(task.path), {where for where, _, _ in convs}) if field else {}
    examples, skipped = [], [{"where": b["where"], "reason": b["reason"]} for b in bad]
    for where, messages, tools in convs:
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if field and last is None and messages and messages[-1]["role"] == "user":
            prompt = messages  # the answers live in the field, not in a turn
        elif not last:  # None, or an assistant turn with nothing before it to answer
            skipped.append({"where": where, "reason": "no assistant turn after a prompt"})
            continue
        else:
            prompt = messages[:last]
        if field:
            references, problem = _field_references(raw.get(where), field)
            if problem:
                skipped.append({"where": where, "reason": problem})
                continue
            if last is not None and messages[last]["content"].strip():  # the record's own answer leads the list
                answer = messages[last]["content"]
                references = [answer] + [r for r in references if r != answer]
        else:
            assert last is not None  # a record without an assistant turn was kept only when its answers come from a field
            references = [messages[last]["content"]]
        example = {"source": where, "prompt": prompt, "reference": references[0], "references": references}
        if tools:
            example["tools"] = tools
        examples.append(example)
    return examples, skipped


def _tool_call_examples(convs: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]] | None]],
                        skipped: list[dict[str, str]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One example per assistant tool-call turn of each conversation (see :func:`task_examples`)."""
    examples = []
    for where, messages, tools in convs:
        calls = [k for k, m in enumerate(messages) if m["role"] == "assistant" and m.get("tool_calls")]
        if not tools:
            skipped.append({"where": where, "reason": "no tools: the record offers no tool to call"})
            continue
        if not calls:
            skipped.append({"where": where, "reason": "no assistant turn that calls a tool"})
            continue
        for k in calls:
            if not any(m["role"] == "user" for m in messages[:k]):
                skipped.append({"where": where, "reason": f"turn {k + 1} calls a tool with no user turn before it"})
                continue
            ref = reference_call(messages[k])
            examples.append({"source": where, "prompt": messages[:k], "reference": ref, "references": [ref], "tools": tools})
    return examples, skipped


def preference_pairs(suite: SuiteConfig, task: TaskConfig) -> tuple[list[Any], list[dict[str, str]]]:
    """(pairs, skipped) of a preference task: the :class:`evalsuite.metrics.preference.PreferencePair` of every
    preference record of the task's file, in any layout curate reads (LLaMA-Factory's, TRL's standard and
    conversational, implicit-prompt transcripts and Anthropic HH strings, curate's own preference export).

    Records of another kind (conversations, KTO records) are skipped with ``{where, reason}``, as are pairs
    whose two completions are the same, or one has nothing to score (no assistant turn with text or a tool
    call: an empty answer is never trained, so it is never scored). ``limit`` counts the pairs kept."""
    from chat.conversations import iter_records

    pairs: list[Any] = []
    bad: list[dict[str, str]] = []
    for where, record in iter_records(suite.resolve(task.path), bad, task.shape):
        pair, reason = _pair_of(record, where)
        if pair is None:
            bad.append({"where": where, "reason": reason or ""})
            continue
        pairs.append(pair)
        if task.limit and len(pairs) >= task.limit:
            break
    return pairs, [{"where": b["where"], "reason": b["reason"]} for b in bad]


def _pair_of(record: Any, where: str) -> tuple[Any, str | None]:
    """(the :class:`PreferencePair` of a converted record, None), or (None, why it is none)."""
    from chat.conversations import message_dicts, rejected_dicts
    from evalsuite.metrics.preference import PreferencePair

    kind = record.extra.kind if record.extra is not None else "sft"
    if kind != "preference":
        return None, f"not a preference pair (a {'conversation' if kind == 'sft' else kind + ' record'})"
    k = record.extra.prompt_turns
    messages = message_dicts(record)
    pair = PreferencePair(messages[:k], messages[k:], rejected_dicts(record)[k:], _tool_list(record.extra.tools), where)
    if pair.chosen == pair.rejected:
        return None, "chosen and rejected are the same completion"
    for side, completion in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        if not any(m["role"] == "assistant" and (str(m.get("content") or "").strip() or m.get("tool_calls")) for m in completion):
            return None, f"the {side} completion has no assistant text or tool call to score"
    return pair, None


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
