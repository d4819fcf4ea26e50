"""The `pii` stage: detectors on hand-written cases, precision on real instruction data, the three actions."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from curate.frames import canonical_frame
from curate.stages import get_stage
from curate.stages.pii import PII, find_pii, luhn_ok

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data not found at {DATA}")


def kinds_and_texts(text: str, **kw) -> list[tuple[str, str]]:
    return [(m.kind, m.text) for m in find_pii(text, **kw)]


def with_check_digit(body: str) -> str:
    """``body`` plus the digit that makes it pass Luhn."""
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


# -- detectors --------------------------------------------------------------------------------------------------


def test_each_kind_is_found():
    text = (
        "Mail jane.roe@acme-mail.com, call +44 20 7946 0958 or (415) 867-5309, "
        "card 4539 1488 0343 6467, host 81.2.69.160 or 2a00:1450:4001:82a::200e."
    )
    assert kinds_and_texts(text) == [
        ("email", "jane.roe@acme-mail.com"),
        ("phone", "+44 20 7946 0958"),
        ("phone", "(415) 867-5309"),
        ("card", "4539 1488 0343 6467"),
        ("ip", "81.2.69.160"),
        ("ip", "2a00:1450:4001:82a::200e"),
    ]


def test_phone_needs_a_plus_nanp_grouping_or_a_phone_word():
    assert kinds_and_texts("Phone: 0176 2345 6789, fax 030-9018-2201") == [
        ("phone", "0176 2345 6789"),
        ("phone", "030-9018-2201"),
    ]
    assert kinds_and_texts("Call me at 212.867.5309 or +1 212 867 5309 or +4915112345678") == [
        ("phone", "212.867.5309"),
        ("phone", "+1 212 867 5309"),
        ("phone", "+4915112345678"),
    ]
    assert kinds_and_texts("0176 2345 6789") == []  # a bare digit group: no keyword, no +, not NANP


@pytest.mark.parametrize(
    "text",
    [
        "12 + 34 = 46; 555 * 12 = 6660; 100 - 200 - 3000; (3 + 4) * 5 = 35; 2x + 3y = 12",
        "In 1990, 2000 and 2010; from 2020-2021 to 2023-12-31; 1,234,567 people paid $1,299.99 each",
        "3.14159265358979 and 0.22046226218487757 pounds and 10.1007/s00038-010-0172-7",
        "ISBN 978-0-306-40615-7, ISBN 9780306406157, EAN 4006381333931",
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day, 9 * 2 = $<<9*2=18>>18",
        "472547338\n+960397912423686\n-------\n+ 1646615806005 = 4212883012996",
        "Times 12:30:45 and 1:05:00, MAC 00:1A:2B:3C:4D:5E, C++ std::vector and a::b, call 911",
        "version 1.2.3.4, v2.0.1.3, EC 5.1.3.2, Section 4.2.1.3, OID 1.3.6.1.4.1",
        "binary 0100100001100101011011000110110001101111",
    ],
)
def test_numbers_that_are_not_pii(text):
    assert find_pii(text) == []


def test_luhn_and_issuer_decide_cards():
    valid = with_check_digit("453914880343646")  # Visa, Luhn-valid
    invalid = valid[:-1] + str((int(valid[-1]) + 1) % 10)
    assert luhn_ok(valid) and not luhn_ok(invalid)
    assert kinds_and_texts(f"card {valid}") == [("card", valid)]
    assert find_pii(f"card {invalid}") == []  # 16 digits, Luhn-invalid: not a card
    assert find_pii("card 5309 7677 8244 1346") == []  # Alpaca's "credit card number": fails Luhn
    assert find_pii(f"id {with_check_digit('912345678901234')}") == []  # Luhn-valid, no issuer starts with 9
    grouped = " ".join(valid[i : i + 4] for i in range(0, 16, 4))
    assert kinds_and_texts(grouped) == [("card", grouped)]
    assert find_pii(valid[:5] + " " + valid[5:]) == []  # not a card grouping
    amex = with_check_digit("34567890123456")
    assert kinds_and_texts(f"{amex[:4]} {amex[4:10]} {amex[10:]}") == [("card", f"{amex[:4]} {amex[4:10]} {amex[10:]}")]


def test_non_personal_values_are_skipped_unless_asked():
    text = (
        "a@example.com yourname@yourdomain.com 192.168.1.2 10.0.0.1 255.255.255.0 2001:db8::1 8.8.8.8 "
        "1-800-273-8255 (555) 123-4567 212-555-0147 123-456-7890 4111 1111 1111 1111"
    )
    assert find_pii(text) == []
    everything = {kind for kind, _ in kinds_and_texts(text, skip_non_personal=False)}
    assert everything == {"email", "ip", "phone", "card"}


def test_the_stage_screen_lets_every_match_through():
    # the stage screens turns with one permissive Polars regex before the precise detectors; every text with a
    # match must pass the screen
    texts = [
        "jane.roe@acme-mail.com", "x@mail.co.uk.", "+44 20 7946 0958", "+4915112345678", "(415) 867-5309",
        "(415)867-5309", "+1 (415) 867-5309", "212.867.5309", "Phone number: 0176 2345 6789", "Tel.: +49 (0)30 901820",
        "fax\n030-9018-2201", "WhatsApp +(49) 151 1234 5678", "4539 1488 0343 6467", "4539148803436467",
        "n 1234 4539 1488 0343 6467", "81.2.69.160", "2a00:1450:4001:82a::200e", "::ffff:81.2.69.160 x",
        "2a00:1450:4001::", with_check_digit("34567890123456"),
    ]
    frame = canonical_frame([[("user", t)] for t in texts])
    out = PII(PII.Params(action="flag")).evaluate(frame)
    expected = [len(find_pii(t)) for t in texts]
    assert all(expected), [t for t, e in zip(texts, expected) if not e]
    assert out["pii_count"].to_list() == expected


def test_ipv4_boundaries():
    assert kinds_and_texts("ssh root@81.2.69.160:22 then http://81.2.69.161/x") == [
        ("ip", "81.2.69.160"),
        ("ip", "81.2.69.161"),
    ]
    assert find_pii("81.2.69.1600 and 1.81.2.69.160 and 300.2.69.16") == []


# -- the stage --------------------------------------------------------------------------------------------------


@pytest.fixture
def batch() -> pl.DataFrame:
    frame = canonical_frame(
        [
            [
                ("system", "Support desk. Escalations: ops@helpdesk-corp.com"),
                ("user", "My card 4539 1488 0343 6467 was charged twice, call me at (415) 867-5309."),
                ("assistant", "Sorry! I will call (415) 867-5309 and email ops@helpdesk-corp.com."),
            ],
            [("user", "What is 12 + 30?"), ("assistant", "42")],
        ]
    )
    return frame.with_columns(n_tokens=pl.Series([77, 9], dtype=pl.Int64))


def test_flag_scores_and_keeps(batch):
    out = PII(PII.Params(action="flag")).evaluate(batch)
    assert out["reason"].to_list() == [None, None]
    assert out["pii_kinds"].to_list() == ["email,phone,card", None]
    assert out["pii_count"].to_list() == [5, 0]
    assert out["messages"].equals(batch["messages"])


def test_redact_rewrites_text_exactly(batch):
    out = PII(PII.Params(action="redact")).evaluate(batch)
    assert PII.rewrites_messages and PII().rewrites_messages and not PII(PII.Params(action="flag")).rewrites_messages
    assert out["reason"].to_list() == [None, None]
    assert [{"role": m["role"], "content": m["content"]} for m in out["messages"][0].to_list()] == [
        {"role": "system", "content": "Support desk. Escalations: [EMAIL]"},
        {"role": "user", "content": "My card [CARD] was charged twice, call me at [PHONE]."},
        {"role": "assistant", "content": "Sorry! I will call [PHONE] and email [EMAIL]."},
    ]
    assert out["prompt_text"][0] == "Support desk. Escalations: [EMAIL]\n\nMy card [CARD] was charged twice, call me at [PHONE]."
    assert out["response_text"][0] == "Sorry! I will call [PHONE] and email [EMAIL]."
    assert out["n_chars"][0] == sum(len(m["content"]) for m in out["messages"][0])
    assert out["fixes"].to_list() == [["pii_redacted"], []]
    assert out["n_tokens"].to_list() == [77, 9]  # left as it was
    assert out.row(1, named=True) | {"reason": None} == batch.row(1, named=True) | {
        "reason": None, "detail": None, "pii_kinds": None, "pii_count": 0
    }


def test_redact_only_the_chosen_roles_and_kinds(batch):
    out = PII(PII.Params(action="redact", fields=["assistant"], kinds=["phone"])).evaluate(batch)
    msgs = out["messages"][0].to_list()
    assert msgs[0]["content"] == "Support desk. Escalations: ops@helpdesk-corp.com"
    assert msgs[1]["content"].startswith("My card 4539 1488 0343 6467")
    assert msgs[2]["content"] == "Sorry! I will call [PHONE] and email ops@helpdesk-corp.com."
    assert out["pii_kinds"].to_list() == ["phone", None] and out["pii_count"].to_list() == [1, 0]


def test_drop_rejects_with_masked_detail(batch):
    out = PII(PII.Params(action="drop")).evaluate(batch)
    assert out["reason"].to_list() == ["pii", None]
    detail = out["detail"][0]
    assert detail == "5 matches: email o***@h***.com, phone (***) ***-**09, card ****6467"
    for raw in ("ops@helpdesk-corp.com", "867-5309", "4539 1488"):
        assert raw not in detail
    assert out["messages"].equals(batch["messages"])


def test_rewrite_contract_for_the_runner(batch):
    # the runner copies these columns of a rewriting stage's output onto its rows by uid
    out = PII().evaluate(batch)
    new = out.select("uid", "messages", "fixes", "prompt_text", "response_text")
    rows = batch.update(new, on="uid")
    assert rows["messages"].equals(out["messages"]) and rows["prompt_text"].equals(out["prompt_text"])
    assert out["uid"].to_list() == batch["uid"].to_list()


def test_null_content_and_empty_batch():
    frame = canonical_frame([[("user", "hi"), ("assistant", None)], [("user", "mail me: jo.ng@fastmail.fm")]])
    out = PII().evaluate(frame)
    assert out["pii_count"].to_list() == [0, 1]
    assert out["messages"][1][0]["content"] == "mail me: [EMAIL]"
    empty = PII().evaluate(canonical_frame([]))
    assert empty.height == 0 and {"reason", "detail", "pii_kinds", "pii_count"} <= set(empty.columns)


def test_params_are_validated():
    assert get_stage("pii") is PII
    with pytest.raises(ValidationError):
        PII.Params(action="mask")
    with pytest.raises(ValidationError):
        PII.Params(kinds=["ssn"])
    with pytest.raises(ValidationError):
        PII.Params(kind=["email"])  # typo: unknown key
    with pytest.raises(ValidationError):
        PII.Params(fields=["observation"])


# -- precision on real data -------------------------------------------------------------------------------------


def _flagged(batch: pl.DataFrame) -> pl.DataFrame:
    return PII(PII.Params(action="flag")).evaluate(batch).filter(pl.col("pii_count") > 0)


@needs_data
def test_alpaca_flags_only_real_looking_addresses():
    recs = json.loads((DATA / "alpaca" / "alpaca_4000.json").read_text())
    batch = canonical_frame([[("user", r["instruction"] + "\n\n" + r["input"]), ("assistant", r["output"])] for r in recs])
    flagged = _flagged(batch)
    # 884: a script logging in as 'my_gmail_address@gmail.com'; 2180: "Email: emma.watson@gmail.com"
    assert flagged["uid"].to_list() == [884, 2180]
    assert flagged["pii_kinds"].to_list() == ["email", "email"]
    # without the non-personal filter: also jdoe@example.com + a 555 number, and the 1-800 hotlines
    assert PII(PII.Params(action="flag", skip_non_personal=False)).evaluate(batch)["pii_count"].gt(0).sum() == 5


@needs_data
def test_gsm8k_math_is_not_pii():
    rows = [json.loads(x) for x in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
    batch = canonical_frame([[("user", r["question"]), ("assistant", r["answer"])] for r in rows])
    assert _flagged(batch).height == 0
    assert PII(PII.Params(action="flag", skip_non_personal=False)).evaluate(batch)["pii_count"].sum() == 0


@needs_data
def test_web_text_phone_numbers_and_addresses_are_found():
    texts = [json.loads(x)["text"] for x in (DATA / "pretrain_text" / "c4_demo.jsonl").read_text().splitlines()]
    flagged = _flagged(canonical_frame([[("user", t)] for t in texts]))
    assert 8 <= flagged.height <= 12
    joined = "\n".join(flagged["prompt_text"].to_list())
    assert "780-800-7092" in joined and "vdwarren@education.wisc.edu" in joined
