"""Corpus text metrics: BLEU and chrF (sacrebleu), ROUGE (rouge-score), called directly.

``evaluate.load("rouge")`` fetches its script from the hub at run time, which an offline evaluation cannot
depend on. sacrebleu and rouge-score are imported inside the functions, so listing metrics stays cheap.

BLEU and chrF are corpus statistics, not means: each example's ``stats`` row is sacrebleu's sufficient
statistics of the scored text (after extraction, against all its references), and the value is sacrebleu's
score of their column sums. A paired bootstrap resamples those rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from evalsuite.metrics.base import MetricResult, Score, register
from evalsuite.metrics.extract import prepare

BLEU_OPTIONS = ("tokenize", "lowercase", "smooth_method", "smooth_value", "max_ngram_order")
CHRF_OPTIONS = ("char_order", "word_order", "beta", "lowercase", "whitespace")


def _reference_streams(refs: list[list[str]]) -> list[list[str | None]]:
    # sacrebleu wants one stream per reference "system"; None pads examples with fewer references
    # (sacrebleu drops None, which is its documented way of variable reference counts)
    width = max(len(rs) for rs in refs)
    return [[rs[k] if k < len(rs) else None for rs in refs] for k in range(width)]


def _bleu_object(options: dict[str, Any], **extra: Any):
    from sacrebleu.metrics import BLEU

    return BLEU(**{k: v for k, v in options.items() if k in BLEU_OPTIONS}, **extra)


def _chrf_object(options: dict[str, Any]):
    from sacrebleu.metrics import CHRF

    return CHRF(**{k: v for k, v in options.items() if k in CHRF_OPTIONS})


def bleu_from_stats(rows: np.ndarray, options: dict[str, Any]) -> float:
    """Corpus BLEU from summed per-sentence sufficient statistics (sacrebleu's own formula)."""
    return float(_bleu_object(options)._compute_score_from_stats([float(x) for x in rows.sum(0)]).score)


def chrf_from_stats(rows: np.ndarray, options: dict[str, Any]) -> float:
    """Corpus chrF from summed per-sentence statistics (sacrebleu's own formula)."""
    return float(_chrf_object(options)._compute_score_from_stats([float(x) for x in rows.sum(0)]).score)


@register("bleu", keys=[Score("bleu", aggregate=bleu_from_stats)])
def bleu(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
    smooth_method: str = "exp",
    per_example: bool = True,
    extract: dict | None = None,
) -> MetricResult:
    """sacrebleu corpus BLEU (0-100), identical to ``sacrebleu REF... -i HYP -m bleu`` with the same options.

    ``details["signature"]`` is sacrebleu's signature string (report it with the number). Per-example scores
    are sentence BLEU with ``effective_order=True`` (sacrebleu's ``sentence_bleu`` default: without it,
    any sentence lacking a 4-gram match scores 0).
    """
    options = {"tokenize": tokenize, "lowercase": lowercase, "smooth_method": smooth_method}
    preds, refs, details = prepare(predictions, references, extract)
    hyps = [p or "" for p in preds]
    corpus = _bleu_object(options)
    streams = _reference_streams(refs)
    score = corpus.corpus_score(hyps, streams)
    stats = [[float(x) for x in row] for row in corpus._extract_corpus_statistics(hyps, streams)]
    scores = None
    if per_example:
        sentence = _bleu_object(options, effective_order=True)
        scores = [sentence.sentence_score(h, rs).score for h, rs in zip(hyps, refs)]
    details.update(signature=str(corpus.get_signature()), verbose=str(score), n=len(hyps))
    return MetricResult("bleu", score.score, scores, details, stats=stats)


@register("chrf", keys=[Score("chrf", aggregate=chrf_from_stats)])
def chrf(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    char_order: int = 6,
    word_order: int = 0,
    beta: int = 2,
    lowercase: bool = False,
    whitespace: bool = False,
    per_example: bool = True,
    extract: dict | None = None,
) -> MetricResult:
    """sacrebleu corpus chrF (0-100; chrF++ with ``word_order=2``), identical to ``sacrebleu ... -m chrf``.

    ``details["signature"]`` is sacrebleu's signature; per-example scores are sacrebleu sentence chrF.
    """
    preds, refs, details = prepare(predictions, references, extract)
    hyps = [p or "" for p in preds]
    metric = _chrf_object({"char_order": char_order, "word_order": word_order, "beta": beta, "lowercase": lowercase,
                           "whitespace": whitespace})
    streams = _reference_streams(refs)
    score = metric.corpus_score(hyps, streams)
    stats = [[float(x) for x in row] for row in metric._extract_corpus_statistics(hyps, streams)]
    scores = [metric.sentence_score(h, rs).score for h, rs in zip(hyps, refs)] if per_example else None
    details.update(signature=str(metric.get_signature()), verbose=str(score), n=len(hyps))
    return MetricResult("chrf", score.score, scores, details, stats=stats)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")  # the default types
ROUGE_N = tuple(f"rouge{n}" for n in range(3, 10))  # asked for with rouge_types=


@register("rouge", keys=ROUGE_TYPES + ROUGE_N)
def rouge(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    rouge_types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = True,
    extract: dict | None = None,
) -> dict[str, MetricResult]:
    """ROUGE F-measures (0-1) from one rouge-score ``RougeScorer`` pass, one result per type.

    - Per-example scores are exactly ``RougeScorer(rouge_types, use_stemmer).score(ref, pred).fmeasure``
      (``score_multi``, the best F over references, with several references: as rouge-score and
      `evaluate` do).
    - ``value`` is the plain mean of the per-example F-measures. `evaluate`'s default
      (``use_aggregator=True``) reports ``BootstrapAggregator().aggregate()[t].mid.fmeasure``: the median
      of 1000 unseeded bootstrap means, a noisy estimate of this same mean that changes from run to run.
      ``details`` also gives mean precision and recall.
    - rougeLsum splits sentences on newlines, as rouge-score does without ``split_summaries``; put one
      sentence per line for summary-level LCS. We never call nltk's sentence splitter (it needs the punkt
      download); text without newlines is one sentence, so its rougeLsum equals its rougeL.
    - rouge-score's default tokenizer lowercases and keeps only ``[a-z0-9]`` runs: text in other scripts
      scores 0. Stemming (Porter, on by default here, off in `evaluate`) needs no nltk data.
    """
    from rouge_score import rouge_scorer

    unknown = [t for t in rouge_types if t not in ROUGE_TYPES and not re.fullmatch(r"rouge[1-9]", t)]
    if unknown:
        raise ValueError(f"unknown rouge types {unknown}; use rouge1..rouge9, rougeL, rougeLsum")
    preds, refs, details = prepare(predictions, references, extract)
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    scores = [scorer.score_multi(rs, p or "") for p, rs in zip(preds, refs)]
    out = {}
    for t in rouge_types:
        f = [s[t].fmeasure for s in scores]
        n = len(f)
        out[t] = MetricResult(
            t,
            sum(f) / n,
            f,
            {
                **details,
                "use_stemmer": use_stemmer,
                "precision": sum(s[t].precision for s in scores) / n,
                "recall": sum(s[t].recall for s in scores) / n,
                "aggregate": "mean of per-example F-measure",
                "n": n,
            },
        )
    return out
