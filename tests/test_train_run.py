"""`train run` on CPU with the embedded SmolLM2: a real (tiny) QLoRA run through the CLI, and a LoRA run that
must clearly lower the loss of the records it trains on."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO, write_jsonl


@pytest.fixture(scope="module")
def eight(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("eight")
    rows = json.loads((shared_data / "alpaca" / "alpaca_4000.json").read_text())[:8]
    write_jsonl(d / "eight.jsonl", rows)
    return d


def test_lora_on_eight_records_lowers_their_loss(eight):
    from train.config import parse_train_config
    from train.trainer import run_training

    cfg = parse_train_config(
        {
            "name": "eight", "data": [{"path": "eight.jsonl"}], "max_steps": 12, "max_seq_len": 512,
            "method": {"kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, "gradient_checkpointing": False,
            "optim": {"lr": 2e-3, "batch_tokens": 4096, "warmup_ratio": 0.0, "scheduler": "constant_with_warmup"},
        },
        base_dir=eight,
    )
    manifest = run_training(cfg)
    loss = manifest["train_loss"]
    assert manifest["data"]["train_examples"] == 8 and manifest["data"]["rejected"] == 0
    assert 0.2 < manifest["data"]["trainable_share"] < 0.9  # prompts (and the system prompt) are not trained
    assert loss[-1] < 0.5 * loss[0], loss


def test_qlora_cli_run_saves_an_adapter_that_peft_reloads_and_generates(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.models import smollm2_model_dir
    from train.cli import app

    # sample_data through the CLI, QLoRA NF4 with double quantization, all-linear, a few steps; one file has
    # a record with no assistant turn (chat_written.jsonl line 6): rejected with a reason, not a crash
    cfg = {
        "name": "cli", "data": [{"path": str(REPO / "sample_data" / "chat_written.jsonl")}, {"path": str(REPO / "sample_data" / "dolly_written.jsonl")}],
        "max_steps": 2, "max_seq_len": 256, "method": {"kind": "qlora", "r": 4, "alpha": 8},
        "optim": {"batch_tokens": 1024}, "output_dir": str(tmp_path / "run"),
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "train.yaml")])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["method"]["kind"] == "qlora" and manifest["base_model"].startswith("embedded")
    assert manifest["versions"]["bitsandbytes"] != "not installed" and len(manifest["data_sha256"]) == 64
    rejected = [json.loads(x) for x in (run / "rejected.jsonl").read_text().splitlines()]
    assert any(r["where"].endswith("chat_written.jsonl:6") and "no trainable token" in r["reason"] for r in rejected)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()

    base = AutoModelForCausalLM.from_pretrained(str(smollm2_model_dir()), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(run / "adapter"))
    tok = AutoTokenizer.from_pretrained(str(run / "adapter"))
    x = tok.apply_chat_template([{"role": "user", "content": "Name a primary colour."}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**x, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0][x["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_bad_train_config_exits_2(tmp_path):
    from train.cli import app

    (tmp_path / "t.yaml").write_text("name: x\ndata: []\n")
    res = CliRunner().invoke(app, ["run", str(tmp_path / "t.yaml")])
    assert res.exit_code == 2 and "data" in res.output


def test_missing_data_file_exits_2_naming_the_key_before_loading_a_model(tmp_path):
    from train.cli import app

    (tmp_path / "t.yaml").write_text("name: x\ndata:\n  - path: here.jsonl\n  - path: nope.jsonl\n")
    (tmp_path / "here.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    res = CliRunner().invoke(app, ["run", str(tmp_path / "t.yaml")])
    assert res.exit_code == 2 and "data[1].path" in res.output and "nope.jsonl" in res.output
    assert not (tmp_path / "runs").exists()
