"""DPO on CPU with the embedded SmolLM2-135M-Instruct: held-out preference accuracy before and after `train run`.

    .venv/bin/python bench/dpo_cpu.py                       # ~20-30 minutes on 2 cores
    .venv/bin/python bench/dpo_cpu.py --steps 10 --held-out 20   # a quick look

The pairs are the real LLaMA-Factory demo pairs (shared/data/chat_llamafactory/dpo_en_demo.json), those whose
both sides fit ``--max-tokens`` once rendered. Every fifth of them is held out (never trained on); the rest are
the training file. The script:

1. scores the base model on the held-out pairs with evalsuite's preference metric (the summed log-likelihood of
   each completion through the chat template, exactly the tokens a DPO step scores);
2. runs ``train run`` (the CLI, ``method.objective: dpo``, LoRA) on the training pairs;
3. scores the base with the trained adapter on the same held-out pairs,

and prints both, with the per-token margin (length set aside) and how many pairs changed sides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
WORK = HERE / "_work" / "dpo_cpu"


def _pairs(max_tokens: int):
    """(rows of the file, PreferencePair per row) for the pairs whose sides fit ``max_tokens``."""
    from transformers import AutoTokenizer

    from chat.conversations import message_dicts, read_records, rejected_dicts
    from curate.models import smollm2_tokenizer_dir
    from evalsuite.metrics.preference import PreferencePair

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    path = REPO.parent / "shared" / "data" / "chat_llamafactory" / "dpo_en_demo.json"
    rows = json.loads(path.read_text())
    records, _ = read_records(path)
    kept = []
    for (where, rec), row in zip(records, rows):
        chosen, rejected = message_dicts(rec), rejected_dicts(rec)
        k = rec.extra.prompt_turns
        if max(len(tok(tok.apply_chat_template(s, tokenize=False), add_special_tokens=False)["input_ids"]) for s in (chosen, rejected)) > max_tokens:
            continue
        kept.append((row, PreferencePair(chosen[:k], chosen[k:], rejected[k:], None, where)))
    return kept


def _score(adapter: Path | None, pairs) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.models import smollm2_model_dir
    from evalsuite.metrics.preference import preference

    base = str(smollm2_model_dir())
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    t0 = time.perf_counter()
    res = preference(model, tok, pairs, batch_size=4)
    out = {k: v.value for k, v in res.items()}
    out["per_pair"] = res["preference_accuracy"].per_example
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--held-out", type=int, default=40, help="held-out pairs (every fifth eligible pair, up to this many)")
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--sft-weight", type=float, default=0.0, help="method.sft_weight: the chosen side's NLL added to DPO (RPO)")
    ap.add_argument("--epochs", type=float, default=None, help="train this many passes over the pairs instead of --steps")
    args = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    pairs = _pairs(args.max_tokens)
    held = [p for i, p in enumerate(pairs) if i % 5 == 4][: args.held_out]
    train = [p for i, p in enumerate(pairs) if i % 5 != 4]
    (WORK / "train.json").write_text(json.dumps([row for row, _ in train]))
    print(f"{len(pairs)} of 300 pairs fit {args.max_tokens} tokens: {len(train)} for training, {len(held)} held out")

    before = _score(None, [p for _, p in held])
    cfg = {
        "name": "dpo-cpu", "base_model": "embedded", "data": [{"path": str(WORK / "train.json")}],
        "output_dir": str(WORK / "run"), "workspace": None, "max_seq_len": args.max_tokens,
        **({"epochs": args.epochs} if args.epochs else {"max_steps": args.steps}),
        "method": {"kind": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "objective": "dpo", "beta": args.beta,
                   "sft_weight": args.sft_weight},
        "optim": {"lr": args.lr, "scheduler": "cosine", "warmup_ratio": 0.05, "batch_tokens": 4 * args.max_tokens, "grad_accum": 1},
        "gradient_checkpointing": False, "log_every_steps": 5, "eval": {"every_steps": 1000, "sample_prompts": 0}, "seed": 0,
    }
    import yaml

    (WORK / "dpo.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    cmd = [str(REPO / ".venv" / "bin" / "train"), "run", str(WORK / "dpo.yaml"), "--fresh"]
    print("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    train_seconds = time.perf_counter() - t0
    after = _score(WORK / "run" / "adapter", [p for _, p in held])

    flips_up = sum(1 for a, b in zip(before["per_pair"], after["per_pair"]) if a < b)
    flips_down = sum(1 for a, b in zip(before["per_pair"], after["per_pair"]) if a > b)
    print()
    print(f"held-out preference pairs: {len(held)} (never trained on); training: "
          f"{f'{args.epochs:g} epochs' if args.epochs else f'{args.steps} steps'} of 2 pairs, sft_weight {args.sft_weight}, "
          f"{train_seconds / 60:.1f} min on this machine's CPU")
    print(f"{'':28s}{'base':>10s}{'base + DPO adapter':>22s}")
    for key in ("preference_accuracy", "preference_margin", "preference_margin_per_token"):
        print(f"{key:28s}{before[key]:>10.3f}{after[key]:>22.3f}")
    print(f"pairs that turned right: {flips_up}; turned wrong: {flips_down}")
    (WORK / "result.json").write_text(json.dumps({"before": before, "after": after, "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
