"""Runs: curate runs with their funnel, train runs with their loss curves, eval runs with headline metrics."""

from __future__ import annotations

import json

import polars as pl
import streamlit as st

from app import queries as q


def render(path: str) -> None:
    st.title("Runs")
    with q.open_workspace(path, read_only=True) as ws:
        all_runs = q.runs(ws)
        if all_runs.is_empty():
            st.info("no runs in this workspace yet: `curate run`, `train run` and `evalsuite run` register theirs here")
            return
        st.dataframe(all_runs.select("run_id", "kind", "name", "status", "started", "finished"), hide_index=True)
        curate_runs = all_runs.filter(pl.col("kind") == "curate")["run_id"].to_list()
        if curate_runs:
            st.header("Curation funnel")
            run = st.selectbox("curate run", curate_runs, key="runs_curate")
            f = q.funnel(ws, run)
            st.bar_chart(f.select("stage", "n_out", "n_rejected").to_pandas().set_index("stage"), stack=True)
            st.dataframe(f.with_columns(pl.col("reasons").map_elements(lambda s: ", ".join(f"{k}: {v}" for k, v in json.loads(s or "{}").items()),
                                                                        return_dtype=pl.Utf8)), hide_index=True)
            h = q.length_histogram(ws, run)
            if h.height:
                st.caption("record length (characters), kept and rejected")
                st.bar_chart(h.to_pandas(), x="chars_from", y="records", color="status")
        train_runs = all_runs.filter(pl.col("kind") == "train")["run_id"].to_list()
        if train_runs:
            st.header("Training")
            run = st.selectbox("train run", train_runs, key="runs_train")
            curves = q.train_curves(ws, run)
            if curves.height:
                st.line_chart(curves.to_pandas(), x="step", y=[c for c in ("loss", "eval_loss") if curves[c].is_not_null().any()])
            else:
                st.caption("no metrics logged yet")
        eval_runs = all_runs.filter(pl.col("kind") == "eval")
        if eval_runs.height:
            st.header("Evaluations")
            rows = [{"run_id": r["run_id"], **q.eval_headline(ws, r["run_id"])} for r in eval_runs.iter_rows(named=True)]
            st.dataframe(pl.DataFrame(rows), hide_index=True)
