"""Preference pairs and KTO records: completions that carry no signal."""

from __future__ import annotations

import polars as pl
from pydantic import Field

from curate.stages import RecordStage, StageParams, register
from curate.stages.quality import _pct, _with_verdict


def _assistant_text(messages: pl.Expr) -> pl.Expr:
    """The text of the assistant turns of a list of messages, tool calls included as ``name(arguments)``."""
    el = pl.element()
    call = pl.element().struct.field("function")
    called = el.struct.field("tool_calls").list.eval(
        pl.concat_str([call.struct.field("name"), pl.lit("("), call.struct.field("arguments"), pl.lit(")")])
    ).list.join("\n")
    text = pl.concat_str([el.struct.field("content").fill_null(""), called.fill_null("")], separator="\n").str.strip_chars("\n")
    return messages.list.eval(text.filter(el.struct.field("role") == "assistant")).list.join("\n\n")


def _word_set(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.extract_all(r"\w+").list.unique()


@register
class PreferencePair(RecordStage):
    """Preference pairs and KTO records whose completions teach nothing (other records pass untouched).

    Checks, in order:

    1. ``empty_chosen``: the chosen completion has no text and no tool call.
    2. ``empty_rejected``: the rejected completion has no text and no tool call.
    3. ``identical_completions``: chosen and rejected are the same (after the reader's normalization): the pair
       pulls both ways at once.
    4. ``near_identical_completions``: chosen and rejected share more than ``max_word_overlap`` of their words
       (Jaccard overlap of the word sets; off by default): pairs that differ by a word or two carry little
       signal and much noise.
    5. ``empty_completion``: a KTO record whose completion is empty.

    Params:
        max_word_overlap: reject pairs whose completions' word sets overlap more than this (Jaccard, 0-1); null
            keeps them (default).

    Scores: ``preference_pair_word_overlap`` (Jaccard overlap of the two completions' word sets) and
    ``preference_pair_length_ratio`` (characters of chosen / rejected: DPO data often prefers the longer
    answer, a bias a model learns quickly), null on other records.
    """

    name = "preference_pair"
    reasons = ("empty_chosen", "empty_rejected", "identical_completions", "near_identical_completions", "empty_completion")
    score_columns = ("preference_pair_word_overlap", "preference_pair_length_ratio")

    class Params(StageParams):
        """Parameters of ``preference_pair``."""

        max_word_overlap: float | None = Field(None, ge=0.0, le=1.0, description=(
            "reject pairs whose chosen and rejected completions share more than this share of their words (Jaccard "
            "overlap of word sets); null keeps them (the overlap is stored as a score to retune from)"))

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Reasons for pairs and KTO records whose completions are empty or the same; the two scores."""
        none = pl.lit(None, dtype=pl.Float64)
        if "kind" not in batch.columns or not batch["kind"].is_in(["preference", "kto"]).any():
            return batch.with_columns(reason=pl.lit(None, dtype=pl.Utf8), detail=pl.lit(None, dtype=pl.Utf8),
                                      preference_pair_word_overlap=none, preference_pair_length_ratio=none)
        pair = pl.col("kind") == "preference"
        chosen = _assistant_text(pl.col("messages").list.slice(pl.col("prompt_turns").fill_null(0)))
        rejected = _assistant_text(pl.col("rejected"))
        batch = batch.with_columns(_chosen=chosen, _rejected=rejected)
        c, r = pl.col("_chosen").fill_null(""), pl.col("_rejected").fill_null("")
        inter = _word_set(c).list.set_intersection(_word_set(r)).list.len()
        union = _word_set(c).list.set_union(_word_set(r)).list.len()
        overlap = pl.when(pair & (union > 0)).then(inter / union).otherwise(None)
        batch = batch.with_columns(
            preference_pair_word_overlap=overlap.cast(pl.Float64),
            preference_pair_length_ratio=pl.when(pair & (r.str.len_chars() > 0))
            .then(c.str.len_chars() / r.str.len_chars()).otherwise(None).cast(pl.Float64),
        )
        o = pl.col("preference_pair_word_overlap")
        checks = [
            (pair & (c.str.strip_chars() == ""), "empty_chosen", pl.lit("the chosen completion is empty")),
            (pair & (r.str.strip_chars() == ""), "empty_rejected", pl.lit("the rejected completion is empty")),
            (pair & (c == r), "identical_completions", pl.format("chosen and rejected are the same ({} characters)", c.str.len_chars())),
        ]
        t = self.params.max_word_overlap
        if t is not None:
            checks.append((pair & (o > t), "near_identical_completions",
                           pl.format("chosen and rejected share {}% of their words (max {}%)", _pct(o), pl.lit(round(t * 100)))))
        checks.append(((pl.col("kind") == "kto") & (c.str.strip_chars() == ""), "empty_completion", pl.lit("the labeled completion is empty")))
        return _with_verdict(batch, checks).drop("_chosen", "_rejected")
