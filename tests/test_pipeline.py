"""`curate run` end to end: the ledger invariant, quarantine, strict mode, exports, determinism, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.config import ConfigError, parse_config
from curate.workspace import Workspace
from tests.conftest import REPO, write_jsonl

DOLLY_WRITTEN = [
    {"instruction": "What is a lighthouse for?", "context": "",
     "response": "A lighthouse marks dangerous coasts and harbour entrances so ships can navigate at night.", "category": "open_qa"},
    {"instruction": "Summarize the paragraph.",
     "context": "The river floods every spring when snow melts in the mountains, and farmers plant after the water recedes.",
     "response": "Spring snowmelt floods the river; farmers plant afterwards.", "category": "summarization"},
    {"instruction": "Classify the animal.", "context": "<noinput>", "response": "", "category": "classification"},
]
MESSAGES_WRITTEN = [
    {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
    {"messages": [{"role": "user", "content": "Tell me a joke."},
                  {"role": "assistant", "content": "Why did the chicken cross the road? To get to the other side."}, {"role": "user", "content": "Another?"}]},
    {"messages": [{"role": "user", "content": "Say <script>alert(1)</script> and <img src=x onerror=alert(1)>"},
                  {"role": "assistant", "content": "<script>alert(1)</script><img src=x onerror=alert(1)>"}]},
    # the same hostile record again: exact_dedup rejects it, so the report shows it as an example
    {"messages": [{"role": "user", "content": "Say <script>alert(1)</script> and <img src=x onerror=alert(1)>"},
                  {"role": "assistant", "content": "<script>alert(1)</script><img src=x onerror=alert(1)>"}]},
]


def _mixed_config(shared: Path, tmp: Path) -> dict:
    write_jsonl(tmp / "dolly.jsonl", DOLLY_WRITTEN)
    write_jsonl(tmp / "chat.jsonl", MESSAGES_WRITTEN)
    return {
        "inputs": [
            {"path": str(shared / "alpaca" / "alpaca_4000.json")},
            {"path": str(shared / "sharegpt" / "fastchat_dummy_conversation.json")},
            {"path": str(shared / "completion" / "truthfulqa_finetune_truth.jsonl"), "limit": 2000},
            {"path": str(shared / "gsm8k" / "test.jsonl"), "mapping": {"user": "question", "assistant": "answer"}},
            {"path": "dolly.jsonl"},
            {"path": "chat.jsonl"},
        ],
        "stages": ["exact_dedup"],
        "report": {"examples_per_reason": 100},
    }


def test_mixed_shapes_ledger_invariant_and_exports(shared_data, tmp_path, run_config):
    res = run_config(_mixed_config(shared_data, tmp_path))
    s = res.summary
    assert s["invariant_ok"] and s["inputs"] == s["kept"] + s["rejected"] + s["quarantined"]
    assert s["inputs"] == 4000 + 500 + 2000 + 1319 + 3 + 4
    assert s["shapes"] == {"alpaca": 4000, "sharegpt": 500, "prompt_completion": 2000, "mapped": 1319, "dolly": 3, "openai": 4}
    assert s["fixes"]["placeholder_input"] > 40  # Alpaca's <noinput> and friends, plus the Dolly one
    # the summary on disk is the same object the API returned
    on_disk = json.loads((res.output_dir / "summary.json").read_text())
    assert on_disk["inputs"] == s["inputs"] and on_disk["stages"] == s["stages"]
    # the workspace agrees with the summary, and nothing is both kept and rejected
    ledger = Workspace(res.workspace, create=False).query(
        res.run_id, "SELECT status, count(*) AS n FROM ledger WHERE run_id = ? GROUP BY status", [res.run_id])
    status = dict(zip(ledger["status"], ledger["n"]))
    assert status.get("kept") == s["kept"] and status.get("rejected", 0) == s["rejected"]
    # exports: chat-shaped JSONL and Parquet per split add up to the kept set, deterministic by id
    total = 0
    for split in ("train", "validation", "test"):
        rows = [json.loads(x) for x in (res.output_dir / "data" / f"{split}.jsonl").read_text().splitlines()]
        total += len(rows)
        assert pl.read_parquet(res.output_dir / "data" / f"{split}.parquet").height == len(rows)
        assert all(r["messages"][-1]["role"] in ("assistant", "user") for r in rows)
        assert s["splits"][split] == len(rows)
    assert total == s["kept"]
    ledger = pl.read_parquet(res.output_dir / "ledger.parquet")
    assert ledger.height == s["inputs"] and ledger["uid"].n_unique() == s["inputs"]
    # the report lists the funnel, and record text is inert in HTML
    html = (res.output_dir / "report.html").read_text()
    assert "exact_dedup" in html and f"{s['inputs']:,}" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html.lower()
    assert "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")


def test_exact_dedup_names_the_kept_record(tmp_path, shared_data, run_config):
    res = run_config({"inputs": [{"path": str(shared_data / "openai_messages" / "toy_chat_fine_tuning.jsonl")}], "stages": ["exact_dedup"]})
    # lines 6-9 repeat lines 1-4 and line 10 repeats line 4 (see shared/data/README.md)
    assert res.summary["stages"][0]["reasons"] == {"exact_duplicate": 5}
    ledger = pl.read_parquet(res.output_dir / "ledger.parquet").filter(pl.col("status") == "rejected")
    assert ledger["source_line"].to_list() == [6, 7, 8, 9, 10]
    assert ledger["detail"].to_list()[-1].endswith("toy_chat_fine_tuning.jsonl:4")
    kept = pl.read_parquet(res.output_dir / "ledger.parquet").filter(pl.col("source_line") == 4)
    assert ledger["duplicate_of"].to_list()[-1] == kept["id"][0]


def test_a_record_stage_after_a_global_stage_stores_its_scores(tmp_path, shared_data, run_config):
    # response_length runs in a second pass, over what exact_dedup kept: its scores are stored for exactly those
    # records, next to unique_words' from the first pass, and retuning its threshold from them gives its rejects
    path = shared_data / "openai_messages" / "toy_chat_fine_tuning.jsonl"
    res = run_config({"inputs": [{"path": str(path)}],
                      "stages": ["unique_words", "exact_dedup", {"response_length": {"min_chars": 30}}]})
    ws = Workspace(res.workspace)
    rows = ws.query(res.run_id, "SELECT uid, scores FROM records ORDER BY uid")
    dup = set(ws.query(res.run_id, "SELECT uid FROM rejects WHERE stage = 'exact_dedup'")["uid"].to_list())
    assert dup  # the file repeats lines (shared/data/README.md)
    before = set(ws.query(res.run_id, "SELECT uid FROM rejects WHERE stage IN ('unique_words', 'exact_dedup')")["uid"].to_list())
    scores = {uid: json.loads(text or "{}") for uid, text in rows.iter_rows()}
    reached = {uid for uid in scores if uid not in before}
    assert all("unique_words_ratio" in scores[uid] for uid in scores)  # first pass: every record
    assert {uid for uid, sc in scores.items() if "response_length_chars" in sc} == reached
    short = {uid for uid in reached if scores[uid]["response_length_chars"] < 30}
    rejected = set(ws.query(res.run_id, "SELECT uid FROM rejects WHERE stage = 'response_length'")["uid"].to_list())
    assert rejected == short and short


def test_corrupt_jsonl_is_quarantined_not_fatal(tmp_path, run_config):
    good = {"prompt": "What is 2+2?", "completion": "4"}
    lines = [
        json.dumps(good).encode(),
        b'{"prompt": "truncated", "compl',
        json.dumps({"prompt": 123, "completion": "x"}).encode(),  # wrong type
        b'{"prompt": "bad \xff\xfe bytes", "completion": "x"}',  # invalid UTF-8
        json.dumps({"prompt": "huge", "completion": "x" * (10 * 1024 * 1024)}).encode(),  # a 10 MB record
        json.dumps({"prompt": "no completion field"}).encode(),  # missing field
        b"[1, 2, 3]",  # not an object
        json.dumps({"prompt": "fine", "completion": "also fine"}).encode(),
    ]
    (tmp_path / "corrupt.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    res = run_config({"inputs": [{"path": "corrupt.jsonl"}, {"path": "empty.jsonl"}], "stages": ["exact_dedup"]})
    s = res.summary
    assert s["invariant_ok"] and s["inputs"] == 8 and s["kept"] == 2 and s["quarantined"] == 6
    q = [json.loads(x) for x in (res.output_dir / "quarantine.jsonl").read_text().splitlines()]
    assert [(r["source_file"], r["source_line"]) for r in q] == [("corrupt.jsonl", n) for n in (2, 3, 4, 5, 6, 7)]
    errors = [r["error"] for r in q]
    assert errors[0].startswith("invalid JSON")
    assert q[1]["field"] == "prompt" and "must be a string, got int" in errors[1]
    assert errors[2] == "invalid UTF-8"
    assert "exceeds max_record_bytes" in errors[3]
    assert q[4]["field"] == "prompt" or "missing" in errors[4] or "unrecognized shape" in errors[4]
    assert errors[5] == "expected a JSON object (or a string), got list"
    assert {f["path"]: f["records"] + f["quarantined"] for f in s["files"]} == {"corrupt.jsonl": 8}


def test_strict_mode_stops_at_first_malformed_record(tmp_path, run_config):
    from curate.pipeline import StrictModeError

    (tmp_path / "c.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 5, "completion": "b"}\n')
    with pytest.raises(StrictModeError, match=r"c\.jsonl:2: field 'prompt'"):
        run_config({"inputs": [{"path": "c.jsonl"}]}, strict=True)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError) as exc:
        parse_config(
            {"name": "x", "inputs": [{"path": "a.jsonl", "shape": "alpacca"}], "stages": ["exact_dedupe", {"exact_dedup": {"keep": "best"}}],
             "splits": {"train": 0.5, "validation": 0.1, "test": 0.1}, "bogus": 1},
            tmp_path,
        )
    msg = str(exc.value)
    assert "inputs.0.shape" in msg
    assert "unknown stage 'exact_dedupe'. Did you mean 'exact_dedup'?" in msg
    assert "stages[1].exact_dedup.keep" in msg
    assert "splits" in msg and "must be 1" in msg
    assert "bogus" in msg


def test_same_config_same_output_and_up_to_date_skip(tmp_path, shared_data, run_config):
    cfg = {"inputs": [{"path": str(shared_data / "sharegpt" / "fastchat_dummy_conversation.json")}], "stages": ["exact_dedup"]}
    first = run_config(cfg)
    before = {p.name: p.read_bytes() for p in (first.output_dir / "data").glob("*.jsonl")}
    again = run_config(cfg)
    assert again.skipped and again.run_id == first.run_id
    forced = run_config(cfg, force=True)
    assert not forced.skipped
    after = {p.name: p.read_bytes() for p in (forced.output_dir / "data").glob("*.jsonl")}
    assert before == after and sum(len(v) for v in after.values()) > 0


KILLER = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
import polars as pl
from curate.stages import RecordStage, StageParams, register
from curate.config import parse_config
from curate.pipeline import Pipeline

@register
class KillOnThirdBatch(RecordStage):
    name = "kill_on_third_batch"
    seen = 0
    def evaluate(self, batch):
        type(self).seen += 1
        if type(self).seen == 3 and os.environ.get("KILL") == "1":
            time.sleep(1.0)  # let the background writer land the first two batches
            os.kill(os.getpid(), signal.SIGKILL)
        return batch.with_columns(reason=pl.lit(None, dtype=pl.Utf8), detail=pl.lit(None, dtype=pl.Utf8))

cfg = parse_config({{"name": "k", "tokenizer": None, "batch_size": 1000,
    "inputs": [{{"path": {data!r}}}], "stages": ["kill_on_third_batch", "exact_dedup"]}}, __import__("pathlib").Path({tmp!r}))
res = Pipeline(cfg, progress=False).run()
print(res.run_id, res.summary["inputs"], res.summary["kept"], res.summary["invariant_ok"])
"""


def test_killed_run_restarts_cleanly(tmp_path, shared_data):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(repo=str(REPO), data=str(shared_data / "alpaca" / "alpaca_4000.json"), tmp=str(tmp_path)))
    killed = subprocess.run([sys.executable, str(script)], env={**os.environ, "KILL": "1"}, capture_output=True, text=True)
    assert killed.returncode == -9  # really killed mid-run
    ws = Workspace(tmp_path / "workspace", create=False)
    (killed_id,) = ws.runs()["run_id"]
    assert ws.run(killed_id)["status"] == "running"  # registered, never finished
    killed_file = ws.run(killed_id)["data_file"]
    # its writer is dead, so its partial data file opens for reading
    n_partial = ws.query(killed_id, "SELECT count(*) AS n FROM records WHERE run_id = ?", [killed_id])["n"][0]
    assert 0 < n_partial < 4000  # two batches landed before the kill
    assert not (tmp_path / "out" / "k").exists()  # no half-written output
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    run_id, inputs, kept, ok = done.stdout.split()
    assert (int(inputs), ok) == (4000, "True") and int(kept) > 3900
    assert run_id == killed_id and ws.run(run_id)["status"] == "done"
    assert ws.query(run_id, "SELECT count(*) AS n FROM records WHERE run_id = ?", [run_id])["n"][0] == 4000
    # the restart wrote a data file of its own and removed the killed attempt's
    assert ws.run(run_id)["data_file"] != killed_file and not (tmp_path / "workspace" / killed_file).exists()
    assert [p.name for p in (tmp_path / "workspace" / "runs").glob("*.duckdb")] == [Path(ws.run(run_id)["data_file"]).name]
    assert not list((tmp_path / "out").glob(".k.*"))  # no temporary folders left behind
