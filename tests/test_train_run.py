"""`train run` on CPU with the embedded SmolLM2: a real (tiny) QLoRA run through the CLI, and a LoRA run that
must clearly lower the loss of the records it trains on."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO, write_jsonl


@pytest.fixture(scope="module")
def eight(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("eight")
    write_jsonl(d / "eight.jsonl", _alpaca()[:8])
    return d


@pytest.fixture(scope="module")
def eight_run(eight):
    """LoRA on 8 real alpaca records, 12 steps at a high learning rate, with 4 held-out records evaluated
    every 3 steps (early stopping patience 2), one sample prompt, and a workspace."""
    from train.config import parse_train_config
    from train.trainer import run_training

    (eight / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _alpaca()[8:12]))
    cfg = parse_train_config(
        {
            "name": "eight", "data": [{"path": "eight.jsonl"}], "validation": "val.jsonl", "max_steps": 12, "max_seq_len": 512,
            "method": {"kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, "gradient_checkpointing": False,
            "optim": {"lr": 2e-3, "batch_tokens": 4096, "warmup_ratio": 0.0, "scheduler": "constant_with_warmup"},
            "eval": {"every_steps": 3, "early_stopping_patience": 2, "sample_prompts": 1, "sample_max_new_tokens": 12},
            "price_per_gpu_hour": 2.0, "log_every_steps": 1,
        },
        base_dir=eight,
    )
    return cfg, run_training(cfg)


def _alpaca():
    from tests.conftest import SHARED

    return json.loads((SHARED / "alpaca" / "alpaca_4000.json").read_text())


def test_lora_on_eight_records_lowers_their_loss(eight_run):
    _cfg, manifest = eight_run
    loss = manifest["train_loss"]
    assert manifest["data"]["train_examples"] == 8 and manifest["data"]["rejected"] == 0
    assert 0.2 < manifest["data"]["trainable_share"] < 0.9  # prompts (and the system prompt) are not trained
    assert loss[-1] < 0.5 * loss[0], loss


def test_the_best_checkpoint_is_restored_and_early_stopping_follows_its_patience(eight_run):
    from safetensors.torch import load_file

    cfg, manifest = eight_run
    run = cfg.output_path
    evals = manifest["eval_loss"]
    assert manifest["best_eval_loss"] == min(evals)
    best = manifest["best_checkpoint"]
    assert best == f"checkpoint-{3 * (evals.index(min(evals)) + 1)}"
    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    kept = load_file(run / "checkpoints" / best / "adapter_model.safetensors")
    assert saved.keys() == kept.keys() and all((saved[k] == kept[k]).all() for k in saved)
    after_best = evals[evals.index(min(evals)) + 1 :]
    if manifest["stopped_early"]:  # stopped exactly when `patience` evaluations in a row did not improve
        assert len(after_best) == 2 and manifest["steps"] < 12
    else:
        assert len(after_best) < 2 and manifest["steps"] == 12


def test_run_folder_has_samples_plot_metrics_and_a_workspace_row(eight_run):
    from curate.workspace import Workspace

    cfg, manifest = eight_run
    run = cfg.output_path
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    steps = sorted({s["step"] for s in samples})
    assert steps[0] == 0 and steps[1:] == list(range(3, manifest["steps"] + 1, 3))  # before training, then every 3 steps
    assert all(s["prompt"].startswith("Label the following animal") and s["output"].strip() for s in samples)
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [m["step"] for m in metrics if "loss" in m]
    assert loss_steps == list(range(1, manifest["steps"] + 1))
    assert manifest["projection"]["projected_total_s"] > 0 and manifest["projection"]["projected_cost"] > 0
    with Workspace(cfg.resolve("workspace"), create=False) as ws:  # the default workspace folder, beside the config
        row = ws.run(manifest["run_id"])
        assert row["kind"] == "train" and row["status"] == "done" and row["output_dir"] == str(run)
        assert row["summary"]["best_eval_loss"] == manifest["best_eval_loss"]
        curve = ws.query(manifest["run_id"], "SELECT step, value FROM train_metrics WHERE run_id = ? AND name = 'eval_loss' ORDER BY step",
                         [manifest["run_id"]])
        assert curve["value"].to_list() == manifest["eval_loss"]


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
        "eval": {"sample_prompts": 1, "sample_max_new_tokens": 8},  # NF4 generation on CPU is slow
        "export": {"gguf": "q8_0"},  # merged into the full-precision base, written as GGUF, logits checked
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "train.yaml")])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["method"]["kind"] == "qlora" and manifest["base_model"].startswith("embedded")
    assert manifest["versions"]["bitsandbytes"] != "not installed"
    files = sorted(REPO / "sample_data" / n for n in ("chat_written.jsonl", "dolly_written.jsonl"))
    digests = [hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files]  # what sha256sum prints
    assert [(d["path"], d["sha256"]) for d in manifest["data_files"]] == [(str(f), h) for f, h in zip(files, digests)]
    assert manifest["data_sha256"] == hashlib.sha256("".join(sorted(h + "\n" for h in digests)).encode()).hexdigest()
    rejected = [json.loads(x) for x in (run / "rejected.jsonl").read_text().splitlines()]
    assert any(r["where"].endswith("chat_written.jsonl:6") and "no trainable token" in r["reason"] for r in rejected)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    audit = (run / "mask_audit.txt").read_text()  # the real template, trained spans marked: the answer and its end
    assert sum(line.startswith("# /") for line in audit.splitlines()) == 3
    assert "<|im_start|>assistant\n⟦" in audit and "<|im_end|>⟧\n" in audit and "⟦<|im_start|>" not in audit
    assert "\n⟧" not in audit  # the newline after the end of turn is template glue, not a target
    q = manifest["data"]["trainable_share_per_record"]
    assert 0 < q["min"] <= q["p05"] <= q["median"] <= q["max"] < 1
    export = manifest["export"]
    assert (run / export["gguf"]["path"]).is_file() and export["gguf"]["kind"] == "q8_0"
    assert export["logits_check"]["argmax_agreement"] >= 0.85 and export["logits_check"]["tokenizer_match"]
    assert "<|im_end|>" in (run / export["modelfile"]).read_text()

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


def test_a_killed_run_resumes_from_its_last_complete_checkpoint(eight, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from curate.workspace import Workspace
    from train.cli import app

    run = tmp_path / "run"
    cfg = {
        "name": "resume", "data": [{"path": str(eight / "eight.jsonl")}], "max_steps": 5, "max_seq_len": 512,
        "method": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, "gradient_checkpointing": False,
        "optim": {"batch_tokens": 1024}, "eval": {"every_steps": 1, "sample_prompts": 0}, "log_every_steps": 1,
        "output_dir": str(run), "workspace": str(tmp_path / "ws"),
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "train.cli", "run", str(tmp_path / "t.yaml")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run / "manifest.json").exists()  # killed mid-run
    with Workspace(tmp_path / "ws", create=False) as ws:
        assert ws.runs()["status"].to_list() == ["running"]

    res = CliRunner().invoke(app, ["run", str(tmp_path / "t.yaml")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["resumed_from"] and int(manifest["resumed_from"].split("-")[1]) >= 2 and "resumed from" in res.output
    assert manifest["steps"] == 5
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5]  # one history, each step once
    with Workspace(tmp_path / "ws", create=False) as ws:
        assert ws.runs()["status"].to_list() == ["done"]
        (run_id,) = ws.runs()["run_id"]
        n = ws.query(run_id, "SELECT count(*) AS n FROM train_metrics WHERE name = 'loss'")["n"][0]
        assert n == 5

    # other data in the same run folder: resuming would mix two runs, so it is refused (exit 2), and
    # --fresh starts over
    write_jsonl(tmp_path / "other.jsonl", _alpaca()[20:24])
    cfg["data"] = [{"path": str(tmp_path / "other.jsonl")}]
    cfg["max_steps"] = 1
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "t.yaml")])
    assert res.exit_code == 2 and "--fresh" in res.output
    res = CliRunner().invoke(app, ["run", str(tmp_path / "t.yaml"), "--fresh"])
    assert res.exit_code == 0, res.output
    first = json.loads((run / "manifest.json").read_text())
    assert first["resumed_from"] is None

    # another seed, the same files: the manifest's data hash is the files' own, whatever the seed
    cfg["seed"] = 1
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "t.yaml"), "--fresh"])
    assert res.exit_code == 0, res.output
    second = json.loads((run / "manifest.json").read_text())
    assert second["fingerprint"] != first["fingerprint"] and second["config"]["seed"] == 1
    other = tmp_path / "other.jsonl"
    file_hash = hashlib.sha256(open(other, "rb").read()).hexdigest()
    assert second["data_files"] == first["data_files"] == [{"path": str(other), "sha256": file_hash, "bytes": other.stat().st_size}]
    assert second["data_sha256"] == first["data_sha256"] == hashlib.sha256((file_hash + "\n").encode()).hexdigest()


def test_a_workspace_path_that_is_a_file_exits_2_in_one_line_before_loading_a_model(tmp_path):
    from train.cli import app

    (tmp_path / "here.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "ws.duckdb").write_bytes(b"not a workspace at all\n")
    (tmp_path / "t.yaml").write_text("name: x\nworkspace: ws.duckdb\ndata:\n  - path: here.jsonl\n")
    res = CliRunner().invoke(app, ["run", str(tmp_path / "t.yaml")])
    assert res.exit_code == 2 and "workspace:" in res.output and "ws.duckdb" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "runs").exists()
