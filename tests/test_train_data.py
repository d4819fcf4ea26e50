"""Chat template rendering and the loss mask, with the embedded SmolLM2 tokenizer."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from curate.models import smollm2_tokenizer_dir
from chat.template import IGNORE_INDEX, ChatEncoder, TemplateMismatch, mask_audit


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))


def _trained_text(tok, e):
    return tok.decode([t for t, lab in zip(e.input_ids, e.labels) if lab != IGNORE_INDEX])


def test_only_assistant_turns_and_their_end_marker_are_trained(tokenizer, shared_data):
    rows = [json.loads(x) for x in (shared_data / "openai_messages" / "toy_chat_fine_tuning.jsonl").read_text().splitlines()]
    enc = ChatEncoder(tokenizer, 1 << 20)  # no truncation here (one record of the file is 13k characters)
    for row in rows:
        msgs = row["messages"]
        e = enc.encode(msgs)
        want = "".join(m["content"] + "<|im_end|>\n" for m in msgs if m["role"] == "assistant")
        assert _trained_text(tokenizer, e) == want
        for m in msgs:
            if m["role"] != "assistant":
                assert m["content"] not in _trained_text(tokenizer, e)
        # the rendering is the tokenizer's own template, token for token
        assert e.input_ids == tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]


def test_end_of_turn_is_trained_although_it_is_the_pad_token(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")  # the trap
    e = ChatEncoder(tokenizer, 512).encode([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in [lab for lab in e.labels if lab != IGNORE_INDEX]


def test_train_on_inputs_and_truncation(tokenizer):
    msgs = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "answer"}]
    full = ChatEncoder(tokenizer, 4096, train_on_inputs=True).encode(msgs)
    assert full.labels == full.input_ids and not full.truncated
    cut = ChatEncoder(tokenizer, 64).encode(msgs)
    assert cut.truncated and len(cut.input_ids) == 64 and cut.n_trainable == 0  # the answer was cut away


def test_mask_audit_flags_records_with_nothing_to_learn(tokenizer):
    audit = mask_audit(
        ChatEncoder(tokenizer, 512),
        [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], [{"role": "user", "content": "no answer"}]],
    )
    assert audit["no_trainable"] == [1]
    assert "⟦A<|im_end|>" in audit["examples"][0] and "⟦" not in audit["examples"][1]
    assert audit["trainable_share"][0] > 0 and audit["trainable_share"][1] == 0


def test_a_template_that_rewrites_history_is_refused(tokenizer):
    # like reasoning templates that strip earlier turns' thoughts: turn 1 renders differently once turn 2 exists
    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}<a>{{ m['content'].split('</think>')[-1] }}</a>"
        "{% else %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    msgs = [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think>b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
    ]
    with pytest.raises(TemplateMismatch):
        ChatEncoder(tok, 512).encode(msgs)
