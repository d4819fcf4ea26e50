"""Write gsm8k_lm_eval_golden.jsonl: lm-evaluation-harness 0.4.13's own GSM8K verdicts on lm-eval-style outputs.

The outputs are built from the answers of ../shared/data/gsm8k/test.jsonl (openai/grade-school-math, MIT) in
the styles a model answers in (the "#### N" format of the few-shot examples, "The answer is N.", currency and
thousands commas, a trailing period, a wrong final number, a chain that ends on another number, a negative
answer). Each is run through lm-eval's own code: the two filter pipelines of lm_eval/tasks/gsm8k/gsm8k.yaml
(strict-match: regex ``#### (\\-?[0-9\\.\\,]+)`` then take_first; flexible-extract: regex
``(-?[$0-9.,]{2,})|(-?[0-9]+)`` with group_select -1 then take_first) and its exact_match metric with the yaml's
arguments (ignore_case, regexes_to_ignore), one item at a time, against the document's full answer (the yaml's
doc_to_target). tests/test_eval_graders.py holds our named extractors to these verdicts item by item.

Regenerate (lm-eval is not a dependency of the project; its wheel is read, not installed):

    pip download lm_eval==0.4.13 --no-deps -d /tmp/lm && unzip -q /tmp/lm/lm_eval-0.4.13-py3-none-any.whl -d /tmp/lm/whl
    .venv/bin/python tests/data/graders/make_gsm8k_lm_eval_golden.py /tmp/lm/whl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GSM8K = HERE.parents[2].parent / "shared" / "data" / "gsm8k" / "test.jsonl"
NEGATIVE_LINES = (490, 1114)  # the test set's two negative answers (-10, -3), 1-based lines


def styles(solution: str, answer: str) -> dict[str, tuple[str, bool]]:
    """output style -> (output, whether the number it ends on is the answer)."""
    value = int(answer.replace(",", ""))
    body = solution.rsplit("####", 1)[0].rstrip()
    dollars = f"-${-value:,}" if value < 0 else f"${value:,}"
    return {
        "hashes": (solution, True),                                        # the few-shot format itself
        "answer_is": (f"{body}\nThe answer is {value}.", True),            # strict finds nothing
        "currency_comma_period": (f"{body}\nSo the total is {dollars}.", True),
        "hashes_decimal": (f"{body}\n#### {value}.00", True),              # strict's string is "18.00"
        "hashes_then_more": (f"{body}\n#### {value}\nI hope this helps, it took 2 steps.", True),  # flexible takes 2
        "wrong_final": (f"{body}\n#### {value + 1}", False),
        "answer_then_wrong": (f"{body}\nThe answer is {value}, or maybe {value * 10}.", False),
        "no_number": ("I am not able to solve this problem.", False),
    }


def main(lm_eval_path: str) -> None:
    sys.path.insert(0, lm_eval_path)
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.filters.selection import TakeFirstFilter

    import yaml

    cfg = yaml.safe_load((Path(lm_eval_path) / "lm_eval" / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    metric = {k: v for k, v in cfg["metric_list"][0].items() if k not in ("metric", "aggregation", "higher_is_better")}
    pipelines = {}
    for flt in cfg["filter_list"]:
        regex = flt["filter"][0]
        assert regex["function"] == "regex" and flt["filter"][1]["function"] == "take_first"
        pipelines[flt["name"]] = RegexFilter(regex["regex_pattern"], regex.get("group_select", 0))

    lines = GSM8K.read_text(encoding="utf-8").splitlines()
    wanted = list(range(1, 41)) + list(NEGATIVE_LINES)
    rows = []
    for n, line in enumerate(wanted):
        doc = json.loads(lines[line - 1])
        answer = doc["answer"].rsplit("####", 1)[1].strip()
        all_styles = styles(doc["answer"], answer)
        names = list(all_styles)
        # two styles per item, every style on several items; both negatives get the first two
        for name in (names[(2 * n) % len(names)], names[(2 * n + 1) % len(names)]):
            output, correct = all_styles[name]
            row = {"line": line, "style": name, "output": output, "intended_correct": correct}
            for pipe_name, flt in pipelines.items():
                filtered = list(TakeFirstFilter().apply(flt.apply([[output]], [doc]), [doc]))[0]
                em = exact_match_hf_evaluate(predictions=[filtered], references=[doc["answer"]], **metric)
                em = em["exact_match"]
                row[pipe_name] = {"filtered": filtered, "exact_match": float(em)}
            rows.append(row)
    out = HERE / "gsm8k_lm_eval_golden.jsonl"
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} rows -> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
