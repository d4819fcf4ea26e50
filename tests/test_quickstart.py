"""The quickstart config over every sample file: every shape and reader, the embedded tokenizer, the full
stage list, and the faults planted in sample_data (see sample_data/README.md) caught by the stage named there."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from curate.config import parse_config
from curate.pipeline import Pipeline
from tests.conftest import REPO


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    data = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    data.update(output_dir=str(out / "run"), workspace=str(out / "ws"))
    cfg = parse_config(data, REPO / "configs")
    return Pipeline(cfg, progress=False).run(force=True)


def _outcome(ledger: pl.DataFrame, file: str, line: int) -> tuple:
    row = ledger.filter(pl.col("source_file").str.ends_with(file) & (pl.col("source_line") == line)).row(0, named=True)
    return row["status"], row["stage"], row["reason"]


def test_every_shape_and_reader_with_the_embedded_tokenizer(quickstart):
    s = quickstart.summary
    assert s["invariant_ok"] and s["quarantined"] == 0
    assert set(s["shapes"]) == {"alpaca", "sharegpt", "openai", "prompt_completion", "mapped", "dolly", "kto"}
    # both KTO samples (messages + boolean label) are labeled completions, bad answers included, none quarantined
    assert s["kinds"]["kto"]["records"] == 90 and set(s["kinds"]["kto"]["shapes"]) == {"kto"}
    assert {f["path"].rsplit("/", 1)[-1] for f in s["files"]} >= {
        "alpaca_gpteacher.json", "kto_messages.jsonl.gz", "kto_messages.parquet", "truthfulqa_truth.jsonl.zst", "gsm8k_excerpt.csv",
    }
    assert s["tokenizer"] == "SmolLM2-135M-Instruct" and s["unit"] == "tokens"
    assert [st["name"] for st in s["stages"]][-4:] == ["exact_dedup", "minhash_dedup", "embedding_dedup", "decontaminate"]
    assert sum(st["rejected"] for st in s["stages"]) == s["rejected"]


@pytest.mark.parametrize(
    ("file", "line", "stage", "reason"),
    [
        ("dolly_written.jsonl", 8, "conversation_structure", "empty_turn"),
        ("dolly_written.jsonl", 9, "refusal", "refusal_or_boilerplate"),
        ("dolly_written.jsonl", 10, "unseeable_context", "url_dependent"),
        ("dolly_written.jsonl", 11, "unseeable_context", "media_dependent"),
        ("dolly_written.jsonl", 12, "language", "wrong_language"),
        ("dolly_written.jsonl", 16, "exact_dedup", "exact_duplicate"),
        ("dolly_written.jsonl", 21, "exact_dedup", "exact_duplicate"),  # differs from line 20 only by NFC
        ("dolly_written.jsonl", 22, "blocklist", "blocklisted_term"),
        ("chat_written.jsonl", 5, "conversation_structure", "ends_on_user_turn"),
        ("chat_written.jsonl", 6, "conversation_structure", "no_assistant_turn"),
        ("chat_written.jsonl", 7, "conversation_structure", "roles_out_of_order"),
        ("chat_written.jsonl", 17, "unique_words", "low_unique_word_ratio"),
        ("chat_written.jsonl", 27, "language", "wrong_language"),
        ("openai_toy_chat.jsonl", 5, "length", "too_long_tokens"),
    ],
)
def test_planted_faults_are_caught(quickstart, file, line, stage, reason):
    ledger = pl.read_parquet(quickstart.output_dir / "ledger.parquet")
    assert _outcome(ledger, file, line) == ("rejected", stage, reason)


@pytest.mark.parametrize(("file", "line"), [("kto_messages.jsonl.gz", 14), ("kto_messages.parquet", 26), ("kto_messages.parquet", 35)])
def test_undesirable_kto_examples_are_kept_though_they_read_badly(quickstart, file, line):
    """The demo's label-false answers are bad on purpose: the completion-judging stages may not reject them, while a
    desirable answer with the same fault is rejected (line 7, a refusal labeled true)."""
    ledger = pl.read_parquet(quickstart.output_dir / "ledger.parquet")
    assert _outcome(ledger, file, line)[0] == "kept"
    assert _outcome(ledger, "kto_messages.jsonl.gz", 7) == ("rejected", "refusal", "refusal_or_boilerplate")


def test_fixes_are_applied_and_clean_records_kept(quickstart):
    ledger = pl.read_parquet(quickstart.output_dir / "ledger.parquet")
    for line in (1, 2, 3, 18, 19, 20):
        assert _outcome(ledger, "dolly_written.jsonl", line)[0] == "kept"
    rows = []
    for split in ("train", "validation", "test"):
        rows += [json.loads(x) for x in (quickstart.output_dir / "data" / f"{split}.jsonl").read_text().splitlines()]
    by_source = {r["source"].rsplit("/", 1)[-1]: r for r in rows}
    pii = by_source["dolly_written.jsonl:14"]["messages"]
    text = " ".join(m["content"] for m in pii)
    assert "[EMAIL]" in text and "quillfeather-analytics.com" not in text
    crlf = " ".join(m["content"] for m in by_source["dolly_written.jsonl:19"]["messages"])
    assert "\r" not in crlf and " \n" not in crlf
    assert "café" in " ".join(m["content"] for m in by_source["dolly_written.jsonl:20"]["messages"])
    assert quickstart.summary["fixes"].get("placeholder_input", 0) >= 1 and quickstart.summary["fixes"].get("eos_marker", 0) >= 1


def test_benchmark_items_in_the_training_data_are_rejected(quickstart):
    """gsm8k_excerpt.jsonl lines 1-20 are the GSM8K test items of sample_data/evals/gsm8k_test_first20.jsonl."""
    ledger = pl.read_parquet(quickstart.output_dir / "ledger.parquet")
    gsm = ledger.filter(pl.col("source_file").str.ends_with("gsm8k_excerpt.jsonl"))
    hit = gsm.filter(pl.col("reason") == "contaminated")
    assert sorted(hit["source_line"].to_list()) == list(range(1, 21))
    assert all(f"gsm8k_test_first20.jsonl:{n}" in d for n, d in zip(hit["source_line"].to_list(), hit["detail"].to_list()))
    assert gsm.filter(pl.col("source_line") > 20)["reason"].ne("contaminated").all()
    assert "## Contamination" in (quickstart.output_dir / "report.md").read_text()


def test_near_duplicates_are_clustered_and_reviewed(quickstart):
    s = quickstart.summary
    assert s["clusters"]["minhash_dedup"]["clusters"] >= 5
    ledger = pl.read_parquet(quickstart.output_dir / "ledger.parquet")
    near = ledger.filter(pl.col("reason") == "near_duplicate")
    # the ShareGPT identity conversations ("Who are you?" -> "I am Vicuna...") are the planted near-duplicates
    assert near.filter(pl.col("source_file").str.ends_with("sharegpt_fastchat.json")).height >= 20
    kept_ids = set(ledger.filter(pl.col("status") == "kept")["id"].to_list())
    assert set(near["duplicate_of"].to_list()) <= kept_ids  # every reject names a record that was kept
    # every reject is at or above the threshold (0.7) to the record it names, measured exactly
    assert near["detail"].str.extract(r"Jaccard ([0-9.]+)").cast(pl.Float64).min() >= 0.7
    md = (quickstart.output_dir / "report.md").read_text()
    leak = s["leakage"]
    assert "## Duplicate clusters" in md
    assert (f"Largest similarity left between splits: **{leak['max_similarity']:.3f}**" in md
            if leak["max_similarity"] is not None and leak["max_similarity"] >= leak["floor"]
            else "No two kept records in different splits reach" in md)
    assert (quickstart.output_dir / "similarity.png").is_file()
