"""``torch_varlen``: packed-sequence attention through PyTorch's own FlashAttention-2 varlen kernel.

Padding-free packing concatenates a micro-batch into one sequence whose position ids restart at each
example. flash-attn's varlen kernels attend within each example only, at linear cost in the number of
examples, but the flash-attn package is a CUDA build users often lack. PyTorch ships the same kernel
(``aten._flash_attention_forward``, with its backward), so on an sm80+ GPU in bf16/fp16 this module
gives transformers an attention implementation that needs nothing else installed: no dense
block-diagonal mask (sdpa's would grow as tokens^2), no padding, no attention between examples.

Registered under :data:`NAME` with transformers' ``AttentionInterface`` and ``AttentionMaskInterface``.
Whenever the forward pass is not a packed training/scoring pass (a padding mask, a KV cache during
generation), it defers to transformers' sdpa path, so ``generate`` works unchanged. On CPU the packed
path runs the same segmentation through sdpa one example at a time: the reference the tests compare.
"""

from __future__ import annotations

from typing import Any

NAME = "torch_varlen"

_cache: dict[str, Any] = {}  # cu_seqlens of the position ids of the current forward pass (one per pass, not per layer)


def cu_seqlens(position_ids: Any) -> tuple[Any, int]:
    """Cumulative example lengths (int32, starting at 0) and the longest example, from position ids
    ``[rows, len]`` that restart at 0 where an example starts (each row also starts one)."""
    import torch

    if _cache.get("ids") is position_ids and _cache.get("version") == position_ids._version:
        return _cache["cu"], _cache["max"]
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    if starts.numel() == 0 or starts[0].item() != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    ends = torch.cat([starts[1:], starts.new_tensor([flat.numel()])])
    cu = torch.cat([starts, ends[-1:]]).to(torch.int32)
    longest = int((ends - starts).max().item())
    # holding the tensor keeps its memory from being reused by another pass's position ids
    _cache.update(ids=position_ids, version=position_ids._version, cu=cu, max=longest)
    return cu, longest


def _half_dtype(query, config) -> Any:
    """The dtype the kernel runs in: the query's if half; else (fp32 activations, as in a QLoRA model whose
    norms and LoRA weights peft keeps in fp32) autocast's, else the model's compute dtype."""
    import torch

    half = (torch.float16, torch.bfloat16)
    if query.dtype in half:
        return query.dtype
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    dtype = getattr(config, "dtype", None)
    return dtype if dtype in half else torch.bfloat16


def _packed(query, key, value, cu, longest: int, scaling: float | None, config=None):
    """``query`` ``[tokens, heads, dim]``, ``key``/``value`` ``[tokens, kv_heads, dim]`` -> ``[tokens, heads, dim]``
    in the query's dtype, causal within each example of ``cu``."""
    import torch
    import torch.nn.functional as F

    if query.is_cuda:
        dtype = _half_dtype(query, config)
        out = torch.ops.aten._flash_attention_forward(
            query.to(dtype), key.to(dtype), value.to(dtype), cu, cu, longest, longest, 0.0, True, False, scale=scaling
        )
        return out[0].to(query.dtype)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    pieces = []
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        pieces.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling).transpose(0, 1))
    return torch.cat(pieces)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """transformers' attention-function contract: ``query`` ``[batch, heads, q_len, dim]`` ->
    ``([batch, q_len, heads, dim], None)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    batch, heads, q_len, dim = query.shape
    if attention_mask is not None or key.shape[2] != q_len or position_ids is None or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    cu, longest = cu_seqlens(position_ids)
    flat = [t.transpose(1, 2).reshape(batch * q_len, t.shape[1], dim) for t in (query, key, value)]
    out = _packed(*flat, cu, longest, scaling, getattr(module, "config", None))
    return out.view(batch, q_len, heads, dim), None


def varlen_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                attention_mask=None, **kwargs):
    """No mask for a packed pass (the kernel is causal within each example); sdpa's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_offset == 0 and kv_offset == 0 and q_length == kv_length:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Make ``attn_implementation=torch_varlen`` loadable; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, varlen_mask)
    return NAME


def pick(requested: str | None, dtype: Any) -> str | None:
    """The attention to load: as configured; unset means :data:`NAME` on an sm80+ GPU in half precision
    (FlashAttention-2's requirements), else transformers' default (sdpa)."""
    import torch

    if requested:
        if requested == NAME:
            register()
        return requested
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8 and dtype in (torch.float16, torch.bfloat16):
        return register()
    return None
