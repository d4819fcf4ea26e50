"""`evalsuite run` end to end on CPU: the embedded SmolLM2 on real Alpaca records through the CLI, with text
metrics and perplexity, per-example rows in Parquet and in a real DuckDB workspace."""

from __future__ import annotations

import json

import polars as pl
import yaml
from typer.testing import CliRunner

from tests.conftest import write_jsonl


def test_evalsuite_run_writes_examples_results_and_a_workspace_row(shared_data, tmp_path):
    from curate.workspace import Workspace
    from evalsuite.cli import app

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
            {"name": "alpaca", "path": "holdout.jsonl", "metrics": ["rouge", "bleu", "exact_match_normalized", "perplexity"]},
            {"name": "chat", "path": "chat.jsonl", "metrics": [{"name": "exact_match", "extract": {"regex": "(Red|Blue|Yellow)"}}]},
        ],
    }
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    res = CliRunner().invoke(app, ["run", "--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out"),
                                   "--workspace", str(tmp_path / "ws.duckdb"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    alpaca, chat = results["tasks"]["alpaca"], results["tasks"]["chat"]
    assert alpaca["n"] == 4 and set(alpaca["metrics"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "exact_match_normalized", "perplexity"}
    assert alpaca["metrics"]["bleu"]["details"]["signature"].startswith("nrefs:1|")
    assert 1 < alpaca["metrics"]["perplexity"]["value"] < 100  # a real instruct model on real answers
    assert chat["n"] == 1 and chat["skipped"][0]["where"].endswith("chat.jsonl:2")
    assert len(results["chat_template_sha256"]) == 64 and len(alpaca["prompts_sha256"]) == 64
    assert results["model"] == "embedded:SmolLM2-135M-Instruct" and results["adapter"] is None

    examples = pl.read_parquet(tmp_path / "out" / "examples.parquet")
    assert examples.height == 5 and examples.filter(pl.col("task") == "alpaca")["output"].str.len_chars().min() > 0
    scores = [json.loads(s) for s in examples.filter(pl.col("task") == "alpaca")["scores"]]
    assert all(set(s) >= {"rouge1", "perplexity"} for s in scores)
    with Workspace(tmp_path / "ws.duckdb", read_only=True) as ws:
        row = ws.run(results["run_id"])
        assert row["kind"] == "eval" and row["status"] == "done"
        assert row["summary"]["headline"]["alpaca/rougeL"] == alpaca["metrics"]["rougeL"]["value"]
        assert ws.sql("SELECT count(*) AS n FROM eval_examples WHERE run_id = ?", [results["run_id"]])["n"][0] == 5


def test_unknown_metric_is_a_suite_error_naming_the_known_ones(tmp_path):
    from evalsuite.cli import app

    (tmp_path / "s.yaml").write_text("name: s\ntasks:\n  - {name: t, path: x.jsonl, metrics: [bleu, rogue]}\n")
    res = CliRunner().invoke(app, ["run", "--suite", str(tmp_path / "s.yaml")])
    assert res.exit_code == 2 and "rogue" in res.output and "rouge" in res.output
