"""evalsuite's metric registry: parity with the reference implementations on real data.

- BLEU/chrF equal sacrebleu's command line on WMT22 system outputs (single and multi-reference);
- ROUGE equals rouge-score on the XSum system summaries;
- exact match and the extractors on hand-checked cases (and GSM8K's "#### N" answers);
- perplexity equals the model's own ``labels=`` loss, whatever the batch size, and the sliding-window text
  perplexity equals the Hugging Face guide's loop.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evalsuite.metrics import (
    METRICS,
    UnknownMetric,
    bleu,
    chrf,
    exact_match,
    exact_match_normalized,
    extract_json_field,
    extract_regex,
    get_metric,
    normalize_answer,
    perplexity,
    rouge,
    text_perplexity,
)

# --------------------------------------------------------------------------------------------------------
# Registry


def test_registry_names_and_keys():
    assert {"bleu", "chrf", "rouge", "exact_match", "exact_match_normalized", "perplexity", "text_perplexity"} <= set(METRICS)
    assert get_metric("rouge").keys[:4] == ("rouge1", "rouge2", "rougeL", "rougeLsum")
    assert get_metric("perplexity").needs_model and not get_metric("bleu").needs_model
    # calling a registered metric always gives {key: MetricResult}
    out = get_metric("exact_match")(["a"], ["a"])
    assert list(out) == ["exact_match"] and out["exact_match"].value == 1.0
    assert set(get_metric("rouge")(["a b"], ["a b"])) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}


def test_unknown_metric_lists_known_names():
    with pytest.raises(UnknownMetric, match=r"unknown metric 'blue'.*bleu, chrf"):
        get_metric("blue")
    with pytest.raises(UnknownMetric, match=r"'rougeL' is a result of metric 'rouge'"):
        get_metric("rougeL")


# --------------------------------------------------------------------------------------------------------
# BLEU and chrF: sacrebleu's command line on WMT22

SACREBLEU = Path(sys.executable).with_name("sacrebleu")


def _lines(path: Path) -> list[str]:
    # what the sacrebleu command line reads: "\n"-separated lines, trailing whitespace stripped
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip() for line in f]


def _sacrebleu_cli(refs: list[Path], hyp: Path) -> dict[str, dict]:
    cmd = [str(SACREBLEU), *map(str, refs), "-i", str(hyp), "-m", "bleu", "chrf", "-w", "6", "--format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {r["name"]: r for r in json.loads(out)}


@pytest.mark.parametrize(
    ("pair", "system", "ref_ids"),
    [("en-de", "Online-A", ["A"]), ("de-en", "Online-B", ["A"]), ("en-de", "Online-B", ["A", "B"])],
)
def test_bleu_chrf_equal_sacrebleu_cli_on_wmt22(shared_data, pair, system, ref_ids):
    if not SACREBLEU.is_file():
        pytest.skip("the sacrebleu command is not installed next to this python")
    txt = shared_data / "wmt22" / "txt"
    tgt = pair.split("-")[1]
    hyp_path = txt / "system-outputs" / f"generaltest2022.{pair}.hyp.{system}.{tgt}"
    ref_paths = [txt / "references" / f"generaltest2022.{pair}.ref.{r}.{tgt}" for r in ref_ids]
    cli = _sacrebleu_cli(ref_paths, hyp_path)

    hyps = _lines(hyp_path)
    per_ref = [_lines(p) for p in ref_paths]
    # our reference form: one list of references per prediction
    references = [list(rs) for rs in zip(*per_ref)] if len(per_ref) > 1 else per_ref[0]
    ours_bleu = bleu(hyps, references)
    ours_chrf = chrf(hyps, references)

    # the command line printed 6 decimals
    assert ours_bleu.value == pytest.approx(cli["BLEU"]["score"], abs=5e-7)
    assert ours_chrf.value == pytest.approx(cli["chrF2"]["score"], abs=5e-7)
    assert ours_bleu.details["signature"] == cli["BLEU"]["signature"]
    assert ours_chrf.details["signature"] == cli["chrF2"]["signature"]
    assert f"nrefs:{len(ref_ids)}|" in ours_bleu.details["signature"]

    # per-example scores: sacrebleu's sentence-level functions, one per line
    import sacrebleu

    assert len(ours_bleu.per_example) == len(ours_chrf.per_example) == len(hyps)
    for i in range(0, len(hyps), 200):
        refs_i = [r[i] for r in per_ref]
        assert ours_bleu.per_example[i] == sacrebleu.sentence_bleu(hyps[i], refs_i).score
        assert ours_chrf.per_example[i] == sacrebleu.sentence_chrf(hyps[i], refs_i).score


def test_bleu_variable_reference_counts():
    # sacrebleu's own convention: None pads the reference streams of examples with fewer references
    import sacrebleu

    hyps = ["the cat sat on the mat", "a dog barked loudly"]
    refs = [["the cat sat on the mat", "a cat was on the mat"], ["the dog barked"]]
    expected = sacrebleu.corpus_bleu(hyps, [["the cat sat on the mat", "the dog barked"], ["a cat was on the mat", None]])
    assert bleu(hyps, refs).value == expected.score
    assert "nrefs:var" in bleu(hyps, refs).details["signature"]


# --------------------------------------------------------------------------------------------------------
# ROUGE: rouge-score on XSum system summaries


def _xsum_summaries(shared_data: Path) -> dict[str, dict[str, str]]:
    """``{system: {bbcid: summary}}``; the CSV has one row per annotator, the summary repeated."""
    out: dict[str, dict[str, str]] = {}
    with open(shared_data / "xsum_faithfulness" / "hallucination_annotations_xsum_summaries.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            seen = out.setdefault(row["system"], {}).setdefault(row["bbcid"], row["summary"])
            assert seen == row["summary"], "one summary per (bbcid, system)"
    return out


@pytest.mark.parametrize(("system", "use_stemmer"), [("BERTS2S", True), ("PtGen", False)])
def test_rouge_equals_rouge_score_on_xsum(shared_data, system, use_stemmer):
    from rouge_score import rouge_scorer

    summaries = _xsum_summaries(shared_data)
    ids = sorted(set(summaries[system]) & set(summaries["Gold"]))
    assert len(ids) == 250
    preds = [summaries[system][i] for i in ids]
    refs = [summaries["Gold"][i] for i in ids]

    ours = rouge(preds, refs, use_stemmer=use_stemmer)

    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    oracle = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
    scores = [oracle.score(r, p) for p, r in zip(preds, refs)]
    for t in types:
        f = [s[t].fmeasure for s in scores]
        assert ours[t].per_example == f
        assert ours[t].value == pytest.approx(sum(f) / len(f), rel=1e-12)
        assert ours[t].details["recall"] == pytest.approx(sum(s[t].recall for s in scores) / len(f), rel=1e-12)
        assert ours[t].details["use_stemmer"] is use_stemmer
    assert 0.05 < ours["rouge2"].value < ours["rougeL"].value < ours["rouge1"].value < 0.6


def test_rouge_pltrdy_fixture_sentence_per_line_and_multi_reference(shared_data):
    # pltrdy/rouge's expected numbers in data.json are not asserted: that library counts n-gram *sets*,
    # keeps punctuation tokens, does not stem and adds 1e-8 to F, so it is a different ROUGE. Its long
    # CNN/DM-style texts still exercise rougeLsum: one sentence per line gives summary-level LCS.
    from rouge_score import rouge_scorer

    folder = shared_data / "rouge_pltrdy"
    hyps = [h for h in (folder / "hyp.txt").read_text(encoding="utf-8").split("\n") if h]
    refs = [r for r in (folder / "ref.txt").read_text(encoding="utf-8").split("\n") if r]
    assert len(hyps) == len(refs) == 4
    refs = [r.replace(" . ", " .\n") for r in refs]  # one sentence per line

    ours = rouge(hyps, refs)
    oracle = rouge_scorer.RougeScorer(["rougeL", "rougeLsum"], use_stemmer=True)
    expected = [oracle.score(r, h) for h, r in zip(hyps, refs)]
    assert ours["rougeLsum"].per_example == [s["rougeLsum"].fmeasure for s in expected]
    assert ours["rougeL"].per_example == [s["rougeL"].fmeasure for s in expected]
    assert ours["rougeLsum"].per_example != ours["rougeL"].per_example  # the newlines mattered

    # several references: the best F over them (rouge-score's score_multi)
    other = [refs[(i + 1) % 4] for i in range(4)]
    multi = rouge(hyps, [[o, r] for o, r in zip(other, refs)], rouge_types=["rouge1"])
    one = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    best = [max(one.score(o, h)["rouge1"].fmeasure, one.score(r, h)["rouge1"].fmeasure) for h, o, r in zip(hyps, other, refs)]
    assert multi["rouge1"].per_example == best


# --------------------------------------------------------------------------------------------------------
# Exact match and extractors


def test_normalize_answer_squad_cases():
    assert normalize_answer("The Cat!") == "cat"
    assert normalize_answer("  An   apple,  a day. ") == "apple day"
    assert normalize_answer("the theory") == "theory"  # "the" only as a whole word
    assert normalize_answer("U.S.A.") == "usa"


def test_exact_match_strict_and_normalized():
    preds = ["The Cat!", "Paris", "the  Eiffel   Tower.", "apples", "42"]
    refs = [["cat"], ["paris, france", "Paris"], ["eiffel tower", "tour eiffel"], ["Apple"], "42 "]
    strict = exact_match(preds, refs)
    normalized = exact_match_normalized(preds, refs)
    assert strict.per_example == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert normalized.per_example == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert strict.value == pytest.approx(0.2) and normalized.value == pytest.approx(0.8)
    assert normalized.details["matched"] == 4


def test_extract_regex():
    assert extract_regex("so the answer is 42.", r"answer is (\d+)") == "42"
    assert extract_regex("no number here", r"answer is (\d+)") is None
    assert extract_regex("x = 3, y = 4", r"(?P<var>\w) = (?P<val>\d)", group="val") == "4"  # the last match
    assert extract_regex("x = 3, y = 4", r"(?P<var>\w) = (?P<val>\d)", group="val", take="first") == "3"
    with pytest.raises(ValueError, match="has 0 group"):
        extract_regex("42", r"\d+")


def test_extract_json_field():
    fenced = 'Sure! Here it is:\n```json\n{"answer": {"items": [3, "x"]}, "ok": true, "none": null}\n```\nAnything else?'
    assert extract_json_field(fenced, "answer.items.0") == "3"
    assert extract_json_field(fenced, "answer.items.1") == "x"
    assert extract_json_field(fenced, "answer.items.-1") == "x"
    assert extract_json_field(fenced, "ok") == "true"
    assert extract_json_field(fenced, "none") == "null"
    assert extract_json_field(fenced, "answer") == '{"items":[3,"x"]}'
    assert extract_json_field(fenced, "answer.missing") is None
    assert extract_json_field(fenced, "answer.items.5") is None
    assert extract_json_field('use {braces} and [brackets] then {"a": {"b": 1}}', "a.b") == "1"
    assert extract_json_field('{"label": "pos"', "label") is None  # truncated: nothing decodes
    assert extract_json_field("plain text", "") is None


def test_metric_extract_option_counts_unparsed_never_guesses():
    preds = ['{"label": "positive"}', "```json\n{\"label\": \"Negative\"}\n```", "I think it is positive", '{"lab": "positive"}']
    refs = ["positive", "negative", "positive", "positive"]
    strict = exact_match(preds, refs, extract={"json_field": "label"})
    assert strict.per_example == [1.0, 0.0, 0.0, 0.0]
    assert strict.details["unparsed"] == 2
    normalized = get_metric("exact_match_normalized")(preds, refs, extract={"json_field": "label"})["exact_match_normalized"]
    assert normalized.per_example == [1.0, 1.0, 0.0, 0.0] and normalized.details["unparsed"] == 2
    # an unparsed prediction scores as an empty hypothesis for text metrics
    assert bleu(["nothing here"], ["the answer"], extract={"regex": r"answer: (\w+)"}).value == 0.0
    with pytest.raises(ValueError, match="exactly one of"):
        exact_match(preds, refs, extract={"regex": "x", "json_field": "y"})
    # a reference the extractor cannot read: that example is wrong and counted, the rest still score
    unread = exact_match(["#### 1", "#### 2"], ["no marker", "#### 2"], extract={"regex": r"#### (\d+)", "references": True})
    assert unread.per_example == [0.0, 1.0] and unread.details["unparsed_references"] == 1
    assert unread.details["unparsed_reference_examples"] == [0]
    with pytest.raises(ValueError, match="references of examples \\[0\\]"):  # BLEU has no score without one
        bleu(["1"], ["no marker"], extract={"regex": r"#### (\d+)", "references": True})


def test_gsm8k_final_answer_extraction(shared_data):
    # GSM8K references end in "#### N": extracting from both sides scores the final number only
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:50]]
    answers = [r["answer"] for r in rows]
    extract = {"regex": r"####\s*(-?[\d,.]+)", "references": True}
    # a "model" that reasons differently but lands on the same number, one that lands elsewhere, one that never answers
    preds = [f"My working differs.\n#### {a.split('####')[1].strip()}" for a in answers]
    preds[1] = "#### 999999"
    preds[2] = "I am not sure."
    result = exact_match(preds, answers, extract=extract)
    assert result.details["unparsed"] == 1
    assert result.per_example[:3] == [1.0, 0.0, 0.0]
    assert result.value == pytest.approx(48 / 50)


# --------------------------------------------------------------------------------------------------------
# Perplexity with the embedded SmolLM2

@pytest.fixture(scope="module")
def smollm2():
    # as in test_train_export: on a shared 2-core machine torch's second thread only spin-waits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.models import EmbeddedModelMissing, smollm2_model_dir

    try:
        path = str(smollm2_model_dir())
    except EmbeddedModelMissing as e:
        pytest.skip(str(e))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    yield model, AutoTokenizer.from_pretrained(path)
    torch.set_num_threads(threads)


def _alpaca_pairs(shared_data: Path):
    rows = json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text(encoding="utf-8"))
    picked = [rows[i] for i in (0, 1, 3, 6)]  # responses of 2 to 263 characters: real padding in a batch
    prompts: list = [r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "") for r in picked]
    # one prompt as chat messages with its own system turn
    prompts[3] = [{"role": "system", "content": "You are an acoustics expert."}, {"role": "user", "content": prompts[3]}]
    return prompts, [r["output"] for r in picked]


def test_perplexity_equals_model_loss_and_ignores_batch_size(shared_data, smollm2):
    model, tok = smollm2
    prompts, responses = _alpaca_pairs(shared_data)

    # the direct computation: the model's own mean loss over the tokens after the generation prompt
    nll_sum, n_total, counts = 0.0, 0, []
    for prompt, response in zip(prompts, responses):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        prefix = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
        assert full.startswith(prefix)
        prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
        full_ids = tok(full, add_special_tokens=False)["input_ids"]
        assert full_ids[: len(prefix_ids)] == prefix_ids
        assert tok.decode(full_ids[len(prefix_ids) :]) == response + "<|im_end|>\n"
        # the answer and its end of turn are scored, the template's newline after it is not (as training scores it)
        ids = torch.tensor([full_ids])
        labels = torch.tensor([[-100] * len(prefix_ids) + full_ids[len(prefix_ids) : -1] + [-100]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        n = len(full_ids) - len(prefix_ids) - 1
        nll_sum, n_total = nll_sum + loss * n, n_total + n
        counts.append(n)
    expected = math.exp(nll_sum / n_total)

    one = perplexity(model, tok, prompts, responses, batch_size=1)
    four = perplexity(model, tok, prompts, responses, batch_size=4)
    assert [c for _, c in one.stats] == [c for _, c in four.stats] == counts
    assert one.details["n_tokens"] == n_total
    assert one.value == pytest.approx(expected, rel=1e-6)
    assert four.value == pytest.approx(one.value, rel=1e-6)
    assert four.per_example == pytest.approx(one.per_example, rel=1e-5)
    assert math.log(one.value) == pytest.approx(
        sum(m * c for m, c in zip(one.per_example, counts)) / n_total, rel=1e-9
    )  # per-example mean NLL, token-weighted, is the headline
    assert 1.0 < one.value < 100.0


def _guide_loop(model, encodings, max_length: int, stride: int, count_scored: bool = False):
    """The loop of the Hugging Face guide "Perplexity of fixed-length models", returning (nll_sum, n_tokens).

    ``count_scored=True`` changes one line: the token count is the number of labels the model actually
    scores (after its internal shift) instead of "valid labels - batch size".
    """
    seq_len = encodings.input_ids.size(1)
    nll_sum = 0.0
    n_tokens = 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        input_ids = encodings.input_ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
            neg_log_likelihood = outputs.loss
        num_valid_tokens = (target_ids != -100).sum().item()
        batch_size = target_ids.size(0)
        num_loss_tokens = num_valid_tokens - batch_size  # subtract batch_size due to internal label shift
        if count_scored:
            num_loss_tokens = (target_ids[:, 1:] != -100).sum().item()
        nll_sum += neg_log_likelihood.item() * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


def test_text_perplexity_equals_the_guides_sliding_window(shared_data, smollm2):
    model, tok = smollm2
    lines = (shared_data / "pretrain_text" / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"][:500] for line in lines[:3]]  # ~110 tokens each: 3 windows of 64 by 32
    encodings = [tok(t, return_tensors="pt") for t in texts]

    def guide(max_length, stride, count_scored=False):
        sums = [_guide_loop(model, e, max_length, stride, count_scored) for e in encodings]
        return math.exp(sum(s for s, _ in sums) / sum(n for _, n in sums)), sum(n for _, n in sums)

    # overlapping windows: the same windows and scored tokens as the guide; we weight each window by the
    # tokens it scores, the guide by one fewer (see text_perplexity's docstring)
    ours = text_perplexity(model, tok, texts, max_length=64, stride=32)
    expected, n_scored = guide(64, 32, count_scored=True)
    assert ours.value == pytest.approx(expected, rel=1e-6)
    assert ours.details["n_tokens"] == n_scored == sum(e.input_ids.size(1) - 1 for e in encodings)
    _, n_guide = guide(64, 32)
    assert n_guide == n_scored - (ours.details["windows"] - len(texts))  # one short per window after a text's first

    # disjoint windows (stride == max_length): the guide's own count is exact, and we equal it as written
    disjoint = text_perplexity(model, tok, texts, max_length=64, stride=64)
    expected_disjoint, _ = guide(64, 64)
    assert disjoint.value == pytest.approx(expected_disjoint, rel=1e-6)
    assert disjoint.value > ours.value  # less context per token
