"""Chat template rendering and the loss mask, with the embedded SmolLM2 tokenizer and real data."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from curate.models import smollm2_tokenizer_dir
from chat.conversations import read_conversations
from chat.template import IGNORE_INDEX, ChatEncoder, TemplateMismatch, mask_audit

IM_END = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))


def _trained_text(tok, e):
    return tok.decode([t for t, lab in zip(e.input_ids, e.labels) if lab != IGNORE_INDEX])


def _runs(e) -> list[tuple[int, int]]:
    """(start, end) token indexes of each run of trained tokens."""
    out, start = [], None
    for i, lab in enumerate([*e.labels, IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = i
        elif lab == IGNORE_INDEX and start is not None:
            out.append((start, i))
            start = None
    return out


def _answers(msgs) -> list[str]:
    return [m["content"] for m in msgs if m["role"] == "assistant" and (m["content"] or "").strip()]


def _toy(shared_data):
    return [json.loads(x)["messages"] for x in (shared_data / "openai_messages" / "toy_chat_fine_tuning.jsonl").read_text().splitlines()]


def _straddles(tok, msgs) -> bool:
    """Whether the tokenizer, run over the whole rendering, makes a token that starts in the generation prompt
    and ends in the first answer (the prompt's newline merged with the answer's leading whitespace)."""
    k = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    prompt = tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs, tokenize=False)
    offsets = tok(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return any(s < len(prompt) < e for s, e in offsets)


def test_only_assistant_turns_and_their_end_marker_are_trained(tokenizer, shared_data):
    enc = ChatEncoder(tokenizer, 1 << 20)  # no truncation here (one record of the file is 13k characters)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    for msgs in _toy(shared_data):
        e = enc.encode(msgs)
        runs = _runs(e)
        assert [tokenizer.decode(e.input_ids[a:b]) for a, b in runs] == [c + IM_END for c in _answers(msgs)]
        for _a, b in runs:  # each run ends at the end of turn; the newline the template puts after it is glue
            assert e.input_ids[b - 1] == im_end and tokenizer.decode([e.input_ids[b]]) == "\n" and e.labels[b] == IGNORE_INDEX
        for m in msgs:
            if m["role"] != "assistant":
                assert m["content"] not in _trained_text(tokenizer, e)
        # on ordinary text (no answer starts with whitespace) the segments change nothing: the tokenizer's own
        # rendering and tokenization, token for token
        assert e.input_ids == tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]


def test_trained_tokens_are_exactly_each_answer_and_its_end_of_turn_on_real_data(tokenizer, shared_data):
    # real files through the real reader: davinci-003 answers start with "\n", " 1." or "\n\n" (the tokenizer
    # merges that whitespace with the prompt's newline), truthfulqa's with a space, the rest ordinary or multi-turn
    files = [
        ("self_instruct/predictions/text-davinci-003_predictions.jsonl", None),
        ("completion/truthfulqa_finetune_truth.jsonl", 150),
        ("alpaca/alpaca_4000.json", 150),
        ("sharegpt/fastchat_dummy_conversation.json", 100),
        ("openai_messages/toy_chat_fine_tuning.jsonl", None),
        ("openai_messages/weather_chat_fine_tuning.jsonl", None),  # tool calls, which SmolLM2's template does not render
        ("oasst/en_100_tree.jsonl", 40),
    ]
    enc = ChatEncoder(tokenizer, 1 << 20)
    checked = straddling = 0
    for name, limit in files:
        convs, _bad = read_conversations(shared_data / name, limit=limit)
        assert convs, name
        for where, msgs in convs:
            e = enc.encode(msgs)
            assert [tokenizer.decode(e.input_ids[a:b]) for a, b in _runs(e)] == [c + IM_END for c in _answers(msgs)], where
            # the prompt is tokenized alone, as at generation time: the first answer's tokens follow its ids exactly
            k = next((i for i, m in enumerate(msgs) if m["role"] == "assistant" and m["content"].strip()), None)
            if k is not None:
                prompt = tokenizer(tokenizer.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
                assert e.input_ids[: len(prompt)] == prompt and _runs(e)[0][0] == len(prompt), where
                straddling += _straddles(tokenizer, msgs)
            checked += 1
    assert checked > 500 and straddling > 50  # the data holds the case that lost a first token


def test_end_of_turn_is_trained_although_it_is_the_pad_token(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids(IM_END)  # the trap
    e = ChatEncoder(tokenizer, 512).encode([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert im_end in [lab for lab in e.labels if lab != IGNORE_INDEX]


def test_the_span_ends_at_the_end_of_turn_token_of_any_template(tokenizer):
    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    # turns that end in another special token (the eos here) and two newlines of glue
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    e = ChatEncoder(tok, 512).encode(msgs)
    assert [tok.decode(e.input_ids[a:b]) for a, b in _runs(e)] == ["b<|endoftext|>", "d<|endoftext|>"]
    # turns that end in no special token: the whole turn's rendering stays the span
    tok.chat_template = (
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant: {% endif %}"
    )
    e = ChatEncoder(tok, 512).encode(msgs)
    assert [tok.decode(e.input_ids[a:b]) for a, b in _runs(e)] == ["b\n\n", "d\n\n"]


def test_empty_answers_train_nothing(tokenizer, shared_data):
    enc, everything = ChatEncoder(tokenizer, 512), ChatEncoder(tokenizer, 512, train_on_inputs=True)
    for answer in ("", "  \n ", None):
        msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}]
        for encoder in (enc, everything):
            e = encoder.encode(msgs)
            assert e.n_trainable == 0 and e.answers == 0 and e.empty_answers == 1
            assert e.reason == "no trainable token: every assistant answer is empty"
    # an empty answer next to a real one: only the real one is trained, its end of turn included
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello"}]
    e = enc.encode(msgs)
    assert [tokenizer.decode(e.input_ids[a:b]) for a, b in _runs(e)] == ["Hello" + IM_END] and e.empty_answers == 1
    # train_on_inputs trains the prompts, never the empty answer's end of turn (it would teach stopping at once)
    e = everything.encode(msgs)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    gen_prompt = len(tokenizer.apply_chat_template(msgs[:1], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
    assert e.input_ids[gen_prompt] == im_end and e.labels[gen_prompt] == IGNORE_INDEX
    assert e.n_trainable == len(e.input_ids) - 1
    # real data: alpaca_4000 holds records whose output is empty
    convs, _ = read_conversations(shared_data / "alpaca" / "alpaca_4000.json")
    empty = [(w, m) for w, m in convs if not m[-1]["content"].strip()]
    assert len(empty) >= 3
    assert {enc.encode(m).reason for _w, m in empty} == {"no trainable token: every assistant answer is empty"}


def test_train_on_inputs_and_truncation(tokenizer):
    msgs = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "answer"}]
    full = ChatEncoder(tokenizer, 4096, train_on_inputs=True).encode(msgs)
    assert full.labels == full.input_ids and not full.truncated
    cut = ChatEncoder(tokenizer, 64).encode(msgs)
    assert cut.truncated and len(cut.input_ids) == 64 and cut.n_trainable == 0  # the answer was cut away
    assert cut.reason == "truncated: no complete answer within max_seq_len"


def test_truncation_cuts_at_a_turn_drops_or_cuts_tokens_and_says_so(tokenizer, shared_data):
    msgs = next(m for m in _toy(shared_data) if len(_answers(m)) == 4)  # a real four-answer conversation
    whole = ChatEncoder(tokenizer, 1 << 20).encode(msgs)
    (a1, e1), (a2, e2), *_ = _runs(whole)
    limit = (a2 + e2) // 2  # inside the second answer
    assert e1 < limit < e2

    turn = ChatEncoder(tokenizer, limit).encode(msgs)  # the default: cut after the last answer that fits
    assert turn.cut == "turn" and turn.truncated and not turn.half_answer and turn.reason is None
    assert turn.input_ids == whole.input_ids[:e1] and turn.labels == whole.labels[:e1]
    assert [tokenizer.decode(turn.input_ids[a:b]) for a, b in _runs(turn)] == [_answers(msgs)[0] + IM_END]

    tokens = ChatEncoder(tokenizer, limit, truncation="tokens").encode(msgs)  # the old behaviour, now reported
    assert tokens.cut == "tokens" and tokens.half_answer and len(tokens.input_ids) == limit
    assert tokens.labels == whole.labels[:limit] and tokens.labels[-1] != IGNORE_INDEX  # a half answer, no end of turn

    drop = ChatEncoder(tokenizer, limit, truncation="drop").encode(msgs)
    assert drop.cut == "drop" and drop.n_trainable == 0
    assert drop.reason == f"longer than max_seq_len: {len(whole.input_ids)} tokens (truncation: drop)"

    short = ChatEncoder(tokenizer, e1 - 1).encode(msgs)  # not even the first answer fits
    assert short.n_trainable == 0 and short.reason == "truncated: no complete answer within max_seq_len"
    fits = ChatEncoder(tokenizer, len(whole.input_ids), truncation="drop").encode(msgs)
    assert fits.cut is None and fits.labels == whole.labels
    with pytest.raises(ValueError, match="truncation must be one of"):
        ChatEncoder(tokenizer, 64, truncation="middle")


def test_special_token_text_in_content_is_text(tokenizer, shared_data):
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    enc = ChatEncoder(tokenizer, 1024)
    msgs = [{"role": "user", "content": "Write <|im_end|> and <|im_start|>user please"},
            {"role": "assistant", "content": "Here: <|im_end|>"}]
    e = enc.encode(msgs)
    assert e.special_text
    # system, user and assistant turns end in the control token; the content's "<|im_end|>" is not one
    assert e.input_ids.count(im_end) == 3 and e.input_ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    [(a, b)] = _runs(e)
    assert tokenizer.decode(e.input_ids[a:b]) == "Here: <|im_end|>" + IM_END and e.input_ids[a:b].count(im_end) == 1
    assert not enc.encode([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]).special_text
    # real legacy completion files end every completion with "<|endoftext|>" (SmolLM2's token 0)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    rows = [json.loads(x) for x in (shared_data / "self_instruct" / "t0_prompt_completion" / "xsum_DOC_tldr.jsonl").read_text().splitlines()[:40]]
    for r in rows:
        msgs = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]
        e = enc.encode(msgs)
        assert e.special_text and eot not in e.input_ids
        assert [tokenizer.decode(e.input_ids[a:b]) for a, b in _runs(e)] == [r["completion"] + IM_END]


def test_message_keys_and_tools_reach_the_template(tokenizer):
    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    tok.chat_template = (
        "{% if tools %}<|im_start|>tools\n{{ tools | length }} tool(s)<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}{{ ' ' + m['name'] if m.get('name') else '' }}\n"
        "{{ 'call ' + m['tool_calls'][0]['function']['name'] if m.get('tool_calls') else '' }}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]
    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "name": "weather", "tool_call_id": "1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ]
    enc = ChatEncoder(tok, 512)
    text, spans = enc.render(msgs, tools=tools)
    assert text.startswith("<|im_start|>tools\n1 tool(s)") and "<|im_start|>tool weather\nsunny" in text and "call weather<|im_end|>" in text
    assert len(spans) == 2 and msgs[1]["content"] is None  # the caller's messages are left as they were
    e = enc.encode(msgs, tools=tools)
    assert e.text == text and "tools" not in enc.render(msgs)[0]
    # a tool call is something to learn where the template renders it; SmolLM2's does not: that turn is empty
    assert [tok.decode(e.input_ids[a:b]) for a, b in _runs(e)] == ["call weather<|im_end|>", "Sunny.<|im_end|>"]
    e = ChatEncoder(tokenizer, 512).encode(msgs, tools=tools)
    assert [tokenizer.decode(e.input_ids[a:b]) for a, b in _runs(e)] == ["Sunny.<|im_end|>"] and e.empty_answers == 1


def test_mask_audit_flags_records_with_nothing_to_learn(tokenizer):
    audit = mask_audit(
        ChatEncoder(tokenizer, 512),
        [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], [{"role": "user", "content": "no answer"}],
         [{"role": "user", "content": "Q <|im_start|>"}, {"role": "assistant", "content": " "}]],
    )
    assert audit["no_trainable"] == [1, 2] and audit["special_text"] == [2]
    assert audit["reasons"] == {1: "no trainable token (no assistant turn)", 2: "no trainable token: every assistant answer is empty"}
    assert "⟦A<|im_end|>⟧\n" in audit["examples"][0] and "⟦" not in audit["examples"][1]
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


def _sentencepiece_style_tokenizer():
    """A character-level tokenizer with the Metaspace pre-tokenizer of Llama 2 / Mistral tokenizers (built with the
    tokenizers library: no such model is embedded), which marks the start of every text it is given with "▁", and
    a Llama 2 style template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for c in sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?:\n▁")):
        vocab.setdefault(c, len(vocab))
    merges = [("▁", "H"), ("▁H", "i"), ("\n", "\n")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    model = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": ["[INST]", "[/INST]"]})
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}"
    )
    return tok


def test_a_tokenizer_that_marks_each_text_start_tokenizes_segments_as_continuations():
    tok = _sentencepiece_style_tokenizer()
    assert tok.decode(tok("Hi", add_special_tokens=False)["input_ids"] + tok("there", add_special_tokens=False)["input_ids"]) != "Hithere"
    enc = ChatEncoder(tok, 512)
    assert enc.anchor == ("</s>", tok.eos_token_id)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi there"}, {"role": "user", "content": "And 2?"},
            {"role": "assistant", "content": "\n\nTwo."}]
    e = enc.encode(msgs)
    # no "▁" slipped in at a segment's start: the ids spell the rendering, and each answer its own text
    assert tok.decode(e.input_ids, skip_special_tokens=False) == e.text
    assert [tok.decode(e.input_ids[a:b], skip_special_tokens=False) for a, b in _runs(e)] == ["Hi there</s>", "\n\nTwo.</s>"]
    prompt = tok(tok.apply_chat_template(msgs[:1], tokenize=False), add_special_tokens=False)["input_ids"]
    assert e.input_ids[: len(prompt)] == prompt and _runs(e)[0][0] == len(prompt)


def test_a_prompt_holding_special_token_text_reaches_generation_as_text(tokenizer, shared_data):
    from chat.template import ChatEncoder

    encoder = ChatEncoder(tokenizer, max_seq_len=1 << 30)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tricky = [{"role": "user", "content": "Explain what <|im_end|> does in ChatML."}]
    ids = encoder.prompt_ids(tricky)
    rendered = tokenizer.apply_chat_template(tricky, add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(ids) == rendered
    assert ids.count(im_end) == rendered.count("<|im_end|>") - 1  # the one in the question is text
    # plain prompts of real data: exactly the tokenizer's own ids
    rows = json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[:50]
    for r in rows:
        conv = [{"role": "user", "content": r["instruction"]}]
        text = tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert encoder.prompt_ids(conv) == tokenizer(text, add_special_tokens=False)["input_ids"]
