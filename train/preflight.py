"""Pre-flight checks for `train run`: fail in seconds with a clear message, not an hour into a run.

Before any weights load (from the model's config alone):

- options that need a GPU (fp16, paged/8-bit optimizers) on a machine without one;
- ``max_seq_len`` above the model's ``max_position_embeddings``;
- the estimated peak memory (:func:`estimate_memory`, printed) above what the device has free, or above
  ``memory_limit_gb``.

After the data is encoded: no trainable example at all (empty input, or everything masked: no answer,
only empty answers, or cut to nothing), or none from one data source or the validation file, with the
reject reasons counted. After the model loads: :func:`check_packing_isolation`, that packed examples do
not attend to each other under the chosen attention implementation (it silently trains on garbage
otherwise). The projected time and cost after the first steps is :class:`train.callbacks.Projection`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

from train.config import TrainConfig

GiB = 1024**3
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class PreflightError(ValueError):
    """Training cannot start (or cannot work); the message says why and what to change."""


def tokens_per_micro_batch(cfg: TrainConfig) -> int:
    """Packed micro-batches hold ``batch_tokens // max_seq_len`` rows of ``max_seq_len`` tokens."""
    return max(1, cfg.optim.batch_tokens // cfg.max_seq_len) * cfg.max_seq_len


def _shapes(mc: Any) -> dict[str, int]:
    h = mc.hidden_size
    nh = mc.num_attention_heads
    hd = getattr(mc, "head_dim", None) or h // nh
    return {
        "h": h, "layers": mc.num_hidden_layers, "i": mc.intermediate_size, "vocab": mc.vocab_size,
        "q": nh * hd, "kv": (getattr(mc, "num_key_value_heads", None) or nh) * hd,
        "tied": int(bool(getattr(mc, "tie_word_embeddings", False))),
    }


def _linear_shapes(s: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear of one decoder layer (Llama family naming)."""
    h, i = s["h"], s["i"]
    return {
        "q_proj": (h, s["q"]), "k_proj": (h, s["kv"]), "v_proj": (h, s["kv"]), "o_proj": (s["q"], h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }


def estimate_memory(cfg: TrainConfig, model_config: Any, half: bool) -> dict[str, float]:
    """Estimated peak training memory in GiB, by part, from the model's config (no weights loaded).

    A Llama-family shape is assumed (q/k/v/o + gated MLP). The parts:
    - base weights: NF4 linears at 0.516 bytes/parameter (4 bits plus double-quantized block scales) and
      embeddings / LM head in fp32 (peft's ``prepare_model_for_kbit_training`` upcasts them) for QLoRA;
      compute dtype for LoRA/DoRA;
    - adapter: fp32 weights, gradients and AdamW states (2 bytes/parameter for 8-bit optimizers, 8 for
      AdamW);
    - activations of one packed micro-batch: each layer's input kept by gradient checkpointing plus one
      layer recomputed (every layer without checkpointing), and a tile of fp32 logits with its gradient
      (TRL's fused LM head never materializes all of them);
    - 0.6 GiB of CUDA context and allocator slack, plus 10%.
    """
    s = _shapes(model_config)
    cb = 2 if half else 4
    linears = _linear_shapes(s)
    per_layer = sum(a * b for a, b in linears.values())
    embed = s["vocab"] * s["h"] * (1 if s["tied"] else 2)
    if cfg.method.kind == "qlora":
        base = s["layers"] * per_layer * 0.516 + embed * 4
    else:
        base = (s["layers"] * per_layer + embed) * cb
    targets = cfg.method.target_modules
    patterns = targets if isinstance(targets, list) else [targets]
    names = list(linears) if targets == "all-linear" else [n for n in linears if any(re.fullmatch(t, n) or t == n for t in patterns)]
    lora_params = s["layers"] * sum(cfg.method.r * (linears[n][0] + linears[n][1]) for n in names)
    optim = cfg.optim.optimizer
    state_bytes = 2 if optim in ("paged_adamw_8bit", "adamw_8bit") or (optim == "auto" and half) else 8
    adapter = lora_params * (4 + 4 + state_bytes)
    t = tokens_per_micro_batch(cfg)
    # calibrated on H100 runs (bench/train_bench.py): SmolLM2 LoRA at 4k/8k tokens, a 7B shape at 2k
    one_layer = t * (15 * s["h"] + 6 * s["i"]) * cb
    if cfg.gradient_checkpointing:
        acts = s["layers"] * t * s["h"] * cb + one_layer
    else:
        acts = s["layers"] * one_layer
    if cfg.method.kind == "qlora":
        acts += 2 * max(a * b for a, b in linears.values()) * cb  # a dequantized weight and its transpose
    # TRL's fused LM head scores only labelled positions, in tiles, and never holds the whole logits
    logits = min(t, 4096) * s["vocab"] * 4 * 2
    parts = {"base_weights": base, "adapter_and_optimizer": adapter, "activations": acts, "logits": logits}
    gib = {k: v / GiB for k, v in parts.items()}
    gib["overhead"] = 0.6 + 0.1 * sum(gib.values())
    gib["total"] = sum(gib.values())
    gib["lora_parameters"] = float(lora_params)
    return {k: round(v, 3) for k, v in gib.items()}


def device_memory_free() -> tuple[str, float]:
    """(device name, GiB free): the first CUDA device, else this machine's available RAM."""
    import torch

    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return torch.cuda.get_device_name(0), free / GiB
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return "cpu", int(info["MemAvailable"].split()[0]) * 1024 / GiB
    except (OSError, KeyError, ValueError):
        return "cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB


def check_before_loading(cfg: TrainConfig, model_config: Any, half: bool) -> dict[str, Any]:
    """The checks that need only the model's config; returns the memory estimate (and prints it).

    Raises :class:`PreflightError` naming the option and what to change."""
    import torch

    problems = []
    if not torch.cuda.is_available():
        if cfg.precision == "fp16":
            problems.append("precision fp16 needs a CUDA GPU and none is visible: use precision auto, bf16 or fp32")
        if cfg.optim.optimizer in ("paged_adamw_8bit", "adamw_8bit"):
            problems.append(f"optimizer {cfg.optim.optimizer} needs a CUDA GPU (bitsandbytes) and none is visible: use auto or adamw_torch")
    max_pos = getattr(model_config, "max_position_embeddings", None)
    if max_pos and cfg.max_seq_len > max_pos:
        problems.append(f"max_seq_len {cfg.max_seq_len} is above the model's max_position_embeddings {max_pos}")
    if problems:
        raise PreflightError("; ".join(problems))
    estimate = estimate_memory(cfg, model_config, half)
    device, free = device_memory_free()
    budget = cfg.memory_limit_gb if cfg.memory_limit_gb is not None else free
    parts = ", ".join(f"{k} {v:.2f}" for k, v in estimate.items() if k not in ("total", "lora_parameters"))
    print(f"pre-flight: estimated peak memory {estimate['total']:.2f} GiB ({parts}); {device} has {free:.1f} GiB free")
    if estimate["total"] > budget:
        raise PreflightError(
            f"estimated peak memory {estimate['total']:.2f} GiB ({parts}) is above the {budget:.1f} GiB "
            f"{'of memory_limit_gb' if cfg.memory_limit_gb is not None else f'free on {device}'}: lower optim.batch_tokens "
            f"or max_seq_len, use method qlora, or turn gradient_checkpointing on"
        )
    return {**estimate, "device": device, "device_free_gib": round(free, 2)}


def check_data(n_train: int, rejected: list[dict[str, Any]], rejected_file: str, sources: dict[str, tuple[int, int]] | None = None) -> None:
    """At least one trainable example, and at least one from every input that had records encoded
    (``sources``: input -> (records encoded, records kept); a data source or a validation file whose every
    record was rejected is a mistake, not a mix); otherwise say why its records went, counted by reason."""
    if not n_train:
        if not rejected:
            raise PreflightError("the training data is empty: the data files hold no records")
        reasons = Counter(r["reason"] for r in rejected if r.get("split", "train") == "train")
        raise PreflightError(f"no trainable example: all {sum(reasons.values())} records were rejected ({_counted(reasons)}); see {rejected_file}")
    for source, (encoded, kept) in (sources or {}).items():
        if encoded and not kept:
            reasons = Counter(r["reason"] for r in rejected if r.get("source") == source and r.get("stage") != "read")
            raise PreflightError(f"{source}: nothing to learn: all {encoded} of its records were rejected ({_counted(reasons)}); see {rejected_file}")


def _counted(reasons: Counter[str]) -> str:
    return "; ".join(f"{n} x {why}" for why, n in reasons.most_common(5))


def check_packing_isolation(model: Any) -> float:
    """Packed examples must not attend to each other: the logits of a short sequence packed after another
    (position ids restarting) must equal its logits run alone. Returns that largest difference.

    Kernels give slightly different numbers for different sequence lengths (bitsandbytes' 4-bit CPU path
    by up to ~1% of the logit scale), so the first sequence of the pack, which causality alone keeps
    unchanged, measures that noise; leaking attention moves the second one by tens of logits.
    With sdpa, transformers builds the block-diagonal mask from the restarting position ids only when no
    KV cache is in play, so this runs with ``use_cache=False`` exactly as training does."""
    import torch

    device = next(p for p in model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(100, 1000, (1, 12), generator=gen).to(device)
    b = torch.randint(100, 1000, (1, 9), generator=gen).to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        alone_a = model(input_ids=a, use_cache=False).logits.float()
        alone_b = model(input_ids=b, use_cache=False).logits.float()
        pos = torch.cat([torch.arange(12), torch.arange(9)])[None].to(device)
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=pos, use_cache=False).logits.float()
    model.train(was_training)
    noise = (packed[:, :12] - alone_a).abs().max().item()
    diff = (packed[:, 12:] - alone_b).abs().max().item()
    scale = alone_b.abs().max().item() or 1.0
    if diff > 5 * noise + 0.01 * scale:
        raise PreflightError(
            f"packed examples attend to each other under attn_implementation "
            f"{getattr(model.config, '_attn_implementation', '?')!r} (logits differ by {diff:.3g}, numeric noise "
            f"{noise:.3g}): set attn_implementation to sdpa or flash_attention_2"
        )
    return diff
