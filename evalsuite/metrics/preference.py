"""Preference accuracy (it needs the model): on held-out preference pairs, how often the model gives the chosen
completion a higher log-likelihood than the rejected one, and by how much.

Each completion is scored exactly as a DPO step scores it (``train.preference.encode_side``, built from the same
chat functions): the conversation ``prompt + completion`` goes through :func:`chat.tools.template_messages`
(tool calls and tool definitions in the template's own form: native when it renders them, the Hermes text
convention otherwise) and :meth:`chat.template.ChatEncoder.encode` with ``train_from`` at the completion, so
the same rendering, the same segment-wise tokenization and the same trained spans: the completion's answers,
each through its end-of-turn token. The prompt's own answers are context, not scored.

Result keys, all higher-is-better means over the pairs, each pair one stats row (so compare's paired bootstrap
resamples pairs, and McNemar's test reads the 0/1 outcomes):

- ``preference_accuracy`` (the headline): 1 when log p(chosen) > log p(rejected), else 0 (an exact tie
  counts as wrong: "exceeds" is the test). The summed log-likelihood is what DPO's implicit reward is made
  of, so this is the number a DPO step moves;
- ``preference_margin``: log p(chosen) - log p(rejected), in nats;
- ``preference_margin_per_token``: the same with each side divided by its number of scored tokens. Summed
  log-likelihood favours the shorter completion (every token costs), and real pairs differ in length (the
  chosen answer is often the longer one): this margin says whether the model prefers the content once length
  is set aside.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chat.template import IGNORE_INDEX, ChatEncoder  # the training side's tokenization and spans: scored alike
from chat.tools import template_messages
from evalsuite.metrics.base import MetricResult, Score, register
from evalsuite.metrics.likelihood import token_nll

PREFERENCE_KEYS = ("preference_accuracy", "preference_margin", "preference_margin_per_token")


@dataclass(frozen=True)
class PreferencePair:
    """One held-out pair: the shared ``prompt`` and the two completions, each a list of OpenAI-style message
    dicts (``role``, ``content``, and ``tool_calls`` / ``tool_call_id`` / ``name`` where a turn has them);
    ``tools`` the tool definitions (OpenAI's shape) the template renders, or None; ``source`` where it came
    from (``file:line``)."""

    prompt: list[dict[str, Any]]
    chosen: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    source: str = ""


def completion_sequence(encoder: ChatEncoder, prompt: Sequence[dict[str, Any]], completion: Sequence[dict[str, Any]],
                        tools: list[dict[str, Any]] | None = None) -> tuple[list[int], list[int]]:
    """(input ids, labels) of ``prompt + completion``: the ids a DPO step reads and the labels it scores (the
    completion's trained spans; IGNORE_INDEX elsewhere). The conversation and the prompt alone go through
    :func:`chat.tools.template_messages` (which may merge or add turns: a Hermes tool listing becomes a system
    turn), and the prompt's converted length is where training starts (``ChatEncoder.encode(train_from=)``)."""
    rendered, passed = template_messages(encoder.tokenizer, [*prompt, *completion], tools)
    before, _ = template_messages(encoder.tokenizer, list(prompt), tools)
    enc = encoder.encode(rendered, passed, train_from=len(before))
    return list(enc.input_ids), list(enc.labels)


@register("preference", keys=[Score(PREFERENCE_KEYS[0], binary=True), Score(PREFERENCE_KEYS[1]), Score(PREFERENCE_KEYS[2])],
          needs_model=True)
def preference(model: Any, tokenizer: Any, pairs: Sequence[PreferencePair], *, batch_size: int = 4) -> dict[str, MetricResult]:
    """Preference accuracy and margins of ``model`` on ``pairs`` (see the module docstring for the keys).

    Both completions of every pair are encoded as training encodes them (:func:`completion_sequence`; no
    truncation: every token of both completions is scored) and run through the model in right-padded batches
    of ``batch_size`` sequences of similar lengths (:func:`evalsuite.metrics.likelihood.token_nll`): the batch
    size changes nothing beyond float rounding. ``annotations`` give each pair's ``chosen_logp``,
    ``rejected_logp`` and scored token counts. ValueError when there is no pair, when a completion has no
    token to score (an empty answer trains nothing, so it scores nothing), or when the chat template cannot
    be rendered prefix-stably (``chat.template.TemplateMismatch``)."""
    if not pairs:
        raise ValueError("no preference pairs to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    encoder = ChatEncoder(tokenizer, max_seq_len=sys.maxsize)  # nothing is cut: a truncated side would compare unlike spans
    sequences: list[list[int]] = []
    labels: list[list[int]] = []
    for i, pair in enumerate(pairs):
        for side, completion in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            ids, lab = completion_sequence(encoder, pair.prompt, completion, pair.tools)
            if all(x == IGNORE_INDEX for x in lab):
                raise ValueError(f"pair {i} ({pair.source or 'no source'}): the {side} completion has no token to score (empty answer)")
            sequences.append(ids)
            labels.append(lab)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out: any id works
    order = sorted(range(len(sequences)), key=lambda j: -len(sequences[j]))  # little padding per batch
    scored: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        for j, res in zip(idx, token_nll(model, [sequences[j] for j in idx], [labels[j] for j in idx], pad_id)):
            scored[j] = res

    accuracy, margin, per_token, notes = [], [], [], []
    for i in range(len(pairs)):
        (c_nll, c_n), (r_nll, r_n) = scored[2 * i], scored[2 * i + 1]
        chosen, rejected = -c_nll, -r_nll
        accuracy.append(1.0 if chosen > rejected else 0.0)
        margin.append(chosen - rejected)
        per_token.append(chosen / c_n - rejected / r_n)
        notes.append({"preference": {"chosen_logp": chosen, "rejected_logp": rejected, "chosen_tokens": c_n, "rejected_tokens": r_n}})
    n = len(pairs)
    details = {"n": n, "batch_size": batch_size, "correct": int(sum(accuracy)),
               "chosen_tokens": sum(scored[2 * i][1] for i in range(n)), "rejected_tokens": sum(scored[2 * i + 1][1] for i in range(n)),
               "mean_chosen_logp": -sum(scored[2 * i][0] for i in range(n)) / n,
               "mean_rejected_logp": -sum(scored[2 * i + 1][0] for i in range(n)) / n}
    out = {}
    for key, values in zip(PREFERENCE_KEYS, (accuracy, margin, per_token)):
        # a mean metric: the per-example scores are the stats rows (MetricResult.stat_rows)
        out[key] = MetricResult(key, math.fsum(values) / n, values, dict(details), annotations=notes if key == PREFERENCE_KEYS[0] else None)
    return out
