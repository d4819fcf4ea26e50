"""`train run`'s data preparation on real files, before any model loads: what the pre-flight reports (records
cut to fit max_seq_len, dropped, holding special-token text) and the data hash the manifest records."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import REPO, write_jsonl


@pytest.fixture(scope="module")
def tokenizer():
    from chat.conversations import load_tokenizer
    from curate.models import smollm2_tokenizer_dir

    return load_tokenizer(str(smollm2_tokenizer_dir()))


def _prepare(tokenizer, base, **over):
    from train.config import parse_train_config
    from train.trainer import prepare_data

    cfg = parse_train_config({"name": "p", "workspace": None, **over}, base_dir=base)
    return cfg, prepare_data(cfg, tokenizer)


DAVINCI = "self_instruct/predictions/text-davinci-003_predictions.jsonl"  # 252 real answers, 3 to 250 tokens


def test_records_over_max_seq_len_are_cut_at_a_turn_dropped_or_cut_anywhere_and_counted(tokenizer, shared_data):
    from train.trainer import audit_summary

    data = [{"path": str(shared_data / DAVINCI)}]
    _, whole = _prepare(tokenizer, shared_data, data=data, max_seq_len=4096)
    assert whole.stats["truncated"] == 0 and whole.stats["rejected"] == 0 and len(whole.train) == 252
    lengths = sorted(len(r["input_ids"]) for r in whole.train)
    limit = lengths[len(lengths) // 2]  # half the records are longer
    over = sum(n > limit for n in lengths)
    # a record is its prompt, its one answer through <|im_end|>, and the template's "\n" (glue, untrained)
    answer_over = sum(n - 1 > limit for n in lengths)
    assert 0 < answer_over < over

    # turn (the default): a record whose answer does not end within the limit has no answer that fits, and is
    # rejected; one over only by its final newline is cut after its end of turn and kept
    _, turn = _prepare(tokenizer, shared_data, data=data, max_seq_len=limit)
    assert turn.stats["truncation"] == "turn" and turn.stats["cut_in_answer"] == 0
    reasons = [r["reason"] for r in turn.rejected]
    assert reasons == ["truncated: no complete answer within max_seq_len"] * answer_over and len(turn.train) == 252 - answer_over
    assert turn.stats["truncated"] == over - answer_over
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row in turn.train:  # every kept record fits, and its answer is whole: the last trained token is its end of turn
        trained = [lab for lab in row["labels"] if lab != -100]
        assert len(row["input_ids"]) <= limit and trained[-1] == im_end

    _, drop = _prepare(tokenizer, shared_data, data=data, max_seq_len=limit, truncation="drop")
    assert drop.stats["dropped_too_long"] == over and len(drop.train) == 252 - over
    assert all(r["reason"].startswith("longer than max_seq_len: ") and r["source"] == f"data[0] ({shared_data / DAVINCI})" for r in drop.rejected)
    assert f"{over} of them longer than max_seq_len (truncation: drop)" in audit_summary(drop.stats)

    _, tokens = _prepare(tokenizer, shared_data, data=data, max_seq_len=limit, truncation="tokens")
    # every record over the limit is kept (unless its prompt alone fills it) and those over by more than their
    # final newline are cut inside their answer
    gone = len(tokens.rejected)
    assert tokens.stats["truncated"] == over - gone and tokens.stats["cut_in_answer"] == answer_over - gone > 0
    line = audit_summary(tokens.stats)
    assert "cut at max_seq_len to fit max_seq_len (truncation: tokens)" in line and "inside an answer, trained without its end of turn" in line
    assert "\n" not in line


def test_a_long_conversation_is_cut_after_its_last_whole_answer_and_counted(tokenizer, shared_data):
    from train.trainer import audit_summary

    # the real multi-turn records of the toy file, at a length that keeps their first answers only
    data = [{"path": str(shared_data / "openai_messages" / "toy_chat_fine_tuning.jsonl")}]
    _, cut = _prepare(tokenizer, shared_data, data=data, max_seq_len=120)
    assert cut.stats["truncated"] >= 2 and cut.stats["cut_in_answer"] == 0
    assert f"{cut.stats['truncated']} cut after their last whole answer to fit max_seq_len (truncation: turn)" in audit_summary(cut.stats)


def test_special_token_text_in_content_is_counted(tokenizer, tmp_path):
    from train.trainer import audit_summary

    rows = [{"messages": [{"role": "user", "content": f"What does <|im_end|> mean? ({i})"}, {"role": "assistant", "content": "It ends a turn."}]}
            for i in range(3)]
    write_jsonl(tmp_path / "special.jsonl", rows)
    _, data = _prepare(tokenizer, tmp_path, data=[{"path": "special.jsonl"}, {"path": str(REPO / "sample_data" / "dolly_written.jsonl")}])
    assert data.stats["special_token_text"] == 3
    assert "3 records hold special-token text in their content (tokenized as text)" in audit_summary(data.stats)


def test_the_data_hash_is_the_files_hash_whatever_the_seed(tokenizer, shared_data):
    chat, dolly = REPO / "sample_data" / "chat_written.jsonl", REPO / "sample_data" / "dolly_written.jsonl"
    # a weighted source: the seed changes which records are drawn and their order
    data = [{"path": str(chat)}, {"path": str(dolly), "weight": 0.3}]
    validation = str(shared_data / "openai_messages" / "toy_chat_fine_tuning.jsonl")
    cfg0, seed0 = _prepare(tokenizer, shared_data, data=data, validation=validation, seed=0)
    cfg1, seed1 = _prepare(tokenizer, shared_data, data=data, validation=validation, seed=1)
    assert seed0.digest != seed1.digest  # the encoded examples did change with the seed
    assert seed0.data_sha256 == seed1.data_sha256 and seed0.data_files == seed1.data_files
    files = sorted([chat, dolly, shared_data / "openai_messages" / "toy_chat_fine_tuning.jsonl"])
    with_hash = [hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files]
    assert seed0.data_files == [{"path": str(f.resolve()), "sha256": h, "bytes": f.stat().st_size} for f, h in zip(files, with_hash)]
    # what `sha256sum FILES | cut -d' ' -f1 | LC_ALL=C sort | sha256sum` prints
    assert seed0.data_sha256 == hashlib.sha256("".join(sorted(h + "\n" for h in with_hash)).encode()).hexdigest()
    # the checkpoint fingerprint still covers the seed and the encoded data
    from train.trainer import fingerprint

    assert fingerprint(cfg0, seed0.digest) != fingerprint(cfg1, seed1.digest)
    assert json.dumps(seed0.data_files)  # the manifest writes it as is
