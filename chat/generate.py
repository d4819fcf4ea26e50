"""Batched generation for evaluation: the model's chat template, left padding, greedy by default.

The seeds' recipe calls ``model.generate`` once per example with sampling on: slow (one sequence keeps
the device busy) and irreproducible. Here prompts are rendered with the tokenizer's own chat template,
sorted by length (little padding in each batch), left-padded (a decoder-only model continues from the
right end, so padding goes on the left and the attention mask hides it), generated in batches and
returned in the input order. Greedy unless ``sample`` is set, and then seeded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any


def render_prompts(tokenizer: Any, conversations: Sequence[Sequence[dict[str, Any]]],
                   tools: Sequence[list[dict[str, Any]] | None] | None = None) -> list[str]:
    """Each conversation (ending before the turn to generate) rendered with the generation prompt, with its
    ``tools`` (one list of OpenAI tool definitions or None per conversation) passed to the template."""
    per = list(tools) if tools is not None else [None] * len(conversations)
    return [tokenizer.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False, **({"tools": t} if t else {}))
            for c, t in zip(conversations, per, strict=True)]


def prompt_token_ids(tokenizer: Any, conversations: Sequence[Sequence[dict[str, Any]]],
                     tools: Sequence[list[dict[str, Any]] | None] | None = None) -> list[list[int]]:
    """The ids the model reads before it answers each conversation: :meth:`chat.template.ChatEncoder.prompt_ids`,
    so a prompt is tokenized exactly as training tokenizes the same turns (content that holds the text of a
    special token stays text), with the conversation's ``tools`` given to the template."""
    from chat.template import ChatEncoder

    encoder = ChatEncoder(tokenizer, max_seq_len=sys.maxsize)  # a prompt is never cut here
    per = list(tools) if tools is not None else [None] * len(conversations)
    return [encoder.prompt_ids(list(c), t or None) for c, t in zip(conversations, per, strict=True)]


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """End-of-sequence ids: the generation config's plus the chat template's end-of-turn marker (a model
    that ends its turn with ``<|im_end|>`` would otherwise run on to ``max_new_tokens``)."""
    ids = model.generation_config.eos_token_id
    out = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            out.add(tid)
    if tokenizer.eos_token_id is not None:
        out.add(tokenizer.eos_token_id)
    return sorted(out)


def generate(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, Any]]],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    tools: Sequence[list[dict[str, Any]] | None] | None = None,
) -> list[str]:
    """The assistant's answer to each conversation, in input order (special tokens stripped). ``tools``: one
    list of tool definitions (or None) per conversation, handed to the chat template with it (convert calls and
    tools for a template that renders none with :func:`chat.tools.template_messages` first). ``progress(n)`` is
    called after each batch with the number of conversations it answered."""
    import torch

    # the template already holds any BOS it wants, and prompt_ids adds no other
    encoded = prompt_token_ids(tokenizer, conversations, tools)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, model)
    out: list[str] = [""] * len(encoded)
    was_training = model.training
    model.eval()
    if sample:
        torch.manual_seed(seed)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(encoded[i])
                ids[row, width - n :] = torch.tensor(encoded[i])
                mask[row, width - n :] = 1
            kwargs = {"do_sample": True, "temperature": temperature, "top_p": top_p} if sample else {"do_sample": False}
            gen = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                eos_token_id=stops, pad_token_id=pad_id, use_cache=True, **kwargs,  # training turns the cache off
            )
            for row, i in enumerate(idx):
                out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True)
            if progress:
                progress(len(idx))
    model.train(was_training)
    return out
