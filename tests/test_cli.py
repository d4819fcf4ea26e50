"""The `curate` command line: a thin shell over the library, with clear errors and exit codes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from curate.cli import app
from tests.conftest import write_jsonl

runner = CliRunner()


def test_inspect_shows_shapes_and_normalized_records(shared_data):
    result = runner.invoke(app, ["inspect", str(shared_data / "sharegpt" / "fastchat_dummy_conversation.json"), "-n", "1"])
    assert result.exit_code == 0, result.output
    assert '"sharegpt": 500' in result.output
    assert "[user] Who are you?" in result.output and '{"id":"identity_0"}' in result.output


def test_inspect_mapping_and_quarantine(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4"}, {"question": "x"}])
    result = runner.invoke(app, ["inspect", str(tmp_path / "qa.jsonl"), "--mapping", "user=question,assistant=answer"])
    assert result.exit_code == 0, result.output
    assert '"mapped": 1' in result.output
    assert "qa.jsonl:2 field 'answer': missing field 'answer'" in result.output


def test_run_prints_the_ledger_and_writes_summary(tmp_path, shared_data):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: cli\ntokenizer: null\ninputs:\n  - path: {shared_data / 'openai_messages' / 'toy_chat_fine_tuning.jsonl'}\n"
        "stages: [conversation_structure, exact_dedup]\n"
    )
    result = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "inputs = kept + rejected + quarantined: 10 = " in result.output and "[OK]" in result.output
    summary = json.loads((tmp_path / "out" / "cli" / "summary.json").read_text())
    assert summary["inputs"] == 10 and summary["invariant_ok"]
    assert (tmp_path / "workspace" / "catalog.sqlite").is_file()  # the default workspace is a folder beside the config
    again = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    assert "up to date" in again.output


def test_dry_run_writes_nothing(tmp_path, shared_data):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: dry\ntokenizer: null\ninputs:\n  - path: {shared_data / 'alpaca' / 'alpaca_4000.json'}\nstages: [exact_dedup]\n")
    result = runner.invoke(app, ["run", str(cfg), "--dry-run", "--sample", "50", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "config is valid" in result.output and "50 = " in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "workspace").exists()


def test_bad_config_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: bad\ninputs:\n  - path: nowhere.jsonl\nstages:\n  - exact_dedup: {keep: sometimes}\n")
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2
    assert "stages[0].exact_dedup.keep" in result.output
    cfg.write_text("name: bad\ninputs:\n  - path: nowhere.jsonl\nstages: [exact_dedup]\n")
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and "nowhere.jsonl: no such file or directory" in result.output
    cfg.write_text("name: bad\ninputs: [\n")
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_strict_flag_exits_2_with_file_and_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: s\ntokenizer: null\ninputs: [{path: d.jsonl}]\nstages: [exact_dedup]\n")
    result = runner.invoke(app, ["run", str(cfg), "--strict", "--no-progress"])
    assert result.exit_code == 2 and "d.jsonl:2: invalid JSON" in result.output


def test_stages_lists_registry():
    result = runner.invoke(app, ["stages"])
    assert result.exit_code == 0
    assert "exact_dedup (global)" in result.output and "keep: 'first' | 'last' | 'longest' = \"first\"" in result.output
