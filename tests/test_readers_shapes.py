"""Readers and shape conversion on real files and on hand-made edge cases."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from curate.readers import InputError, expand_paths, read_file
from curate.shapes import Converter, ShapeError, build_frame


def _all(path, **kw):
    recs, bad = [], []
    for b in read_file(path, **kw):
        recs += list(zip(b.lines, b.records))
        bad += b.bad
    return recs, bad


def test_json_array_real_file_streams_in_batches(shared_data):
    path = shared_data / "alpaca" / "alpaca_data_first10k_excl_holdout.json"
    batches = list(read_file(path, batch_size=1000))
    assert len(batches) == 10  # 9,807 rows in batches of 1,000
    assert sum(len(b.records) for b in batches) == 9807
    assert batches[0].lines[:3] == [1, 2, 3] and batches[-1].lines[-1] == 9807


def test_streaming_json_decoder_matches_whole_file_parse(shared_data, monkeypatch):
    import curate.readers as readers

    path = shared_data / "alpaca" / "alpaca_4000.json"
    whole, _ = _all(path)
    monkeypatch.setattr(readers, "WHOLE_JSON_LIMIT", 0)  # force the streaming decoder
    streamed = []
    for b in readers._stream_json_array(path, 500, 1 << 22, chunk_chars=4096):  # tiny chunks: elements straddle them
        streamed += list(zip(b.lines, b.records))
    assert streamed == whole


def test_truncated_json_array_keeps_good_elements_and_quarantines_the_rest(tmp_path):
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(5)]
    text = json.dumps(rows, indent=2)
    path = tmp_path / "broken.json"
    path.write_text(text[: text.index('"q3"') + 2])  # cut inside element 4
    recs, bad = _all(path)
    assert [r["instruction"] for _, r in recs] == ["q0", "q1", "q2"]
    assert len(bad) == 1 and bad[0].line == 4 and "element 4" in bad[0].error


def test_jsonl_compressed_gz_and_zst(tmp_path, shared_data):
    src = (shared_data / "completion" / "truthfulqa_finetune_truth.jsonl").read_bytes().splitlines(keepends=True)[:50]
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(b"".join(src)))
    zst = tmp_path / "a.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(b"".join(src)))
    for path in (gz, zst):
        recs, bad = _all(path)
        assert len(recs) == 50 and not bad
        assert recs[0][1]["prompt"].startswith("Q: ")


def test_jsonl_bad_lines_are_quarantined_with_line_numbers(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"prompt": "a", "completion": "b"}\n'
        b'{"prompt": "a", "compl\n'  # truncated
        b"\n"  # blank line: not a record
        b'"just a string"\n'  # a bare prompt: a record (shape prompt_only)
        b'{"prompt": "caf\xe9", "completion": "x"}\n'  # latin-1 byte: invalid UTF-8
        b'{"prompt": "ok", "completion": "fine"}\n'
        b'[1, 2]\n'
    )
    recs, bad = _all(path)
    assert [ln for ln, _ in recs] == [1, 4, 6] and recs[1][1] == "just a string"
    assert [(b.line, b.error.split(":")[0]) for b in bad] == [(2, "invalid JSON"), (5, "invalid UTF-8"),
                                                              (7, "expected a JSON object (or a string), got list")]


def test_csv_rows_with_wrong_field_count_and_bad_utf8(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_bytes(b'question,answer\n"What is 2+2?",4\n"multi\nline",x\nonly-one-field\n"caf\xe9",y\n')
    recs, bad = _all(path)
    assert [(ln, r["question"]) for ln, r in recs] == [(2, "What is 2+2?"), (3, "multi\nline")]
    assert [(b.line, b.error) for b in bad] == [(5, "expected 2 fields, got 1"), (6, "invalid UTF-8")]


def test_parquet_with_nested_messages(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}], "tag": i} for i in range(7)]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    recs, bad = _all(path, batch_size=3)
    assert [ln for ln, _ in recs] == list(range(1, 8)) and not bad
    assert recs[2][1]["messages"][0]["content"] == "hi 2"


def test_expand_paths_dir_glob_and_errors(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.json").write_text("[]")
    (tmp_path / "notes.txt").write_text("skip me")
    assert [p.name for p in expand_paths(str(tmp_path))] == ["b.json", "a.jsonl"]
    assert [p.name for p in expand_paths("sub/*.jsonl", tmp_path)] == ["a.jsonl"]
    with pytest.raises(InputError, match="no such file"):
        expand_paths("missing.jsonl", tmp_path)
    with pytest.raises(InputError, match="unsupported file type"):
        expand_paths("notes.txt", tmp_path)


# -- shapes ------------------------------------------------------------------------------------------------------
def test_every_shape_converts_to_canonical_messages():
    c = Converter()
    cases = {
        "alpaca": {"instruction": "Add", "input": "2 and 3", "output": "5"},
        "dolly": {"instruction": "Summarize", "context": "Long text.", "response": "Short.", "category": "summarization"},
        "sharegpt": {"id": "x", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                                  {"from": "gpt", "value": "Hello"}]},
        "openai": {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "x"}}]},
                                {"role": "assistant", "content": "A cat."}]},
        "prompt_completion": {"prompt": "Q: 1+1?\nA:", "completion": " 2<|endoftext|>"},
    }
    out = {k: c.convert(v) for k, v in cases.items()}
    assert out["alpaca"][1:3] == (["user", "assistant"], ["Add\n\n2 and 3", "5"])
    assert out["dolly"][1:3] == (["user", "assistant"], ["Summarize\n\nLong text.", "Short."])
    assert out["dolly"][3] == '{"category":"summarization"}'  # unused fields kept in meta
    assert out["sharegpt"][1] == ["system", "user", "assistant"] and out["sharegpt"][3] == '{"id":"x"}'
    assert out["openai"][2][0] == "What is this?\n<image>" and "media_placeholder" in out["openai"][4]
    assert out["prompt_completion"][2] == ["Q: 1+1?\nA:", " 2"] and out["prompt_completion"][4] == ["eos_marker"]
    assert {k: v[0] for k, v in out.items()} == {k: k for k in cases}


def test_placeholder_inputs_and_templates_are_fixed(shared_data):
    c = Converter()
    shape, roles, contents, meta, fixes, _ = c.convert({"instruction": "Name a color.", "input": "<noinput>", "output": "Blue"})
    assert contents[0] == "Name a color." and fixes == ["placeholder_input"]
    first = json.loads((shared_data / "completion" / "dolly_hhrlhf_train_small.jsonl").read_text().splitlines()[0])
    shape, roles, contents, meta, fixes, _ = c.convert(first)
    assert contents[0] == "what is kangen water?" and fixes == ["template_unwrapped"]


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"instruction": "x", "output": 5}, "output", "must be a string, got int"),
        ({"instruction": None, "output": "y"}, "instruction", "missing value"),
        ({"messages": "hello"}, "messages", "must be a list"),
        ({"conversations": [{"from": "narrator", "value": "{}"}]}, "conversations[0].from", "map it with `role_aliases`"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": 1}]}]}, "messages[0].tool_calls[0].function",
         "a tool call needs a function"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}]}, "messages[0].tool_calls",
         "only an assistant turn can call tools"),
        ({"conversations": [{"from": "function_call", "value": "get_weather(city)"}]}, "conversations[0].value", "not valid JSON"),
        ({"conversations": [{"from": "human", "value": "x"}], "chosen": {"from": "gpt", "value": "a"}, "rejected": 5}, "rejected",
         "must be a list"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"}, "rejected",
         "do not share their prompt"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": "[{not json"}, "tools", "not valid JSON"),
        ({"text": "plain"}, None, "unrecognized shape"),
    ],
)
def test_shape_errors_name_the_field(record, field, message):
    with pytest.raises(ShapeError) as exc:
        Converter().convert(record)
    assert exc.value.field == field and message in exc.value.message


def test_mapping_and_role_aliases():
    c = Converter("mapped", {"user": ["question", "context"], "assistant": "answer"})
    assert c.convert({"question": "Q?", "context": "n/a", "answer": 42, "x": 1})[1:4] == (["user", "assistant"], ["Q?", "42"], '{"x":1}')
    c = Converter(role_aliases={"observation": "user", "function_call": "assistant"})
    assert c.convert({"conversations": [{"from": "observation", "value": "a"}, {"from": "function_call", "value": "b"}]})[1] == ["user", "assistant"]


def test_normalization_nfc_whitespace_and_stable_ids():
    frame = build_frame(
        [0, 1, 2], "f", [1, 2, 3], ["openai"] * 3,
        [["user", "assistant"]] * 3,
        [["Cafe\u0301  \r\nline two   \r\n\r\n\r\n\r\nend\u200b", "def f():\n    return 1\n\tx  "],
         ["Caf\u00e9  \nline two\n\nend", "def f():\n    return 1\n\tx  "],
         ["other", "text"]],
        ["{}"] * 3, [[], [], []],
    )
    # NFC happens in the converter; here the whitespace rules: CRLF, trailing spaces, 3+ newlines, zero-width
    msgs = frame["messages"].to_list()
    assert msgs[1][0]["content"] == "Caf\u00e9\nline two\n\nend"
    assert msgs[0][0]["content"] == "Cafe\u0301\nline two\n\nend"
    assert msgs[0][1]["content"] == "def f():\n    return 1\n\tx"  # indentation inside kept, ends stripped
    ids = frame["id"].to_list()
    assert len(set(ids)) == 3 and all(len(i) == 16 for i in ids)
    assert build_frame([9], "g", [5], ["openai"], [["user", "assistant"]], [["other", "text"]], ["{}"], [[]])["id"][0] == ids[2]
    # zero-width (non-)joiners are spelling (Persian "می‌بخشد") and emoji glue, never removed
    kept = build_frame([0], "f", [1], ["openai"], [["user", "assistant"]], [["می‌بخشد", "family 👨‍👩"]], ["{}"], [[]])
    assert [m["content"] for m in kept["messages"][0]] == ["می‌بخشد", "family 👨‍👩"]
    nfc = Converter().convert({"messages": [{"role": "user", "content": "Cafe\u0301"}, {"role": "assistant", "content": "x"}]})
    assert nfc[2][0] == "Caf\u00e9"


@pytest.mark.parametrize(
    "placeholder",
    ["<N/A>", "N/A", "(noinput)", "< noinput >", "<no input>", "None", "No input", "No input.", "<noinput> 8",
     "The <noinput>", "\\<noinput\\>", "{\\noinput}", "`<noinput>`", '"<noinput>"', "<Noinput>.", "<noinput", "-"],
)
def test_placeholder_input_forms_are_blanked(placeholder):
    # every form seen in Alpaca's input field (alpaca_data_first10k_excl_holdout.json, alpaca_4000.json)
    for shape_fields in ({"instruction": "Name a landmark in the United States", "input": placeholder, "output": "Statue of Liberty"},
                         {"instruction": "Name a landmark in the United States", "input": placeholder, "output": "Statue of Liberty", "id": 1}):
        _, _, contents, _, fixes, _ = Converter().convert(shape_fields)  # the fast path and the general one
        assert contents[0] == "Name a landmark in the United States" and fixes == ["placeholder_input"], placeholder


def test_placeholder_inputs_of_real_alpaca_rows_and_data_that_looks_like_one(shared_data):
    rows = [r for name in ("alpaca_data_first10k_excl_holdout.json", "alpaca_4000.json") for r in json.loads((shared_data / "alpaca" / name).read_text())]
    c = Converter()
    blanked = [r["input"] for r in rows if "placeholder_input" in c.convert(r)[4]]
    assert len(blanked) >= 170 and "None" in blanked and {"<no input>", "< noinput >", "<noinput> 8", "The <noinput>", "<noinput", "N/A"} <= set(blanked)
    # real inputs that are data stay ("Night, empty street.", "+")
    assert not [r["input"] for r in rows if r["input"] in ("Night, empty street.", "+") and "placeholder_input" in c.convert(r)[4]]
    # "None" is data in a task about code or values; "None" as an answer is an answer
    code = c.convert({"instruction": "What does this Python function return for the input below?", "input": "None", "output": "0"})
    assert code[2][0].endswith("\n\nNone") and code[4] == []
    assert c.convert({"instruction": "Which of these numbers is prime: 4, 6, 8?", "input": "", "output": "None"})[2][1] == "None"
    # placeholder answers: "<N/A>", "(no output)" are blanked (and then rejected as empty by the filters)
    for out in ("<N/A>", "(no output)", "<nooutput>", "No output required."):
        assert c.convert({"instruction": "Design a logo.", "input": "", "output": out})[4] == ["placeholder_output"], out
