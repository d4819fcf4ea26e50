"""`evalsuite compare` and `gate` on unusable inputs, unlike runs and the extract case, through the real command
line (a fresh Python process per call, as CI runs it).

The run folders are real: one `evalsuite run` of the embedded SmolLM2 on a two-task suite of Alpaca records (a few
tokens each), and `evalsuite score` runs of its outputs; each broken-input case copies one and breaks the copy
the way a disk, an interrupted job or a hand edit does. Every unusable input must give exit 2, exactly one line
on stderr and no traceback; `gate` must also write a JUnit file whose one testcase holds that same line.

The extract case: two real WMT22 systems answer "Answer: <translation>\\nExplanation: ..." and BLEU is scored on
the extracted translation against both references. The bootstrap interval must be the one an independent
bootstrap of sacrebleu on the extracted text gives, and hold the headline delta; a bootstrap of the raw outputs
with one reference (what compare once did) lies far from it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from tests.conftest import REPO, write_jsonl


def cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`evalsuite ARGS` in a new process; its exit code, stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "evalsuite.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=300)


def one_line_exit_2(proc: subprocess.CompletedProcess, *expected: str) -> str:
    """The one stderr line of a refused input, after checking exit 2 and no traceback anywhere."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def gate_refuses(run: Path, rules: Path, junit: Path, *expected: str, baseline: Path | None = None) -> str:
    """`gate` on an unusable input: exit 2, one line, and a JUnit file with that line as its one error."""
    junit.unlink(missing_ok=True)
    line = one_line_exit_2(cli("gate", run, "--rules", rules, "--junit", junit, *(["--baseline", baseline] if baseline else [])), *expected)
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("1", "1", "0")
    error = suite.find("testcase/error")
    assert error is not None and error.get("message") == line and error.text == line
    return line


@pytest.fixture(scope="session")
def runs(shared_data, tmp_path_factory):
    """Real run folders: ``generated`` (`evalsuite run`, tasks alpaca and more), ``scored`` (`evalsuite score` of the
    same outputs), ``scored_alpaca`` (only task alpaca scored), ``other_answers`` (the same outputs and prompts
    scored against another answer key), plus a rules file for gate."""
    d = tmp_path_factory.mktemp("compare_inputs")
    records = json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[300:305]
    write_jsonl(d / "a.jsonl", records[:3])
    write_jsonl(d / "b.jsonl", records[3:])
    # the same prompts with another answer key (each reference with a suffix): only the references differ
    write_jsonl(d / "a_other.jsonl", [{**r, "output": r["output"] + " (revised)"} for r in records[:3]])
    write_jsonl(d / "b_other.jsonl", [{**r, "output": r["output"] + " (revised)"} for r in records[3:]])
    suite = {"name": "inputs", "generation": {"max_new_tokens": 4, "batch_size": 8},
             "tasks": [{"name": "alpaca", "path": "a.jsonl", "metrics": ["bleu", "exact_match"]},
                       {"name": "more", "path": "b.jsonl", "metrics": ["chrf"]}]}
    (d / "suite.yaml").write_text(yaml.safe_dump(suite))
    other = {**suite, "tasks": [{**t, "path": t["path"].replace(".jsonl", "_other.jsonl")} for t in suite["tasks"]]}
    (d / "other.yaml").write_text(yaml.safe_dump(other))

    proc = cli("run", "--suite", d / "suite.yaml", "--out", d / "generated", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    examples = pl.read_parquet(d / "generated" / "examples.parquet")
    write_jsonl(d / "outputs.jsonl", [{"task": r["task"], "idx": r["idx"], "output": r["output"]} for r in examples.iter_rows(named=True)])
    for name, suite_file, extra in (("scored", "suite.yaml", []), ("scored_alpaca", "suite.yaml", ["--task", "alpaca"]),
                                    ("other_answers", "other.yaml", [])):
        outputs = d / "outputs.jsonl"
        if extra:  # one task scored: its lines only
            outputs = write_jsonl(d / "outputs_alpaca.jsonl", [{"idx": r["idx"], "output": r["output"]}
                                                                for r in examples.filter(pl.col("task") == "alpaca").iter_rows(named=True)])
            extra = [*extra, "--outputs", f"alpaca={outputs}"]
        else:
            extra = ["--outputs", outputs]
        proc = cli("score", "--suite", d / suite_file, "--model-name", "smollm2-elsewhere", "--out", d / name, *extra)
        assert proc.returncode == 0, proc.stderr
    (d / "rules.yaml").write_text(yaml.safe_dump({"rules": [{"metric": "alpaca/bleu", "at_least": 0}]}))
    (d / "baseline_rules.yaml").write_text(yaml.safe_dump({"rules": [{"metric": "alpaca/bleu", "at_least": 0},
                                                                     {"metric": "alpaca/exact_match", "max_drop": 0.5},
                                                                     {"metric": "more/chrf", "no_significant_regression": True}]}))
    return d


def broken_copy(runs: Path, tmp_path: Path, name: str = "generated") -> Path:
    return Path(shutil.copytree(runs / name, tmp_path / "broken"))


def _edit_results(folder: Path, edit) -> None:
    results = json.loads((folder / "results.json").read_text())
    edit(results)
    (folder / "results.json").write_text(json.dumps(results))


def _edit_examples(folder: Path, edit) -> None:
    edit(pl.read_parquet(folder / "examples.parquet")).write_parquet(folder / "examples.parquet")


def _drop(path: tuple[str, ...]):
    def edit(results: dict) -> None:
        node = results
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
    return edit


def _without_score(key: str):
    def edit(frame: pl.DataFrame) -> pl.DataFrame:
        scores = [json.dumps({k: v for k, v in json.loads(s).items() if k != key}) for s in frame["scores"]]
        return frame.with_columns(pl.Series("scores", scores))
    return edit


def _truncate(file: str):
    def brk(folder: Path) -> None:
        data = (folder / file).read_bytes()
        (folder / file).write_bytes(data[: len(data) // 2])
    return brk


# (case, how the copy is broken, what the one line must name)
BROKEN = [
    ("empty results.json", lambda f: (f / "results.json").write_text(""), ["results.json", "not readable JSON"]),
    ("truncated results.json", _truncate("results.json"), ["results.json", "not readable JSON"]),
    ("results.json not an object", lambda f: (f / "results.json").write_text("[]"), ["results.json", "a JSON object is expected"]),
    ("no format", lambda f: _edit_results(f, _drop(("format",))), ["results.json", "format"]),
    ("an earlier format", lambda f: _edit_results(f, lambda r: r.update(format=1)), ["results.json", "format: 1"]),
    ("no tasks", lambda f: _edit_results(f, _drop(("tasks",))), ["results.json", "tasks", "Field required"]),
    ("no metrics", lambda f: _edit_results(f, _drop(("tasks", "alpaca", "metrics"))), ["results.json", "tasks.alpaca.metrics", "Field required"]),
    ("no value", lambda f: _edit_results(f, _drop(("tasks", "alpaca", "metrics", "bleu", "value"))),
     ["results.json", "tasks.alpaca.metrics.bleu.value", "Field required"]),
    ("no references hash", lambda f: _edit_results(f, _drop(("tasks", "more", "references_sha256"))), ["tasks.more.references_sha256"]),
    ("a value that is not a number", lambda f: _edit_results(f, lambda r: r["tasks"]["alpaca"]["metrics"]["bleu"].update(value="high")),
     ["tasks.alpaca.metrics.bleu.value"]),
    ("no results.json", lambda f: (f / "results.json").unlink(), ["no results.json"]),
    ("no examples.parquet", lambda f: (f / "examples.parquet").unlink(), ["examples.parquet", "missing"]),
    ("truncated examples.parquet", _truncate("examples.parquet"), ["examples.parquet", "not a readable Parquet file"]),
    ("examples.parquet not Parquet", lambda f: (f / "examples.parquet").write_text("task,idx\nalpaca,0\n"),
     ["examples.parquet", "not a readable Parquet file"]),
    ("fewer rows than results.json says", lambda f: _edit_examples(f, lambda x: x.filter(~((pl.col("task") == "alpaca") & (pl.col("idx") == 2)))),
     ["examples.parquet", "task alpaca: 2 rows", "n = 3"]),
    ("a task without its examples", lambda f: _edit_examples(f, lambda x: x.filter(pl.col("task") != "more")),
     ["examples.parquet", "task more: 0 rows", "n = 2"]),
    ("a key without its per-example scores", lambda f: _edit_examples(f, _without_score("exact_match")),
     ["examples.parquet", "task alpaca, idx 0", "no exact_match"]),
    ("a column missing", lambda f: _edit_examples(f, lambda x: x.drop("stats")), ["examples.parquet", "no column stats"]),
    ("scores that are not JSON", lambda f: _edit_examples(f, lambda x: x.with_columns(pl.lit("{oops").alias("scores"))),
     ["examples.parquet", "column scores"]),
]


@pytest.mark.parametrize("case, brk, expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_run_is_exit_2_one_line_and_a_junit_error(runs, tmp_path, case, brk, expected):
    broken = broken_copy(runs, tmp_path)
    brk(broken)
    # gate on the broken run itself, and with it as the baseline
    gate_refuses(broken, runs / "rules.yaml", tmp_path / "gate.xml", "gate: ", *expected)
    gate_refuses(runs / "generated", runs / "baseline_rules.yaml", tmp_path / "gate.xml", *expected, baseline=broken)
    # compare (either side goes through the same load_run)
    one_line_exit_2(cli("compare", runs / "generated", broken, "--out", tmp_path / "cmp"), "cannot compare: ", *expected)
    assert not (tmp_path / "cmp").exists()


def test_a_missing_run_folder(runs, tmp_path):
    gate_refuses(tmp_path / "nowhere", runs / "rules.yaml", tmp_path / "gate.xml", "no such run folder")
    one_line_exit_2(cli("compare", runs / "generated", tmp_path / "nowhere"), "no such run folder")
    # no --junit and no run folder to put gate.xml in: one line, saying the JUnit file could not be written
    one_line_exit_2(cli("gate", tmp_path / "nowhere", "--rules", runs / "rules.yaml"), "no such run folder", "cannot be written")


def test_bad_rules_files(runs, tmp_path):
    cases = {
        "not YAML": ("rules: [{metric: alpaca/bleu, at_least: 0}\n", ["not valid YAML"]),
        "two checks in a rule": (yaml.safe_dump({"rules": [{"metric": "alpaca/bleu", "at_least": 0, "at_most": 1}]}), ["exactly one of"]),
        "an unknown key": (yaml.safe_dump({"rules": [{"metric": "alpaca/bleu", "at_leest": 0}]}), ["at_leest"]),
        "no rules": (yaml.safe_dump({"rules": []}), ["rules"]),
        "an unknown metric": (yaml.safe_dump({"rules": [{"metric": "alpaca/rouge9", "at_least": 0}]}), ["alpaca/rouge9", "alpaca/bleu"]),
        "a baseline rule without --baseline": (yaml.safe_dump({"rules": [{"metric": "alpaca/bleu", "max_drop": 1}]}), ["--baseline"]),
    }
    for _name, (text, expected) in cases.items():
        (tmp_path / "r.yaml").write_text(text)
        gate_refuses(runs / "generated", tmp_path / "r.yaml", tmp_path / "gate.xml", *expected)
    gate_refuses(runs / "generated", tmp_path / "absent.yaml", tmp_path / "gate.xml", "absent.yaml", "no such config file")


def test_an_unwritable_junit_path(runs, tmp_path):
    (tmp_path / "a_file").write_text("")
    junit = tmp_path / "a_file" / "gate.xml"  # under a file: no user can write it (root included)
    proc = cli("gate", runs / "generated", "--rules", runs / "rules.yaml", "--junit", junit)
    one_line_exit_2(proc, "cannot write the JUnit file", str(junit))
    assert "PASS alpaca/bleu at least 0" in proc.stdout  # the verdicts are still shown
    # a broken run and nowhere to write: still one line, naming both
    broken = broken_copy(runs, tmp_path)
    (broken / "results.json").write_text("")
    one_line_exit_2(cli("gate", broken, "--rules", runs / "rules.yaml", "--junit", junit), "not readable JSON", "cannot be written")
    # compare with an output folder that cannot be made
    one_line_exit_2(cli("compare", runs / "scored", runs / "scored", "--out", tmp_path / "a_file" / "cmp"), "cannot write the comparison")


def test_another_answer_key_is_refused(runs, tmp_path):
    line = one_line_exit_2(cli("compare", runs / "scored", runs / "other_answers", "--out", tmp_path / "cmp"))
    assert "task alpaca: the references differ" in line and "task more: the references differ" in line
    assert "prompts differ" not in line  # the prompts are the same: only the answer key changed
    # gate's forgetting rule (max_drop) against it too: a drop against another answer key means nothing
    (tmp_path / "drop.yaml").write_text(yaml.safe_dump({"rules": [{"metric": "alpaca/exact_match", "max_drop": 0.5}]}))
    gate_refuses(runs / "scored", tmp_path / "drop.yaml", tmp_path / "gate.xml", "the references differ", baseline=runs / "other_answers")


def test_scored_outputs_compare_with_scored_outputs_only(runs, tmp_path):
    # the same outputs, generated here and scored from a file: refused either way, with the reason
    for base, ft, which in ((runs / "generated", runs / "scored", "fine-tune"), (runs / "scored", runs / "generated", "base")):
        line = one_line_exit_2(cli("compare", base, ft, "--out", tmp_path / "cmp"))
        assert f"task alpaca: the {which} run scored outputs made elsewhere" in line and "compare two scored runs" in line
        assert "chat templates differ" not in line  # the reason, not its symptom
    gate_refuses(runs / "scored", runs / "baseline_rules.yaml", tmp_path / "gate.xml", "scored outputs made elsewhere",
                 baseline=runs / "generated")
    # two scored runs compare (and gate)
    proc = cli("compare", runs / "scored", runs / "scored", "--out", tmp_path / "cmp")
    assert proc.returncode == 0, proc.stderr
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(cmp["tasks"]) == {"alpaca", "more"} and cmp["not_compared"] == []
    proc = cli("gate", runs / "scored", "--rules", runs / "baseline_rules.yaml", "--baseline", runs / "scored", "--junit", tmp_path / "g.xml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_other_generation_settings_are_refused_by_gate_too(runs, tmp_path):
    other = broken_copy(runs, tmp_path)
    _edit_results(other, lambda r: r["tasks"]["alpaca"]["generation"].update(max_new_tokens=64))
    line = gate_refuses(runs / "generated", runs / "baseline_rules.yaml", tmp_path / "gate.xml", "task alpaca: generation settings differ",
                        "max_new_tokens", baseline=other)
    assert "(64, 4)" in line  # (baseline, run)


def test_a_task_in_one_run_only_is_listed_not_dropped(runs, tmp_path):
    proc = cli("compare", runs / "scored", runs / "scored_alpaca", "--out", tmp_path / "cmp")
    assert proc.returncode == 0, proc.stderr
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert list(cmp["tasks"]) == ["alpaca"]
    assert cmp["not_compared"] == [{"task": "more", "metric": None, "only_in": "base", "note": "task more is only in the base run: not compared"}]
    note = "task more is only in the base run: not compared"
    assert note in (tmp_path / "cmp" / "compare.md").read_text() and note in (tmp_path / "cmp" / "compare.html").read_text()
    assert note in proc.stdout
    # the other way round, and a gate rule on the missing task: unusable, not a pass
    proc = cli("compare", runs / "scored_alpaca", runs / "scored", "--out", tmp_path / "cmp2")
    assert proc.returncode == 0 and "task more is only in the fine-tune run: not compared" in proc.stdout
    (tmp_path / "nsr.yaml").write_text(yaml.safe_dump({"rules": [{"metric": "more/chrf", "no_significant_regression": True}]}))
    gate_refuses(runs / "scored", tmp_path / "nsr.yaml", tmp_path / "gate.xml", "more/chrf: not in the baseline",
                 baseline=runs / "scored_alpaca")


# --- the extract case -------------------------------------------------------------------------------------

WMT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wmt22" / "txt"
N_WMT = 40


def _wmt(path: str) -> list[str]:
    return (WMT / path).read_text(encoding="utf-8").split("\n")[:N_WMT]


def _bootstrap_interval(base_hyps, ft_hyps, ref_streams, n: int) -> list[float]:
    """2.5/97.5 percentiles of corpus-BLEU deltas over compare's 1,000 paired resamples (seed 0), every corpus
    score computed by sacrebleu itself on pre-tokenized text (13a, the default; done once, for speed)."""
    import sacrebleu
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    from evalsuite.compare import BOOTSTRAP

    tok = Tokenizer13a()
    base_hyps, ft_hyps = [tok(h) for h in base_hyps], [tok(h) for h in ft_hyps]
    ref_streams = [[tok(r) for r in stream] for stream in ref_streams]
    deltas = []
    for s in np.random.default_rng(0).integers(0, n, size=(BOOTSTRAP, n)):
        refs = [[stream[i] for i in s] for stream in ref_streams]
        deltas.append(sacrebleu.corpus_bleu([ft_hyps[i] for i in s], refs, tokenize="none").score
                      - sacrebleu.corpus_bleu([base_hyps[i] for i in s], refs, tokenize="none").score)
    return [float(x) for x in np.percentile(deltas, [2.5, 97.5])]


def test_extract_and_bleu_the_interval_is_around_the_headline_delta(tmp_path):
    import sacrebleu

    source = _wmt("sources/generaltest2022.de-en.src.de")
    ref_a, ref_b = _wmt("references/generaltest2022.de-en.ref.A.en"), _wmt("references/generaltest2022.de-en.ref.B.en")
    systems = {"base": _wmt("system-outputs/generaltest2022.de-en.hyp.Online-A.en"),
               "ft": _wmt("system-outputs/generaltest2022.de-en.hyp.PROMT.en")}
    # two systems of close BLEU; the base explains at length, the fine-tune briefly: the raw text differs a lot
    explanation = {"base": lambda src: f"Explanation: the German sentence was '{src}', rendered word by word into English.",
                   "ft": lambda src: "Explanation: blah"}
    write_jsonl(tmp_path / "wmt.jsonl", [{"instruction": f"Translate into English: {s}", "output": a, "refs": [a, b]}
                                         for s, a, b in zip(source, ref_a, ref_b)])
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"name": "wmt", "tasks": [{
        "name": "de-en", "path": "wmt.jsonl", "references_field": "refs",
        "metrics": [{"name": "bleu", "extract": {"regex": "Answer: (.*)"}}]}]}))
    outputs = {}
    for who, hyps in systems.items():
        outputs[who] = [f"Answer: {h}\n{explanation[who](s)}" for h, s in zip(hyps, source)]
        write_jsonl(tmp_path / f"{who}.jsonl", [{"idx": i, "output": o} for i, o in enumerate(outputs[who])])
        proc = cli("score", "--suite", tmp_path / "suite.yaml", "--outputs", tmp_path / f"{who}.jsonl", "--model-name", who, "--out", tmp_path / who)
        assert proc.returncode == 0, proc.stderr
    proc = cli("compare", tmp_path / "base", tmp_path / "ft", "--out", tmp_path / "cmp")
    assert proc.returncode == 0, proc.stderr
    row = json.loads((tmp_path / "cmp" / "compare.json").read_text())["tasks"]["de-en"]["metrics"][0]
    assert row["metric"] == "bleu"

    # the headline: sacrebleu on what the regex extracts, against both references
    extracted = {who: [re.search("Answer: (.*)", o).group(1) for o in outs] for who, outs in outputs.items()}
    headline = {who: sacrebleu.corpus_bleu(extracted[who], [ref_a, ref_b]).score for who in systems}
    assert row["base"] == pytest.approx(headline["base"], abs=1e-9) and row["fine_tune"] == pytest.approx(headline["ft"], abs=1e-9)
    assert abs(row["delta"]) < 2  # close systems

    # the interval: the same resamples bootstrapped independently with sacrebleu, and it holds the delta
    lo, hi = _bootstrap_interval(extracted["base"], extracted["ft"], [ref_a, ref_b], N_WMT)
    assert row["ci95"] == pytest.approx([lo, hi], abs=1e-6)
    assert lo <= row["delta"] <= hi and row["verdict"] == "no significant change"

    # what the raw outputs with one reference give instead (the old bootstrap): an interval far from the delta
    raw_lo, raw_hi = _bootstrap_interval(outputs["base"], outputs["ft"], [ref_a], N_WMT)
    print(f"headline delta {row['delta']:+.3f}, interval {row['ci95']}, raw-output interval [{raw_lo:+.2f}, {raw_hi:+.2f}]")
    assert raw_lo > row["delta"] + 5, (raw_lo, raw_hi, row["delta"])


@pytest.mark.parametrize("command", ["run", "score"])
def test_a_suite_with_several_bad_keys_is_one_line_naming_each(tmp_path, command):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\ntasks:\n  - {name: a, path: a.jsonl, metrics: [blue], kind: generat}\n"
                     "  - {name: b, path: b.jsonl, metrics: [bleu], limit: -1}\n")
    extra = ["--outputs", tmp_path / "out.jsonl", "--model-name", "m"] if command == "score" else []
    line = one_line_exit_2(cli(command, "--suite", suite, *extra), "tasks.0.kind", "did you mean 'generate'",
                           "tasks.0.metrics", "did you mean 'bleu'", "tasks.1.limit")
    assert str(suite) in line
