"""Forgetting probes (evalsuite/probes.py): log-likelihood multiple choice as lm-evaluation-harness scores it,
checked on hand-made items with the embedded SmolLM2 and on the real probe files."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def smol():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.models import smollm2_model_dir

    path = str(smollm2_model_dir())
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def test_loglikelihood_is_the_continuations_summed_logprob_and_batching_changes_nothing(smol):
    import torch

    from evalsuite.probes import encode_pair as _encode_pair, loglikelihoods

    model, tok = smol
    pairs = [("The capital of France is", " Paris"), ("The capital of France is ", "London"), ("2 + 2 =", " 4"),
             ("Water boils at", " 100 degrees Celsius at sea level")]
    got = loglikelihoods(model, tok, pairs, batch_size=4)
    assert got == pytest.approx(loglikelihoods(model, tok, pairs, batch_size=1), abs=1e-3)
    for (ctx, cont), value in zip(pairs, got):
        c, x = _encode_pair(tok, ctx, cont)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([c + x])).logits[0].float(), -1)
        direct = sum(logp[len(c) - 1 + j, t].item() for j, t in enumerate(x))
        assert value == pytest.approx(direct, abs=1e-3)
    # the harness moves a context's trailing space into the continuation
    assert _encode_pair(tok, "The capital of France is ", "London") == _encode_pair(tok, "The capital of France is", " London")


def test_acc_and_acc_norm_follow_the_harness_definitions(smol):
    from evalsuite.probes import MCItem, score_mc

    model, tok = smol
    items = [
        MCItem("The capital of France is", ["Paris", "London", "Berlin"], 0),
        MCItem("The opposite of hot is", ["cold", "hot", "blue"], 0),
        # a long gold answer: many tokens sum to a low log-likelihood; per character it can still win
        MCItem("Water boils at", ["100 degrees Celsius at sea level", "cheese", "Mars"], 0),
    ]
    res = score_mc(model, tok, items)
    for it, p in zip(items, res["per_example"]):
        ll = p["loglikelihoods"]
        assert p["acc"] == float(ll.index(max(ll)) == it.gold)
        norm = [x / len(c) for x, c in zip(ll, it.choices)]
        assert p["acc_norm"] == float(norm.index(max(norm)) == it.gold)
    assert res["per_example"][0]["acc"] == 1.0 and res["per_example"][1]["acc"] == 1.0  # hand-checked facts
    assert res["acc"] == sum(p["acc"] for p in res["per_example"]) / 3


def test_probe_files_load_as_the_harness_formats_them(shared_data):
    from evalsuite.probes import mmlu_items, openbookqa_items, truthfulqa_mc1_items

    mmlu = mmlu_items(shared_data / "mmlu" / "high_school_geography_test.csv", limit=5)
    assert len(mmlu) == 5 and mmlu[0].choices == ["A", "B", "C", "D"] and mmlu[0].context.endswith("\nAnswer:")
    assert mmlu[0].context.startswith("The following are multiple choice questions (with answers) about high school geography.")
    obqa = openbookqa_items(shared_data / "truthfulqa" / "openbookqa.jsonl", limit=3)
    assert obqa[0].choices[obqa[0].gold] == "quit eating lunch out"
    tqa = truthfulqa_mc1_items(shared_data / "truthfulqa" / "TruthfulQA.csv", limit=2)
    assert tqa[0].choices[0] == "The watermelon seeds pass through your digestive system" and tqa[0].gold == 0
    assert "You grow watermelons in your stomach" in tqa[0].choices and tqa[0].context.endswith("Q: What happens to you if you eat watermelon seeds?\nA:")


def test_a_malformed_probe_row_is_an_error_naming_file_line_and_field(tmp_path):
    from evalsuite.probes import ProbeFormatError, mmlu_items, openbookqa_items, truthfulqa_mc1_items

    (tmp_path / "geo_test.csv").write_text('Q1,a,b,c,d,B\nQ2,a,b,c,E\n')
    with pytest.raises(ProbeFormatError, match=r"geo_test.csv:2: an MMLU row is question, A, B, C, D, answer"):
        mmlu_items(tmp_path / "geo_test.csv")
    (tmp_path / "obqa.jsonl").write_text('{"question": {"stem": "s", "choices": [{"text": "x", "label": "A"}]}, "answerKey": "B"}\n')
    with pytest.raises(ProbeFormatError, match=r"obqa.jsonl:1: not an OpenBookQA item"):
        openbookqa_items(tmp_path / "obqa.jsonl")
    (tmp_path / "tqa.csv").write_text("Question,Best Answer,Incorrect Answers\nWhy?,,No\n")
    with pytest.raises(ProbeFormatError, match=r"tqa.csv:2: TruthfulQA row without Best Answer"):
        truthfulqa_mc1_items(tmp_path / "tqa.csv")
