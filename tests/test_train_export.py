"""train/export.py on CPU with the embedded SmolLM2: a LoRA adapter with random (seeded) non-zero weights stands
in for a trained one; export_run makes an f16 GGUF with its Modelfile and logits check, merge_adapter and
write_gguf a merge and a q8_0 GGUF, all read back with gguf's reader and transformers' GGUF loader. Real
components, no mocks; about a minute on CPU, most of it in transformers' GGUF loader."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import gguf
import pytest
import torch

from train.export import (
    DEFAULT_CHECK_PROMPT,
    LOGITS_TOLERANCES,
    check_gguf_logits,
    export_run,
    logits_check_failures,
    merge_adapter,
    write_gguf,
    write_modelfile,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # The models are small and most of the time goes to Python (GGUF parsing); on a shared 2-core machine
    # torch's second intra-op thread only spin-waits, which made this module twice as slow.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits[0]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A run folder holding only ``adapter/`` (as ``train run`` leaves it), with the logits of the PeftModel
    and of the bare base for DEFAULT_CHECK_PROMPT."""
    from transformers import AutoTokenizer

    from curate.models import smollm2_model_dir
    from tests.conftest import perturbed_adapter

    base_dir = smollm2_model_dir()
    run_dir = tmp_path_factory.mktemp("run")
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = perturbed_adapter(run_dir / "adapter", scale=0.05)  # the merge must change the model
    ids = tokenizer(DEFAULT_CHECK_PROMPT, return_tensors="pt")["input_ids"]
    peft_logits = _logits(model, ids)
    with model.disable_adapter():
        base_logits = _logits(model, ids)
    return SimpleNamespace(base_dir=base_dir, run_dir=run_dir, ids=ids, peft_logits=peft_logits, base_logits=base_logits)


@pytest.fixture(scope="module")
def merged_dir(adapter, tmp_path_factory):
    return merge_adapter(adapter.base_dir, adapter.run_dir / "adapter", tmp_path_factory.mktemp("merge") / "merged")


@pytest.fixture(scope="module")
def f16_run(adapter):
    """export_run(gguf=f16, merged=False): the summary; the files are in adapter.run_dir."""
    return export_run(adapter.run_dir, adapter.base_dir, gguf="f16", merged=False)


def test_merged_checkpoint_computes_what_the_adapter_computes(adapter, merged_dir):
    from transformers import AutoModelForCausalLM

    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in merged_dir.iterdir()}
    assert not (merged_dir / "adapter_config.json").exists()  # a plain checkpoint, no peft left
    merged = _logits(AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32), adapter.ids)
    # the merge is stored in float16: the logits move by rounding only
    assert (merged - adapter.peft_logits).abs().max() < 0.2
    assert torch.equal(merged.argmax(-1), adapter.peft_logits.argmax(-1))
    assert (merged - adapter.base_logits).abs().max() > 1.0  # the adapter did change the model


def test_f16_gguf_mirrors_llama_cpp_and_computes_the_merged_logits(adapter, f16_run):
    from curate.models import smollm2_gguf

    path = adapter.run_dir / "model-f16.gguf"
    assert f16_run["gguf"] == {"path": "model-f16.gguf", "kind": "f16", "bytes": path.stat().st_size}
    assert f16_run["merged"] is None and not (adapter.run_dir / "merged").exists()  # only a step to the GGUF
    ours, llama_cpp = gguf.GGUFReader(str(path)), gguf.GGUFReader(str(smollm2_gguf()))

    def field(reader, key):
        return reader.fields[key].contents()

    assert field(ours, "general.architecture") == "llama"
    assert field(ours, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    # the hyperparameters and tokenizer keys llama.cpp wrote for this model, with its values
    for key in llama_cpp.fields:
        if key.startswith("llama.") or key in (
            "tokenizer.ggml.model", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template",
        ):
            assert field(ours, key) == field(llama_cpp, key), key
    assert len(field(ours, "tokenizer.ggml.tokens")) == 49152 and len(field(ours, "tokenizer.ggml.merges")) == 48900
    # curate.models restores the digit-splitting step transformers drops when it reads the original GGUF, so the
    # checkpoint's tokenizer.json is Sequence[Digits, ByteLevel] and the export names llama.cpp's own "smollm"
    assert field(ours, "tokenizer.ggml.pre") == field(llama_cpp, "tokenizer.ggml.pre") == "smollm"
    # the same tensors: tied embeddings, so token_embd and no output.weight
    assert sorted(t.name for t in ours.tensors) == sorted(t.name for t in llama_cpp.tensors)
    assert "output.weight" not in {t.name for t in ours.tensors}
    types = {t.name: t.tensor_type for t in ours.tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == gguf.GGMLQuantizationType.F32

    check = f16_run["logits_check"]
    # the merge is float16 already: f16 copies it exactly, any diff would be a layout or hyperparameter error
    assert check["max_abs_diff"] < 1e-3 and check["argmax_agreement"] == 1.0
    assert check["tokenizer_match"] is True and check["tokens"] == adapter.ids.shape[1]
    assert check["tolerance"] == LOGITS_TOLERANCES["f16"]


def test_q8_0_gguf_is_smaller_and_within_its_tolerance(merged_dir, f16_run, tmp_path):
    path = write_gguf(merged_dir, tmp_path / "model-q8_0.gguf", "q8_0")
    assert path.stat().st_size < 0.6 * f16_run["gguf"]["bytes"]
    types = Counter(t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors)
    assert types == {"Q8_0": 211, "F32": 61}  # every 2-D weight of SmolLM2 has rows a multiple of 32 long
    check = check_gguf_logits(merged_dir, path)
    assert logits_check_failures(check, "q8_0") == []
    assert 0 < check["max_abs_diff"] and check["argmax_agreement"] >= 0.85 and check["tokenizer_match"]


def test_modelfile_uses_chatml_the_stop_token_and_smollm2s_default_system_prompt(adapter, f16_run):
    text = (adapter.run_dir / "Modelfile").read_text()
    assert f16_run["modelfile"] == "Modelfile"
    assert text.startswith("FROM ./model-f16.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert "<|im_start|>system\n{{ .System }}<|im_end|>\n" in text and "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n" in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert "is a guess" not in text  # the chat template was recognised as ChatML


def test_modelfile_for_a_template_that_is_not_chatml_says_so(tmp_path):
    # a GGUF holding only a (Llama 3 style) chat template is enough for write_modelfile, and quick to read
    model = tmp_path / "models" / "llama3.gguf"
    model.parent.mkdir()
    writer = gguf.GGUFWriter(str(model), "llama")
    writer.add_chat_template("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    text = write_modelfile(model, tmp_path / "ollama" / "Modelfile", system="Be brief.").read_text()
    assert text.startswith(f"FROM {model.resolve()}\n")  # not beside the Modelfile: an absolute path
    assert "is a guess" in text and 'SYSTEM """Be brief."""' in text and 'PARAMETER stop "<|im_end|>"' in text


def test_llama_cpp_pre_tokenizer_is_read_off_the_tokenizers_pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    from train.export import _LLAMA3_SPLIT, _llama_cpp_pre_tokenizer

    def spec(pre):  # the pre_tokenizer part of a tokenizer.json, as the tokenizers library writes it
        return json.loads(pre.__getstate__())

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert _llama_cpp_pre_tokenizer(spec(byte_level)) == "gpt2"
    digits = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    assert _llama_cpp_pre_tokenizer(spec(digits)) == "smollm"
    llama3 = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    assert _llama_cpp_pre_tokenizer(spec(llama3)) == "llama-bpe"
    with pytest.raises(ValueError, match="pre-tokenizer"):
        _llama_cpp_pre_tokenizer(spec(pre_tokenizers.Whitespace()))


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        write_gguf(tmp_path, tmp_path / "x.gguf", "f16")
    assert not (tmp_path / "x.gguf").exists()


def test_export_run_without_exports_does_nothing_and_rejects_unknown_kinds(tmp_path):
    assert export_run(tmp_path, "unused", gguf="none", merged=False) == {"merged": None, "gguf": None, "modelfile": None, "logits_check": None}
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="q4_k"):
        export_run(tmp_path, "unused", gguf="q4_k", merged=False)


def test_logits_check_failures_name_what_is_out_of_tolerance():
    # the numbers a GGUF with q/k left in transformers' rotary layout gave (see LOGITS_TOLERANCES)
    broken = {"max_abs_diff": 35.7, "mean_abs_diff": 7.25, "argmax_agreement": 0.38, "tokens": 65, "tokenizer_match": True}
    assert len(logits_check_failures(broken, "q8_0")) == 3
    fine = {"max_abs_diff": 1.3, "mean_abs_diff": 0.2, "argmax_agreement": 0.97, "tokens": 65, "tokenizer_match": True}
    assert logits_check_failures(fine, "q8_0") == []
    assert logits_check_failures({**fine, "tokenizer_match": False}, "q8_0") == ["the GGUF's tokenizer encodes the check prompt differently"]
    assert [p.split()[0] for p in logits_check_failures(fine, "f16")] == ["max", "mean"]  # q8_0 noise is too much for f16
