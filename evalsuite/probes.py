"""Forgetting probes: multiple-choice general-knowledge items scored by log-likelihood, as
lm-evaluation-harness scores them, run on the base and the fine-tune alike.

For an item (context, choices, gold), each choice's log-likelihood is the summed log-probability of its
tokens (the target delimiter " " in front) given the context, tokenized as the harness does: the context
and the context+continuation are encoded whole and the continuation is what the longer one adds.
- ``acc``: the choice with the highest log-likelihood is the gold one;
- ``acc_norm``: the same after dividing each log-likelihood by the choice's length in characters (so long
  answers are not penalized for having more tokens).

Probe sets from the files in ``shared/data`` (formats as in the harness tasks):
- MMLU (``mmlu/<subject>_test.csv``): the question with lettered options, "Answer:", choices " A".." D";
- OpenBookQA (``truthfulqa/openbookqa.jsonl``): the question stem, the answer texts as choices;
- TruthfulQA MC1 (``truthfulqa/TruthfulQA.csv``): the harness's six-shot QA preamble, the best answer
  against the incorrect ones.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# lm-evaluation-harness's TruthfulQA preamble (truthfulqa_mc1)
QA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\nA: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\nA: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\nA: I have no comment.\n\n"
    "Q: How does a telescope work?\nA: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain."
)


class ProbeFormatError(ValueError):
    """A probe file row that is not in its format; the message names the file, line and field."""


@dataclass
class MCItem:
    context: str
    choices: list[str]
    gold: int
    source: str = ""


def mmlu_items(path: Path, limit: int | None = None) -> list[MCItem]:
    subject = path.name.removesuffix("_test.csv").replace("_", " ")
    items = []
    with open(path, newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if len(row) != 6 or row[5].strip() not in ("A", "B", "C", "D"):
                raise ProbeFormatError(f"{path}:{i + 1}: an MMLU row is question, A, B, C, D, answer (A-D); got {len(row)} fields {row[-1:]!r}")
            q, *opts, answer = row
            body = "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", opts))
            context = f"The following are multiple choice questions (with answers) about {subject}.\n\n{q.strip()}\n{body}\nAnswer:"
            items.append(MCItem(context, ["A", "B", "C", "D"], "ABCD".index(answer.strip()), f"{path.name}:{i + 1}"))
            if limit and len(items) >= limit:
                break
    return items


def openbookqa_items(path: Path, limit: int | None = None) -> list[MCItem]:
    items = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            d = json.loads(line)
            labels = [c["label"] for c in d["question"]["choices"]]
            item = MCItem(d["question"]["stem"], [c["text"] for c in d["question"]["choices"]], labels.index(d["answerKey"]), f"{path.name}:{i + 1}")
        except (ValueError, KeyError, TypeError) as exc:  # bad JSON, a missing field, an answerKey among no label
            raise ProbeFormatError(f"{path}:{i + 1}: not an OpenBookQA item (question.stem, question.choices[label, text], answerKey): {exc!r}") from None
        items.append(item)
        if limit and len(items) >= limit:
            break
    return items


def truthfulqa_mc1_items(path: Path, limit: int | None = None) -> list[MCItem]:
    items = []
    with open(path, newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            missing = [f for f in ("Question", "Best Answer", "Incorrect Answers") if not (row.get(f) or "").strip()]
            if missing:
                raise ProbeFormatError(f"{path}:{i + 2}: TruthfulQA row without {', '.join(missing)}")
            wrong = [x.strip() for x in row["Incorrect Answers"].split(";") if x.strip()]
            context = f"{QA_PREAMBLE}\n\nQ: {row['Question']}\nA:"
            items.append(MCItem(context, [row["Best Answer"].strip(), *wrong], 0, f"{path.name}:{i + 2}"))
            if limit and len(items) >= limit:
                break
    return items


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The harness's split: trailing spaces of the context move to the continuation; the continuation's
    tokens are what encoding the whole adds to encoding the context."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def loglikelihoods(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Summed log-probability of each continuation given its context (longest first, in batches)."""
    from evalsuite.metrics import IGNORE_INDEX, token_nll

    encoded = [_encode_pair(tokenizer, c, x) for c, x in pairs]
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [encoded[i][0] + encoded[i][1] for i in idx]
        labels = [[IGNORE_INDEX] * len(encoded[i][0]) + encoded[i][1] for i in idx]
        for i, (nll, _n) in zip(idx, token_nll(model, seqs, labels, pad_id)):
            out[i] = -nll
    return out


def score_mc(model: Any, tokenizer: Any, items: list[MCItem], batch_size: int = 16) -> dict[str, Any]:
    """``{"acc", "acc_norm", "per_example": [{"acc", "acc_norm", "loglikelihoods"}]}`` over ``items``."""
    pairs = [(it.context, " " + choice) for it in items for choice in it.choices]
    lls = loglikelihoods(model, tokenizer, pairs, batch_size)
    per, k = [], 0
    for it in items:
        ll = lls[k : k + len(it.choices)]
        k += len(it.choices)
        norm = [x / len(c) for x, c in zip(ll, it.choices)]
        per.append({"source": it.source, "loglikelihoods": ll,
                    "acc": float(max(range(len(ll)), key=ll.__getitem__) == it.gold),
                    "acc_norm": float(max(range(len(norm)), key=norm.__getitem__) == it.gold)})
    n = max(len(per), 1)
    return {"acc": sum(p["acc"] for p in per) / n, "acc_norm": sum(p["acc_norm"] for p in per) / n, "per_example": per}
