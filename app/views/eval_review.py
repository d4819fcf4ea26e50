"""Eval review: two eval runs compared, blind by default.

- **Blind review** (the default): each annotator, by name, gets a queue of the task's examples they have not
  voted on, in an order of their own; per example the prompt, the reference and two answers in an order drawn
  for that annotator and example, and nothing else: no model or run name next to an answer, no score, no
  diff, no judge verdict. The vote (``1``, ``t``, ``2``) is stored with the order shown (``left_side``) and
  ``blind=True``; only once the store has it does the page reveal which answer was which model, both outputs
  under their names, their scores, the word diff and the judge's verdict and rationales.
- **Open comparison** (marked not blind, no votes): the examples sorted to the largest regressions on a
  metric, with the judge's verdicts, and any example side by side with its diff.

Above both: the per-metric change with its paired bootstrap interval, and the human win rate of the
fine-tune with judge-human agreement (Cohen's kappa), which are aggregates and reveal nothing per example.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from typing import Any

import polars as pl
import streamlit as st

from app import charts
from app import queries as q
from app.render import chat, diff, escape_controls, literal, plain_frame, plain_json
from curate.workspace import normalize_annotator
from evalsuite.compare import CompareError
from evalsuite.metrics import score_for_key

BLIND, OPEN = "blind review", "open comparison (not blind)"
SIDES = ("base", "fine_tune")
REVEAL = "rev_reveal"  # session key: the example whose vote is stored and is now revealed


def render(path: str) -> None:
    """The eval review page for the workspace at ``path``: two eval runs of one task, either blind (votes
    stored in the workspace before the models are revealed) or open, sorted by regression, with word diffs."""
    st.title("Eval review")
    with q.open_workspace(path) as ws:
        evals = q.runs(ws, "eval")
        if evals.height < 2:
            st.info("two eval runs are needed (`evalsuite run` on the base and on the fine-tune)")
            return
        ids = evals["run_id"].to_list()
        c = st.columns(2)
        # both run ids are shown here: which one is answer 1 is drawn per example, so naming the runs in
        # the pickers says nothing about the sides
        base = c[0].selectbox("base run", ids, index=len(ids) - 1, key="rev_base", format_func=escape_controls)
        ft = c[1].selectbox("fine-tune run", [i for i in ids if i != base], key="rev_ft", format_func=escape_controls)
        tasks = q.eval_tasks(ws, base, ft)
        if not tasks:
            st.warning("these runs share no generation task")
            return
        task = st.selectbox("task", tasks, key="rev_task", format_func=escape_controls)
        summary = q.human_summary(ws, base, ft, task)
    try:
        deltas = _deltas(path, base, ft)
    except CompareError as e:  # runs that cannot be compared (other prompts or settings): say why, review anyway
        deltas = None
        st.warning(f"no paired comparison: {literal(e)}")
    if deltas is not None and deltas.height:
        _delta_plot(deltas)
    _summary(summary)
    mode = st.radio("mode", [BLIND, OPEN], key="rev_mode", horizontal=True)
    if mode == BLIND:
        _blind(path, base, ft, task)
    else:
        _open_comparison(path, base, ft, task)


# ---------------------------------------------------------------------------------------------- blind review

def _digest(*parts: Any) -> int:
    """A stable 64-bit seed from ``parts`` (Python's ``hash`` of a string changes with every process, and a
    reload or the other app server must draw the same order)."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def blind_order(annotator: str, base: str, ft: str, task: str, idxs: list[int]) -> list[int]:
    """``idxs`` in this annotator's own random order for this pair of runs and task: the same on every
    reload and server, different for another annotator (so two reviewers do not see the same examples
    first, and none sees them in the order of the file)."""
    order = sorted(idxs)
    random.Random(_digest("order", annotator, base, ft, task)).shuffle(order)
    return order


def left_side(annotator: str, base: str, ft: str, task: str, idx: int) -> str:
    """Which model's answer this annotator sees as "answer 1" for example ``idx`` (``base`` or
    ``fine_tune``): drawn from a seeded RNG, so a reload shows the same order, and independent per
    example and annotator."""
    return random.Random(_digest("sides", annotator, base, ft, task, idx)).choice(SIDES)


def _annotator(key: str) -> str | None:
    """The annotator's name from the text box ``key``, normalized once (what is stored and looked up);
    None, with a note, while there is no usable name."""
    raw = st.text_input("annotator", key=key, placeholder="your name")
    if not raw.strip():
        st.info("enter your name to start the blind review")
        return None
    try:
        name = normalize_annotator(raw)
    except ValueError as e:
        st.error(literal(e))
        return None
    if name != raw:
        st.caption(f"reviewing as {literal(name)}")
    return name


def _blind(path: str, base: str, ft: str, task: str) -> None:
    st.divider()
    annotator = _annotator("rev_annotator")
    if annotator is None:
        return
    shown = st.session_state.get(REVEAL)
    if shown and shown["key"] == (annotator, base, ft, task):
        _reveal(path, base, ft, task, annotator, shown["idx"])
        return
    with q.open_workspace(path) as ws:
        pairs = q.eval_pairs(ws, base, ft, task)
        prefs = q.preferences(ws, base, ft, task)
    voted = set(prefs.filter(pl.col("annotator") == annotator)["idx"].to_list())
    queue = [i for i in blind_order(annotator, base, ft, task, pairs["idx"].to_list()) if i not in voted]
    if not queue:
        st.success(f"you have voted on all {pairs.height} examples of this task")
        return
    idx = queue[0]
    row = pairs.filter(pl.col("idx") == idx).row(0, named=True)
    left = left_side(annotator, base, ft, task, idx)
    right = SIDES[1 - SIDES.index(left)]
    outputs = {"base": row["base_output"], "fine_tune": row["ft_output"]}
    # one key per shown example, drawn once: a press sent twice, or again after "not saved", stores one vote
    action = st.session_state.setdefault(f"rev_action_{_digest(annotator, base, ft, task, idx)}", uuid.uuid4().hex)
    # everything from here to the vote is in one container: what the browser test reads as "before the vote"
    with st.container(key="blind_vote"):
        st.caption(f"example {idx} · {len(queue)} of {pairs.height} left for you")
        st.subheader("prompt", anchor=False)
        chat(row["prompt"])
        st.caption("reference")
        st.text(escape_controls(row["reference"]))
        c = st.columns(2)
        c[0].caption("answer 1")
        c[0].text(escape_controls(outputs[left]))
        c[1].caption("answer 2")
        c[1].text(escape_controls(outputs[right]))
        b = st.columns(3)
        choice = None
        # the buttons' keys name the example: a second press that arrives after the page moved on is
        # for a button no longer drawn, so it cannot vote on an example its presser never saw
        if b[0].button("Answer 1 is better", shortcut="1", key=f"vote1_{idx}"):
            choice = left
        if b[1].button("Tie", shortcut="t", key=f"vote_tie_{idx}"):
            choice = "tie"
        if b[2].button("Answer 2 is better", shortcut="2", key=f"vote2_{idx}"):
            choice = right
    if choice:
        try:
            with q.open_workspace(path) as ws:
                ws.add_preference(base, ft, task, idx, annotator, choice, left, blind=True, action_key=action)
        except Exception as e:  # noqa: BLE001  (busy, or any store error: the vote stays on screen to press again)
            st.error(f"not saved: {literal(e)}; press again")
            return
        st.session_state[REVEAL] = {"key": (annotator, base, ft, task), "idx": idx}
        st.rerun()


def _reveal(path: str, base: str, ft: str, task: str, annotator: str, idx: int) -> None:
    """After the vote is stored: the vote as the store has it, which answer was which model, both outputs
    under their names with their scores and the judge's notes, the word diff and the pairwise verdict."""
    with q.open_workspace(path) as ws:
        pairs = q.eval_pairs(ws, base, ft, task)
        prefs = q.preferences(ws, base, ft, task)
        judge = q.judge_verdicts(ws, base, ft, task)
    vote = prefs.filter((pl.col("annotator") == annotator) & (pl.col("idx") == idx))
    row = pairs.filter(pl.col("idx") == idx).row(0, named=True)
    if vote.is_empty():  # cannot happen after add_preference returned; say so rather than reveal unrecorded
        st.error(f"no stored vote of {literal(annotator)} on example {idx}")
        return
    choice, left = vote["choice"][0], vote["left_side"][0]
    right = SIDES[1 - SIDES.index(left)]
    names = {"base": f"base ({base})", "fine_tune": f"fine-tune ({ft})"}
    picked = {"tie": "a tie", left: "answer 1", right: "answer 2"}[choice]
    st.success(literal(f"vote saved: you chose {picked}. Answer 1 was the {names[left]}, answer 2 the {names[right]}."))
    if st.button("Next example", shortcut="n", key=f"next_{idx}", type="primary"):
        del st.session_state[REVEAL]
        st.rerun()
    st.subheader("prompt", anchor=False)
    chat(row["prompt"])
    st.caption("reference")
    st.text(escape_controls(row["reference"]))
    _side_by_side(row, {left: "answer 1", right: "answer 2"})
    if idx in judge:
        st.caption(literal(f"pairwise judge: {judge[idx].replace('_', '-')}"
                           + ("" if judge[idx] == "tie" else f" (answer {1 if judge[idx] == left else 2})")))


# ---------------------------------------------------------------------------------------------- open comparison

def _open_comparison(path: str, base: str, ft: str, task: str) -> None:
    st.warning("open comparison, not blind: the models are named and the judge's verdicts shown. Votes are taken "
               "in the blind review only.")
    with q.open_workspace(path) as ws:
        pairs = q.eval_pairs(ws, base, ft, task)
        judge = q.judge_verdicts(ws, base, ft, task)
    metrics = sorted({k for s in pairs["base_scores"] for k, v in json.loads(s or "{}").items() if v is not None})
    if not metrics:
        st.info("these examples carry no metric")
        return
    metric = st.selectbox("sort by the change in", metrics, key="rev_metric", format_func=escape_controls)
    score = score_for_key(metric)  # the metric says which way is better; an unknown key reads as higher-is-better
    pairs = q.with_deltas(pairs, metric, score is not None and not score.higher_is_better).sort("delta", nulls_last=True)
    if st.checkbox("regressions only", key="rev_worse"):
        pairs = pairs.filter(pl.col("delta") < 0)
    if pairs.is_empty():
        st.success("no example matches")
        return
    st.dataframe(plain_frame(pairs.select("idx", "source", "delta",
                                          judge=pl.col("idx").replace_strict(judge, default=None, return_dtype=pl.Utf8))),
                 hide_index=True)
    idx = st.selectbox("example", pairs["idx"].to_list(), key="rev_idx")
    row = pairs.filter(pl.col("idx") == idx).row(0, named=True)
    st.subheader("prompt", anchor=False)
    chat(row["prompt"])
    st.caption("reference")
    st.text(escape_controls(row["reference"]))
    _side_by_side(row, {})
    if idx in judge:
        st.caption(literal(f"pairwise judge: {judge[idx].replace('_', '-')}"))


def _side_by_side(row: dict, shown_as: dict[str, str]) -> None:
    """Both outputs under their model's name (and, after a blind vote, the answer number they had), each
    with its scores and the rubric judge's notes; then the word diff from base to fine-tune."""
    left, right = st.columns(2)
    for col, side, label in ((left, "base", "base output"), (right, "fine_tune", "fine-tuned output")):
        with col:
            st.caption(label + (f" (was {shown_as[side]})" if side in shown_as else ""))
            st.text(escape_controls(row["base_output" if side == "base" else "ft_output"]))
            st.json(plain_json(json.loads(row["base_scores" if side == "base" else "ft_scores"] or "{}")), expanded=False)
            _judge_notes(row["base_notes" if side == "base" else "ft_notes"])
    st.caption("word diff, base to fine-tune")
    diff(row["base_output"], row["ft_output"])


def _judge_notes(notes: str | None) -> None:
    j = json.loads(notes or "{}").get("judge")
    if j:
        st.caption(literal("judge: " + ", ".join(f"{c} {j.get(c)}" for c in ("helpfulness", "accuracy", "coherence"))))
        for c, why in (j.get("rationales") or {}).items():
            if why:
                st.text(escape_controls(f"{c}: {why}"))


# ---------------------------------------------------------------------------------------------- aggregates

@st.cache_data(show_spinner="comparing the two runs (paired bootstrap)", max_entries=32)
def _deltas(path: str, base: str, ft: str) -> pl.DataFrame:
    with q.open_workspace(path) as ws:
        return q.delta_rows(q.metric_deltas(ws, base, ft))


def _delta_plot(deltas: pl.DataFrame) -> None:
    data = deltas.filter(pl.col("delta").is_not_nan() & pl.col("ci_low").is_not_nan())
    if data.height:
        st.caption("change per metric, fine-tune minus base, with paired bootstrap 95% intervals (for perplexity lower is better)")
        charts.metric_deltas(data)


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
