"""`train run`: QLoRA/LoRA/DoRA over chat records, with TRL doing the training loop.

What this module adds around TRL's ``SFTTrainer`` (everything else is transformers, peft and bitsandbytes):

- records come from any file curate reads (curate's export, or raw alpaca/ShareGPT/... files), mixed by
  weight, and are encoded by :class:`chat.template.ChatEncoder` with the tokenizer's own template and an
  assistant-only loss mask; records with no trainable token are rejected with a reason before training;
- padding-free packing (TRL's best-fit-decreasing packing, position ids restart per example), so no
  compute goes to padding;
- a run folder: adapter (safetensors), tokenizer, ``manifest.json`` (config, data hash, base model,
  library versions, git revision), ``metrics.jsonl``, ``rejected.jsonl``.

- pre-flight checks (:mod:`train.preflight`) before anything slow; early stopping on eval loss with the
  best checkpoint restored; sample generations, live metrics and the projected time/cost
  (:mod:`train.callbacks`); resume from the latest checkpoint after a kill; ``loss.png`` and a row in the
  workspace (:mod:`train.outputs`); merged / GGUF export (:mod:`train.export`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, cast

from chat.conversations import load_tokenizer, read_chats
from chat.tools import template_messages
from chat.template import ChatEncoder, TemplateMismatch, marked_text
from train.config import TrainConfig
from train.data import PreparedData, file_hashes, mix  # noqa: F401 - re-exported: the data every objective shares


def prepare_data(cfg: TrainConfig, tokenizer) -> PreparedData:
    """Read every data source and the validation file, mix the sources by weight (seeded), encode with the
    chat template and mask non-assistant tokens; records with no trainable token (no answer, only empty
    answers, cut to nothing, or dropped by ``truncation``) are rejected with a reason, not trained. Records
    cut to fit ``max_seq_len`` and records whose content holds special-token text are counted in ``stats``."""
    encoder = ChatEncoder(tokenizer, cfg.max_seq_len, cfg.train_on_inputs, cfg.truncation)
    digest = hashlib.sha256()
    rejected: list[dict] = []
    per_source = []
    origin: dict[str, str] = {}  # record -> the input it came from, for per-input counts
    for i, source in enumerate(cfg.data):
        label = f"data[{i}] ({source.path})"
        convs, bad = read_chats(cfg.resolve(source.path), source.shape, source.mapping, source.limit)
        rejected += [{**b, "stage": "read", "source": label} for b in bad]
        origin.update((where, label) for where, _m, _t in convs)
        per_source.append((source, convs))
    mixed, counts = mix(per_source, cfg.seed)

    audit: list[str] = []
    shares: list[float] = []
    tally: Counter[str] = Counter()
    sources: dict[str, list[int]] = {}

    def encode(items, split, label=None):
        rows = []
        for where, messages, tools in items:
            source = label or origin[where]
            seen = sources.setdefault(source, [0, 0])
            seen[0] += 1
            try:
                # tool calls and definitions in the template's own form, or as Hermes text when it has none
                rendered, passed = template_messages(tokenizer, messages, tools)
                e = encoder.encode(rendered, passed)
            except TemplateMismatch as exc:
                from train.preflight import PreflightError

                raise PreflightError(f"{where}: {exc}") from None
            digest.update(json.dumps(messages, ensure_ascii=False).encode())
            digest.update(array("q", e.input_ids + [-1] + e.labels).tobytes())
            tally["special_token_text"] += e.special_text
            tally["empty_answers"] += e.empty_answers
            if e.reason:
                tally["dropped_too_long"] += e.cut == "drop"
                rejected.append({"where": where, "stage": "mask_audit", "reason": e.reason, "split": split, "source": source})
                continue
            seen[1] += 1
            tally["truncated"] += e.truncated
            tally["cut_in_answer"] += e.half_answer
            rows.append({"input_ids": e.input_ids, "labels": e.labels})
            if split == "train":
                shares.append(e.n_trainable / len(e.input_ids))
                if len(audit) < 3:
                    audit.append(f"# {where}: {e.n_trainable} of {len(e.input_ids)} tokens trained\n{marked_text(tokenizer, e)}")
        return rows

    train = encode(mixed, "train")
    validation = []
    if cfg.validation:
        label = f"validation ({cfg.validation})"
        convs, bad = read_chats(cfg.resolve(cfg.validation))
        rejected += [{**b, "stage": "read", "split": "validation", "source": label} for b in bad]
        sources.setdefault(label, [0, 0])
        validation = encode(convs, "validation", label)
    prompts = (_prompt_of(m) for _w, m, _t in (convs if cfg.validation else mixed))
    sample_prompts = list(itertools.islice((p for p in prompts if p), cfg.eval.sample_prompts))
    tokens = sum(len(r["input_ids"]) for r in train)
    trainable = sum(sum(1 for x in r["labels"] if x != -100) for r in train)
    stats = {
        "train_examples": len(train), "validation_examples": len(validation), "rejected": len(rejected),
        # kept records that max_seq_len cut (after their last whole answer with truncation turn; anywhere with tokens)
        "truncated": tally["truncated"], "truncation": cfg.truncation, "cut_in_answer": tally["cut_in_answer"],
        "dropped_too_long": tally["dropped_too_long"], "empty_answers": tally["empty_answers"],
        "special_token_text": tally["special_token_text"],
        "train_tokens": tokens, "trainable_tokens": trainable,
        "trainable_share": round(trainable / tokens, 4) if tokens else 0.0, "mix": counts,
        "trainable_share_per_record": _quantiles(shares),
    }
    files, combined = file_hashes(cfg)
    return PreparedData(train, validation, rejected, stats, digest.hexdigest(), sample_prompts, audit, files, combined,
                        {k: (v[0], v[1]) for k, v in sources.items()})


def audit_summary(stats: dict[str, Any]) -> str:
    """The pre-flight's one line on the masks: trainable share per record, rejected records, records cut to
    fit ``max_seq_len`` (and how), empty answers and records whose content holds special-token text."""
    q = stats["trainable_share_per_record"]
    parts = [f"trainable share per record min {q['min']:.0%}, p05 {q['p05']:.0%}, median {q['median']:.0%}"] if q else []
    parts.append(f"{stats['rejected']} records rejected")
    if stats["dropped_too_long"]:
        parts.append(f"{stats['dropped_too_long']} of them longer than max_seq_len (truncation: drop)")
    if stats["truncated"]:
        how = {"turn": "after their last whole answer", "tokens": "at max_seq_len"}.get(stats["truncation"], "")
        parts.append(f"{stats['truncated']} cut {how} to fit max_seq_len (truncation: {stats['truncation']})")
    if stats["cut_in_answer"]:
        parts.append(f"{stats['cut_in_answer']} of them inside an answer, trained without its end of turn")
    if stats["empty_answers"]:
        parts.append(f"{stats['empty_answers']} empty assistant answers not trained")
    if stats["special_token_text"]:
        parts.append(f"{stats['special_token_text']} records hold special-token text in their content (tokenized as text)")
    return "mask audit: " + "; ".join(parts)


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    return {q: round(v[min(len(v) - 1, int(f * len(v)))], 4) for q, f in (("min", 0), ("p05", 0.05), ("median", 0.5), ("max", 1.0))}


def _prompt_of(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """The turns before the first assistant turn (what a sample generation answers), or None."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            return messages[:i] if i else None
    return None


def _base_id(cfg: TrainConfig) -> str:
    return "embedded:SmolLM2-135M-Instruct" if cfg.base_model == "embedded" else cfg.base_model


def load_model(cfg: TrainConfig, base: str, dtype, attn_implementation: str | None = None):
    """The base model (a local path or hub id), in NF4 with double quantization for QLoRA, with
    ``attn_implementation`` (see :func:`train.attention.pick`) or transformers' default."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if cfg.method.kind == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        # each process of a DDP launch holds a whole copy on its own GPU
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))} if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if cfg.method.kind == "qlora" and not torch.cuda.is_available():
        keep_cpu_4bit_differentiable(model)
    return model


def keep_cpu_4bit_differentiable(model) -> int:
    """Stop bitsandbytes from repacking a 4-bit model's weights for CPU inference; returns the layers changed.

    On a CPU with AVX512-BF16, bitsandbytes' ``Linear4bit`` repacks its weight into an inference layout the
    first time it runs without gradients (an evaluation, a sample generation) and keeps that layout after:
    from then on its matmul is ``gemv_4bit``, which has no autograd kernel, so training backpropagates through
    it with PyTorch's "silently incorrect behavior" warning and wrong gradients for every LoRA layer below
    (measured: adapter gradients off by up to 157% after one evaluation). Without the repacking the matmul
    stays the differentiable dequantize-then-linear path, so training after an evaluation gives the same
    gradients as before it (tests/test_train_cpu_qlora.py)."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


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
    """Every data and validation path names existing files and the workspace is usable (a workspace folder,
    or a path where one can be made), or TrainConfigError names the key: before any model is loaded."""
    from curate.readers import InputError, expand_paths
    from train.config import TrainConfigError

    named = [(f"data[{i}].path", s.path) for i, s in enumerate(cfg.data)] + ([("validation", cfg.validation)] if cfg.validation else [])
    problems = []
    for key, path in named:
        try:
            expand_paths(path, cfg.base_dir)
        except InputError as exc:
            problems.append(f"{key}: {exc}")
    if cfg.workspace:
        from curate.workspace import WorkspaceError, check_workspace

        try:
            check_workspace(cfg.resolve(cfg.workspace), create=True)
        except WorkspaceError as exc:
            problems.append(f"workspace: {exc}")
    if problems:
        raise TrainConfigError("; ".join(problems))


RESUME_INSENSITIVE = {"output_dir", "workspace", "price_per_gpu_hour", "memory_limit_gb", "export"}


def fingerprint(cfg: TrainConfig, data_digest: str) -> str:
    """What a checkpoint is only valid for: the config (less where outputs go) and the encoded data."""
    conf = cfg.model_dump(mode="json", exclude=RESUME_INSENSITIVE)
    return hashlib.sha256(json.dumps([conf, data_digest], sort_keys=True).encode()).hexdigest()


def resume_point(out: Path, fp: str, run_id: str, fresh: bool) -> str | None:
    """The checkpoint to resume from: the latest complete one of a run with this fingerprint, or None
    (a fresh start: old checkpoints and logs are cleared). Checkpoints of another config or data are an
    error unless ``fresh``."""
    from train.preflight import PreflightError

    ckpt_dir = out / "checkpoints"
    last = last_complete_checkpoint(ckpt_dir)
    state_file = out / "run.json"
    previous = json.loads(state_file.read_text()).get("fingerprint") if state_file.is_file() else None
    if last and previous != fp and not fresh:
        raise PreflightError(
            f"{out} holds checkpoints of a run with another config or data; resuming would mix them: "
            f"use another name or output_dir, or --fresh to discard them"
        )
    if fresh or previous != fp:
        last = None
    if not last:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        for name in ("metrics.jsonl", "samples.jsonl"):
            (out / name).unlink(missing_ok=True)
    state_file.write_text(json.dumps({"fingerprint": fp, "run_id": run_id}) + "\n")
    return last


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint that was written to the end. The Trainer writes ``trainer_state.json`` last,
    so a folder without it is what a kill mid-save left: it is deleted, and the one before is used."""
    if not folder.is_dir():
        return None
    steps = sorted((int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
    for _step, path in reversed(steps):
        if (path / "trainer_state.json").is_file():
            return str(path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def _trainer_args(cfg: TrainConfig, out: Path, has_validation: bool, dtype, cuda: bool):
    """SFTConfig for supervised fine-tuning (packed rows of ``max_seq_len`` tokens)."""
    from trl import SFTConfig

    return SFTConfig(
        **_common_args(cfg, out, has_validation, dtype, cuda, max(1, cfg.optim.batch_tokens // cfg.max_seq_len)),
        max_length=cfg.max_seq_len,
        packing=True,  # best-fit-decreasing packing, no padding: position ids restart per example
        packing_strategy="bfd",
        padding_free=True,
        dataset_num_proc=None,
    )


def _common_args(cfg: TrainConfig, out: Path, has_validation: bool, dtype, cuda: bool, rows: int) -> dict[str, Any]:
    """The TrainingArguments every objective shares: optimizer, schedule, batch of ``rows`` sequences per device,
    precision, evaluation and checkpoints, logging."""
    import torch

    o = cfg.optim
    optim = o.optimizer if o.optimizer != "auto" else ("paged_adamw_8bit" if cuda else "adamw_torch")
    every = cfg.eval.every_steps
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    if tensorboard:  # transformers 5 takes the folder from the environment only
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "tensorboard"))
    return dict(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=rows,
        per_device_eval_batch_size=rows,
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
        logging_steps=cfg.log_every_steps,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=every,
        # a checkpoint at every evaluation: the best one is restored at the end, the latest resumes a kill
        save_strategy="steps",
        save_steps=every,
        save_total_limit=cfg.keep_checkpoints,
        load_best_model_at_end=has_validation,
        metric_for_best_model="eval_loss" if has_validation else None,
        greater_is_better=False if has_validation else None,
        report_to=["tensorboard"] if tensorboard else [],
        use_cpu=not cuda,
    )


def run_training(cfg: TrainConfig, fresh: bool = False) -> dict[str, Any]:
    """Train, save the adapter and the run folder; returns the manifest.

    A run folder with checkpoints of the same config and data resumes from the latest one (after a kill);
    with other config or data it is refused unless ``fresh``, which discards them. Raises
    :class:`train.preflight.PreflightError` before training when it cannot work."""
    check_inputs(cfg)
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, prepare_model_for_kbit_training
    from transformers import AutoConfig, EarlyStoppingCallback
    from trl import SFTTrainer

    from curate.models import smollm2_model_dir
    from train.callbacks import LiveMetrics, Projection, SampleGenerations
    from train.outputs import plot_losses, register_finish, register_start
    from train.attention import pick as pick_attention
    from train.packing import RowPackedCollator, use_row_packing
    from train.preflight import check_before_loading, check_data, check_packing_isolation

    cuda = torch.cuda.is_available()
    main = int(os.environ.get("RANK", "0")) == 0  # under `accelerate launch`, one process writes the outputs
    dtype = _dtype(cfg)
    base_path = str(smollm2_model_dir()) if cfg.base_model == "embedded" else cfg.base_model
    memory = check_before_loading(cfg, AutoConfig.from_pretrained(base_path), half=dtype != torch.float32)
    out = cfg.output_path
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(base_path)
    objective = cfg.method.objective
    if objective == "sft":
        data = prepare_data(cfg, tokenizer)
        summary_line = audit_summary(data.stats)
    else:
        from train.preference import prepare_preference_data, preference_summary

        data = prepare_preference_data(cfg, tokenizer)
        summary_line = preference_summary(data.stats)
    if main:
        (out / "rejected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data.rejected))
        # what the loss sees, through the real template: trained spans between ⟦ ⟧ (both sides of a pair)
        (out / "mask_audit.txt").write_text("\n\n".join(data.audit) + "\n")
        print(f"{summary_line}; rendered examples in {out / 'mask_audit.txt'}")
    check_data(len(data.train), data.rejected, str(out / "rejected.jsonl"), data.sources)

    fp = fingerprint(cfg, data.digest)
    run_id = f"{cfg.name}-{fp[:12]}"
    last = resume_point(out, fp, run_id, fresh) if main else last_complete_checkpoint(out / "checkpoints")
    workspace = cfg.resolve(cfg.workspace) if cfg.workspace and main else None
    if workspace:
        register_start(workspace, run_id, cfg.name, cfg.model_dump(mode="json"), fp, out, resumed=bool(last))

    attn = pick_attention(cfg.attn_implementation, dtype)
    model = load_model(cfg, base_path, dtype, attn)
    isolation = check_packing_isolation(model)
    model.config.use_cache = False  # a KV cache in the forward pass disables the packed-sequence mask
    if cfg.method.kind == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    m = cfg.method
    lora = LoraConfig(
        r=m.r, lora_alpha=m.alpha,  # type: ignore[arg-type]  # PEFT annotates int, computes alpha / r: a float scales as well
        lora_dropout=m.dropout, target_modules=m.target_modules,
        use_dora=m.kind == "dora", use_rslora=m.rslora, task_type="CAUSAL_LM",
    )
    projection = Projection(price_per_hour=cfg.price_per_gpu_hour)
    # TRL counts a batch's tokens as its width when there is no attention mask: right for one flattened
    # sequence, wrong for rows, so with rows its `num_tokens` is left out
    row_packing = objective == "sft" and use_row_packing(cfg.packing, attn)
    hidden = ("num_tokens",) if row_packing else ()
    callbacks = [LiveMetrics(out / "metrics.jsonl", hidden), projection]
    if cfg.eval.sample_prompts and data.sample_prompts:
        callbacks.append(SampleGenerations(tokenizer, data.sample_prompts, cfg.eval.every_steps, cfg.eval.sample_max_new_tokens, out / "samples.jsonl"))
    if data.validation and cfg.eval.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.eval.early_stopping_patience))
    if objective == "sft":
        trainer = SFTTrainer(
            model=model,
            args=_trainer_args(cfg, out, bool(data.validation), dtype, cuda),
            train_dataset=Dataset.from_list(data.train),
            eval_dataset=Dataset.from_list(data.validation) if data.validation else None,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=callbacks,
        )
    else:
        from train.preference import build_trainer

        # a pair (or a KTO example and its KL partner) is two sequences of up to max_seq_len tokens
        rows = max(1, cfg.optim.batch_tokens // (2 * cfg.max_seq_len))
        trainer = build_trainer(cfg, model, tokenizer, data, _common_args(cfg, out, bool(data.validation), dtype, cuda, rows), lora, callbacks)
    if row_packing:  # TRL refuses a custom collator with its packing, so it is swapped in after construction
        trainer.data_collator = RowPackedCollator(tokenizer.pad_token_id)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=last)
    except BaseException:
        if workspace:
            register_finish(workspace, run_id, "failed", None, trainer.state.log_history)
        raise
    seconds = time.perf_counter() - t0
    if not trainer.is_world_process_zero():
        return {}
    cast(PeftModel, trainer.model).save_pretrained(str(out / "adapter"))  # SFTTrainer wrapped it with peft_config: saves the adapter
    tokenizer.save_pretrained(str(out / "adapter"))
    history = [{k: v for k, v in row.items() if k not in hidden} for row in trainer.state.log_history]
    with open(out / "metrics.jsonl", "w") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")
    plot = plot_losses(history, out / "loss.png", cfg.name)
    evals = [r["eval_loss"] for r in history if "eval_loss" in r]
    max_steps = trainer.state.max_steps
    manifest = {
        "name": cfg.name,
        "run_id": run_id,
        "fingerprint": fp,
        "config": cfg.model_dump(mode="json"),
        "base_model": _base_id(cfg),
        "base_model_path": base_path,
        "base_weights_sha256": _weights_hash(Path(base_path)),
        "data_sha256": data.data_sha256,  # of the input files' bytes: checkable with sha256sum (PreparedData)
        "data_files": data.data_files,
        "data": data.stats,
        "versions": _versions(),
        "git_revision": _git_revision(),
        "device": memory["device"],
        "memory_estimate_gib": memory,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 1024**3, 3) if cuda else None,
        "objective": objective,
        "packing": ("rows" if row_packing else "flat") if objective == "sft" else "none",
        "attn_implementation": attn or "sdpa",
        "packing_isolation_max_diff": isolation,
        "resumed_from": Path(last).name if last else None,
        "steps": trainer.state.global_step,
        "max_steps": max_steps,
        "stopped_early": bool(evals) and trainer.state.global_step < max_steps,
        "best_checkpoint": Path(trainer.state.best_model_checkpoint).name if trainer.state.best_model_checkpoint else None,
        "best_eval_loss": min(evals) if evals else None,
        "train_seconds": round(seconds, 2),
        "projection": projection.projection,
        "train_loss": [r["loss"] for r in history if "loss" in r],
        "eval_loss": evals,
        "outputs": {"adapter": "adapter", "metrics": "metrics.jsonl", "plot": plot.name if plot else None,
                    "samples": "samples.jsonl" if cfg.eval.sample_prompts else None, "rejected": "rejected.jsonl",
                    "mask_audit": "mask_audit.txt"},
    }
    if cfg.export.merged or cfg.export.gguf != "none":
        from train.export import export_run

        manifest["export"] = export_run(out, base_path, cfg.export.gguf, cfg.export.merged)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    if workspace:
        summary = {k: manifest[k] for k in ("base_model", "data", "steps", "stopped_early", "best_eval_loss", "train_seconds", "resumed_from")}
        summary["final_train_loss"] = manifest["train_loss"][-1] if manifest["train_loss"] else None
        register_finish(workspace, run_id, "done", summary, history)
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
