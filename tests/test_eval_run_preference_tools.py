"""`evalsuite run` end to end with the two metrics of held-out preference data and tool use: a preference task on
real LLaMA-Factory pairs and a tool-call task cut from OpenAI's weather chats, the embedded SmolLM2 and a real
LoRA adapter on it, through the CLI; then `evalsuite compare` and `evalsuite gate` read both runs as they read
any other (paired bootstrap per pair, McNemar on the 0/1 keys) without knowing the metrics' names.

Kept small for CI on 2 cores: three short pairs, two tool prompts, 16 new tokens."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from evalsuite.metrics import get_metric
from tests.conftest import perturbed_adapter

PREF_KEYS = {"preference_accuracy", "preference_margin", "preference_margin_per_token"}
TOOL_KEYS = {"tool_call_wellformed", "tool_call_known_tool", "tool_call_args_valid", "tool_call_right_tool"}


@pytest.fixture(scope="module")
def suite_dir(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preftools")
    rows = json.loads((shared_data / "chat_llamafactory" / "dpo_en_demo.json").read_text())
    short = sorted(rows, key=lambda r: len(json.dumps(r)))[:3]
    (tmp / "pairs.json").write_text(json.dumps(short))
    suite = {
        "name": "preftools",
        "generation": {"max_new_tokens": 16, "batch_size": 2},
        "tasks": [
            {"name": "prefs", "kind": "preference", "path": "pairs.json", "batch_size": 2},
            {"name": "tools", "path": str(shared_data / "openai_messages" / "weather_chat_fine_tuning.jsonl"), "limit": 2,
             "reference_turn": "tool_call", "metrics": ["tool_call_validity", "exact_match"]},
        ],
    }
    (tmp / "suite.yaml").write_text(yaml.safe_dump(suite))
    return tmp


def _cli(*args):
    from evalsuite.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the in-process runs (a shared 2-core machine: the second only spin-waits)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(suite_dir, one_thread):
    adapter = suite_dir / "adapter"
    perturbed_adapter(adapter, scale=0.02)
    out = {}
    for name, extra in (("base", []), ("ft", ["--adapter", adapter])):
        res = _cli("run", "--suite", suite_dir / "suite.yaml", "--out", suite_dir / name, "--device", "cpu",
                   "--workspace", suite_dir / "ws", *extra)
        assert res.exit_code == 0, res.output
        out[name] = json.loads((suite_dir / name / "results.json").read_text())
    return out


def test_a_run_scores_pairs_and_tool_calls(suite_dir, runs):
    base = runs["base"]
    prefs, tools = base["tasks"]["prefs"], base["tasks"]["tools"]
    assert prefs["n"] == 3 and set(prefs["metrics"]) == PREF_KEYS and prefs["generation"] == {"kind": "preference"}
    assert all(m["metric"] == "preference" for m in prefs["metrics"].values())
    assert tools["n"] == 2 and set(tools["metrics"]) == TOOL_KEYS | {"exact_match"}
    assert tools["tools"] == {"offered": 2, "form": "hermes"}  # SmolLM2's template renders no tools: they are text, as in training
    rows = pl.read_parquet(suite_dir / "base" / "examples.parquet")

    pref = rows.filter(pl.col("task") == "prefs").sort("idx")
    notes = [json.loads(a)["preference"] for a in pref["annotations"]]
    scores = [json.loads(s) for s in pref["scores"]]
    for row, note, score in zip(pref.iter_rows(named=True), notes, scores):
        right = note["chosen_logp"] > note["rejected_logp"]
        assert score["preference_accuracy"] == float(right)
        assert row["output"] == (row["reference"] if right else note["rejected"])  # the completion the model prefers
        assert score["preference_margin"] == pytest.approx(note["chosen_logp"] - note["rejected_logp"])
        assert json.loads(row["stats"])["preference_accuracy"] == [score["preference_accuracy"]]
    assert prefs["metrics"]["preference_accuracy"]["value"] == pytest.approx(sum(s["preference_accuracy"] for s in scores) / 3)

    # the tool rows: scoring the stored outputs again, with the stored tools, gives the stored scores
    tool = rows.filter(pl.col("task") == "tools").sort("idx")
    offered = [json.loads(a)["tools"] for a in tool["annotations"]]
    again = get_metric("tool_call_validity")(tool["output"].to_list(), tool["reference"].to_list(), tools=offered)
    for i, s in enumerate(json.loads(x) for x in tool["scores"]):
        assert {k: s[k] for k in TOOL_KEYS} == {k: again[k].per_example[i] for k in TOOL_KEYS}
        assert json.loads(tool["annotations"][i])["tool_call"]["problem"] is not None or s["tool_call_wellformed"] == 1
    assert json.loads(tool["prompt"][0]) == [{"role": "user", "content": "What's the weather like in San Francisco, Tokyo, and Paris?"}]


def test_compare_and_gate_read_both_metrics_unchanged(suite_dir, runs):
    base, ft = runs["base"], runs["ft"]
    # the adapter moves the log-likelihoods: a comparison of two different models, not of a run with itself
    b_rows = pl.read_parquet(suite_dir / "base" / "examples.parquet").filter(pl.col("task") == "prefs").sort("idx")
    f_rows = pl.read_parquet(suite_dir / "ft" / "examples.parquet").filter(pl.col("task") == "prefs").sort("idx")
    b_logp = [json.loads(a)["preference"]["chosen_logp"] for a in b_rows["annotations"]]
    f_logp = [json.loads(a)["preference"]["chosen_logp"] for a in f_rows["annotations"]]
    assert all(abs(b - f) > 1e-3 for b, f in zip(b_logp, f_logp))

    res = _cli("compare", base["run_id"], ft["run_id"], "--workspace", suite_dir / "ws", "--out", suite_dir / "cmp")
    assert res.exit_code == 0, res.output
    cmp = json.loads((suite_dir / "cmp" / "compare.json").read_text())
    prefs = {r["metric"]: r for r in cmp["tasks"]["prefs"]["metrics"]}
    tools = {r["metric"]: r for r in cmp["tasks"]["tools"]["metrics"]}
    assert set(prefs) == PREF_KEYS and set(tools) == TOOL_KEYS | {"exact_match"}
    assert "mcnemar_p" in prefs["preference_accuracy"] and "mcnemar_p" not in prefs["preference_margin"]
    assert all("mcnemar_p" in tools[k] for k in TOOL_KEYS)
    margin = prefs["preference_margin"]
    assert margin["delta"] == pytest.approx(ft["tasks"]["prefs"]["metrics"]["preference_margin"]["value"]
                                            - base["tasks"]["prefs"]["metrics"]["preference_margin"]["value"])
    assert margin["ci95"][0] <= margin["delta"] <= margin["ci95"][1]  # the paired bootstrap over the three pairs
    assert margin["wins"] + margin["ties"] + margin["losses"] == 3
    assert cmp["tasks"]["prefs"]["regressed_on"] == "preference_accuracy" and "pairwise" not in cmp["tasks"]["prefs"]

    (suite_dir / "rules.yaml").write_text(yaml.safe_dump({"rules": [
        {"metric": "prefs/preference_accuracy", "at_least": 0.0},
        {"metric": "prefs/preference_margin", "no_significant_regression": True},
        {"metric": "tools/tool_call_wellformed", "max_drop": 1.0},
        {"metric": "prefs/preference_accuracy", "at_least": 1.01},  # impossible: the gate must say so
    ]}))
    res = _cli("gate", suite_dir / "ft", "--rules", suite_dir / "rules.yaml", "--baseline", suite_dir / "base",
               "--junit", suite_dir / "gate.xml")
    assert res.exit_code == 1 and "3 of 4 rules passed" in res.output and "FAIL prefs/preference_accuracy at least 1.01" in res.output
