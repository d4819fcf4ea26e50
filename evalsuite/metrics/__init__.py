"""The metric registry of evalsuite: every metric registered by name (:mod:`evalsuite.metrics.base`).

============================  ===================================  ==========================================
metric (registry name)        result keys                          scale / definition
============================  ===================================  ==========================================
``bleu``                      ``bleu``                             sacrebleu corpus BLEU, 0-100
``chrf``                      ``chrf``                             sacrebleu corpus chrF (chrF++ with
                                                                   ``word_order=2``), 0-100
``rouge``                     ``rouge1 rouge2 rougeL rougeLsum``   rouge-score F-measure, mean over examples, 0-1
``exact_match``               ``exact_match``                      string equality, mean, 0-1
``exact_match_normalized``    ``exact_match_normalized``           equality after SQuAD normalisation, 0-1
``perplexity``                ``perplexity``                       of the reference response given the prompt
``text_perplexity``           ``text_perplexity``                  sliding-window perplexity of plain text
``multiple_choice``           ``acc acc_norm``                     log-likelihood multiple choice (probes)
``judge``                     ``judge_score judge_helpfulness      LLM-as-judge rubric, 1-5, mean over parsed
                              judge_accuracy judge_coherence``     verdicts (evalsuite/judge.py)
============================  ===================================  ==========================================

One module per family: :mod:`~evalsuite.metrics.text` (BLEU, chrF, ROUGE), :mod:`~evalsuite.metrics.match`
(exact match), :mod:`~evalsuite.metrics.likelihood` (perplexities), :mod:`~evalsuite.metrics.choice`
(multiple choice), :mod:`~evalsuite.metrics.llm_judge`; extraction in :mod:`~evalsuite.metrics.extract`.
Heavy libraries (sacrebleu, rouge-score, torch) are imported inside the functions that need them, so
listing metrics pays for none of them.
"""

from __future__ import annotations

from chat.template import IGNORE_INDEX
from evalsuite.metrics.base import METRICS, Metric, MetricResult, Score, UnknownMetric, get_metric, register, score_for_key, score_of
from evalsuite.metrics.choice import MCItem, multiple_choice, score_mc
from evalsuite.metrics.extract import extract_json_field, extract_regex, prepare
from evalsuite.metrics.likelihood import perplexity, text_perplexity, token_nll
from evalsuite.metrics.llm_judge import JUDGE_KEYS, judge
from evalsuite.metrics.match import exact_match, exact_match_normalized, normalize_answer
from evalsuite.metrics.text import ROUGE_TYPES, bleu, chrf, rouge

__all__ = [
    "IGNORE_INDEX", "JUDGE_KEYS", "METRICS", "MCItem", "Metric", "MetricResult", "ROUGE_TYPES", "Score", "UnknownMetric",
    "bleu", "chrf", "exact_match", "exact_match_normalized", "extract_json_field", "extract_regex", "get_metric", "judge",
    "multiple_choice", "normalize_answer", "perplexity", "prepare", "register", "rouge", "score_mc", "score_for_key", "score_of",
    "text_perplexity", "token_nll",
]
