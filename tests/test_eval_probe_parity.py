"""Probe kinds against lm-evaluation-harness 0.4.13, item by item: ARC, HellaSwag, PIQA, BoolQ (multiple choice),
Winogrande (partial evaluation) and LAMBADA (greedy last word, perplexity).

The golden files (``tests/golden/probes/<kind>.jsonl``) hold what lm_eval itself logged (``--log_samples``) for
the embedded SmolLM2 on real items from ``shared/data`` and ``tests/data/probes``: every (context, continuation)
request, its log-likelihood and is_greedy, and the item's metrics. ``bench/probe_parity.py --regenerate``
writes them (lm_eval in a separate folder, never a dependency of the project). Here our loaders read the same
source files and our metrics score the same items with the same model: the requests must be the harness's
exactly, every item's outcome the same, every log-likelihood within 1e-3.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "probes"
DATA = REPO / "tests" / "data" / "probes"
N = 30  # items per kind here (BoolQ's long passages: 15); bench/probe_parity.py checks all of them (50-100 a kind)

SOURCES = {
    "arc_easy": SHARED / "arc" / "arc_easy_shared.jsonl",
    "arc_challenge": SHARED / "arc" / "arc_challenge_shared.jsonl",
    "hellaswag": SHARED / "hellaswag" / "hellaswag_val_rows_0_2000.jsonl",
    "piqa": SHARED / "piqa" / "piqa.jsonl",
    "boolq": DATA / "boolq_val_0_50.jsonl",
    "winogrande": DATA / "winogrande_dev_0_100.jsonl",
    "lambada": DATA / "lambada_openai_test_0_60.jsonl",
}
OUTCOMES = {"winogrande": ["acc"], "lambada": ["acc"]}  # the others: acc and acc_norm


@pytest.fixture(scope="module")
def smollm2():
    """The embedded SmolLM2 on CPU in float32, as the golden files were made."""
    from chat.models import load_model

    net, tok, _ = load_model("embedded", device="cpu")
    return net, tok


def _golden(kind: str, n: int | None = N) -> list[dict]:
    rows = [json.loads(line) for line in (GOLDEN / f"{kind}.jsonl").read_text(encoding="utf-8").splitlines()]
    return rows[:n] if n else rows


def _requests(item) -> list[list[str]]:
    from evalsuite.metrics.choice import MCItem, PartialItem

    if isinstance(item, MCItem):
        return [[item.context, " " + c] for c in item.choices]
    if isinstance(item, PartialItem):
        return [[c, " " + item.continuation] for c in item.contexts]
    return [[item.context, item.target]]


@pytest.mark.parametrize("kind", list(SOURCES))
def test_probe_kind_scores_as_lm_eval_item_by_item(kind, smollm2, shared_data):
    from evalsuite.metrics import get_metric, score_of
    from evalsuite.probes import get_probe

    net, tok = smollm2
    gold = _golden(kind, 15 if kind == "boolq" else N)
    probe = get_probe(kind)
    items = probe.load(SOURCES[kind], len(gold))
    assert [it.source for it in items] == [g["source"] for g in gold]
    # the prompts: every (context, continuation) the harness scored, character for character
    for it, g in zip(items, gold):
        assert _requests(it) == g["requests"], g["source"]
    res = get_metric(probe.metric)(net, tok, items)
    notes = next(iter(res.values())).annotations
    ours = [n["loglikelihoods"] if "loglikelihoods" in n else [n["loglikelihood"]] for n in notes]
    diffs = [abs(a - b) for o, g in zip(ours, gold) for a, b in zip(o, g["loglikelihoods"], strict=True)]
    assert max(diffs) < 1e-3, (kind, max(diffs))
    keys = OUTCOMES.get(kind, ["acc", "acc_norm"])
    differing = [g["source"] for i, g in enumerate(gold) if any(res[k].per_example[i] != float(g["metrics"][k]) for k in keys)]
    assert differing == [], f"{kind}: items scored unlike lm-eval: {differing}"
    for k in keys:
        assert res[k].value == pytest.approx(np.mean([g["metrics"][k] for g in gold]), abs=1e-12)
    if kind == "lambada":
        assert [n["is_greedy"] for n in notes] == [g["is_greedy"][0] for g in gold]
        # the harness's perplexity aggregation over its own item log-likelihoods
        theirs = math.exp(-np.mean([g["metrics"]["perplexity"] for g in gold]))
        assert res["perplexity"].value == pytest.approx(theirs, rel=1e-4)
        assert not score_of("last_word", "perplexity").higher_is_better
    # the metric-object contract: the stored stats rows, aggregated by the key's Score, give back the value
    for k, r in res.items():
        rows = np.asarray(r.stat_rows(), dtype=float)
        assert score_of(probe.metric, k).aggregate(rows, {}) == pytest.approx(r.value, rel=1e-12, abs=1e-12)


def test_golden_files_cover_the_bench_items():
    """The golden files hold what bench/probe_parity.py documents (50-100 items a kind, lm_eval 0.4.13)."""
    meta = json.loads((GOLDEN / "meta.json").read_text())
    assert meta["lm_eval"] == "0.4.13" and "dtype=float32" in meta["command"] and "--log_samples" in meta["command"]
    for kind in SOURCES:
        gold = _golden(kind, None)
        assert len(gold) == meta["kinds"][kind]["items"] >= 50 and [g["index"] for g in gold] == list(range(len(gold)))


def test_hellaswag_ctx_only_files_split_back_into_the_datasets_ctx_a_and_ctx_b(shared_data):
    """shared/data's HellaSwag kept the joined ctx; the dataset's first ten validation rows (their own ctx_a,
    ctx_b) give the same prompts, " He" capitalized as the harness does."""
    from evalsuite.probes import hellaswag_items, split_hellaswag_ctx

    original = [json.loads(line) for line in (DATA / "hellaswag_val_original_0_10.jsonl").read_text().splitlines()]
    assert [split_hellaswag_ctx(r["ctx"]) for r in original] == [(r["ctx_a"], r["ctx_b"]) for r in original]
    ours = hellaswag_items(SOURCES["hellaswag"], 10)
    theirs = hellaswag_items(DATA / "hellaswag_val_original_0_10.jsonl")
    assert [(a.context, a.choices, a.gold) for a in ours] == [(b.context, b.choices, b.gold) for b in theirs]
    assert theirs[0].context == "Roof shingle removal: A man is sitting on a roof. He"
    assert theirs[8].context.endswith("in the wilderness. Then he")


def test_dataset_field_names_load_as_llm_foundrys_rows(tmp_path, shared_data):
    """Each loader reads the original datasets' field names (as the harness's datasets have them) into the
    same items as llm-foundry's rows of the same questions."""
    from evalsuite import probes

    def first(path: Path) -> dict:
        return json.loads(path.read_text(encoding="utf-8").splitlines()[0])

    def write(name: str, row: dict) -> Path:
        (tmp_path / name).write_text(json.dumps(row) + "\n", encoding="utf-8")
        return tmp_path / name

    arc = first(SOURCES["arc_easy"])
    hf_arc = {"question": arc["query"].removeprefix("Question: "), "answerKey": "1",
              "choices": {"text": arc["choices"], "label": ["1", "2", "3", "4"]}}
    ai2_arc = {"question": {"stem": hf_arc["question"], "choices": [{"text": t, "label": x} for t, x in zip(arc["choices"], "ABCD")]},
               "answerKey": "A"}
    want = probes.arc_items(SOURCES["arc_easy"], 1)[0]
    for name, row in (("arc_hf.jsonl", hf_arc), ("arc_ai2.jsonl", ai2_arc)):
        got = probes.arc_items(write(name, row))[0]
        assert (got.context, got.choices, got.gold) == (want.context, want.choices, want.gold)

    piqa = first(SOURCES["piqa"])
    hf_piqa = {"goal": piqa["query"].removeprefix("Question: ").removesuffix("\n"), "sol1": piqa["choices"][0],
               "sol2": piqa["choices"][1], "label": piqa["gold"]}
    a, b = probes.piqa_items(write("piqa.jsonl", hf_piqa))[0], probes.piqa_items(SOURCES["piqa"], 1)[0]
    assert (a.context, a.choices, a.gold) == (b.context, b.choices, b.gold)

    boolq = first(SOURCES["boolq"])
    passage, question = boolq["query"].removeprefix("Passage: ").rsplit("\nQuestion: ", 1)
    want = probes.boolq_items(SOURCES["boolq"], 1)[0]
    for row in ({"passage": passage, "question": question.removesuffix("?"), "label": 0},
                {"passage": passage, "question": question.removesuffix("?"), "answer": False, "title": "ethanol fuel"}):
        got = probes.boolq_items(write("boolq.jsonl", row))[0]
        assert (got.context, got.choices, got.gold) == (want.context, want.choices, want.gold)
    assert want.context.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")

    # Winogrande dev's first item in the dataset's own fields
    hf_wino = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
               "option1": "Sarah", "option2": "Maria", "answer": "2"}
    a, b = probes.winogrande_items(write("wino.jsonl", hf_wino))[0], probes.winogrande_items(SOURCES["winogrande"], 1)[0]
    assert (a.contexts, a.continuation, a.gold, a.options) == (b.contexts, b.continuation, b.gold, b.options)

    lam = first(SOURCES["lambada"])
    a = probes.lambada_items(write("lambada.jsonl", {"text": lam["context"] + " " + lam["continuation"]}))[0]
    b = probes.lambada_items(SOURCES["lambada"], 1)[0]
    assert (a.context, a.target) == (b.context, b.target) and a.target == " signs"


@pytest.mark.parametrize("loader, line, expected", [
    ("arc_items", '{"question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}',
     r"bad.jsonl:2: field 'answerKey': 'C' is none of the choice labels"),
    ("arc_items", '{"query": "Question: Q?", "choices": ["a", "b"], "gold": 2}', r"bad.jsonl:2: field 'gold': must be an index in 0..1"),
    ("hellaswag_items", '{"activity_label": "x", "ctx_a": "A man.", "ctx_b": "he", "endings": ["a", "b"], "label": ""}',
     r"bad.jsonl:2: field 'label': must be an index in 0..1, got ''"),
    ("hellaswag_items", '{"activity_label": "x", "ctx": "A man. he", "endings": "a b", "label": 0}',
     r"bad.jsonl:2: field 'endings': must be a non-empty list of strings"),
    ("piqa_items", '{"goal": "g", "sol1": "a", "label": 0}', r"bad.jsonl:2: field 'sol2': missing"),
    ("boolq_items", '{"query": "Passage: p\\nQuestion: q?", "choices": ["yes", "no"], "gold": 1}',
     r"bad.jsonl:2: field 'choices': must be \[\"no\", \"yes\"\]"),
    ("boolq_items", '{"passage": "p", "question": "q"}', r"bad.jsonl:2: field 'label': missing"),
    ("winogrande_items", '{"sentence": "no blank here.", "option1": "a", "option2": "b", "answer": "1"}',
     r"bad.jsonl:2: field 'sentence': has no _ blank"),
    ("winogrande_items", '{"sentence": "a _ b.", "option1": "a", "option2": "b", "answer": "3"}',
     r"bad.jsonl:2: field 'answer': must be an index in 1..2, got 3"),
    ("lambada_items", '{"text": 42}', r"bad.jsonl:2: field 'text': must be a string, got int"),
    ("lambada_items", '{"passage": "a b"}', r"bad.jsonl:2: field 'passage': the row has fields \['passage'\]; expected text"),
    ("lambada_items", '{"text": "a b"', r"bad.jsonl:2: not a JSON line"),
])
def test_a_bad_row_is_an_error_naming_file_line_and_field(tmp_path, loader, line, expected):
    from evalsuite import probes

    good = {"arc_items": '{"query": "Question: Q?", "choices": ["a", "b"], "gold": 0}',
            "hellaswag_items": '{"activity_label": "x", "ctx": "A man. he", "endings": ["a", "b"], "label": 0}',
            "piqa_items": '{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}',
            "boolq_items": '{"passage": "p", "question": "q", "label": 1}',
            "winogrande_items": '{"sentence": "a _ b.", "option1": "a", "option2": "b", "answer": "1"}',
            "lambada_items": '{"text": "a b"}'}[loader]
    (tmp_path / "bad.jsonl").write_text(good + "\n" + line + "\n")
    assert len(getattr(probes, loader)(tmp_path / "bad.jsonl", 1)) == 1  # the good first line alone loads
    with pytest.raises(probes.ProbeFormatError, match=expected):
        getattr(probes, loader)(tmp_path / "bad.jsonl")


def test_unknown_kind_names_the_close_ones_and_a_user_module_can_register_one(tmp_path):
    from evalsuite.probes import PROBES, MCItem, UnknownProbe, get_probe, register_probe
    from evalsuite.suite import SuiteError, load_suite

    with pytest.raises(UnknownProbe, match=r"unknown probe kind 'lambada_openai' \(did you mean 'lambada'\?\)"):
        get_probe("lambada_openai")
    (tmp_path / "s.yaml").write_text("name: s\ntasks:\n  - {name: w, kind: winogrand, path: w.jsonl}\n")
    with pytest.raises(SuiteError, match=r"tasks\.0\.kind: unknown task kind 'winogrand' \(did you mean 'winogrande'\?\)"):
        load_suite(tmp_path / "s.yaml")
    with pytest.raises(ValueError, match="unknown metric 'multiple_chioce'"):
        register_probe("x", metric="multiple_chioce")

    @register_probe("tsv_mc")
    def tsv_items(path: Path, limit: int | None = None) -> list[MCItem]:
        """question<TAB>right<TAB>wrong"""
        rows = [line.split("\t") for line in path.read_text().splitlines()][:limit]
        return [MCItem(f"Q: {q}\nA:", [r, w], 0, f"{path.name}:{i + 1}") for i, (q, r, w) in enumerate(rows)]

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_probe("tsv_mc")(tsv_items)
        (tmp_path / "s.yaml").write_text("name: s\ntasks:\n  - {name: t, kind: tsv_mc, path: q.tsv}\n")
        assert load_suite(tmp_path / "s.yaml").tasks[0].kind == "tsv_mc"
    finally:
        PROBES.pop("tsv_mc")


def test_run_suite_with_new_probe_kinds_end_to_end(tmp_path, shared_data):
    """`evalsuite run` on Winogrande, LAMBADA and HellaSwag tasks: the run folder's numbers are lm-eval's for the
    same items, each row has the chosen answer (the greedy continuation) and its log-likelihoods."""
    import polars as pl
    import yaml

    from evalsuite.runner import run_suite
    from evalsuite.suite import load_suite

    suite = {"name": "probes", "tasks": [
        {"name": "wino", "kind": "winogrande", "path": str(SOURCES["winogrande"]), "limit": 4},
        {"name": "lambada", "kind": "lambada", "path": str(SOURCES["lambada"]), "limit": 4},
        {"name": "hs", "kind": "hellaswag", "path": str(SOURCES["hellaswag"]), "limit": 3},
    ]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    results = run_suite(load_suite(tmp_path / "suite.yaml"), out_dir=tmp_path / "out", device="cpu")
    wino, lam, hs = (results["tasks"][t] for t in ("wino", "lambada", "hs"))
    assert set(wino["metrics"]) == {"acc"} and wino["metrics"]["acc"]["metric"] == "partial_choice"
    assert set(lam["metrics"]) == {"acc", "perplexity"} and lam["metrics"]["perplexity"]["metric"] == "last_word"
    assert set(hs["metrics"]) == {"acc", "acc_norm"} and hs["n"] == 3
    assert wino["metrics"]["acc"]["value"] == np.mean([g["metrics"]["acc"] for g in _golden("winogrande", 4)])
    assert lam["metrics"]["acc"]["value"] == np.mean([g["metrics"]["acc"] for g in _golden("lambada", 4)])
    assert lam["metrics"]["perplexity"]["value"] == pytest.approx(
        math.exp(-np.mean([g["metrics"]["perplexity"] for g in _golden("lambada", 4)])), rel=1e-4)
    assert hs["metrics"]["acc_norm"]["value"] == np.mean([g["metrics"]["acc_norm"] for g in _golden("hellaswag", 3)])

    rows = pl.read_parquet(tmp_path / "out" / "examples.parquet")
    assert rows.height == 4 + 4 + 3
    w = rows.filter(pl.col("task") == "wino").row(0, named=True)
    assert w["reference"] == "Maria" and w["output"] in ("Sarah", "Maria") and w["source"] == "winogrande_dev_0_100.jsonl:1"
    assert "Sarah was a much better surgeon than Maria so Sarah always got the easier cases." in json.loads(w["prompt"])[0]["content"]
    assert json.loads(w["annotations"])["loglikelihoods"] == pytest.approx(_golden("winogrande", 1)[0]["loglikelihoods"], abs=1e-3)
    lam_rows = rows.filter(pl.col("task") == "lambada")
    first = lam_rows.row(0, named=True)
    assert first["reference"] == " signs" and first["output"]  # the greedy continuation, decoded
    notes = [json.loads(a) for a in lam_rows["annotations"]]
    assert [n["is_greedy"] for n in notes] == [g["is_greedy"][0] for g in _golden("lambada", 4)]
    assert [json.loads(s)["acc"] for s in lam_rows["scores"]] == [float(n["is_greedy"]) for n in notes]
    # the stats rows compare's bootstrap resamples give the headline back
    stats = [json.loads(s)["perplexity"] for s in lam_rows["stats"]]
    assert math.exp(-np.mean(stats)) == pytest.approx(lam["metrics"]["perplexity"]["value"], rel=1e-12)
    assert [n["loglikelihood"] for n in notes] == pytest.approx([s[0] for s in stats])
