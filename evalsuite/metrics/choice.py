"""Multiple choice by log-likelihood, as lm-evaluation-harness scores it (the item formats are in
:mod:`evalsuite.probes`).

For an item (context, choices, gold), each choice's log-likelihood is the summed log-probability of its
tokens (the target delimiter " " in front) given the context, tokenized as the harness does: the context
and the context+continuation are encoded whole and the continuation is what the longer one adds.
- ``acc``: the choice with the highest log-likelihood is the gold one;
- ``acc_norm``: the same after dividing each log-likelihood by the choice's length in characters (so long
  answers are not penalized for having more tokens).
Both are paired 0/1 outcomes per item (``binary``: compare adds McNemar's test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chat.template import IGNORE_INDEX
from evalsuite.metrics.base import MetricResult, Score, register
from evalsuite.metrics.likelihood import token_nll


@dataclass
class MCItem:
    """One multiple-choice item: the context, the choices (each scored as a continuation), the gold index
    and where the item came from (``file:line``)."""

    context: str
    choices: list[str]
    gold: int
    source: str = ""


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The harness's split: trailing spaces of the context move to the continuation; the continuation's
    tokens are what encoding the whole adds to encoding the context."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def loglikelihoods(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Summed log-probability of each continuation given its context (longest first, in batches)."""
    encoded = [encode_pair(tokenizer, c, x) for c, x in pairs]
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [encoded[i][0] + encoded[i][1] for i in idx]
        labels = [[IGNORE_INDEX] * len(encoded[i][0]) + encoded[i][1] for i in idx]
        for i, (nll, _n) in zip(idx, token_nll(model, seqs, labels, pad_id)):
            out[i] = -nll
    return out


def score_mc(model: Any, tokenizer: Any, items: list[MCItem], batch_size: int = 16) -> dict[str, Any]:
    """``{"acc", "acc_norm", "per_example": [{"acc", "acc_norm", "loglikelihoods"}]}`` over ``items``."""
    pairs = [(it.context, " " + choice) for it in items for choice in it.choices]
    lls = loglikelihoods(model, tokenizer, pairs, batch_size)
    per, k = [], 0
    for it in items:
        ll = lls[k : k + len(it.choices)]
        k += len(it.choices)
        norm = [x / len(c) for x, c in zip(ll, it.choices)]
        per.append({"source": it.source, "loglikelihoods": ll,
                    "acc": float(max(range(len(ll)), key=ll.__getitem__) == it.gold),
                    "acc_norm": float(max(range(len(norm)), key=norm.__getitem__) == it.gold)})
    n = max(len(per), 1)
    return {"acc": sum(p["acc"] for p in per) / n, "acc_norm": sum(p["acc_norm"] for p in per) / n, "per_example": per}


@register("multiple_choice", keys=[Score("acc", binary=True), Score("acc_norm", binary=True)], needs_model=True)
def multiple_choice(model: Any, tokenizer: Any, items: list[MCItem], *, batch_size: int = 16) -> dict[str, MetricResult]:
    """``acc`` and ``acc_norm`` over ``items`` (:func:`score_mc`), with each item's log-likelihoods as annotations."""
    res = score_mc(model, tokenizer, items, batch_size)
    per = res["per_example"]
    notes = [{"loglikelihoods": p["loglikelihoods"]} for p in per]
    return {k: MetricResult(k, res[k], [p[k] for p in per], {"n": len(items)}, notes if k == "acc" else None) for k in ("acc", "acc_norm")}
