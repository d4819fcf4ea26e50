"""embedding_dedup on real Alpaca rows with the packaged MiniLM model and a real workspace folder.

Encoding runs at tens of records per second on a small CPU, so the records are few (~85) and one
module-scoped workspace caches their embeddings for the tests after the first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from curate.frames import canonical_frame
from curate.stages import StageContext, get_stage
from curate.stages.clusters import greedy_centers
from curate.stages.semantic import EmbeddingDedup, folder_fingerprint
from curate.workspace import Workspace

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_data_first10k_excl_holdout.json"
pytestmark = pytest.mark.skipif(not ALPACA.is_file(), reason="shared/data not available")

# Distinct records on the same topic (their min(prompt, response) cosines are 0.81-0.84 with MiniLM)
SAME_TOPIC = [(235, 263), (223, 334), (45, 334), (46, 391)]
# Different questions answered with the same "Negative." (response cosine 1.0)
SAME_ANSWER = (181, 321)


def _variant(row: dict, instruction=None, output=None) -> dict:
    r = dict(row)
    if instruction:
        r["instruction"] = instruction(r["instruction"])
    if output:
        r["output"] = output(r["output"])
    return r


def _records() -> tuple[list[dict], dict[int, int]]:
    """Rows 0-69 and the same-topic rows, then near-duplicates: {variant index: original index}."""
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    picked = list(range(70)) + sorted(({i for pair in SAME_TOPIC for i in pair} | set(SAME_ANSWER)) - set(range(70)))
    records = [rows[i] for i in picked]
    variants = [
        # case and punctuation
        (2, _variant(rows[2], lambda s: s.lower().rstrip("."), lambda s: s.lower().replace(",", ""))),
        # a sentence of the answer reworded
        (13, _variant(rows[13], lambda s: s + ".",
                      lambda s: s.replace("It was caused by several factors, including", "Several factors caused it, among them"))),
        # a word of the question reworded ("three" -> "3")
        (1, _variant(rows[1], lambda s: s.replace("three", "3"))),
        # a word in each of question and answer
        (6, _variant(rows[6], lambda s: s.replace("Explain why", "Explain how"), lambda s: s.replace("yields", "gives"))),
        # whitespace only: identical after normalization, joined without search
        (20, _variant(rows[20], lambda s: "  " + s.replace(" ", "   ") + "\n", lambda s: s.replace(" ", "\n "))),
    ]
    pairs = {}
    for orig, v in variants:
        pairs[len(records)] = picked.index(orig)
        records.append(v)
    # the same answer to a rephrased question: a duplicate for fields=response only (prompt cosine 0.86)
    pairs_response_only = {len(records): picked.index(4)}
    records.append(_variant(rows[4], lambda s: s.replace("Describe a time", "Tell me about a time")))
    return records, pairs, pairs_response_only, picked


RECORDS, NEAR_DUPS, RESPONSE_ONLY_DUPS, PICKED = _records() if ALPACA.is_file() else ([], {}, {}, [])


def _conv(r: dict) -> list[tuple[str, str]]:
    return [("user", r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")), ("assistant", r["output"])]


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return canonical_frame([_conv(r) for r in RECORDS])


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    w = Workspace(tmp_path_factory.mktemp("semantic") / "ws")
    yield w
    w.close()


def _run(frame: pl.DataFrame, ws: Workspace | None, **params):
    stage = EmbeddingDedup(EmbeddingDedup.Params(device="cpu", **params), StageContext(workspace=ws))
    return stage, stage.decide(stage.prepare(frame))


def _uid(picked_index: int) -> int:
    return PICKED.index(picked_index)


def _cache_rows(ws: Workspace) -> int:
    """Rows of the workspace's embedding cache, read from its own file as another process would."""
    con = duckdb.connect(ws.embeddings.path, read_only=True)
    try:
        return con.execute("SELECT count(*) FROM embedding_cache").fetchone()[0]
    finally:
        con.close()


def test_near_duplicates_caught_and_same_topic_kept(frame, ws):
    stage, d = _run(frame, ws)
    rejected = dict(zip(d.rejects["uid"].to_list(), d.rejects["duplicate_of"].to_list()))
    ids = frame["id"].to_list()
    # every near-duplicate is rejected naming its original, and nothing else is rejected
    assert rejected == {v: ids[o] for v, o in NEAR_DUPS.items()}
    assert set(d.rejects["reason"]) == {"semantic_duplicate"}
    assert all("cosine 0.9" in x or "cosine 1" in x for x in d.rejects["detail"])
    # clusters: each original is the representative of its variant
    reps = dict(zip(d.clusters["uid"].to_list(), d.clusters["rep_uid"].to_list()))
    assert {v: reps[v] for v in NEAR_DUPS} == NEAR_DUPS
    # same-topic records stay apart
    for a, b in SAME_TOPIC:
        assert _uid(a) not in rejected and _uid(b) not in rejected
    # the report holds the pairs down to threshold - 0.1, the near-duplicates among them
    assert d.pairs["similarity"].min() >= 0.81
    assert {(o, v) for v, o in NEAR_DUPS.items()} <= set(zip(d.pairs["uid_a"], d.pairs["uid_b"]))
    assert stage.stats["index"] == "flat" and stage.stats["records"] == frame.height


def test_fields_all_needs_both_question_and_answer_alike(frame, ws):
    _, d_all = _run(frame, ws)
    _, d_resp = _run(frame, ws, fields="response")
    a, b = (_uid(i) for i in SAME_ANSWER)
    rej_all, rej_resp = set(d_all.rejects["uid"]), set(d_resp.rejects["uid"])
    # same answer "Negative." to two different questions: a duplicate only when the prompt is ignored
    assert b in rej_resp and b not in rej_all
    for v in RESPONSE_ONLY_DUPS:
        assert v in rej_resp and v not in rej_all
    assert set(NEAR_DUPS) <= rej_resp


def test_cache_second_run_encodes_nothing(frame, ws):
    first, d1 = _run(frame, ws)  # encodes whatever earlier tests did not
    n_texts = first.stats["texts"]
    assert _cache_rows(ws) >= n_texts and first.stats["cached"] + first.stats["encoded"] == n_texts
    rows_before = _cache_rows(ws)
    second, d2 = _run(frame, ws, threshold=0.8)
    assert second.stats["encoded"] == 0 and second.stats["cached"] == n_texts
    assert _cache_rows(ws) == rows_before
    # a lower threshold merges the same-topic records too, and no reject is below it to its representative
    assert set(d1.rejects["uid"]) < set(d2.rejects["uid"])
    assert d2.clusters["similarity"].min() >= 0.8
    # another max_seq_length is another model key: its vectors are not reused
    third, _ = _run(frame.head(3), ws, max_seq_length=64)
    assert third.model_key() != second.model_key() and third.stats["encoded"] == third.stats["texts"] == 6


def test_exact_and_ivf_search_agree(frame, ws):
    exact, d_exact = _run(frame, ws)
    ivf, d_ivf = _run(frame, ws, exact_below=0, nprobe=1)
    assert exact.stats["index"] == "flat" and ivf.stats["index"] == "ivf"
    assert ivf.stats["nlist"] == 2 and ivf.stats["nprobe"] == 1  # one cell of two searched: a real IVF search
    assert d_ivf.rejects.equals(d_exact.rejects)
    assert d_ivf.clusters.equals(d_exact.clusters)


def test_keep_policy_and_group_action(frame, ws):
    _, d = _run(frame, ws, keep="longest")
    n_chars = frame["n_chars"].to_list()
    reps = dict(zip(d.clusters["uid"].to_list(), d.clusters["rep_uid"].to_list()))
    expected = {o: (v if n_chars[v] > n_chars[o] else o) for v, o in NEAR_DUPS.items()}
    assert {o: reps[o] for o in expected} == expected
    assert any(rep != o for o, rep in expected.items())  # the whitespace variant is longer: it is kept
    _, g = _run(frame, ws, action="group")
    assert g.rejects.height == 0 and g.clusters.height == 2 * len(NEAR_DUPS)


def test_greedy_centers_never_chain():
    # a chain 0~1~2 (0 and 2 not similar), an isolated 3, a pair 4~5
    a, b = np.array([0, 1, 4]), np.array([1, 2, 5])
    assert greedy_centers(6, a, b, np.arange(6)).tolist() == [0, 0, 2, 3, 4, 4]  # 2 is kept: not similar to 0
    # visited best first: 1 first claims both ends of the chain; 5 before 4
    assert greedy_centers(6, a, b, np.array([1, 0, 2, 3, 5, 4])).tolist() == [1, 1, 1, 3, 5, 5]


def test_standalone_without_workspace_and_identical_texts(frame):
    small = pl.concat([frame.head(4), frame.head(4).with_columns(uid=pl.col("uid") + 100, id=pl.col("id") + "x")])
    stage, d = _run(small, None, fields="prompt")
    assert stage.stats["encoded"] == 4 and stage.stats["vectors"] == 4  # identical texts encoded once
    assert sorted(d.rejects["uid"]) == [100, 101, 102, 103]
    assert d.clusters.filter(pl.col("uid") >= 100)["similarity"].to_list() == [1.0] * 4


def test_model_key_follows_the_folder(tmp_path):
    from curate.models import minilm_dir

    src = minilm_dir()
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    (copy / "model.safetensors").symlink_to(src / "model.safetensors")
    assert folder_fingerprint(copy) == folder_fingerprint(src)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "layer_norm_eps": 1e-6}))
    assert folder_fingerprint(copy) != folder_fingerprint(src)
    stage = EmbeddingDedup(EmbeddingDedup.Params(model="copy"), StageContext(config_dir=tmp_path))
    assert stage.model_key().startswith("copy@") and stage.model_key().endswith("/seq=256")


def test_params_are_validated():
    cls = get_stage("embedding_dedup")
    assert cls is EmbeddingDedup and cls.Params().fields == "all" and cls.Params().threshold == 0.91
    for bad in ({"threshold": 1.5}, {"fields": "both"}, {"keep": "best"}, {"treshold": 0.9}, {"device": "tpu"}):
        with pytest.raises(ValidationError):
            cls.Params(**bad)


def test_curate_run_with_embedding_dedup(tmp_path, run_config):
    variants = [v for v, o in NEAR_DUPS.items() if o < 20]
    rows = RECORDS[:20] + [RECORDS[v] for v in variants]
    expected = {20 + k: NEAR_DUPS[v] for k, v in enumerate(variants)}  # uid in this run -> its original's
    (tmp_path / "alpaca.json").write_text(json.dumps(rows), encoding="utf-8")
    res = run_config({"inputs": [{"path": "alpaca.json"}], "stages": [{"embedding_dedup": {"device": "cpu"}}]})
    s = res.summary
    assert s["invariant_ok"] and s["inputs"] == len(rows)
    assert s["rejected"] == len(expected) >= 3
    assert s["clusters"]["embedding_dedup"]["clusters"] == len(expected)
    ws = Workspace(res.workspace, create=False)
    try:
        led = ws.query(res.run_id, "SELECT * FROM ledger WHERE run_id = ? ORDER BY uid", [res.run_id])
        rej = led.filter(pl.col("status") == "rejected")
        assert sorted(rej["uid"]) == sorted(expected)
        assert set(rej["stage"]) == {"embedding_dedup"} and set(rej["reason"]) == {"semantic_duplicate"}
        ids = dict(zip(led["uid"].to_list(), led["id"].to_list()))
        lines = dict(zip(led["uid"].to_list(), led["source_line"].to_list()))
        splits = dict(zip(led["uid"].to_list(), led["split"].to_list()))
        for uid, dup_of, detail in rej.select("uid", "duplicate_of", "detail").iter_rows():
            orig = expected[uid]
            assert dup_of == ids[orig] and f"alpaca.json:{lines[orig]} (cosine" in detail
            assert splits[uid] == splits[orig]  # a cluster stays in one split
        # the embeddings were cached in the run's workspace, and the report's pairs stored
        assert _cache_rows(ws) >= len(rows)
        assert ws.query(res.run_id, "SELECT count(*) AS n FROM similar_pairs WHERE run_id = ?", [res.run_id])["n"].item() >= len(expected)
    finally:
        ws.close()


def test_fast_encoder_equals_sentence_transformers_encode(shared_data):
    """curate.embeddings (Rust tokenization ahead, token-budget batches) gives model.encode's vectors."""
    import json

    from curate.embeddings import encode_texts
    from curate.models import sentence_model

    rows = json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[:150]
    texts = [r["output"] for r in rows] + [r["instruction"] for r in rows] + ["", "x" * 3000]  # empty and over-long too
    model = sentence_model("embedded", "cpu")
    ref = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    for budget in (None, 512):
        ours = encode_texts(model, texts, budget)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < 1e-4


def test_a_model_path_that_does_not_exist_fails_before_any_work(tmp_path, run_config):
    from curate.config import ConfigError

    from tests.conftest import write_jsonl

    write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(ConfigError, match=r"embedding_dedup\.model: \./models/minilm: no such folder"):
        run_config({"inputs": [{"path": "d.jsonl"}], "stages": [{"embedding_dedup": {"model": "./models/minilm"}}]})


# -- the calibrated default on labeled pairs made by others (bench/verdict_sets/semantic.py measures many) --

T0 = "self_instruct/t0_prompt_completion"
MRPC_PATTERN = r"Does the sentence\n(.*)\nparaphrase \(that is, mean the same thing as\) this sentence\?\n(.*)\n$"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _same_cluster(d, a: int, b: int) -> bool:
    rep = dict(zip(d.clusters["uid"].to_list(), d.clusters["rep_uid"].to_list()))
    return a in rep and rep[a] == rep.get(b)


def test_paraphrases_merged_at_the_default(shared_data, ws):
    """MRPC pairs its annotators call paraphrases, and one AdversarialQA item under two promptsource
    templates (same answer), are merged at the default threshold; the old 0.95 missed some of them."""
    import re

    mrpc = _jsonl(shared_data / T0 / "glue_mrpc_paraphrase.jsonl")
    convs, pairs = [], []
    for pos in (42, 44, 68):  # "yes" items (even positions: the benchmark's tune part)
        item = mrpc[pos]
        assert item["completion"].startswith("yes")
        s1, s2 = re.match(MRPC_PATTERN, item["prompt"], re.S).groups()
        pairs.append((len(convs), len(convs) + 1))
        convs += [[("user", s1), ("assistant", "")], [("user", s2), ("assistant", "")]]
    qa = [_jsonl(shared_data / T0 / f"adversarial_qa_dbert_{t}.jsonl") for t in ("answer_the_following_q", "question_context_answer")]
    for pos in (6, 8, 20):
        x, y = qa[0][pos], qa[1][pos]
        assert x["completion"] == y["completion"]  # the same item: the files list them in one order
        pairs.append((len(convs), len(convs) + 1))
        convs += [[("user", r["prompt"].strip()), ("assistant", r["completion"].replace("<|endoftext|>", ""))] for r in (x, y)]
    frame = canonical_frame(convs)
    _, d = _run(frame, ws)
    assert all(_same_cluster(d, a, b) for a, b in pairs)
    assert d.rejects.height == len(pairs)  # nothing else merged
    _, old = _run(frame, ws, threshold=0.95)
    assert sum(_same_cluster(old, a, b) for a, b in pairs) < len(pairs)


def test_same_passage_different_task_not_merged(shared_data, ws):
    """Different questions on one passage (AdversarialQA), and Alpaca rows with one input and different
    instructions, stay apart at the default: their prompts are alike, their answers are not. Embedding
    the prompt alone would merge them."""
    import re

    items = _jsonl(shared_data / T0 / "adversarial_qa_dbert_answer_the_following_q.jsonl")
    def passage(item: dict) -> str:
        return re.search(r'passage\n\n"(.*)",?\s*\n\nanswer the following question', item["prompt"], re.S).group(1)

    first = passage(items[0])
    same = [it for it in items if passage(it) == first][:4]
    assert len(same) == 4 and len({it["completion"] for it in same}) == 4
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    alpaca = [rows[i] for i in (806, 807, 808, 809, 810, 1454, 6598)]  # one article; one proverb
    assert len({r["input"] for r in alpaca}) == 2 and len({r["instruction"] for r in alpaca}) == 7
    convs = [[("user", it["prompt"].strip()), ("assistant", it["completion"].replace("<|endoftext|>", ""))] for it in same]
    convs += [_conv(r) for r in alpaca]
    frame = canonical_frame(convs)
    _, d = _run(frame, ws)
    assert d.rejects.height == 0
    _, by_prompt = _run(frame, ws, fields="prompt")
    assert set(by_prompt.rejects["uid"]) >= {1, 2, 3}  # the three later questions on the first one's passage
