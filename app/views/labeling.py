"""Labeling: a queue (random, by filter, or the uncertain cases nearest a filter's threshold); accept,
reject, edit and tag with keyboard shortcuts (a accept, x reject, s skip); every label written to the workspace the moment it
is made; annotators' agreement (Cohen's kappa) and an export of the labelled records."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from app import queries as q
from app.render import chat, messages_of, pick_curate_run


def render(path: str) -> None:
    st.title("Labeling")
    with q.open_workspace(path, read_only=True) as ws:
        run = pick_curate_run(ws, key="label_run")
        if run is None:
            return
        scores = q.score_names(ws, run)
    annotator = st.text_input("annotator", key="annotator", placeholder="your name")
    c = st.columns(4)
    mode = c[0].selectbox("queue", ["random", "filter", "uncertain"], key="label_mode")
    status = c[1].selectbox("status", ["all", "kept", "rejected"], key="label_status")
    search = c[2].text_input("search", key="label_search")
    score = threshold = None
    if mode == "uncertain":
        score = c[3].selectbox("score", scores, key="label_score")
        threshold = st.number_input("threshold (records closest to it first)", value=0.0, key="label_threshold")
    if not annotator.strip():
        st.info("enter your name to start labeling")
        _summary(path)
        return
    skipped = st.session_state.setdefault("skipped", set())
    with q.open_workspace(path, read_only=True) as ws:
        queue = q.label_queue(ws, run, annotator, mode=mode, status=None if status == "all" else status, search=search or None,
                              score=score, threshold=threshold, limit=len(skipped) + 1)
    queue = queue.filter(~queue["id"].is_in(list(skipped)))
    if queue.is_empty():
        st.success("nothing left to label in this queue")
        _summary(path)
        return
    _recent(path, annotator)
    rec = queue.row(0, named=True)
    st.subheader(f"record {rec['uid']} · {rec['status']}" + (f" ({rec['stage']}: {rec['reason']})" if rec["reason"] else ""))
    st.text(f"{rec['source_file']}:{rec['source_line']} · {rec['shape']}")
    chat(rec["messages"])
    messages = messages_of(rec["messages"])
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    edited = st.text_area("edit the last assistant turn (accept saves the edit)", value=messages[last]["content"] if last is not None else "",
                          key=f"edit_{rec['id']}", disabled=last is None)
    tags = st.text_input("tags (comma-separated)", key=f"tags_{rec['id']}")
    note = st.text_input("note", key=f"note_{rec['id']}")
    b = st.columns(3)
    verdict = None
    if b[0].button("Accept", shortcut="a", key="accept", type="primary"):
        verdict = "accept"
    if b[1].button("Reject", shortcut="x", key="reject"):
        verdict = "reject"
    if b[2].button("Skip", shortcut="s", key="skip"):
        skipped.add(rec["id"])
        st.rerun()
    if verdict:
        edit = None
        if verdict == "accept" and last is not None and edited != messages[last]["content"]:
            edit = [dict(m) for m in messages]
            edit[last]["content"] = edited
        with q.open_workspace(path) as ws:
            ws.add_label(rec["id"], annotator, verdict, run_id=run, uid=rec["uid"], edit=edit,
                         tags=[t.strip() for t in tags.split(",") if t.strip()], note=note or None)
        st.toast(f"{verdict}: record {rec['uid']}")
        st.rerun()
    _summary(path)


def _recent(path: str, annotator: str, n: int = 5) -> None:
    """This annotator's last labels (as stored in the workspace), newest first."""
    with q.open_workspace(path, read_only=True) as ws:
        recent = q.recent_labels(ws, annotator, n)
    if recent.height:
        with st.expander(f"your last {recent.height} labels", expanded=True):
            st.table(recent.to_pandas())


def _summary(path: str) -> None:
    with q.open_workspace(path, read_only=True) as ws:
        n, people = q.label_counts(ws)
        st.divider()
        st.caption(f"{n} current labels by {people} annotators")
        agreement = q.agreement(ws)
    if agreement.height:
        st.subheader("agreement on overlapping records")
        st.dataframe(agreement, hide_index=True)
    if n:
        # written when the button is pressed, not on every render
        st.download_button(f"export {n} labels (JSONL)", lambda: _export(path), file_name="labels.jsonl", key="export")


def _export(path: str) -> bytes:
    out = Path(tempfile.gettempdir()) / f"labels-{Path(path).stem}.jsonl"
    with q.open_workspace(path, read_only=True) as ws:
        q.export_labels(ws, out)
    return out.read_bytes()
