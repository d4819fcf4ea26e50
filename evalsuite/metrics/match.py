"""Answer matching: exact match, strict and SQuAD-normalized (numbers kept intact). Per-example outcomes are 0/1
(``binary``), so compare adds McNemar's exact test to the bootstrap. With several references (TriviaQA
aliases, NQ answer lists: a task's ``references_field``) a prediction matching any one of them counts. For
answers that are numbers use ``numeric_match`` (:mod:`evalsuite.metrics.numeric`): "5.0" = "5" there."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from evalsuite.metrics.base import MetricResult, register
from evalsuite.metrics.extract import prepare

_PUNCTUATION = frozenset(string.punctuation)
# What SQuAD's normalisation would wrongly drop inside a number: a sign before its digits (not a hyphen glued
# to a word or a number: "covid-19", "1990-1995" lose it as SQuAD does), a decimal point between digits or
# opening a number (".5"). The Unicode minus becomes "-" so "−10" and "-10" agree.
_IN_NUMBER = re.compile(r"(?<![\w.])[-\u2212](?=\.?\d)|(?<=\d)\.(?=\d)|(?<![\w.])\.(?=\d)")


def normalize_answer(text: str) -> str:
    """SQuAD's ``normalize_answer`` that keeps numbers intact: lowercase, drop ASCII punctuation, drop the
    articles a/an/the, collapse whitespace (in that order, as the official SQuAD v1.1 evaluation script does),
    except that a sign or a decimal point inside a number stays: "-10" != "10", "3.6" != "36", "58.7" !=
    "587", ".5" != "5". Thousands commas still go ("65,960" = "65960"), as does a sentence's trailing
    period ("18." = "18"). Text without a digit normalises exactly as SQuAD's script does."""
    text = text.lower()
    if any(ch.isdigit() for ch in text):
        keep = {m.start() for m in _IN_NUMBER.finditer(text)}
        text = "".join(
            ("-" if ch == "\u2212" else ch) if i in keep else ch
            for i, ch in enumerate(text)
            if i in keep or ch not in _PUNCTUATION
        )
    else:
        text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _exact_match(name: str, preds: list[str | None], refs: list[list[str]], details: dict, normalize: bool) -> MetricResult:
    norm = normalize_answer if normalize else (lambda s: s)
    scores = [
        0.0 if p is None else float(any(norm(p) == norm(r) for r in rs))  # best over references; none: wrong
        for p, rs in zip(preds, refs)
    ]
    details.update(n=len(scores), matched=int(sum(scores)))
    return MetricResult(name, sum(scores) / len(scores), scores, details)


@register("exact_match", binary=True)
def exact_match(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *, extract: dict | None = None
) -> MetricResult:
    """Share (0-1) of predictions equal, character for character, to one of their references."""
    preds, refs, details = prepare(predictions, references, extract, unparsed_references="wrong")
    return _exact_match("exact_match", preds, refs, details, normalize=False)


@register("exact_match_normalized", binary=True)
def exact_match_normalized(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *, extract: dict | None = None
) -> MetricResult:
    """Share (0-1) of predictions equal to one of their references after :func:`normalize_answer` (SQuAD EM)."""
    preds, refs, details = prepare(predictions, references, extract, unparsed_references="wrong")
    return _exact_match("exact_match_normalized", preds, refs, details, normalize=True)
