"""docs/extending.md, run for real: every code block marked ``<!-- file: NAME -->`` is written to a fresh folder
outside the repository, exactly as the page shows it, and used as a user would.

- the stage: `curate run` on the sample data through the library and the command line; its rejects are in the
  ledger with its reason, its score column in the run's workspace, `curate stages --plugin` lists it, and editing
  it re-runs;
- the shape: `curate run` reads a help-desk file written here through it (auto-detected and named), meta kept,
  a record it refuses quarantined with the field;
- the metric: `evalsuite score` on WMT22 system outputs, the value checked against a count made here, the plugin
  recorded so `compare` in another folder reads it;
- the judge backend: `evalsuite score` with the judge metric through it, a real GGUF model generating;
- unknown names of every registry kind get a did-you-mean, and a missing module, file or attribute is exit 2
  with one line.

The metric and the judge run in processes of their own, so their names never enter this process's registries
(the metric coverage test would rightly object to an unknown metric there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import REPO

DOC = REPO / "docs" / "extending.md"
BLOCK = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)


def doc_files() -> dict[str, str]:
    """Every marked block of the page, by file name."""
    return dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))


def run_cli(package: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", f"{package}.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def one_line_exit_2(proc: subprocess.CompletedProcess, *expected: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The page's files in a new folder, with the sample data the stage's config reads under data/."""
    d = tmp_path_factory.mktemp("extending")
    files = doc_files()
    assert {"my_stage.py", "my_run.yaml", "my_metrics.py", "my_suite.yaml", "my_shapes.py", "my_tickets.yaml",
            "my_judge.py", "my_judged_suite.yaml"} <= set(files)
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    (d / "data").mkdir()
    for name in ("dolly_written.jsonl", "alpaca_gpteacher.json"):
        shutil.copy(REPO / "sample_data" / name, d / "data" / name)
    return d


# -- the stage ---------------------------------------------------------------------------------------------------


def _tool_call_lines() -> set[int]:
    """The sample Toolformer records (1-based element numbers, as the ledger's source_line) whose answer calls a
    tool, found here with a simpler test than the stage's regular expression."""
    rows = json.loads((REPO / "sample_data" / "alpaca_gpteacher.json").read_text())
    tools = ("wikipedia", "wolfram", "python", "search", "news", "weather", "request", "calculator")
    return {i + 1 for i, r in enumerate(rows) if any(f"{t}('" in r["output"] or f'{t}("' in r["output"] for t in tools)}


def test_the_doc_stage_through_the_library(folder):
    from curate.config import load_config
    from curate.pipeline import Pipeline
    from curate.workspace import Workspace

    result = Pipeline(load_config(folder / "my_run.yaml"), progress=False).run(force=True)
    assert result.ok
    ledger = pl.read_parquet(result.output_dir / "ledger.parquet")
    rejected = ledger.filter(pl.col("stage") == "tool_calls")
    assert rejected.height > 100 and set(rejected["reason"]) == {"tool_call_answer"}
    assert rejected["detail"].str.contains(r"^\d+ tool calls in the answer \(max 0\)$").all()
    assert set(rejected["source_file"]) == {"data/alpaca_gpteacher.json"}  # no Dolly answer calls a tool
    stage_row = next(s for s in result.summary["stages"] if s["name"] == "tool_calls")
    assert stage_row["rejected"] == rejected.height

    # the score of every record that reached the stage is stored; the rejects are exactly those above 0
    ws = Workspace(result.workspace)
    scores = ws.query(result.run_id, "SELECT uid, source_file, source_line, json_extract(scores, '$.tool_calls')::INT AS calls "
                      "FROM records WHERE run_id = ?", [result.run_id])
    reached = scores.filter(pl.col("calls").is_not_null())
    assert reached.height == stage_row["in"]
    assert set(reached.filter(pl.col("calls") > 0)["uid"]) == set(rejected["uid"])
    # and they are the Toolformer answers that call a tool, by a test made here
    reached_lines = set(reached.filter(pl.col("source_file") == "data/alpaca_gpteacher.json")["source_line"])
    assert set(rejected["source_line"]) == _tool_call_lines() & reached_lines


def test_the_doc_stage_through_the_command_line(folder):
    proc = run_cli("curate", "run", "my_run.yaml", "--force", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s+tool_calls\s+\d+\s+\d+\s+\d+$", proc.stdout, re.MULTILINE), proc.stdout
    ledger = pl.read_parquet(folder / "out" / "no-tool-calls" / "ledger.parquet")
    assert ledger.filter(pl.col("reason") == "tool_call_answer")["stage"].unique().to_list() == ["tool_calls"]

    listed = run_cli("curate", "stages", "--plugin", "my_stage.py", cwd=folder)
    assert listed.returncode == 0, listed.stderr
    assert f"tool_calls (per-record, from {(folder / 'my_stage.py').resolve()})" in listed.stdout
    assert "    max_calls: int = 0" in listed.stdout and "reasons: tool_call_answer" in listed.stdout


def test_editing_the_plugin_stage_reruns(folder, tmp_path):
    from curate.config import load_config
    from curate.pipeline import Pipeline

    d = tmp_path / "copy"
    shutil.copytree(folder, d, ignore=shutil.ignore_patterns("out", "workspace", "__pycache__"))
    (d / "my_stage.py").write_text((d / "my_stage.py").read_text().replace('name = "tool_calls"', 'name = "tool_calls_copy"'))
    (d / "my_stage.py").rename(d / "my_stage_copy.py")  # another module name: this process imported my_stage.py already
    (d / "my_run.yaml").write_text((d / "my_run.yaml").read_text().replace("./my_stage.py:", "./my_stage_copy.py:"))
    before = Pipeline(load_config(d / "my_run.yaml"), progress=False).run_id
    with open(d / "my_stage_copy.py", "a") as f:
        f.write("\n# edited\n")
    assert Pipeline(load_config(d / "my_run.yaml"), progress=False).run_id != before


# -- the shape ---------------------------------------------------------------------------------------------------


def test_the_doc_shape_reads_a_ticket_file(folder):
    from curate.config import load_config
    from curate.pipeline import Pipeline

    dolly = [json.loads(line) for line in (REPO / "sample_data" / "dolly_written.jsonl").read_text().splitlines()]
    tickets = [{"ticket": r["instruction"], "reply": r["response"], "agent": f"agent{i % 3}"} for i, r in enumerate(dolly[:10])]
    tickets.append({"ticket": "Where is my order?", "reply": "", "agent": "agent0"})
    (folder / "tickets.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tickets))
    more = [{"ticket": r["instruction"], "reply": r["response"], "agent": "night shift"} for r in dolly[10:14]]
    (folder / "more_tickets.jsonl").write_text("".join(json.dumps(t) + "\n" for t in more))
    empty = sum(not t["reply"].strip() for t in tickets + more)

    result = Pipeline(load_config(folder / "my_tickets.yaml"), progress=False).run(force=True)
    s = result.summary
    assert s["invariant_ok"] and s["inputs"] == len(tickets) + len(more)
    assert s["shapes"] == {"tickets": len(tickets) + len(more) - empty} and s["quarantined"] == empty >= 1
    quarantine = [json.loads(line) for line in (result.output_dir / "quarantine.jsonl").read_text().splitlines()]
    assert {(q["field"], q["error"]) for q in quarantine} == {("reply", "the ticket has no reply")}
    kept = [json.loads(line) for split in ("train", "validation", "test") for line in (result.output_dir / "data" / f"{split}.jsonl").read_text().splitlines()]
    by_prompt = {k["messages"][0]["content"]: k for k in kept}
    for t in tickets + more:
        if t["reply"].strip() and t["ticket"] in by_prompt:
            k = by_prompt[t["ticket"]]
            assert [m["role"] for m in k["messages"]] == ["user", "assistant"] and k["meta"] == {"agent": t["agent"]}
    assert len(kept) >= s["kept"] > 0

    # the same config from the command line
    proc = run_cli("curate", "run", "my_tickets.yaml", "--force", cwd=folder)
    assert proc.returncode == 0 and f"= {s['kept']} + {s['rejected']} + {s['quarantined']}" in proc.stdout, proc.stdout + proc.stderr


# -- the metric --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wmt(folder, shared_data):
    """de-en.jsonl (the first 120 WMT22 de-en sources and references) and two systems' outputs as text files."""
    txt = shared_data / "wmt22" / "txt"

    def lines(path: Path) -> list[str]:
        return path.read_text(encoding="utf-8").split("\n")[:120]

    src = lines(txt / "sources" / "generaltest2022.de-en.src.de")
    ref = lines(txt / "references" / "generaltest2022.de-en.ref.A.en")
    (folder / "de-en.jsonl").write_text("".join(json.dumps({"prompt": s, "completion": r}) + "\n" for s, r in zip(src, ref)))
    systems = {}
    for system in ("Online-A", "Online-B"):
        systems[system] = lines(txt / "system-outputs" / f"generaltest2022.de-en.hyp.{system}.en")
        (folder / f"{system}.txt").write_text("\n".join(systems[system]) + "\n")
    return ref, systems


def test_the_doc_metric_scored_by_evalsuite_score(folder, wmt, tmp_path):
    ref, systems = wmt
    for system in systems:
        proc = run_cli("evalsuite", "score", "--suite", "my_suite.yaml", "--outputs", f"{system}.txt", "--model-name", system,
                       "--out", f"out/{system}", cwd=folder)
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"^de-en/numbers_kept\s+\d\.\d{4}$", proc.stdout, re.MULTILINE), proc.stdout
    results = json.loads((folder / "out" / "Online-A" / "results.json").read_text())
    entry = results["tasks"]["de-en"]["metrics"]["numbers_kept"]
    # the same count, made here: every reference number (digits, with . or , inside) looked up among the output's
    numbers = [re.findall(r"\d[\d.,]*\d|\d", r) for r in ref]
    kept = sum(n in re.findall(r"\d[\d.,]*\d|\d", o) for ns, o in zip(numbers, systems["Online-A"]) for n in ns)
    total = sum(map(len, numbers))
    assert total > 20 and entry["details"]["numbers"] == total
    assert entry["value"] == pytest.approx(kept / total)
    # named by file in the suite, recorded as a plugin: compare, from another folder, imports it again
    assert results["plugins"] == [{"module": "my_metrics", "file": str((folder / "my_metrics.py").resolve())}]
    proc = run_cli("evalsuite", "compare", folder / "out" / "Online-A", folder / "out" / "Online-B", "--out", tmp_path / "cmp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["metric"]: r for r in json.loads((tmp_path / "cmp" / "compare.json").read_text())["tasks"]["de-en"]["metrics"]}
    b = json.loads((folder / "out" / "Online-B" / "results.json").read_text())["tasks"]["de-en"]["metrics"]["numbers_kept"]["value"]
    assert rows["numbers_kept"]["delta"] == pytest.approx(b - entry["value"])


# -- the judge backend -------------------------------------------------------------------------------------------


def test_the_doc_judge_backend_judges(folder, wmt, tmp_path):
    ref, systems = wmt
    for name in ("my_judge.py", "my_judged_suite.yaml"):
        shutil.copy(folder / name, tmp_path / name)
    rows = [json.loads(line) for line in (folder / "de-en.jsonl").read_text().splitlines()[:2]]
    (tmp_path / "de-en.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "out.txt").write_text("\n".join(systems["Online-A"][:2]) + "\n")
    proc = run_cli("evalsuite", "score", "--suite", "my_judged_suite.yaml", "--outputs", "out.txt", "--model-name", "a", "--out", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "results.json").read_text())["tasks"]["de-en"]["metrics"]
    details = metrics["judge_score"]["details"]
    assert details["judge"]["backend"] == "llama_cpp" and details["judge"]["model"].endswith(".gguf")
    assert details["n"] == 2 and details["failed"] == 0  # both requests answered by the model
    examples = pl.read_parquet(tmp_path / "run" / "examples.parquet")
    raw = [json.loads(a)["judge"]["raw"] for a in examples["annotations"].to_list()]
    assert all(isinstance(r, str) and r.strip() for r in raw), raw


# -- names that are not there ------------------------------------------------------------------------------------


def test_unknown_names_of_every_kind_get_a_did_you_mean(folder, tmp_path):
    for name in ("my_stage.py", "my_shapes.py", "my_metrics.py", "my_judge.py"):
        shutil.copy(folder / name, tmp_path / name)
    (tmp_path / "t.jsonl").write_text('{"ticket": "Hello?", "reply": "Hello!"}\n')
    (tmp_path / "qa.jsonl").write_text('{"prompt": "2 + 2?", "completion": "4"}\n')
    (tmp_path / "out.txt").write_text("4\n")

    def curate_with(**cfg) -> subprocess.CompletedProcess:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "c", "tokenizer": None, "inputs": [{"path": "t.jsonl"}], **cfg}))
        return run_cli("curate", "run", "c.yaml", cwd=tmp_path)

    def score_with(metrics, **suite) -> subprocess.CompletedProcess:
        (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", **suite, "tasks": [{"name": "qa", "path": "qa.jsonl", "metrics": metrics}]}))
        return run_cli("evalsuite", "score", "--suite", "s.yaml", "--outputs", "out.txt", "--model-name", "x", "--out", "o", cwd=tmp_path)

    one_line_exit_2(curate_with(plugins=["./my_stage.py"], stages=["tool_call"]), "stages[0]", "unknown stage 'tool_call'", "Did you mean 'tool_calls'?")
    one_line_exit_2(curate_with(plugins=["./my_shapes.py"], inputs=[{"path": "t.jsonl", "shape": "ticket"}]),
                    "inputs.0.shape", "unknown shape 'ticket' (did you mean 'tickets'?)", "auto")
    one_line_exit_2(score_with(["numbers_kep"], plugins=["my_metrics.py"]), "tasks.0.metrics", "unknown metric 'numbers_kep' (did you mean 'numbers_kept'?)")
    one_line_exit_2(score_with([{"name": "judge", "backend": "llama_cp"}], plugins=["my_judge.py"]),
                    "unknown judge backend 'llama_cp' (did you mean 'llama_cpp'?)", "known judge backends: llama_cpp, local, openai")
    one_line_exit_2(score_with([{"name": "exact_match", "extract": {"name": "gsm8k_strikt"}}]),
                    "unknown extractor 'gsm8k_strikt' (did you mean 'gsm8k_strict'?)")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "tasks": [{"name": "p", "path": "qa.jsonl", "kind": "hellaswg"}]}))
    one_line_exit_2(run_cli("evalsuite", "score", "--suite", "s.yaml", "--outputs", "out.txt", "--model-name", "x", "--out", "o", cwd=tmp_path),
                    "unknown task kind 'hellaswg' (did you mean 'hellaswag'?)")
    # the built-in names get it too, with no plugin at all
    one_line_exit_2(curate_with(inputs=[{"path": "t.jsonl", "shape": "sharegtp"}]), "did you mean 'sharegpt'?")
    one_line_exit_2(run_cli("evalsuite", "compare", "a", "b", "--judge", "opnai", cwd=tmp_path),
                    "--judge: unknown judge backend 'opnai' (did you mean 'openai'?)")


def test_a_missing_module_file_or_attribute_is_one_line(folder, tmp_path):
    shutil.copy(folder / "my_stage.py", tmp_path / "my_stage.py")
    shutil.copy(folder / "my_metrics.py", tmp_path / "my_metrics.py")
    (tmp_path / "t.jsonl").write_text('{"prompt": "Hello?", "completion": "Hello!"}\n')
    (tmp_path / "out.txt").write_text("Hello!\n")

    def stage(entry: str) -> subprocess.CompletedProcess:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "c", "tokenizer": None, "inputs": [{"path": "t.jsonl"}], "stages": [entry]}))
        return run_cli("curate", "run", "c.yaml", cwd=tmp_path)

    one_line_exit_2(stage("./my_stage.py:ToolCall"), "./my_stage.py has no attribute 'ToolCall' (did you mean 'ToolCalls'?)")
    one_line_exit_2(stage("./no_such_file.py:ToolCalls"), "plugin file ./no_such_file.py not found")
    one_line_exit_2(stage("no_such_pkg.stages:ToolCalls"), "no module 'no_such_pkg.stages'")
    one_line_exit_2(stage("./my_metrics.py:numbers_kept"), "is not a stage class")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "c", "tokenizer": None, "plugins": ["gone.py"], "inputs": [{"path": "t.jsonl"}]}))
    one_line_exit_2(run_cli("curate", "run", "c.yaml", cwd=tmp_path), "plugins: plugin file gone.py not found")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "tasks": [{"name": "qa", "path": "t.jsonl", "metrics": ["./my_metrics.py:numbers_kep"]}]}))
    one_line_exit_2(run_cli("evalsuite", "score", "--suite", "s.yaml", "--outputs", "out.txt", "--model-name", "x", "--out", "o", cwd=tmp_path),
                    "has no attribute 'numbers_kep' (did you mean 'numbers_kept'?)")
    one_line_exit_2(run_cli("curate", "stages", "--plugin", "nowhere_module", cwd=tmp_path), "no module 'nowhere_module'")
