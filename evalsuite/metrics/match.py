"""Answer matching: exact match, strict and SQuAD-normalized. Per-example outcomes are 0/1 (``binary``), so
compare adds McNemar's exact test to the bootstrap."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from evalsuite.metrics.base import MetricResult, register
from evalsuite.metrics.extract import prepare

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's ``normalize_answer``: lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse
    whitespace (in that order, as the official SQuAD v1.1 evaluation script does)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _exact_match(name: str, preds: list[str | None], refs: list[list[str]], details: dict, normalize: bool) -> MetricResult:
    norm = normalize_answer if normalize else (lambda s: s)
    scores = [
        0.0 if p is None else float(any(norm(p) == norm(r) for r in rs))  # best over references
        for p, rs in zip(preds, refs)
    ]
    details.update(n=len(scores), matched=int(sum(scores)))
    return MetricResult(name, sum(scores) / len(scores), scores, details)


@register("exact_match", binary=True)
def exact_match(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *, extract: dict | None = None
) -> MetricResult:
    """Share (0-1) of predictions equal, character for character, to one of their references."""
    preds, refs, details = prepare(predictions, references, extract)
    return _exact_match("exact_match", preds, refs, details, normalize=False)


@register("exact_match_normalized", binary=True)
def exact_match_normalized(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *, extract: dict | None = None
) -> MetricResult:
    """Share (0-1) of predictions equal to one of their references after :func:`normalize_answer` (SQuAD EM)."""
    preds, refs, details = prepare(predictions, references, extract)
    return _exact_match("exact_match_normalized", preds, refs, details, normalize=True)
