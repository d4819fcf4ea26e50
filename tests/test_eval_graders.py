"""Graders that agree with official labels, on real data.

- numeric_match on every answer of the shared GSM8K test set: numeric variants built from the "#### N" answer
  that must count as correct (commas, trailing period, "18.0", currency, units, a real reasoning chain ending
  in the answer, the Unicode minus) or wrong (off by one, sign flipped, decimal point moved, the chain's
  first number, a chain ending on another number): 100% agreement, the confusion printed;
- the named extractors gsm8k_strict / gsm8k_flexible against lm-evaluation-harness 0.4.13's own verdicts
  (tests/data/graders, computed by lm-eval's code), item by item;
- SQuAD normalisation that keeps numbers intact, equal to the official SQuAD v1.1 rules on every TriviaQA
  and NQ-open answer without a sign or decimal point in a number;
- alias / answer lists from a suite file (``references_field``): every TriviaQA alias and every NQ-open
  answer scores 1.0 through the metrics, a non-alias 0;
- the metric contract (stats rows aggregate to the value) for numeric_match.
"""

from __future__ import annotations

import json
import re
import string
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from evalsuite.metrics import (
    exact_match, exact_match_normalized, get_extractor, get_metric, normalize_answer, numeric_match,
)
from evalsuite.metrics.extract import (
    LM_EVAL_GSM8K_FLEXIBLE, LM_EVAL_GSM8K_STRICT, UnknownExtractor, extract_regex, lm_eval_regex_filter,
)

GOLDEN = Path(__file__).resolve().parent / "data" / "graders" / "gsm8k_lm_eval_golden.jsonl"


@pytest.fixture(scope="module")
def gsm8k(shared_data) -> list[dict]:
    return _jsonl(shared_data / "gsm8k" / "test.jsonl")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _final(doc: dict) -> str:
    return doc["answer"].rsplit("####", 1)[1].strip()


def _variants(doc: dict) -> list[tuple[str, str, bool]]:
    """(kind, prediction, label) for one GSM8K item; labels by construction, in integer arithmetic."""
    answer = _final(doc)
    v = int(answer.replace(",", ""))
    body = doc["answer"].rsplit("####", 1)[0].rstrip()  # the real reasoning chain, calculator notes and all
    neg = v < 0
    money = f"-${-v:,}" if neg else f"${v:,}"
    out = [
        ("as written", answer, True),
        ("plain", str(v), True),
        ("commas", f"{v:,}", True),
        ("trailing period", f"{v}.", True),
        ("decimal zero", f"{v}.0", True),
        ("two decimals", f"{v:,}.00", True),
        ("currency", money, True),
        ("currency, period", f"The answer is {money}.", True),
        ("unit words", f"{v} dollars", True),
        ("percent", f"{v}%", True),
        ("unit", f"{v} km", True),
        ("markdown", f"**Answer:** {v:,}", True),
        ("chain, #### line", doc["answer"], True),
        ("chain, sentence", f"{body}\nSo the answer is {v:,}.", True),
        ("chain, then remark", f"{body}\nTherefore, {v} is the final answer.", True),
        ("off by one up", f"The answer is {v + 1}.", False),
        ("off by one down", f"{body}\nSo the answer is {v - 1}.", False),
        ("times ten", str(v * 10), False),
        ("chain ends elsewhere", f"{body}\nSo the answer is {v}, no wait, {v + 2}.", False),
    ]
    if v != 0:
        digits = str(abs(v))
        moved = (digits[:-1] + "." + digits[-1]) if len(digits) > 1 else "0." + digits  # 18 -> 1.8, 5 -> 0.5
        out += [("sign flipped", str(-v), False), ("decimal moved", ("-" if neg else "") + moved, False)]
    if neg:
        out += [("unicode minus", f"\u2212{-v}", True), ("minus before currency", f"It is -${-v}.", True),
                ("sign dropped", f"{body}\nThe answer is {-v}.", False)]
    first = re.search(r"\d+", body)  # the chain's first number, alone: right only if it happens to be the answer
    if first:
        out.append(("chain's first number", first.group(), int(first.group()) == v))
    return out


def test_numeric_match_agrees_with_gsm8k_labels_on_every_answer(gsm8k):
    preds, refs, labels, kinds = [], [], [], []
    for doc in gsm8k:
        for kind, pred, label in _variants(doc):
            preds.append(pred)
            refs.append(doc["answer"])  # the full solution: its last number is the "#### N" answer
            labels.append(label)
            kinds.append(kind)
    result = numeric_match(preds, refs)
    got = np.array(result.per_example) == 1.0
    want = np.array(labels)
    confusion = {"true+": int((got & want).sum()), "false+": int((got & ~want).sum()),
                 "false-": int((~got & want).sum()), "true-": int((~got & ~want).sum())}
    wrong = [(k, p[-60:]) for k, p, g, w in zip(kinds, preds, got, want) if g != w]
    print(f"\nnumeric_match on {len(preds)} GSM8K variants ({len(gsm8k)} answers): {confusion}; "
          f"agreement {float((got == want).mean()):.4f}")
    # for the record: string graders on the same labels (a number regex, then SQuAD exact match)
    finals = [_final(d) for d in gsm8k for _ in _variants(d)]
    for take in ("first", "last"):
        picked = [extract_regex(p, r"(-?[\d,.]*\d)", take=take) or "" for p in preds]
        old = np.array([_official_squad_normalize(p) == _official_squad_normalize(f) for p, f in zip(picked, finals)])
        new = np.array(exact_match_normalized(picked, finals).per_example) == 1.0
        print(f"  {take} number + exact match: official SQuAD normalisation {float((old == want).mean()):.4f}, "
              f"ours {float((new == want).mean()):.4f}")
    assert not wrong, wrong[:10]
    assert float((got == want).mean()) == 1.0
    # the reference read from the whole solution or from its bare "#### N" answer: the same verdicts
    assert numeric_match(preds, finals).per_example == result.per_example
    assert result.details["unparsed_references"] == 0 and result.details["no_answer"] == 0
    assert sum(labels) > 0 and sum(not x for x in labels) > 0
    assert {k for k, w in zip(kinds, labels) if w} >= {"unicode minus", "minus before currency", "commas"}


def test_issue_cases_numbers_are_compared_as_numbers():
    # SQuAD normalisation no longer drops signs or decimal points
    cases = [("-10", "10"), ("3.6", "36"), ("58.7", "587")]
    assert exact_match_normalized([p for p, _ in cases], [r for _, r in cases]).per_example == [0.0, 0.0, 0.0]
    assert numeric_match([p for p, _ in cases], [r for _, r in cases]).per_example == [0.0, 0.0, 0.0]
    # the same strings match themselves, and thousands commas / trailing zeros are the same number
    assert exact_match_normalized(["-10", "3.6", "58.7."], ["-10", "3.6", "58.7"]).per_example == [1.0, 1.0, 1.0]
    same = numeric_match(["65,960", "5.0", "18.", ".5", "1/2", "−10"], ["65960", "5", "18", "0.5", "0.5", "-10"])
    assert same.per_example == [1.0] * 6
    assert exact_match(["65,960", "5.0"], ["65960", "5"]).per_example == [0.0, 0.0]  # strict stays strict


def test_numeric_tolerance_and_float_rounding():
    # exact up to float rounding by default: a float artefact equals its decimal, a large integer off by one does not
    assert numeric_match(["0.30000000000000004", "1,000,000,001"], ["0.3", "1,000,000,000"]).per_example == [1.0, 0.0]
    assert numeric_match(["3.14"], ["3.14159"]).value == 0.0
    assert numeric_match(["3.14"], ["3.14159"], tolerance=0.01).value == 1.0
    assert numeric_match(["101", "102"], ["100", "100"], rel_tolerance=0.01).per_example == [1.0, 0.0]
    with pytest.raises(ValueError, match="tolerance must be a number >= 0"):
        numeric_match(["1"], ["1"], tolerance=-1)
    with pytest.raises(ValueError, match="take must be one of"):
        numeric_match(["1"], ["1"], take="middle")
    assert numeric_match(["3 then 4"], ["3"], take="first").value == 1.0


def test_unparsable_reference_is_counted_not_raised(gsm8k):
    preds = [_final(d) for d in gsm8k[:5]]
    refs = [d["answer"] for d in gsm8k[:5]]
    refs[2] = "the answer key lost this one"
    preds[4] = "I don't know"
    result = numeric_match(preds, refs)
    assert result.per_example == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert result.details["unparsed_references"] == 1 and result.details["unparsed_reference_examples"] == [2]
    assert result.details["no_answer"] == 1
    # through an extractor that does not fit a reference: the same, never a ValueError for the whole metric
    strict = numeric_match(["#### 1", "#### 2"], ["#### 1", "no marker"],
                           extract={"name": "gsm8k_strict", "references": True})
    assert strict.per_example == [1.0, 0.0] and strict.details["unparsed_references"] == 1


def test_named_extractors_equal_lm_eval_gsm8k_verdicts_item_by_item(gsm8k):
    rows = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
    outputs = [r["output"] for r in rows]
    refs = [gsm8k[r["line"] - 1]["answer"] for r in rows]
    table = {}
    for name, pipeline, regex, select in (("gsm8k_strict", "strict-match", LM_EVAL_GSM8K_STRICT, 0),
                                          ("gsm8k_flexible", "flexible-extract", LM_EVAL_GSM8K_FLEXIBLE, -1)):
        # lm-eval's filtered answer ("[invalid]" = nothing, None here)
        ours = [lm_eval_regex_filter(o, regex, select) for o in outputs]
        assert ours == [None if r[pipeline]["filtered"] == "[invalid]" else r[pipeline]["filtered"] for r in rows]
        # its exact_match verdicts, through our exact_match with the named extractor on both sides
        em = exact_match(outputs, refs, extract={"name": name, "references": True})
        assert em.per_example == [r[pipeline]["exact_match"] for r in rows], name
        table[f"exact_match+{name}"] = em.per_example
        table[f"numeric_match+{name}"] = numeric_match(outputs, refs, extract={"name": name}).per_example
    table["numeric_match (last number)"] = numeric_match(outputs, refs).per_example
    intended = np.array([float(r["intended_correct"]) for r in rows])
    print(f"\n{len(rows)} lm-eval-style outputs ({intended.mean():.3f} correct as written): share judged correct, "
          "agreement with the intended labels")
    for k, v in table.items():
        print(f"  {k:32s} {np.mean(v):.3f}  {np.mean(np.array(v) == intended):.3f}")
    # numeric comparison after lm-eval's flexible extraction recovers "#### 18.00" and "$1,234." styles
    flex_numeric = numeric_match(outputs, refs, extract={"name": "gsm8k_flexible"}).per_example
    for r, got in zip(rows, flex_numeric):
        if r["style"] in ("hashes", "answer_is", "currency_comma_period", "hashes_decimal"):
            assert got == 1.0, r["output"][-80:]


def test_extractors_in_a_suite_and_the_registry(tmp_path, gsm8k):
    from evalsuite.suite import load_suite

    suite_file = tmp_path / "gsm8k.yaml"
    suite_file.write_text(
        "name: gsm8k\n"
        "tasks:\n"
        "  - name: gsm8k\n"
        f"    path: {Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'gsm8k' / 'test.jsonl'}\n"
        "    shape: mapped\n"
        "    mapping: {user: question, assistant: answer}\n"
        "    limit: 20\n"
        "    metrics:\n"
        "      - numeric_match\n"
        "      - {name: numeric_match, extract: {name: gsm8k_strict}}\n"
        "      - {name: exact_match, extract: {name: gsm8k_flexible, references: true}}\n"
        "      - {name: exact_match, extract: {regex: '(-?[0-9][0-9,]*)', take: first, references: true}}\n"
        "      - {name: numeric_match, extract: gsm8k_flexible}\n",
        encoding="utf-8")
    suite = load_suite(suite_file)
    from evalsuite.runner import task_examples

    examples, skipped = task_examples(suite, suite.tasks[0])
    assert len(examples) == 20 and not skipped
    outputs = [f"Step by step, 2 things to add. The answer is {_final({'answer': e['reference']})}." for e in examples]
    refs = [e["references"] for e in examples]
    values = [get_metric(s.name)(outputs, refs, **s.options)[s.name].value for s in suite.tasks[0].metrics]
    assert values[0] == 1.0  # the last number
    assert values[1] == 0.0  # strict wants "#### N", the outputs have none
    assert values[2] == 1.0  # flexible takes the last number-like string
    # a first match is the first number of a chain ("2"), not the answer: right only where a reference's is 2 too
    assert values[4] == 1.0  # an extractor named by a bare string
    first_is_two = np.mean([re.search(r"\d+", r[0]).group() == "2" for r in refs])
    assert values[3] == pytest.approx(first_is_two) and values[3] < 0.5
    with pytest.raises(UnknownExtractor, match="did you mean 'gsm8k_strict'"):
        get_extractor("gsm8k_stric")
    with pytest.raises(UnknownExtractor, match="gsm8k_flexible"):
        numeric_match(["1"], ["1"], extract={"name": "gsm8k_flex"})
    with pytest.raises(ValueError, match="exactly one of"):
        numeric_match(["1"], ["1"], extract={"name": "gsm8k_strict", "regex": "x"})


def test_regex_take_and_trailing_period():
    chain = "She has 16 - 3 - 4 = 9 eggs, 9 * 2 = 18."
    assert extract_regex(chain, r"(-?\d[\d,.]*)") == "18"  # last by default, the sentence's period dropped
    assert extract_regex(chain, r"(-?\d[\d,.]*)", take="first") == "16"
    assert extract_regex("Total: $1,234.", r"(\$[\d,.]+)") == "$1,234"
    assert extract_regex("It is 3.6.", r"is ([\d.]+)") == "3.6"
    assert extract_regex("Paris.", r"(\w+\.)") == "Paris."  # not a number: untouched
    with pytest.raises(ValueError, match="take must be one of"):
        extract_regex("1", r"(\d)", take="all")


# --------------------------------------------------------------------------------------------------------
# SQuAD normalisation against the official rules


def _official_squad_normalize(s: str) -> str:
    """normalize_answer of the official SQuAD v1.1 evaluation script (evaluate-v1.1.py), verbatim logic."""
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def test_normalization_is_squads_except_inside_numbers(shared_data):
    answers = []
    for line in (shared_data / "triviaqa" / "triviaqa_sm_sub_shared.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        answers += [rec["answer"], *rec["aliases"]]
    for line in (shared_data / "nq_open" / "NQ-open.dev.jsonl").read_text(encoding="utf-8").splitlines():
        answers += json.loads(line)["answer"]
    in_number = re.compile(r"(?<![\w.])[-\u2212]\.?\d|\d\.\d|(?<![\w.])\.\d")
    differ = 0
    for a in answers:
        ours, official = normalize_answer(a), _official_squad_normalize(a)
        if not in_number.search(a):
            assert ours == official, a
        elif ours != official:
            differ += 1
            # the only difference: the sign / decimal points kept (the Unicode minus written "-")
            assert ours.replace("-", "").replace(".", "") == official.replace("\u2212", ""), a
    print(f"\n{len(answers)} TriviaQA/NQ answers: {len(answers) - differ} normalise as SQuAD's script, "
          f"{differ} keep a sign or decimal point")
    assert len(answers) > 20000 and 0 < differ < 200


# --------------------------------------------------------------------------------------------------------
# Alias and answer lists from the suite file


def _suite(tmp_path: Path, body: str):
    from evalsuite.suite import load_suite

    path = tmp_path / "qa.yaml"
    path.write_text(body, encoding="utf-8")
    return load_suite(path)


def test_triviaqa_every_alias_scores_one_through_a_suite(tmp_path, shared_data):
    from evalsuite.runner import task_examples

    suite = _suite(tmp_path, f"""
name: triviaqa
tasks:
  - name: triviaqa
    path: {shared_data / 'triviaqa' / 'triviaqa_sm_sub_shared.jsonl'}
    shape: mapped
    mapping: {{user: context, assistant: answer}}
    references_field: aliases
    limit: 50
    metrics: [exact_match, exact_match_normalized, chrf, rouge]
""")
    examples, skipped = task_examples(suite, suite.tasks[0])
    assert len(examples) == 50 and not skipped
    raw = _jsonl(shared_data / "triviaqa" / "triviaqa_sm_sub_shared.jsonl")[:50]
    for e, rec in zip(examples, raw):
        assert set(e["references"]) == set(rec["aliases"]) | {rec["answer"]}
        assert e["reference"] == rec["answer"] and e["prompt"] == [{"role": "user", "content": rec["context"]}]
    # one prediction per alias, against its example's whole list
    preds, refs = [], []
    for e, rec in zip(examples, raw):
        for alias in rec["aliases"]:
            preds.append(alias)
            refs.append(e["references"])
    for name in ("exact_match", "exact_match_normalized"):
        result = get_metric(name)(preds, refs)[name]
        assert result.value == 1.0 and result.details["n"] == len(preds)
    assert get_metric("chrf")(preds, refs)["chrf"].value == pytest.approx(100.0)
    # SQuAD-style variants of the answer still match; another question's answer does not
    norm = exact_match_normalized([f"The {r['answer'].upper()}." for r in raw], [e["references"] for e in examples])
    assert norm.value == 1.0
    others = [raw[(i + 1) % 50]["answer"] for i in range(50)]
    wrong = exact_match_normalized(others, [e["references"] for e in examples])
    clash = [i for i, o in enumerate(others)
             if normalize_answer(o) in {normalize_answer(r) for r in examples[i]["references"]}]
    assert wrong.per_example == [1.0 if i in clash else 0.0 for i in range(50)] and len(clash) <= 1
    # ROUGE: every alias that has a latin token is its own best reference
    latin = [(p, r) for p, r in zip(preds, refs) if re.search(r"[a-z0-9]", p.lower())]
    rouge = get_metric("rouge")([p for p, _ in latin], [r for _, r in latin], rouge_types=["rouge1"])["rouge1"]
    assert rouge.value == pytest.approx(1.0)


def test_nq_open_answer_lists_and_the_old_string_only_path(tmp_path, shared_data):
    from evalsuite.runner import task_examples

    nq = shared_data / "nq_open" / "NQ-open.dev.jsonl"
    task = """
  - name: {name}
    path: {path}
    shape: mapped
    mapping: {{user: question, assistant: answer}}
    limit: 8
    metrics: [exact_match_normalized, numeric_match, bleu]
"""
    suite = _suite(tmp_path, "name: nq\ntasks:" + task.format(name="lists", path=nq) + "    references_field: answer\n"
                   + task.format(name="strings", path=nq))
    examples, skipped = task_examples(suite, suite.tasks[0])
    raw = [json.loads(line) for line in nq.read_text(encoding="utf-8").splitlines()[:8]]
    assert not skipped and [e["references"] for e in examples] == [r["answer"] for r in raw]
    assert [e["prompt"][-1]["content"] for e in examples] == [r["question"] for r in raw]
    preds = [a for r in raw for a in r["answer"]]
    refs = [e["references"] for e, r in zip(examples, raw) for _ in r["answer"]]
    assert exact_match_normalized(preds, refs).value == 1.0
    assert get_metric("bleu")(preds, refs)["bleu"].value == pytest.approx(100.0)
    numeric = [(p, r) for p, r in zip(preds, refs) if re.search(r"\d", p)]
    assert numeric and numeric_match([p for p, _ in numeric], [r for _, r in numeric]).value == 1.0
    # without references_field a list is no assistant turn: every record is skipped, with the reason
    plain, plain_skipped = task_examples(suite, suite.tasks[1])
    assert not plain and plain_skipped
    assert all("'answer' must be a string, got list" in s["reason"] for s in plain_skipped)


def test_references_field_problems_are_skipped_with_a_reason(tmp_path):
    from evalsuite.runner import task_examples
    from evalsuite.suite import SuiteError

    data = tmp_path / "qa.jsonl"
    rows = [{"q": "2+2?", "answers": {"text": ["4", "four"]}}, {"q": "none?", "answers": {"text": []}},
            {"q": "bad?", "answers": {"text": [{"x": 1}]}}, {"q": "missing?"}, {"q": "num?", "answers": {"text": 42}}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    suite = _suite(tmp_path, f"""
name: qa
tasks:
  - {{name: qa, path: {data}, shape: mapped, mapping: {{user: q}}, references_field: answers.text,
     metrics: [exact_match]}}
""")
    examples, skipped = task_examples(suite, suite.tasks[0])
    assert [e["references"] for e in examples] == [["4", "four"], ["42"]]
    reasons = [s["reason"] for s in skipped]
    assert len(reasons) == 3
    assert "no non-empty answer" in reasons[0] and "got dict" in reasons[1] and "no such field" in reasons[2]
    with pytest.raises(SuiteError, match="references_field"):
        _suite(tmp_path, f"name: x\ntasks:\n  - {{name: m, kind: mmlu, path: {data}, references_field: a}}\n")


# --------------------------------------------------------------------------------------------------------
# The metric contract


def test_numeric_match_stats_rows_rebuild_its_value(gsm8k):
    metric = get_metric("numeric_match")
    score = metric.score("numeric_match")
    assert score.binary and score.higher_is_better
    preds = [_final(d) if i % 3 else f"{_final(d)}1" for i, d in enumerate(gsm8k[:60])]
    refs = [d["answer"] for d in gsm8k[:60]]
    res = metric(preds, refs)["numeric_match"]
    rows = np.asarray(res.stat_rows(), dtype=float)
    assert rows.shape == (60, 1) and set(rows[:, 0]) <= {0.0, 1.0}
    assert score.aggregate(rows, {}) == pytest.approx(res.value) and res.value == pytest.approx(40 / 60)
    sub = rows[::4]
    assert score.aggregate(sub, {}) == pytest.approx(metric(preds[::4], refs[::4])["numeric_match"].value)
    assert Fraction(res.details["matched"], res.details["n"]) == Fraction(40, 60)


def test_a_bad_extractor_is_a_suite_error_before_any_work(tmp_path, shared_data):
    from evalsuite.suite import SuiteError

    task = (f"  - {{name: g, path: {shared_data / 'gsm8k' / 'test.jsonl'}, shape: mapped,\n"
            "     mapping: {user: question, assistant: answer},\n")
    def suite_with(metric: str):
        return _suite(tmp_path, "name: s\ntasks:\n" + task + f"     metrics: [{metric}]}}\n")

    with pytest.raises(SuiteError, match="did you mean 'gsm8k_strict'"):
        suite_with("{name: numeric_match, extract: {name: gsm8k_stric}}")
    with pytest.raises(SuiteError, match="has 0 group"):
        suite_with("{name: exact_match, extract: {regex: 'x'}}")
    with pytest.raises(SuiteError, match="take must be one of"):
        suite_with("{name: exact_match, extract: {regex: '(x)', take: all}}")
    ok = suite_with("{name: numeric_match, extract: gsm8k_flexible}")
    assert ok.tasks[0].metrics[0].options == {"extract": "gsm8k_flexible"}
