"""Generation benchmark: evalsuite's batched generation against the seeds' per-example ``generate`` loop.

    .venv/bin/python bench/eval_bench.py                      # 64 Alpaca prompts, 64 new tokens, CPU
    python bench/eval_bench.py --device cuda --n 512           # on a GPU

Same model (the embedded SmolLM2-135M-Instruct, or ``--model PATH``), same prompts (real Alpaca
instructions, rendered with the model's chat template for both), same ``max_new_tokens``, one run.

- seeds' loop (``../shared/seeds``): one ``model.generate`` call per example, sampling on
  (temperature 0.7, top-p 0.9) as written there; ``--seed-greedy`` makes it greedy instead;
- ours: :func:`chat.generate.generate`, length-sorted left-padded batches, greedy.

Both stop at the chat template's end-of-turn. Printed: wall time, examples/s, generated tokens/s (the
tokens each method actually produced), and with ``--seed-greedy`` how many answers are identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def seed_loop(model, tok, texts: list[str], max_new_tokens: int, greedy: bool, stops: list[int]) -> list[str]:
    import torch

    out = []
    torch.manual_seed(0)
    for text in texts:
        x = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        kw = {"do_sample": False} if greedy else {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
        with torch.no_grad():
            y = model.generate(**x, max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tok.pad_token_id, **kw)
        out.append(tok.decode(y[0, x["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.models import smollm2_model_dir
    from chat.generate import generate, render_prompts, stop_token_ids

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--seed-greedy", action="store_true", help="run the seeds' loop greedy, to compare answers")
    args = ap.parse_args()

    path = args.model or str(smollm2_model_dir())
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    folder = Path(args.data) / "alpaca"
    source = next(f for f in [folder / "alpaca_4000.json", folder / "alpaca_data_first10k_excl_holdout.json"] if f.is_file())
    rows = json.loads(source.read_text())[: args.n]
    convs = [[{"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")}] for r in rows]
    texts = render_prompts(tok, convs)
    stops = stop_token_ids(tok, model)
    generate(model, tok, convs[:2], max_new_tokens=4)  # warm-up for both

    def n_tokens(answers: list[str]) -> int:
        return sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)

    t0 = time.perf_counter()
    seeds = seed_loop(model, tok, texts, args.max_new_tokens, args.seed_greedy, stops)
    t_seed = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = generate(model, tok, convs, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    t_ours = time.perf_counter() - t0

    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"{args.n} Alpaca prompts, max_new_tokens {args.max_new_tokens}, {device}, {torch.get_num_threads()} threads")
    print(f"{'method':28} {'seconds':>8} {'examples/s':>11} {'gen tokens/s':>13} {'tokens':>7}")
    for name, t, answers in ((f"seeds' loop ({'greedy' if args.seed_greedy else 'sampling'})", t_seed, seeds),
                             (f"ours (batches of {args.batch_size})", t_ours, ours)):
        n = n_tokens(answers)
        print(f"{name:28} {t:>8.1f} {args.n / t:>11.2f} {n / t:>13.1f} {n:>7}")
    print(f"speed-up (examples/s): {t_seed / t_ours:.2f}x")
    if args.seed_greedy:
        print(f"identical answers: {sum(a == b for a, b in zip(seeds, ours))} of {args.n}")


if __name__ == "__main__":
    main()
