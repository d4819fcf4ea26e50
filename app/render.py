"""What the pages share. Record text is hostile input: it goes through ``st.text`` (no markdown, no HTML) or,
for the word diff, through ``st.html`` with every character escaped, so ``<script>``, raw HTML and a markdown
image pointing at a remote host all stay inert text and nothing is fetched. Also: the curate-run picker and
a per-run cache for the scans of every record of a finished run."""

from __future__ import annotations

import difflib
import html
import json
import re
from typing import Any

import streamlit as st

from app import queries


def messages_of(value: Any) -> list[dict[str, str]]:
    """A record's messages from a workspace column (a list of structs, or JSON text)."""
    if isinstance(value, str):
        value = json.loads(value)
    return [{"role": m.get("role", "?"), "content": m.get("content") or ""} for m in value or []]


def chat(messages: Any) -> None:
    """A chat-style view: one bubble per turn, content as plain text."""
    for m in messages_of(messages):
        role = m["role"] if m["role"] in ("user", "assistant") else "ai" if m["role"] == "system" else "user"
        with st.chat_message(role, avatar=None):
            st.caption(m["role"])
            st.text(m["content"])


def word_diff_html(a: str, b: str) -> str:
    """``b`` against ``a`` word by word: deletions struck through, insertions underlined; all text escaped."""
    ta, tb = re.findall(r"\S+|\s+", a or ""), re.findall(r"\S+|\s+", b or "")
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
    st.html(word_diff_html(a, b))


def pick_curate_run(ws: Any, key: str) -> str | None:
    """A select box of the workspace's curate runs (newest first); None, with a note, when there is none."""
    ids = queries.runs(ws, "curate")["run_id"].to_list()
    if not ids:
        st.info("no curate run in this workspace: `curate run CONFIG` registers one")
        return None
    return st.selectbox("run", ids, key=key)


@st.cache_data(max_entries=128, show_spinner=False)
def _finished_run_query(path: str, run_id: str, finished: str, query: str) -> Any:
    with queries.open_workspace(path, read_only=True) as ws:
        return getattr(queries, query)(ws, run_id)


def run_query(ws: Any, path: str, run_id: str, query: str) -> Any:
    """``app.queries.<query>(ws, run_id)``, computed once per finished run: its records never change after
    it finished (``finished`` is part of the key, since a rerun with ``--force`` keeps the run id). For
    the scans of every record (the length histogram, the filters' values) on a million-record run."""
    row = ws.sql("SELECT finished FROM runs WHERE run_id = ?", [run_id])
    if row.height and row["finished"][0] is not None:
        return _finished_run_query(path, run_id, str(row["finished"][0]), query)
    return getattr(queries, query)(ws, run_id)
