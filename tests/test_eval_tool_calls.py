"""Tool-call validity on hand-written outputs against the real tool schemas of shared/data (OpenAI's weather
chats, LLaMA-Factory's glaive sample), the encodings a model emits, the examples a ``reference_turn: tool_call``
task cuts from tool conversations, and a real OpenAI-compatible server (llama.cpp) returning ``tool_calls``."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from evalsuite.examples import task_examples
from evalsuite.metrics import get_metric, parse_tool_calls
from evalsuite.suite import SuiteConfig, TaskConfig

KEYS = ("tool_call_wellformed", "tool_call_known_tool", "tool_call_args_valid", "tool_call_right_tool")


@pytest.fixture(scope="module")
def weather(shared_data):
    """The first weather chat: its tools (OpenAI's shape, as in the file) and its call turn."""
    rec = json.loads((shared_data / "openai_messages" / "weather_chat_fine_tuning.jsonl").read_text().splitlines()[0])
    return rec["tools"], rec["messages"][1]["tool_calls"]


@pytest.fixture(scope="module")
def glaive(shared_data):
    """Glaive record 4 (index 3): two tools (calculate_area, calculate_discount) as the file's JSON text, three calls."""
    return json.loads((shared_data / "chat_llamafactory" / "glaive_toolcall_en_demo.json").read_text())[3]


def _score(outputs, references, tools):
    res = get_metric("tool_call_validity")(outputs, references, tools=tools)
    return [tuple(res[k].per_example[i] for k in KEYS) for i in range(len(outputs))], res


def test_weather_outputs_valid_wrong_tool_bad_json_and_schema_violations(weather):
    tools, calls = weather
    ref = json.dumps([{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in calls])
    outputs = [
        '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}\n</tool_call>',
        '{"name": "get_weather", "arguments": {"location": "Paris, France"}}',  # a tool the example does not offer
        '{"name": "get_current_weather", "arguments": {"location": "Paris, France"}',  # bad JSON: a brace missing
        '{"name": "get_current_weather", "arguments": {"unit": "celsius"}}',  # the required location missing
        '{"name": "get_current_weather", "arguments": {"location": "Paris", "unit": "kelvin"}}',  # not in the enum
        '{"name": "get_current_weather", "arguments": "{\\"location\\": \\"Paris\\"}"}',  # arguments as JSON text
        "It is sunny in Paris.",  # prose: no call
        # what `evalsuite run --server` stores when the reply carries OpenAI tool_calls
        json.dumps({"content": None, "tool_calls": calls}),
    ]
    rows, res = _score(outputs, [ref] * len(outputs), [tools] * len(outputs))
    assert rows == [(1, 1, 1, 1), (1, 0, 0, 0), (0, 0, 0, 0), (1, 1, 0, 1), (1, 1, 0, 1), (1, 1, 1, 1), (0, 0, 0, 0), (1, 1, 1, 1)]
    problems = [a.get("tool_call", {}).get("problem") for a in res["tool_call_wellformed"].annotations]
    assert problems[0] is None and problems[5] is None
    assert problems[1] == "unknown tool 'get_weather' (tools: get_current_weather)"
    assert problems[2].startswith("not valid JSON")
    assert problems[3] == "arguments of get_current_weather: 'location' is a required property"
    assert problems[4] == "arguments of get_current_weather at unit: 'kelvin' is not one of ['celsius', 'fahrenheit']"
    assert problems[6] == "no tool call"
    formats = [a["tool_call"]["format"] for a in res["tool_call_wellformed"].annotations]
    assert formats == ["hermes", "json", None, "json", "json", "json", None, "openai"]
    assert res["tool_call_args_valid"].value == pytest.approx(3 / 8)
    assert res["tool_call_wellformed"].details["with_reference"] == 8


def test_glaive_right_tool_and_argument_types_against_its_schema(glaive):
    tools = glaive["tools"]  # LLaMA-Factory's JSON text of bare definitions: read as they are
    ref = json.dumps([json.loads(glaive["conversations"][1]["value"])])  # the first call: calculate_area
    discount = json.loads(tools)[1]
    assert discount["name"] == "calculate_discount"
    valid_discount = {k: 10 for k in discount["parameters"]["required"]}
    outputs = [
        '<tool_call>{"name": "calculate_area", "arguments": {"shape": "rectangle", "dimensions": [5, 3]}}</tool_call>',
        json.dumps({"name": "calculate_discount", "arguments": valid_discount}),  # an offered tool, valid, not the reference's
        '{"name": "calculate_area", "arguments": {"shape": "rectangle", "dimensions": "5 by 3"}}',  # an array expected
        '[{"name": "calculate_area", "arguments": {"shape": "circle", "dimensions": [4]}}, '
        '{"name": "calculate_discount", "arguments": {}}]',  # two calls, the second missing its arguments
    ]
    rows, res = _score(outputs, [ref] * 4, [tools] * 4)
    assert rows == [(1, 1, 1, 1), (1, 1, 1, 0), (1, 1, 0, 1), (1, 1, 0, 0)]
    problems = [a["tool_call"]["problem"] for a in res["tool_call_wellformed"].annotations]
    assert problems[1] == "called calculate_discount; the reference calls calculate_area"
    assert problems[2] == "arguments of calculate_area at dimensions: '5 by 3' is not of type 'array'"


def test_examples_without_tools_or_reference_call_are_left_out(weather):
    tools, _ = weather
    call = '{"name": "get_current_weather", "arguments": {"location": "Oslo"}}'
    rows, res = _score([call, call, "hello"], ["a text answer", call, call], [tools, tools, None])
    assert rows[0][:3] == (1, 1, 1) and math.isnan(rows[0][3])  # a text reference: no right-tool score
    assert rows[1] == (1, 1, 1, 1)
    assert all(math.isnan(x) for x in rows[2])  # no tools offered: not scored
    assert res["tool_call_right_tool"].value == 1.0 and res["tool_call_right_tool"].details["counted"] == 1
    assert res["tool_call_wellformed"].details["no_tools"] == 1 and res["tool_call_wellformed"].value == 1.0
    bad = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "x"}}}]
    _, res = _score(['{"name": "f", "arguments": {}}'], [""], [bad])
    assert math.isnan(res["tool_call_args_valid"].value) and res["tool_call_args_valid"].details["bad_schema"] == 1


@pytest.mark.parametrize("text, names, fmt, problem", [
    ('<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>',
     ["a", "b"], "hermes", None),
    ('Let me look. <tool_call>{"name": "a", "arguments": {}}', ["a"], "hermes", None),  # cut before its closing tag
    ('```json\n{"name": "a", "parameters": {"q": "x"}}\n```', ["a"], "json", None),  # Llama 3.1's key, in a fence
    ('[{"type": "function", "function": {"name": "a", "arguments": "{}"}}]', ["a"], "openai", None),
    ('{"name": "a", "arguments": {}} and more', [], None, "text after the JSON at character 30"),
    ('{"name": "a", "arguments": "{not json"}', [], "json", "the arguments of a are not valid JSON (Expecting property name enclosed in double quotes)"),
    ('{"name": "a", "arguments": [1]}', [], "json", "the arguments of a must be a JSON object, got list"),
    ('<tool_call>{"name": "a"}</tool_call><tool_call>oops</tool_call>', ["a"], "hermes",
     "<tool_call> 2: not valid JSON (Expecting value at character 0)"),
    ('{"answer": 42}', [], "json", "no tool name"),
    ("", [], None, "no tool call"),
])
def test_the_encodings_a_model_emits(text, names, fmt, problem):
    parsed = parse_tool_calls(text)
    assert [c["name"] for c in parsed.calls] == names and parsed.format == fmt and parsed.problem == problem
    assert parsed.ok == (bool(names) and problem is None)


def _task(path, **kw):
    return TaskConfig(name="t", path=str(path), metrics=["tool_call_validity"], **kw)


def test_tool_conversations_cut_before_each_call_turn(shared_data):
    suite = SuiteConfig(name="s", tasks=[{"name": "t", "path": "x", "metrics": ["bleu"]}])
    path = shared_data / "openai_messages" / "weather_chat_fine_tuning.jsonl"
    raw = [json.loads(x) for x in path.read_text().splitlines()]
    examples, skipped = task_examples(suite, _task(path, reference_turn="tool_call"))
    assert len(examples) == len(raw) == 10 and not skipped
    for e, rec in zip(examples, raw):
        k = next(i for i, m in enumerate(rec["messages"]) if m.get("tool_calls"))
        assert [m["content"] for m in e["prompt"]] == [m["content"] for m in rec["messages"][:k]]
        assert e["tools"] == rec["tools"]
        ref = parse_tool_calls(e["reference"])
        assert ref.ok and ref.calls == [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                                        for c in rec["messages"][k]["tool_calls"]]
    # the default cut: the prompt runs through the tool results, the final answer is the reference, the tools go along
    last, _ = task_examples(suite, _task(path))
    assert last[0]["reference"] == raw[0]["messages"][-1]["content"] and last[0]["tools"] == raw[0]["tools"]
    assert last[0]["prompt"][1]["tool_calls"][0]["id"] == raw[0]["messages"][1]["tool_calls"][0]["id"]

    glaive = shared_data / "chat_llamafactory" / "glaive_toolcall_en_demo.json"
    examples, skipped = task_examples(suite, _task(glaive, reference_turn="tool_call", limit=30))
    rec = json.loads(glaive.read_text())[3]  # three calls: three examples, each prompt ending before its call
    mine = [e for e in examples if e["source"].endswith(":4")]
    assert len(mine) == 3 and [len(e["prompt"]) for e in mine] == [1, 5, 9]
    assert [parse_tool_calls(e["reference"]).calls[0] for e in mine] == [json.loads(rec["conversations"][i]["value"]) for i in (1, 5, 9)]
    assert mine[0]["tools"] == [{"type": "function", "function": t} for t in json.loads(rec["tools"])]
    # record 23 offers tools and answers without calling one; record 2 offers none
    reasons = {s["where"].rsplit(":", 1)[1]: s["reason"] for s in skipped}
    assert reasons["23"] == "no assistant turn that calls a tool" and reasons["2"] == "no tools: the record offers no tool to call"
    assert len(examples) + len(skipped) >= 30


def test_a_server_returning_tool_calls_is_scored(llama_server, shared_data, tmp_path, monkeypatch):
    """llama.cpp's server, forced to each example's reference tool (tool_choice: reference), answers with OpenAI
    tool_calls; the run stores them as the output, and the metric reads them."""
    from evalsuite.cli import app

    url, key = llama_server
    monkeypatch.setenv("LLAMA_KEY", key)
    suite = {"name": "toolserve", "server": {"base_url": url, "model": "smollm2", "api_key_env": "LLAMA_KEY", "cache": None},
             "generation": {"max_new_tokens": 48, "tool_choice": "reference"},
             "tasks": [{"name": "weather", "path": str(shared_data / "openai_messages" / "weather_chat_fine_tuning.jsonl"),
                        "reference_turn": "tool_call", "limit": 2, "metrics": ["tool_call_validity"]}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    res = CliRunner().invoke(app, ["run", "--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    task = results["tasks"]["weather"]
    assert task["tools"] == {"offered": 2, "form": "server"} and task["generation"]["tool_choice"] == "reference"
    import polars as pl

    outputs = pl.read_parquet(tmp_path / "out" / "examples.parquet")["output"].to_list()
    assert all(json.loads(o)["tool_calls"][0]["function"]["name"] == "get_current_weather" for o in outputs)
    # the grammar the server builds from the schema keeps the call well formed and on the forced tool
    assert task["metrics"]["tool_call_wellformed"]["value"] == 1.0 and task["metrics"]["tool_call_right_tool"]["value"] == 1.0
    assert task["metrics"]["tool_call_wellformed"]["details"]["format_openai"] == 2

    # a local model has no tool_choice: refused before any work (exit 2)
    del suite["server"]
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(suite))
    res = CliRunner().invoke(app, ["run", "--suite", str(tmp_path / "local.yaml"), "--out", str(tmp_path / "never")])
    assert res.exit_code == 2 and "task weather: generation.tool_choice is sent to a server" in res.output
    assert not (tmp_path / "never").exists()


# a ChatML template that renders tool definitions and calls natively (as Qwen's and Hermes' templates do)
NATIVE_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | map(attribute='function') | map(attribute='name') | join(', ') }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% for c in m.get('tool_calls') or [] %}<call>{{ c.function.name }} {{ c.function.arguments | tojson }}</call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_each_prompt_reaches_the_model_with_its_own_tools(weather, glaive):
    """A template that renders tools gets each conversation's own (chat.generate's tools=); SmolLM2's, which
    renders none, gets them as training writes them: Hermes text in the system turn."""
    from chat.conversations import load_tokenizer
    from chat.generate import prompt_token_ids, render_prompts
    from chat.tools import template_messages
    from curate.models import smollm2_model_dir
    from evalsuite.runner import tools_form

    glaive_tools = [{"type": "function", "function": t} for t in json.loads(glaive["tools"])]
    prompts = [[{"role": "user", "content": "Weather in Oslo?"}], [{"role": "user", "content": "Area of a 2x3 rectangle?"}],
               [{"role": "user", "content": "Hello"}]]
    tools = [weather[0], glaive_tools, None]
    native = load_tokenizer(str(smollm2_model_dir()))
    native.chat_template = NATIVE_TEMPLATE
    assert tools_form(native) == "native"
    rendered = [template_messages(native, p, t) for p, t in zip(prompts, tools)]
    conversations, passed = [m for m, _ in rendered], [t for _, t in rendered]
    texts = [native.decode(ids) for ids in prompt_token_ids(native, conversations, passed)]  # what generate feeds the model
    assert texts == render_prompts(native, conversations, passed)
    assert "Tools: get_current_weather<|im_end|>" in texts[0]
    assert "Tools: calculate_area, calculate_discount<|im_end|>" in texts[1]
    assert "Tools" not in texts[2] and texts[2].endswith("Hello<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError):  # one tools entry per conversation, never a prompt silently without its tools
        prompt_token_ids(native, conversations, passed[:2])

    smol = load_tokenizer(str(smollm2_model_dir()))
    assert tools_form(smol) == "hermes"
    messages, passed = template_messages(smol, prompts[0], tools[0])
    assert passed is None and messages[0]["role"] == "system" and "<tools>" in messages[0]["content"]
    assert "get_current_weather" in render_prompts(smol, [messages])[0]


def test_suites_without_the_new_settings_keep_their_records_and_run_ids():
    """tool_choice, batch_size and reference_turn left at their defaults change neither results.json's `generation`
    (compare holds it equal across runs of any evalsuite version) nor the settings a run id hashes."""
    from evalsuite.suite import GenerationConfig

    before = {"max_new_tokens", "batch_size", "sample", "temperature", "top_p", "seed"}  # GenerationConfig's keys before tool_choice
    assert set(GenerationConfig().recorded()) == before
    assert GenerationConfig(tool_choice="auto").recorded()["tool_choice"] == "auto"
    task = TaskConfig(name="t", path="x.jsonl", metrics=["bleu"], generation={"max_new_tokens": 8})
    assert "batch_size" not in task.identity() and "reference_turn" not in task.identity()
    assert set(task.identity()["generation"]) == before
    assert task.identity() != TaskConfig(name="t", path="x.jsonl", metrics=["bleu"], reference_turn="tool_call").identity()
