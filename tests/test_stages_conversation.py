"""conversation_structure: real chat files from shared/data and hand-written conversations."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from curate.frames import canonical_frame
from curate.stages import REGISTRY
from curate.stages.conversation import ConversationStructure

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared/data not available")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def _evaluate(convs, **params) -> pl.DataFrame:
    return ConversationStructure(ConversationStructure.Params(**params)).evaluate(canonical_frame(convs))


def test_registered_params_and_columns():
    assert REGISTRY["conversation_structure"] is ConversationStructure
    with pytest.raises(ValidationError, match="extra"):
        ConversationStructure.Params(allow_ending_on_users=True)
    out = _evaluate([[("user", "q"), ("assistant", "a")]])
    assert out.schema["conversation_structure_turns"] == pl.Int64
    assert out.schema["reason"] == pl.Utf8 and out.schema["detail"] == pl.Utf8
    assert out.columns[-4:] == ["conversation_structure_turns", "conversation_structure_tool_calls", "reason", "detail"]
    assert ConversationStructure().evaluate(canonical_frame([]).head(0)).height == 0


def test_every_reason_and_the_order():
    convs = [
        [("user", "q"), ("assistant", "a")],  # fine
        [("system", "s"), ("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "a2")],  # fine
        [],  # nothing at all
        [("system", "s"), ("user", "q")],  # no answer
        [("user", "q"), ("assistant", "a"), ("user", "q2")],  # dangling user turn
        [("user", "q"), ("assistant", "   \n")],  # empty answer
        [("user", ""), ("assistant", "a")],  # empty question
        [("system", "s"), ("assistant", "a")],  # no user turn
        [("user", "q"), ("user", "q2"), ("assistant", "a")],  # two user turns in a row
        [("user", "q"), ("assistant", "a"), ("assistant", "a2")],  # two assistant turns
        [("user", "q"), ("assistant", "a"), ("system", "s"), ("user", "q2"), ("assistant", "a2")],  # system later
        # several faults: the first in the documented order wins
        [("user", "q"), ("user", ""), ("assistant", "a"), ("user", "q3")],  # empty + out of order + ends on user
        [("user", "q"), ("user", "q2")],  # no assistant + out of order + ends on user
        [("assistant", "a"), ("user", "q")],  # out of order + ends on user
    ]
    out = _evaluate(convs)
    assert out["reason"].to_list() == [
        None,
        None,
        "no_assistant_turn",
        "no_assistant_turn",
        "ends_on_user_turn",
        "empty_turn",
        "empty_turn",
        "roles_out_of_order",
        "roles_out_of_order",
        "roles_out_of_order",
        "roles_out_of_order",
        "empty_turn",
        "no_assistant_turn",
        "roles_out_of_order",
    ]
    assert list(ConversationStructure.reasons)[:5] == ["no_assistant_turn", "empty_turn", "roles_out_of_order", "ends_on_user_turn",
                                                       "ends_on_tool_result"]
    d = out["detail"].to_list()
    assert d[2] == "roles (none): no assistant turn"
    assert d[4] == "roles uau: the last user turn has no answer"
    assert d[5] == "1 empty turn(s), first: turn 2 (assistant)"
    assert d[7] == "roles sa: expected [system] user, assistant (tool results, assistant), user, ..."
    assert d[11] == "1 empty turn(s), first: turn 2 (user)"
    assert out["conversation_structure_turns"].to_list()[:4] == [2, 5, 0, 2]


def test_allow_ending_on_user():
    convs = [[("user", "q"), ("assistant", "a"), ("user", "q2")], [("user", "q"), ("user", "q2"), ("assistant", "a")]]
    assert _evaluate(convs, allow_ending_on_user=True)["reason"].to_list() == [None, "roles_out_of_order"]


def test_long_role_sequences_are_shortened_in_the_detail():
    conv = [("user", "q"), ("assistant", "a")] * 20 + [("assistant", "again")]
    out = _evaluate([conv])
    assert out["reason"][0] == "roles_out_of_order"
    assert out["detail"][0] == "roles uauauauauauauauauaua...uaa: expected [system] user, assistant (tool results, assistant), user, ..."


@needs_data
def test_openai_cookbook_toy_chat():
    # lines 4, 9 and 10 are the cookbook's planted "system + assistant, no user" chat (9 and 10 repeat 4)
    convs = []
    for line in (DATA / "openai_messages" / "toy_chat_fine_tuning.jsonl").read_text(encoding="utf-8").splitlines():
        convs.append([(m["role"], m["content"]) for m in json.loads(line)["messages"]])
    out = _evaluate(convs)
    flagged = [i + 1 for i, r in enumerate(out["reason"].to_list()) if r is not None]
    assert flagged == [4, 9, 10]
    assert set(out["reason"].drop_nulls()) == {"roles_out_of_order"}
    assert out["conversation_structure_turns"].to_list()[:5] == [3, 9, 2, 2, 3]


@needs_data
def test_llamafactory_preference_prompts_end_on_a_human_turn():
    rows = json.loads((DATA / "chat_llamafactory" / "dpo_en_demo.json").read_text(encoding="utf-8"))
    prompts = [[(SHAREGPT_ROLES[m["from"]], m["value"]) for m in r["conversations"]] for r in rows]
    out = _evaluate(prompts)
    single = sum(1 for p in prompts if not any(role == "assistant" for role, _ in p))
    counts = dict(out["reason"].value_counts().iter_rows())
    assert single == 194  # 114 lone human turns + 80 system + human
    assert counts == {"no_assistant_turn": single, "ends_on_user_turn": len(rows) - single}
    # the preference file is valid once the chosen answer is appended
    chosen = [p + [("assistant", r["chosen"]["value"])] for p, r in zip(prompts, rows)]
    assert _evaluate(chosen)["reason"].null_count() == len(rows)
    # and allowing a final user turn keeps the multi-turn prompts only
    assert _evaluate(prompts, allow_ending_on_user=True)["reason"].is_not_null().sum() == single


@needs_data
def test_alpaca_records_are_well_formed_except_empty_outputs():
    rows = json.loads((DATA / "alpaca" / "alpaca_4000.json").read_text(encoding="utf-8"))
    convs = [[("user", r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")), ("assistant", r["output"])] for r in rows]
    out = _evaluate(convs)
    empty = sum(1 for r in rows if not r["output"].strip() or not r["instruction"].strip())
    assert out["reason"].is_not_null().sum() == empty
    assert set(out["reason"].drop_nulls()) <= {"empty_turn"}
