"""The metric-object contract, for every registered metric: the headline value is its key's aggregation of the
per-example statistics the metric stores (``Score.aggregate(stats rows) == value``), so compare's bootstrap,
which resamples exactly those rows, resamples the number the run reports.

Text metrics run on real WMT22 system outputs with an extractor and two references (what the bootstrap used to
get wrong: it rebuilt BLEU/chrF from the raw output and one reference); metrics that need a model run on the
embedded SmolLM2 with real eval items. A metric registered without a case here fails the coverage test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from evalsuite.metrics import METRICS, get_metric

WMT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wmt22" / "txt"
N = 40


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:N]


@pytest.fixture(scope="module")
def wmt_with_answers():
    """German→English outputs of a real system wrapped as a chatty model would answer, and two references."""
    hyp = _lines(WMT / "system-outputs" / "generaltest2022.de-en.hyp.Online-B.en")
    refs = [list(r) for r in zip(_lines(WMT / "references" / "generaltest2022.de-en.ref.A.en"),
                                 _lines(WMT / "references" / "generaltest2022.de-en.ref.B.en"))]
    outputs = [f"Sure! Translation: {h}\nThat is all." for h in hyp]
    outputs[3] = "I cannot translate this."  # one unparsed output: scored as wrong, still a stats row
    return outputs, refs


@pytest.fixture(scope="module")
def smollm2():
    """The embedded SmolLM2 on CPU, one torch thread (a shared 2-core machine: the second only spin-waits)."""
    import torch

    from chat.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    net, tok, _ = load_model("embedded", device="cpu")
    yield net, tok
    torch.set_num_threads(threads)


def _check(name: str, results: dict, options: dict) -> None:
    for key, res in results.items():
        score = get_metric(name).score(key)  # the metric's own Score: several metrics share a key ("acc", "perplexity")
        rows = res.stat_rows()
        assert rows is not None and len(rows) == len(res.per_example or rows), key
        rebuilt = score.aggregate(np.asarray(rows, dtype=float), options)
        if math.isnan(res.value):
            assert math.isnan(rebuilt), key
        else:
            assert rebuilt == pytest.approx(res.value, rel=1e-9, abs=1e-9), (key, rebuilt, res.value)


def _text_metric_names() -> list[str]:
    return sorted(n for n, m in METRICS.items() if not m.needs_model and not m.needs_prompts and not m.needs_tools)


@pytest.mark.parametrize("name", _text_metric_names())
def test_text_metric_stats_rebuild_its_value_after_extraction_with_two_references(name, wmt_with_answers):
    outputs, refs = wmt_with_answers
    options = {"extract": {"regex": r"Translation: (.*)"}}
    results = get_metric(name)(outputs, refs, **options)
    assert results[next(iter(results))].details.get("unparsed") == 1
    _check(name, results, options)
    # and on a subset: the aggregation is of the rows, not of the whole corpus remembered somewhere
    sub = list(range(0, N, 3))
    again = get_metric(name)([outputs[i] for i in sub], [refs[i] for i in sub], **options)
    for key, res in again.items():
        score = get_metric(name).score(key)
        rows = np.asarray(results[key].stat_rows(), dtype=float)[sub]
        assert score.aggregate(rows, options) == pytest.approx(res.value, rel=1e-9, abs=1e-9), key


def test_model_metrics_stats_rebuild_their_values(smollm2, shared_data):
    import json

    from evalsuite.metrics.choice import MCItem

    net, tok = smollm2
    rows = [json.loads(line) for line in (shared_data / "arc" / "arc_easy_shared.jsonl").read_text().splitlines()[:6]]
    items = [MCItem(r["query"] + "\nAnswer:", r["choices"], r["gold"]) for r in rows]
    _check("multiple_choice", get_metric("multiple_choice")(net, tok, items), {})
    prompts = [[{"role": "user", "content": r["query"]}] for r in rows]
    _check("perplexity", get_metric("perplexity")(net, tok, prompts, [r["choices"][r["gold"]] for r in rows]), {})
    texts = [json.loads(line)["text"] for line in (shared_data / "pretrain_text" / "c4_demo.jsonl").read_text().splitlines()[:3]]
    _check("text_perplexity", get_metric("text_perplexity")(net, tok, texts, max_length=64, stride=32), {})
    from evalsuite.probes import lambada_items, winogrande_items

    probes = Path(__file__).resolve().parent / "data" / "probes"
    _check("partial_choice", get_metric("partial_choice")(net, tok, winogrande_items(probes / "winogrande_dev_0_100.jsonl", 4)), {})
    _check("last_word", get_metric("last_word")(net, tok, lambada_items(probes / "lambada_openai_test_0_60.jsonl", 4)), {})


def test_judge_stats_rebuild_its_value_unparsed_verdicts_left_out(smollm2):
    prompts = [[{"role": "user", "content": "Name a primary colour."}], [{"role": "user", "content": "What is 2 + 2?"}]]
    results = get_metric("judge")(["Red.", "4"], ["Blue", "4"], prompts=prompts, backend="local", max_new_tokens=64)
    _check("judge", results, {})


def test_preference_stats_rebuild_its_values(smollm2, shared_data):
    from evalsuite.metrics import PreferencePair

    net, tok = smollm2
    rows = json.loads((shared_data / "chat_llamafactory" / "dpo_en_demo.json").read_text())
    rows = sorted(rows, key=lambda r: len(json.dumps(r)))[:3]
    pairs = [PreferencePair([{"role": "user", "content": r["conversations"][-1]["value"]}], [{"role": "assistant", "content": r["chosen"]["value"]}],
                            [{"role": "assistant", "content": r["rejected"]["value"]}]) for r in rows]
    _check("preference", get_metric("preference")(net, tok, pairs), {})


def test_tool_call_stats_rebuild_its_values_examples_without_tools_left_out(shared_data):
    rec = json.loads((shared_data / "openai_messages" / "weather_chat_fine_tuning.jsonl").read_text().splitlines()[0])
    call = '{"name": "get_current_weather", "arguments": {"location": "Oslo"}}'
    outputs = [call, '{"name": "get_current_weather", "arguments": {}}', "no call", call]
    results = get_metric("tool_call_validity")(outputs, [call, call, call, "text"], tools=[rec["tools"]] * 3 + [None])
    _check("tool_call_validity", results, {})
    assert results["tool_call_args_valid"].value == pytest.approx(1 / 3)


COVERED = set(_text_metric_names()) | {"multiple_choice", "partial_choice", "last_word", "perplexity", "text_perplexity", "judge",
                                       "preference", "tool_call_validity"}


def test_every_registered_metric_is_held_to_the_contract():
    missing = sorted(set(METRICS) - COVERED)
    assert not missing, f"registered metrics without a stats-rebuild case in this file: {missing}"
