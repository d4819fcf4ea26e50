"""Forgetting probes: multiple-choice general-knowledge items in lm-evaluation-harness's formats, scored by
log-likelihood (:mod:`evalsuite.metrics.choice`) on the base and the fine-tune alike.

Probe sets from the files in ``shared/data`` (formats as in the harness tasks):
- MMLU (``mmlu/<subject>_test.csv``): the question with lettered options, "Answer:", choices " A".." D";
- OpenBookQA (``truthfulqa/openbookqa.jsonl``): the question stem, the answer texts as choices;
- TruthfulQA MC1 (``truthfulqa/TruthfulQA.csv``): the harness's six-shot QA preamble, the best answer
  against the incorrect ones.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from evalsuite.metrics.choice import MCItem, encode_pair, loglikelihoods, score_mc  # noqa: F401  (the scoring, re-exported)

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
