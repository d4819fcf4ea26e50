from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture
def run_config(tmp_path):
    """Run a curate config given as a dict (paths relative to tmp_path) and return the RunResult."""
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    def _run(cfg: dict, **kwargs):
        cfg = {"name": "t", "tokenizer": None, **cfg}
        config = parse_config(cfg, tmp_path)
        return Pipeline(config, progress=False, strict=kwargs.pop("strict", None)).run(**kwargs)

    return _run


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def perturbed_adapter(folder: Path, scale: float, seed: int = 0):
    """A real peft LoRA (r=4, q/v) on the embedded SmolLM2 whose B matrices are seeded random values (peft
    starts them at zero, a no-op adapter), saved with the tokenizer to ``folder``; returns the PeftModel.
    A stand-in for a trained adapter where only "a different model" matters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.models import smollm2_model_dir

    base = AutoModelForCausalLM.from_pretrained(str(smollm2_model_dir()), dtype=torch.float32)
    with torch.random.fork_rng():  # lora_A's initialisation, seeded without touching the session's RNG
        torch.manual_seed(seed)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(smollm2_model_dir())).save_pretrained(str(folder))
    return model


_MAIN_MODULE = __import__("sys").modules["__main__"]


@pytest.fixture(autouse=True)
def _keep_the_main_module():
    """Streamlit's AppTest runs app/main.py as `__main__` and leaves it there; a later test that starts a
    process by spawn would then re-run the app script in the child. Put pytest's own `__main__` back."""
    yield
    import sys

    sys.modules["__main__"] = _MAIN_MODULE
