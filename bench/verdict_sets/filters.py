"""Filter verdicts: does each default filter stage reject what people (or construction) say should go, and
keep what they say should stay?

Every record of every set is written as an Alpaca row (``instruction`` / ``input`` / ``output``) into one
file, and ``curate run`` (``parse_config`` + ``Pipeline``, no tokenizer) runs on it once per stage with that
stage alone at its defaults, and once with the whole default filter list (stage ``filters (all)``: the
default stage list without PII flagging and the dedup stages). A record counts as rejected when the run
rejects it. Positives should be rejected (``fn``: a positive kept), negatives kept (``fp``: a negative
rejected).

Sets:

- ``alpaca_cleaning_dev`` (labels: the AlpacaDataCleaned cleaners): ``shared/alpaca_cleaning_dev``, 4,370 raw
  Alpaca rows aligned with the cleaned file. Positive: a row the cleaners removed, or whose empty/placeholder
  output they replaced (an answer was missing). Negative: a row they kept unchanged. Rows they only modified
  otherwise (a placeholder input blanked, an answer or instruction reworded) are left out: the cleaners
  neither kept nor removed them, and fixing a record is not a filter's verdict. Tune: ``raw_pos`` < 2,185;
  holdout: the rest. Every stage is measured here (most stages see few positives: the cleaners removed 24
  rows, mostly URL/image/file-dependent).
- ``language`` (labels: construction from WMT22's human translations): positives are German records, two
  consecutive German lines of ``wmt22`` (a source of the de-en set or a reference of the en-de set) as
  instruction and answer; negatives are English records: translation tasks in both directions built from
  WMT22 pairs (an English instruction such as "Translate into German:" with the source as input and the
  human reference as answer), identify-the-language tasks (a German line, answer "German"), "How do you say
  "<English line>" in German?" with the German reference as answer, GSM8K test
  questions with their answers, and real short math and code prompts of Alpaca (an instruction of at most 60
  characters with a digit or a code word). Tune: WMT lines in the first half of each file, GSM8K items at
  even positions, Alpaca rows with ``raw_pos`` < 2,185; holdout: the rest.
- ``repetition`` (labels: construction from real answers): negatives are real structured answers the
  AlpacaDataCleaned cleaners kept unchanged (4 or more non-empty lines: lists, songs and poems, tables,
  code, grids, surveys, recipes); positives are real Alpaca answers of 40+ words made to loop the way models
  degenerate (seeded): a sentence or a block of one to three sentences, a block of one to three lines, or a
  phrase of two to six words, repeated after its first occurrence until the copies are 1.5 to 4 times the
  text before them (60-80% of the result), or a phrase of two to six words of the answer repeated 10 to 60
  times on its own (a model looping from its first words), plus the OpenAI cookbook's real 26 KB "Eat a banana!" answer
  (in both parts). Tune/holdout by ``raw_pos`` as above.
- ``refusal`` (labels: construction; no external refusal labels exist in shared/data): positives are real
  Alpaca instructions whose answer opens with a real refusal sentence that Llama-2-7b-chat wrote for
  AlpacaEval (its first sentences that start "I apologize, but I cannot", "I cannot provide", "I cannot
  fulfill", "I'm just an AI"), either alone or followed by the real Alpaca answer (a disclaimer before an
  answer); negatives are the rows the AlpacaDataCleaned cleaners kept unchanged whose answer mentions AI,
  OpenAI, GPT, a language model, an apology or "I cannot" (external labels: kept). Tune/holdout by
  ``raw_pos``; refusal sentences split by their position in the AlpacaEval file (even: tune, odd: holdout).

``unlabeled_check`` (not a ``measure`` row): the reject rate of the default filters per reason on the Alpaca
rows past the dev slice (rows 4,462+ of ``alpaca_data_first10k_excl_holdout.json``), which no cleaner
label covers; read its rejects by hand.

``quick=True`` caps every set and part at about 60 records.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

DEV = "alpaca_cleaning_dev"
TUNE_RAW_POS = 2185


def _filter_stages() -> tuple[str, ...]:
    """The stages of the default list that filter record by record: not global (dedup), not flag-only (PII)."""
    from curate.config import DEFAULT_STAGES
    from curate.stages import get_stage

    out = []
    for spec in DEFAULT_STAGES:
        name, params = (spec, {}) if isinstance(spec, str) else next(iter(spec.items()))
        if not get_stage(name).is_global and params.get("action") != "flag":
            out.append(name)
    return tuple(out)


PER_RECORD_STAGES = _filter_stages()
ALL = "filters (all)"
STAGES = (*PER_RECORD_STAGES, ALL)
LABELS = {
    DEV: "AlpacaDataCleaned cleaners",
    "language": "construction: WMT22 human German text vs English records and translation tasks built from WMT22 pairs",
    "repetition": "construction: real answers made to loop, vs real structured answers the cleaners kept",
    "refusal": "construction: real Llama-2-chat refusal openings on real Alpaca rows, vs rows the cleaners kept",
}
# The sets each stage is measured on (every stage on the dev alignment; the specialised sets for their stage)
SETS_OF = {
    "language": (DEV, "language"),
    "refusal": (DEV, "refusal"),
    "unique_words": (DEV, "repetition"),
    "gopher_repetition": (DEV, "repetition"),
    ALL: (DEV, "language", "repetition", "refusal"),
}


NOTES = {
    ("unique_words", "repetition"): "passage loops are gopher_repetition's; this rule catches loops of a small vocabulary",
    ("language", DEV): "the cleaners removed no foreign record here",
    ("refusal", DEV): "the cleaners' removals are URL/image tasks; refusals they replaced are not removals",
    ("refusal", "refusal"): "the tune part's rejected negative is a '<nooutput> ... cannot be fulfilled by a GPT model' row the cleaners kept",
}


def _part(tune: bool) -> str:
    return "tune" if tune else "holdout"


# -- the sets -------------------------------------------------------------------------------------------------


def dev_set(shared: Path) -> list[dict]:
    """The cleaners' verdicts on the dev slice: records with ``label`` (True: should go) and ``part``."""
    dev = shared / DEV
    raw = json.loads((dev / "raw_alpaca_dev.json").read_text())
    cleaned = json.loads((dev / "cleaned_alpaca_dev.json").read_text())
    out = []
    for line in (dev / "alignment_dev.jsonl").read_text().splitlines():
        a = json.loads(line)
        pos = a.get("raw_pos")
        if pos is None:
            continue
        row = raw[pos]
        if a["status"] == "removed":
            label = True
        elif a["status"] == "unchanged":
            label = False
        elif a["status"] == "modified" and "output" in a["changed_fields"] and _missing_answer(row["output"], cleaned[a["cleaned_pos"]]["output"]):
            label = True
        else:
            continue
        out.append({"rec": row, "label": label, "part": _part(pos < TUNE_RAW_POS), "set": DEV, "raw_pos": pos})
    return out


def _missing_answer(raw_output: str, cleaned_output: str) -> bool:
    """The raw answer was empty or a placeholder the cleaners replaced: short, no sentence in it."""
    r = raw_output.strip()
    return (not r) or (len(r) < 40 and cleaned_output.strip() != r and bool(re.fullmatch(r"[\W_]*(?:<?\s*(?:no ?output|no ?input|n/?a)\s*>?)?[\W_]*", r, re.I)))


def _lines(path: Path) -> list[str]:
    return [x.strip() for x in path.read_text().splitlines()]


def language_set(shared: Path, dev_rows: list[dict], cap: int | None) -> list[dict]:
    """German records (positives) and English records incl. translation and identify-the-language tasks."""
    w = shared / "wmt22" / "txt"
    de_src = _lines(w / "sources" / "generaltest2022.de-en.src.de")
    en_ref = _lines(w / "references" / "generaltest2022.de-en.ref.A.en")
    en_src = _lines(w / "sources" / "generaltest2022.en-de.src.en")
    de_ref = _lines(w / "references" / "generaltest2022.en-de.ref.A.de")
    rng = random.Random(22)
    out: list[dict] = []

    def add(rec: dict, label: bool, tune: bool) -> None:
        out.append({"rec": rec, "label": label, "part": _part(tune), "set": "language"})

    to_de = ("Translate into German:", "Translate the following sentence into German.", "Translate this text to German.")
    to_en = ("Translate into English:", "Translate the following sentence into English.", "What does this German text mean in English?")
    identify = ("Identify the language of this text.", "Which language is this sentence written in?", "Detect the language of the following text:")
    for german, english_pairs, src_is_de in ((de_src, list(zip(de_src, en_ref)), True), (de_ref, list(zip(en_src, de_ref)), False)):
        half = len(german) // 2
        for i in range(0, len(german) - 1, 2):  # German records: two consecutive lines as instruction and answer
            if german[i] and german[i + 1]:
                add({"instruction": german[i], "input": "", "output": german[i + 1]}, True, i < half)
        for i, (a, b) in enumerate(english_pairs):
            if not (a and b):
                continue
            if src_is_de:  # German source -> English reference
                add({"instruction": rng.choice(to_en), "input": a, "output": b}, False, i < half)
                if i % 4 == 0:
                    add({"instruction": rng.choice(identify), "input": a, "output": "German"}, False, i < half)
            else:  # English source -> German reference
                add({"instruction": rng.choice(to_de), "input": a, "output": b}, False, i < half)
                if i % 4 == 1 and len(a) <= 120:
                    add({"instruction": f'How do you say "{a}" in German?', "input": "", "output": b}, False, i < half)
    gsm = [json.loads(x) for x in (shared / "gsm8k" / "test.jsonl").read_text().splitlines()]
    for i, g in enumerate(gsm):
        add({"instruction": g["question"], "input": "", "output": g["answer"]}, False, i % 2 == 0)
    code_or_math = re.compile(r"\d|\b(?:code|python|function|sql|program|array|list|equation|expression|calculate|compute|evaluate)\b", re.I)
    for r in dev_rows:
        if not r["label"] and len(r["rec"]["instruction"]) <= 60 and code_or_math.search(r["rec"]["instruction"]):
            add(r["rec"], False, r["raw_pos"] < TUNE_RAW_POS)
    return _capped(out, cap, rng)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def make_loop(answer: str, rng: random.Random) -> str | None:
    """A real answer made to degenerate: a sentence/line block or a short phrase repeated after its first
    occurrence until the copies are 1.5-4x the text before them, or a short phrase of it repeated 10-60 times
    alone. None when the answer has no usable unit."""
    kind = rng.choice(("sentence", "lines", "phrase", "phrase only"))
    lines = [x for x in answer.split("\n") if x.strip()]
    sentences = _SENTENCE_END.split(answer.strip())
    if kind == "lines" and len(lines) < 3:
        kind = "sentence"
    if kind == "sentence" and len(sentences) < 2:
        kind = "phrase"
    if kind == "lines":
        k = rng.randrange(1, len(lines))
        b = min(rng.choice((1, 2, 3)), k + 1)
        prefix, unit, sep = "\n".join(lines[: k + 1]), "\n".join(lines[k + 1 - b : k + 1]), "\n"
    elif kind == "sentence":
        k = rng.randrange(0, len(sentences))
        b = min(rng.choice((1, 1, 2, 3)), k + 1)
        prefix, unit, sep = " ".join(sentences[: k + 1]), " ".join(sentences[k + 1 - b : k + 1]), " "
    else:
        ws = answer.split()
        n = rng.randint(2, 6)
        k = rng.randrange(0, len(ws) - n + 1)
        prefix, unit, sep = " ".join(ws[: k + n]), " ".join(ws[k : k + n]), rng.choice((" ", "", "\n"))
        if kind == "phrase only":  # a model that loops from its first words ("Ooh ooh ah ah ...")
            prefix = unit
    if len(re.findall(r"[^\W\d_]{2,}", unit)) < 2:
        return None
    if kind == "phrase only":
        copies = rng.randint(10, 60)
        return sep.join([unit] * copies)
    copies = max(4, math.ceil(len(prefix) * rng.uniform(1.5, 4.0) / (len(unit) + len(sep))))
    return prefix + sep + sep.join([unit] * copies)


def repetition_set(shared: Path, dev_rows: list[dict], cap: int | None) -> list[dict]:
    """Real structured answers the cleaners kept (negatives) and real answers made to loop (positives)."""
    rng = random.Random(7)
    out: list[dict] = []
    for r in dev_rows:
        if r["label"]:
            continue
        rec, tune = r["rec"], r["raw_pos"] < TUNE_RAW_POS
        if sum(1 for x in rec["output"].split("\n") if x.strip()) >= 4:
            out.append({"rec": rec, "label": False, "part": _part(tune), "set": "repetition"})
        if len(rec["output"].split()) >= 40 and rng.random() < 0.5:
            looped = make_loop(rec["output"], rng)
            if looped:
                out.append({"rec": {**rec, "output": looped}, "label": True, "part": _part(tune), "set": "repetition"})
    out = _capped(out, cap, rng)
    for line in (shared / "openai_messages" / "toy_chat_fine_tuning.jsonl").read_text().splitlines():
        msgs = json.loads(line)["messages"]
        answer = next((m["content"] for m in msgs if m["role"] == "assistant" and len(m.get("content") or "") > 10_000), None)
        if answer:
            user = next(m["content"] for m in msgs if m["role"] == "user")
            for part in ("tune", "holdout"):
                out.append({"rec": {"instruction": user, "input": "", "output": answer}, "label": True, "part": part, "set": "repetition"})
            break
    return out


_REFUSAL_OPENING = re.compile(r"^(?:I apologize, but I cannot|I cannot provide|I cannot fulfill|I'm just an AI)\b")
_MENTIONS_AI = re.compile(r"(?i)\b(?:AI|OpenAI|GPT(?:-\d)?|ChatGPT|language models?|sorry|apologi[sz]e|I cannot|I can't)\b")


def refusal_set(shared: Path, dev_rows: list[dict], cap: int | None) -> list[dict]:
    """Real refusal openings on real Alpaca rows (positives); kept rows that mention AI or apologies (negatives)."""
    rng = random.Random(11)
    outputs = json.loads((shared / "alpaca_eval" / "llama-2-7b-chat-hf_model_outputs.json").read_text())
    openings: dict[bool, list[str]] = {True: [], False: []}
    for i, x in enumerate(outputs):
        first = _SENTENCE_END.split(x["output"].strip())[0]
        if _REFUSAL_OPENING.match(first):
            openings[i % 2 == 0].append(first)
    out: list[dict] = []
    for r in dev_rows:
        if r["label"]:
            continue
        rec, tune = r["rec"], r["raw_pos"] < TUNE_RAW_POS
        if _MENTIONS_AI.search(rec["output"]):
            out.append({"rec": rec, "label": False, "part": _part(tune), "set": "refusal"})
        elif rng.random() < 0.05 and openings[tune]:
            opening = rng.choice(openings[tune])
            answer = opening if rng.random() < 0.5 else opening + " " + rec["output"]
            out.append({"rec": {**rec, "output": answer}, "label": True, "part": _part(tune), "set": "refusal"})
    return _capped(out, cap, rng)


def _capped(rows: list[dict], cap: int | None, rng: random.Random) -> list[dict]:
    """At most ``cap`` positives and ``cap`` negatives per part (a seeded sample), all when ``cap`` is None."""
    if cap is None:
        return rows
    out = []
    for part in ("tune", "holdout"):
        for label in (True, False):
            group = [r for r in rows if r["part"] == part and r["label"] == label]
            out += group if len(group) <= cap else rng.sample(group, cap)
    return out


# -- running the stages ---------------------------------------------------------------------------------------


def default_filters() -> list:
    """The default stage list without the stages that do not filter (PII flagging) or are not per record (dedup)."""
    from curate.config import DEFAULT_STAGES

    names = [s if isinstance(s, str) else next(iter(s)) for s in DEFAULT_STAGES]
    return [s for s, name in zip(DEFAULT_STAGES, names) if name in PER_RECORD_STAGES]


def rejected_positions(records: list[dict], stages: list, work: Path, name: str) -> dict[int, str]:
    """Runs ``curate run`` with ``stages`` on ``records`` (an Alpaca JSON file); position -> reason of each reject."""
    import polars as pl

    import verdict_sets
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    work.mkdir(parents=True, exist_ok=True)
    path = work / "records.json"
    if not path.exists():
        path.write_text(json.dumps(records))
    cfg = parse_config(
        {"name": re.sub(r"[^A-Za-z0-9_.-]", "_", name), "inputs": [{"path": str(path)}], "tokenizer": None, "stages": stages,
         "engine": verdict_sets.ENGINE},
        work,
    )
    res = Pipeline(cfg, progress=False).run(force=True)
    ledger = pl.read_parquet(res.output_dir / "ledger.parquet").filter(pl.col("status") == "rejected")
    return {line - 1: reason for line, reason in zip(ledger["source_line"].to_list(), ledger["reason"].to_list())}


def all_records(shared: Path, quick: bool) -> list[dict]:
    cap = 60 if quick else None
    dev = dev_set(shared)
    rng = random.Random(1)
    return (
        _capped(dev, cap, rng)
        + language_set(shared, dev, cap)
        + repetition_set(shared, dev, cap)
        + refusal_set(shared, dev, cap)
    )


def measure(shared: Path, work: Path, *, quick: bool = False) -> list[dict]:
    """One row per (stage, set, part): see the module docstring."""
    rows_in = all_records(shared, quick)
    records = [r["rec"] for r in rows_in]
    work = Path(work) / ("quick" if quick else "full")
    if (work / "records.json").exists():
        (work / "records.json").unlink()
    out = []
    for stage in STAGES:
        stages = default_filters() if stage == ALL else [stage]
        rejected = rejected_positions(records, stages, work, stage)
        for set_name in SETS_OF.get(stage, (DEV,)):
            for part in ("tune", "holdout"):
                group = [(i, r) for i, r in enumerate(rows_in) if r["set"] == set_name and r["part"] == part]
                pos = [i for i, r in group if r["label"]]
                neg = [i for i, r in group if not r["label"]]
                tp = sum(i in rejected for i in pos)
                fp_reasons = Counter(rejected[i] for i in neg if i in rejected)
                note = NOTES.get((stage, set_name), "")
                if fp_reasons and stage == ALL:
                    note = "negatives rejected by: " + ", ".join(f"{k} {v}" for k, v in fp_reasons.most_common())
                out.append(
                    {
                        "stage": stage,
                        "set": set_name,
                        "part": part,
                        "n_pos": len(pos),
                        "n_neg": len(neg),
                        "tp": tp,
                        "fp": sum(fp_reasons.values()),
                        "fn": len(pos) - tp,
                        "labels": LABELS[set_name],
                        "note": note,
                        # one stage alone is not meant to catch every row the cleaners removed: on the dev
                        # alignment a single stage answers for its false positives; the list for its recall
                        "scope": "negatives" if set_name == DEV and stage != ALL else "target",
                    }
                )
    return out


def unlabeled_check(shared: Path, work: Path) -> tuple[int, Counter, list[tuple[str, dict]]]:
    """The default filters on the Alpaca rows past the dev slice (no cleaner labels): rows, rejects per
    reason, and the rejected records with their reason (to read by hand)."""
    rows = json.loads((shared / "alpaca" / "alpaca_data_first10k_excl_holdout.json").read_text())[4462:]
    rejected = rejected_positions(rows, default_filters(), Path(work) / "unlabeled", "unlabeled")
    return len(rows), Counter(rejected.values()), [(reason, rows[i]) for i, reason in sorted(rejected.items())]


if __name__ == "__main__":
    import sys

    here = Path(__file__).resolve().parents[1]
    shared = here.parent.parent / "shared" / "data"
    work = here / "_work" / "verdicts" / "filters"
    quick = "--quick" in sys.argv
    for r in measure(shared, work, quick=quick):
        prec = f"{r['tp'] / (r['tp'] + r['fp']):.3f}" if r["tp"] + r["fp"] else "–"
        rec = f"{r['tp'] / r['n_pos']:.3f}" if r["n_pos"] else "–"
        fpr = f"{r['fp'] / r['n_neg']:.4f}" if r["n_neg"] else "–"
        print(f"{r['stage']:24s} {r['set']:20s} {r['part']:8s} pos {r['n_pos']:5d} neg {r['n_neg']:5d} tp {r['tp']:5d} fp {r['fp']:4d} "
              f"P {prec} R {rec} FPR {fpr} {r['note']}")
    if "--unlabeled" in sys.argv:
        n, reasons, rejects = unlabeled_check(shared, work)
        print(f"\nunlabeled Alpaca rows 4462+: {n} rows, {sum(reasons.values())} rejected ({sum(reasons.values()) / n:.2%}): {dict(reasons.most_common())}")
        for reason, rec in rejects:
            print(f"  {reason}: {json.dumps(rec)[:220]}")
