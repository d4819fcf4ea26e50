"""Tool calls through chat templates: SmolLM2's (no tool support: the Hermes text convention) and a template that
renders tools natively, on the real weather and glaive conversations."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import AutoTokenizer

from chat.conversations import message_dicts
from chat.tools import template_messages, template_support
from curate.models import smollm2_tokenizer_dir
from curate.shapes import Converter

# A template in the transformers convention for tools (as Qwen2.5's and Hermes' are): tools as JSON in the system
# turn, calls rendered from message.tool_calls with dict arguments, tool turns as their own role.
NATIVE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }} {{ c.function.arguments | tojson }}</call>{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def smol():
    return AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))


@pytest.fixture(scope="module")
def native():
    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    tok.chat_template = NATIVE
    return tok


def _weather(shared_data):
    line = json.loads((shared_data / "openai_messages" / "weather_chat_fine_tuning.jsonl").read_text().splitlines()[0])
    rec = Converter().convert(line)
    return line, message_dicts(rec), rec.extra.tools


def test_the_probe_tells_the_templates_apart(smol, native):
    assert template_support(smol) == {"calls": False, "tools": False, "tool_role": True}
    assert template_support(native) == {"calls": True, "tools": True, "tool_role": True}


def test_smollm2_gets_the_calls_tools_and_results_as_text(smol, shared_data):
    line, messages, tools = _weather(shared_data)
    msgs, passed = template_messages(smol, messages, tools)
    assert passed is None and all(set(m) == {"role", "content"} for m in msgs)
    text = smol.apply_chat_template(msgs, tokenize=False)
    for call in line["messages"][1]["tool_calls"]:
        block = json.dumps({"name": call["function"]["name"], "arguments": json.loads(call["function"]["arguments"])})
        assert f"<tool_call>\n{block}\n</tool_call>" in text
    assert '"name": "get_current_weather"' in text.split("<|im_end|>")[0]  # the definitions in the system turn
    assert text.count("<tool_response>") == 3 and "San Francisco" in text
    assert "SmolLM" not in text  # the tools' system turn replaces the template's default one


def test_a_tool_template_gets_openai_calls_with_dict_arguments(native, shared_data):
    line, messages, tools = _weather(shared_data)
    before = copy.deepcopy(messages)
    msgs, passed = template_messages(native, messages, tools)
    assert messages == before  # the caller's messages are not changed
    assert passed == json.loads(tools) and msgs[1]["tool_calls"][0]["function"]["arguments"] == {"location": "San Francisco, CA", "unit": "celsius"}
    text = native.apply_chat_template(msgs, tools=passed, tokenize=False)
    assert '<call>get_current_weather {"location": "San Francisco, CA", "unit": "celsius"}</call>' in text
    assert msgs[2]["tool_call_id"] == line["messages"][1]["tool_calls"][0]["id"]


def test_glaive_conversations_render_in_both_templates(smol, native, shared_data):
    rows = json.loads((shared_data / "chat_llamafactory" / "glaive_toolcall_en_demo.json").read_text())[:40]
    conv = Converter()
    for row in rows:
        rec = conv.convert(row)
        messages = message_dicts(rec)
        for tok in (smol, native):
            msgs, passed = template_messages(tok, messages, rec.extra.tools if rec.extra else None)
            text = tok.apply_chat_template(msgs, tools=passed, tokenize=False)
            for m in messages:
                for call in m.get("tool_calls") or []:
                    assert call["function"]["name"] in text
                if m["role"] in ("user", "assistant") and m["content"]:
                    assert m["content"] in text


def test_plain_conversations_pass_through(smol):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert template_messages(smol, msgs) == (msgs, None)
