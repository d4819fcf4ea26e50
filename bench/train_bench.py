"""Training benchmark: `train run` against the recipe everyone copies, same records, same examples seen.

    python bench/train_bench.py --base smollm2                 # real SmolLM2 weights: speed, memory, eval loss
    python bench/train_bench.py --base llama7b --n-train 800   # Llama-7B-shaped random weights: speed, memory
    python bench/train_bench.py --base tiny --n-train 32       # a CPU smoke run (2-layer random Llama)

The recipe (the seeds, ``../shared/seeds``): HF ``Trainer`` over alpaca-format text tokenized with
``padding="max_length"`` to 512, ``DataCollatorForLanguageModeling`` (labels = input ids, padding masked),
LoRA r=16 on q/v, fp16, batch 8 x accumulation 2, lr 3e-4 with 100 warm-up steps, no packing.

Ours: :func:`train.trainer.run_training` on the same records (read from the same alpaca JSON through
curate's readers), its chat template and assistant-only loss, padding-free packing; the variants are
listed in ``VARIANTS`` (our defaults: QLoRA NF4 r=16 all-linear with gradient checkpointing and paged
8-bit AdamW; and LoRA without quantization). On an sm80+ GPU our attention is PyTorch's FlashAttention-2
varlen kernel over flattened packed micro-batches (``train/attention.py``); ``-sdpa`` variants measure
transformers' default attention instead.

Each trainer runs in its own process (peak GPU memory is ``torch.cuda.max_memory_allocated`` from model
load to the end of training, so one run cannot inflate another's). Printed per run:

- useful tokens/s: the non-padding tokens of the examples seen, over ``trainer.train()`` wall time
  (warm-up included, for both), and "steady": the same rate between the first and last logging
  interval (every 10 optimizer steps), once warm-up is behind;
- examples/s (our chat template adds SmolLM2's default system prompt, so ours has more tokens per
  example than the recipe's alpaca format: examples/s is the rate a user waits on);
- peak GPU memory;
- eval loss on held-out records (not trained on): the mean cross-entropy of the reference response's
  tokens given the prompt, each model in the prompt format it was trained with. Same quantity for both:
  how well the fine-tune predicts held-out answers. The untrained base is scored the same way.

Data: alpaca rows from ``--data`` (a ``shared/data`` folder: ``alpaca/alpaca_data_first10k_excl_holdout.json``);
the first ``--n-train`` are trained on, the last ``--n-eval`` of the file are held out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = {"max_length": 512, "r": 16, "alpha": 32, "dropout": 0.05, "targets": ["q_proj", "v_proj"],
          "batch": 8, "grad_accum": 2, "lr": 3e-4, "warmup_steps": 100}

# name -> train config overrides (on top of `_our_config`'s)
VARIANTS = {
    "ours-qlora": {"method": {"kind": "qlora", "r": 16, "alpha": 32, "target_modules": "all-linear"}},
    "ours-lora": {"method": {"kind": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}, "gradient_checkpointing": False},
    "ours-lora-8k": {"method": {"kind": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}, "gradient_checkpointing": False,
                     "optim": {"batch_tokens": 8192}},
    # big packed micro-batches fit in the recipe's memory once activations are checkpointed; fewer optimizer
    # steps for the same examples, so a higher learning rate
    "ours-lora-16k": {"method": {"kind": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}, "gradient_checkpointing": True,
                      "optim": {"batch_tokens": 16384, "lr": 1e-3}},
    "ours-qlora-16k": {"method": {"kind": "qlora", "r": 16, "alpha": 32, "target_modules": "all-linear"},
                       "optim": {"batch_tokens": 16384, "lr": 1e-3}},
    # transformers' default attention (sdpa) with packed rows, each row with its block-diagonal mask: what
    # runs where PyTorch's varlen FlashAttention kernel does not (pre-sm80 GPUs, fp32)
    "ours-lora-16k-sdpa": {"method": {"kind": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"},
                           "optim": {"batch_tokens": 16384, "lr": 1e-3}, "attn_implementation": "sdpa", "packing": "rows"},
    # the layout first measured in bench/results: sdpa over a micro-batch flattened into one sequence
    "ours-lora-16k-sdpa-flat": {"method": {"kind": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"},
                                "optim": {"batch_tokens": 16384, "lr": 1e-3}, "attn_implementation": "sdpa", "packing": "flat"},
}


def _data_dir(arg: str | None) -> Path:
    for cand in [arg, REPO.parent / "shared" / "data", REPO / "shared" / "data", REPO / ".gpu" / "data"]:
        if cand and (Path(cand) / "alpaca" / "alpaca_data_first10k_excl_holdout.json").is_file():
            return Path(cand)
    sys.exit("alpaca data not found: pass --data (a folder holding alpaca/alpaca_data_first10k_excl_holdout.json)")


def _records(args) -> tuple[list[dict], list[dict]]:
    rows = json.loads((_data_dir(args.data) / "alpaca" / "alpaca_data_first10k_excl_holdout.json").read_text())
    return rows[: args.n_train], rows[-args.n_eval :]


def _alpaca_text(r: dict) -> tuple[str, str]:
    """(prompt, response) in the seeds' instruction format."""
    prompt = f"### Instruction:\n{r['instruction']}\n\n"
    if r.get("input"):
        prompt += f"### Input:\n{r['input']}\n\n"
    return prompt + "### Response:\n", r["output"]


def response_loss(model, rows: list[tuple[list[int], list[int]]], batch: int = 16) -> float:
    """Token-weighted mean cross-entropy over the positions whose label is not -100 (evalsuite's scorer)."""
    from evalsuite.metrics import token_nll

    pairs = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        pairs += token_nll(model, [x for x, _ in chunk], [y for _, y in chunk], pad_id=0)
    return sum(s for s, _ in pairs) / max(sum(n for _, n in pairs), 1)


def _recipe_eval_rows(tokenizer, records: list[dict]) -> list[tuple[list[int], list[int]]]:
    rows = []
    for r in records:
        prompt, response = _alpaca_text(r)
        p = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + response, truncation=True, max_length=RECIPE["max_length"])["input_ids"]
        rows.append((full, [-100] * len(p) + full[len(p) :]))
    return rows


def _our_eval_rows(tokenizer, records: list[dict], max_len: int) -> list[tuple[list[int], list[int]]]:
    from curate.shapes import Converter
    from chat.template import ChatEncoder

    conv, enc, rows = Converter("alpaca", None), ChatEncoder(tokenizer, max_len), []
    for r in records:
        _shape, roles, contents, *_ = conv.convert(r)
        e = enc.encode([{"role": a, "content": c} for a, c in zip(roles, contents)])
        rows.append((e.input_ids, e.labels))
    return rows


def _steady(points: list[tuple[float, float]]) -> float | None:
    """Tokens/s between the first and the last (wall time, cumulative tokens) point: the rate once the
    first logging interval (CUDA context, kernel selection, allocator warm-up) is behind."""
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    return round((points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]), 1)


def _peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 1024**3, 3) if torch.cuda.is_available() else None


def run_recipe(args, base: str, tokenizer_path: str) -> dict:
    """The seeds' LoRA recipe, as written there (fp16 needs CUDA: fp32 on CPU)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    cuda = torch.cuda.is_available()
    train, held_out = _records(args)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    tokenizer.pad_token = tokenizer.eos_token
    ds = Dataset.from_list([{"text": "".join(_alpaca_text(r))} for r in train])
    ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=RECIPE["max_length"], padding="max_length"),
                batched=True, remove_columns=["text"])
    useful = int(sum(sum(m) for m in ds["attention_mask"]))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16 if cuda else torch.float32).to("cuda" if cuda else "cpu")
    base_loss = response_loss(model, _recipe_eval_rows(tokenizer, held_out)) if args.eval else None
    model = get_peft_model(model, LoraConfig(r=RECIPE["r"], lora_alpha=RECIPE["alpha"], lora_dropout=RECIPE["dropout"],
                                             target_modules=RECIPE["targets"], bias="none", task_type="CAUSAL_LM"))
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="recipe-"), num_train_epochs=1, per_device_train_batch_size=RECIPE["batch"],
        gradient_accumulation_steps=RECIPE["grad_accum"], learning_rate=RECIPE["lr"], weight_decay=0.01,
        warmup_steps=RECIPE["warmup_steps"], lr_scheduler_type="cosine", logging_steps=10, save_strategy="no",
        fp16=cuda, report_to=[], use_cpu=not cuda, seed=0,
    )
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % 10 == 0:  # the recipe's logging interval, as ours is timed
                self.times.append((time.time(), state.global_step))

    timer = StepTimes()
    trainer = Trainer(model=model, args=targs, train_dataset=ds, callbacks=[timer],
                      data_collator=DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    peak = _peak_gib()
    per_step = useful / max(trainer.state.global_step, 1)
    steady = _steady([(t, step * per_step) for t, step in timer.times])
    loss = response_loss(trainer.model, _recipe_eval_rows(tokenizer, held_out)) if args.eval else None
    return {"trainer": "recipe", "examples": len(train), "useful_tokens": useful, "padded_tokens": len(train) * RECIPE["max_length"],
            "seconds": round(seconds, 2), "useful_tokens_per_s": round(useful / seconds, 1), "peak_gib": peak,
            "eval_loss": loss, "base_eval_loss": base_loss, "optimizer_steps": trainer.state.global_step,
            "examples_per_s": round(len(train) / seconds, 2), "steady_useful_tokens_per_s": steady}


def _our_config(args, variant: str, base: str, data_file: Path, out: Path) -> dict:
    import torch

    cfg = {
        "name": variant, "base_model": base, "data": [{"path": str(data_file)}], "epochs": 1,
        "max_seq_len": args.max_seq_len, "optim": {"batch_tokens": args.batch_tokens, "lr": args.lr},
        "eval": {"sample_prompts": 0, "every_steps": 1_000_000}, "workspace": None, "output_dir": str(out),
        "precision": "auto" if torch.cuda.is_available() else "fp32",
    }
    for key, value in VARIANTS[variant].items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def run_ours(args, variant: str, base: str, tokenizer_path: str) -> dict:
    import torch
    from peft import PeftModel

    from train.config import parse_train_config
    from chat.conversations import load_tokenizer
    from train.trainer import _dtype, load_model, run_training

    train, held_out = _records(args)
    work = Path(tempfile.mkdtemp(prefix=f"{variant}-"))
    data_file = work / "train.json"
    data_file.write_text(json.dumps(train))
    cfg = parse_train_config(_our_config(args, variant, base, data_file, work / "run"), base_dir=work)
    manifest = run_training(cfg, fresh=True)
    peak = _peak_gib()
    result = {
        "trainer": variant, "examples": manifest["data"]["train_examples"], "useful_tokens": manifest["data"]["train_tokens"],
        "seconds": manifest["train_seconds"], "peak_gib": peak, "estimate_gib": manifest["memory_estimate_gib"]["total"],
        "optimizer_steps": manifest["steps"],
    }
    result["useful_tokens_per_s"] = round(result["useful_tokens"] / result["seconds"], 1)
    result["examples_per_s"] = round(result["examples"] / result["seconds"], 2)
    rows = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    per_step = result["useful_tokens"] / max(result["optimizer_steps"], 1)  # timed like the recipe's
    result["steady_useful_tokens_per_s"] = _steady([(r["wall_time"], r["step"] * per_step) for r in rows if "loss" in r and "wall_time" in r])
    result["packing"] = manifest["packing"]
    result["attention"] = manifest.get("attn_implementation")
    if args.eval:
        tokenizer = load_tokenizer(tokenizer_path)
        rows = _our_eval_rows(tokenizer, held_out, args.max_seq_len)
        model = load_model(cfg, base, _dtype(cfg))
        if cfg.method.kind != "qlora":  # a 4-bit model is placed by its device_map
            model = model.to("cuda" if torch.cuda.is_available() else "cpu")
        result["base_eval_loss"] = response_loss(model, rows)
        result["eval_loss"] = response_loss(PeftModel.from_pretrained(model, str(work / "run" / "adapter")), rows)
        if cfg.method.kind == "qlora":  # served merged into the full-precision base: score it that way too
            from transformers import AutoModelForCausalLM

            full = AutoModelForCausalLM.from_pretrained(base, dtype=_dtype(cfg)).to("cuda" if torch.cuda.is_available() else "cpu")
            result["base_eval_loss_full_precision"] = response_loss(full, rows)
            result["eval_loss_full_precision_base"] = response_loss(PeftModel.from_pretrained(full, str(work / "run" / "adapter")), rows)
    return result


def build_random_llama(out: Path, tokenizer_path: str, shape: str) -> str:
    """A Llama checkpoint with random weights: 7B-shaped (hidden 4096, 32 layers, MLP 11008, 32 heads) or
    a tiny 2-layer one for CPU smoke runs. Its vocabulary is the tokenizer's (SmolLM2's 49,152 tokens, so
    the embeddings are larger than Llama-2's 32,000: the memory figures err high)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return str(out)
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    dims = {"llama7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
            "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)}[shape]
    config = LlamaConfig(**dims, vocab_size=len(tok), max_position_embeddings=4096, rms_norm_eps=1e-5,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out), max_shard_size="4GB")
    tok.save_pretrained(str(out))
    del model
    return str(out)


def _child(args) -> None:
    base, tok = args.base_path, args.tokenizer_path
    result = run_recipe(args, base, tok) if args.one == "recipe" else run_ours(args, args.one, base, tok)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", choices=["smollm2", "llama7b", "tiny"], default="smollm2")
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--data", default=None)
    ap.add_argument("--work", default=None, help="where random checkpoints are built (default: a temp folder)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder for random bases (default: SmolLM2's)")
    ap.add_argument("--trainers", default="recipe,ours-lora-16k,ours-qlora-16k")
    ap.add_argument("--max-seq-len", type=int, default=512, help="ours: packed row length")
    ap.add_argument("--batch-tokens", type=int, default=4096, help="ours: tokens per packed micro-batch (the recipe's 8 x 512)")
    ap.add_argument("--lr", type=float, default=5e-4, help="ours")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--base-path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer-path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--eval", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return _child(args)

    from curate.models import smollm2_model_dir, smollm2_tokenizer_dir

    tokenizer = args.tokenizer or str(smollm2_tokenizer_dir() if args.base != "smollm2" else smollm2_model_dir())
    if args.base == "smollm2":
        base = str(smollm2_model_dir())
    else:
        work = Path(args.work or tempfile.mkdtemp(prefix="train-bench-")) / args.base
        t0 = time.perf_counter()
        base = build_random_llama(work, tokenizer, args.base)
        print(f"random {args.base} checkpoint at {base} ({time.perf_counter() - t0:.0f} s)", flush=True)
    evaluate = int(args.base != "llama7b")  # random weights: eval loss means nothing
    results = []
    for trainer in args.trainers.split(","):
        cmd = [sys.executable, __file__, "--one", trainer, "--base-path", base, "--tokenizer-path", tokenizer,
               "--eval", str(evaluate), "--n-train", str(args.n_train), "--n-eval", str(args.n_eval),
               "--max-seq-len", str(args.max_seq_len), "--batch-tokens", str(args.batch_tokens), "--lr", str(args.lr)]
        if args.data:
            cmd += ["--data", args.data]
        if args.base == "llama7b" and trainer != "recipe":  # the issue's 7B setting: sequence length 2048
            cmd[cmd.index("--max-seq-len") + 1] = cmd[cmd.index("--batch-tokens") + 1] = "2048"
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{trainer} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
            results.append({"trainer": trainer, "failed": proc.returncode})
            continue
        res = json.loads(lines[-1][7:])
        res["process_seconds"] = round(time.perf_counter() - t0, 1)
        results.append(res)
        print(json.dumps(res), flush=True)
    _table(args, results)
    if args.out:
        Path(args.out).write_text(json.dumps({"base": args.base, "n_train": args.n_train, "n_eval": args.n_eval,
                                              "recipe": RECIPE, "variants": VARIANTS, "results": results}, indent=2))


def _table(args, results: list[dict]) -> None:
    import torch

    ok = [r for r in results if "failed" not in r]
    recipe = next((r for r in ok if r["trainer"] == "recipe"), None)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"\n{args.base} on {device}: {args.n_train} alpaca examples seen by each trainer, {args.n_eval} held out")
    print(f"{'trainer':18} {'useful tok/s':>13} {'x recipe':>9} {'steady tok/s':>13} {'x recipe':>9} {'examples/s':>11} {'peak GiB':>9} "
          f"{'estimate':>9} {'eval loss':>10} {'base loss':>10} {'steps':>6} {'train s':>8}")
    for r in ok:
        speed = f"{r['useful_tokens_per_s'] / recipe['useful_tokens_per_s']:.2f}" if recipe else "-"
        st, rst = r.get("steady_useful_tokens_per_s"), (recipe or {}).get("steady_useful_tokens_per_s")
        steady = f"{st:>13,.0f} {(f'{st / rst:.2f}' if st and rst else '-'):>9}" if st else f"{'-':>13} {'-':>9}"

        def f(key, fmt, r=r):
            return format(r[key], fmt) if r.get(key) is not None else "-"

        print(f"{r['trainer']:18} {r['useful_tokens_per_s']:>13,.0f} {speed:>9} {steady} {r['examples_per_s']:>11.1f} "
              f"{f('peak_gib', '.2f'):>9} {f('estimate_gib', '.2f'):>9} {f('eval_loss', '.4f'):>10} {f('base_eval_loss', '.4f'):>10} "
              f"{r['optimizer_steps']:>6} {r['seconds']:>8.1f}")
    if recipe:
        print(f"recipe: {recipe['useful_tokens']:,} useful of {recipe['padded_tokens']:,} tokens "
              f"({1 - recipe['useful_tokens'] / recipe['padded_tokens']:.0%} padding)")


if __name__ == "__main__":
    main()
