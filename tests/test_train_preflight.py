"""Pre-flight checks of `train run`: each fails fast with a message that says what to change, before a
model loads (or before training starts), and leaves nothing half-made."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO, write_jsonl


def _run(tmp_path, **over):
    from train.cli import app

    cfg = {"name": "pf", "data": [{"path": str(REPO / "sample_data" / "dolly_written.jsonl")}], "max_steps": 1,
           "output_dir": str(tmp_path / "run"), "workspace": None, **over}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    return CliRunner().invoke(app, ["run", str(tmp_path / "t.yaml")])


def test_estimated_memory_above_the_budget_fails_fast_and_prints_the_estimate(tmp_path):
    res = _run(tmp_path, memory_limit_gb=0.05)
    assert res.exit_code == 2
    assert "estimated peak memory" in res.output and "above the 0.1 GiB of memory_limit_gb" in res.output
    assert not (tmp_path / "run").exists()  # nothing was started


def test_sequence_length_above_the_models_and_gpu_only_options_on_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    res = _run(tmp_path, max_seq_len=100_000)
    assert res.exit_code == 2 and "max_position_embeddings 8192" in res.output
    if not torch.cuda.is_available():
        res = _run(tmp_path, precision="fp16", optim={"optimizer": "paged_adamw_8bit"})
        assert res.exit_code == 2 and "fp16 needs a CUDA GPU" in res.output and "paged_adamw_8bit needs a CUDA GPU" in res.output


def test_data_with_nothing_to_learn_is_refused_with_the_reasons_counted(tmp_path):
    # three records with no assistant turn: every one is rejected by the mask audit
    write_jsonl(tmp_path / "users.jsonl", [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(3)])
    res = _run(tmp_path, data=[{"path": str(tmp_path / "users.jsonl")}])
    assert res.exit_code == 2
    assert "no trainable example: all 3 records were rejected (3 x no trainable token" in res.output
    rejected = [json.loads(x) for x in (tmp_path / "run" / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["where"].rsplit(":", 1)[1] for r in rejected) == ["1", "2", "3"]


def test_memory_estimate_grows_with_what_drives_it():
    from transformers import AutoConfig

    from curate.models import smollm2_model_dir
    from train.config import parse_train_config
    from train.preflight import estimate_memory

    mc = AutoConfig.from_pretrained(str(smollm2_model_dir()))
    base = {"name": "m", "data": [{"path": "x.jsonl"}]}

    def est(**over):
        return estimate_memory(parse_train_config({**base, **over}), mc, half=True)

    q, lora = est(), est(method={"kind": "lora"})
    assert q["base_weights"] < lora["base_weights"]  # 4-bit linears
    assert est(gradient_checkpointing=False)["activations"] > 5 * q["activations"]
    assert est(optim={"batch_tokens": 32768})["activations"] > 3.5 * q["activations"]
    assert est(optim={"batch_tokens": 32768})["logits"] == q["logits"]  # TRL's fused LM head works in tiles
    # all-linear LoRA on SmolLM2 at r=16: 30 layers x 16 x (in+out) summed over the seven projections
    assert q["lora_parameters"] == 30 * 16 * (2 * 1152 + 2 * (576 + 192) + 3 * (576 + 1536))


def test_packed_examples_do_not_attend_to_each_other():
    import torch
    from transformers import AutoModelForCausalLM

    from curate.models import smollm2_model_dir
    from train.preflight import check_packing_isolation

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_model_dir()), dtype=torch.float32)
    assert check_packing_isolation(model) < 1e-3


def test_packing_check_catches_attention_that_leaks_across_examples():
    import torch
    from transformers import AutoModelForCausalLM

    from curate.models import smollm2_model_dir
    from train.preflight import PreflightError, check_packing_isolation

    # a forward that drops the restarting position ids is what a model without packed-sequence masks
    # does: the second example then sees the first
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_model_dir()), dtype=torch.float32)
    forward = model.forward
    model.forward = lambda *a, position_ids=None, **k: forward(*a, **k)
    with pytest.raises(PreflightError, match="attend to each other"):
        check_packing_isolation(model)


def _blanked_alpaca(path, n=12):
    """Real alpaca records with their outputs emptied (some to nothing, some to whitespace)."""
    from tests.conftest import SHARED

    rows = json.loads((SHARED / "alpaca" / "alpaca_4000.json").read_text())[:n]
    return write_jsonl(path, [{**r, "output": ["", " ", "\n\n"][i % 3]} for i, r in enumerate(rows)])


def test_a_file_of_empty_answers_fails_the_preflight_in_one_line(tmp_path):
    res = _run(tmp_path, data=[{"path": str(_blanked_alpaca(tmp_path / "empty.jsonl"))}])
    assert res.exit_code == 2
    [line] = [x for x in res.output.splitlines() if x.startswith("pre-flight: no trainable")]
    assert "all 12 records were rejected (12 x no trainable token: every assistant answer is empty)" in line
    rejected = [json.loads(x) for x in (tmp_path / "run" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 12 and {r["reason"] for r in rejected} == {"no trainable token: every assistant answer is empty"}
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_source_with_nothing_to_learn_fails_the_preflight_naming_it(tmp_path):
    # dolly has answers, the second source none: a mix that would silently leave that source out
    empty = _blanked_alpaca(tmp_path / "empty.jsonl", n=6)
    res = _run(tmp_path, data=[{"path": str(REPO / "sample_data" / "dolly_written.jsonl")}, {"path": str(empty)}])
    assert res.exit_code == 2
    why = "6 x no trainable token: every assistant answer is empty"
    assert f"pre-flight: data[1] ({empty}): nothing to learn: all 6 of its records were rejected ({why})" in res.output
    # and a validation file whose every record is rejected (no eval loss, silently) is refused as well
    res = _run(tmp_path, validation=str(empty))
    assert res.exit_code == 2 and f"pre-flight: validation ({empty}): nothing to learn: all 6 of its records" in res.output
