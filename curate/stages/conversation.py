"""Conversation structure: the turn order a chat template and a loss mask can rely on."""

from __future__ import annotations

import polars as pl
from pydantic import Field

from curate.schema import role_code_expr
from curate.stages import RecordStage, StageParams, register
from curate.stages.quality import _with_verdict


@register
class ConversationStructure(RecordStage):
    """Malformed conversations, checked on the role sequence ('s' 'u' 'a' per turn) with regexes.

    Checks, in order (the first failing one is the reason):

    1. ``no_assistant_turn``: nothing to learn from (a prompt with no answer; also an empty conversation).
    2. ``empty_turn``: a turn whose content is empty after stripping whitespace (an empty user turn
       trains the model to answer nothing; an empty assistant turn to say nothing).
    3. ``roles_out_of_order``: anything but an optional leading system turn followed by user and
       assistant turns alternating, starting with the user. A system turn elsewhere, two user or two
       assistant turns in a row, or an assistant turn first (after the system prompt) all break the
       chat templates most models are trained with, which assume strict alternation.
    4. ``ends_on_user_turn``: the last turn is the user's: its text is never answered, so it is at best
       wasted context; usually the assistant's reply was lost (a truncated export).

    Params:
        allow_ending_on_user: accept conversations that end on a user turn (default false; some
            preference sets store the prompt without the final answer, but for supervised fine-tuning a
            dangling user turn is an error).

    Scores: ``conversation_structure_turns`` (number of turns).
    """

    name = "conversation_structure"
    reasons = ("no_assistant_turn", "empty_turn", "roles_out_of_order", "ends_on_user_turn")
    score_columns = ("conversation_structure_turns",)

    class Params(StageParams):
        """Parameters of ``conversation_structure``."""

        allow_ending_on_user: bool = Field(False, description=(
            "accept conversations that end on a user turn (some preference sets store the prompt without the final "
            "answer); for supervised fine-tuning a dangling user turn is an error, so it is rejected by default"))

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Reasons ``no_assistant_turn``, ``empty_turn``, ``roles_out_of_order``, ``ends_on_user_turn`` (the first
        that applies) from the role sequence; score ``conversation_structure_turns``."""
        empty = pl.col("messages").list.eval(pl.element().struct.field("content").fill_null("").str.strip_chars() == "")
        batch = batch.with_columns(
            _roles=role_code_expr().fill_null(""),
            _empty=empty,
            conversation_structure_turns=pl.col("messages").list.len().fill_null(0).cast(pl.Int64),
        ).with_columns(_n_empty=pl.col("_empty").list.sum().fill_null(0), _empty_at=pl.col("_empty").list.arg_max())
        r = pl.col("_roles")
        # An unknown role would be rejected by the reader; here it simply breaks the pattern.
        well_ordered = r.str.contains(r"^s?(?:ua)*u?$")
        checks = [
            (~r.str.contains("a", literal=True), "no_assistant_turn", pl.format("roles {}: no assistant turn", _shown(r))),
            (
                pl.col("_n_empty") > 0,
                "empty_turn",
                pl.format(
                    "{} empty turn(s), first: turn {} ({})",
                    pl.col("_n_empty"),
                    pl.col("_empty_at") + 1,
                    _role_name(r.str.slice(pl.col("_empty_at"), 1)),
                ),
            ),
            (~well_ordered, "roles_out_of_order", pl.format("roles {}: expected [system] user, assistant, user, ...", _shown(r))),
        ]
        if not self.params.allow_ending_on_user:
            checks.append((r.str.ends_with("u"), "ends_on_user_turn", pl.format("roles {}: the last user turn has no answer", _shown(r))))
        return _with_verdict(batch, checks).drop("_roles", "_empty", "_n_empty", "_empty_at")


def _shown(roles: pl.Expr) -> pl.Expr:
    """The role code for a detail, shortened when long ("suauaua...a")."""
    return (
        pl.when(roles == "")
        .then(pl.lit("(none)"))
        .when(roles.str.len_chars() > 24)
        .then(roles.str.slice(0, 20) + "..." + roles.str.slice(-3))
        .otherwise(roles)
    )


def _role_name(code: pl.Expr) -> pl.Expr:
    return code.replace_strict({"s": "system", "u": "user", "a": "assistant"}, default="?", return_dtype=pl.Utf8)
