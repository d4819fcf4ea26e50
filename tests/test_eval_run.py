"""`evalsuite run` end to end on CPU: the embedded SmolLM2 on real Alpaca records through the CLI, with text
metrics and perplexity, per-example rows in Parquet and in a real workspace folder (the run's own DuckDB file)."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import SHARED, write_jsonl


@pytest.fixture(scope="module")
def suite_dir(shared_data, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("evalrun")
    rows = json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[100:104]
    write_jsonl(tmp_path / "holdout.jsonl", rows)
    # an OpenAI-messages file with one record that has nothing to answer: skipped with a reason
    write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Red."}]},
        {"messages": [{"role": "user", "content": "Only a question"}]},
    ])
    suite = {
        "name": "smoke",
        "generation": {"max_new_tokens": 16, "batch_size": 4},
        "tasks": [
            {"name": "alpaca", "path": "holdout.jsonl", "metrics": ["rouge", "bleu", "exact_match_normalized", "perplexity",
                                                                    {"name": "judge", "max_new_tokens": 48, "device": "cpu"}]},
            {"name": "chat", "path": "chat.jsonl", "metrics": [{"name": "exact_match", "extract": {"regex": "(Red|Blue|Yellow)"}}]},
            # a forgetting probe: MMLU by log-likelihood, as lm-evaluation-harness scores it
            {"name": "mmlu", "kind": "mmlu", "path": str(shared_data / "mmlu" / "high_school_geography_test.csv"), "limit": 8},
            # the general-text slice: sliding-window perplexity, the cheap forgetting signal
            {"name": "c4", "kind": "text", "path": str(shared_data / "pretrain_text" / "c4_demo.jsonl"), "limit": 3, "window": 128, "stride": 64},
        ],
    }
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    return tmp_path


def _run(tmp_path, out, *extra):
    from evalsuite.cli import app

    res = CliRunner().invoke(app, ["run", "--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / out),
                                   "--workspace", str(tmp_path / "ws"), "--device", "cpu", *extra])
    assert res.exit_code == 0, res.output
    return json.loads((tmp_path / out / "results.json").read_text())


@pytest.fixture(scope="module")
def base_run(suite_dir):
    return _run(suite_dir, "out")


def test_evalsuite_run_writes_examples_results_and_a_workspace_row(suite_dir, base_run):
    from curate.workspace import Workspace

    tmp_path, results = suite_dir, base_run
    alpaca, chat = results["tasks"]["alpaca"], results["tasks"]["chat"]
    judge_keys = {"judge_score", "judge_helpfulness", "judge_accuracy", "judge_coherence"}
    assert alpaca["n"] == 4
    assert set(alpaca["metrics"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "exact_match_normalized", "perplexity"} | judge_keys
    judged = alpaca["metrics"]["judge_helpfulness"]["details"]
    assert judged["judge"]["model"] == "embedded:SmolLM2-135M-Instruct" and judged["scored"] + judged["unparseable"] + judged["failed"] == 4
    assert alpaca["metrics"]["bleu"]["details"]["signature"].startswith("nrefs:1|")
    assert 1 < alpaca["metrics"]["perplexity"]["value"] < 100  # a real instruct model on real answers
    assert chat["n"] == 1 and chat["skipped"][0]["where"].endswith("chat.jsonl:2")
    assert len(results["chat_template_sha256"]) == 64 and len(alpaca["prompts_sha256"]) == 64
    assert results["model"] == "embedded:SmolLM2-135M-Instruct" and results["adapter"] is None

    examples = pl.read_parquet(tmp_path / "out" / "examples.parquet")
    assert examples.height == 5 + 8 + 3 and examples.filter(pl.col("task") == "alpaca")["output"].str.len_chars().min() > 0
    scores = [json.loads(s) for s in examples.filter(pl.col("task") == "alpaca")["scores"]]
    assert all(set(s) >= {"rouge1", "perplexity", "judge_score"} for s in scores)
    # the judge's verdicts per example: the scores it gave, a rationale per criterion, its raw reply
    notes = [json.loads(a)["judge"] for a in examples.filter(pl.col("task") == "alpaca")["annotations"]]
    for note, s in zip(notes, scores):
        assert note["raw"] and set(note["rationales"]) == {"helpfulness", "accuracy", "coherence"}
        assert s["judge_helpfulness"] == note["helpfulness"]
    with Workspace(tmp_path / "ws", create=False) as ws:
        row = ws.run(results["run_id"])
        assert row["kind"] == "eval" and row["status"] == "done"
        assert row["summary"]["headline"]["alpaca/rougeL"] == alpaca["metrics"]["rougeL"]["value"]
        assert ws.query(results["run_id"], "SELECT count(*) AS n FROM eval_examples WHERE run_id = ?", [results["run_id"]])["n"][0] == 16
        judged = ws.query(results["run_id"], "SELECT count(*) AS n FROM eval_examples WHERE run_id = ? AND annotations->>'$.judge.raw' IS NOT NULL",
                          [results["run_id"]])
        assert judged["n"][0] == 4
    mmlu = results["tasks"]["mmlu"]
    assert mmlu["n"] == 8 and set(mmlu["metrics"]) == {"acc", "acc_norm"} and 0 <= mmlu["metrics"]["acc"]["value"] <= 1
    c4 = results["tasks"]["c4"]["metrics"]["text_perplexity"]
    assert c4["details"]["windows"] > 3 and 1 < c4["value"] < 1000  # real web text, several windows per text


def test_unknown_metric_is_a_suite_error_naming_the_known_ones(tmp_path):
    from evalsuite.cli import app

    (tmp_path / "s.yaml").write_text("name: s\ntasks:\n  - {name: t, path: x.jsonl, metrics: [bleu, rogue]}\n")
    res = CliRunner().invoke(app, ["run", "--suite", str(tmp_path / "s.yaml")])
    assert res.exit_code == 2 and "rogue" in res.output and "rouge" in res.output


def test_compare_base_with_an_adapter_and_refuse_unlike_runs(suite_dir, base_run):
    import shutil

    from evalsuite.cli import app
    from train.config import parse_train_config
    from train.trainer import run_training

    # a tiny adapter trained here: LoRA, 4 steps on 8 real Alpaca records (none of them evaluated)
    rows = json.loads((SHARED / "alpaca" / "alpaca_4000.json").read_text())[:8]
    write_jsonl(suite_dir / "train8.jsonl", rows)
    cfg = parse_train_config({
        "name": "tiny", "data": [{"path": "train8.jsonl"}], "max_steps": 4, "max_seq_len": 512, "workspace": None,
        "method": {"kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, "gradient_checkpointing": False,
        "optim": {"lr": 2e-3, "batch_tokens": 4096, "warmup_ratio": 0.0}, "eval": {"sample_prompts": 0},
    }, base_dir=suite_dir)
    adapter = cfg.output_path / "adapter"
    run_training(cfg)
    ft = _run(suite_dir, "ft", "--adapter", str(adapter))
    assert ft["adapter"] == str(adapter)

    # by workspace run ids
    res = CliRunner().invoke(app, ["compare", base_run["run_id"], ft["run_id"], "--workspace", str(suite_dir / "ws"),
                                   "--out", str(suite_dir / "cmp"), "--judge", "local"])
    assert res.exit_code == 0, res.output
    cmp = json.loads((suite_dir / "cmp" / "compare.json").read_text())
    rows = {r["metric"]: r for r in cmp["tasks"]["alpaca"]["metrics"]}
    assert set(rows) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "exact_match_normalized", "perplexity",
                         "judge_score", "judge_helpfulness", "judge_accuracy", "judge_coherence"}
    # the pairwise judge, both orders, over the two runs' outputs (generation tasks only)
    pw = cmp["tasks"]["alpaca"]["pairwise"]
    assert pw["fine_tune"] + pw["base"] + pw["tie"] + pw["inconsistent"] + pw["unparseable"] + pw["failed"] == 4
    assert len(pw["examples"]) == 4 and "pairwise" not in cmp["tasks"]["mmlu"]
    assert "Pairwise judge (local: embedded:SmolLM2-135M-Instruct, both orders)" in res.output
    for name in ("judge_score", "judge_helpfulness", "judge_accuracy", "judge_coherence"):  # unparseable verdicts leave examples out of W/T/L
        r = rows.pop(name)
        assert r["wins"] + r["ties"] + r["losses"] == r.get("paired", 4)
    for r in rows.values():
        # the rule: McNemar for paired accuracies, else the bootstrap interval excluding 0
        significant = r["mcnemar_p"] < 0.05 if "mcnemar_p" in r else (r["ci95"][0] > 0 or r["ci95"][1] < 0)
        assert (r["verdict"] == "no significant change") == (not significant or r["delta"] == 0)
        assert r["wins"] + r["ties"] + r["losses"] == 4
        assert r["verdict"] in ("better", "worse", "no significant change")
        assert r["delta"] == pytest.approx(r["fine_tune"] - r["base"])
    assert rows["perplexity"]["base"] == base_run["tasks"]["alpaca"]["metrics"]["perplexity"]["value"]
    assert "mcnemar_p" in rows["exact_match_normalized"] and "mcnemar_p" in {r["metric"]: r for r in cmp["tasks"]["chat"]["metrics"]}["exact_match"]
    assert "| rougeL |" in (suite_dir / "cmp" / "compare.md").read_text()
    assert {r["metric"] for r in cmp["tasks"]["mmlu"]["metrics"]} == {"acc", "acc_norm"}
    assert all("mcnemar_p" in r for r in cmp["tasks"]["mmlu"]["metrics"])
    c4 = cmp["tasks"]["c4"]["metrics"][0]
    assert c4["metric"] == "text_perplexity" and c4["wins"] + c4["ties"] + c4["losses"] == 3
    assert "<td>rougeL</td>" in (suite_dir / "cmp" / "compare.html").read_text()

    # other generation settings: the deltas would mean nothing, so the comparison is refused
    shutil.copytree(suite_dir / "ft", suite_dir / "ft_other")
    other = json.loads((suite_dir / "ft_other" / "results.json").read_text())
    other["tasks"]["alpaca"]["generation"]["max_new_tokens"] = 99
    (suite_dir / "ft_other" / "results.json").write_text(json.dumps(other))
    res = CliRunner().invoke(app, ["compare", str(suite_dir / "out"), str(suite_dir / "ft_other")])
    assert res.exit_code == 2 and "generation settings differ" in res.output and "max_new_tokens" in res.output


def test_gate_passes_and_fails_with_exit_codes_and_junit(suite_dir, base_run):
    import xml.etree.ElementTree as ET

    from evalsuite.cli import app

    out = suite_dir / "out"
    rouge_l = base_run["tasks"]["alpaca"]["metrics"]["rougeL"]["value"]
    (suite_dir / "pass.yaml").write_text(yaml.safe_dump({"rules": [
        {"metric": "alpaca/rougeL", "at_least": round(rouge_l - 0.01, 4)},
        {"metric": "alpaca/perplexity", "at_most": 1000},
        {"metric": "alpaca/rougeL", "no_significant_regression": True},
        {"metric": "chat/exact_match", "max_drop": 0.0},
        {"metric": "mmlu/acc_norm", "max_drop": 0.0},  # forgetting, against itself: no drop
        {"metric": "c4/text_perplexity", "max_drop": 0.0},
    ]}))
    res = CliRunner().invoke(app, ["gate", str(out), "--rules", str(suite_dir / "pass.yaml"), "--baseline", str(out),
                                   "--junit", str(suite_dir / "pass.xml")])
    assert res.exit_code == 0, res.output
    suite = ET.parse(suite_dir / "pass.xml").getroot()
    assert suite.get("tests") == "6" and suite.get("failures") == "0"

    (suite_dir / "fail.yaml").write_text(yaml.safe_dump({"rules": [
        {"metric": "alpaca/rougeL", "at_least": round(rouge_l + 0.5, 4)},
        {"metric": "alpaca/perplexity", "at_most": 1000},
    ]}))
    res = CliRunner().invoke(app, ["gate", str(out), "--rules", str(suite_dir / "fail.yaml"), "--junit", str(suite_dir / "fail.xml")])
    assert res.exit_code == 1 and "FAIL alpaca/rougeL at least" in res.output and "1 of 2 rules passed" in res.output
    failed = ET.parse(suite_dir / "fail.xml").getroot().findall("testcase/failure")
    assert len(failed) == 1 and "rougeL" in failed[0].get("message")

    # a baseline rule without a baseline, or an unknown metric: unusable rules (exit 2), not a pass
    (suite_dir / "bad.yaml").write_text(yaml.safe_dump({"rules": [{"metric": "alpaca/rougeL", "max_drop": 0.01}]}))
    res = CliRunner().invoke(app, ["gate", str(out), "--rules", str(suite_dir / "bad.yaml")])
    assert res.exit_code == 2 and "--baseline" in res.output
    (suite_dir / "bad2.yaml").write_text(yaml.safe_dump({"rules": [{"metric": "alpaca/rouge9", "at_least": 0}]}))
    res = CliRunner().invoke(app, ["gate", str(out), "--rules", str(suite_dir / "bad2.yaml")])
    assert res.exit_code == 2 and "alpaca/rougeL" in res.output
