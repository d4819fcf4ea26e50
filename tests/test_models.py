"""The embedded SmolLM2 checkpoint: converted once from the packaged GGUF, loadable in NF4, and a real LM."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from curate.models import smollm2_model_dir


def test_embedded_smollm2_loads_in_nf4_and_answers():
    d = smollm2_model_dir()
    assert (d / "model.safetensors").is_file() and (d / "config.json").is_file()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(d), quantization_config=q, device_map="cpu")
    tok = AutoTokenizer.from_pretrained(str(d))
    x = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**x, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][x["input_ids"].shape[1] :])
