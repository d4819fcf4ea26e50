"""Exact deduplication on normalized text."""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
from pydantic import Field

from curate.stages import GlobalDecision, GlobalStage, StageParams, register


def _plain_row() -> pl.Expr:
    """A plain conversation: kind sft, no tools, no tool call or tool result."""
    el = pl.element()
    tool_turn = pl.col("messages").list.eval(el.struct.field("tool_calls").is_not_null() | (el.struct.field("role") == "tool")).list.any()
    return (pl.col("kind") == "sft") & pl.col("tools").is_null() & ~tool_turn.fill_null(False)


def is_rich(batch: pl.DataFrame) -> bool:
    """Whether a batch holds anything but plain conversations: preference pairs, KTO records or tool calls."""
    from curate.frames import has_tool_calls

    if "kind" in batch.columns and (batch["kind"] != "sft").any():
        return True
    return has_tool_calls(batch["messages"])


def normalized_text_expr(fields: str, normalization: str, rich: bool = False) -> pl.Expr:
    """The text two records must share to be exact duplicates.

    ``rich``: the batch holds tool calls, preference pairs or KTO records. Their text also covers the record's
    kind, tool calls, tools, rejected completion and label (two pairs that share a chosen answer but not the
    rejected one are not duplicates; a pair never duplicates a conversation), while a plain conversation in the
    batch gets the same text as in any other batch."""
    el = pl.element()
    if fields == "prompt":
        text = pl.col("prompt_text")
    elif fields == "response":
        text = pl.col("response_text")
        if rich:
            text = pl.concat_str([text, pl.col("rejected_text")], separator="\x1d", ignore_nulls=True)
    else:  # the whole conversation, roles included: the same answer to another question is no duplicate
        text = pl.col("messages").list.eval(
            pl.concat_str([el.struct.field("role"), el.struct.field("content")], separator="\x1f")
        ).list.join("\x1e")
        if rich:
            tagged = pl.concat_str(
                [pl.col("prompt_text"), pl.col("response_text"), pl.col("rejected_text"), pl.col("label").cast(pl.Utf8), pl.col("tools")],
                separator="\x1d", ignore_nulls=True,
            )
            text = pl.when(_plain_row()).then(text).otherwise(tagged)
    if rich:
        text = pl.when(pl.col("kind") == "sft").then(text).otherwise(pl.concat_str([pl.col("kind"), text], separator="\x1d"))
    # ASCII whitespace classes on purpose: contents are normalized already (no-break spaces are spaces), and
    # matching only runs that need rewriting is several times faster than Unicode `\s+` on a million records.
    ws = r"[ \t\n\r\f\v]{2,}|[\t\n\r\f\v]"
    if normalization in ("case_whitespace", "punctuation"):
        text = text.str.to_lowercase().str.replace_all(ws, " ").str.strip_chars()
    if normalization == "punctuation":
        text = text.str.replace_all(r"[\p{P}\p{S}]+", "").str.replace_all(ws, " ").str.strip_chars()
    return text


@register
class ExactDedup(GlobalStage):
    """Rejects records whose normalized text equals that of an earlier-kept record.

    The key is a 64-bit hash of the normalized text (a collision among a million distinct records has a
    probability near 3e-8). ``keep`` picks the cluster's representative: ``first`` (input order),
    ``last``, or ``longest`` (most characters, ties to the first). Rejects name the representative's
    id in ``duplicate_of`` and its file:line in ``detail``.
    """

    name = "exact_dedup"
    reasons = ("exact_duplicate",)
    group_key = "key"

    class Params(StageParams):
        """Parameters of ``exact_dedup``."""

        fields: Literal["all", "prompt", "response"] = Field("all", description=(
            "the text compared: all (every turn with its role: the same answer to another question is no duplicate), "
            "prompt (one answer per question) or response"))
        normalization: Literal["none", "case_whitespace", "punctuation"] = Field("case_whitespace", description=(
            "what is ignored when comparing: none (byte-equal text), case_whitespace (letter case and runs of "
            "whitespace), punctuation (also punctuation and symbols)"))
        keep: Literal["first", "last", "longest"] = Field("first", description=(
            "which copy is kept: first / last in input order, or longest (most characters, ties to the first)"))

    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:
        """``uid``, ``id``, source file and line, ``n_chars`` and ``key``: a 64-bit hash of the normalized text."""
        p = self.params
        return batch.select(
            "uid",
            "id",
            "source_file",
            "source_line",
            "n_chars",
            key=normalized_text_expr(p.fields, p.normalization, is_rich(batch)).hash(seed=0),
        )

    def decide(self, prepared: pl.DataFrame) -> pl.DataFrame:
        """Every record whose key an earlier-kept record has (by ``keep``) rejected as ``exact_duplicate``,
        ``duplicate_of`` its representative; clusters so each group lands in one split."""
        keep = self.params.keep
        if keep == "first":
            ordered = prepared.sort("uid")
        elif keep == "last":
            ordered = prepared.sort("uid", descending=True)
        else:
            ordered = prepared.sort(["n_chars", "uid"], descending=[True, False])
        reps = ordered.unique("key", keep="first", maintain_order=False).select(
            "key", rep_uid="uid", rep_id="id", rep_src=pl.format("{}:{}", "source_file", "source_line")
        )
        members = prepared.join(reps, on="key")
        dupes = members.filter(pl.col("uid") != pl.col("rep_uid"))
        rejects = dupes.select(
            "uid",
            reason=pl.lit("exact_duplicate"),
            detail=pl.format("same normalized text as {}", "rep_src"),
            duplicate_of=pl.col("rep_id"),
        ).sort("uid")
        # clusters (representative included) so the runner keeps each cluster in one split
        in_cluster = members.filter(pl.col("key").is_in(dupes["key"].implode()))
        clusters = in_cluster.select("uid", "rep_uid", similarity=pl.lit(1.0)).sort("uid")
        return GlobalDecision(rejects, clusters)

    def decide_sql(self, con: Any, prepared: str) -> GlobalDecision:
        """:meth:`decide` as a group-by on ``key`` in DuckDB (out of core): the same rejects and clusters."""
        order = {"first": "uid", "last": "uid DESC", "longest": "n_chars DESC, uid"}[self.params.keep]
        con.execute(f"""CREATE OR REPLACE TEMP TABLE exact_members AS
            WITH p AS (SELECT uid, key, n_chars FROM {prepared}),
                 reps AS (SELECT key, first(uid ORDER BY {order}) AS rep_uid FROM p GROUP BY key HAVING count(*) > 1)
            SELECT p.uid, r.rep_uid FROM p JOIN reps r USING (key)""")
        try:
            rejects = _frame(con, f"""SELECT m.uid, 'exact_duplicate' AS reason,
                       'same normalized text as ' || r.source_file || ':' || r.source_line AS detail, r.id AS duplicate_of
                FROM exact_members m JOIN (SELECT uid, id, source_file, source_line FROM {prepared}) r ON r.uid = m.rep_uid
                WHERE m.uid <> m.rep_uid ORDER BY m.uid""")
            clusters = _frame(con, "SELECT uid, rep_uid, 1.0::DOUBLE AS similarity FROM exact_members ORDER BY uid")
        finally:
            con.execute("DROP TABLE IF EXISTS exact_members")
        return GlobalDecision(rejects.cast({"uid": pl.Int64}), clusters.cast({"uid": pl.Int64, "rep_uid": pl.Int64}))


def _frame(con: Any, query: str) -> pl.DataFrame:
    return pl.from_arrow(con.sql(query).to_arrow_table())  # type: ignore[return-value]
