"""Pairwise judge agreement with GPT-4 on AlpacaEval, with and without the position swap.

    .venv/bin/python bench/judge_agreement.py --n 200                  # the embedded SmolLM2 judge, CPU
    python bench/judge_agreement.py --backend openai --url URL --model NAME   # any OpenAI-compatible judge

Data: ``alpaca_eval/llama-2-7b-chat-hf_alpaca_eval_gpt4_annotations.json`` (../shared/data): 805 AlpacaEval
instructions, text-davinci-003's answer (output_1) and Llama-2-7B-chat's (output_2), and GPT-4's preference
(1 or 2; GPT-4's one tie is left out). The first ``--n`` annotated pairs are judged.

Printed, one run:
- single order (output_1 shown as A): agreement with GPT-4 over all pairs (an unparseable or tied verdict
  disagrees), and over the pairs the judge decided;
- both orders (:func:`evalsuite.judge.pairwise`: a win only when both orders agree): the same two figures,
  and how often the orders agreed;
- position bias: the share of replies choosing "A"; unparseable and failed counts;
- for scale, the agreement of always answering GPT-4's majority choice, and of a coin.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--backend", choices=["local", "openai"], default="local")
    ap.add_argument("--model", default=None, help="local: embedded (default) or a path; openai: the model name")
    ap.add_argument("--url", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="write the per-pair verdicts and the summary as JSON here")
    args = ap.parse_args()

    from evalsuite.judge import JudgeConfig, make_judge, pairwise

    rows = json.loads((Path(args.data) / "alpaca_eval" / "llama-2-7b-chat-hf_alpaca_eval_gpt4_annotations.json").read_text())
    rows = [r for r in rows if r["preference"] in (1, 2)][: args.n]
    gold = ["A" if r["preference"] == 1 else "B" for r in rows]
    judge = make_judge(JudgeConfig(backend=args.backend, model=args.model, url=args.url, max_new_tokens=8, device=args.device))
    prompts, first, second = [r["instruction"] for r in rows], [r["output_1"] for r in rows], [r["output_2"] for r in rows]

    t0 = time.perf_counter()
    # both orders through the library: "base" is output_1, "fine_tune" output_2; order 1 is the single-order run
    res = pairwise(judge, prompts, first, second)
    seconds = time.perf_counter() - t0
    single = [r["order1"] for r in res["records"]]
    combined = [{"base": "A", "fine_tune": "B"}.get(r["verdict"]) for r in res["records"]]  # tie/inconsistent/None: no pick

    def agreement(picks):
        hits = sum(p == g for p, g in zip(picks, gold))
        decided = [(p, g) for p, g in zip(picks, gold) if p in ("A", "B")]
        return hits / len(gold), (sum(p == g for p, g in decided) / len(decided) if decided else float("nan")), len(decided)

    s = res["summary"]
    a1, a1d, n1 = agreement(single)
    a2, a2d, n2 = agreement(combined)
    majority = max(gold.count("A"), gold.count("B")) / len(gold)
    print(f"judge: {res['judge']['backend']} {res['judge']['model']}; {len(rows)} AlpacaEval pairs with a GPT-4 preference; {seconds:.0f} s")
    print(f"{'':34} {'agree (all)':>12} {'agree (decided)':>16} {'decided':>8}")
    print(f"{'single order (output_1 as A)':34} {a1:>12.3f} {a1d:>16.3f} {n1:>8}")
    print(f"{'both orders, swap-consistent':34} {a2:>12.3f} {a2d:>16.3f} {n2:>8}")
    print(f"orders agreed on {s['order_agreement']:.1%} of parsed pairs; 'A' chosen in {s['first_position_rate']:.1%} of parsed replies; "
          f"unparseable pairs {s['unparseable']}, failed {s['failed']}; single-order unparseable {sum(p is None for p in single)}")
    print(f"for scale: always GPT-4's majority answer {majority:.3f}; a coin 0.500")
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": s, "judge": res["judge"], "agreement": {
            "single_all": a1, "single_decided": a1d, "both_all": a2, "both_decided": a2d, "majority": majority},
            "records": [{**r, "gpt4": g} for r, g in zip(res["records"], gold)]}, indent=1))


if __name__ == "__main__":
    main()
