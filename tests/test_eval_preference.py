"""Preference accuracy on real LLaMA-Factory pairs (shared/data/chat_llamafactory/dpo_en_demo.json) with the
embedded SmolLM2: the metric's per-pair log-likelihoods equal a plain transformers forward pass over the
completion tokens, swapping the sides swaps the outcome, every preference layout curate reads (its own export
included) gives the same pairs, and what is not a pair is skipped with a reason.

The slice is the six shortest pairs of the file (by characters), so both forward passes stay a few seconds on a
2-core CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chat.template import IGNORE_INDEX, ChatEncoder
from evalsuite.examples import preference_pairs
from evalsuite.metrics import completion_sequence, get_metric
from evalsuite.suite import SuiteConfig, TaskConfig

N = 6
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


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


@pytest.fixture(scope="module")
def short_pairs(shared_data, tmp_path_factory):
    """(file, raw records): the N shortest pairs of dpo_en_demo.json, verbatim, in a LLaMA-Factory file."""
    rows = json.loads((shared_data / "chat_llamafactory" / "dpo_en_demo.json").read_text())
    size = lambda r: sum(len(t["value"]) for t in [*r["conversations"], r["chosen"], r["rejected"]])  # noqa: E731
    short = sorted(rows, key=size)[:N]
    path = tmp_path_factory.mktemp("pairs") / "dpo_short.json"
    path.write_text(json.dumps(short, ensure_ascii=False, indent=2))
    return path, short


def _pairs(path: Path | str, **task):
    suite = SuiteConfig(name="s", tasks=[{"name": "p", "kind": "preference", "path": str(path)}])
    return preference_pairs(suite, TaskConfig(name="p", kind="preference", path=str(path), **task))


def _raw_sides(rec: dict) -> tuple[list[dict], dict, dict]:
    """(prompt, chosen, rejected) of a LLaMA-Factory pair read by hand, without curate."""
    prompt = [{"role": ROLES[t["from"]], "content": t["value"]} for t in rec["conversations"]]
    return prompt, {"role": "assistant", "content": rec["chosen"]["value"]}, {"role": "assistant", "content": rec["rejected"]["value"]}


def _independent_logp(net, tok, prompt: list[dict], answer: dict) -> tuple[float, int]:
    """Sum of log-softmax over the completion's tokens, one unpadded forward pass: the prompt rendered with the
    generation prompt and the answer's rendering through <|im_end|>, each tokenized on its own."""
    import torch

    prefix = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template([*prompt, answer], tokenize=False)
    assert full.startswith(prefix)
    rest = full[len(prefix):]
    completion = rest[: rest.index("<|im_end|>") + len("<|im_end|>")]
    p_ids = tok(prefix, add_special_tokens=False)["input_ids"]
    c_ids = tok(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = net(input_ids=torch.tensor([p_ids + c_ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[len(p_ids) - 1 + k, t] for k, t in enumerate(c_ids))), len(c_ids)


@pytest.fixture(scope="module")
def scored(smollm2, short_pairs):
    net, tok = smollm2
    path, _ = short_pairs
    pairs, skipped = _pairs(path)
    assert len(pairs) == N and not skipped
    return pairs, get_metric("preference")(net, tok, pairs, batch_size=3)


def test_preference_accuracy_equals_an_independent_forward_pass(smollm2, short_pairs, scored):
    net, tok = smollm2
    _, raw = short_pairs
    pairs, res = scored
    notes = [a["preference"] for a in res["preference_accuracy"].annotations]
    wins = []
    for pair, rec, note in zip(pairs, raw, notes):
        prompt, chosen, rejected = _raw_sides(rec)
        assert (pair.prompt, pair.chosen, pair.rejected) == (prompt, [chosen], [rejected])  # curate read the same turns
        c_logp, c_n = _independent_logp(net, tok, prompt, chosen)
        r_logp, r_n = _independent_logp(net, tok, prompt, rejected)
        assert (note["chosen_tokens"], note["rejected_tokens"]) == (c_n, r_n)
        # float32 sums over a few dozen tokens, batched with padding vs alone
        assert note["chosen_logp"] == pytest.approx(c_logp, abs=2e-3)
        assert note["rejected_logp"] == pytest.approx(r_logp, abs=2e-3)
        assert abs(c_logp - r_logp) > 1e-2  # no near-tie: the outcome below cannot hinge on rounding
        wins.append(float(c_logp > r_logp))
    assert res["preference_accuracy"].per_example == wins
    assert res["preference_accuracy"].value == pytest.approx(sum(wins) / N)
    assert 0 < sum(wins) < N  # a slice where the model gets some right and some wrong: the test can tell them apart
    margins = [n["chosen_logp"] - n["rejected_logp"] for n in notes]
    assert res["preference_margin"].per_example == pytest.approx(margins)
    per_token = [n["chosen_logp"] / n["chosen_tokens"] - n["rejected_logp"] / n["rejected_tokens"] for n in notes]
    assert res["preference_margin_per_token"].value == pytest.approx(sum(per_token) / N)
    assert res["preference_accuracy"].details["correct"] == sum(wins)


def test_swapping_chosen_and_rejected_gives_one_minus_the_accuracy(smollm2, short_pairs, scored, tmp_path):
    """The same pairs swapped, in TRL's conversational layout (what curate exports): another reader, another file."""
    net, tok = smollm2
    _, raw = short_pairs
    _, res = scored
    rows = []
    for rec in raw:
        prompt, chosen, rejected = _raw_sides(rec)
        rows.append({"prompt": prompt, "chosen": [rejected], "rejected": [chosen]})
    (tmp_path / "swapped.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, _ = _pairs(tmp_path / "swapped.jsonl")
    swapped = get_metric("preference")(net, tok, pairs, batch_size=4)
    assert swapped["preference_accuracy"].value == pytest.approx(1 - res["preference_accuracy"].value)
    assert swapped["preference_accuracy"].per_example == [1 - x for x in res["preference_accuracy"].per_example]
    assert swapped["preference_margin"].per_example == pytest.approx([-x for x in res["preference_margin"].per_example], abs=2e-3)
    assert swapped["preference_margin_per_token"].value == pytest.approx(-res["preference_margin_per_token"].value, abs=1e-4)


def test_every_preference_layout_curate_reads_gives_the_same_pairs(short_pairs, tmp_path, run_config):
    path, raw = short_pairs
    want = {(json.dumps(p.prompt), json.dumps(p.chosen), json.dumps(p.rejected)) for p in _pairs(path)[0]}
    layouts: dict[str, list[dict]] = {"trl_standard": [], "trl_conversational": [], "implicit": [], "hh": []}
    for rec in raw:
        prompt, chosen, rejected = _raw_sides(rec)
        assert [m["role"] for m in prompt][-1] == "user"
        if len(prompt) == 1:  # a one-turn prompt is a string in TRL's standard layout and in HH transcripts
            layouts["trl_standard"].append({"prompt": prompt[0]["content"], "chosen": chosen["content"], "rejected": rejected["content"]})
            hh = f"\n\nHuman: {prompt[0]['content']}\n\nAssistant: "
            layouts["hh"].append({"chosen": hh + chosen["content"], "rejected": hh + rejected["content"]})
        layouts["trl_conversational"].append({"prompt": prompt, "chosen": [chosen], "rejected": [rejected]})
        layouts["implicit"].append({"chosen": [*prompt, chosen], "rejected": [*prompt, rejected]})
    for name, rows in layouts.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        got = {(json.dumps(p.prompt), json.dumps(p.chosen), json.dumps(p.rejected)) for p in _pairs(tmp_path / f"{name}.jsonl")[0]}
        # HH transcripts are stripped turn by turn: compare those on stripped text
        expected = {x for x in want if json.loads(x[0])[0]["role"] == "user"} if name in ("trl_standard", "hh") else want
        assert len(got) == len(rows) and got == expected, name

    # curate's own export of the file: a real `curate run`, its data/preference/*.jsonl read back as the same pairs
    (tmp_path / "in.json").write_text(path.read_text())
    res = run_config({"inputs": [{"path": "in.json"}], "stages": ["preference_pair"]})
    exported = sorted((res.output_dir / "data" / "preference").glob("*.jsonl"))
    assert sum(len(f.read_text().splitlines()) for f in exported) == N
    got = {(json.dumps(p.prompt), json.dumps(p.chosen), json.dumps(p.rejected))
           for p in _pairs(res.output_dir / "data" / "preference" / "*.jsonl")[0]}
    assert got == want


def test_records_that_are_not_pairs_are_skipped_with_a_reason(shared_data, short_pairs, tmp_path):
    path, raw = short_pairs
    kto = json.loads((shared_data / "chat_llamafactory" / "kto_en_demo.json").read_text())[:2]
    glaive = json.loads((shared_data / "chat_llamafactory" / "glaive_toolcall_en_demo.json").read_text())[:1]
    same = dict(raw[0], rejected=raw[0]["chosen"])  # a "pair" whose two sides are one completion
    empty = dict(raw[1], rejected={"from": "gpt", "value": "   "})
    (tmp_path / "mixed.json").write_text(json.dumps([raw[0], *kto, *glaive, same, empty, raw[2]]))
    pairs, skipped = _pairs(tmp_path / "mixed.json")
    assert len(pairs) == 2
    reasons = [s["reason"] for s in skipped]
    assert reasons == ["not a preference pair (a kto record)"] * 2 + ["not a preference pair (a conversation)",
                                                                        "chosen and rejected are the same completion",
                                                                        "the rejected completion has no assistant text or tool call to score"]
    assert [s["where"].rsplit(":", 1)[1] for s in skipped] == ["2", "3", "4", "5", "6"]
    # limit counts pairs, not records
    assert len(_pairs(tmp_path / "mixed.json", limit=2)[0]) == 2


def test_only_the_completion_is_scored_in_a_multi_turn_prompt():
    """The prompt's own assistant turn is context: the labels cover the completion's span through <|im_end|>."""
    from chat.conversations import load_tokenizer
    from curate.models import smollm2_model_dir

    tok = load_tokenizer(str(smollm2_model_dir()))
    enc = ChatEncoder(tok, max_seq_len=10_000)
    prompt = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."},
              {"role": "user", "content": "Another one?"}]
    ids, labels = completion_sequence(enc, prompt, [{"role": "assistant", "content": "Blue, like the sea."}])
    assert ids == enc.encode([*prompt, {"role": "assistant", "content": "Blue, like the sea."}]).input_ids  # training's ids
    scored = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tok.decode(scored) == "Blue, like the sea.<|im_end|>"
    # two answers in the completion (an answer, a user turn, an answer): both scored, the turn between them not
    completion = [{"role": "assistant", "content": "Green."}, {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Blue."}]
    ids, labels = completion_sequence(enc, prompt, completion)
    assert tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]) == "Green.<|im_end|>Blue.<|im_end|>"


def test_the_scored_tokens_are_the_ones_a_dpo_step_trains(short_pairs, shared_data, tmp_path):
    """completion_sequence gives the ids and labels of train.preference.encode_side, the DPO trainer's own encoding,
    for both sides of real pairs and of a tool-call pair (glaive's tools, a prompt with an earlier answer)."""
    from chat.conversations import load_tokenizer
    from curate.models import smollm2_model_dir
    from train.preference import encode_side

    tok = load_tokenizer(str(smollm2_model_dir()))
    enc = ChatEncoder(tok, max_seq_len=100_000)
    glaive = json.loads((shared_data / "chat_llamafactory" / "glaive_toolcall_en_demo.json").read_text())[0]
    call = json.loads(glaive["conversations"][3]["value"])
    tool_pair = {"prompt": [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in glaive["conversations"][:3]],
                 "chosen": [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]}],
                 "rejected": [{"role": "assistant", "content": "I cannot look up recipes."}], "tools": glaive["tools"]}
    (tmp_path / "tool_pair.jsonl").write_text(json.dumps(tool_pair) + "\n")
    pairs = _pairs(short_pairs[0])[0][:3] + _pairs(tmp_path / "tool_pair.jsonl")[0]
    assert pairs[-1].tools and pairs[-1].chosen[0]["tool_calls"] and len(pairs[-1].prompt) == 3
    for pair in pairs:
        for side in (pair.chosen, pair.rejected):
            ids, labels = completion_sequence(enc, pair.prompt, side, pair.tools)
            trained = encode_side(enc, [*pair.prompt, *side], len(pair.prompt), pair.tools)
            assert (ids, labels) == (trained.input_ids, trained.labels)
    # the tool call is scored in the Hermes text SmolLM2 is trained on (its template renders no tools)
    ids, labels = completion_sequence(enc, pairs[-1].prompt, pairs[-1].chosen, pairs[-1].tools)
    scored = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert scored.startswith("<tool_call>\n{\"name\": \"search_recipes\"") and scored.endswith("</tool_call><|im_end|>")
    assert "search_recipes" in tok.decode(ids[: labels.index(next(x for x in labels if x != IGNORE_INDEX))])  # the tools, in the prompt


def test_a_preference_task_needs_pairs_and_scores_itself(tmp_path, shared_data):
    import yaml

    from evalsuite.suite import SuiteError, load_suite

    bad = {"name": "s", "tasks": [
        {"name": "p", "kind": "preference", "path": "x.json", "metrics": ["preference"]},
        {"name": "g", "path": "x.json", "metrics": ["preference"]},
        {"name": "m", "kind": "preference", "path": "x.json", "mapping": {"user": "q", "assistant": "a"}},
        {"name": "r", "kind": "preference", "path": "x.json", "reference_turn": "tool_call"},
    ]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(SuiteError) as err:
        load_suite(tmp_path / "bad.yaml")
    msg = str(err.value)
    assert "tasks.0: a preference task scores itself" in msg
    assert "tasks.1.metrics: metric preference scores the items of a task kind, not generated outputs: give the task kind: preference" in msg
    assert "tasks.2: mapping: a mapping makes conversations, not preference pairs" in msg
    assert "tasks.3: reference_turn: a preference task reads its own items" in msg

    from evalsuite.runner import run_suite

    kto = shared_data / "chat_llamafactory" / "kto_en_demo.json"
    suite = SuiteConfig(name="s", tasks=[{"name": "p", "kind": "preference", "path": str(kto), "limit": 3}])
    none = r"task p: no preference pair in .*kto_en_demo.json \(300 records skipped; the first, .*:1: not a preference pair \(a kto"
    with pytest.raises(ValueError, match=none):
        run_suite(suite, out_dir=tmp_path / "never", device="cpu")
