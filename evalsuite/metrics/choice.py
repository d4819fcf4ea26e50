"""Choosing by log-likelihood, as lm-evaluation-harness (0.4) scores it; the item formats (prompts, fields)
are the probe kinds of :mod:`evalsuite.probes`.

A continuation's log-likelihood is the summed log-probability of its tokens given the context, tokenized as
the harness does (:func:`encode_pair`): trailing spaces of the context move to the continuation, the
context and the context+continuation are encoded whole and the continuation is what the longer one adds; a
sequence longer than the model's window keeps its last ``max_length`` tokens before the final one.

Three item shapes, one metric each:

- :class:`MCItem`, metric ``multiple_choice``: one context, each choice scored as the continuation
  ``" " + choice`` (the harness's target delimiter). ``acc``: the highest log-likelihood is the gold
  choice; ``acc_norm``: the same after dividing each log-likelihood by the choice's length in characters.
- :class:`PartialItem`, metric ``partial_choice``: partial evaluation (Winogrande): one context per option
  (the sentence up to the blank with the option filled in), one shared continuation (the rest of the
  sentence after the blank, as ``" " + continuation``), scored under each context. ``acc`` as above; no
  ``acc_norm`` (the continuation is the same for every option, as the harness reports it).
- :class:`TargetItem`, metric ``last_word``: one context and one target (LAMBADA's last word with its
  leading space). ``acc``: every target token is the model's argmax (the harness's ``is_greedy``);
  ``perplexity``: exp(-mean over items of the target's log-likelihood), the harness's ``perplexity``
  aggregation (not token-weighted), lower is better.

Every ``acc``/``acc_norm`` is a paired 0/1 outcome per item (``binary``: compare adds McNemar's test). Each
metric also gives, per item, the log-likelihoods it compared and the answer it chose (``output``) as
annotations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from evalsuite.metrics.base import MetricResult, Score, register


@dataclass
class MCItem:
    """One multiple-choice item: the context, the choices (each scored as the continuation ``" " + choice``),
    the gold index and where the item came from (``file:line``)."""

    context: str
    choices: list[str]
    gold: int
    source: str = ""


@dataclass
class PartialItem:
    """One partial-evaluation item (Winogrande): one context per option, the continuation they share (scored
    as ``" " + continuation`` after each context), the gold index, where the item came from, and the
    options themselves (what was filled into the blank; shown as the answer)."""

    contexts: list[str]
    continuation: str
    gold: int
    source: str = ""
    options: list[str] | None = None


@dataclass
class TargetItem:
    """One target-continuation item (LAMBADA): the context and the target continuation, leading space
    included (``" signs"``), and where the item came from."""

    context: str
    target: str
    source: str = ""


@dataclass
class ContinuationScore:
    """What the model gives one (context, continuation) pair: the summed log-probability, whether every
    continuation token is the argmax at its position (``is_greedy``), the continuation's token count and the
    argmax tokens themselves (``greedy``)."""

    loglikelihood: float
    is_greedy: bool
    tokens: int
    greedy: list[int]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The harness's split: trailing spaces of the context move to the continuation; the continuation's
    tokens are what encoding the whole adds to encoding the context. An empty context is the prefix token
    (BOS, else EOS) alone, with the continuation encoded by itself, as the harness does."""
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], tokenizer(continuation, add_special_tokens=False)["input_ids"]
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


# padded tokens per forward pass: the float32 logits of a batch are rows x width x vocabulary (49k for
# SmolLM2: 4096 tokens are 0.8 GB), so long items go in smaller batches
_TOKENS_PER_BATCH = 4096


def score_continuations(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], batch_size: int = 16,
                        max_length: int | None = None) -> list[ContinuationScore]:
    """One :class:`ContinuationScore` per (context, continuation) pair, in input order.

    As the harness computes it: the input is the last ``max_length + 1`` tokens of context+continuation
    without the final token (``max_length`` defaults to the model's ``max_position_embeddings``); the
    continuation's tokens are scored from the last positions' float32 log-softmax. Pairs are run longest
    first, right-padded with an attention mask (causal attention: padding changes no real position), at
    most ``batch_size`` pairs and about 4096 padded tokens a pass. A continuation that encodes to no token
    is a ValueError.
    """
    import torch

    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2048
    encoded = [encode_pair(tokenizer, c, x) for c, x in pairs]
    for (c, x), (_, cont) in zip(pairs, encoded):
        if not cont:
            raise ValueError(f"continuation {x!r} after context {c[-40:]!r} encodes to no token")
    inputs = [(ctx + cont)[-(max_length + 1):][:-1] for ctx, cont in encoded]
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out: any id works
    device = next(model.parameters()).device
    out: list[ContinuationScore | None] = [None] * len(inputs)
    was_training = model.training
    model.eval()  # dropout off; the caller's mode is restored below
    try:
        start = 0
        while start < len(order):
            width = len(inputs[order[start]])  # longest first: the first row sets the batch width
            rows = max(1, min(batch_size, _TOKENS_PER_BATCH // max(width, 1)))
            idx = order[start : start + rows]
            start += rows
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(inputs[i])] = torch.tensor(inputs[i])
                mask[r, : len(inputs[i])] = 1
            with torch.inference_mode():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                for r, i in enumerate(idx):
                    cont = encoded[i][1]
                    n, end = len(cont), len(inputs[i])
                    logp = torch.log_softmax(logits[r, end - n : end].float(), dim=-1)
                    target = torch.tensor(cont, device=logp.device)
                    greedy = logp.argmax(dim=-1)
                    out[i] = ContinuationScore(float(logp.gather(1, target[:, None]).sum()), bool((greedy == target).all()),
                                               n, greedy.tolist())
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def loglikelihoods(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Summed log-probability of each continuation given its context (:func:`score_continuations`)."""
    return [s.loglikelihood for s in score_continuations(model, tokenizer, pairs, batch_size)]


def _argmax(values: list[float]) -> int:
    """The first index of the largest value (numpy's argmax, which the harness uses, on ties too)."""
    return int(np.argmax(np.asarray(values, dtype=float)))


def score_mc(model: Any, tokenizer: Any, items: list[MCItem], batch_size: int = 16) -> dict[str, Any]:
    """``{"acc", "acc_norm", "per_example": [{"source", "loglikelihoods", "chosen", "acc", "acc_norm"}]}``."""
    pairs = [(it.context, " " + choice) for it in items for choice in it.choices]
    lls = loglikelihoods(model, tokenizer, pairs, batch_size)
    per: list[dict[str, Any]] = []
    k = 0
    for it in items:
        ll = lls[k : k + len(it.choices)]
        k += len(it.choices)
        # the harness divides by the choice's length in characters (without the delimiter)
        norm = [x / len(c) if c else -math.inf for x, c in zip(ll, it.choices)]
        chosen = _argmax(ll)
        per.append({"source": it.source, "loglikelihoods": ll, "chosen": chosen,
                    "acc": float(chosen == it.gold), "acc_norm": float(_argmax(norm) == it.gold)})
    n = max(len(per), 1)
    return {"acc": sum(p["acc"] for p in per) / n, "acc_norm": sum(p["acc_norm"] for p in per) / n, "per_example": per}


@register("multiple_choice", keys=[Score("acc", binary=True), Score("acc_norm", binary=True)], needs_model=True)
def multiple_choice(model: Any, tokenizer: Any, items: list[MCItem], *, batch_size: int = 16) -> dict[str, MetricResult]:
    """``acc`` and ``acc_norm`` over :class:`MCItem` items (:func:`score_mc`); annotations: each item's
    log-likelihoods and the chosen answer (``output``)."""
    res = score_mc(model, tokenizer, items, batch_size)
    per = res["per_example"]
    notes = [{"loglikelihoods": p["loglikelihoods"], "output": it.choices[p["chosen"]]} for p, it in zip(per, items)]
    return {k: MetricResult(k, res[k], [p[k] for p in per], {"n": len(items)}, notes if k == "acc" else None) for k in ("acc", "acc_norm")}


@register("partial_choice", keys=[Score("acc", binary=True)], needs_model=True)
def partial_choice(model: Any, tokenizer: Any, items: list[PartialItem], *, batch_size: int = 16) -> dict[str, MetricResult]:
    """``acc`` over :class:`PartialItem` items: the option whose context gives the shared continuation the
    highest log-likelihood is the gold one (the harness's partial evaluation, Winogrande); annotations:
    each item's log-likelihoods and the chosen option (``output``)."""
    pairs = [(ctx, " " + it.continuation) for it in items for ctx in it.contexts]
    lls = loglikelihoods(model, tokenizer, pairs, batch_size)
    scores, notes, k = [], [], 0
    for it in items:
        ll = lls[k : k + len(it.contexts)]
        k += len(it.contexts)
        chosen = _argmax(ll)
        scores.append(float(chosen == it.gold))
        notes.append({"loglikelihoods": ll, "output": (it.options or it.contexts)[chosen]})
    value = sum(scores) / max(len(scores), 1)
    return {"acc": MetricResult("acc", value, scores, {"n": len(items)}, notes)}


def _exp_neg(x: float) -> float:
    return math.exp(-x) if -x < 709.0 else math.inf  # past exp's float range: infinite, not OverflowError


def perplexity_of_loglikelihoods(rows: np.ndarray, options: dict[str, Any]) -> float:
    """exp(-mean of column 0) over rows ``[loglikelihood]``: the harness's ``perplexity`` aggregation."""
    return float("nan") if len(rows) == 0 else _exp_neg(float(np.mean(rows[:, 0])))


@register("last_word", needs_model=True,
          keys=[Score("acc", binary=True), Score("perplexity", higher_is_better=False, aggregate=perplexity_of_loglikelihoods)])
def last_word(model: Any, tokenizer: Any, items: list[TargetItem], *, batch_size: int = 16) -> dict[str, MetricResult]:
    """``acc`` (the target is the greedy continuation at every token) and ``perplexity`` (exp of minus the
    mean target log-likelihood over items) over :class:`TargetItem` items, as the harness scores
    LAMBADA. ``perplexity``'s stats rows are ``[loglikelihood]`` per item (its per-example score is the
    item's own exp(-loglikelihood)); annotations: the log-likelihood, ``is_greedy``, the target's token
    count and the greedy continuation decoded (``output``)."""
    scored = score_continuations(model, tokenizer, [(it.context, it.target) for it in items], batch_size)
    acc = [float(s.is_greedy) for s in scored]
    lls = [s.loglikelihood for s in scored]
    notes = [{"loglikelihood": s.loglikelihood, "is_greedy": s.is_greedy, "tokens": s.tokens,
              "output": tokenizer.decode(s.greedy)} for s in scored]
    stats = [[x] for x in lls]
    details = {"n": len(items)}
    return {
        "acc": MetricResult("acc", sum(acc) / max(len(acc), 1), acc, dict(details), notes),
        "perplexity": MetricResult("perplexity", perplexity_of_loglikelihoods(np.asarray(stats, dtype=float).reshape(-1, 1), {}),
                                   [_exp_neg(x) for x in lls], dict(details), stats=stats),
    }
