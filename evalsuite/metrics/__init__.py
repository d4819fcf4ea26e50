"""The metric registry of evalsuite: every metric registered by name (:mod:`evalsuite.metrics.base`).

============================  ===================================  ==========================================
metric (registry name)        result keys                          scale / definition
============================  ===================================  ==========================================
``bleu``                      ``bleu``                             sacrebleu corpus BLEU, 0-100
``chrf``                      ``chrf``                             sacrebleu corpus chrF (chrF++ with
                                                                   ``word_order=2``), 0-100
``rouge``                     ``rouge1 rouge2 rougeL rougeLsum``   rouge-score F-measure, mean over examples, 0-1
``exact_match``               ``exact_match``                      string equality, mean, 0-1
``exact_match_normalized``    ``exact_match_normalized``           equality after SQuAD normalisation (numbers
                                                                   kept intact), 0-1
``numeric_match``             ``numeric_match``                    the answer number (last by default) equals
                                                                   the reference's, 0-1 (GSM8K grading)
``perplexity``                ``perplexity``                       of the reference response given the prompt
``text_perplexity``           ``text_perplexity``                  sliding-window perplexity of plain text
``multiple_choice``           ``acc acc_norm``                     log-likelihood multiple choice (probes)
``partial_choice``            ``acc``                              partial evaluation: one context per option,
                                                                   a shared continuation (Winogrande)
``last_word``                 ``acc perplexity``                   greedy match and exp(-mean log-likelihood)
                                                                   of a target continuation (LAMBADA)
``judge``                     ``judge_score judge_helpfulness      LLM-as-judge rubric, 1-5, mean over parsed
                              judge_accuracy judge_coherence``     verdicts (evalsuite/judge.py)
``preference``                ``preference_accuracy                share of preference pairs whose chosen
                              preference_margin                    completion has the higher log-likelihood
                              preference_margin_per_token``        (through the training template), 0-1;
                                                                   mean margins in nats (a preference task)
``tool_call_validity``        ``tool_call_wellformed               shares of outputs that parse as tool calls,
                              tool_call_known_tool                 call offered tools, with arguments valid
                              tool_call_args_valid                 under the tool's JSON schema, and call the
                              tool_call_right_tool``               reference's tools, 0-1
============================  ===================================  ==========================================

One module per family: :mod:`~evalsuite.metrics.text` (BLEU, chrF, ROUGE), :mod:`~evalsuite.metrics.match`
(exact match), :mod:`~evalsuite.metrics.numeric` (numeric answers), :mod:`~evalsuite.metrics.likelihood`
(perplexities), :mod:`~evalsuite.metrics.choice` (multiple choice), :mod:`~evalsuite.metrics.llm_judge`,
:mod:`~evalsuite.metrics.preference` (preference pairs), :mod:`~evalsuite.metrics.toolcall` (tool calls);
extraction (regex, JSON field, named extractors such as lm-eval's ``gsm8k_strict`` and ``gsm8k_flexible``) in
:mod:`~evalsuite.metrics.extract`.
Heavy libraries (sacrebleu, rouge-score, torch) are imported inside the functions that need them, so
listing metrics pays for none of them.
"""

from __future__ import annotations

from chat.template import IGNORE_INDEX
from evalsuite.metrics.base import METRICS, Metric, MetricResult, Score, UnknownMetric, get_metric, register, score_for_key, score_of
from evalsuite.metrics.choice import MCItem, PartialItem, TargetItem, last_word, multiple_choice, partial_choice, score_mc
from evalsuite.metrics.extract import (
    EXTRACTORS, UnknownExtractor, extract_json_field, extract_regex, get_extractor, prepare, register_extractor,
)
from evalsuite.metrics.likelihood import perplexity, text_perplexity, token_nll
from evalsuite.metrics.llm_judge import JUDGE_KEYS, judge
from evalsuite.metrics.match import exact_match, exact_match_normalized, normalize_answer
from evalsuite.metrics.numeric import answer_number, find_numbers, numeric_match
from evalsuite.metrics.preference import PREFERENCE_KEYS, PreferencePair, completion_sequence, preference
from evalsuite.metrics.text import ROUGE_TYPES, bleu, chrf, rouge
from evalsuite.metrics.toolcall import TOOL_CALL_KEYS, ToolCalls, parse_tool_calls, tool_call_validity, tool_definitions

__all__ = [
    "EXTRACTORS", "IGNORE_INDEX", "JUDGE_KEYS", "METRICS", "MCItem", "Metric", "MetricResult", "ROUGE_TYPES", "Score",
    "UnknownExtractor", "UnknownMetric",
    "answer_number", "find_numbers", "get_extractor", "numeric_match", "register_extractor",
    "bleu", "chrf", "exact_match", "exact_match_normalized", "extract_json_field", "extract_regex", "get_metric", "judge",
    "PartialItem", "TargetItem", "last_word", "partial_choice",
    "multiple_choice", "normalize_answer", "perplexity", "prepare", "register", "rouge", "score_mc", "score_for_key", "score_of",
    "text_perplexity", "token_nll",
    "PREFERENCE_KEYS", "PreferencePair", "completion_sequence", "preference",
    "TOOL_CALL_KEYS", "ToolCalls", "parse_tool_calls", "tool_call_validity", "tool_definitions",
]
