"""A user's own metric: a module written here registers it with ``evalsuite.metrics.register``, a suite names the
module under ``plugins:`` and the metric by name; `evalsuite score` scores with it, and `compare` and `gate`, in
processes of their own, import the file the run recorded and honour the metric's direction (lower is better).

Everything runs through the real command line in new processes, so the plugin's metric is never registered in
this test process (where the registry's coverage test would rightly object to it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, write_jsonl

PLUGIN = '''"""A team's own metric: words in the answer, fewer is better."""
from evalsuite.metrics import MetricResult, register


@register("answer_words", higher_is_better=False)
def answer_words(predictions, references):
    """Words in each answer (whitespace-separated): the mean, lower is better."""
    words = [float(len(p.split())) for p in predictions]
    return MetricResult("answer_words", sum(words) / len(words), words, {"n": len(words)})
'''


def cli(*args, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalsuite.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def scored(shared_data, tmp_path_factory):
    """Two scored runs of a suite using the plugin: ``base`` answers verbosely, ``ft`` briefly (longer on one)."""
    d = tmp_path_factory.mktemp("plugins")
    (d / "my_metrics.py").write_text(PLUGIN)
    records = json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[400:406]
    write_jsonl(d / "qa.jsonl", records)
    (d / "suite.yaml").write_text(yaml.safe_dump({
        "name": "own-metric", "plugins": ["my_metrics"],  # a module name: found next to the suite
        "tasks": [{"name": "qa", "path": "qa.jsonl", "metrics": ["answer_words", "exact_match"]}]}))
    first = [r["output"].split(". ")[0] for r in records]
    base = [f"{r['output']} I hope this answer helps you." for r in records]
    ft = [*first[:5], f"{base[5]} And one more thing to add."]  # shorter on five, longer on the last
    outputs = {"base": base, "ft": ft}
    for who, outs in outputs.items():
        write_jsonl(d / f"{who}.jsonl", [{"idx": i, "output": o} for i, o in enumerate(outs)])
        proc = cli("score", "--suite", d / "suite.yaml", "--outputs", d / f"{who}.jsonl", "--model-name", who, "--out", d / who)
        assert proc.returncode == 0, proc.stderr
    return d, outputs


def test_a_plugin_metric_is_scored_and_recorded(scored):
    d, outputs = scored
    results = json.loads((d / "base" / "results.json").read_text())
    entry = results["tasks"]["qa"]["metrics"]["answer_words"]
    words = [len(o.split()) for o in outputs["base"]]
    assert entry["metric"] == "answer_words" and entry["value"] == pytest.approx(sum(words) / len(words))
    assert results["plugins"] == [{"module": "my_metrics", "file": str((d / "my_metrics.py").resolve())}]


def test_compare_and_gate_honour_the_plugins_direction(scored, tmp_path):
    d, outputs = scored
    # another working directory: my_metrics is importable only from the file the run recorded
    proc = cli("compare", d / "base", d / "ft", "--out", tmp_path / "cmp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    task = json.loads((tmp_path / "cmp" / "compare.json").read_text())["tasks"]["qa"]
    row = next(r for r in task["metrics"] if r["metric"] == "answer_words")
    b, f = ([len(o.split()) for o in outputs[w]] for w in ("base", "ft"))
    assert row["delta"] == pytest.approx(sum(f) / 6 - sum(b) / 6) and row["delta"] < 0
    # fewer words is a win: five wins, one loss (a higher-is-better reading would say the opposite)
    assert (row["wins"], row["ties"], row["losses"]) == (sum(y < x for x, y in zip(b, f)), 0, sum(y > x for x, y in zip(b, f))) == (5, 0, 1)
    if row["ci95"][1] < 0:
        assert row["verdict"] == "better"
    assert "mcnemar_p" not in row  # not declared binary
    # the regression is the one answer that got longer
    assert task["regressed_on"] == "answer_words" and [r["idx"] for r in task["regressions"]] == [5]

    # gate: a rise in words is the drop of a lower-is-better metric
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"rules": [
        {"metric": "qa/answer_words", "max_drop": 0}, {"metric": "qa/answer_words", "no_significant_regression": True}]}))
    proc = cli("gate", d / "ft", "--rules", tmp_path / "rules.yaml", "--baseline", d / "base", "--junit", tmp_path / "g.xml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = cli("gate", d / "base", "--rules", tmp_path / "rules.yaml", "--baseline", d / "ft", "--junit", tmp_path / "g.xml", cwd=tmp_path)
    assert proc.returncode == 1 and f"observed {sum(b) / 6 - sum(f) / 6:.4g}" in proc.stdout, proc.stdout


def test_a_missing_or_failing_plugin_is_one_line(scored, tmp_path):
    d, _ = scored
    for plugins, expected in ((["my_metricz"], "no module 'my_metricz'"), (["extra/none.py"], "plugin file extra/none.py not found"),
                              (["broken.py"], "broken.py: the plugin failed on import: ZeroDivisionError"),
                              ("my_metrics", "plugins must be a list")):
        (tmp_path / "broken.py").write_text("x = 1 / 0\n")
        (tmp_path / "qa.jsonl").write_text((d / "qa.jsonl").read_text())
        (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"name": "s", "plugins": plugins,
                                                             "tasks": [{"name": "qa", "path": "qa.jsonl", "metrics": ["answer_words"]}]}))
        proc = cli("score", "--suite", tmp_path / "suite.yaml", "--outputs", d / "ft.jsonl", "--model-name", "x", "--out", tmp_path / "out")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "plugins: " in lines[0] and expected in lines[0], lines
    # without the plugin the metric is unknown: the suite check names it
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"name": "s", "tasks": [{"name": "qa", "path": "qa.jsonl", "metrics": ["answer_words"]}]}))
    proc = cli("score", "--suite", tmp_path / "suite.yaml", "--outputs", d / "ft.jsonl", "--model-name", "x", "--out", tmp_path / "out")
    assert proc.returncode == 2 and "unknown metric 'answer_words'" in proc.stderr


def test_compare_says_when_the_runs_plugin_is_gone(scored, tmp_path):
    import shutil

    d, _ = scored
    for who in ("base", "ft"):
        shutil.copytree(d / who, tmp_path / who)
        results = json.loads((tmp_path / who / "results.json").read_text())
        results["plugins"] = [{"module": "gone_metrics", "file": str(tmp_path / "gone_metrics.py")}]
        (tmp_path / who / "results.json").write_text(json.dumps(results))
    proc = cli("compare", tmp_path / "base", tmp_path / "ft", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "plugins: the run used plugin 'gone_metrics'" in lines[0] and "cannot be imported" in lines[0]
