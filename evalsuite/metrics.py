"""The metric registry of evalsuite: every metric registered by name, results under the keys of `evaluate`.

Text metrics take ``predictions: list[str]`` and ``references: list[str] | list[list[str]]`` (one reference
per prediction, or a list of references per prediction) plus keyword options, and return
:class:`MetricResult` objects: the corpus-level ``value`` (the headline number), ``per_example`` scores
(for paired bootstrap later) and ``details`` (signature, settings, counts).

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
``judge``                     ``judge_score judge_helpfulness      LLM-as-judge rubric, 1-5, mean over parsed
                              judge_accuracy judge_coherence``     verdicts (evalsuite/judge.py)
============================  ===================================  ==========================================

BLEU and chrF call sacrebleu, ROUGE calls rouge-score, directly: ``evaluate.load("rouge")`` fetches its
script from the hub at run time, which an offline evaluation cannot depend on.

Structured outputs: every text metric takes ``extract={"regex": PATTERN, "group": 1}`` or
``extract={"json_field": "a.b.0"}`` (add ``"references": True`` to extract from the references too). A
prediction the extractor cannot parse becomes None: it is scored as wrong (an empty string for BLEU/chrF/
ROUGE, a miss for exact match), never guessed, and counted in ``details["unparsed"]``. A reference that does
not parse is an error (the extractor does not fit the data).

sacrebleu, rouge-score and torch are imported inside the functions that need them, so importing this
module stays cheap (a command line that lists metrics pays for none of them).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from chat.template import IGNORE_INDEX, ChatEncoder  # the training side's template spans: scored alike


@dataclass
class MetricResult:
    """One number of one metric over a set.

    ``per_example`` holds one score per example in input order (None where a metric has no meaningful
    per-example score); ``details`` holds what is needed to reproduce or read the number (signature,
    options, token counts, unparsed counts).
    """

    name: str
    value: float
    per_example: list[float] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # what a metric says about each example beyond its score (a judge's verdicts and rationales): stored
    # per example next to the scores, not in the aggregate results
    annotations: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``compute`` and the result keys it produces.

    Calling the metric returns ``{key: MetricResult}`` whatever ``compute`` returns (a single
    :class:`MetricResult` or a dict of them), so a runner can treat every metric alike. ``needs_model``
    metrics take ``(model, tokenizer, ...)`` instead of predictions; ``needs_prompts`` metrics also get
    ``prompts=`` (the conversations the predictions answer).
    """

    name: str
    compute: Callable[..., MetricResult | dict[str, MetricResult]]
    keys: tuple[str, ...]
    needs_model: bool = False
    needs_prompts: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, MetricResult]:
        out = self.compute(*args, **kwargs)
        return {out.name: out} if isinstance(out, MetricResult) else out


METRICS: dict[str, Metric] = {}


class UnknownMetric(ValueError):
    """A metric name that is not in :data:`METRICS`."""


def register(name: str, *, keys: Sequence[str] | None = None, needs_model: bool = False, needs_prompts: bool = False):
    """Decorator: register ``fn`` as metric ``name`` (producing result ``keys``, default ``(name,)``).

    The function itself is returned unchanged, so it stays callable directly.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name, fn, tuple(keys or (name,)), needs_model, needs_prompts)
        return fn

    return decorate


def get_metric(name: str) -> Metric:
    """The registered metric ``name``; :class:`UnknownMetric` (listing the known names) if there is none."""
    if name in METRICS:
        return METRICS[name]
    producers = [m.name for m in METRICS.values() if name in m.keys]
    hint = f" ({name!r} is a result of metric {producers[0]!r})" if producers else ""
    raise UnknownMetric(f"unknown metric {name!r}{hint}; known metrics: {', '.join(sorted(METRICS))}")


# --------------------------------------------------------------------------------------------------------
# Extractors for structured outputs


def extract_regex(text: str, pattern: str | re.Pattern[str], group: int | str = 1) -> str | None:
    """``group`` of the first match of ``pattern`` in ``text``; None when nothing matches (or the group did
    not take part in the match). A pattern without that group is a ValueError, not a silent whole match."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    if isinstance(group, int) and group > regex.groups:
        raise ValueError(f"pattern {regex.pattern!r} has {regex.groups} group(s); group {group} was asked for")
    if isinstance(group, str) and group not in regex.groupindex:
        raise ValueError(f"pattern {regex.pattern!r} has no group named {group!r}")
    match = regex.search(text)
    return None if match is None else match.group(group)


_JSON = json.JSONDecoder()


def _first_json_container(text: str) -> dict | list | None:
    # Try to decode at every "{" or "[" in order: markdown code fences, prose before and after, or a
    # second JSON object later in the text all stay outside the first value that decodes.
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _end = _JSON.raw_decode(text, match.start())
        except ValueError:
            continue
        return value
    return None


def extract_json_field(text: str, path: str) -> str | None:
    """The field at dotted ``path`` ("a.b.0": key a, key b, list index 0) of the first JSON object (or
    array) in ``text``, as a string; None when no JSON decodes or the path is missing.

    Tolerant of code fences and surrounding prose (the first ``{``/``[`` from which a JSON value decodes
    is used). String fields are returned as they are; other values as compact JSON (``42``, ``true``,
    ``null``, ``{"x":1}``), so ``42`` and ``"42"`` compare equal. ``path=""`` is the whole value. Keys
    containing dots cannot be addressed.
    """
    value: Any = _first_json_container(text)
    if value is None:
        return None
    for part in path.split(".") if path else []:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and re.fullmatch(r"-?\d+", part) and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _extractor(spec: dict[str, Any]) -> tuple[Callable[[str], str | None], bool]:
    """``(extract(text), also_on_references)`` from an ``extract=`` option."""
    spec = dict(spec)
    on_references = bool(spec.pop("references", False))
    if "regex" in spec and "json_field" not in spec:
        regex = re.compile(spec.pop("regex"))
        group = spec.pop("group", 1)
        extract_regex("", regex, group)  # fail on a missing group now, not on the first match
        fn: Callable[[str], str | None] = partial(extract_regex, pattern=regex, group=group)
    elif "json_field" in spec and "regex" not in spec:
        fn = partial(extract_json_field, path=spec.pop("json_field"))
    else:
        raise ValueError(f"extract= needs exactly one of 'regex' or 'json_field', got {sorted(spec)}")
    if spec:
        raise ValueError(f"unknown extract= keys: {sorted(spec)}")
    return fn, on_references


# --------------------------------------------------------------------------------------------------------
# Shared input handling of text metrics


def _reference_lists(references: Sequence[str] | Sequence[Sequence[str]], n: int) -> list[list[str]]:
    if len(references) != n:
        raise ValueError(f"{n} predictions but {len(references)} references")
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"reference {i} must be a string or a non-empty list of strings, got {ref!r}")
        out.append(refs)
    return out


def _prepare(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], extract: dict | None
) -> tuple[list[str | None], list[list[str]], dict[str, Any]]:
    """Validated predictions and per-example reference lists, after extraction; and the details to report."""
    if not predictions:
        raise ValueError("no predictions to score")
    if not all(isinstance(p, str) for p in predictions):
        raise ValueError("predictions must be strings")
    refs = _reference_lists(references, len(predictions))
    preds: list[str | None] = list(predictions)
    if not extract:
        return preds, refs, {}
    fn, on_references = _extractor(extract)
    preds = [fn(p) for p in preds]
    if on_references:
        refs = [[fn(r) for r in rs] for rs in refs]  # type: ignore[misc]
        bad = [i for i, rs in enumerate(refs) if any(r is None for r in rs)]
        if bad:
            raise ValueError(f"extract= found nothing in the references of examples {bad[:10]} ({len(bad)} in all)")
    return preds, refs, {"extract": dict(extract), "unparsed": sum(p is None for p in preds)}


def _reference_streams(refs: list[list[str]]) -> list[list[str | None]]:
    # sacrebleu wants one stream per reference "system"; None pads examples with fewer references
    # (sacrebleu drops None, which is its documented way of variable reference counts)
    width = max(len(rs) for rs in refs)
    return [[rs[k] if k < len(rs) else None for rs in refs] for k in range(width)]


# --------------------------------------------------------------------------------------------------------
# BLEU and chrF (sacrebleu)


@register("bleu")
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
    from sacrebleu.metrics import BLEU

    preds, refs, details = _prepare(predictions, references, extract)
    hyps = [p or "" for p in preds]
    corpus = BLEU(tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method)
    score = corpus.corpus_score(hyps, _reference_streams(refs))
    scores = None
    if per_example:
        sentence = BLEU(tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method, effective_order=True)
        scores = [sentence.sentence_score(h, rs).score for h, rs in zip(hyps, refs)]
    details.update(signature=str(corpus.get_signature()), verbose=str(score), n=len(hyps))
    return MetricResult("bleu", score.score, scores, details)


@register("chrf")
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
    from sacrebleu.metrics import CHRF

    preds, refs, details = _prepare(predictions, references, extract)
    hyps = [p or "" for p in preds]
    metric = CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase, whitespace=whitespace)
    score = metric.corpus_score(hyps, _reference_streams(refs))
    scores = [metric.sentence_score(h, rs).score for h, rs in zip(hyps, refs)] if per_example else None
    details.update(signature=str(metric.get_signature()), verbose=str(score), n=len(hyps))
    return MetricResult("chrf", score.score, scores, details)


# --------------------------------------------------------------------------------------------------------
# ROUGE (rouge-score)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@register("rouge", keys=ROUGE_TYPES)
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
    preds, refs, details = _prepare(predictions, references, extract)
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


# --------------------------------------------------------------------------------------------------------
# Exact match

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


@register("exact_match")
def exact_match(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *, extract: dict | None = None
) -> MetricResult:
    """Share (0-1) of predictions equal, character for character, to one of their references."""
    preds, refs, details = _prepare(predictions, references, extract)
    return _exact_match("exact_match", preds, refs, details, normalize=False)


@register("exact_match_normalized")
def exact_match_normalized(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *, extract: dict | None = None
) -> MetricResult:
    """Share (0-1) of predictions equal to one of their references after :func:`normalize_answer` (SQuAD EM)."""
    preds, refs, details = _prepare(predictions, references, extract)
    return _exact_match("exact_match_normalized", preds, refs, details, normalize=True)


# --------------------------------------------------------------------------------------------------------
# Perplexity (needs the model)


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
    was_training = model.training
    model.eval()  # dropout off, as an evaluation needs; the caller's mode is restored below
    try:
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            shifted = target[:, 1:].to(device)
            # float32 over flat (tokens, vocab) rows, exactly as transformers' loss computes it: on CPU the
            # (batch, vocab, length) layout of cross_entropy is ~1e-4 off per token with a 49k vocabulary
            flat = logits[:, :-1].float().reshape(-1, logits.size(-1))
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
        # with per_example (mean NLL) these give each example's token weight back to a bootstrap
        tokens_per_example=[c for _, c in pairs],
    )
    per_example = [s / c if c else math.nan for s, c in pairs]
    return MetricResult(name, math.exp(mean_nll), per_example, details)


def _prompt_messages(prompt: str | Sequence[dict[str, str]]) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


@register("perplexity", needs_model=True)
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
    rendered with the tokenizer's chat template, and the response tokens are those of the assistant
    span: from the end of the generation prompt (``add_generation_prompt=True``) through the end of the
    turn, so the end-of-turn marker is scored. This is the span that ``chat.template.ChatEncoder`` trains on,
    rendered by the same code (a template that is not prefix-stable raises
    ``chat.template.TemplateMismatch``), so eval perplexity and training loss measure the same tokens.

    ``per_example`` is each example's mean NLL per response token (``details["tokens_per_example"]``
    gives the weights). Batched with right padding: the batch size does not change the numbers beyond
    float rounding. ``max_length`` truncates from the right (counted in ``details["truncated"]``);
    None keeps every token.
    """
    if len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
    if not prompts:
        raise ValueError("no examples to score")
    encoder = ChatEncoder(tokenizer, max_seq_len=max_length or 0)  # only its render() is used: truncation is ours
    sequences, labels, truncated = [], [], 0
    for prompt, response in zip(prompts, references):
        text, spans = encoder.render([*_prompt_messages(prompt), {"role": "assistant", "content": response}])
        start, end = spans[-1]  # the reference response; earlier assistant turns are part of the prompt
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        # a token belongs to the response when its first character does (ChatEncoder's rule)
        lab = [t if start <= s < end else IGNORE_INDEX for t, (s, _e) in zip(ids, enc["offset_mapping"])]
        if max_length is not None and len(ids) > max_length:
            ids, lab, truncated = ids[:max_length], lab[:max_length], truncated + 1
        sequences.append(ids)
        labels.append(lab)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out: any id works
    pairs: list[tuple[float, int]] = []
    for i in range(0, len(sequences), batch_size):
        pairs += token_nll(model, sequences[i : i + batch_size], labels[i : i + batch_size], pad_id)
    return _perplexity_result("perplexity", pairs, {"batch_size": batch_size, "truncated": truncated})


@register("text_perplexity", needs_model=True)
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


JUDGE_KEYS = ("judge_score", "judge_helpfulness", "judge_accuracy", "judge_coherence")


@register("judge", keys=JUDGE_KEYS, needs_prompts=True)
def judge(predictions: Sequence[str], references: Sequence[str], *, prompts: Sequence[Any], **options: Any) -> dict[str, MetricResult]:
    """The LLM-as-judge rubric (:func:`evalsuite.judge.rubric`); ``options`` are a
    :class:`evalsuite.judge.JudgeConfig` (backend, model, url, ...). ``judge_score`` is the mean of the three
    criteria per example (None where one is unparseable); each criterion's value is its mean over the
    examples where it parsed. The judge's reply, scores and rationales go to the examples as annotations."""
    from evalsuite.judge import CRITERIA, JudgeConfig, make_judge, rubric

    out = rubric(make_judge(JudgeConfig(**options)), prompts, predictions, references)
    summary, records = out["summary"], out["records"]
    details = {"judge": out["judge"], "n": summary["n"], "failed": summary["failed"]}
    annotations = [{"judge": {c: r[c] for c in CRITERIA} | {"rationales": r["rationales"], "raw": r["raw"], "error": r["error"]}}
                   for r in records]
    results = {}
    for key, field_name in zip(JUDGE_KEYS, ("judge_score", *CRITERIA)):
        value = summary[field_name]
        results[key] = MetricResult(
            key, float("nan") if value is None else value, [r[field_name] for r in records],
            {**details, "unparseable": summary[f"{field_name}_unparseable"], "scored": sum(r[field_name] is not None for r in records)},
            annotations if key == "judge_score" else None,
        )
    return results
