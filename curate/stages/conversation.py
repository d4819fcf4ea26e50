"""Conversation structure: the turn order a chat template and a loss mask can rely on."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
from pydantic import Field

from curate.frames import has_tool_calls
from curate.schema import MESSAGES, role_code_expr
from curate.stages import RecordStage, StageParams, register
from curate.stages.quality import _with_verdict


@register
class ConversationStructure(RecordStage):
    """Malformed conversations: the turn order a chat template and a loss mask can rely on, and tool calls that
    hold together.

    The order is checked on the role sequence ('s' 'u' 'a' 't' per turn: system, user, assistant, tool) with
    regexes, vectorized; tool calls are checked per record, on the records that have any.

    Checks, in order (the first failing one is the reason):

    1. ``no_assistant_turn``: nothing to learn from (a prompt with no answer; also an empty conversation).
    2. ``empty_turn``: a turn whose content is empty after stripping whitespace (an empty user turn
       trains the model to answer nothing; an empty assistant turn to say nothing). An assistant turn that
       only calls tools is not empty.
    3. ``roles_out_of_order``: anything but an optional leading system turn followed by user and
       assistant turns alternating, starting with the user, where an assistant turn may be followed by
       tool results and another assistant turn. A system turn elsewhere, two user or two assistant turns in a
       row, an assistant turn first (after the system prompt), or a tool result after a user turn all break
       the chat templates most models are trained with.
    4. ``ends_on_user_turn``: the last turn is the user's: its text is never answered, so it is at best
       wasted context; usually the assistant's reply was lost (a truncated export).
    5. ``ends_on_tool_result``: the last turn is a tool result nobody reads.
    6. ``tool_result_mismatch``: a tool result that answers no open call (no ``tool_call_id``, or an id that no
       earlier call of the conversation has, or one already answered).
    7. ``unanswered_tool_call``: a call no tool result answers before the conversation goes on (a call in the
       conversation's last turn may stay open: the example teaches the model to make it).
    8. ``invalid_tool_arguments``: arguments that are not a JSON object.
    9. ``unknown_tool``: a call of a function the record's ``tools`` do not define (records with tools only).
    10. ``tool_arguments_schema``: arguments that do not validate against the function's ``parameters`` JSON
        schema (a missing required argument, a wrong type, an unknown value of an enum).

    The rejected completion of a preference pair is checked for tool calls too, against the pair's prompt.

    Params:
        allow_ending_on_user: accept conversations that end on a user turn (default false; some
            preference sets store the prompt without the final answer, but for supervised fine-tuning a
            dangling user turn is an error).
        check_tool_schemas: validate call arguments against the tools' parameter schemas (default true).

    Scores: ``conversation_structure_turns`` (number of turns), ``conversation_structure_tool_calls`` (calls in
    the conversation).
    """

    name = "conversation_structure"
    reasons = ("no_assistant_turn", "empty_turn", "roles_out_of_order", "ends_on_user_turn", "ends_on_tool_result",
               "tool_result_mismatch", "unanswered_tool_call", "invalid_tool_arguments", "unknown_tool", "tool_arguments_schema")
    score_columns = ("conversation_structure_turns", "conversation_structure_tool_calls")

    class Params(StageParams):
        """Parameters of ``conversation_structure``."""

        allow_ending_on_user: bool = Field(False, description=(
            "accept conversations that end on a user turn (some preference sets store the prompt without the final "
            "answer); for supervised fine-tuning a dangling user turn is an error, so it is rejected by default"))
        check_tool_schemas: bool = Field(True, description=(
            "validate each tool call's arguments against the JSON schema of the function's parameters in the "
            "record's tools (a missing required argument, a wrong type, a value outside an enum)"))

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Reasons from the role sequence (the first that applies), then the tool-call checks on records with tool
        calls or tool results; scores ``conversation_structure_turns`` and ``conversation_structure_tool_calls``."""
        el = pl.element()
        for column, dtype in (("rejected", MESSAGES), ("tools", pl.Utf8), ("prompt_turns", pl.Int64)):
            if column not in batch.columns:  # a batch built by hand with the chat columns only
                batch = batch.with_columns(pl.lit(None, dtype=dtype).alias(column))
        calls = has_tool_calls(batch["messages"])
        n_calls = (
            pl.col("messages").list.eval(el.struct.field("tool_calls").list.len().fill_null(0)).list.sum().fill_null(0).cast(pl.Int64)
            if calls else pl.lit(0, dtype=pl.Int64)
        )
        empty = pl.col("messages").list.eval(
            (el.struct.field("content").fill_null("").str.strip_chars() == "") & el.struct.field("tool_calls").list.len().fill_null(0).eq(0)
        )
        batch = batch.with_columns(
            _roles=role_code_expr().fill_null(""),
            _empty=empty,
            conversation_structure_turns=pl.col("messages").list.len().fill_null(0).cast(pl.Int64),
            conversation_structure_tool_calls=n_calls,
        ).with_columns(_n_empty=pl.col("_empty").list.sum().fill_null(0), _empty_at=pl.col("_empty").list.arg_max())
        r = pl.col("_roles")
        # An unknown role would be rejected by the reader; here it simply breaks the pattern. After the exchanges,
        # a trailing user turn or tool round is "ends on ..." (below), not disorder.
        well_ordered = r.str.contains(r"^s?(?:u(?:at+)*a)*(?:u(?:at+)*)?$")
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
            (~well_ordered, "roles_out_of_order", pl.format(
                "roles {}: expected [system] user, assistant (tool results, assistant), user, ...", _shown(r))),
        ]
        if not self.params.allow_ending_on_user:
            checks.append((r.str.ends_with("u"), "ends_on_user_turn", pl.format("roles {}: the last user turn has no answer", _shown(r))))
        checks.append((r.str.ends_with("t"), "ends_on_tool_result", pl.format("roles {}: the last tool result is never read", _shown(r))))
        batch = _with_verdict(batch, checks).drop("_roles", "_empty", "_n_empty", "_empty_at")
        if calls or has_tool_calls(batch["rejected"]) or _has_tool_turns(batch):
            batch = self._tool_checks(batch)
        return batch

    def _tool_checks(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The tool-call checks, on the rows (not rejected yet) whose conversation or rejected side has tool activity."""
        el = pl.element()
        tool_turn = el.struct.field("tool_calls").is_not_null() | (el.struct.field("role") == "tool")
        active = pl.col("messages").list.eval(tool_turn).list.any() | pl.col("rejected").list.eval(tool_turn).list.any().fill_null(False)
        rows = batch.select(active.fill_null(False) & pl.col("reason").is_null()).to_series().arg_true()
        if len(rows) == 0:
            return batch
        sub = batch[rows].select("messages", "rejected", "tools", "prompt_turns").to_dicts()
        found = [tool_problem(r["messages"], r["tools"], self.params.check_tool_schemas, r["rejected"], r["prompt_turns"]) for r in sub]
        reasons = batch["reason"].scatter(rows, [f[0] if f else None for f in found])
        details = batch["detail"].scatter(rows, [f[1] if f else None for f in found])
        return batch.with_columns(reason=reasons, detail=details)


def _has_tool_turns(batch: pl.DataFrame) -> bool:
    """Whether any conversation has a tool turn (a result without any call is possible in bad data)."""
    return bool(batch.select(role_code_expr().str.contains("t", literal=True).any()).item())


def tool_problem(messages: list[dict], tools: str | None, check_schemas: bool = True, rejected: list[dict] | None = None,
                 prompt_turns: int | None = None) -> tuple[str, str] | None:
    """The first tool-call problem of a conversation, as (reason, detail), or None (see
    :class:`ConversationStructure` for the reasons). ``tools`` is the record's tool definitions as JSON text;
    ``rejected``, a preference pair's rejected completion, is checked after the prompt's first ``prompt_turns``
    turns."""
    defined = _tool_schemas(tools)
    sides = [messages]
    if rejected:
        sides.append(messages[: prompt_turns or 0] + rejected)
    for side, label in zip(sides, ("", " (rejected completion)")):
        found = _tool_problem(side, defined, check_schemas)
        if found:
            return found[0], found[1] + label
    return None


def _tool_schemas(tools: str | None) -> dict[str, Any] | None:
    """name -> parameters schema of the record's tools; None when it defines none."""
    if not tools:
        return None
    try:
        parsed = json.loads(tools)
    except ValueError:
        return None
    out = {}
    for tool in parsed if isinstance(parsed, list) else []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn.get("parameters")
    return out or None


def _tool_problem(messages: list[dict], defined: dict[str, Any] | None, check_schemas: bool) -> tuple[str, str] | None:
    open_calls: dict[str, tuple[str, int]] = {}  # id -> (name, turn)
    answered: set[str] = set()
    last = len(messages) - 1
    for turn, m in enumerate(messages):
        role = m.get("role")
        if role == "tool":
            cid = m.get("tool_call_id")
            if cid is None or cid not in open_calls:
                why = "no tool_call_id" if cid is None else ("already answered" if cid in answered else "no call has this id")
                return "tool_result_mismatch", f"turn {turn + 1}: a tool result for {cid!r}: {why}"
            answered.add(cid)
            del open_calls[cid]
            continue
        if open_calls:
            cid, (name, at) = next(iter(open_calls.items()))
            return "unanswered_tool_call", f"turn {at + 1} calls {name} ({cid}) and no tool result answers it before turn {turn + 1}"
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            name, args = fn.get("name"), fn.get("arguments")
            try:
                value = json.loads(args) if isinstance(args, str) else None
            except ValueError:
                value = None
            if not isinstance(value, dict):
                return "invalid_tool_arguments", f"turn {turn + 1}: the arguments of {name} are not a JSON object: {str(args)[:80]!r}"
            if defined is not None:
                if name not in defined:
                    return "unknown_tool", f"turn {turn + 1} calls {name}, which the record's tools do not define ({', '.join(sorted(defined))})"
                problem = _schema_problem(defined[name], value) if check_schemas else None
                if problem:
                    return "tool_arguments_schema", f"turn {turn + 1}: {name}: {problem}"
            if turn < last:
                open_calls[call.get("id")] = (name, turn)
    return None


def _schema_problem(schema: Any, value: dict) -> str | None:
    """The first way ``value`` violates the JSON schema ``schema``, or None (also for a schema that is not valid
    itself: the arguments cannot be judged against it)."""
    if not isinstance(schema, dict) or not schema:
        return None
    import jsonschema

    try:
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError:
        return None
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where + ': ' if where else ''}{error.message[:160]}"


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
    return code.replace_strict({"s": "system", "u": "user", "a": "assistant", "t": "tool"}, default="?", return_dtype=pl.Utf8)
