"""Loading a causal LM for inference: what evaluation and the local judge share."""

from __future__ import annotations

from typing import Any


def load_model(model: str = "embedded", adapter: str | None = None, device: str = "auto") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, description): the embedded SmolLM2, a local path or hub id, or a merged model;
    with ``adapter``, a peft adapter on top. fp16/bf16 on a GPU, fp32 on CPU; in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from chat.conversations import load_tokenizer
    from curate.models import resolve_device, smollm2_model_dir

    device = resolve_device(device)
    base = str(smollm2_model_dir()) if model == "embedded" else model
    dtype = torch.float32 if device == "cpu" else (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    net = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)
    if adapter:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter)
    net.eval()
    desc = {"model": "embedded:SmolLM2-135M-Instruct" if model == "embedded" else model, "adapter": adapter,
            "device": device, "dtype": str(dtype).replace("torch.", "")}
    return net, load_tokenizer(base), desc
