"""Data browser: kept and rejected records of a curate run, filtered (kind among them) and searched in
DuckDB, page by page; each record as its kind reads (a chat with its tool calls, a preference pair's two
completions side by side, a KTO completion under its label) and its duplicate cluster side by side with the
kept representative. Everything taken from records and file names is shown through app.render's plain-text
helpers."""

from __future__ import annotations

import json

import polars as pl
import streamlit as st

from app import queries as q
from app.render import escape_controls, literal, pick_curate_run, plain_frame, plain_json, record, run_query


def render(path: str) -> None:
    """The data browser page for the workspace at ``path``: filter a curate run's records by status, kind,
    stage, reason, source, shape and text, and read each (as its kind reads) with its verdict and scores."""
    st.title("Data browser")
    with q.open_workspace(path, read_only=True) as ws:
        run = pick_curate_run(ws, key="browse_run")
        if run is None:
            return
        opts = run_query(ws, path, run, "filter_options")
        c = st.columns(6)
        status = c[0].selectbox("status", ["all", "kept", "rejected"], key="browse_status")
        kind = c[1].selectbox("kind", ["all", *opts["kind"]], key="browse_kind", format_func=escape_controls)
        stage = c[2].selectbox("stage", ["all", *opts["stage"]], key="browse_stage", format_func=escape_controls)
        reason = c[3].selectbox("reason", ["all", *opts["reason"]], key="browse_reason", format_func=escape_controls)
        source = c[4].selectbox("source", ["all", *opts["source"]], key="browse_source", format_func=escape_controls)
        shape = c[5].selectbox("shape", ["all", *opts["shape"]], key="browse_shape", format_func=escape_controls)
        search = st.text_input("search (every turn, case-insensitive)", key="browse_search")
        page_no = st.number_input("page", min_value=1, value=1, step=1, key="browse_page")
        none = lambda v: None if v == "all" else v  # noqa: E731
        page, total = q.records_page(ws, run, status=none(status), stage=none(stage), reason=none(reason), source=none(source),
                                     shape=none(shape), kind=none(kind), search=search or None, offset=(page_no - 1) * q.PAGE)
        st.caption(f"{total:,} records match; page {page_no} of {max(1, -(-total // q.PAGE))}")
        st.dataframe(plain_frame(page.select("uid", "status", "kind", "stage", "reason", "detail", "shape", "source_file", "source_line",
                                             first_turn=pl.col("messages").list.first().struct.field("content").str.slice(0, 120))), hide_index=True)
        if page.is_empty():
            return
        uid = st.selectbox("record", page["uid"].to_list(), key="browse_uid")
        rec = page.filter(pl.col("uid") == uid).row(0, named=True)
        cluster = q.cluster_of(ws, run, uid, limit=5)
        # the record and its cluster side by side; a record alone gets the full width, which a preference
        # pair's two completions, themselves side by side, read better in
        left, right = st.columns(2) if cluster.height > 1 else (st.container(), None)
        with left:
            st.subheader(f"record {uid}: {literal(rec['status'])}" + (f" ({literal(rec['stage'])}: {literal(rec['reason'])})" if rec["reason"] else ""),
                         anchor=False)
            st.text(escape_controls(f"{rec['source_file']}:{rec['source_line']} · {rec['kind']} · {rec['shape']} · split {rec['split']}"))
            if rec["detail"]:
                st.text(escape_controls(rec["detail"]))
            if right is None:
                st.caption("not in a duplicate cluster")
            record(rec)
            if rec["scores"]:
                st.json(plain_json(json.loads(rec["scores"])), expanded=False)
        if right is None:
            return
        with right:
            st.subheader(f"duplicate cluster ({literal(cluster['stage'][0])}, {cluster['size'][0]:,} members)", anchor=False)
            if cluster["size"][0] > cluster.height:
                st.caption(f"the representative and the {cluster.height - 1} most similar")
            for m in cluster.iter_rows(named=True):
                label = "kept representative" if m["representative"] else f"similarity {m['similarity']:.3f}"
                st.caption(f"uid {m['uid']} · {label} · {literal(m['source_file'])}:{m['source_line']}")
                record(m)
