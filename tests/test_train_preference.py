"""`train run` with a preference objective on CPU with the embedded SmolLM2: DPO on real LLaMA-Factory pairs and KTO
on real labeled completions, each one short step, with the masks of both sides checked in the mask audit."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from chat.conversations import message_dicts, read_records, rejected_dicts
from curate.models import smollm2_tokenizer_dir
from tests.conftest import write_jsonl
from train.config import TrainConfigError, parse_train_config


def _short(shared_data, name: str, n: int, kinds: tuple[str, ...]) -> list[dict]:
    """The first ``n`` records of a real file whose every side fits 200 tokens."""
    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    path = shared_data / "chat_llamafactory" / name
    rows = json.loads(path.read_text())
    records, _ = read_records(path)
    out = []
    for (_where, rec), row in zip(records, rows):
        sides = [message_dicts(rec)] + ([rejected_dicts(rec)] if rec.extra.kind == "preference" else [])
        lengths = [len(tok(tok.apply_chat_template(s, tokenize=False), add_special_tokens=False)["input_ids"]) for s in sides]
        if rec.extra.kind in kinds and max(lengths) < 200:
            out.append(row)
        if len(out) == n:
            break
    return out


def _cfg(tmp_path, objective: str, files: list[str], **extra):
    return parse_train_config({
        "name": f"{objective}-tiny", "data": [{"path": f} for f in files], "max_steps": 1, "max_seq_len": 256,
        "method": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "objective": objective, "beta": 0.1},
        "gradient_checkpointing": False, "workspace": None, "log_every_steps": 1,
        "optim": {"lr": 1e-3, "batch_tokens": 1024, "warmup_ratio": 0.0, "scheduler": "constant_with_warmup"},
        "eval": {"every_steps": 100, "sample_prompts": 0}, **extra,
    }, base_dir=tmp_path)


def test_dpo_trains_both_sides_of_real_pairs_on_their_completions_only(tmp_path, shared_data):
    from train.trainer import run_training

    pairs = _short(shared_data, "dpo_en_demo.json", 2, ("preference",))
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    manifest = run_training(_cfg(tmp_path, "dpo", ["pairs.json"]))
    out = tmp_path / "runs" / "dpo-tiny"
    assert manifest["objective"] == "dpo" and manifest["steps"] == 1 and (out / "adapter" / "adapter_config.json").is_file()
    assert manifest["data"]["train_examples"] == 2 and manifest["data"]["objective"] == "dpo"
    audit = (out / "mask_audit.txt").read_text()
    # each side scores its completion through the end-of-turn token, nothing of the prompt
    for pair in pairs:
        chosen, rejected_answer = pair["chosen"]["value"].strip(), pair["rejected"]["value"].strip()
        assert f"⟦{chosen}<|im_end|>⟧" in audit and f"⟦{rejected_answer}<|im_end|>⟧" in audit
        assert "⟦" + pair["conversations"][-1]["value"][:20] not in audit
    assert audit.count("--- rejected ---") == 2
    assert all(isinstance(x, float) for x in manifest["train_loss"])


def test_sft_weight_adds_the_chosen_answers_own_loss_to_dpo(tmp_path, shared_data):
    """At the first step the adapter is a no-op, so DPO's loss is exactly ln 2 and what sft_weight adds is the
    chosen side's mean token NLL, measured independently here through evalsuite's preference scorer."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from curate.models import smollm2_model_dir
    from evalsuite.metrics.preference import PreferencePair, preference
    from train.trainer import run_training

    pairs = _short(shared_data, "dpo_en_demo.json", 2, ("preference",))
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    manifest = run_training(_cfg(tmp_path, "dpo", ["pairs.json"], method={
        "kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "objective": "dpo", "beta": 0.1, "sft_weight": 0.5}))
    base = str(smollm2_model_dir())
    tok = AutoTokenizer.from_pretrained(base)
    scored = []
    for (_, rec) in read_records(tmp_path / "pairs.json")[0]:
        chosen, k = message_dicts(rec), rec.extra.prompt_turns
        scored.append(PreferencePair(chosen[:k], chosen[k:], rejected_dicts(rec)[k:]))
    notes = preference(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tok, scored)["preference_accuracy"].annotations
    nll = -sum(n["preference"]["chosen_logp"] for n in notes) / sum(n["preference"]["chosen_tokens"] for n in notes)
    assert manifest["train_loss"][0] == pytest.approx(math.log(2) + 0.5 * nll, abs=2e-3)
    with pytest.raises(TrainConfigError, match="sft_weight adds a supervised term to the dpo loss; objective is kto"):
        _cfg(tmp_path, "kto", ["pairs.json"], method={"kind": "lora", "objective": "kto", "sft_weight": 0.5})


def test_orpo_trains_the_chosen_answers_and_their_odds_with_no_reference(tmp_path, shared_data):
    """ORPO's first-step loss is the chosen answers' token NLL plus beta x -log sigmoid(log odds ratio), each side's
    odds from its mean token probability over the trained tokens: recomputed here from evalsuite's preference
    scorer on the base model (the adapter is a no-op at the first step). The mask audit shows both sides."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from curate.models import smollm2_model_dir
    from evalsuite.metrics.preference import PreferencePair, preference
    from train.trainer import run_training

    pairs = _short(shared_data, "dpo_en_demo.json", 2, ("preference",))
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    manifest = run_training(_cfg(tmp_path, "orpo", ["pairs.json"], method={
        "kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "objective": "orpo", "beta": 0.2}))
    out = tmp_path / "runs" / "orpo-tiny"
    assert manifest["objective"] == "orpo" and (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "mask_audit.txt").read_text().count("--- rejected ---") == 2
    base = str(smollm2_model_dir())
    tok = AutoTokenizer.from_pretrained(base)
    scored = []
    for (_, rec) in read_records(tmp_path / "pairs.json")[0]:
        chosen, k = message_dicts(rec), rec.extra.prompt_turns
        scored.append(PreferencePair(chosen[:k], chosen[k:], rejected_dicts(rec)[k:]))
    notes = [n["preference"] for n in preference(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tok, scored)
             ["preference_accuracy"].annotations]
    nll = -sum(n["chosen_logp"] for n in notes) / sum(n["chosen_tokens"] for n in notes)

    def log_odds(mean_logp: float) -> float:
        return mean_logp - math.log(1 - math.exp(mean_logp))

    ratio = [log_odds(n["chosen_logp"] / n["chosen_tokens"]) - log_odds(n["rejected_logp"] / n["rejected_tokens"]) for n in notes]
    odds_term = sum(math.log1p(math.exp(-r)) for r in ratio) / len(ratio)  # -log sigmoid(r)
    assert manifest["train_loss"][0] == pytest.approx(nll + 0.2 * odds_term, abs=2e-3)


def test_kto_trains_labeled_completions_and_reads_pairs_as_two(tmp_path, shared_data):
    from train.trainer import run_training

    kto = _short(shared_data, "kto_en_demo.json", 3, ("kto",))
    pairs = _short(shared_data, "dpo_en_demo.json", 1, ("preference",))
    (tmp_path / "kto.json").write_text(json.dumps(kto))
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    manifest = run_training(_cfg(tmp_path, "kto", ["kto.json", "pairs.json"]))
    d = manifest["data"]
    assert d["train_examples"] == 5 and d["desirable"] == sum(r["label"] for r in kto) + 1
    assert d["undesirable"] == 5 - d["desirable"]
    audit = (tmp_path / "runs" / "kto-tiny" / "mask_audit.txt").read_text()
    assert "desirable" in audit and "<|im_end|>⟧" in audit


def test_a_dpo_run_over_conversations_says_why_before_loading_a_model(tmp_path, shared_data):
    from train.preflight import PreflightError
    from train.trainer import run_training

    (tmp_path / "pairs.json").write_text(json.dumps(_short(shared_data, "dpo_en_demo.json", 1, ("preference",))))
    write_jsonl(tmp_path / "sft.jsonl", json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[:2])
    with pytest.raises(PreflightError, match=r"data\[1\] \(sft.jsonl\): nothing to learn: all 2 of its records were rejected "
                                             r"\(2 x a sft record: dpo trains on preference pairs"):
        run_training(_cfg(tmp_path, "dpo", ["pairs.json", "sft.jsonl"]))
    rejected = [json.loads(x) for x in (tmp_path / "runs" / "dpo-tiny" / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["where"].rsplit("/", 1)[1] for r in rejected) == ["sft.jsonl:1", "sft.jsonl:2"]


def test_preference_objectives_refuse_train_on_inputs(tmp_path):
    with pytest.raises(TrainConfigError, match="train_on_inputs applies to sft"):
        _cfg(tmp_path, "dpo", ["x.json"], train_on_inputs=True)


def test_tool_call_conversations_train_the_calls_in_the_templates_form(tmp_path, shared_data):
    """SmolLM2's template renders no tools: the calls reach the loss as Hermes <tool_call> text, the definitions
    as part of the system prompt (context), the results as tool turns (context)."""
    from train.trainer import prepare_data

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    weather = shared_data / "openai_messages" / "weather_chat_fine_tuning.jsonl"
    cfg = _cfg(tmp_path, "sft", [str(weather)], max_seq_len=1024)
    data = prepare_data(cfg, tok)
    assert data.stats["train_examples"] == 10 and not data.rejected
    audit = data.audit[0]
    line = json.loads(weather.read_text().splitlines()[0])
    first_call = line["messages"][1]["tool_calls"][0]["function"]
    call_text = json.dumps({"name": first_call["name"], "arguments": json.loads(first_call["arguments"])})
    # the call is trained (inside ⟦ ⟧), with its end of turn; the tool list and the results are not
    assert f"⟦<tool_call>\n{call_text}\n</tool_call>" in audit
    system, rest = audit.split("<|im_start|>user", 1)
    assert "get_current_weather" in system and "⟦" not in system
    results = rest.split("<|im_start|>tool", 1)[1].split("<|im_end|>", 1)[0]
    assert "<tool_response>" in results and "⟦" not in results
    assert audit.count("⟦") == 2  # the call turn and the final answer

