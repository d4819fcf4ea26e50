"""Batched generation (chat/generate.py) on the embedded SmolLM2: left-padded batches give each prompt
the answer it gets alone, in input order, and stop at the chat template's end-of-turn."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def smol():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.models import smollm2_model_dir

    path = str(smollm2_model_dir())
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def test_batched_greedy_answers_equal_one_at_a_time(smol, shared_data):
    from chat.generate import generate, render_prompts, stop_token_ids

    model, tok = smol
    rows = json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[:6]
    convs = [[{"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")}] for r in rows]
    batched = generate(model, tok, convs, max_new_tokens=24, batch_size=4)
    alone = []
    for text in render_prompts(tok, convs):  # the seeds' loop, greedy: one prompt per generate call
        x = tok(text, return_tensors="pt", add_special_tokens=False)
        y = model.generate(**x, max_new_tokens=24, do_sample=False, eos_token_id=stop_token_ids(tok, model), pad_token_id=tok.pad_token_id)
        alone.append(tok.decode(y[0, x["input_ids"].shape[1] :], skip_special_tokens=True))
    assert batched == alone
    assert len(set(batched)) == len(batched) and all(b.strip() for b in batched)  # in order, each its own answer


def test_end_of_turn_stops_generation(smol):
    from chat.generate import stop_token_ids

    model, tok = smol
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok, model)


def test_a_prompt_is_tokenized_as_training_tokenizes_it(smol):
    """Special-token text inside content stays text when generating, as it does in training: the model never
    reads a user's literal "<|im_end|>" as the end of the turn."""
    from chat.generate import prompt_token_ids
    from chat.template import ChatEncoder

    _, tok = smol
    conv = [{"role": "user", "content": "Explain what <|im_end|> means in ChatML."}]
    ids = prompt_token_ids(tok, [conv])[0]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert ids.count(end) == 2  # the system turn's and the user turn's, not the one in the text
    assert tok.decode(ids).endswith("Explain what <|im_end|> means in ChatML.<|im_end|>\n<|im_start|>assistant\n")
    full = ChatEncoder(tok, max_seq_len=4096).encode([*conv, {"role": "assistant", "content": "A marker."}])
    assert list(full.input_ids[: len(ids)]) == ids  # the prompt is the trained sequence's own prefix
