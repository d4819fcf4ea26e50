"""What the pages share. Record text, file names and workspace paths are hostile input: they are shown
either as plain text (``st.text`` of :func:`escape_controls`: no markdown, no HTML; tool-call arguments and
JSON tool results in ``st.code``, which shows its body as text too, and tool parameters in ``st.json`` of
:func:`plain_json`) or, where an element renders markdown (captions, headers, info boxes, toasts, widget
labels, expander labels, ``st.table`` cells), through :func:`literal`, which escapes every markdown-active
character; the word diff goes through ``st.html`` with every character escaped. So ``<script>``, raw
HTML, a markdown image pointing at a remote host, a ``[x](javascript:...)`` link and Streamlit's
``:red[...]`` directives all stay inert text, nothing is fetched, and bidi controls (U+202E and the like),
which would reorder what is displayed, are shown as visible escapes. Also: a record drawn as its kind reads
(:func:`record`: a chat with its tool calls, a preference pair side by side, a KTO completion under its
label), the curate-run picker and a per-run cache for the scans of every record of a finished run."""

from __future__ import annotations

import difflib
import html
import json
import re
from collections.abc import Mapping
from typing import Any

import polars as pl
import streamlit as st

from app import queries


# C0 and C1 controls but newline and tab, DEL, the bidi controls (embeddings, overrides, isolates, marks:
# U+202E shows "evil.exe" as "exe.live"), and lone surrogates (from JSON escapes; they cannot be encoded)
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# every ASCII punctuation character: CommonMark lets each be backslash-escaped, and together they are all
# the characters that start markdown syntax (links, emphasis, code, HTML, tables, headings, lists) and
# Streamlit's own (``:red[...]`` colours and badges, ``:material/...:`` icons, ``$`` math)
_MARKDOWN_ACTIVE = re.compile(r"([!-/:-@\[-`{-~])")
# GFM's autolinks (www.x.y, http://x.y, a@b.co) are found in the text after escapes are decoded, so no
# backslash stops them; a word joiner (U+2060: invisible, no line break) before the "." of "www.", the
# "://" and the "@" does
_AUTOLINK = re.compile(r"(?i)(?<=www)(?=\.)|(?=://)|(?=@)")
WORD_JOINER = "\u2060"


def escape_controls(text: Any) -> str:
    """``text`` (``str()`` of it; ``""`` for None) with every control character but newline and tab shown
    as a visible escape: C0/C1 controls, DEL, the bidi controls U+061C, U+200E, U+200F, U+202A-U+202E,
    U+2066-U+2069, and lone surrogates become ``\\u202e`` and the like (six characters). For ``st.text``,
    which shows text as it is, and as the first step of :func:`literal`."""
    if text is None:
        return ""
    return _CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", str(text))


def literal(text: Any) -> str:
    """``text`` for an element that renders markdown (``st.caption``, ``st.subheader``, ``st.info``,
    ``st.success``, ``st.toast``, widget labels, ``st.table`` cells): :func:`escape_controls`, then a
    backslash before every ASCII punctuation character, so the element shows the characters themselves
    and nothing of markdown, HTML or Streamlit's directives takes effect (no link, no colour, no emoji, no
    math, no heading). The one invisible change: a word joiner (U+2060) in ``www.``, ``://`` and before
    ``@``, which would otherwise become links. Meant for one line (a file name, a path, a message);
    multi-line text goes to ``st.text(escape_controls(text))``."""
    return _MARKDOWN_ACTIVE.sub(r"\\\1", _AUTOLINK.sub(WORD_JOINER, escape_controls(text)))


def plain_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with :func:`escape_controls` applied to every text column, for ``st.dataframe`` (which
    draws cells as plain text, but a bidi control would still reorder what a cell shows)."""
    text = [c for c, t in frame.schema.items() if t == pl.Utf8]
    return frame.with_columns(pl.col(c).map_elements(escape_controls, return_dtype=pl.Utf8) for c in text) if text else frame


def plain_json(value: Any) -> Any:
    """``value`` (parsed JSON) with :func:`escape_controls` applied to every string in it, keys included,
    for ``st.json``."""
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, dict):
        return {escape_controls(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return value


def table(frame: Any) -> None:
    """``st.table`` of ``frame`` (polars or pandas) with every header and text cell through
    :func:`literal`: ``st.table`` renders its cells as markdown."""
    df = frame.to_pandas() if isinstance(frame, pl.DataFrame) else frame.copy()
    df.columns = [literal(c) for c in df.columns]
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: literal(v) if isinstance(v, str) else v)
    st.table(df)


def _call_of(call: Any) -> dict[str, Any]:
    """One tool call in the canonical shape: {id, type, function: {name, arguments}}, arguments as text."""
    call = call if isinstance(call, dict) else {}
    fn = call.get("function") if isinstance(call.get("function"), dict) else {}
    args = fn.get("arguments")
    # the canonical arguments are JSON text (OpenAI's API); an object from elsewhere is shown as its JSON
    args = args if args is None or isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"id": call.get("id"), "type": call.get("type") or "function", "function": {"name": fn.get("name"), "arguments": args}}


def messages_of(value: Any) -> list[dict[str, Any]]:
    """A record's turns from a workspace column (a list of structs, or JSON text), each in the canonical
    message shape: role (``?`` when missing), content (``""`` for none), tool_calls (a list of {id, type,
    function: {name, arguments}}, or None), tool_call_id and name (None where absent). Turns written before
    tool calls existed (role and content alone) read the same, with None for the rest; so a list built from
    these (an edit) keeps every tool call and tool reference of the record."""
    if isinstance(value, str):
        value = json.loads(value)
    out = []
    for m in value or []:
        calls = m.get("tool_calls")
        out.append({"role": m.get("role") or "?", "content": m.get("content") or "",
                    "tool_calls": [_call_of(c) for c in calls] if calls else None,
                    "tool_call_id": m.get("tool_call_id"), "name": m.get("name")})
    return out


def pretty_json(text: Any) -> tuple[str, bool]:
    """(``text`` indented as JSON when it parses as a JSON object or array, else ``text`` as it is; whether
    it parsed). Tool-call arguments and tool results are JSON text by convention, not by guarantee."""
    text = "" if text is None else str(text)
    try:
        value = json.loads(text)
    except ValueError:
        return text, False
    if not isinstance(value, (dict, list)):
        return text, False
    return json.dumps(value, indent=2, ensure_ascii=False), True


def _code(text: Any) -> None:
    """``text`` in a code block, pretty-printed JSON when it parses: ``st.code`` shows its body as text
    (highlighted, never markdown or HTML); controls escaped first."""
    body, parsed = pretty_json(text)
    st.code(escape_controls(body), language="json" if parsed else None, wrap_lines=True)


# chat bubbles by role: Streamlit's own user and assistant avatars, an icon for the others
_AVATARS = {"user": "user", "assistant": "assistant", "system": ":material/settings:", "tool": ":material/build:"}


def chat(messages: Any) -> None:
    """A chat-style view, one bubble per turn, everything taken from the record shown inert: the role, the
    content as plain text, each tool call of an assistant turn in a box of its own (the function's name,
    the call id, the arguments pretty-printed when they parse as JSON, else the raw text), and on a tool
    turn the tool and the call it answers, its result pretty-printed when it is JSON."""
    for m in messages_of(messages):
        role = m["role"]
        with st.chat_message(role if role in _AVATARS else "user", avatar=_AVATARS.get(role, "user")):
            if role == "tool":
                answers = " · ".join(x for x in (m["name"], m["tool_call_id"] and f"answers {m['tool_call_id']}") if x)
                st.caption(literal("tool result" + (f" · {answers}" if answers else "")))
                if pretty_json(m["content"])[1]:
                    _code(m["content"])
                else:
                    st.text(escape_controls(m["content"]))
                continue
            st.caption(literal(role))
            if m["content"] or not m["tool_calls"]:
                st.text(escape_controls(m["content"]))
            for call in m["tool_calls"] or []:
                with st.container(border=True):
                    st.markdown(f":material/build: calls **{literal(call['function']['name'] or '?')}**"
                                + (f" · id {literal(call['id'])}" if call["id"] else ""))
                    _code(call["function"]["arguments"])


def tool_definitions(tools: Any) -> None:
    """The tools a record offers the model (``tools``: OpenAI's JSON list of {type, function: {name,
    description, parameters}}), in a collapsed expander naming them: per function its name, description and
    parameters (a JSON tree). Nothing for a record without tools; text that is not such a list is shown as
    it is."""
    if not tools:
        return
    try:
        defs = json.loads(tools) if isinstance(tools, str) else tools
    except ValueError:
        defs = None
    if not isinstance(defs, list):
        with st.expander("tools offered (not a JSON list)"):
            st.text(escape_controls(tools))
        return
    fns = [d.get("function", d) if isinstance(d, dict) and isinstance(d.get("function", d), dict) else {"description": d} for d in defs]
    with st.expander(f"tools offered ({len(fns)}): " + literal(", ".join(str(f.get("name") or "?") for f in fns))):
        for fn in fns:
            st.markdown(f"**{literal(fn.get('name') or '?')}**")
            if fn.get("description") is not None:
                st.text(escape_controls(fn["description"]))
            if fn.get("parameters") is not None:
                st.json(plain_json(fn["parameters"]), expanded=True)


def prompt_length(turns: list[dict[str, Any]], prompt_turns: Any) -> int:
    """How many leading ``turns`` are the prompt: ``prompt_turns`` as stored, or where none is (or it does
    not fit the turns), all but the trailing assistant and tool turns."""
    if isinstance(prompt_turns, int) and 0 <= prompt_turns <= len(turns):
        return prompt_turns
    n = len(turns)
    while n and turns[n - 1]["role"] in ("assistant", "tool"):
        n -= 1
    return n


def record(rec: Mapping[str, Any]) -> None:
    """A record as its kind reads, its tool definitions (if any) in an expander first: a conversation
    (``sft``) as a chat; a preference pair as its prompt once, then the chosen and the rejected completion
    side by side in two labeled columns; a KTO record as its prompt, then its completion under its label
    (desirable, undesirable). ``rec``: a row of the record queries (messages, kind, tools, rejected,
    prompt_turns, label); a row without kind is a conversation."""
    kind = rec.get("kind") or "sft"
    tool_definitions(rec.get("tools"))
    turns = messages_of(rec.get("messages"))
    if kind not in ("preference", "kto"):
        chat(turns)
        return
    n = prompt_length(turns, rec.get("prompt_turns"))
    st.badge("prompt", icon=":material/chat:", color="gray")
    chat(turns[:n])
    if kind == "preference":
        chosen, rejected = st.columns(2)
        with chosen:
            st.badge("chosen completion", icon=":material/thumb_up:", color="green")
            chat(turns[n:])
        with rejected:
            st.badge("rejected completion", icon=":material/thumb_down:", color="red")
            chat(rec.get("rejected"))
        return
    label = rec.get("label")
    if label is None:
        st.badge("unlabeled completion", icon=":material/help:", color="gray")
    elif label:
        st.badge("desirable completion", icon=":material/thumb_up:", color="green")
    else:
        st.badge("undesirable completion", icon=":material/thumb_down:", color="red")
    chat(turns[n:])


def word_diff_html(a: str, b: str) -> str:
    """``b`` against ``a`` word by word: deletions struck through, insertions underlined; all text escaped
    (controls as visible escapes, then HTML)."""
    ta, tb = re.findall(r"\S+|\s+", escape_controls(a)), re.findall(r"\S+|\s+", escape_controls(b))
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ta, b=tb, autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            out.append(f"<del style='background:#fdd'>{html.escape(''.join(ta[i1:i2]))}</del>")
        if op in ("insert", "replace"):
            out.append(f"<ins style='background:#dfd'>{html.escape(''.join(tb[j1:j2]))}</ins>")
        if op == "equal":
            out.append(html.escape("".join(ta[i1:i2])))
    return f"<div style='white-space:pre-wrap;font-family:monospace'>{''.join(out)}</div>"


def diff(a: str, b: str) -> None:
    """Render the word-level diff of ``a`` against ``b`` (deletions and insertions marked) into the page."""
    st.html(word_diff_html(a, b))


def pick_curate_run(ws: Any, key: str) -> str | None:
    """A select box of the workspace's curate runs (newest first); None, with a note, when there is none."""
    ids = queries.runs(ws, "curate")["run_id"].to_list()
    if not ids:
        st.info("no curate run in this workspace: `curate run CONFIG` registers one")
        return None
    return st.selectbox("run", ids, key=key, format_func=escape_controls)


@st.cache_data(max_entries=128, show_spinner=False)
def _finished_run_query(path: str, run_id: str, finished: str, query: str) -> Any:
    with queries.open_workspace(path, read_only=True) as ws:
        return getattr(queries, query)(ws, run_id)


def run_query(ws: Any, path: str, run_id: str, query: str) -> Any:
    """``app.queries.<query>(ws, run_id)``, computed once per finished run: its records never change after
    it finished (``finished`` is part of the key, since a rerun with ``--force`` keeps the run id). For
    the scans of every record (the length histogram, the filters' values) on a million-record run."""
    row = ws.run(run_id)
    if row and row.get("finished") is not None:
        return _finished_run_query(path, run_id, str(row["finished"]), query)
    return getattr(queries, query)(ws, run_id)
