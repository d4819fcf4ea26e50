"""Eval review: two eval runs side by side per example (prompt, reference, base and fine-tuned output with a
word-level diff, every metric, the judge's rationale), sorted to the largest regressions; a blind human
preference per example (sides shuffled and unnamed until the vote), summarized as a human win rate and as
agreement with the judge (Cohen's kappa)."""

from __future__ import annotations

import json
import random

import polars as pl
import streamlit as st

from app import charts
from app import queries as q
from app.render import chat, diff
from evalsuite.compare import CompareError

LOWER_IS_BETTER = {"perplexity", "text_perplexity"}


def render(path: str) -> None:
    st.title("Eval review")
    with q.open_workspace(path, read_only=True) as ws:
        evals = q.runs(ws, "eval")
        if evals.height < 2:
            st.info("two eval runs are needed (`evalsuite run` on the base and on the fine-tune)")
            return
        ids = evals["run_id"].to_list()
        c = st.columns(2)
        base = c[0].selectbox("base run", ids, index=len(ids) - 1, key="rev_base")
        ft = c[1].selectbox("fine-tune run", [i for i in ids if i != base], key="rev_ft")
        tasks = q.eval_tasks(ws, base, ft)
        if not tasks:
            st.warning("these runs share no generation task")
            return
        try:
            deltas = _deltas(path, base, ft)
        except CompareError as e:  # runs that cannot be compared (other prompts or settings): say why, review anyway
            deltas = None
            st.warning(f"no paired comparison: {e}")
        task = st.selectbox("task", tasks, key="rev_task")
        pairs = q.eval_pairs(ws, base, ft, task)
        judge = q.judge_verdicts(ws, base, ft, task)
        summary = q.human_summary(ws, base, ft, task)
    if deltas is not None and deltas.height:
        _delta_plot(deltas)
    metrics = sorted({k for s in pairs["base_scores"] for k, v in json.loads(s).items() if v is not None})
    metric = st.selectbox("sort by the change in", metrics, key="rev_metric")
    pairs = q.with_deltas(pairs, metric, metric in LOWER_IS_BETTER).sort("delta", nulls_last=True)
    only_worse = st.checkbox("regressions only", key="rev_worse")
    if only_worse:
        pairs = pairs.filter(pl.col("delta") < 0)
    _summary(summary)
    if pairs.is_empty():
        st.success("no example matches")
        return
    st.dataframe(pairs.select("idx", "source", "delta", judge=pl.col("idx").replace_strict(judge, default=None, return_dtype=pl.Utf8)),
                 hide_index=True)
    idx = st.selectbox("example", pairs["idx"].to_list(), key="rev_idx")
    row = pairs.filter(pl.col("idx") == idx).row(0, named=True)
    st.subheader("prompt")
    chat(row["prompt"])
    st.caption("reference")
    st.text(row["reference"])
    left, right = st.columns(2)
    with left:
        st.caption("base output")
        st.text(row["base_output"])
        st.json(json.loads(row["base_scores"]), expanded=False)
        _judge_notes(row["base_notes"])
    with right:
        st.caption("fine-tuned output")
        st.text(row["ft_output"])
        st.json(json.loads(row["ft_scores"]), expanded=False)
        _judge_notes(row["ft_notes"])
    st.caption("word diff, base to fine-tune")
    diff(row["base_output"], row["ft_output"])
    if idx in judge:
        st.caption(f"pairwise judge: {judge[idx]}")
    _blind_vote(path, base, ft, task, row)


@st.cache_data(show_spinner="comparing the two runs (paired bootstrap)", max_entries=32)
def _deltas(path: str, base: str, ft: str) -> pl.DataFrame:
    with q.open_workspace(path, read_only=True) as ws:
        return q.delta_rows(q.metric_deltas(ws, base, ft))


def _delta_plot(deltas: pl.DataFrame) -> None:
    data = deltas.filter(pl.col("delta").is_not_nan() & pl.col("ci_low").is_not_nan())
    if data.height:
        st.caption("change per metric, fine-tune minus base, with paired bootstrap 95% intervals (for perplexity lower is better)")
        charts.metric_deltas(data)


def _judge_notes(notes: str | None) -> None:
    j = json.loads(notes or "{}").get("judge")
    if j:
        st.caption("judge: " + ", ".join(f"{c} {j.get(c)}" for c in ("helpfulness", "accuracy", "coherence")))
        for c, why in (j.get("rationales") or {}).items():
            if why:
                st.text(f"{c}: {why}")


def _blind_vote(path: str, base: str, ft: str, task: str, row: dict) -> None:
    st.divider()
    st.subheader("your preference (blind)")
    annotator = st.text_input("annotator", key="rev_annotator", placeholder="your name")
    # which side shows the fine-tune is drawn once per example and kept until the vote
    key = f"sides_{base}_{ft}_{task}_{row['idx']}"
    if key not in st.session_state:
        st.session_state[key] = random.Random().choice(["base", "fine_tune"])
    left_side = st.session_state[key]
    outputs = {"base": row["base_output"], "fine_tune": row["ft_output"]}
    right_side = "fine_tune" if left_side == "base" else "base"
    c = st.columns(2)
    c[0].caption("answer 1")
    c[0].text(outputs[left_side])
    c[1].caption("answer 2")
    c[1].text(outputs[right_side])
    b = st.columns(3)
    choice = None
    if b[0].button("Answer 1 is better", shortcut="1", key="vote1"):
        choice = left_side
    if b[1].button("Tie", shortcut="t", key="vote_tie"):
        choice = "tie"
    if b[2].button("Answer 2 is better", shortcut="2", key="vote2"):
        choice = right_side
    if choice:
        if not annotator.strip():
            st.error("enter your name before voting")
            return
        with q.open_workspace(path) as ws:
            ws.add_preference(base, ft, task, row["idx"], annotator, choice, left_side)
        del st.session_state[key]
        st.success(f"recorded: answer 1 was {left_side.replace('_', '-')}, answer 2 was {right_side.replace('_', '-')}; you chose {choice.replace('_', '-')}")


def _summary(s: dict) -> None:
    if not s.get("votes"):
        st.caption("no human preference recorded for this task yet")
        return
    line = (f"human win rate of the fine-tune {s['win_rate']:.2f} over {s['votes']} votes "
            f"(fine-tune {s['fine_tune']}, base {s['base']}, tie {s['tie']})")
    if s.get("judged"):
        kappa = "-" if s.get("judge_kappa") is None else f"{s['judge_kappa']:.2f}"
        line += f"; judge agrees on {s['judge_agreement']:.0%} of {s['judged']} (Cohen's kappa {kappa})"
    st.info(line)
