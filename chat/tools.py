"""Tool calls through a tokenizer's chat template, whether or not the template knows about tools.

A conversation with tool calls is stored in OpenAI's shape (assistant ``tool_calls`` with the arguments as JSON
text, ``tool`` turns with ``tool_call_id``, and the tool definitions apart). Chat templates that support tools
(Qwen2.5, Llama 3.1, Mistral, Hermes, SmolLM3 ...) take that shape through ``apply_chat_template(messages,
tools=...)``, with the arguments as a dict (the transformers convention). Many templates do not: SmolLM2's
renders only ``role`` and ``content``, so the calls and the tool list would vanish from the training text and
the model would learn to answer tool results it never saw requested.

:func:`template_messages` probes the template once per tokenizer and returns what to pass it:

- a template that renders calls and tools: the messages with the arguments parsed into dicts, and the tools;
- any other: the Hermes / Qwen2.5 text convention, which models and parsers (vLLM's ``hermes`` tool parser,
  the eval's tool-call validity metric) read back: the tool list in the system prompt inside ``<tools>``, each
  call as ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` in the assistant's text, each result inside
  ``<tool_response>`` in a ``tool`` turn (a ``user`` turn when the template does not render a ``tool`` role).
"""

from __future__ import annotations

import json
from typing import Any

HERMES_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within <tools></tools> XML "
    "tags. You may call one or more functions to assist with the user query. Don't make assumptions about what "
    "values to plug into functions. Here are the available tools: <tools>\n{tools}\n</tools>\nFor each function "
    'call return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n'
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-dict>}}\n</tool_call>'
)

_PROBE_ARGS = '{"probe_argument": "probe value 7"}'
_PROBE_TOOLS = [{"type": "function", "function": {"name": "probe_tool_name", "description": "probe",
                                                  "parameters": {"type": "object", "properties": {"probe_argument": {"type": "string"}}}}}]


def _arguments(text: Any) -> Any:
    """A call's arguments as a dict when its JSON text parses to one, else the text as it is."""
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, dict) else text
    return text


def template_support(tokenizer: Any) -> dict[str, bool]:
    """What the tokenizer's chat template renders: ``calls`` (an assistant turn's tool calls, name and
    arguments), ``tools`` (the definitions passed as ``tools=``) and ``tool_role`` (a ``tool`` turn's content).
    Probed by rendering a small conversation; cached on the tokenizer object."""
    cached = getattr(tokenizer, "_workbench_tool_support", None)
    if cached is not None:
        return cached
    probe = [
        {"role": "user", "content": "probe question"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_probe", "type": "function", "function": {"name": "probe_call_name", "arguments": _arguments(_PROBE_ARGS)}}]},
        {"role": "tool", "tool_call_id": "call_probe", "name": "probe_call_name", "content": "probe result 9"},
        {"role": "assistant", "content": "probe answer"},
    ]
    try:
        text = tokenizer.apply_chat_template(probe, tools=_PROBE_TOOLS, tokenize=False)
    except Exception:  # a template that raises on tool turns or tools= supports neither
        text = ""
    try:
        plain = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "tool", "content": "probe result 9"}, {"role": "assistant", "content": "a"}],
            tokenize=False)
    except Exception:
        plain = ""
    support = {
        "calls": "probe_call_name" in text and "probe value 7" in text,
        "tools": "probe_tool_name" in text,
        "tool_role": "probe result 9" in (text or plain),
    }
    try:
        tokenizer._workbench_tool_support = support
    except AttributeError:  # a tokenizer that takes no attributes: probe again next time
        pass
    return support


def template_messages(tokenizer: Any, messages: list[dict[str, Any]], tools: str | list | None = None) -> tuple[list[dict[str, Any]], list | None]:
    """(messages, tools) to pass to ``tokenizer.apply_chat_template`` for a conversation in OpenAI's shape with
    ``tools`` (JSON text or a list; None when none): native when the template renders calls and tools, the
    Hermes text convention otherwise (see the module doc). Messages without tool fields pass through as
    ``{"role", "content"}``."""
    tool_list = json.loads(tools) if isinstance(tools, str) else tools
    has_calls = any(m.get("tool_calls") for m in messages) or any(m.get("role") == "tool" for m in messages)
    if not has_calls and not tool_list:
        return [{"role": m["role"], "content": m.get("content") or ""} for m in messages], None
    support = template_support(tokenizer)
    if support["calls"] and (support["tools"] or not tool_list):
        out = []
        for m in messages:
            msg = {"role": m["role"], "content": m.get("content") or ""}
            if m.get("tool_calls"):
                msg["tool_calls"] = [
                    {"id": c.get("id"), "type": c.get("type", "function"),
                     "function": {"name": c["function"]["name"], "arguments": _arguments(c["function"].get("arguments"))}}
                    for c in m["tool_calls"]
                ]
            for key in ("tool_call_id", "name"):
                if m.get(key) is not None:
                    msg[key] = m[key]
            out.append(msg)
        return out, tool_list
    return hermes_messages(messages, tool_list, tool_role=support["tool_role"]), None


def hermes_messages(messages: list[dict[str, Any]], tools: list | None, tool_role: bool = True) -> list[dict[str, str]]:
    """The conversation as plain {role, content} turns in the Hermes convention: the tools listed in the system
    prompt (added before the first turn when there is none), calls as ``<tool_call>`` JSON in the assistant's text,
    results inside ``<tool_response>`` (in ``tool`` turns, or ``user`` turns when ``tool_role`` is false).
    Consecutive tool results become one turn, as Qwen2.5's template does."""
    out: list[dict[str, str]] = []
    if tools:
        listing = HERMES_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if messages and messages[0]["role"] == "system":
            out.append({"role": "system", "content": f"{messages[0].get('content') or ''}\n\n{listing}".strip()})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": listing})
    for m in messages:
        content = m.get("content") or ""
        if m.get("tool_calls"):
            calls = [
                "<tool_call>\n" + json.dumps({"name": c["function"]["name"], "arguments": _arguments(c["function"].get("arguments"))},
                                             ensure_ascii=False) + "\n</tool_call>"
                for c in m["tool_calls"]
            ]
            out.append({"role": "assistant", "content": "\n".join([content, *calls]) if content else "\n".join(calls)})
        elif m["role"] == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            role = "tool" if tool_role else "user"
            if out and out[-1]["role"] == role and out[-1]["content"].endswith("</tool_response>"):
                out[-1] = {"role": role, "content": out[-1]["content"] + "\n" + block}
            else:
                out.append({"role": role, "content": block})
        else:
            out.append({"role": m["role"], "content": content})
    return out
