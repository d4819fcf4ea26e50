"""torch_varlen (train/attention.py): a flattened micro-batch of packed examples computes, example by example,
what each computes alone (forward and gradients), and anything that is not a packed pass (generation with a
KV cache and a padding mask) goes through sdpa unchanged. On CPU the packed path runs sdpa per example; the
CUDA kernel is the same segmentation fed to FlashAttention-2, checked by the trainer's pre-flight on the GPU."""

from __future__ import annotations

import pytest


def test_cu_seqlens_from_restarting_position_ids():
    import torch

    from train.attention import cu_seqlens

    cu, longest = cu_seqlens(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]))
    assert cu.tolist() == [0, 3, 5, 9] and longest == 4 and cu.dtype == torch.int32
    # rows each start an example, even when a row does not begin at position 0 (a continued row)
    cu, longest = cu_seqlens(torch.tensor([[3, 4, 0, 1], [0, 1, 2, 0]]))
    assert cu.tolist() == [0, 2, 4, 7, 8] and longest == 3


@pytest.fixture(scope="module")
def models():
    import torch
    from transformers import AutoModelForCausalLM

    from curate.models import smollm2_model_dir
    from train.attention import register

    path = str(smollm2_model_dir())
    varlen = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=register())
    sdpa = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    assert varlen.config._attn_implementation == "torch_varlen"
    return varlen, sdpa


def test_flat_packed_examples_match_alone_forward_and_backward(models):
    import torch

    varlen, _ = models
    gen = torch.Generator().manual_seed(0)
    examples = [torch.randint(100, 5000, (n,), generator=gen) for n in (7, 11, 5)]
    ids = torch.cat(examples)[None]
    pos = torch.cat([torch.arange(len(e)) for e in examples])[None]
    varlen.zero_grad()
    packed = varlen(input_ids=ids, position_ids=pos, use_cache=False).logits
    packed[0, 7:18].sum().backward()  # only the second example's outputs
    grad_packed = varlen.model.layers[3].self_attn.q_proj.weight.grad.clone()
    start = 0
    for k, e in enumerate(examples):
        varlen.zero_grad()
        alone = varlen(input_ids=e[None], use_cache=False).logits
        assert (packed[0, start : start + len(e)] - alone[0]).abs().max().item() < 1e-3, k
        if k == 1:  # nothing of the other examples reaches the second one's gradient
            alone.sum().backward()
            grad_alone = varlen.model.layers[3].self_attn.q_proj.weight.grad
            assert ((grad_packed - grad_alone).abs().max() / grad_alone.abs().max()).item() < 1e-4
        start += len(e)


def test_generation_goes_through_sdpa_unchanged(models):
    from curate.models import smollm2_tokenizer_dir
    from chat.generate import generate

    varlen, sdpa = models
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    prompts = [[{"role": "user", "content": "Name a primary colour."}],
               [{"role": "user", "content": "What is the capital of France? Answer in one word, please."}]]
    a = generate(varlen, tok, prompts, max_new_tokens=12, batch_size=2)
    b = generate(sdpa, tok, prompts, max_new_tokens=12, batch_size=2)
    assert a == b and all(a)


def test_auto_picks_varlen_only_on_a_half_precision_gpu():
    import torch

    from train.attention import pick

    assert pick("eager", torch.bfloat16) == "eager"
    expected = "torch_varlen" if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8 else None
    assert pick(None, torch.bfloat16) == expected
    assert pick(None, torch.float32) is None


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="FlashAttention-2 varlen needs a CUDA GPU")
def test_cuda_flash_varlen_matches_sdpa_per_example():
    """On the GPU the packed path is aten's FlashAttention-2 varlen kernel: a random GQA Llama in bf16 gives
    each packed example the logits and gradients sdpa gives it alone (bf16 tolerance)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.attention import register

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=1000)
    ref = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16).cuda()
    varlen = LlamaForCausalLM._from_config(config, attn_implementation=register(), dtype=torch.bfloat16).cuda()
    varlen.load_state_dict(ref.state_dict())
    lengths = (37, 120, 5, 64)
    examples = [torch.randint(0, 1000, (n,), device="cuda") for n in lengths]
    pos = torch.cat([torch.arange(n, device="cuda") for n in lengths])[None]
    packed = varlen(input_ids=torch.cat(examples)[None], position_ids=pos, use_cache=False).logits.float()
    packed[0, 37:157].sum().backward()
    start = 0
    for k, e in enumerate(examples):
        alone = ref(input_ids=e[None], use_cache=False).logits.float()
        scale = alone.abs().max().item()
        assert (packed[0, start : start + len(e)] - alone[0]).abs().max().item() < 0.02 * scale, k
        if k == 1:
            alone.sum().backward()
        start += len(e)
    g_varlen = varlen.model.layers[1].self_attn.k_proj.weight.grad.float()
    g_ref = ref.model.layers[1].self_attn.k_proj.weight.grad.float()
    assert ((g_varlen - g_ref).abs().max() / g_ref.abs().max()).item() < 0.05

    # fp32 activations (a QLoRA model: peft keeps norms and LoRA weights in fp32) take the same kernel in the
    # model's half dtype, not a slow fp32 path: the result equals the bf16 call's, cast back to fp32
    from train.attention import varlen_attention_forward

    q, k, v = (torch.randn(1, h, 226, 32, device="cuda") for h in (8, 2, 2))
    pos = pos[:, :226]
    out32, _ = varlen_attention_forward(varlen.model.layers[0].self_attn, q, k, v, None, position_ids=pos)
    out16, _ = varlen_attention_forward(varlen.model.layers[0].self_attn, q.bfloat16(), k.bfloat16(), v.bfloat16(), None, position_ids=pos)
    assert out32.dtype == torch.float32 and torch.equal(out32, out16.float())
