"""Likelihood metrics (they need the model): perplexity of reference responses through the chat template, and
sliding-window perplexity of plain text. Token-weighted: each example's ``stats`` row is ``[summed NLL,
scored tokens]`` and the value is exp(sum / sum), lower is better."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

from chat.template import IGNORE_INDEX, ChatEncoder  # the training side's template spans: scored alike
from evalsuite.metrics.base import MetricResult, register, token_weighted_perplexity


def token_nll(model: Any, sequences: list[list[int]], labels: list[list[int]], pad_id: int) -> list[tuple[float, int]]:
    """``(sum of NLL, number of scored tokens)`` per sequence, in one right-padded forward pass.

    Token ``t`` is scored when ``labels[t] != IGNORE_INDEX`` and ``t > 0`` (it is predicted from the
    logits at ``t - 1``), which is what a transformers ``labels=`` loss scores. Right padding with an
    attention mask leaves every real position's logits as they are unpadded (causal attention never
    looks right).
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    target = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, (seq, lab) in enumerate(zip(sequences, labels)):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        target[row, : len(lab)] = torch.tensor(lab)
    shifted = target[:, 1:]
    # the logits are needed only where some row scores a token: (batch, width, vocab) float32 logits are
    # GBs for a 49k vocabulary (16 x 1,150 tokens: 3.6 GB), so the LM head runs on those positions only
    keep = (shifted != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    was_training = model.training
    model.eval()  # dropout off, as an evaluation needs; the caller's mode is restored below
    try:
        with torch.inference_mode():
            try:
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep.to(device)).logits
            except TypeError:  # a model whose forward has no logits_to_keep: every position
                keep = torch.arange(width - 1)
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1]
            shifted = shifted[:, keep].to(device)
            # float32 over flat (tokens, vocab) rows, exactly as transformers' loss computes it: on CPU the
            # (batch, vocab, length) layout of cross_entropy is ~1e-4 off per token with a 49k vocabulary
            flat = logits.float().reshape(-1, logits.size(-1))
            nll = F.cross_entropy(flat, shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none").view(shifted.shape)
            sums = nll.sum(dim=1).tolist()
            counts = (shifted != IGNORE_INDEX).sum(dim=1).tolist()
    finally:
        model.train(was_training)
    return list(zip(sums, counts))


def _perplexity_result(name: str, pairs: list[tuple[float, int]], details: dict) -> MetricResult:
    total_nll = sum(s for s, _ in pairs)
    total_tokens = sum(c for _, c in pairs)
    if total_tokens == 0:
        raise ValueError("no tokens to score")
    mean_nll = total_nll / total_tokens
    details.update(
        n=len(pairs),
        n_tokens=total_tokens,
        mean_nll=mean_nll,
    )
    per_example = [s / c if c else math.nan for s, c in pairs]
    return MetricResult(name, math.exp(mean_nll), per_example, details, stats=[[float(s), float(c)] for s, c in pairs])


def _prompt_messages(prompt: str | Sequence[dict[str, str]]) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


@register("perplexity", needs_model=True, higher_is_better=False, aggregate=token_weighted_perplexity)
def perplexity(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[dict[str, str]]],
    references: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> MetricResult:
    """Token-weighted perplexity of each reference response given its prompt, over the set.

    ``value = exp(sum of NLL of all response tokens / number of response tokens)``. A prompt is a user
    message (str) or a list of chat messages; the conversation ``prompt + [assistant: reference]`` is
    encoded by :meth:`chat.template.ChatEncoder.encode` with the reference as the one trained answer, so the
    scored tokens are exactly those a training step scores for it: the answer from the end of the generation
    prompt through its end-of-turn marker (not the template's whitespace after it; special-token text inside
    content stays text). A template that is not prefix-stable raises ``chat.template.TemplateMismatch``. Eval
    perplexity and training loss measure the same tokens; an empty reference has none (its per-example value
    is NaN).

    ``per_example`` is each example's mean NLL per response token (``stats`` rows ``[NLL sum, tokens]``
    give the weights). Batched with right padding: the batch size does not change the numbers beyond
    float rounding. ``max_length`` truncates from the right (counted in ``details["truncated"]``);
    None keeps every token.
    """
    if len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
    if not prompts:
        raise ValueError("no examples to score")
    encoder = ChatEncoder(tokenizer, max_seq_len=sys.maxsize)  # nothing cut by the encoder: truncation is ours
    sequences, labels, truncated = [], [], 0
    for prompt, response in zip(prompts, references):
        messages = [*_prompt_messages(prompt), {"role": "assistant", "content": response}]
        # the reference response is the one trained span: earlier assistant turns are part of the prompt
        enc = encoder.encode(messages, train_from=len(messages) - 1)
        ids, lab = list(enc.input_ids), list(enc.labels)
        if max_length is not None and len(ids) > max_length:
            ids, lab, truncated = ids[:max_length], lab[:max_length], truncated + 1
        sequences.append(ids)
        labels.append(lab)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out: any id works
    # batches of similar lengths (little padding to run through the model), results back in input order
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    pairs: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        for j, pair in zip(idx, token_nll(model, [sequences[j] for j in idx], [labels[j] for j in idx], pad_id)):
            pairs[j] = pair
    return _perplexity_result("perplexity", pairs, {"batch_size": batch_size, "truncated": truncated})


@register("text_perplexity", needs_model=True, higher_is_better=False, aggregate=token_weighted_perplexity)
def text_perplexity(
    model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int | None = None, stride: int = 512
) -> MetricResult:
    """Sliding-window perplexity of plain texts, token-weighted over all texts.

    Each text is tokenized on its own (``tokenizer(text)``, special tokens as the tokenizer adds them) and
    scored with the strided windows of the Hugging Face guide "Perplexity of fixed-length models": windows
    start every ``stride`` tokens and hold up to ``max_length`` tokens (default: the model's
    ``max_position_embeddings``); in each window only the tokens not scored by an earlier window are
    scored, with the rest as context. The first token of a text has no context and is never scored.

    One deliberate difference from the guide's code: the guide weights each window's mean loss by
    "valid labels - 1", which is right for the first window (its first label has no prediction) but one
    short for every later window when ``stride < max_length`` (all its new tokens are predicted). We sum
    the per-token NLL instead, so the value is exactly exp(mean NLL over the scored tokens); with
    ``stride == max_length`` the two agree exactly.

    ``per_example`` is each text's mean NLL per scored token (NaN for a text with fewer than 2 tokens).
    """
    if not texts:
        raise ValueError("no texts to score")
    max_length = max_length or model.config.max_position_embeddings
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in 1..max_length ({max_length}), got {stride}")
    pairs, windows = [], 0
    for text in texts:
        ids = list(tokenizer(text)["input_ids"])
        nll, n, prev_end = 0.0, 0, 0
        for begin in range(0, len(ids), stride):
            end = min(begin + max_length, len(ids))
            new = end - prev_end  # tokens this window scores (the earlier ones are context)
            window = ids[begin:end]
            [(s, c)] = token_nll(model, [window], [[IGNORE_INDEX] * (len(window) - new) + window[-new:]], 0)
            nll, n, prev_end, windows = nll + s, n + c, end, windows + 1
            if end == len(ids):
                break
        pairs.append((nll, n))
    return _perplexity_result("text_perplexity", pairs, {"max_length": max_length, "stride": stride, "windows": windows})
