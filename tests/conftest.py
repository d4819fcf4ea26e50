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


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (now)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server (portable build, installed by `make setup`) serving the
    packaged SmolLM2 GGUF on loopback as model ``smollm2``, with an API key: ``(base_url, key)``. One server
    per session, shared by every test that asks for it (the judge's and the serving tests)."""
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is installed by `make setup`")
    from curate.models import smollm2_gguf

    port, key = free_port(), "test-key-5f1"
    log = tmp_path_factory.mktemp("llama") / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "4096", "--api_key", key, "--model_alias", "smollm2"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {key}"}), timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"llama.cpp server did not come up: {log.read_text()[-2000:]}")
        yield url, key
    finally:
        proc.terminate()
        proc.wait(timeout=30)


_MAIN_MODULE = __import__("sys").modules["__main__"]


@pytest.fixture(autouse=True)
def _keep_the_main_module():
    """Streamlit's AppTest runs app/main.py as `__main__` and leaves it there; a later test that starts a
    process by spawn would then re-run the app script in the child. Put pytest's own `__main__` back."""
    yield
    import sys

    sys.modules["__main__"] = _MAIN_MODULE


def chromium_path() -> str:
    """Debian's Chromium for the browser tests; fails (never skips: CI must run them) with the way to install it."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, ("Chromium not found: the browser tests need Debian's chromium "
                   "(`make chromium` installs it as root, or run `sudo apt-get install chromium chromium-driver`)")
    return found
