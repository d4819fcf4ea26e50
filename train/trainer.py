"""`train run`: QLoRA/LoRA/DoRA over chat records, with TRL doing the training loop.

What this module adds around TRL's ``SFTTrainer`` (everything else is transformers, peft and bitsandbytes):

- records come from any file curate reads (curate's export, or raw alpaca/ShareGPT/... files), mixed by
  weight, and are encoded by :class:`train.data.ChatEncoder` with the tokenizer's own template and an
  assistant-only loss mask; records with no trainable token are rejected with a reason before training;
- padding-free packing (TRL's best-fit-decreasing packing, position ids restart per example), so no
  compute goes to padding;
- a run folder: adapter (safetensors), tokenizer, ``manifest.json`` (config, data hash, base model,
  library versions, git revision), ``metrics.jsonl``, ``rejected.jsonl``.

This is the first slice of issue 4: early stopping, sample generations, merged/GGUF export, the loss
plot, the workspace row, resume and the pre-flight memory estimate are still to come.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.config import DataSource, TrainConfig
from train.data import ChatEncoder


@dataclass
class PreparedData:
    train: list[dict[str, list[int]]]
    validation: list[dict[str, list[int]]]
    rejected: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    digest: str = ""


def read_conversations(path: Path, source: DataSource) -> tuple[list[tuple[str, list[dict[str, str]]]], list[dict]]:
    """(``[(where, messages)]``, ``[bad]``) from one file of any shape curate reads."""
    from curate.readers import expand_paths, read_file
    from curate.shapes import Converter, ShapeError

    conv = Converter(source.shape, source.mapping)
    out, bad = [], []
    for file in expand_paths(str(path), Path("/")):
        for batch in read_file(file):
            bad += [{"where": f"{file}:{b.line}", "reason": b.error} for b in batch.bad]
            for line, rec in zip(batch.lines, batch.records):
                try:
                    _shape, roles, contents, _meta, _fixes = conv.convert(rec)
                except ShapeError as exc:
                    bad.append({"where": f"{file}:{line}", "reason": exc.message})
                    continue
                out.append((f"{file}:{line}", [{"role": r, "content": c} for r, c in zip(roles, contents)]))
                if source.limit and len(out) >= source.limit:
                    return out, bad
    return out, bad


def mix(sources: list[tuple[DataSource, list]], seed: int) -> tuple[list, dict[str, int]]:
    """Draw the training examples: a weighted source supplies ``weight`` of the total, the unweighted
    ones share the rest in proportion to their sizes (each used once). A weighted source smaller than
    its share is repeated; one larger is sampled."""
    rng = random.Random(seed)
    unweighted = [items for s, items in sources if not s.weight]
    w_total = sum(s.weight or 0 for s, _ in sources)
    base = sum(len(x) for x in unweighted)
    total = round(base / (1 - w_total)) if unweighted and w_total < 1 else sum(len(x) for _, x in sources)
    out, counts = [], {}
    for s, items in sources:
        n = len(items) if not s.weight else round(s.weight * total)
        if s.weight and items:
            picked = [items[i % len(items)] for i in range(n)] if n > len(items) else rng.sample(items, n)
        else:
            picked = list(items)
        counts[s.path] = len(picked)
        out += picked
    rng.shuffle(out)
    return out, counts


def prepare_data(cfg: TrainConfig, tokenizer) -> PreparedData:
    encoder = ChatEncoder(tokenizer, cfg.max_seq_len, cfg.train_on_inputs)
    digest = hashlib.sha256()
    rejected: list[dict] = []
    per_source = []
    for source in cfg.data:
        convs, bad = read_conversations(cfg.resolve(source.path), source)
        rejected += [{**b, "stage": "read"} for b in bad]
        per_source.append((source, convs))
    mixed, counts = mix(per_source, cfg.seed)

    def encode(items, split):
        rows, truncated = [], 0
        for where, messages in items:
            e = encoder.encode(messages)
            digest.update(json.dumps(messages, ensure_ascii=False).encode())
            if e.n_trainable == 0:
                why = "truncated: no assistant token left within max_seq_len" if e.truncated else "no trainable token (no assistant turn)"
                rejected.append({"where": where, "stage": "mask_audit", "reason": why, "split": split})
                continue
            truncated += e.truncated
            rows.append({"input_ids": e.input_ids, "labels": e.labels})
        return rows, truncated

    train, t_trunc = encode(mixed, "train")
    validation, v_trunc = [], 0
    if cfg.validation:
        convs, bad = read_conversations(cfg.resolve(cfg.validation), DataSource(path=cfg.validation))
        rejected += [{**b, "stage": "read", "split": "validation"} for b in bad]
        validation, v_trunc = encode(convs, "validation")
    tokens = sum(len(r["input_ids"]) for r in train)
    trainable = sum(sum(1 for x in r["labels"] if x != -100) for r in train)
    stats = {
        "train_examples": len(train), "validation_examples": len(validation), "rejected": len(rejected),
        "truncated": t_trunc + v_trunc, "train_tokens": tokens, "trainable_tokens": trainable,
        "trainable_share": round(trainable / tokens, 4) if tokens else 0.0, "mix": counts,
    }
    return PreparedData(train, validation, rejected, stats, digest.hexdigest())


def load_base(cfg: TrainConfig):
    """(model, tokenizer, base model id, its local path or hub id): the embedded SmolLM2 or a local path /
    hub id, loaded in NF4 with double quantization for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from curate.models import smollm2_model_dir

    base = str(smollm2_model_dir()) if cfg.base_model == "embedded" else cfg.base_model
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:  # padding is never a label here (masks come from spans), so eos is safe
        tokenizer.pad_token = tokenizer.eos_token
    dtype = _dtype(cfg)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.method.kind == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    return model, tokenizer, ("embedded:SmolLM2-135M-Instruct" if cfg.base_model == "embedded" else cfg.base_model), base


def _dtype(cfg: TrainConfig):
    """The compute dtype: as configured; ``auto`` is bf16 on a GPU that has it, fp16 on one that does
    not, fp32 on CPU (half precision on CPU is slow and loses accuracy for no gain)."""
    import torch

    chosen = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision)
    if chosen is not None:
        return chosen
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def check_inputs(cfg: TrainConfig) -> None:
    """Every data and validation path names existing files, or TrainConfigError names the key: before any
    model is loaded."""
    from curate.readers import InputError, expand_paths
    from train.config import TrainConfigError

    named = [(f"data[{i}].path", s.path) for i, s in enumerate(cfg.data)] + ([("validation", cfg.validation)] if cfg.validation else [])
    problems = []
    for key, path in named:
        try:
            expand_paths(path, cfg.base_dir)
        except InputError as exc:
            problems.append(f"{key}: {exc}")
    if problems:
        raise TrainConfigError("; ".join(problems))


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train, save the adapter and the run folder; returns the manifest."""
    check_inputs(cfg)
    import torch
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from trl import SFTConfig, SFTTrainer

    out = cfg.output_path
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, base_id, base_path = load_base(cfg)
    data = prepare_data(cfg, tokenizer)
    (out / "rejected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data.rejected))
    if not data.train:
        raise ValueError(f"no trainable examples: {len(data.rejected)} rejected (see {out / 'rejected.jsonl'})")
    if cfg.method.kind == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    m = cfg.method
    lora = LoraConfig(
        r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout, target_modules=m.target_modules,
        use_dora=m.kind == "dora", use_rslora=m.rslora, task_type="CAUSAL_LM",
    )
    o = cfg.optim
    optim = o.optimizer
    if optim == "auto":
        optim = "paged_adamw_8bit" if torch.cuda.is_available() else "adamw_torch"
    dtype = _dtype(cfg)
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        max_length=cfg.max_seq_len,
        packing=True,
        packing_strategy="bfd",
        padding_free=True,
        per_device_train_batch_size=max(1, o.batch_tokens // cfg.max_seq_len),
        per_device_eval_batch_size=max(1, o.batch_tokens // cfg.max_seq_len),
        gradient_accumulation_steps=o.grad_accum,
        learning_rate=o.lr,
        lr_scheduler_type=o.scheduler,
        warmup_steps=o.warmup_ratio,  # a float below 1 is a share of the steps (transformers 5)
        weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm,
        optim=optim,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1,
        eval_strategy="steps" if data.validation else "no",
        eval_steps=cfg.eval.every_steps,
        save_strategy="no",
        report_to=[],
        dataset_num_proc=None,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.validation) if data.validation else None,
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()
    trainer.model.save_pretrained(str(out / "adapter"))
    tokenizer.save_pretrained(str(out / "adapter"))
    with open(out / "metrics.jsonl", "w") as fh:
        for row in trainer.state.log_history:
            fh.write(json.dumps(row) + "\n")
    manifest = {
        "name": cfg.name,
        "config": cfg.model_dump(mode="json"),
        "base_model": base_id,
        "base_weights_sha256": _weights_hash(Path(base_path)),
        "data_sha256": data.digest,
        "data": data.stats,
        "versions": _versions(),
        "git_revision": _git_revision(),
        "train_loss": [r["loss"] for r in trainer.state.log_history if "loss" in r],
        "eval_loss": [r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _weights_hash(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
