"""Labeling: a queue per annotator (in their own random order, by filter, or the uncertain cases nearest a
filter's threshold); accept, reject, edit and tag with keyboard shortcuts (a accept, x reject, s skip).

A label is acknowledged on the page (``saved: accept · record 12``, and the annotator's recent labels read
back from the store) only once the workspace has it durably; a press that could not be stored says
``not saved: <why>; press again`` and keeps the record on screen. Each shown record carries one action key,
so a press sent twice, or pressed again after a failure that did reach the store, is stored once. The
annotator's name is normalized once and used for everything; their skips and queue settings are kept in
the workspace, so a reload, another tab or the other app server continues where they were. Below: the
annotators' agreement (Cohen's kappa) and an export of the labels as a JSONL download."""

from __future__ import annotations

import uuid
from typing import Any

import streamlit as st

from app import queries as q
from app.render import escape_controls, literal, messages_of, pick_curate_run, record, table
from curate.workspace import normalize_annotator

MODES = ["random", "filter", "uncertain"]
STATUSES = ["all", "kept", "rejected"]
SETTINGS_OF = "label_settings_of"  # session keys: whose settings the widgets hold, and what was last stored
SAVED_SETTINGS = "label_saved_settings"
ACK = "label_ack"  # (annotator, "saved: ..." line) of the last stored label


def render(path: str) -> None:
    """The labeling page for the workspace at ``path``: accept, reject or edit a curate run's records with
    keyboard shortcuts, one annotator at a time; labels are written to the workspace at once."""
    st.title("Labeling")
    with q.open_workspace(path) as ws:
        run = pick_curate_run(ws, key="label_run")
        if run is None:
            return
        scores = q.score_names(ws, run)
        kinds = ["all", *q.filter_options(ws, run)["kind"]]
    annotator = _annotator()
    if annotator is not None and st.session_state.get(SETTINGS_OF) != annotator:
        _restore_settings(path, annotator, scores, kinds)
    c = st.columns(5)
    mode = c[0].selectbox("queue", MODES, key="label_mode")
    status = c[1].selectbox("status", STATUSES, key="label_status")
    kind = c[4].selectbox("kind", kinds, key="label_kind", help="sft conversations, preference pairs or KTO records")
    search = c[2].text_input("search", key="label_search")
    score = threshold = None
    if mode == "uncertain":
        if not scores:
            st.warning("this run stored no filter score: the uncertain queue needs one")
            return
        score = c[3].selectbox("score", scores, key="label_score", format_func=escape_controls)
        threshold = st.number_input("threshold (records closest to it first)", value=0.0, key="label_threshold")
    if annotator is None:
        _summary(path)
        return
    _save_settings(path, annotator, mode, status, score, threshold, kind)
    with q.open_workspace(path) as ws:
        queue = q.label_queue(ws, run, annotator, mode=mode, status=None if status == "all" else status, search=search or None,
                              score=score, threshold=threshold, kind=None if kind == "all" else kind, limit=1)
        skipped = len(ws.skips(annotator, run))
    ack = st.session_state.get(ACK)
    if ack and ack[0] == annotator:
        st.success(ack[1])
    _recent(path, annotator)
    if skipped and st.button(f"clear my skips ({skipped})", key="clear_skips"):
        try:
            with q.open_workspace(path) as ws:
                ws.clear_skips(annotator, run)
        except Exception as e:  # noqa: BLE001
            st.error(f"not saved: {literal(e)}; press again")
        else:
            st.rerun()
    if queue.is_empty():
        st.success("nothing left to label in this queue" + (f" ({skipped} skipped)" if skipped else ""))
        _summary(path)
        return
    rec = queue.row(0, named=True)
    _record(path, run, annotator, rec)
    _summary(path)


def _annotator() -> str | None:
    """The name typed in the annotator box, normalized once (the spelling every label, skip, setting and
    queue lookup uses); None, with a note, while there is no usable name."""
    raw = st.text_input("annotator", key="annotator", placeholder="your name")
    if not raw.strip():
        st.info("enter your name to start labeling")
        return None
    try:
        name = normalize_annotator(raw)
    except ValueError as e:
        st.error(literal(e))
        return None
    if name != raw:
        st.caption(f"labeling as {literal(name)}")
    return name


def _restore_settings(path: str, annotator: str, scores: list[str], kinds: list[str]) -> None:
    """Put ``annotator``'s stored queue settings into the widgets (before they are drawn); an annotator with
    none keeps what the widgets show, which is then stored for them."""
    with q.open_workspace(path) as ws:
        saved = ws.annotator_settings(annotator)
    if saved.get("mode") in MODES:
        st.session_state["label_mode"] = saved["mode"]
    if saved.get("status") in STATUSES:
        st.session_state["label_status"] = saved["status"]
    if saved.get("kind") in kinds:
        st.session_state["label_kind"] = saved["kind"]
    if saved.get("score") in scores:
        st.session_state["label_score"] = saved["score"]
    if isinstance(saved.get("threshold"), (int, float)):
        st.session_state["label_threshold"] = float(saved["threshold"])
    st.session_state[SETTINGS_OF] = annotator
    st.session_state[SAVED_SETTINGS] = saved


def _save_settings(path: str, annotator: str, mode: str, status: str, score: str | None, threshold: float | None,
                   kind: str = "all") -> None:
    """Store the queue settings when they changed (score and threshold are kept from before while the
    queue is not ``uncertain``: they are not on screen then)."""
    saved = st.session_state.get(SAVED_SETTINGS) or {}
    settings = {**saved, "mode": mode, "status": status, "kind": kind}
    if mode == "uncertain":
        settings.update(score=score, threshold=threshold)
    if settings == saved:
        return
    try:
        with q.open_workspace(path) as ws:
            ws.save_annotator_settings(annotator, settings)
    except Exception as e:  # noqa: BLE001  (the queue works without them; the next change tries again)
        st.warning(f"queue settings not stored: {literal(e)}")
        return
    st.session_state[SAVED_SETTINGS] = settings


def _record(path: str, run: str, annotator: str, rec: dict[str, Any]) -> None:
    """The record at the head of the queue, its edit/tag/note boxes and the three buttons; a press is
    stored, then the page reruns to the next record with the acknowledgement."""
    rid = rec["id"]
    # one key per shown record, drawn once: a press sent twice, or pressed again after "not saved" when the
    # first attempt did reach the store, is stored once
    action = st.session_state.setdefault(f"label_action_{run}_{annotator}_{rid}", uuid.uuid4().hex)
    st.subheader(f"record {rec['uid']} · {literal(rec['status'])}"
                 + (f" ({literal(rec['stage'])}: {literal(rec['reason'])})" if rec["reason"] else ""), anchor=False)
    st.text(escape_controls(f"{rec['source_file']}:{rec['source_line']} · {rec['kind']} · {rec['shape']}"))
    record(rec)
    messages = messages_of(rec["messages"])
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    # a pair's messages end with its chosen completion: the edit is of that one
    which = "the chosen completion's last assistant turn" if rec["kind"] == "preference" else "the last assistant turn"
    edited = st.text_area(f"edit {which} (accept saves the edit)", value=messages[last]["content"] if last is not None else "",
                          key=f"edit_{rid}", disabled=last is None)
    tags = st.text_input("tags (comma-separated)", key=f"tags_{rid}")
    note = st.text_input("note", key=f"note_{rid}")
    b = st.columns(3)
    # the buttons' keys name the record: a second press that arrives after the page moved on is for a
    # button no longer drawn, so it cannot label a record its presser never saw
    verdict = None
    if b[0].button("Accept", shortcut="a", key=f"accept_{rid}", type="primary"):
        verdict = "accept"
    if b[1].button("Reject", shortcut="x", key=f"reject_{rid}"):
        verdict = "reject"
    if b[2].button("Skip", shortcut="s", key=f"skip_{rid}"):
        try:
            with q.open_workspace(path) as ws:
                ws.add_skip(annotator, run, rid)
        except Exception as e:  # noqa: BLE001
            st.error(f"not saved: {literal(e)}; press again")
            return
        st.rerun()
    if verdict is None:
        return
    edit = None
    if verdict == "accept" and last is not None and edited != messages[last]["content"]:
        edit = [dict(m) for m in messages]
        edit[last]["content"] = edited
    try:
        with q.open_workspace(path) as ws:
            ws.add_label(rid, annotator, verdict, run_id=run, uid=rec["uid"], edit=edit,
                         tags=[t.strip() for t in tags.split(",") if t.strip()], note=note or None, action_key=action)
    except Exception as e:  # noqa: BLE001  (busy, or any store error: the record stays for another press)
        st.error(f"not saved: {literal(e)}; press again")
        return
    # durable now (the store committed before returning): only now does the page say so
    st.session_state[ACK] = (annotator, f"saved: {verdict} · record {rec['uid']}")
    st.rerun()


def _recent(path: str, annotator: str, n: int = 5) -> None:
    """This annotator's last labels, as read back from the workspace, newest first."""
    with q.open_workspace(path) as ws:
        recent = q.recent_labels(ws, annotator, n)
    if recent.height:
        with st.expander(f"your last {recent.height} labels", expanded=True):
            table(recent)


def _summary(path: str) -> None:
    with q.open_workspace(path) as ws:
        n, people = q.label_counts(ws)
        agreement = q.agreement(ws)
    st.divider()
    st.caption(f"{n} current labels by {people} annotators")
    if agreement.height:
        st.subheader("agreement on overlapping records", anchor=False)
        st.dataframe(agreement, hide_index=True)
    if n:
        # made in memory when the button is pressed, not on every render, and never written to disk here
        st.download_button(f"export {n} labels (JSONL)", lambda: _export(path), file_name="labels.jsonl",
                           mime="application/jsonl", key="export")


def _export(path: str) -> bytes:
    with q.open_workspace(path) as ws:
        return q.labels_jsonl(ws)
