"""What the pages share. Record text, file names and workspace paths are hostile input: they are shown
either as plain text (``st.text`` of :func:`escape_controls`: no markdown, no HTML) or, where an element
renders markdown (captions, headers, info boxes, toasts, widget labels, ``st.table`` cells), through
:func:`literal`, which escapes every markdown-active character; the word diff goes through ``st.html`` with
every character escaped. So ``<script>``, raw HTML, a markdown image pointing at a remote host, a
``[x](javascript:...)`` link and Streamlit's ``:red[...]`` directives all stay inert text, nothing is
fetched, and bidi controls (U+202E and the like), which would reorder what is displayed, are shown as
visible escapes. Also: the curate-run picker and a per-run cache for the scans of every record of a
finished run."""

from __future__ import annotations

import difflib
import html
import json
import re
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


def messages_of(value: Any) -> list[dict[str, str]]:
    """A record's messages from a workspace column (a list of structs, or JSON text)."""
    if isinstance(value, str):
        value = json.loads(value)
    return [{"role": m.get("role", "?"), "content": m.get("content") or ""} for m in value or []]


def chat(messages: Any) -> None:
    """A chat-style view: one bubble per turn, its role and content as plain text, controls escaped."""
    for m in messages_of(messages):
        role = m["role"] if m["role"] in ("user", "assistant") else "ai" if m["role"] == "system" else "user"
        with st.chat_message(role, avatar=None):
            st.caption(literal(m["role"]))
            st.text(escape_controls(m["content"]))


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
