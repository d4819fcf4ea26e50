"""`evalsuite score`: outputs made elsewhere, scored into a run folder compare and gate take.

- On the WMT22 system outputs in ../shared/data (sources as prompts, references A, and A+B through the
  suite's `references_field`), BLEU and chrF equal the `sacrebleu` command line run on the same lines.
- `compare` of two systems' scored runs gives the interval and verdict of a paired bootstrap computed here
  independently, from sacrebleu's own per-sentence statistics on the same resample indices.
- Outputs are matched by `idx` or by prompt; a missing, extra or duplicate output, a bad line, a metric or
  task that needs the model: exit 2 with one line naming file, line and field.
- `predictions:` in the suite, a workspace, `gate` on a scored run.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import write_jsonl

SACREBLEU = Path(sys.executable).with_name("sacrebleu")
LINES = 300  # the first few hundred lines of each WMT22 file


def _lines(path: Path, n: int = LINES) -> list[str]:
    # what the sacrebleu command line reads: "\n"-separated lines, trailing whitespace stripped
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip() for line in f][:n]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _cli(*args):
    from evalsuite.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def wmt(shared_data, tmp_path_factory):
    """Per language pair: the task data (source as the prompt, reference A as the answer, A and B in
    `refs`), a one-reference and a two-reference suite, and every system's first LINES lines as text files."""
    tmp = tmp_path_factory.mktemp("wmt")
    txt = shared_data / "wmt22" / "txt"
    out = {"dir": tmp, "refs": {}, "systems": {}}
    for pair, systems in (("de-en", ("Online-A", "Online-B", "LT22")), ("en-de", ("Online-A", "Online-B"))):
        src_lang, tgt = pair.split("-")
        src = _lines(txt / "sources" / f"generaltest2022.{pair}.src.{src_lang}")
        ref_a = _lines(txt / "references" / f"generaltest2022.{pair}.ref.A.{tgt}")
        ref_b = _lines(txt / "references" / f"generaltest2022.{pair}.ref.B.{tgt}")
        write_jsonl(tmp / f"{pair}.jsonl", [{"prompt": s, "completion": a, "refs": [a, b]} for s, a, b in zip(src, ref_a, ref_b)])
        out["refs"][pair] = {"A": _write_lines(tmp / f"{pair}.ref.A", ref_a), "B": _write_lines(tmp / f"{pair}.ref.B", ref_b)}
        for system in systems:
            out["systems"][(pair, system)] = _write_lines(tmp / f"{pair}.{system}.txt",
                                                          _lines(txt / "system-outputs" / f"generaltest2022.{pair}.hyp.{system}.{tgt}"))
    for name, extra in (("one", {}), ("two", {"references_field": "refs"})):
        suite = {"name": f"wmt-{name}", "tasks": [{"name": pair, "path": f"{pair}.jsonl", "shape": "prompt_completion", **extra,
                                                   "metrics": ["bleu", "chrf"]} for pair in ("de-en", "en-de")]}
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(suite))
    return out


def _sacrebleu_cli(refs: list[Path], hyp: Path) -> dict[str, dict]:
    cmd = [str(SACREBLEU), *map(str, refs), "-i", str(hyp), "-m", "bleu", "chrf", "-w", "6", "--format", "json"]
    return {r["name"]: r for r in json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)}


@pytest.mark.parametrize(("pair", "system", "refs"), [("de-en", "Online-A", ["A"]), ("en-de", "Online-B", ["A"]),
                                                      ("en-de", "Online-A", ["A", "B"]), ("de-en", "Online-B", ["A", "B"])])
def test_score_equals_the_sacrebleu_command_line_on_wmt22(wmt, pair, system, refs):
    if not SACREBLEU.is_file():
        pytest.skip("the sacrebleu command is not installed next to this python")
    tmp, hyp = wmt["dir"], wmt["systems"][(pair, system)]
    suite = tmp / ("one.yaml" if len(refs) == 1 else "two.yaml")
    out = tmp / f"scored-{pair}-{system}-{len(refs)}"
    res = _cli("score", "--suite", suite, "--task", pair, "--outputs", f"{pair}={hyp}", "--model-name", system, "--out", out)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    cli = _sacrebleu_cli([wmt["refs"][pair][r] for r in refs], hyp)
    metrics = results["tasks"][pair]["metrics"]
    assert metrics["bleu"]["value"] == pytest.approx(cli["BLEU"]["score"], abs=1e-6)  # the CLI prints 6 decimals
    assert metrics["chrf"]["value"] == pytest.approx(cli["chrF2"]["score"], abs=1e-6)
    # the signatures agree, but for BLEU's nrefs where a line's two references are the same text: the suite's
    # reference list keeps one of them (the score is the same; sacrebleu's BLEU then says nrefs:var)
    ref_lists = list(zip(*(_lines(wmt["refs"][pair][r]) for r in refs)))
    repeats = any(len(set(rs)) < len(rs) for rs in ref_lists)
    for ours, theirs, nrefs in ((metrics["bleu"], cli["BLEU"], "nrefs:var" if repeats else f"nrefs:{len(refs)}"),
                                (metrics["chrf"], cli["chrF2"], f"nrefs:{len(refs)}")):
        head, _, rest = ours["details"]["signature"].partition("|")
        assert head == nrefs and rest == theirs["signature"].partition("|")[2] and theirs["signature"].startswith(f"nrefs:{len(refs)}|")
    # the run folder: the model as named, a scored generation, no template, the outputs file's hash
    assert results["model"] == system and results["chat_template_sha256"] is None and list(results["tasks"]) == [pair]
    task = results["tasks"][pair]
    assert task["generation"] == {"kind": "scored"} and task["n"] == LINES
    import hashlib

    assert task["outputs"] == {"path": str(hyp), "format": "text", "sha256": hashlib.sha256(hyp.read_bytes()).hexdigest()}
    examples = pl.read_parquet(out / "examples.parquet")
    assert examples.columns == ["task", "idx", "source", "prompt", "reference", "output", "scores", "stats", "annotations"]
    assert examples["output"].to_list() == _lines(hyp) and examples["idx"].to_list() == list(range(LINES))
    assert json.loads(examples["annotations"][4])["output_from"] == f"{hyp}:5"


def _sentence_stats(hyps: list[str], refs: list[list[str]]) -> np.ndarray:
    """Per line [sys_len, ref_len, 4 n-gram matches, 4 n-gram totals], from sacrebleu's public sentence_bleu."""
    import sacrebleu

    rows = []
    for h, rs in zip(hyps, refs):
        s = sacrebleu.sentence_bleu(h, rs)
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return np.array(rows, dtype=np.int64)


def _corpus_bleu(rows: np.ndarray) -> float:
    from sacrebleu.metrics import BLEU

    total = rows.sum(0)
    return BLEU.compute_bleu(correct=[int(x) for x in total[2:6]], total=[int(x) for x in total[6:10]], sys_len=int(total[0]),
                             ref_len=int(total[1]), smooth_method="exp").score


@pytest.mark.parametrize(("base", "fine_tune", "refs"), [("LT22", "Online-A", ["A"]), ("Online-A", "Online-B", ["A", "B"])])
def test_compare_of_two_scored_systems_equals_an_independent_paired_bootstrap(wmt, base, fine_tune, refs):
    import sacrebleu

    from evalsuite.compare import BOOTSTRAP

    pair, tmp = "de-en", wmt["dir"]
    suite = tmp / ("one.yaml" if len(refs) == 1 else "two.yaml")
    for system in (base, fine_tune):
        res = _cli("score", "--suite", suite, "--task", pair, "--outputs", f"{pair}={wmt['systems'][(pair, system)]}",
                   "--model-name", system, "--out", tmp / f"bs-{system}-{len(refs)}")
        assert res.exit_code == 0, res.output
    res = _cli("compare", tmp / f"bs-{base}-{len(refs)}", tmp / f"bs-{fine_tune}-{len(refs)}", "--out", tmp / f"cmp-{len(refs)}")
    assert res.exit_code == 0, res.output
    row = {r["metric"]: r for r in json.loads((tmp / f"cmp-{len(refs)}" / "compare.json").read_text())["tasks"][pair]["metrics"]}["bleu"]

    # independently: sacrebleu's per-sentence statistics, resampled with the indices compare draws (numpy's
    # default_rng(0), BOOTSTRAP resamples of n line indices), corpus BLEU of each resample
    ref_lines = [list(rs) for rs in zip(*(_lines(wmt["refs"][pair][r]) for r in refs))]
    hyps = {s: _lines(wmt["systems"][(pair, s)]) for s in (base, fine_tune)}
    stats = {s: _sentence_stats(h, ref_lines) for s, h in hyps.items()}
    for s in (base, fine_tune):  # the statistics are sacrebleu's: their sum is its corpus BLEU
        assert _corpus_bleu(stats[s]) == pytest.approx(sacrebleu.corpus_bleu(hyps[s], [list(r) for r in zip(*ref_lines)]).score, abs=1e-9)
    samples = np.random.default_rng(0).integers(0, LINES, size=(BOOTSTRAP, LINES))
    for idx in samples[:2]:  # and a resample's value is sacrebleu's corpus_bleu over the resampled lines
        lines = [hyps[fine_tune][i] for i in idx]
        streams = [[ref_lines[i][k] for i in idx] for k in range(len(refs))]
        assert _corpus_bleu(stats[fine_tune][idx]) == pytest.approx(sacrebleu.corpus_bleu(lines, streams).score, abs=1e-9)
    deltas = np.array([_corpus_bleu(stats[fine_tune][idx]) - _corpus_bleu(stats[base][idx]) for idx in samples])
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    delta = _corpus_bleu(stats[fine_tune]) - _corpus_bleu(stats[base])
    verdict = "better" if lo > 0 else "worse" if hi < 0 else "no significant change"
    assert row["delta"] == pytest.approx(delta, abs=1e-9)
    assert row["ci95"] == pytest.approx([lo, hi], abs=1e-9)
    assert row["verdict"] == verdict


# ---------------------------------------------------------------------------------------------- matching


@pytest.fixture(scope="module")
def small(shared_data, tmp_path_factory):
    """A task on 5 real Alpaca records, and a second task whose file has a record without an answer."""
    tmp = tmp_path_factory.mktemp("small")
    # one-line answers: a text file of outputs holds one per line
    rows = [r for r in json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[400:] if "\n" not in r["output"]][:5]
    write_jsonl(tmp / "qa.jsonl", rows)
    write_jsonl(tmp / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Red."}]},
        {"messages": [{"role": "user", "content": "Only a question"}]},
        {"messages": [{"role": "user", "content": "Name a planet."}, {"role": "assistant", "content": "Mars."}]},
    ])
    suite = {"name": "small", "tasks": [{"name": "qa", "path": "qa.jsonl", "metrics": ["rouge", "exact_match"]},
                                        {"name": "chat", "path": "chat.jsonl", "metrics": ["exact_match"]}]}
    (tmp / "suite.yaml").write_text(yaml.safe_dump(suite))
    answers = [f"{r['output'][:40]} (paraphrased)" if i % 2 else r["output"] for i, r in enumerate(rows)]
    return tmp, rows, answers


def _score(tmp, *args, name="m"):
    return _cli("score", "--suite", tmp / "suite.yaml", "--model-name", name, *args)


def _one_line_error(res, *expected):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit))
    line = res.stderr.strip()
    assert "\n" not in line, line
    for text in expected:
        assert text in line, line


def test_outputs_match_by_idx_or_by_prompt_in_any_order(small):
    tmp, rows, answers = small
    order = list(range(5))
    random.Random(0).shuffle(order)
    by_idx = write_jsonl(tmp / "by_idx.jsonl", [{"task": "qa", "idx": i, "output": answers[i], "latency_ms": 12} for i in order]
                         + [{"task": "chat", "idx": 1, "output": "Mars."}, {"task": "chat", "idx": 0, "output": "Blue."}])
    by_prompt = write_jsonl(tmp / "by_prompt.jsonl", [{"task": "qa", "prompt": rows[i]["instruction"] + ("\n\n" + rows[i]["input"] if rows[i]["input"] else ""),
                                                       "output": answers[i]} for i in order]
                            + [{"task": "chat", "prompt": [{"role": "user", "content": "Name a planet."}], "output": "Mars."},
                               {"task": "chat", "prompt": "Name a primary colour.", "output": "Blue."}])
    res = _score(tmp, "--outputs", by_idx, "--out", tmp / "a")
    assert res.exit_code == 0, res.output
    a = json.loads((tmp / "a" / "results.json").read_text())
    assert a["tasks"]["qa"]["metrics"]["exact_match"]["value"] == 0.6 and a["tasks"]["chat"]["metrics"]["exact_match"]["value"] == 0.5
    assert a["tasks"]["chat"]["skipped"][0]["where"].endswith("chat.jsonl:2")
    res = _score(tmp, "--outputs", by_prompt, "--out", tmp / "b")
    assert res.exit_code == 0, res.output
    b = json.loads((tmp / "b" / "results.json").read_text())
    assert {t: {k: m["value"] for k, m in v["metrics"].items()} for t, v in a["tasks"].items()} == \
        {t: {k: m["value"] for k, m in v["metrics"].items()} for t, v in b["tasks"].items()}
    assert pl.read_parquet(tmp / "a" / "examples.parquet")["output"].to_list() == pl.read_parquet(tmp / "b" / "examples.parquet")["output"].to_list()
    assert a["tasks"]["qa"]["outputs"]["sha256"] != b["tasks"]["qa"]["outputs"]["sha256"] and a["run_id"] != b["run_id"]


def test_bad_outputs_exit_2_in_one_line_naming_file_line_and_field(small, shared_data):
    tmp, rows, answers = small
    good = [{"idx": i, "output": a} for i, a in enumerate(answers)]
    qa = ("--task", "qa", "--out", tmp / "never")

    def case(name, lines, *expected, raw=None):
        path = tmp / f"{name}.jsonl"
        if raw is not None:
            path.write_text(raw)
        else:
            write_jsonl(path, lines)
        _one_line_error(_score(tmp, "--outputs", f"qa={path}", *qa), *expected)
        return path

    p = case("missing", good[:3] + good[4:], "1 of 5 examples have no output", "idx 3 (", "qa.jsonl:4")
    assert str(p) in _score(tmp, "--outputs", f"qa={p}", *qa).stderr
    case("extra", good + [{"idx": 5, "output": "x"}], "extra.jsonl:6: idx: no example 5 in task qa, which has 5")
    case("duplicate", good + [{"idx": 2, "output": "again"}], "duplicate.jsonl:6: idx: example 2 of task qa is already answered at",
         "duplicate.jsonl:3")
    case("twice_by_prompt", good[1:] + [{"prompt": rows[0]["instruction"], "output": "a"}] * 2,
         "twice_by_prompt.jsonl:6: prompt: every example of task qa with this prompt is already answered")
    case("wrong_prompt", [{**good[0], "prompt": "Something else"}] + good[1:], "wrong_prompt.jsonl:1: prompt: not the prompt of example 0")
    case("unknown_prompt", good[1:] + [{"prompt": "Never asked", "output": "x"}], "unknown_prompt.jsonl:5: prompt: matches no example")
    case("not_a_string", [{"idx": 0, "output": None}] + good[1:], "not_a_string.jsonl:1: output: must be a string")
    case("no_output", [{"idx": 0}] + good[1:], "no_output.jsonl:1: output: missing")
    case("no_key", [{"output": "x"}] + good[1:], "no_key.jsonl:1: idx: missing")
    case("bad_idx", [{"idx": -1, "output": "x"}] + good[1:], "bad_idx.jsonl:1: idx: must be an integer >= 0")
    case("bad_json", None, "bad_json.jsonl:2: not valid JSON", raw=json.dumps(good[0]) + "\n{idx: 1\n")
    case("other_task", [{**g, "task": "chat"} for g in good], "other_task.jsonl:1: task: 'chat', but this file was given for task 'qa'")
    # a file for several tasks: each line names its task
    write_jsonl(tmp / "untasked.jsonl", good)
    _one_line_error(_score(tmp, "--outputs", tmp / "untasked.jsonl", "--out", tmp / "never"), "untasked.jsonl:1: task: missing")
    write_jsonl(tmp / "unknown_task.jsonl", [{**good[0], "task": "qna"}])
    _one_line_error(_score(tmp, "--outputs", tmp / "unknown_task.jsonl", "--out", tmp / "never"), "unknown_task.jsonl:1: task: no task 'qna'")
    _one_line_error(_score(tmp, "--task", "qa", "--out", tmp / "never"), "task qa: no outputs", "--outputs qa=FILE")
    _one_line_error(_score(tmp, "--outputs", f"qa={tmp / 'nowhere.jsonl'}", *qa), "nowhere.jsonl: no such outputs file")

    # plain text: line k answers example k-1
    _write_lines(tmp / "six.txt", answers + ["one more"])
    _one_line_error(_score(tmp, "--outputs", f"qa={tmp / 'six.txt'}", *qa), "six.txt:6: line: no example 5 in task qa")
    _write_lines(tmp / "four.txt", answers[:4])
    _one_line_error(_score(tmp, "--outputs", f"qa={tmp / 'four.txt'}", *qa), "four.txt: task qa: 1 of 5 examples have no output: idx 4")
    _write_lines(tmp / "chat.txt", ["Red.", "Mars."])  # the chat file skipped a record: lines cannot line up
    _one_line_error(_score(tmp, "--task", "chat", "--outputs", f"chat={tmp / 'chat.txt'}", "--out", tmp / "never"),
                    "chat.txt: task chat skipped 1 record(s)", "give JSONL lines with `idx` or `prompt`")
    assert not (tmp / "never").exists()


def test_metrics_and_tasks_that_need_the_model_are_refused(small, shared_data):
    tmp, _, answers = small
    _write_lines(tmp / "qa.txt", answers)
    cfg = yaml.safe_load((tmp / "suite.yaml").read_text())
    cfg["tasks"][0]["metrics"].append("perplexity")
    cfg["tasks"].append({"name": "geo", "kind": "mmlu", "path": str(shared_data / "mmlu" / "high_school_geography_test.csv"), "limit": 4})
    (tmp / "needs_model.yaml").write_text(yaml.safe_dump(cfg))
    res = _cli("score", "--suite", tmp / "needs_model.yaml", "--model-name", "m", "--task", "qa", "--outputs", f"qa={tmp / 'qa.txt'}")
    _one_line_error(res, "task qa: metric perplexity needs the model's weights, which scoring outputs does not have")
    res = _cli("score", "--suite", tmp / "needs_model.yaml", "--model-name", "m", "--task", "geo", "--outputs", f"geo={tmp / 'qa.txt'}")
    _one_line_error(res, "task geo: a mmlu task scores the model's log-likelihoods")


def test_predictions_in_the_suite_a_workspace_compare_by_run_id_and_gate(small):
    from curate.workspace import Workspace

    tmp, rows, answers = small
    _write_lines(tmp / "qa.sys1.txt", answers)
    _write_lines(tmp / "qa.sys2.txt", [r["output"] for r in rows])  # the references themselves: a perfect system
    cfg = yaml.safe_load((tmp / "suite.yaml").read_text())
    cfg["tasks"] = [{**cfg["tasks"][0], "predictions": "qa.sys1.txt"}]
    (tmp / "pred.yaml").write_text(yaml.safe_dump(cfg))
    ws = tmp / "ws"
    res = _cli("score", "--suite", tmp / "pred.yaml", "--model-name", "sys1", "--workspace", ws, "--out", tmp / "sys1")
    assert res.exit_code == 0, res.output
    assert "time:" in res.stdout and "qa: score rouge" in res.stdout
    sys1 = json.loads((tmp / "sys1" / "results.json").read_text())
    assert sys1["tasks"]["qa"]["outputs"]["path"] == str(tmp / "qa.sys1.txt")
    assert set(sys1["timing"]["tasks"]["qa"]["score"]) == {"rouge_s", "exact_match_s"}
    res = _cli("score", "--suite", tmp / "pred.yaml", "--model-name", "sys2", "--workspace", ws, "--out", tmp / "sys2",
               "--outputs", f"qa={tmp / 'qa.sys2.txt'}")  # --outputs wins over predictions:
    assert res.exit_code == 0, res.output
    sys2 = json.loads((tmp / "sys2" / "results.json").read_text())
    assert sys2["tasks"]["qa"]["metrics"]["exact_match"]["value"] == 1.0
    with Workspace(ws, create=False) as w:
        row = w.run(sys1["run_id"])
        assert row["kind"] == "eval" and row["status"] == "done" and row["summary"]["model"] == "sys1"
        assert w.query(sys1["run_id"], "SELECT count(*) AS n FROM eval_examples WHERE run_id = ?", [sys1["run_id"]])["n"][0] == 5
    res = _cli("compare", sys1["run_id"], sys2["run_id"], "--workspace", ws, "--out", tmp / "cmp")
    assert res.exit_code == 0, res.output
    rows_cmp = {r["metric"]: r for r in json.loads((tmp / "cmp" / "compare.json").read_text())["tasks"]["qa"]["metrics"]}
    assert rows_cmp["exact_match"]["delta"] == pytest.approx(0.4) and "mcnemar_p" in rows_cmp["exact_match"]
    (tmp / "rules.yaml").write_text(yaml.safe_dump({"rules": [{"metric": "qa/exact_match", "at_least": 0.9},
                                                              {"metric": "qa/rougeL", "no_significant_regression": True}]}))
    res = _cli("gate", tmp / "sys2", "--rules", tmp / "rules.yaml", "--baseline", tmp / "sys1", "--junit", tmp / "gate.xml")
    assert res.exit_code == 0, res.output
    res = _cli("gate", tmp / "sys1", "--rules", tmp / "rules.yaml", "--baseline", tmp / "sys2", "--junit", tmp / "gate1.xml")
    assert res.exit_code == 1 and "FAIL qa/exact_match" in res.output
