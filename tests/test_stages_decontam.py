"""Decontamination against eval sets: real eval files, real training files, the real stage and pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from curate.config import ConfigError, parse_config
from curate.frames import canonical_frame, with_derived
from curate.readers import read_file
from curate.shapes import Converter, build_frame
from curate.stages import StageContext
from curate.stages.decontam import Decontaminate
from tests.conftest import write_jsonl

ARC_TRAIN = "decontamination/arc_easy_test_first100_as_train.jsonl"
ARC_EVAL = "arc/arc_easy_shared.jsonl"
MMLU_SUBJECTS = ("high_school_world_history", "high_school_psychology", "miscellaneous", "nutrition", "prehistory", "sociology")


def _stage(shared: Path, eval_sets, **params) -> Decontaminate:
    return Decontaminate(Decontaminate.Params(eval_sets=eval_sets, **params), StageContext(config_dir=shared))


def _run(stage: Decontaminate, frame: pl.DataFrame, batch: int = 5000) -> pl.DataFrame:
    prepared = [stage.prepare(frame.slice(i, batch)) for i in range(0, frame.height, batch)]
    return stage.decide(pl.concat(prepared))


def _frame(shared: Path, path: str, limit: int | None = None) -> pl.DataFrame:
    """A canonical frame of a real training file, as `curate run` builds it."""
    conv, rows = Converter(), []
    for batch in read_file(shared / path):
        rows += [(ln, conv.convert(r)) for ln, r in zip(batch.lines, batch.records)]
    rows = rows[:limit]
    cols = list(zip(*[c for _, c in rows]))
    return with_derived(build_frame(list(range(len(rows))), path, [ln for ln, _ in rows], *cols))


def _ref_line(detail: str, name: str) -> int:
    m = re.search(re.escape(name) + r":(\d+) ", detail)
    assert m, detail
    return int(m.group(1))


def test_arc_test_questions_used_as_training_are_all_flagged(shared_data, run_config, tmp_path):
    # The training file is the first 100 ARC-Easy test questions in {query, choices, gold}; mapped the way
    # a fine-tuning set would use it: the question as the prompt, the gold choice index as the response.
    # A quarter of the questions are shorter than one 13-gram ("Question: What causes sound?").
    res = run_config({
        "inputs": [{"path": str(shared_data / ARC_TRAIN), "mapping": {"user": "query", "assistant": "gold"}}],
        "stages": [{"decontaminate": {"eval_sets": [str(shared_data / ARC_EVAL), str(shared_data / "gsm8k" / "test.jsonl")]}}],
    })
    assert res.summary["stages"][0]["reasons"] == {"contaminated": 100}
    ledger = pl.read_parquet(res.output_dir / "ledger.parquet").sort("source_line")
    assert ledger["status"].unique().to_list() == ["rejected"]
    train = [json.loads(x) for x in (shared_data / ARC_TRAIN).read_text().splitlines()]
    evals = (shared_data / ARC_EVAL).read_text().splitlines()
    for row in ledger.to_dicts():
        line = _ref_line(row["detail"], "arc_easy_shared.jsonl")
        assert json.loads(evals[line - 1])["query"].strip() == train[row["source_line"] - 1]["query"].strip(), row["detail"]
    # the report shows the matched span (the "Question:" label is not part of it)
    example = ledger.filter(pl.col("source_line") == 2)["detail"][0]
    assert example.startswith("13-gram overlap with ") and '"which piece of safety equipment is used to keep mold spores' in example
    short = ledger.filter(pl.col("detail").str.contains("what causes sound"))["detail"][0]
    assert short.startswith("whole-question overlap (3 words)")


def test_clean_alpaca_has_almost_no_hits_against_four_benchmarks(shared_data):
    mmlu = [f"mmlu/{s}_test.csv" for s in MMLU_SUBJECTS]
    stage = _stage(shared_data, [ARC_EVAL, "arc/arc_challenge_shared.jsonl", "gsm8k/test.jsonl", *mmlu, "truthfulqa/TruthfulQA.csv"])
    frame = _frame(shared_data, "alpaca/alpaca_data_first10k_excl_holdout.json", limit=6000)
    rejects = _run(stage, frame).join(frame.select("uid", "prompt_text"), on="uid")
    for r in rejects.to_dicts():
        print(r["detail"], "\n   ", r["prompt_text"][:200].replace("\n", " "))
    # The one hit is real: an Alpaca prompt quotes the opening of A Tale of Two Cities, and so does an MMLU
    # world-history item; the short-item rule adds no false hit (no short choice or answer is evidence).
    assert rejects.height <= 2
    assert all("high_school_world_history" in d and "it was the best of times" in d for d in rejects["detail"])


def test_planted_gsm8k_question_is_caught_with_its_item(shared_data):
    gsm = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    frame = _frame(shared_data, "alpaca/alpaca_4000.json", limit=2000)
    planted = canonical_frame([
        [("user", "Solve this word problem step by step.\n\n" + gsm[416]["question"].replace("\n", " ").upper()), ("assistant", "Let me think.")],
        # a paraphrase that keeps a 13-word run of the solution, in the response
        [("user", "How many?"), ("assistant", "We know that " + " ".join(re.findall(r"\w+", gsm[900]["answer"])[3:20]) + ", so that is it.")],
    ], uid=[10_000, 10_001], id=["planted0", "planted1"])
    rejects = _run(_stage(shared_data, ["gsm8k/test.jsonl"]), pl.concat([frame, planted], how="vertical_relaxed"))
    by_uid = dict(zip(rejects["uid"].to_list(), rejects["detail"].to_list()))
    assert set(by_uid) == {10_000, 10_001}, by_uid
    assert _ref_line(by_uid[10_000], "gsm8k/test.jsonl") == 417
    assert _ref_line(by_uid[10_001], "gsm8k/test.jsonl") == 901
    words = " ".join(re.findall(r"\w+", gsm[416]["question"].lower()))
    span = re.search(r'"(.*)"', by_uid[10_000]).group(1)
    assert span.removesuffix(" …") in words
    # `fields` picks the training text: the second plant is in a response
    prompts_only = _run(_stage(shared_data, ["gsm8k/test.jsonl"], fields="prompt"), planted)
    assert prompts_only["uid"].to_list() == [10_000]


def test_boilerplate_shared_by_many_training_records_is_not_evidence(tmp_path):
    banner = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    write_jsonl(tmp_path / "eval.jsonl", [
        {"question": banner + " What is the boiling point of water at sea level in degrees Celsius?", "answer": "100"},
        {"question": "Name the largest planet of the solar system and explain how we know its mass so precisely.", "answer": "Jupiter"},
    ])
    convs = [[("user", f"{banner}\n\nTell me fact number {i} about owls."), ("assistant", f"Owls fact {i}.")] for i in range(120)]
    # one real copy of the second item, and one record with the banner and nothing else of the eval set
    convs.append([("user", "Name the largest planet of the solar system and explain how we know its mass so precisely."), ("assistant", "Jupiter.")])
    frame = canonical_frame(convs)
    stage = Decontaminate(Decontaminate.Params(eval_sets=["eval.jsonl"]), StageContext(config_dir=tmp_path))
    assert stage.boilerplate_threshold(frame.height) == 50
    rejects = _run(stage, frame, batch=50)
    assert rejects["uid"].to_list() == [120]
    assert "eval.jsonl:2 " in rejects["detail"][0]
    # with the threshold above the banner's 120 records, the banner is evidence again
    loose = Decontaminate(Decontaminate.Params(eval_sets=["eval.jsonl"], boilerplate_max_records=500), StageContext(config_dir=tmp_path))
    assert _run(loose, frame, batch=50).height == 121
    # min_matches: the copied question has many 13-grams, the banner records only a few
    strict = Decontaminate(Decontaminate.Params(eval_sets=["eval.jsonl"], boilerplate_max_records=500, min_matches=5), StageContext(config_dir=tmp_path))
    assert _run(strict, frame, batch=50)["uid"].to_list() == [120]


def test_eval_template_shared_by_many_items_is_not_evidence(shared_data):
    # MMLU moral_scenarios repeats one long question stem in all its items: a training record with that stem
    # and other scenarios copies no item.
    first = next(read_file(shared_data / "mmlu" / "moral_scenarios_test.csv", csv_header=["q", "a", "b", "c", "d", "answer"])).records[0]
    stem = first["q"].split("Scenario 1")[0].strip()
    frame = canonical_frame([
        [("user", stem + " Scenario 1 | Quietly humming, my walrus painted the fence blue. Scenario 2 | Walruses never paint fences."),
         ("assistant", "Neither")],
        [("user", first["q"]), ("assistant", first["b"])],
    ])
    rejects = _run(_stage(shared_data, ["mmlu/moral_scenarios_test.csv"]), frame)
    assert rejects["uid"].to_list() == [1]
    assert "mmlu/moral_scenarios_test.csv:1 " in rejects["detail"][0]  # headerless CSV: the first row is an item


def test_missing_eval_file_is_a_config_error_naming_it(tmp_path):
    from curate.pipeline import Pipeline

    write_jsonl(tmp_path / "train.jsonl", [{"instruction": "Say hi.", "output": "Hi."}])
    write_jsonl(tmp_path / "gsm.jsonl", [{"question": "What is two plus two, in words, said slowly?", "answer": "four"}])
    cfg = parse_config({"name": "t", "tokenizer": None, "inputs": [{"path": "train.jsonl"}],
                        "stages": [{"decontaminate": {"eval_sets": ["gsm.jsonl", {"path": "evals/missing_mmlu.csv"}]}}]}, tmp_path)
    with pytest.raises(ConfigError, match=r"decontaminate\.eval_sets\[1\]: evals/missing_mmlu\.csv: no such file"):
        Pipeline(cfg, progress=False)
    with pytest.raises(ConfigError, match=r"min_words"):
        parse_config({"name": "t", "inputs": [{"path": "train.jsonl"}],
                      "stages": [{"decontaminate": {"eval_sets": ["gsm.jsonl"], "ngram": 5, "min_words": 8}}]}, tmp_path)


def test_curate_run_ledger_names_eval_file_and_item(shared_data, tmp_path, run_config):
    # eval sets given as a relative path, a {path, name} and a glob; the training file mixes clean Alpaca
    # rows with a TruthfulQA question and an MMLU question pasted into prompts
    (tmp_path / "evals").mkdir()
    for name in ("nutrition_test.csv", "sociology_test.csv"):
        (tmp_path / "evals" / name).write_bytes((shared_data / "mmlu" / name).read_bytes())
    (tmp_path / "evals" / "TruthfulQA.csv").write_bytes((shared_data / "truthfulqa" / "TruthfulQA.csv").read_bytes())
    tqa_batch = next(read_file(tmp_path / "evals" / "TruthfulQA.csv"))
    tqa = tqa_batch.records[40]
    soc_batch = next(read_file(tmp_path / "evals" / "sociology_test.csv", csv_header=list("qabcdx")))
    soc_q = soc_batch.records[10]["q"]
    alpaca = json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[:300]
    rows = alpaca + [
        {"instruction": tqa["Question"], "input": "", "output": tqa["Best Answer"]},
        {"instruction": "Answer the quiz question.", "input": soc_q, "output": "B"},
    ]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    res = run_config({
        "inputs": [{"path": "train.json"}],
        "stages": [{"decontaminate": {"eval_sets": [
            {"path": "evals/TruthfulQA.csv", "name": "truthfulqa", "csv_header": True}, "evals/*_test.csv"]}}],
    })
    ledger = pl.read_parquet(res.output_dir / "ledger.parquet")
    hit = ledger.filter(pl.col("reason") == "contaminated").sort("source_line")
    # Alpaca's line 41 asks "What is your favorite color?", which is, word for word, a TruthfulQA question
    assert hit["source_line"].to_list() == [41, 301, 302], hit["detail"].to_list()
    assert hit["stage"].unique().to_list() == ["decontaminate"]
    assert hit["detail"][0] == 'whole-question overlap (5 words) with truthfulqa:105 (1 n-gram): "what is your favorite color"'
    assert re.search(r"with truthfulqa:\d+ ", hit["detail"][1])
    assert _ref_line(hit["detail"][1], "truthfulqa") == tqa_batch.lines[40]
    assert _ref_line(hit["detail"][2], "evals/sociology_test.csv") == soc_batch.lines[10]
    html = (res.output_dir / "report.html").read_text()
    assert "evals/sociology_test.csv" in html


def test_editing_an_eval_file_reruns(tmp_path, run_config):
    write_jsonl(tmp_path / "train.jsonl", [
        {"instruction": "What is the tallest mountain in the solar system?", "output": "Olympus Mons on Mars."},
        {"instruction": "Name a primary colour.", "output": "Red."},
    ])
    write_jsonl(tmp_path / "eval.jsonl", [{"question": "Which planet has the largest volcano?", "answer": "Mars"}])
    cfg = {"inputs": [{"path": "train.jsonl"}], "stages": [{"decontaminate": {"eval_sets": ["eval.jsonl"]}}]}
    first = run_config(cfg)
    assert first.summary["rejected"] == 0
    assert run_config(cfg).skipped
    write_jsonl(tmp_path / "eval.jsonl", [{"question": "What is the tallest mountain in the solar system?", "answer": "Olympus Mons"}])
    again = run_config(cfg)
    assert not again.skipped and again.summary["stages"][0]["reasons"] == {"contaminated": 1}


def _items(shared: Path, path: str, n: int) -> list[dict]:
    return [json.loads(x) for x in (shared / path).read_text().splitlines()[:n]]


def test_arc_and_triviaqa_questions_found_without_their_labels(shared_data, tmp_path):
    # The eval files store "Question: ..." (ARC) and "Question: ...\nAnswer:" (TriviaQA) around the question;
    # training copies without the labels, alone or inside a longer instruction, are the same item.
    arc = _items(shared_data, ARC_EVAL, 60)
    tqa = _items(shared_data, "triviaqa/triviaqa_sm_sub_shared.jsonl", 60)
    arc_q = [r["query"].removeprefix("Question: ").strip() for r in arc]
    tqa_q = [r["context"].removeprefix("Question: ").removesuffix("\nAnswer:").strip() for r in tqa]
    convs = [[("user", q), ("assistant", r["choices"][r["gold"]])] for q, r in zip(arc_q, arc)]
    convs += [[("user", f"Answer this trivia question: {q.rstrip('?')}? Give a short answer."), ("assistant", r["answer"])] for q, r in zip(tqa_q, tqa)]
    rejects = _run(_stage(shared_data, [ARC_EVAL, "triviaqa/triviaqa_sm_sub_shared.jsonl"]), canonical_frame(convs))
    by_uid = dict(zip(rejects["uid"].to_list(), rejects["detail"].to_list()))
    assert sorted(by_uid) == list(range(120))
    for i in range(60):  # each names its own item (file lines are 1-based)
        assert _ref_line(by_uid[i], "arc_easy_shared.jsonl") == i + 1, by_uid[i]
        assert _ref_line(by_uid[60 + i], "triviaqa_sm_sub_shared.jsonl") == i + 1, by_uid[60 + i]
    assert "question" not in by_uid[60].split('"')[1].split()[:1]  # the span starts at the question, not a label
    # a short question is a sentence of its own, not a prefix of a longer one
    what_causes = next(i for i, q in enumerate(arc_q) if q == "What causes sound?")
    near = canonical_frame([[("user", "What causes sound waves to bend around corners?"), ("assistant", "Diffraction.")]])
    assert _run(_stage(shared_data, [ARC_EVAL]), near).height == 0
    assert by_uid[what_causes].startswith("whole-question overlap (") and '"what causes sound' in by_uid[what_causes]


def test_generic_choices_of_short_mmlu_stems_are_not_evidence(shared_data):
    # "Neural networks:" (machine_learning) and "Structural interventions typically target:" (virology) have
    # short stems: their choices ("None of the above", "Policies", "Optimize a convex objective function")
    # must never be indexed as the question.
    lines = ["All of the above.", "None of the above", "all of the above", "Policies", "True", "Optimize a convex objective function",
             "Can use a mix of different activation functions"]
    frame = canonical_frame([[("user", "Pick the best option."), ("assistant", x)] for x in lines])
    stage = _stage(shared_data, ["mmlu/machine_learning_test.csv", "mmlu/virology_test.csv", "mmlu/sociology_test.csv"])
    assert _run(stage, frame).height == 0
    # the same short stem together with its choices is the item
    copy = canonical_frame([[("user", "Neural networks:\n(a) Optimize a convex objective function\n(b) Can only be trained with stochastic "
                                      "gradient descent\n(c) Can use a mix of different activation functions\n(d) None of the above"), ("assistant", "(c)")]])
    found = _run(stage, copy)
    assert _ref_line(found["detail"][0], "mmlu/machine_learning_test.csv") == 31


def test_reformatted_mmlu_choices_are_found(shared_data):
    # an item of college_mathematics and one of global_facts ask "Which of the following is true?", a
    # sentence of many MMLU items (a template on its own): the item is its question followed by its choices,
    # whatever the layout (bullets, inline letters, numbered lines).
    def item(name: str, first_choice_word: str) -> tuple[dict, int]:
        batch = next(read_file(shared_data / "mmlu" / f"{name}_test.csv", csv_header=list("qabcdx")))
        return next((r, ln) for r, ln in zip(batch.records, batch.lines)
                    if r["q"] == "Which of the following is true?" and r["a"].startswith(first_choice_word))

    (math, math_line), (facts, facts_line) = item("college_mathematics", "Every"), item("global_facts", "males")
    bullets = math["q"] + "\n" + "\n".join(f"* {math[k]}" for k in "abcd")
    inline = facts["q"] + " " + " ".join(f"{L}) {facts[k]}" for L, k in zip("ABCD", "abcd"))
    numbered = facts["q"] + "\n" + "\n".join(f"{i}. {facts[k]}" for i, k in enumerate("abcd", 1))
    frame = canonical_frame([[("user", t), ("assistant", "B")] for t in (bullets, inline, numbered)]
                            + [[("user", "Which of the following is true?"), ("assistant", "The sky is blue.")]])
    rejects = _run(_stage(shared_data, ["mmlu/*_test.csv"]), frame)
    by_uid = dict(zip(rejects["uid"].to_list(), rejects["detail"].to_list()))
    assert sorted(by_uid) == [0, 1, 2], by_uid  # the bare template sentence is no item
    assert _ref_line(by_uid[0], "mmlu/college_mathematics_test.csv") == math_line
    assert _ref_line(by_uid[1], "mmlu/global_facts_test.csv") == facts_line
    assert _ref_line(by_uid[2], "mmlu/global_facts_test.csv") == facts_line


def test_gsm8k_train_problems_are_not_flagged_against_gsm8k_test(shared_data):
    # GSM8K's train split (a committed sample spread over openai/grade-school-math's train.jsonl) was written
    # by the same people in the same template as the test split: same-template, different problems, none of
    # which is contamination. The sample's near-copies of a test item (the same text with another name and
    # other numbers, e.g. "Bella bought stamps at the post office. ..." = test line 633 with "Max") are left out.
    from bench.verdict_sets.decontam import GSM8K_TRAIN_NEAR_COPIES, GSM8K_TRAIN_SAMPLE

    sample = [json.loads(x) for x in GSM8K_TRAIN_SAMPLE.read_text(encoding="utf-8").splitlines()]
    negatives = [r for r in sample if not r["question"].startswith(tuple(GSM8K_TRAIN_NEAR_COPIES))]
    assert len(negatives) >= 300 and len(sample) - len(negatives) == len(GSM8K_TRAIN_NEAR_COPIES)
    frame = canonical_frame([[("user", r["question"]), ("assistant", r["answer"])] for r in negatives])
    rejects = _run(_stage(shared_data, ["gsm8k/test.jsonl"]), frame)
    assert rejects.height == 0, rejects["detail"].to_list()
