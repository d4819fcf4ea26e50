"""Preference pairs, KTO records, tool calls and conversation trees: read, checked, exported and read back, on the
real LLaMA-Factory, OpenAI and OpenAssistant files of shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import polars as pl
import pytest

from curate.frames import with_derived
from curate.shapes import Converter, ShapeError, build_frame
from curate.stages.conversation import ConversationStructure
from curate.stages.preference import PreferencePair
from curate.trees import all_branches, ranked_replies, tree_root

JUDGING_STAGES = {"response_length", "unique_words", "gopher_repetition", "refusal"}


def _rows(res, paths: dict) -> list[dict]:
    """The rows of a run's export files (split -> path), in order."""
    return [json.loads(x) for p in paths.values() for x in (res.output_dir / p).read_text().splitlines()]


def _frame(records: list, **converter) -> pl.DataFrame:
    """Canonical rows of parsed records, as `curate run` builds them."""
    conv = Converter(**converter)
    made = [m for r in records for m in conv.records(r)]
    return with_derived(build_frame(list(range(len(made))), "mem", list(range(1, len(made) + 1)), *zip(*made)))


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, shared_data):
    """One run of the default stages over every LLaMA-Factory, OpenAI-messages and OpenAssistant file."""
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    tmp = tmp_path_factory.mktemp("mixed")
    cfg = parse_config({"name": "mixed", "tokenizer": None, "inputs": [
        {"path": str(shared_data / "chat_llamafactory")}, {"path": str(shared_data / "openai_messages")},
        {"path": str(shared_data / "oasst")}]}, tmp)
    res = Pipeline(cfg, progress=False).run()
    ledger = pl.read_parquet(res.output_dir / "ledger.parquet").with_columns(file=pl.col("source_file").str.extract(r"([^/]+)$"))
    return res, ledger


def test_every_record_is_recognized_and_counted_once(mixed_run, shared_data):
    res, ledger = mixed_run
    s = res.summary
    assert s["invariant_ok"] and s["quarantined"] == 0
    expected_inputs = sum(len(json.loads(p.read_text())) for p in (shared_data / "chat_llamafactory").glob("*.json"))
    expected_inputs += sum(len(p.read_text().splitlines()) for d in ("openai_messages", "oasst") for p in (shared_data / d).glob("*.jsonl"))
    assert s["inputs"] == expected_inputs == ledger.height  # a pair, a KTO record, a tree: one unit each
    assert set(s["shapes"]) == {"llamafactory_preference", "kto", "sharegpt", "openai", "oasst_tree", "prompt_only"}
    dpo = json.loads((shared_data / "chat_llamafactory" / "dpo_en_demo.json").read_text())
    kto = json.loads((shared_data / "chat_llamafactory" / "kto_en_demo.json").read_text())
    assert s["kinds"]["preference"]["records"] == len(dpo) and s["kinds"]["kto"]["records"] == len(kto)
    # the bare prompts are recognized, and rejected for having nothing to learn
    lottery = ledger.filter(pl.col("file") == "prompt_lottery_en_250_text.jsonl")
    assert lottery.height == 250 and set(lottery["reason"]) == {"no_assistant_turn"}
    # the old reasons that blamed the data are gone: no preference pair is short of an answer
    dpo_rows = ledger.filter(pl.col("file") == "dpo_en_demo.json")
    assert not set(dpo_rows["reason"].drop_nulls()) & {"no_assistant_turn", "ends_on_user_turn"}
    report = (res.output_dir / "report.md").read_text()
    assert "| `preference` | 300 |" in report and "llamafactory_preference" in report


def test_kto_labels_are_kept_and_bad_answers_are_not_filtered_for_quality(mixed_run, shared_data):
    res, ledger = mixed_run
    kto = json.loads((shared_data / "chat_llamafactory" / "kto_en_demo.json").read_text())
    rows = ledger.filter(pl.col("file") == "kto_en_demo.json").sort("source_line")
    undesirable = {i + 1 for i, r in enumerate(kto) if r["label"] is False}
    bad_rejects = rows.filter(pl.col("source_line").is_in(list(undesirable)) & pl.col("stage").is_in(list(JUDGING_STAGES)))
    assert bad_rejects.height == 0  # "Ooh ooh ah ah" is the point of an undesirable example
    exported = _rows(res, res.summary["outputs"]["kto"]["jsonl"])
    assert len(exported) == rows.filter(pl.col("status") == "kept").height
    for row in exported:
        line = int(row["source"].rsplit(":", 1)[1])
        assert row["label"] is kto[line - 1]["label"]
        words = " ".join(kto[line - 1]["messages"][-1]["content"].split())  # the reader normalizes whitespace
        assert row["prompt"][-1]["role"] == "user" and " ".join(row["completion"][0]["content"].split()) == words
    # and no KTO answer, good or bad, leaks into the conversations an SFT run reads
    sft = _rows(res, res.summary["outputs"]["jsonl"])
    assert sft and not [r for r in sft if "kto_en_demo" in r["source"]]


def test_glaive_tool_calls_are_checked_against_their_schemas(mixed_run, shared_data):
    res, ledger = mixed_run
    rows = json.loads((shared_data / "chat_llamafactory" / "glaive_toolcall_en_demo.json").read_text())
    violating = set()
    for line, r in enumerate(rows, 1):  # the check, written independently: every call against its tool's schema
        tools = {t["name"]: t.get("parameters") for t in json.loads(r["tools"] or "[]")}
        for turn in r["conversations"]:
            if turn["from"] == "function_call":
                call = json.loads(turn["value"])
                schema = tools.get(call["name"])
                if schema and list(jsonschema.Draft202012Validator(schema).iter_errors(call.get("arguments", {}))):
                    violating.add(line)
    glaive = ledger.filter(pl.col("file") == "glaive_toolcall_en_demo.json")
    flagged = set(glaive.filter(pl.col("reason") == "tool_arguments_schema")["source_line"].to_list())
    first_stage = set(glaive.filter(pl.col("stage") == "conversation_structure")["source_line"].to_list())
    assert violating and flagged == violating & (flagged | (set(glaive["source_line"].to_list()) - first_stage))
    # every kept tool conversation round-trips with its calls and their answers linked
    sft = _rows(res, res.summary["outputs"]["jsonl"])
    tool_rows = [r for r in sft if any(m.get("tool_calls") for m in r["messages"])]
    assert tool_rows and all(isinstance(r["tools"], (str, type(None))) for r in tool_rows)
    for r in tool_rows:
        ids = [c["id"] for m in r["messages"] for c in m.get("tool_calls") or []]
        answers = [m["tool_call_id"] for m in r["messages"] if m["role"] == "tool"]
        assert answers and set(answers) <= set(ids)
        for m in r["messages"]:  # a plain turn stays {role, content}
            if m["role"] in ("user", "system"):
                assert {k for k, v in m.items() if v is not None} == {"role", "content"}


def test_openai_tool_calls_keep_their_ids_and_tools(shared_data):
    lines = [json.loads(x) for x in (shared_data / "openai_messages" / "weather_chat_fine_tuning.jsonl").read_text().splitlines()]
    frame = _frame(lines)
    first = frame.row(0, named=True)
    calls = first["messages"][1]["tool_calls"]
    assert [c["id"] for c in calls] == [c["id"] for c in lines[0]["messages"][1]["tool_calls"]]
    assert [m["tool_call_id"] for m in first["messages"] if m["role"] == "tool"] == [c["id"] for c in calls]
    assert json.loads(first["tools"]) == lines[0]["tools"]
    assert "get_current_weather(" in first["response_text"] and first["kind"] == "sft"
    assert ConversationStructure().evaluate(frame)["reason"].null_count() == frame.height


def _conv(*turns, tools=None):
    rec = {"messages": [dict(t) for t in turns]}
    if tools is not None:
        rec["tools"] = tools
    return rec


WEATHER_TOOL = [{"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["city"]}}}]


def _call(cid, name="weather", args='{"city": "Oslo"}'):
    return {"role": "assistant", "content": None, "tool_calls": [{"id": cid, "type": "function", "function": {"name": name, "arguments": args}}]}


U = {"role": "user", "content": "Weather in Oslo?"}
A = {"role": "assistant", "content": "It is 3 degrees."}


@pytest.mark.parametrize(
    ("record", "reason", "detail"),
    [
        (_conv(U, _call("c1"), {"role": "tool", "tool_call_id": "c1", "content": "3C"}, A, tools=WEATHER_TOOL), None, None),
        (_conv(U, _call("c1"), tools=WEATHER_TOOL), None, None),  # a final call may stay open: the example teaches it
        (_conv(U, _call("c1"), {"role": "tool", "tool_call_id": "c1", "content": "3C"}), "ends_on_tool_result", "never read"),
        (_conv(U, _call("c1"), A), "roles_out_of_order", None),
        (_conv(U, _call("c1"), {"role": "tool", "tool_call_id": "c2", "content": "3C"}, A), "tool_result_mismatch", "no call has this id"),
        (_conv(U, _call("c1", args="{city: Oslo}"), {"role": "tool", "tool_call_id": "c1", "content": "3C"}, A), "invalid_tool_arguments", None),
        (_conv(U, _call("c1", name="stocks"), {"role": "tool", "tool_call_id": "c1", "content": "3C"}, A, tools=WEATHER_TOOL),
         "unknown_tool", "stocks"),
        (_conv(U, _call("c1", args='{"unit": "k"}'), {"role": "tool", "tool_call_id": "c1", "content": "3C"}, A, tools=WEATHER_TOOL),
         "tool_arguments_schema", "weather"),
        (_conv({"role": "tool", "tool_call_id": "c1", "content": "3C"}, U, A), "roles_out_of_order", None),
    ],
)
def test_tool_call_consistency(record, reason, detail):
    out = ConversationStructure().evaluate(_frame([record]))
    assert out["reason"][0] == reason
    if detail:
        assert detail in out["detail"][0]


def test_two_calls_one_unanswered():
    two = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "b", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}]}
    rec = _conv(U, two, {"role": "tool", "tool_call_id": "a", "content": "3C"}, A)
    out = ConversationStructure().evaluate(_frame([rec]))
    assert out["reason"][0] == "unanswered_tool_call" and "(b)" in out["detail"][0]


def test_sharegpt_function_calls_become_openai_tool_calls():
    rec = {"conversations": [{"from": "human", "value": "Convert 5 USD"},
                             {"from": "function_call", "value": '{"name": "convert", "arguments": {"amount": 5}}'},
                             {"from": "observation", "value": '{"eur": 4.6}'}, {"from": "gpt", "value": "4.6 EUR"}],
           "tools": '[{"name": "convert", "parameters": {"type": "object", "properties": {"amount": {"type": "number"}}}}]'}
    made = Converter().convert(rec)
    assert made.roles == ["user", "assistant", "tool", "assistant"] and made.shape == "sharegpt"
    call = made.extra.turns[1]["tool_calls"][0]
    assert call["function"] == {"name": "convert", "arguments": '{"amount":5}'}
    assert made.extra.turns[2] == {"tool_call_id": call["id"], "name": "convert"}
    assert json.loads(made.extra.tools) == [{"type": "function", "function": json.loads(rec["tools"])[0]}]


def test_preference_layouts_agree():
    prompt, good, bad = "Name a prime.", "Seven.", "Eight."
    layouts = [
        {"conversations": [{"from": "human", "value": prompt}], "chosen": {"from": "gpt", "value": good}, "rejected": {"from": "gpt", "value": bad}},
        {"prompt": prompt, "chosen": good, "rejected": bad},
        {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": good}],
         "rejected": [{"role": "assistant", "content": bad}]},
        {"chosen": f"\n\nHuman: {prompt}\n\nAssistant: {good}", "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {bad}"},
        {"chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": good}],
         "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": bad}]},
    ]
    frame = _frame(layouts)
    assert frame["shape"].to_list() == ["llamafactory_preference", "trl_preference", "trl_preference", "implicit_preference", "implicit_preference"]
    assert frame["id"].n_unique() == 1  # one pair, whatever the layout
    row = frame.row(0, named=True)
    assert (row["kind"], row["prompt_turns"], row["response_text"], row["rejected_text"]) == ("preference", 1, good, bad)
    # a pair is its own record: the same chosen answer with another rejected one is a different pair
    other = _frame([{"prompt": prompt, "chosen": good, "rejected": "Nine."}])
    assert other["id"][0] != row["id"]


def test_preference_pair_reasons():
    frame = _frame([
        {"prompt": "p", "chosen": "same answer", "rejected": "same answer"},
        {"prompt": "p", "chosen": [{"role": "assistant", "content": "fine"}], "rejected": [{"role": "assistant", "content": " "}]},
        {"prompt": "p", "chosen": "the sky is blue today", "rejected": "the sky is blue today!"},
        {"prompt": "p", "chosen": "Paris is the capital.", "rejected": "Lyon, I think."},
        {"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "a"}], "label": False},
    ])
    out = PreferencePair().evaluate(frame)
    assert out["reason"].to_list() == ["identical_completions", "empty_rejected", None, None, None]
    assert out["preference_pair_word_overlap"][2] == 1.0 and out["preference_pair_word_overlap"][4] is None
    strict = PreferencePair(PreferencePair.Params(max_word_overlap=0.9)).evaluate(frame)
    assert strict["reason"][2] == "near_identical_completions"


def test_kto_layouts_and_label_checks():
    frame = _frame([
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": True},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "b"}], "kto_tag": False},
        {"prompt": "q", "completion": "c", "label": False},
    ])
    assert frame["kind"].to_list() == ["kto"] * 3 and frame["label"].to_list() == [True, False, False]
    assert frame["prompt_turns"].to_list() == [1, 1, 1]
    with pytest.raises(ShapeError, match="must be true or false"):
        Converter("kto").convert({"prompt": "q", "completion": "c", "label": 1})
    # a category label is no KTO label: such a record is a plain conversation or prompt/completion
    conv = Converter()
    assert conv.convert({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": "sports"}).shape == "openai"
    assert conv.convert({"prompt": "q", "completion": "c", "label": 1}).shape == "prompt_completion"
    assert conv.convert({"prompt": "q", "completion": "c", "label": True}).shape == "kto"


def test_oasst_trees_three_ways(shared_data):
    trees = [json.loads(x) for x in (shared_data / "oasst" / "en_100_tree.jsonl").read_text().splitlines()]
    messages = [json.loads(x) for x in (shared_data / "oasst" / "en_100_message.jsonl").read_text().splitlines()]
    best = _frame(trees)
    assert best.height == len(trees) and set(best["kind"]) == {"sft"}
    assert best["messages"].list.last().struct.field("role").to_list() == ["assistant"] * len(trees)
    # the message export holds the same trees: the same conversations
    assert _frame(messages)["id"].to_list() == best["id"].to_list()
    # best = rank 0 at every level (checked here by walking the raw tree)
    root = tree_root(trees[0])
    node, expected = root, [root["text"]]
    while node.get("replies"):
        node = min((r for r in node["replies"] if not r.get("deleted")), key=lambda r: r.get("rank", 99))
        expected.append(node["text"])
    while len(expected) > 1 and len(expected) % 2:  # a conversation ends on an answer
        expected.pop()
    assert [m["content"] for m in best.row(0, named=True)["messages"]] == [t.strip() for t in expected]
    meta = json.loads(best["meta"][0])
    assert meta["message_tree_id"] == trees[0]["message_tree_id"] and meta["oasst_synthetic"] is True

    every = _frame(trees, trees="all")
    assert every.height == sum(len(all_branches(tree_root(t))) for t in trees) > best.height
    pairs = _frame(trees, trees="pairs")
    expected_pairs = 0
    stack = [tree_root(t) for t in trees]
    while stack:  # every prompter message with k ranked assistant replies gives k - 1 pairs
        node = stack.pop()
        replies = ranked_replies(node)
        if node["role"] == "prompter":
            expected_pairs += max(len([r for r in replies if r.get("rank") is not None]) - 1, 0)
        stack += replies
    assert pairs.height == expected_pairs and set(pairs["kind"]) == {"preference"}
    assert (pairs["rejected"].list.first().struct.field("role") == "assistant").all()
    assert (PreferencePair().evaluate(pairs)["reason"].null_count()) == pairs.height


def test_exports_load_with_datasets_read_back_the_same_and_train_with_trl(mixed_run, tmp_path):
    from datasets import load_dataset

    res, _ = mixed_run
    out = res.summary["outputs"]
    files = {"sft": out["jsonl"]["train"], "preference": out["preference"]["jsonl"]["train"], "kto": out["kto"]["jsonl"]["train"]}
    loaded = {k: load_dataset("json", data_files=str(res.output_dir / v), split="train") for k, v in files.items()}
    assert {"prompt", "chosen", "rejected"} <= set(loaded["preference"].column_names)
    assert {"prompt", "completion", "label"} <= set(loaded["kto"].column_names)
    assert {"messages", "tools"} <= set(loaded["sft"].column_names)
    # curate reads its own exports back as the same records (same content ids)
    for kind, path in files.items():
        rows = [json.loads(x) for x in (res.output_dir / path).read_text().splitlines()]
        again = _frame(rows)
        assert again["id"].to_list() == [r["id"] for r in rows], kind
        assert set(again["kind"]) == {kind}

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from curate.models import smollm2_model_dir

    base = str(smollm2_model_dir())
    tok = AutoTokenizer.from_pretrained(base)
    common = {"max_steps": 1, "report_to": [], "max_length": 256, "save_strategy": "no", "use_cpu": True}
    pairs = loaded["preference"].select(range(4))
    dpo = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(base), args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
                     train_dataset=pairs, processing_class=tok)
    # TRL drops pairs its max_length cuts to nothing, so match each prepared row to its pair by the prompt's last turn
    asked = [p["prompt"][-1]["content"][:40] for p in pairs]
    prepared = [tok.decode(row["prompt_ids"] if "prompt_ids" in row else row["prompt_input_ids"]) for row in dpo.train_dataset]
    assert prepared and all(sum(text.count(a) for a in asked) == 1 for text in prepared)  # the template wrote each prompt once
    kto = KTOTrainer(model=AutoModelForCausalLM.from_pretrained(base), args=KTOConfig(output_dir=str(tmp_path / "kto"), **common),
                     train_dataset=loaded["kto"].select(range(4)), processing_class=tok)
    assert {"prompt_ids", "completion_ids", "label"} <= set(kto.train_dataset.column_names)


def test_pairs_keep_together_and_dedup_sees_both_sides(tmp_path, run_config, shared_data):
    alpaca = [r for r in json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text()) if not r["input"] and len(r["output"]) > 80][:41]
    rows = []
    for i, r in enumerate(alpaca[:40]):  # each prompt with the same chosen answer and two different rejected ones: two pairs
        prompt, chosen = [{"role": "user", "content": r["instruction"]}], [{"role": "assistant", "content": r["output"]}]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": [{"role": "assistant", "content": alpaca[i + 1]["output"]}]})
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": [{"role": "assistant", "content": " ".join(r["output"].split()[::-1])}]})
    rows.append(dict(rows[0]))  # one exact copy
    Path(tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_config({"inputs": [{"path": "pairs.jsonl"}], "stages": ["preference_pair", "exact_dedup", "minhash_dedup"]})
    s = res.summary
    assert s["kinds"]["preference"]["kept"] == 80 and s["stages"][1]["rejected"] == 1
    ledger = pl.read_parquet(res.output_dir / "ledger.parquet")
    assert ledger.filter(pl.col("status") == "rejected")["source_line"].to_list() == [81]
    exported = _rows(res, s["outputs"]["preference"]["jsonl"])
    assert len(exported) == 80 and all({"prompt", "chosen", "rejected"} <= set(r) for r in exported)


def test_a_plain_conversation_has_one_dedup_key_whatever_its_batch_holds(tmp_path, run_config, shared_data):
    alpaca = json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[:30]
    (tmp_path / "plain.json").write_text(json.dumps(alpaca))
    weather = (shared_data / "openai_messages" / "weather_chat_fine_tuning.jsonl").read_text().splitlines()[0]
    copy = {"messages": [{"role": "user", "content": alpaca[3]["instruction"] + (f"\n\n{alpaca[3]['input']}" if alpaca[3]["input"] else "")},
                         {"role": "assistant", "content": alpaca[3]["output"]}]}
    (tmp_path / "mixed.jsonl").write_text(weather + "\n" + json.dumps(copy) + "\n")  # a batch with tool calls
    res = run_config({"inputs": [{"path": "plain.json"}, {"path": "mixed.jsonl"}], "stages": ["exact_dedup"]})
    ledger = pl.read_parquet(res.output_dir / "ledger.parquet")
    dup = ledger.filter(pl.col("reason") == "exact_duplicate")
    assert dup.select("source_file", "source_line").rows() == [("mixed.jsonl", 2)]


def test_pii_is_redacted_on_both_sides_of_a_pair_and_in_tool_results(tmp_path, run_config):
    from curate.stages.pii import PII

    rows = [
        {"prompt": "Who do I write to?", "chosen": "Write to the support desk.", "rejected": "Write to jane.roe@gmail.com or call 415-555-0199 x2."},
        _conv(U, _call("c1"), {"role": "tool", "tool_call_id": "c1", "content": "owner: bob.stone@outlook.com"}, A, tools=WEATHER_TOOL),
    ]
    out = PII(PII.Params(action="redact")).evaluate(_frame(rows))
    assert out["rejected"][0][0]["content"].startswith("Write to [EMAIL] or call")
    assert "gmail" not in out["rejected_text"][0] and out["pii_count"][0] >= 1
    assert out["messages"][1][2]["content"] == "owner: [EMAIL]" and out["messages"][1][2]["tool_call_id"] == "c1"
    assert out["messages"][1][1]["tool_calls"][0]["id"] == "c1"  # the rewrite keeps the other fields of a turn
    # and through a run: the stored and exported rejected side is the redacted one
    Path(tmp_path / "p.jsonl").write_text(json.dumps(rows[0]) + "\n")
    res = run_config({"inputs": [{"path": "p.jsonl"}], "stages": [{"pii": {"action": "redact"}}], "splits": {"train": 1, "validation": 0, "test": 0}})
    exported = _rows(res, res.summary["outputs"]["preference"]["jsonl"])
    assert "gmail" not in json.dumps(exported) and "[EMAIL]" in exported[0]["rejected"][0]["content"]


def test_oasst_pairs_of_one_prompt_share_a_split_and_the_ledger_counts_each(tmp_path, run_config, shared_data):
    trees = shared_data / "oasst" / "en_100_tree.jsonl"
    res = run_config({"inputs": [{"path": str(trees), "trees": "pairs"}], "stages": ["preference_pair"]})
    s = res.summary
    expected = _frame([json.loads(x) for x in trees.read_text().splitlines()], trees="pairs").height
    assert s["invariant_ok"] and s["inputs"] == expected and s["kinds"]["preference"]["records"] == expected
    ledger = pl.read_parquet(res.output_dir / "ledger.parquet")
    assert ledger["source_line"].n_unique() < ledger.height  # several pairs per tree line, one ledger row each
    rows = _rows(res, s["outputs"]["preference"]["jsonl"])
    splits = {}
    for split, path in s["outputs"]["preference"]["jsonl"].items():
        for x in (res.output_dir / path).read_text().splitlines():
            r = json.loads(x)
            splits.setdefault(json.dumps(r["prompt"]), set()).add(split)
    assert len(rows) == expected and all(len(v) == 1 for v in splits.values())  # one prompt, one split
    assert len({frozenset(v) for v in splits.values()}) > 1  # and the prompts do spread over the splits
