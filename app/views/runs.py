"""Runs: curate runs with their funnel, train runs with their loss curves, eval runs with headline metrics.
Run names and ids come from users' configs: shown with control characters escaped."""

from __future__ import annotations

import json

import polars as pl
import streamlit as st

from app import charts
from app import queries as q
from app.render import escape_controls, plain_frame, run_query


def render(path: str) -> None:
    """The runs page for the workspace at ``path``: every registered run, then a curate run's funnel and
    length plot, train runs' metrics and eval runs' results."""
    st.title("Runs")
    with q.open_workspace(path, read_only=True) as ws:
        all_runs = q.runs(ws)
        if all_runs.is_empty():
            st.info("no runs in this workspace yet: `curate run`, `train run` and `evalsuite run` register theirs here")
            return
        st.dataframe(plain_frame(all_runs.select("run_id", "kind", "name", "status", "started", "finished")), hide_index=True)
        curate_runs = all_runs.filter(pl.col("kind") == "curate")["run_id"].to_list()
        if curate_runs:
            st.header("Curation funnel")
            run = st.selectbox("curate run", curate_runs, key="runs_curate", format_func=escape_controls)
            f = q.funnel(ws, run)
            charts.funnel(f)
            st.dataframe(plain_frame(f.with_columns(pl.col("reasons").map_elements(lambda s: ", ".join(f"{k}: {v}" for k, v in json.loads(s or "{}").items()),
                                                                                    return_dtype=pl.Utf8))), hide_index=True)
            h = run_query(ws, path, run, "length_histogram")
            if h.height:
                st.caption("record length (characters), kept and rejected")
                charts.length_histogram(h)
        train_runs = all_runs.filter(pl.col("kind") == "train")["run_id"].to_list()
        if train_runs:
            st.header("Training")
            run = st.selectbox("train run", train_runs, key="runs_train", format_func=escape_controls)
            curves = q.train_curves(ws, run)
            if curves.height:
                charts.loss_curves(curves)
            else:
                st.caption("no metrics logged yet")
        eval_runs = all_runs.filter(pl.col("kind") == "eval")
        if eval_runs.height:
            st.header("Evaluations")
            rows = [{"run_id": r["run_id"], **q.eval_headline(ws, r["run_id"])} for r in eval_runs.iter_rows(named=True)]
            st.dataframe(plain_frame(pl.DataFrame(rows)), hide_index=True)
