"""The split-leakage audit: exact similarity between kept records of different splits, checked by brute force."""

from __future__ import annotations

import itertools
import json
import random
import re

import polars as pl
import pytest

from curate.leakage import LEVELS, exact_jaccard, shingle_sets, split_leakage


def _shingles(text: str, n: int = 5) -> set[str]:
    # the normalization of curate.stages.ngrams.char_ngram_hashes, in plain Python
    norm = re.sub(r"\W+", " ", text.lower()).strip()
    if not norm:
        return set()
    return {norm} if len(norm) < n else {norm[i : i + n] for i in range(len(norm) - n + 1)}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


@pytest.fixture(scope="module")
def kept(shared_data) -> pl.DataFrame:
    """300 real Alpaca records plus 60 edited copies of some of them (one word in ten replaced), in random splits."""
    rows = json.loads((shared_data / "alpaca" / "alpaca_data_first10k_excl_holdout.json").read_text())[:300]
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows]
    rng = random.Random(5)
    for t in rng.sample(texts, 60):
        w = t.split(" ")
        for i in rng.sample(range(len(w)), max(1, len(w) // 10)):
            w[i] = rng.choice(["alpha", "beta", "gamma"])
        texts.append(" ".join(w))
    splits = [rng.choice(["train", "train", "validation", "test"]) for _ in texts]
    return pl.DataFrame({"uid": range(len(texts)), "id": [f"r{i}" for i in range(len(texts))], "split": splits, "text": texts})


def test_exact_jaccard_equals_python_sets(kept):
    hashes, offsets = shingle_sets(kept["text"])
    pairs = [(0, 300), (5, 6), (17, 17)]
    got = exact_jaccard(hashes, offsets, *map(list, zip(*pairs)))
    sets = [_shingles(t) for t in kept["text"]]
    for (a, b), g in zip(pairs, got):
        assert g == pytest.approx(_jaccard(sets[a], sets[b]), abs=1e-12)


def test_audit_finds_every_cross_split_pair_a_brute_force_finds(kept):
    sets = [_shingles(t) for t in kept["text"]]
    split = kept["split"].to_list()
    brute = [
        _jaccard(sets[a], sets[b])
        for a, b in itertools.combinations(range(kept.height), 2)
        if split[a] != split[b] and len(sets[a] & sets[b]) * 2 >= min(len(sets[a]), len(sets[b]))  # cheap prefilter
    ]
    brute = [s for s in brute if s >= 0.5]
    assert len(brute) >= 5  # the edited copies put real near-duplicates across splits
    got = split_leakage(kept)
    assert got["max_similarity"] == pytest.approx(max(brute), abs=1e-4)
    for level in LEVELS:
        if level >= 0.6:  # found with probability > 0.9999 by the search; at 0.5 with 0.99
            assert got["pairs_at_or_above"][str(level)] == sum(s >= level for s in brute), level
    assert got["closest"][0]["split_a"] != got["closest"][0]["split_b"]
    assert got["search_recall_at_floor"] >= 0.99


def test_one_split_has_no_leakage(kept):
    got = split_leakage(kept.with_columns(split=pl.lit("train")))
    assert got["max_similarity"] is None and got["pairs_scored"] == 0


def test_run_reports_exact_leakage_between_splits(tmp_path, shared_data):
    """A run over real Alpaca rows (exact dedup only, so near-duplicates stay) audits its kept records."""
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    rows = json.loads((shared_data / "alpaca" / "alpaca_data_first10k_excl_holdout.json").read_text())[:2000]
    rng = random.Random(3)
    for r in rng.sample(rows, 200):  # an edited copy: the answer's first word changed
        w = r["output"].split(" ")
        rows.append({**r, "output": " ".join(["Indeed,"] + w[1:])})
    (tmp_path / "data.json").write_text(json.dumps(rows))
    cfg = parse_config({"name": "leak", "inputs": [{"path": "data.json"}], "tokenizer": None, "stages": ["exact_dedup"]}, tmp_path)
    res = Pipeline(cfg, progress=False).run(force=True)
    leak = res.summary["leakage"]
    assert leak["records"] == res.summary["kept"]
    assert leak["max_similarity"] is not None and leak["max_similarity"] >= 0.9  # some copy fell into another split
    assert leak["pairs_at_or_above"]["0.9"] >= 10
    report = (res.output_dir / "report.md").read_text()
    assert f"Largest similarity left between splits: **{leak['max_similarity']:.3f}**" in report
    assert leak["closest"][0]["id_a"] in report

    # the run's audit is streamed (band keys spilled to Parquet, pairs found by DuckDB): it equals the in-memory
    # reference on the same kept records, whatever the batch size
    from curate.leakage import kept_texts, split_leakage_in_store
    from curate.workspace import Workspace

    with Workspace(res.workspace, create=False) as ws, ws.run_data(res.run_id) as store:
        reference = split_leakage(kept_texts(store, res.run_id))
        assert reference == leak
        assert split_leakage_in_store(store, res.run_id, batch_size=97, pairs_per_read=5) == reference


def test_two_tasks_on_one_passage_are_kept_in_one_split(tmp_path, shared_data):
    """Real Alpaca rows with the same long input and another task: minhash_dedup keeps both (not duplicates)
    and links them, so they land in one split; the audit then finds no such pair across splits."""
    from collections import defaultdict

    from curate.config import parse_config
    from curate.pipeline import Pipeline
    from curate.workspace import Workspace

    rows = json.loads((shared_data / "alpaca" / "alpaca_data_first10k_excl_holdout.json").read_text())
    by_input = defaultdict(list)
    for r in rows:
        if len(r["input"]) >= 80:
            by_input[r["input"]].append(r)
    groups = [g for g in by_input.values() if len({r["instruction"] for r in g}) == len(g) > 1]
    assert len(groups) >= 2
    shared_inputs = {g[0]["input"] for g in groups}
    data = [r for g in groups for r in g] + [r for r in rows[:1500] if r["input"] not in shared_inputs]
    (tmp_path / "data.json").write_text(json.dumps(data))
    cfg = parse_config({"name": "passages", "inputs": [{"path": "data.json"}], "tokenizer": None, "stages": ["minhash_dedup"]}, tmp_path)
    res = Pipeline(cfg, progress=False).run(force=True)
    assert res.summary["split_links"].get("minhash_dedup", 0) >= 1
    with Workspace(res.workspace, create=False) as ws:
        links = ws.query(
            res.run_id,
            """SELECT l.similarity, a.split AS split_a, b.split AS split_b,
                      (SELECT count(*) FROM rejects j WHERE j.run_id = l.run_id AND j.uid IN (l.uid_a, l.uid_b)) AS rejected
               FROM split_links l JOIN records a ON a.run_id = l.run_id AND a.uid = l.uid_a
               JOIN records b ON b.run_id = l.run_id AND b.uid = l.uid_b WHERE l.run_id = ?""",
            [res.run_id],
        )
    assert links.height >= 1 and (links["similarity"] >= 0.7).all()
    assert res.summary["stage_stats"]["minhash_dedup"]["pairs_linked"] == links.height  # the stage's own count
    assert (links["split_a"] == links["split_b"]).all()
    assert links["rejected"].sum() == 0  # not duplicates: both kept
    assert "a passage but not a task: both records are kept, in one split" in (res.output_dir / "report.md").read_text()


def test_a_rejected_answer_shared_across_splits_is_audited(tmp_path, shared_data):
    """Real Alpaca prompts as preference pairs whose short chosen answers differ and whose long rejected answer
    is the same: each pair lands in the split of its prompt, so copies of the rejected text sit in every split,
    and the audit, which reads both completions, reports them."""
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    rows = [r for r in json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text()) if not r["input"]]
    short = [r for r in rows if 20 < len(r["output"]) < 120][:60]
    long_answer = "\n".join(r["output"] for r in rows if len(r["output"]) > 600)[:3000]
    pairs = [{"prompt": [{"role": "user", "content": r["instruction"]}], "chosen": [{"role": "assistant", "content": r["output"]}],
              "rejected": [{"role": "assistant", "content": long_answer}]} for r in short]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    cfg = parse_config({"name": "leak-pairs", "inputs": [{"path": "pairs.jsonl"}], "tokenizer": None, "stages": ["exact_dedup"]}, tmp_path)
    res = Pipeline(cfg, progress=False).run(force=True)
    s = res.summary
    assert s["kinds"]["preference"]["kept"] == 60 and len({split for split, n in s["splits"].items() if n}) >= 2
    leak = s["leakage"]
    assert leak["max_similarity"] is not None and leak["max_similarity"] >= 0.8
    assert leak["pairs_at_or_above"]["0.8"] >= 10
