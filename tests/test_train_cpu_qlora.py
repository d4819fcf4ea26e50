"""CPU QLoRA: training after an evaluation gets the same gradients as before it.

bitsandbytes repacks a 4-bit layer's weight for CPU inference the first time it runs without gradients (on CPUs
with AVX512-BF16) and its inference matmul has no autograd kernel; ``train.trainer.load_model`` turns that
repacking off for training (``keep_cpu_4bit_differentiable``). The real embedded SmolLM2 in NF4, real peft.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from curate.models import smollm2_model_dir  # noqa: E402
from train.config import parse_train_config  # noqa: E402
from train.trainer import load_model  # noqa: E402


def _adapter_grads(model, ids):
    model.train()
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path: on a GPU bitsandbytes never repacks")
def test_cpu_qlora_gradients_after_an_evaluation_equal_those_before_it():
    from peft import LoraConfig, get_peft_model

    cfg = parse_train_config({"name": "t", "base_model": "embedded", "data": [{"path": "x.jsonl"}],
                              "method": {"kind": "qlora"}, "precision": "fp32"})
    model = load_model(cfg, str(smollm2_model_dir()), torch.float32)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)
    torch.manual_seed(0)
    # LoRA B initialized non-zero too, so every adapter matrix has a gradient to compare
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(1))

    loss_before, grads_before = _adapter_grads(model, ids)
    model.eval()
    with torch.no_grad():  # what an evaluation step or a sample generation does
        model(input_ids=ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "an autograd kernel was not registered" would be an error here
        loss_after, grads_after = _adapter_grads(model, ids)

    assert len(grads_before) == 2 * 7 * model.config.num_hidden_layers  # A and B of 7 projections per layer
    assert loss_after == loss_before
    for name, grad in grads_before.items():
        assert torch.equal(grads_after[name], grad), name
