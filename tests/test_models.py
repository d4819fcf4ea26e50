"""The embedded SmolLM2 checkpoint: converted once from the packaged GGUF, loadable in NF4, and a real LM."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from curate.models import smollm2_model_dir


def test_embedded_smollm2_loads_in_nf4_and_answers():
    d = smollm2_model_dir()
    assert (d / "model.safetensors").is_file() and (d / "config.json").is_file()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(d), quantization_config=q, device_map="cpu")
    tok = AutoTokenizer.from_pretrained(str(d))
    x = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
                                return_tensors="pt", return_dict=True)
    out = model.generate(**x, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][x["input_ids"].shape[1] :])


def _smollm2_tokenizer():
    from curate.models import smollm2_tokenizer_dir

    return AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))


def test_embedded_smollm2_tokenizer_pre_splits_digits_like_llama_cpp():
    # the GGUF's tokenizer.ggml.pre is "smollm": llama.cpp isolates every \p{N} character, then applies the
    # GPT-2 regex; upstream SmolLM2's tokenizer.json is Sequence[Digits(individual_digits), ByteLevel]
    tok = _smollm2_tokenizer()
    pieces = [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("In 2024 I paid $1234.56")]
    assert pieces == ["In", "Ġ", "2", "0", "2", "4", "ĠI", "Ġpaid", "Ġ$", "1", "2", "3", "4", ".", "5", "6"]
    ids = tok("In 2024 I paid $1234.56", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == pieces  # one token per digit
    # where the plain GPT-2 pre-tokenizer differed: whitespace and non-ASCII numerals right before a number.
    # The expected tokens are what llama.cpp's "smollm" pre-tokenizer gives (GPT-2's gave 'Ċ','Ċ' / 'Ġ','Ċ' /
    # 'ĠÂ','½').
    ids = tok("Steps:\n\n1. Mix\n  2. Bake ½ cup \n3", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [
        "Steps", ":", "ĊĊ", "1", ".", "ĠMix", "ĊĠĠ", "2", ".", "ĠBake", "Ġ", "Â½", "Ġcup", "ĠĊ", "3"
    ]


def test_embedded_smollm2_tokenizer_round_trips():
    tok = _smollm2_tokenizer()
    for text in [
        "In 2024 I paid $1234.56",
        "  two  spaces,\ttab\nnewline\n\n\n12 345 6,789.0 -1e-9 ½ ² Ⅻ ٣٤ ０１",
        "héllo wörld 😀 日本語 2024年 — “quotes” 3×4=12",
        "<|im_start|>user\n99 bottles<|im_end|>\n",
    ]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def test_embedded_smollm2_checkpoint_has_the_same_tokenizer():
    from curate.models import smollm2_model_dir, smollm2_tokenizer_dir

    a = json.loads((smollm2_tokenizer_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    b = json.loads((smollm2_model_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    assert a["pre_tokenizer"]["type"] == "Sequence" and a["pre_tokenizer"]["pretokenizers"][0] == {
        "type": "Digits",
        "individual_digits": True,
    }
    assert a == b
