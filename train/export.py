"""Export a trained adapter for serving.

- :func:`merge_adapter`: the LoRA adapter merged into the base weights, saved as a plain transformers
  checkpoint (safetensors + tokenizer) that vLLM and TGI serve as is;
- :func:`write_gguf`: a GGUF file (f16 or q8_0) of a merged Llama-architecture checkpoint for llama.cpp and
  Ollama, written with the ``gguf`` package the way llama.cpp's ``convert_hf_to_gguf.py`` writes it;
- :func:`write_modelfile`: the Ollama Modelfile next to it;
- :func:`check_gguf_logits`: the GGUF read back by transformers' GGUF loader must compute what the merged
  checkpoint computes, and tokenize as it does;
- :func:`export_run`: the glue ``train run`` calls after training.

torch, transformers and peft are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np

GgufKind = Literal["f16", "q8_0"]
GGUF_KINDS: tuple[str, ...] = ("f16", "q8_0")

# The GGUF architecture each supported transformers architecture is written as. SmolLM2 is a
# LlamaForCausalLM with tied embeddings.
SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA}

FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}

# What the GGUF must reproduce of the merged checkpoint's logits (float32, CPU, DEFAULT_CHECK_PROMPT: 65 tokens).
# Measured on SmolLM2-135M, whose logits span about 37 at each position: f16 of an f16 merge copies the weights
# bit for bit (diff 0); f16 of a float32 checkpoint rounds them (max 0.04, mean 0.005, every argmax agrees);
# q8_0 moved the logits by max 1.1-1.3, mean 0.16-0.20, and flipped the argmax at 2 of 65 positions (near-ties).
# The thresholds leave 2-6x room for bigger models and other prompts, and still catch what breaks a conversion:
# q/k left in transformers' rotary layout gave max 36, mean 7.3 and 38% argmax agreement.
LOGITS_TOLERANCES: dict[str, dict[str, float]] = {
    "f16": {"max_abs_diff": 0.25, "mean_abs_diff": 0.02, "min_argmax_agreement": 0.95},
    "q8_0": {"max_abs_diff": 3.0, "mean_abs_diff": 0.5, "min_argmax_agreement": 0.85},
}

# Special tokens, digits, punctuation and non-ASCII text: the parts where tokenizers go wrong.
DEFAULT_CHECK_PROMPT = (
    "<|im_start|>user\nWhat is 17 x 23? Réponds en français, s'il te plaît.<|im_end|>\n"
    "<|im_start|>assistant\n17 x 23 = 391. C'est « trois cent quatre-vingt-onze »."
)

CHATML_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
CHATML_STOPS = ("<|im_end|>", "<|im_start|>")


class ExportCheckError(RuntimeError):
    """The exported GGUF does not compute what the merged checkpoint computes; ``summary`` is what
    :func:`export_run` would have returned, measurements included."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


# --- merge --------------------------------------------------------------------------------------------


def merge_adapter(base_path: str | Path, adapter_dir: Path, out_dir: Path, dtype=None) -> Path:
    """Merge the peft adapter in ``adapter_dir`` into the base model and save the result to ``out_dir``.

    ``base_path`` is a local transformers checkpoint folder or a hub id (loaded from the local cache only
    when offline). The base is loaded in float32 on CPU, merged, cast to ``dtype`` (default float16) and
    saved as safetensors, with the tokenizer saved beside the adapter (the base's when the adapter folder
    has none). Needs about 4 bytes of RAM per parameter. Returns ``out_dir``.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float16 if dtype is None else dtype
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    # Full precision, never the 4-bit base QLoRA trained on: merging into NF4 weights would round the
    # update into NF4's 16 levels, and a bf16/fp16 merge rounds the small update against the large base
    # weight. Merging in float32 rounds once, at the final cast.
    base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged = merged.to(dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    has_tokenizer = any((adapter_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    AutoTokenizer.from_pretrained(str(adapter_dir if has_tokenizer else base_path)).save_pretrained(str(out_dir))
    return out_dir


# --- GGUF ---------------------------------------------------------------------------------------------


def write_gguf(model_dir: Path, out_file: Path, kind: GgufKind, name: str | None = None) -> Path:
    """Write ``model_dir`` (a merged transformers checkpoint: config.json, safetensors, tokenizer.json) as
    the GGUF file ``out_file`` for llama.cpp / Ollama.

    ``kind`` ``f16``: 2-D weights in F16; ``q8_0``: 2-D weights whose rows are a multiple of 32 long in
    Q8_0, other 2-D weights F16. 1-D tensors (norms) stay F32 in both, as llama.cpp needs. Supports the
    Llama architecture (a GPT-2-style byte-level BPE tokenizer); raises ValueError naming anything else.
    ``name`` goes to ``general.name`` (default: the folder's name). Returns ``out_file``.
    """
    model_dir, out_file = Path(model_dir), Path(out_file)
    if kind not in GGUF_KINDS:
        raise ValueError(f"GGUF kind must be one of {GGUF_KINDS}, not {kind!r}")
    config = json.loads((model_dir / "config.json").read_text())
    hf_arch = (config.get("architectures") or ["<none given>"])[0]
    if hf_arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"cannot write GGUF for architecture {hf_arch!r} (from {model_dir / 'config.json'}): "
            f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
        )
    arch = SUPPORTED_ARCHITECTURES[hf_arch]
    hparams = _llama_hparams(config)

    out_file.parent.mkdir(parents=True, exist_ok=True)
    # written under a temporary name and renamed at the end, so a failed export leaves no GGUF that looks whole
    partial = out_file.with_name(out_file.name + ".partial")
    # use_temp_file spools tensors to disk as they are added, so a 7B model does not sit in RAM twice
    writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[arch], use_temp_file=True)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    _add_llama_hparams(writer, hparams, kind)
    _add_bpe_tokenizer(writer, model_dir, hparams["vocab_size"])

    name_map = gguf.get_tensor_name_map(arch, hparams["n_layers"])
    for hf_name, weights in _checkpoint_tensors(model_dir):
        if hf_name.endswith("rotary_emb.inv_freq"):  # recomputed by llama.cpp from the rope hyperparameters
            continue
        if hf_name == "lm_head.weight" and hparams["tied_embeddings"]:
            continue  # llama.cpp reuses token_embd.weight when there is no output.weight
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"cannot map tensor {hf_name!r} of {hf_arch} to a GGUF tensor name")
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            weights = _permute_for_llama_rope(weights, hparams["n_heads"], hparams["n_heads"])
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            weights = _permute_for_llama_rope(weights, hparams["n_heads"], hparams["n_kv_heads"])
        data, qtype = _encode_tensor(weights, kind)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out_file)
    return out_file


def _llama_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters llama.cpp reads, from a transformers Llama config.json (4.x or 5.x layout)."""
    # transformers 5 keeps rope settings in rope_parameters; 4.x in rope_theta and rope_scaling
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(f"RoPE scaling {rope_type!r} is not supported by this GGUF writer (only the default RoPE)")
    n_heads = config["num_attention_heads"]
    return {
        "context_length": config["max_position_embeddings"],
        "hidden_size": config["hidden_size"],
        "n_layers": config["num_hidden_layers"],
        "ffn_size": config["intermediate_size"],
        "n_heads": n_heads,
        "n_kv_heads": config.get("num_key_value_heads") or n_heads,
        "head_dim": config.get("head_dim") or config["hidden_size"] // n_heads,
        "rms_eps": config["rms_norm_eps"],
        "rope_theta": rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        "vocab_size": config["vocab_size"],
        "tied_embeddings": bool(config.get("tie_word_embeddings", False)),
    }


def _add_llama_hparams(writer: gguf.GGUFWriter, hp: dict[str, Any], kind: str) -> None:
    # the keys llama.cpp writes for SmolLM2 (see the packaged GGUF), in its order
    writer.add_block_count(hp["n_layers"])
    writer.add_context_length(hp["context_length"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["ffn_size"])
    writer.add_head_count(hp["n_heads"])
    writer.add_head_count_kv(hp["n_kv_heads"])
    writer.add_rope_freq_base(hp["rope_theta"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    writer.add_file_type(FILE_TYPES[kind])
    writer.add_vocab_size(hp["vocab_size"])
    writer.add_rope_dimension_count(hp["head_dim"])
    if hp["head_dim"] != hp["hidden_size"] // hp["n_heads"]:
        # llama.cpp assumes hidden_size / n_heads unless told otherwise
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _permute_for_llama_rope(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Reorder q/k projection rows from transformers' rotary layout (rotate the two halves of each head)
    to llama.cpp's (rotate adjacent pairs): ``permute`` in convert_hf_to_gguf.py's LlamaModel.
    transformers' GGUF loader undoes exactly this."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _encode_tensor(weights: np.ndarray, kind: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """(data, GGML type) the way llama.cpp's converter stores a tensor for this file kind."""
    f32, f16, q8 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0
    if weights.ndim <= 1:
        qtype = f32  # llama.cpp's kernels take norms and biases in F32 only
    elif kind == "q8_0" and weights.shape[-1] % gguf.GGML_QUANT_SIZES[q8][0] == 0:
        qtype = q8  # Q8_0 packs blocks of 32 values along a row
    else:
        qtype = f16  # llama.cpp's fallback for rows Q8_0 cannot pack
    return gguf.quants.quantize(weights.astype(np.float32), qtype), qtype


def _checkpoint_tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) for every tensor of the checkpoint, one at a time."""
    import torch
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"no safetensors checkpoint (model.safetensors or its index) in {model_dir}")
    for file in files:
        # framework "pt" because numpy has no bfloat16
        with safe_open(str(model_dir / file), framework="pt") as fh:
            for key in fh.keys():
                yield key, fh.get_tensor(key).to(torch.float32).numpy()


# llama.cpp names the regex that splits text before BPE ("tokenizer.ggml.pre"). convert_hf_to_gguf.py finds it
# by hashing how the tokenizer encodes a probe text and looking the hash up in a table of known models; we read
# it off tokenizer.json's pre_tokenizer instead, for the shapes whose llama.cpp regexes split text the same way.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer_parts(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    pre = pre or {}
    return list(pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else [pre]


def _llama_cpp_pre_tokenizer(pre: dict[str, Any] | None) -> str:
    def byte_level(part, use_regex):
        return part.get("type") == "ByteLevel" and part.get("use_regex", True) == use_regex

    parts = _pre_tokenizer_parts(pre)
    if len(parts) == 1 and byte_level(parts[0], True):
        return "gpt2"  # GPT-2's regex, which llama.cpp's gpt2 pre-tokenizer also uses
    digits_alone = parts[0].get("type") == "Digits" and parts[0].get("individual_digits")
    if len(parts) == 2 and digits_alone and byte_level(parts[1], True):
        return "smollm"  # each digit alone, then GPT-2's regex (SmolLM, StarCoder)
    if (
        len(parts) == 2 and parts[0].get("type") == "Split"
        and (parts[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT and byte_level(parts[1], False)
    ):
        return "llama-bpe"  # Llama 3
    raise ValueError(f"no known llama.cpp pre-tokenizer splits text like this tokenizer's: {json.dumps(pre)[:300]}")


def _add_bpe_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """The tokenizer as llama.cpp's converter writes a GPT-2-style BPE one (``_set_vocab_gpt2``): tokens
    and their types, the pre-tokenizer, merges, special token ids, add_bos/add_eos and the chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise ValueError(
            f"only byte-level BPE tokenizers (GPT-2 style) are supported; {model_dir} has a "
            f"{model.get('type')} model with a {decoder.get('type')} decoder"
        )
    tokens, token_types = _vocab_with_types(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_llama_cpp_pre_tokenizer(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    # whether a space is put before the text, from the byte-level step (transformers' GGUF loader reads it back)
    byte_level_steps = [p for p in _pre_tokenizer_parts(spec.get("pre_tokenizer")) if p.get("type") == "ByteLevel"]
    prefix_space = any(p.get("add_prefix_space") for p in byte_level_steps)
    writer.add_add_space_prefix(prefix_space)

    # merges, bos/eos/unk/pad ids and the chat template, read the way convert_hf_to_gguf.py reads them
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if special.chat_template is None and tokenizer.chat_template:  # older gguf packages miss chat_template.jinja
        special.chat_template = tokenizer.chat_template
    # Whether BOS/EOS are added to a plain encode, from what the transformers tokenizer does: tokenizer_config
    # often does not say, and a missing flag leaves it to llama.cpp's default for the vocabulary type.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token.setdefault("bos", tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    special.add_special_token.setdefault("eos", tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id)
    special.add_to_gguf(writer, quiet=True)


def _vocab_with_types(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id below vocab_size with its token text and GGUF token type (``get_vocab_base`` in
    convert_hf_to_gguf.py): special added tokens are CONTROL, other added tokens USER_DEFINED, ids the
    tokenizer does not have (embedding rows padded past the vocabulary) UNUSED placeholders."""
    by_id = {i: tok for tok, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ValueError(f"the tokenizer has ids up to {max(by_id)}, past the model's vocab_size {vocab_size}")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        text = by_id[i]
        tokens.append(text)
        if i not in added:
            types.append(gguf.TokenType.NORMAL)
        elif added[i].special or (text.startswith("<|") and text.endswith("|>")):
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.USER_DEFINED)
    return tokens, types


# --- Ollama -------------------------------------------------------------------------------------------


def write_modelfile(gguf_file: Path, out_file: Path, system: str | None = None) -> Path:
    """Write an Ollama Modelfile for ``gguf_file``: ``FROM`` it (relative to the Modelfile), a ChatML
    ``TEMPLATE`` in Go template syntax, ``PARAMETER stop`` on the ChatML markers, and ``SYSTEM``: ``system``,
    else the default system prompt the GGUF's chat template inserts (SmolLM2 has one), else none.

    The template is derived from the GGUF's ``tokenizer.chat_template``: when rendering it gives the ChatML
    turns ``<|im_start|>role\\n...<|im_end|>\\n`` we use the ChatML Go template; when it does not (or
    there is none), the ChatML template is still written, under a comment that says it is a guess.
    Returns ``out_file``.
    """
    gguf_file, out_file = Path(gguf_file), Path(out_file)
    chatml, default_system = _chatml_shape(_gguf_chat_template(gguf_file))
    system = system if system is not None else default_system
    source = os.path.relpath(gguf_file.resolve(), out_file.resolve().parent)
    lines = [f"FROM ./{source}" if not source.startswith("..") else f"FROM {gguf_file.resolve()}", ""]
    if not chatml:
        lines += ["# The model's chat template is not ChatML (or is missing): this TEMPLATE is a guess; check it.", ""]
    lines += [f'TEMPLATE """{CHATML_TEMPLATE}"""', ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{stop}"' for stop in CHATML_STOPS]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_file


def _gguf_chat_template(gguf_file: Path) -> str | None:
    field = gguf.GGUFReader(str(gguf_file)).fields.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    return field.contents() if field is not None else None


def _chatml_shape(template: str | None) -> tuple[bool, str | None]:
    """(is the template ChatML, the system prompt it adds when the conversation has none)."""
    if not template:
        return False, None
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        rendered = ImmutableSandboxedEnvironment().from_string(template).render(
            messages=[{"role": "user", "content": "USER-TEXT"}], add_generation_prompt=True,
            bos_token="", eos_token="",
        )
    except Exception:  # a template using helpers only transformers defines: not one we can vouch for
        return False, None
    turn = "<|im_start|>user\nUSER-TEXT<|im_end|>\n<|im_start|>assistant\n"
    if not rendered.endswith(turn):
        return False, None
    prefix = rendered[: -len(turn)]
    found = re.fullmatch(r"<\|im_start\|>system\n(.*)<\|im_end\|>\n", prefix, flags=re.DOTALL)
    return True, found.group(1) if found else None


# --- checks -------------------------------------------------------------------------------------------


def check_gguf_logits(model_dir: Path, gguf_file: Path, prompt: str = DEFAULT_CHECK_PROMPT) -> dict[str, Any]:
    """Run ``prompt`` through the merged checkpoint and through the GGUF as transformers' GGUF loader
    reads it back (dequantized), both float32 on CPU, and compare.

    Returns ``max_abs_diff`` / ``mean_abs_diff`` over all logits, ``argmax_agreement`` (share of positions
    whose most likely next token is the same), ``tokens`` (prompt length), and ``tokenizer_match`` (the
    tokenizer rebuilt from the GGUF encodes the prompt to the same ids as the checkpoint's).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, gguf_file = Path(model_dir), Path(gguf_file)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    gguf_tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    ids = hf_tokenizer(prompt, return_tensors="pt")["input_ids"]

    def logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits[0]

    # one model in memory at a time
    reference = logits(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32))
    exported = logits(
        AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    )
    diff = (exported - reference).abs()
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "argmax_agreement": float((exported.argmax(-1) == reference.argmax(-1)).float().mean()),
        "tokens": int(ids.shape[1]),
        "tokenizer_match": gguf_tokenizer(prompt)["input_ids"] == ids[0].tolist(),
    }


def logits_check_failures(check: dict[str, Any], kind: str) -> list[str]:
    """What in ``check`` (from :func:`check_gguf_logits`) is outside ``LOGITS_TOLERANCES[kind]``."""
    tol = LOGITS_TOLERANCES[kind]
    problems = []
    if check["max_abs_diff"] > tol["max_abs_diff"]:
        problems.append(f"max |logit diff| {check['max_abs_diff']:.4g} > {tol['max_abs_diff']}")
    if check["mean_abs_diff"] > tol["mean_abs_diff"]:
        problems.append(f"mean |logit diff| {check['mean_abs_diff']:.4g} > {tol['mean_abs_diff']}")
    if check["argmax_agreement"] < tol["min_argmax_agreement"]:
        problems.append(f"argmax agreement {check['argmax_agreement']:.3f} < {tol['min_argmax_agreement']}")
    if not check["tokenizer_match"]:
        problems.append("the GGUF's tokenizer encodes the check prompt differently")
    return problems


# --- the trainer's entry point ------------------------------------------------------------------------


def export_run(run_dir: Path, base_path: str | Path, gguf: str = "none", merged: bool = False) -> dict[str, Any]:
    """Export a finished run (``run_dir/adapter`` from ``train run``); returns the summary for its manifest.

    ``merged``: keep the merged checkpoint in ``run_dir/merged/``. ``gguf`` (``none``, ``f16``, ``q8_0``):
    write ``run_dir/model-{gguf}.gguf`` and ``run_dir/Modelfile`` and check the GGUF's logits against the
    merged checkpoint; the GGUF is made from the merge, which is removed afterwards unless ``merged``.
    Raises ExportCheckError (after writing the files, and keeping the merge to look into) when the check is
    outside ``LOGITS_TOLERANCES``. Paths in the summary are relative to ``run_dir``.
    """
    run_dir = Path(run_dir)
    if gguf not in ("none", *GGUF_KINDS):
        raise ValueError(f"gguf must be one of {('none', *GGUF_KINDS)}, not {gguf!r}")
    summary: dict[str, Any] = {"merged": None, "gguf": None, "modelfile": None, "logits_check": None}
    if not merged and gguf == "none":
        return summary
    merged_dir = merge_adapter(base_path, run_dir / "adapter", run_dir / "merged")
    summary["merged"] = merged_dir.name
    if gguf != "none":
        gguf_file = write_gguf(merged_dir, run_dir / f"model-{gguf}.gguf", gguf, name=run_dir.name)
        modelfile = write_modelfile(gguf_file, run_dir / "Modelfile")
        check = check_gguf_logits(merged_dir, gguf_file)
        summary["gguf"] = {"path": gguf_file.name, "kind": gguf, "bytes": gguf_file.stat().st_size}
        summary["modelfile"] = modelfile.name
        summary["logits_check"] = {**check, "tolerance": LOGITS_TOLERANCES[gguf]}
        if problems := logits_check_failures(check, gguf):
            raise ExportCheckError(f"{gguf_file} does not match {merged_dir}: " + "; ".join(problems), summary)
    if not merged:
        shutil.rmtree(merged_dir)  # only the GGUF was asked for, and a merged 7B model is 14 GB
        summary["merged"] = None
    return summary
