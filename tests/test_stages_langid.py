"""The `language` stage: the vectorized engine against fastText itself, and the keep rule on real data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from curate.frames import canonical_frame
from curate.stages import get_stage
from curate.stages.langid import FastTextLite, LanguageID, bundled_model_path, clean_text_expr, load_engine

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data not found at {DATA}")


def _alpaca(path: Path, limit: int | None = None) -> list[list[tuple[str, str]]]:
    recs = json.loads(path.read_text())[:limit]
    return [
        [("user", r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")), ("assistant", r["output"])]
        for r in recs
    ]


@pytest.fixture(scope="module")
def alpaca() -> pl.DataFrame:
    return canonical_frame(_alpaca(DATA / "alpaca" / "alpaca_4000.json"))


@pytest.fixture(scope="module")
def german_lines() -> list[str]:
    return (DATA / "wmt22" / "txt" / "sources" / "generaltest2022.de-en.src.de").read_text().splitlines()


def _cleaned(texts: list[str], max_chars: int = 256) -> pl.Series:
    return pl.LazyFrame({"t": pl.Series(texts, dtype=pl.Utf8)}).select(clean_text_expr(pl.col("t"), max_chars)).collect().to_series()


# -- the engine -------------------------------------------------------------------------------------------------


@needs_data
def test_vectorized_engine_matches_fasttext_on_real_text(german_lines):
    recs = json.loads((DATA / "alpaca" / "alpaca_4000.json").read_text())[:1500]
    texts = [r["instruction"] + " " + r["input"] for r in recs] + [r["output"] for r in recs]
    texts += german_lines[:600]
    texts += [json.loads(x)["text"] for x in (DATA / "pretrain_text" / "c4_demo.jsonl").read_text().splitlines()]
    texts += ["", "   ", "42", "Привет, как дела?", "日本語のテキストです", "مرحبا بالعالم", "Ελληνικά", "ẞ ñ 😀 emoji"]
    cleaned = _cleaned(texts)
    fresh = FastTextLite(bundled_model_path())  # a cold token cache: every token hashed by the engine
    ref = load_engine("fasttext")
    rb, rp, rl = ref.predict(cleaned)
    ref_labels = np.array(ref.labels)[rb]
    for likely in ((), ("en",), ("de", "fr")):  # with and without the shortcut for likely languages
        b, p, letters = fresh.predict(cleaned, likely=likely)
        labels = np.array(fresh.labels)[b]
        assert (labels == ref_labels).all(), [(t[:40], a, r) for t, a, r in zip(cleaned, labels, ref_labels) if a != r]
        assert np.abs(p - rp).max() < 1e-4
        assert (letters == rl).all()
    assert {"en", "de", "fi", "ru", "ja", "ar", "el"} <= set(ref_labels)


def test_a_full_token_cache_starts_over_with_the_same_results():
    first = _cleaned(["Guten Morgen, wie geht es dir?", "Good morning, how are you?"])  # 11 distinct tokens
    second = _cleaned(["Bonjour, comment ça va ?", "Buenos días, ¿cómo estás?"])  # 9 more
    small = FastTextLite(bundled_model_path(), max_cache_tokens=15)
    full = FastTextLite(bundled_model_path())
    for texts, cached in ((first, 11), (second, 9), (first, 11)):  # 11 + 9 > 15: the cache starts over
        got, expected = small.predict(texts), full.predict(texts)
        assert all((a == b).all() for a, b in zip(got, expected))
        assert len(small._ids) == cached
    assert len(full._ids) == 20


def test_cleaning_makes_one_line_without_code_or_urls():
    out = _cleaned(
        [
            "Hello\n\nWorld\tand  more https://x.org/a?b=1 done\n```py\nprint('x')\n```\nEnd",
            "x" * 500,
            "SHOUTED HEADLINE: BIG SALE!",
            "Open fence ```python\ncode to the end",
        ],
        64,
    )
    assert out.to_list() == ["Hello World and more done End", "x" * 64, "shouted headline: big sale!", "Open fence"]


# -- the stage on real data -------------------------------------------------------------------------------------


@needs_data
def test_german_records_are_rejected(german_lines):
    # consecutive WMT22 German source lines as prompt and response: a German conversation
    convs = [[("user", a), ("assistant", b)] for a, b in zip(german_lines[0::2], german_lines[1::2])]
    batch = canonical_frame(convs)
    out = LanguageID().evaluate(batch)
    rejected = out.filter(pl.col("reason") == "wrong_language")
    assert rejected.height / batch.height > 0.95
    assert (rejected["language_lang"] == "de").mean() > 0.95
    detail = rejected["detail"][0]
    assert detail.startswith(("prompt: de (", "response: de (")) and detail.endswith(", expected en")
    assert (rejected["language_confidence"] >= 0.65).all()
    # the same records, keeping German: nearly all stay
    kept_de = LanguageID(LanguageID.Params(languages=["de"])).evaluate(batch)
    assert kept_de["reason"].is_not_null().sum() <= 0.01 * batch.height


@needs_data
def test_alpaca_is_kept_translation_tasks_included(alpaca):
    out = LanguageID().evaluate(alpaca)
    assert out["reason"].is_not_null().sum() <= 2  # 0 at the defaults; a couple of borderline cases allowed
    assert (out["language_lang"] == "en").mean() > 0.99
    # "Translate the sentence in German. I feel confused." -> "Ich fühle mich verwirrt."
    idx = alpaca["prompt_text"].str.starts_with("Translate the sentence in German").arg_true()[0]
    assert out["reason"][idx] is None and out["language_lang"][idx] == "en"
    # judged as one text, or on the response alone, that translation task reads as German
    joined = LanguageID(LanguageID.Params(field="joined")).evaluate(alpaca)
    response = LanguageID(LanguageID.Params(field="response")).evaluate(alpaca)
    assert joined["reason"][idx] == "wrong_language" and joined["detail"][idx].startswith("de (")
    assert response["reason"][idx] == "wrong_language"
    assert 0 < joined["reason"].is_not_null().sum() < 40
    assert response["reason"].is_not_null().sum() < 60


@needs_data
def test_web_text_non_english_pages_are_rejected():
    texts = [json.loads(x)["text"] for x in (DATA / "pretrain_text" / "c4_demo.jsonl").read_text().splitlines()]
    out = LanguageID(LanguageID.Params(field="prompt")).evaluate(canonical_frame([[("user", t)] for t in texts]))
    rejected = out.filter(pl.col("reason").is_not_null())
    assert 1 <= rejected.height <= 5
    assert "fi" in rejected["language_lang"].to_list()  # a Finnish page among English ones
    assert (rejected["language_lang"] != "en").all()


# -- the rule on hand-written records ---------------------------------------------------------------------------


def test_short_texts_numbers_and_code_are_not_judged():
    batch = canonical_frame(
        [
            [("user", "42"), ("assistant", "7")],
            [("user", "Wie spät?"), ("assistant", "Ja")],  # German, but too short to judge
            [("user", "```python\nprint(sum(range(10)))\n```"), ("assistant", "45")],
            [("user", "Wie spät ist es heute in Berlin, bitte?"), ("assistant", "Ja")],
            [("assistant", "")],
        ]
    )
    out = LanguageID().evaluate(batch)
    assert out["reason"].to_list() == [None, None, None, "wrong_language", None]
    assert out["language_letters"].to_list()[:3] == [0, 7, 0]
    assert out["language_lang"][0] is None and out["language_confidence"][0] is None
    assert out["detail"][3] == f"prompt: de ({out['language_confidence'][3]:.2f}), expected en"


def test_both_sides_rule_and_field_choice():
    english_q = "What is the capital of France and what is the capital of Germany?"
    german_a = "Die Hauptstadt von Frankreich ist Paris, und die Hauptstadt von Deutschland ist Berlin."
    french_q = "Traduisez en anglais : « Je suis très content de te voir aujourd'hui. »"
    english_a = "I am very happy to see you today."
    batch = canonical_frame([[("user", english_q), ("assistant", german_a)], [("user", french_q), ("assistant", english_a)]])
    both = LanguageID().evaluate(batch)
    assert both["reason"].to_list() == [None, None]  # one side in English keeps the record
    assert both["language_lang"].to_list() == ["en", "en"]
    assert LanguageID(LanguageID.Params(field="response")).evaluate(batch)["reason"].to_list() == ["wrong_language", None]
    assert LanguageID(LanguageID.Params(field="prompt")).evaluate(batch)["reason"].to_list() == [None, "wrong_language"]
    multi = LanguageID(LanguageID.Params(languages=["en", "de", "fr"], field="response")).evaluate(batch)
    assert multi["reason"].to_list() == [None, None]


def test_min_confidence_is_the_foreign_threshold():
    batch = canonical_frame([[("user", "Wie spät ist es heute in Berlin, bitte?")]])
    conf = LanguageID().evaluate(batch)["language_confidence"][0]
    assert LanguageID(LanguageID.Params(min_confidence=conf - 0.01)).evaluate(batch)["reason"][0] == "wrong_language"
    assert LanguageID(LanguageID.Params(min_confidence=min(1.0, conf + 0.001))).evaluate(batch)["reason"][0] is None


def test_reference_engine_gives_the_same_verdicts():
    batch = canonical_frame(
        [[("user", "Wie spät ist es heute in Berlin, bitte?")], [("user", "What time is it in Berlin today, please?")]]
    )
    a = LanguageID().evaluate(batch)
    b = LanguageID(LanguageID.Params(engine="fasttext")).evaluate(batch)
    assert a.select("reason", "detail", "language_lang").equals(b.select("reason", "detail", "language_lang"))


def test_contract_columns_and_empty_batch():
    out = LanguageID().evaluate(canonical_frame([]))
    assert out.height == 0
    assert {"reason", "detail", *LanguageID.score_columns} <= set(out.columns)
    out = LanguageID().evaluate(canonical_frame([[("user", "Hello there, how are you today?")]]))
    assert out.schema["reason"] == pl.Utf8 and out.schema["detail"] == pl.Utf8
    assert out.schema["language_lang"] == pl.Utf8 and out.schema["language_confidence"] == pl.Float64
    assert out.schema["language_letters"] == pl.Int64
    assert get_stage("language") is LanguageID


def test_params_are_validated():
    with pytest.raises(ValidationError):
        LanguageID.Params(languages=["en"], min_confidance=0.5)  # typo: unknown key
    with pytest.raises(ValidationError, match="unknown language code"):
        LanguageID.Params(languages=["eng"])
    with pytest.raises(ValidationError):
        LanguageID.Params(languages=[])
    with pytest.raises(ValidationError):
        LanguageID.Params(field="instruction")
    with pytest.raises(ValidationError):
        LanguageID.Params(min_confidence=1.5)


# -- instruction data: short prompts, tasks about other languages ------------------------------------------------


def _wmt(name: str) -> list[str]:
    folder = "sources" if ".src." in name else "references"
    return (DATA / "wmt22" / "txt" / folder / f"generaltest2022.{name}").read_text().splitlines()


def test_short_math_prompts_are_not_called_foreign():
    # prompts the old defaults (12 letters, confidence 0.65, digits read) called French and Italian
    convs = [
        [("user", "Calculate 5 plus 2"), ("assistant", "7")],
        [("user", "Evaluate the expression 3x - 3 when x = 4."), ("assistant", "9")],
        [("user", "Convert 58 Fahrenheit to Celsius.\n\n58 Fahrenheit"), ("assistant", "14.44 Celsius")],
    ]
    batch = canonical_frame(convs)
    assert LanguageID().evaluate(batch)["reason"].to_list() == [None, None, None]
    old = LanguageID(LanguageID.Params(min_letters=12, min_confidence=0.65, language_tasks=False))
    assert old.evaluate(batch.head(1))["reason"][0] == "wrong_language"  # "Calculate 5 plus 2": fr 0.75, 13 letters


@needs_data
def test_gsm8k_and_short_alpaca_math_and_code_prompts_are_kept():
    gsm = [json.loads(x) for x in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
    alpaca = json.loads((DATA / "alpaca" / "alpaca_data_first10k_excl_holdout.json").read_text())
    short = [r for r in alpaca if len(r["instruction"]) <= 60 and re.search(r"\d|\b(?:code|python|function|calculate|compute)\b", r["instruction"], re.I)]
    assert len(short) > 300
    convs = [[("user", g["question"]), ("assistant", g["answer"])] for g in gsm] + _alpaca_rows(short)
    assert LanguageID().evaluate(canonical_frame(convs))["reason"].is_not_null().sum() == 0


def _alpaca_rows(rows: list[dict]) -> list[list[tuple[str, str]]]:
    return [[("user", r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")), ("assistant", r["output"])] for r in rows]


@needs_data
def test_translation_and_identify_the_language_tasks_are_kept_german_records_rejected():
    de_src, en_ref = _wmt("de-en.src.de")[:300], _wmt("de-en.ref.A.en")[:300]
    en_src, de_ref = _wmt("en-de.src.en")[:300], _wmt("en-de.ref.A.de")[:300]
    tasks = (
        [[("user", f"Translate into English:\n\n{d}"), ("assistant", e)] for d, e in zip(de_src, en_ref)]
        + [[("user", f"Translate the following sentence into German.\n\n{e}"), ("assistant", d)] for e, d in zip(en_src, de_ref)]
        + [[("user", f"Identify the language of this text: {d}"), ("assistant", "German")] for d in de_src]
        + [[("user", f'How do you say "{e}" in German?'), ("assistant", d)] for e, d in zip(en_src, de_ref)]
    )
    out = LanguageID().evaluate(canonical_frame(tasks))
    assert out["reason"].is_not_null().sum() == 0
    # judged on the prompt alone (what the old rule did when the answer was too short), they read as German
    assert LanguageID(LanguageID.Params(field="prompt")).evaluate(canonical_frame(tasks))["reason"].is_not_null().sum() > 200
    # the same German text as a German record (instruction and answer) goes
    german = [[("user", a), ("assistant", b)] for a, b in zip(de_src[0::2], de_src[1::2])]
    assert LanguageID().evaluate(canonical_frame(german))["reason"].is_not_null().mean() > 0.95


def test_a_prompt_about_another_language_keeps_the_record():
    # the instruction comes after the foreign sample and the answer is one word: every side reads as Spanish
    conv = [("user", "¿Cómo estás, mi querido amigo? ¿Qué tal tu día en la oficina? Which language is this?"), ("assistant", "Spanish")]
    batch = canonical_frame([conv])
    out = LanguageID().evaluate(batch)
    assert out["reason"][0] is None and out["language_task"][0] is True
    assert LanguageID(LanguageID.Params(language_tasks=False)).evaluate(batch)["reason"][0] == "wrong_language"


@needs_data
def test_dolly_human_answers_only_foreign_records_rejected():
    rows = [json.loads(x) for x in (DATA / "dolly_generations" / "google_flan-t5-base_decode_output.jsonl").read_text().splitlines()]
    batch = canonical_frame([[("user", r["instruction"]), ("assistant", r["text"])] for r in rows])
    out = LanguageID().evaluate(batch)
    rejected = out.filter(pl.col("reason").is_not_null())
    assert 1 <= rejected.height <= 3 and (rejected["language_lang"] != "en").all()  # a French and a Dutch record
    # a short English question with a German name for an answer: the question (17 letters) keeps it
    idx = out["prompt_text"].str.starts_with("What does BMW stand for").arg_true()
    assert len(idx) == 1 and out["reason"][idx[0]] is None
