"""Probe kinds: the common log-likelihood benchmarks in lm-evaluation-harness 0.4's prompts and scoring, read
from local files, scored on the base and the fine-tune alike (the forgetting check).

A probe kind is a loader (``path, limit -> items``) and the registered metric that scores its items
(:mod:`evalsuite.metrics.choice`), kept in one registry, :data:`PROBES`. A suite task names one with
``kind:``; a user's own module adds one with :func:`register_probe` (the suite's ``plugins:`` imports it).

=================  ========================  =================================================================
kind               metric (result keys)      prompt (as the harness's task builds it)
=================  ========================  =================================================================
``mmlu``           multiple_choice           "The following are multiple choice questions (with answers)
                   (acc, acc_norm)           about {subject}.\\n\\n{question}\\nA. ..\\nD. ..\\nAnswer:", " A".." D"
``openbookqa``     multiple_choice           the question stem; the answer texts
``truthfulqa_mc1`` multiple_choice           the six-shot QA preamble, "Q: {question}\\nA:"; best vs incorrect
``arc_easy``,      multiple_choice           "Question: {question}\\nAnswer:"; the answer texts
``arc_challenge``
``hellaswag``      multiple_choice           preprocess("{activity_label}: {ctx_a} {ctx_b.capitalize()}");
                                             the preprocessed endings
``piqa``           multiple_choice           "Question: {goal}\\nAnswer:"; sol1, sol2
``boolq``          multiple_choice           "{passage}\\nQuestion: {question}?\\nAnswer:"; "no", "yes"
``winogrande``     partial_choice (acc)      per option: the sentence up to the blank with the option filled
                                             in; the rest of the sentence scored after each
``lambada``        last_word                 the text up to its last space; " " + the last word (greedy match,
                   (acc, perplexity)         and perplexity = exp(-mean log-likelihood), lower is better)
=================  ========================  =================================================================

Each loader's docstring names the file formats it reads: the original datasets' field names (as the
harness's Hugging Face datasets have them) and llm-foundry's local-data format where it differs. A row that
fits neither is a :class:`ProbeFormatError` naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.registry import Registry, RegistryError, UnknownNameError
from evalsuite.metrics.choice import (  # noqa: F401  (the scoring, re-exported)
    MCItem, PartialItem, TargetItem, encode_pair, loglikelihoods, score_mc,
)

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


@dataclass(frozen=True)
class ProbeKind:
    """A registered probe kind: ``load(path, limit)`` reads up to ``limit`` items (all when None) from a
    file, and the registered metric ``metric`` scores them (``metric(model, tokenizer, items)``)."""

    name: str
    load: Callable[[Path, int | None], list[Any]]
    metric: str
    description: str = ""


class UnknownProbe(UnknownNameError):
    """A probe kind that is not in :data:`PROBES`."""


def _probe_of(name: str, obj: Any) -> ProbeKind:
    """The entry for what a spec or an entry point names: a :class:`ProbeKind`, or a loader
    ``fn(path, limit) -> items`` scored by ``multiple_choice``."""
    if isinstance(obj, ProbeKind):
        return obj
    if not callable(obj):
        raise RegistryError(f"{obj!r} is not a probe loader (a function path, limit -> items)")
    return ProbeKind(name, obj, "multiple_choice", (obj.__doc__ or "").strip().split("\n")[0])


#: Every probe kind a task's ``kind:`` can name; packages add theirs through ``finetune_workbench.probes``.
PROBE_REGISTRY: Registry[ProbeKind] = Registry("probe kind", coerce=_probe_of, error=UnknownProbe, group="finetune_workbench.probes",
                                               name_of=lambda obj: obj.name if isinstance(obj, ProbeKind) else obj.__name__)
PROBES: dict[str, ProbeKind] = PROBE_REGISTRY.entries  # the live mapping


def register_probe(name: str, *, metric: str = "multiple_choice") -> Callable[[Callable], Callable]:
    """Decorator: register the loader ``fn(path, limit) -> items`` as probe kind ``name``, scored by the
    registered metric ``metric`` (``multiple_choice`` takes :class:`MCItem`, ``partial_choice``
    :class:`PartialItem`, ``last_word`` :class:`TargetItem`; a user's own metric takes what its loader
    gives). The function is returned unchanged, so one loader can back several kinds. A name already
    registered, or an unknown metric, is a ValueError."""
    from evalsuite.metrics import get_metric

    get_metric(metric)  # UnknownMetric (a ValueError) names the metrics there are

    def decorate(fn: Callable) -> Callable:
        if name in PROBES:
            raise RegistryError(f"probe kind {name!r} is already registered")
        PROBE_REGISTRY.add(name, ProbeKind(name, fn, metric, (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return decorate


def get_probe(name: str) -> ProbeKind:
    """The registered probe kind ``name``; :class:`UnknownProbe` with a did-you-mean and the known kinds."""
    return PROBE_REGISTRY.get(name)


def item_view(item: Any) -> dict[str, Any]:
    """What a run records of one item: ``prompt`` (the text shown as the user turn), ``reference`` (the gold
    answer), and the ``prompt_key``/``reference_key`` its prompts and references hashes are taken over (for
    :class:`MCItem` the same as earlier releases, so their runs stay comparable). An item type of a user's
    own probe shows its ``repr`` and hashes its fields."""
    if isinstance(item, MCItem):
        return {"prompt": item.context, "reference": item.choices[item.gold], "prompt_key": [item.context, item.choices],
                "reference_key": item.gold}
    if isinstance(item, PartialItem):
        return {"prompt": "\n".join(f"{c} {item.continuation}" for c in item.contexts),
                "reference": (item.options or item.contexts)[item.gold], "prompt_key": [item.contexts, item.continuation],
                "reference_key": item.gold}
    if isinstance(item, TargetItem):
        return {"prompt": item.context, "reference": item.target, "prompt_key": item.context, "reference_key": item.target}
    fields = {k: v for k, v in vars(item).items() if k != "source"} if hasattr(item, "__dict__") else repr(item)
    return {"prompt": repr(item), "reference": str(getattr(item, "gold", "")), "prompt_key": repr(fields), "reference_key": repr(fields)}


# ------------------------------------------------------------------------------------------- reading rows

class _Row:
    """One JSON object of a probe file, with field readers whose errors name the file, line and field."""

    def __init__(self, path: Path, line: int, record: dict[str, Any], kind: str):
        self.path, self.line, self.record, self.kind = path, line, record, kind

    @property
    def source(self) -> str:
        return f"{self.path.name}:{self.line}"

    def error(self, field: str, problem: str) -> ProbeFormatError:
        return ProbeFormatError(f"{self.path}:{self.line}: field {field!r}: {problem} (a {self.kind} row)")

    def has(self, *fields: str) -> bool:
        return all(f in self.record for f in fields)

    def text(self, field: str, allow_empty: bool = False) -> str:
        if field not in self.record:
            raise self.error(field, "missing")
        value = self.record[field]
        if not isinstance(value, str):
            raise self.error(field, f"must be a string, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise self.error(field, "is empty")
        return value

    def texts(self, field: str, n: int | None = None) -> list[str]:
        if field not in self.record:
            raise self.error(field, "missing")
        value = self.record[field]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.error(field, f"must be a non-empty list of strings, got {json.dumps(value)[:60]}")
        if n is not None and len(value) != n:
            raise self.error(field, f"must hold {n} strings, got {len(value)}")
        return value

    def index(self, field: str, n: int, base: int = 0) -> int:
        """An index into ``n`` choices: an int or a string of digits, counted from ``base``."""
        if field not in self.record:
            raise self.error(field, "missing")
        value = self.record[field]
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not base <= value < n + base:
            raise self.error(field, f"must be an index in {base}..{n - 1 + base}, got {value!r}")
        return value - base


def _rows(path: Path, kind: str, limit: int | None) -> Iterator[_Row]:
    """The JSON objects of a JSON Lines file, blank lines skipped, at most ``limit`` of them."""
    count = 0
    with open(path, encoding="utf-8") as fh:
        for line, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError as exc:
                raise ProbeFormatError(f"{path}:{line}: not a JSON line ({exc}) (a {kind} file is JSON Lines)") from None
            if not isinstance(record, dict):
                raise ProbeFormatError(f"{path}:{line}: a {kind} row is a JSON object, got {type(record).__name__}")
            yield _Row(path, line, record, kind)
            count += 1
            if limit and count >= limit:
                return


def _neither(row: _Row, forms: str) -> ProbeFormatError:
    return row.error(sorted(row.record)[0] if row.record else "(none)",
                     f"the row has fields {sorted(row.record)}; expected {forms}")


# -------------------------------------------------------------------------- the formats of earlier releases

@register_probe("mmlu")
def mmlu_items(path: Path, limit: int | None = None) -> list[MCItem]:
    """MMLU (``<subject>_test.csv``: question, A, B, C, D, answer): lettered options, choices " A".." D"."""
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


@register_probe("openbookqa")
def openbookqa_items(path: Path, limit: int | None = None) -> list[MCItem]:
    """OpenBookQA (AI2 JSON Lines: question.stem, question.choices[label, text], answerKey): the stem, the answer texts."""
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


@register_probe("truthfulqa_mc1")
def truthfulqa_mc1_items(path: Path, limit: int | None = None) -> list[MCItem]:
    """TruthfulQA MC1 (TruthfulQA.csv): the six-shot QA preamble, the best answer against the incorrect ones."""
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


# ------------------------------------------------------------------------------ the harness's common sets

@register_probe("arc_challenge")
@register_probe("arc_easy")
def arc_items(path: Path, limit: int | None = None) -> list[MCItem]:
    """ARC (Easy or Challenge): "Question: {question}\\nAnswer:", the answer texts as choices (arc_easy.yaml).

    Reads JSON Lines in any of:
    - the harness's dataset (allenai/ai2_arc): ``question`` (str), ``choices: {text: [...], label: [...]}``,
      ``answerKey`` (one of the labels);
    - AI2's original release: ``question: {stem, choices: [{text, label}]}``, ``answerKey``;
    - llm-foundry's local data: ``query`` ("Question: {question}", the prefix included), ``choices``,
      ``gold`` (0-based); the context is ``query + "\\nAnswer:"``.
    """
    items = []
    for row in _rows(path, "ARC", limit):
        rec = row.record
        if row.has("query"):
            choices = row.texts("choices")
            items.append(MCItem(row.text("query") + "\nAnswer:", choices, row.index("gold", len(choices)), row.source))
            continue
        if not row.has("question", "answerKey"):
            raise _neither(row, "question, choices, answerKey (the ai2_arc dataset) or query, choices, gold (llm-foundry)")
        if isinstance(rec["question"], dict):  # AI2's release: the stem and choices inside `question`
            q = rec["question"]
            question = q.get("stem")
            raw = q.get("choices")
            if not isinstance(question, str) or not question.strip():
                raise row.error("question.stem", "missing or not a string")
            if not isinstance(raw, list) or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in raw):
                raise row.error("question.choices", "must be a list of {text, label}")
            texts, labels = [c["text"] for c in raw], [str(c.get("label")) for c in raw]
        else:
            question = row.text("question")
            ch = rec.get("choices")
            if (not isinstance(ch, dict) or not isinstance(ch.get("text"), list) or not isinstance(ch.get("label"), list)
                    or not ch["text"] or len(ch["text"]) != len(ch["label"]) or not all(isinstance(t, str) for t in ch["text"])):
                raise row.error("choices", f"must be {{text: [...], label: [...]}} of one length, got {json.dumps(ch)[:60]}")
            texts, labels = ch["text"], [str(x) for x in ch["label"]]
        key = str(rec["answerKey"])
        if key not in labels:
            raise row.error("answerKey", f"{key!r} is none of the choice labels {labels}")
        items.append(MCItem(f"Question: {question}\nAnswer:", texts, labels.index(key), row.source))
    return items


def hellaswag_preprocess(text: str) -> str:
    """The harness's HellaSwag text clean-up (hellaswag/utils.py ``preprocess``): strip, " [title]" to
    ". ", drop other ``[...]`` tags (WikiHow artifacts), double spaces to one."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def split_hellaswag_ctx(ctx: str) -> tuple[str, str]:
    """``(ctx_a, ctx_b)`` from a joined ``ctx`` (``ctx_a + " " + ctx_b``), for files that kept only ``ctx``:
    ``ctx_b`` is the text after the last sentence end (". ", "! ", "? ") when it starts with a lowercase
    letter (the ActivityNet items' unfinished sentence, "the lady"), else empty. On the dataset's first ten
    validation rows this gives back their ``ctx_a``/``ctx_b`` exactly."""
    m = re.match(r"(?s)(.*[.!?])\s(.*)\Z", ctx)
    if m and m.group(2)[:1].islower():
        return m.group(1), m.group(2)
    return ctx, ""


@register_probe("hellaswag")
def hellaswag_items(path: Path, limit: int | None = None) -> list[MCItem]:
    """HellaSwag: ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` and the preprocessed
    endings (hellaswag/utils.py ``process_docs``).

    Reads JSON Lines in either of:
    - the dataset (Rowan/hellaswag, rowanz's jsonl): ``activity_label``, ``ctx_a``, ``ctx_b``, ``endings``
      (4), ``label`` (an int or a digit string; the test split has none and is refused);
    - files that kept the joined ``ctx`` only (``activity_label``, ``ctx``, ``endings``, ``label``, as
      ``shared/data/hellaswag``): ``ctx_a``/``ctx_b`` are recovered by :func:`split_hellaswag_ctx`.
    """
    items = []
    for row in _rows(path, "HellaSwag", limit):
        if row.has("ctx_a"):
            ctx_a, ctx_b = row.text("ctx_a", allow_empty=True), row.text("ctx_b", allow_empty=True)
        elif row.has("ctx"):
            ctx_a, ctx_b = split_hellaswag_ctx(row.text("ctx"))
        else:
            raise _neither(row, "activity_label, ctx_a, ctx_b, endings, label (or ctx instead of ctx_a, ctx_b)")
        endings = row.texts("endings")
        query = hellaswag_preprocess(row.text("activity_label", allow_empty=True) + ": " + ctx_a + " " + ctx_b.capitalize())
        items.append(MCItem(query, [hellaswag_preprocess(e) for e in endings], row.index("label", len(endings)), row.source))
    return items


@register_probe("piqa")
def piqa_items(path: Path, limit: int | None = None) -> list[MCItem]:
    """PIQA: "Question: {goal}\\nAnswer:", sol1 and sol2 as choices (piqa.yaml).

    Reads JSON Lines in either of:
    - the dataset (baber/piqa, ybisk's valid.jsonl with its labels merged in): ``goal``, ``sol1``, ``sol2``,
      ``label`` (0/1);
    - llm-foundry's local data: ``query`` ("Question: {goal}\\n"), ``choices`` (2), ``gold``; the context
      is the query (without its final newline) + "\\nAnswer:". llm-foundry stripped the texts: where the
      dataset's ``sol1``/``sol2`` end in a space the harness scores that space, this format cannot.
    """
    items = []
    for row in _rows(path, "PIQA", limit):
        if row.has("goal"):
            items.append(MCItem(f"Question: {row.text('goal')}\nAnswer:", [row.text("sol1"), row.text("sol2")],
                                row.index("label", 2), row.source))
        elif row.has("query"):
            choices = row.texts("choices", 2)
            items.append(MCItem(row.text("query").removesuffix("\n") + "\nAnswer:", choices, row.index("gold", 2), row.source))
        else:
            raise _neither(row, "goal, sol1, sol2, label (the dataset) or query, choices, gold (llm-foundry)")
    return items


@register_probe("boolq")
def boolq_items(path: Path, limit: int | None = None) -> list[MCItem]:
    """BoolQ: "{passage}\\nQuestion: {question}?\\nAnswer:", choices "no" and "yes" (super_glue/boolq).

    Reads JSON Lines in any of:
    - the harness's dataset (super_glue boolq): ``passage``, ``question``, ``label`` (0 = no, 1 = yes);
    - the original release: ``passage``, ``question``, ``answer`` (true/false);
    - llm-foundry's local data: ``query`` ("Passage: {passage}\\nQuestion: {question}?"), ``choices``
      (["no", "yes"]), ``gold``; the context is the query without "Passage: " + "\\nAnswer:".
    """
    items = []
    for row in _rows(path, "BoolQ", limit):
        if row.has("passage"):
            context = f"{row.text('passage')}\nQuestion: {row.text('question')}?\nAnswer:"
            if "label" in row.record:
                gold = row.index("label", 2)
            elif isinstance(row.record.get("answer"), bool):
                gold = int(row.record["answer"])
            else:
                raise row.error("label", "missing (or an `answer` of true/false)")
        elif row.has("query"):
            query = row.text("query")
            if not query.startswith("Passage: ") or "\nQuestion: " not in query:
                raise row.error("query", 'must be "Passage: {passage}\\nQuestion: {question}?"')
            if row.texts("choices", 2) != ["no", "yes"]:
                raise row.error("choices", f'must be ["no", "yes"], got {row.record["choices"]}')
            context, gold = query.removeprefix("Passage: ") + "\nAnswer:", row.index("gold", 2)
        else:
            raise _neither(row, "passage, question, label (the dataset) or query, choices, gold (llm-foundry)")
        items.append(MCItem(context, ["no", "yes"], gold, row.source))
    return items


def _option_tails(contexts: list[str]) -> list[str]:
    """What each context adds after the words they share: the options, for display."""
    prefix = os.path.commonprefix(contexts)
    cut = prefix.rfind(" ") + 1  # back to a word start: "Sa|rah" / "Sa|mantha" share "Sa"
    return [c[cut:] for c in contexts]


@register_probe("winogrande", metric="partial_choice")
def winogrande_items(path: Path, limit: int | None = None) -> list[PartialItem]:
    """Winogrande, partial evaluation: per option the sentence up to the blank with the option filled in, the
    rest of the sentence after the blank (stripped) scored after each (preprocess_winogrande.py).

    Reads JSON Lines in either of:
    - the dataset (allenai/winogrande): ``sentence`` (with one ``_`` blank), ``option1``, ``option2``,
      ``answer`` ("1" or "2");
    - llm-foundry's local data: ``context_options`` (the two filled-in beginnings), ``continuation``,
      ``gold`` (0-based).
    """
    items = []
    for row in _rows(path, "Winogrande", limit):
        if row.has("sentence"):
            sentence = row.text("sentence")
            if "_" not in sentence:
                raise row.error("sentence", "has no _ blank")
            cut = sentence.index("_")
            options = [row.text("option1"), row.text("option2")]
            items.append(PartialItem([sentence[:cut] + o for o in options], sentence[cut + 1 :].strip(),
                                     row.index("answer", 2, base=1), row.source, options))
        elif row.has("context_options"):
            contexts = row.texts("context_options", 2)
            items.append(PartialItem(contexts, row.text("continuation").strip(), row.index("gold", 2), row.source,
                                     _option_tails(contexts)))
        else:
            raise _neither(row, "sentence, option1, option2, answer (the dataset) or context_options, continuation, gold (llm-foundry)")
    return items


@register_probe("lambada", metric="last_word")
def lambada_items(path: Path, limit: int | None = None) -> list[TargetItem]:
    """LAMBADA (lambada_openai / lambada_standard): the text up to its last space as the context, a space and
    the last word as the target (``text.split(' ')``, as the harness's templates split it).

    Reads JSON Lines in either of:
    - the dataset (EleutherAI/lambada_openai): ``text``;
    - llm-foundry's local data: ``context``, ``continuation`` (the last word); the target is
      ``" " + continuation``.
    """
    items = []
    for row in _rows(path, "LAMBADA", limit):
        if row.has("text"):
            text = row.text("text")
            if " " not in text:
                raise row.error("text", "has no space: no context before a last word")
            context, word = text.rsplit(" ", 1)
            if not word:
                raise row.error("text", "ends with a space: no last word")
            items.append(TargetItem(context, " " + word, row.source))
        elif row.has("context"):
            items.append(TargetItem(row.text("context"), " " + row.text("continuation"), row.source))
        else:
            raise _neither(row, "text (the dataset) or context, continuation (llm-foundry)")
    return items
