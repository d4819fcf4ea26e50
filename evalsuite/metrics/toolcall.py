"""Tool-call validity (scored on generated outputs, no model needed): does each output call a tool the example
offers, with arguments its parameter schema accepts, and the tool the reference calls?

An output is read as tool call(s) in the textual encodings models emit (:func:`parse_tool_calls`):

- Hermes / Qwen: one ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block per call, text
  around them allowed (a last block cut off before its closing tag is read to the end of the output);
- a bare JSON object ``{"name": ..., "arguments": {...}}`` (``parameters`` is read as ``arguments``, as
  Llama 3.1 writes it), or a JSON list of them (parallel calls), as the whole output (a Markdown code fence
  around it is allowed);
- OpenAI's shape, as a serving endpoint returns it: ``{"tool_calls": [{"type": "function", "function":
  {"name": ..., "arguments": "<JSON text>"}}]}`` (what ``evalsuite run --server`` stores as the output when the
  reply has ``tool_calls``), or such a list bare.

``arguments`` may be an object or the JSON text of one. Anything else (prose, a JSON object of another shape,
JSON with text after it) is no call.

Result keys, each a 0/1 outcome per example (binary: compare adds McNemar's test), higher is better, and
each a share over the examples that offer tools (an example without tools has no score: NaN, left out):

- ``tool_call_wellformed``: the output parses into one or more calls, each with a name and an object of
  arguments;
- ``tool_call_known_tool``: well-formed, and every called tool is one of the example's tools;
- ``tool_call_args_valid``: known tools, and every call's arguments validate against its tool's
  ``parameters`` JSON schema (``jsonschema``, the schema's own draft; a tool without ``parameters`` takes any
  object). A tool whose schema is itself invalid leaves the example unscored on this key (counted in
  ``details["bad_schema"]``);
- ``tool_call_right_tool``: well-formed, and the set of tools called is the set the reference calls (how many
  calls, and their arguments, are not compared). Scored only on examples whose reference parses as a call
  (a ``reference_turn: tool_call`` task's references always do); NaN elsewhere.

Each example's annotation ``tool_call`` says what was read (``format``, ``calls``) and the first ``problem``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evalsuite.metrics.base import MetricResult, Score, register

TOOL_CALL_KEYS = ("tool_call_wellformed", "tool_call_known_tool", "tool_call_args_valid", "tool_call_right_tool")
_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_FENCE = re.compile(r"\A```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```\Z", re.DOTALL)


@dataclass
class ToolCalls:
    """What :func:`parse_tool_calls` read from one text: ``calls`` as ``{"name", "arguments"}`` (arguments a
    dict), the ``format`` it was written in (``hermes``, ``json``, ``openai``; None when no call was read), and
    ``problem`` (None when every call is well-formed)."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    format: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the text holds at least one call and every call is well-formed."""
        return bool(self.calls) and self.problem is None


def _call(item: Any) -> tuple[dict[str, Any] | None, str | None]:
    """One call ``{"name", "arguments"}`` from a parsed JSON item (a bare call or OpenAI's shape), or (None, why)."""
    if not isinstance(item, dict):
        return None, f"a call must be a JSON object, got {type(item).__name__}"
    fn = item["function"] if isinstance(item.get("function"), dict) else item
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, "no tool name"
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):  # OpenAI's arguments are JSON text
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return None, f"the arguments of {name} are not valid JSON ({exc.msg})"
    if not isinstance(args, dict):
        return None, f"the arguments of {name} must be a JSON object, got {type(args).__name__}"
    return {"name": name, "arguments": args}, None


def _whole_json(text: str) -> tuple[Any, str | None]:
    """``text`` parsed as one JSON value with nothing after it, or (None, why not)."""
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at character {exc.pos})"
    if text[end:].strip():
        return None, f"text after the JSON at character {end}"
    return value, None


def _read_calls(out: ToolCalls, items: list[Any], where: str) -> None:
    """Append each item's call to ``out.calls``; the first broken one sets ``out.problem``."""
    for k, item in enumerate(items, 1):
        call, problem = _call(item)
        if call is None:
            label = " ".join(x for x in (where, f"call {k}" if len(items) > 1 else "") if x)
            out.problem = out.problem or (f"{label}: {problem}" if label else problem)
        else:
            out.calls.append(call)


def parse_tool_calls(text: str | None) -> ToolCalls:
    """The tool calls ``text`` holds, in any encoding of the module docstring. A text that holds no call at all
    has ``problem`` "no tool call"; one that looks like a call but is broken says what broke (the first
    problem; the well-formed calls beside it are kept)."""
    text = (text or "").strip()
    blocks = _HERMES.findall(text)
    if blocks:
        out = ToolCalls(format="hermes")
        for k, block in enumerate(blocks, 1):
            value, problem = _whole_json(block.strip())
            if problem:
                out.problem = out.problem or f"<tool_call> {k}: {problem}"
            else:
                _read_calls(out, value if isinstance(value, list) else [value], f"<tool_call> {k}")
        return out
    fenced = _FENCE.match(text)
    body = fenced.group(1).strip() if fenced else text
    if not body.startswith(("{", "[")):
        return ToolCalls(problem="no tool call")
    value, problem = _whole_json(body)
    if problem:
        return ToolCalls(problem=problem)
    fmt = "json"
    if isinstance(value, dict) and "tool_calls" in value:
        value, fmt = value["tool_calls"], "openai"
        if not isinstance(value, list):
            return ToolCalls(format=fmt, problem="tool_calls must be a list")
    items = value if isinstance(value, list) else [value]
    if not items:
        return ToolCalls(format=fmt, problem="an empty list of calls")
    if any(isinstance(x, dict) and isinstance(x.get("function"), dict) for x in items):
        fmt = "openai"
    out = ToolCalls(format=fmt)
    _read_calls(out, items, "")
    return out


def tool_definitions(tools: Any) -> dict[str, dict[str, Any]]:
    """``{name: function definition}`` of tool definitions in OpenAI's shape (``[{"type": "function",
    "function": {name, description, parameters}}]``), bare function definitions, or the JSON text of either;
    {} for None. ValueError for anything else."""
    if tools is None:
        return {}
    if isinstance(tools, str):
        tools = json.loads(tools)
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise ValueError(f"tools must be a list of tool definitions, got {type(tools).__name__}")
    out = {}
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"a tool definition needs a name: {str(tool)[:80]}")
        out[fn["name"]] = fn
    return out


def _validator(schema: Any) -> Any:
    """A jsonschema validator of the schema's own draft (2020-12 when it names none); SchemaError when invalid."""
    from jsonschema.validators import validator_for

    cls = validator_for(schema, default=validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"}))
    cls.check_schema(schema)
    return cls(schema)


def _argument_problem(call: dict[str, Any], definition: dict[str, Any], validators: dict[str, Any]) -> str | None:
    """Why ``call``'s arguments do not fit ``definition``'s parameters (None when they do); SchemaError when the
    schema itself is invalid."""
    name = call["name"]
    if name not in validators:
        validators[name] = _validator(definition.get("parameters") or {"type": "object"})
    error = next(iter(sorted(validators[name].iter_errors(call["arguments"]), key=lambda e: list(e.path))), None)
    if error is None:
        return None
    at = "/".join(str(p) for p in error.path)
    return f"arguments of {name}{' at ' + at if at else ''}: {error.message}"


@register("tool_call_validity", keys=[Score(k, binary=True) for k in TOOL_CALL_KEYS], needs_tools=True)
def tool_call_validity(outputs: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *,
                       tools: Sequence[Any]) -> dict[str, MetricResult]:
    """The four tool-call shares of the module docstring over ``outputs``. ``tools[i]``: the tool definitions
    example ``i`` offered (OpenAI's shape, bare definitions or their JSON text; None or [] when it offered
    none, which leaves it unscored); ``references[i]``: its reference (the first of a list), read with
    :func:`parse_tool_calls`: a call when it parses as one. ValueError when the lengths differ or a tools
    entry is not tool definitions."""
    from jsonschema.exceptions import SchemaError

    if not len(outputs) == len(references) == len(tools):
        raise ValueError(f"{len(outputs)} outputs, {len(references)} references, {len(tools)} tool lists")
    columns: dict[str, list[float]] = {k: [] for k in TOOL_CALL_KEYS}
    notes: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    for output, reference, offered in zip(outputs, references, tools):
        ref_text = reference if isinstance(reference, str) or reference is None else (reference[0] if reference else None)
        defs = tool_definitions(offered)
        if not defs:
            counts["no_tools"] += 1
            for k in TOOL_CALL_KEYS:
                columns[k].append(math.nan)
            notes.append({})
            continue
        parsed = parse_tool_calls(output)
        ref = parse_tool_calls(ref_text)
        problem = parsed.problem
        wellformed = parsed.ok
        unknown = [c["name"] for c in parsed.calls if c["name"] not in defs]
        known = wellformed and not unknown
        if wellformed and unknown:
            problem = f"unknown tool {unknown[0]!r} (tools: {', '.join(defs)})"
        args_valid: float = 0.0
        if known:
            validators: dict[str, Any] = {}
            try:
                problems = [p for c in parsed.calls if (p := _argument_problem(c, defs[c["name"]], validators))]
                args_valid = float(not problems)
                problem = problems[0] if problems else None
            except SchemaError as exc:
                args_valid, problem = math.nan, f"a tool's parameters are not a valid JSON schema: {exc.message}"
                counts["bad_schema"] += 1
        right: float = math.nan
        if ref.ok:
            counts["with_reference"] += 1
            called, expected = {c["name"] for c in parsed.calls}, {c["name"] for c in ref.calls}
            right = float(wellformed and called == expected)
            if wellformed and called != expected and problem is None:
                problem = f"called {', '.join(sorted(called))}; the reference calls {', '.join(sorted(expected))}"
        counts[f"format_{parsed.format}"] += parsed.format is not None
        for k, v in zip(TOOL_CALL_KEYS, (float(wellformed), float(known), args_valid, right)):
            columns[k].append(v)
        notes.append({"tool_call": {"format": parsed.format, "calls": parsed.calls, "problem": problem}})
    scored = len(outputs) - counts["no_tools"]
    details = {"n": len(outputs), "scored": scored, **{k: v for k, v in sorted(counts.items()) if v}}
    out = {}
    for key, values in columns.items():
        kept = [v for v in values if not math.isnan(v)]
        value = math.fsum(kept) / len(kept) if kept else math.nan  # NaN rows left out, as mean_of_scores leaves them
        out[key] = MetricResult(key, value, values, {**details, "counted": len(kept)},
                                annotations=notes if key == TOOL_CALL_KEYS[0] else None)
    return out
