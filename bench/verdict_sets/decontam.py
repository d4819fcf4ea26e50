"""Decontamination verdicts: is a copy of an eval item found however it is written, and is nothing else flagged?

Labels by construction, from the eval files' own items (every eval set in the shared data): each item of an
eval set is pasted into a real Alpaca row (seeded choice of carrier rows from ``alpaca/alpaca_4000.json``) in
several forms, one labeled positive each:

- ``verbatim``: the item's question exactly as stored (``"Question: ...\\nAnswer:"`` included) as the
  instruction, its gold answer (the gold choice's text, GSM8K's worked answer...) as the output;
- ``no_labels``: the same without the file's field labels (sets that store labels: ARC, PIQA, TriviaQA);
- ``reformatted``: multiple-choice sets only: the question followed by its choices in another layout,
  by item in turn: numbered ``1.``, bulleted ``-``, inline ``(a) ... (b) ...``, ``A) ...`` lines;
- ``embedded``: the question (no labels) inside a longer real Alpaca instruction (before it, after it,
  or after "For example:"), the carrier's own output kept (a question of one or two words, PIQA's
  "dresser", names no item alone: it is embedded with its answer);
- ``in_response``: ``Q: question / A: answer`` appended to a real Alpaca row's output;
- ``paraphrase`` (reported apart, recall expected lower): the question with up to two words swapped
  for a synonym from a small fixed table, or its clauses swapped around a comma.

Negatives:

- ``alpaca_clean``: the clean Alpaca rows of ``alpaca/alpaca_data_first10k_excl_holdout.json`` (even rows
  in the tune part, odd rows in the holdout part), checked against every eval set at once; the target is at
  most one false hit per 5,000 rows;
- ``<set>/same-template``: the other part's items of the same eval set, written as ``verbatim`` training
  rows: different items in the same template (an MMLU question not in the indexed part, GSM8K-style word
  problems). Items that share content with an indexed item are left out (counted in the note): the same
  line of at least 8 words (a reading passage with several questions, a repeated question, a moral scenario)
  or the same long answer, where that line is in at most 5 items of the set (more is a template and stays a
  negative), and HellaSwag rows of the same source caption (consecutive rows with one activity label: a row's
  context continues the previous row's gold ending). What is left still holds the sets' minimal pairs
  (moral scenarios differing in two words, "... GDP per capita ... in Japan / in South Korea", PIQA recipes),
  which share 13 and more words with an indexed item. The shared data has no GSM8K train split, so the
  GSM8K test items of the other part stand in for GSM8K-train-like data (same writers, same template).
- ``gsm8k_train_sample``: GSM8K's own train problems (``bench/data/gsm8k_train_sample.jsonl``, a sample of
  openai/grade-school-math's train.jsonl, see ``bench/data/README.md``) as training rows (question as the
  instruction, worked answer as the output) against the whole GSM8K test file: none may be flagged
  (even sample positions in the tune part, odd in the holdout part). A train problem that is a near-copy
  of a test item (the same text with another name and other numbers) is left out (``GSM8K_TRAIN_NEAR_COPIES``).
- ``mmlu:moral_scenarios/shared-stem``: moral_scenarios' shared question stem with two scenarios made of
  clean Alpaca sentences;
- ``arc_first100_as_train``: ``decontamination/arc_easy_test_first100_as_train.jsonl`` (a real training
  file made of ARC-Easy test questions) through ``curate run``, mapped ``query`` → user, ``gold`` →
  assistant: every row must be flagged.

Parts: TUNE = eval items at even positions of each eval file (MMLU: of the subjects concatenated in name
order), HOLDOUT = odd positions. Each part indexes only its own items (written to ``work`` in the file's
own format), so the other part's items are true negatives. The stage runs with its defaults, through its own
``prepare``/``decide`` on frames built by curate's reader and converter (the ARC file through
``curate run``); the same code runs against an older checkout (``PYTHONPATH=...``).
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import zlib
from pathlib import Path

STAGES = ("decontaminate",)
LABELS = "construction: eval items pasted into real Alpaca rows"
FORMS = ("verbatim", "no_labels", "reformatted", "embedded", "in_response", "paraphrase")
MMLU_QUICK = ("high_school_psychology", "moral_scenarios", "nutrition", "sociology")

# a small fixed synonym table for the light paraphrase (word -> replacement), applied to at most two words
SYNONYMS = {
    "which": "what", "what": "which", "largest": "biggest", "biggest": "largest", "most": "mostly",
    "best": "most suitable", "describes": "characterizes", "explains": "accounts for", "likely": "probably",
    "following": "listed", "person": "individual", "people": "individuals", "uses": "utilizes", "use": "utilize",
    "used": "employed", "show": "demonstrate", "shows": "demonstrates", "many": "numerous", "small": "little",
    "large": "big", "big": "large", "make": "create", "makes": "creates", "made": "created", "first": "earliest",
    "called": "named", "name": "title", "country": "nation", "city": "town", "famous": "well-known",
    "buy": "purchase", "buys": "purchases", "bought": "purchased", "each": "every", "every": "each",
    "total": "overall", "help": "assist", "helps": "assists", "begin": "start", "start": "begin",
    "answer": "reply", "correct": "right", "true": "accurate", "important": "significant", "different": "distinct",
    "happens": "occurs", "happen": "occur", "quickly": "rapidly", "fast": "quick", "get": "obtain",
    "gets": "obtains", "wants": "wishes", "want": "wish", "need": "require", "needs": "requires",
}


# ---------------------------------------------------------------------------------------------------------
# eval sets: items as (stored row, question as stored, question without labels, choices, gold answer)
# ---------------------------------------------------------------------------------------------------------
def _strip_labels(q: str) -> str:
    """The question without the file's own labels ("Question: ...\\nAnswer:")."""
    q = re.sub(r"^\s*Question:\s*", "", q)
    return re.sub(r"\s*Answer:\s*$", "", q).strip()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _item(raw, question: str, choices: list[str] | None, answer: str | None) -> dict:
    return {"raw": raw, "question": question, "plain": _strip_labels(question), "choices": choices, "answer": answer}


def load_sets(shared: Path) -> dict[str, dict]:
    """name -> {"fmt": jsonl | csv | csv_header, "items": [...], "header": [...]} for every shared eval set."""
    sets: dict[str, dict] = {}
    gsm = _jsonl(shared / "gsm8k/test.jsonl")
    sets["gsm8k"] = {"fmt": "jsonl", "items": [_item(r, r["question"], None, r["answer"]) for r in gsm]}
    for name in ("arc_easy", "arc_challenge"):
        rows = _jsonl(shared / f"arc/{name}_shared.jsonl")
        sets[name] = {"fmt": "jsonl", "items": [_item(r, r["query"], r["choices"], r["choices"][r["gold"]]) for r in rows]}
    mmlu = []
    for path in sorted((shared / "mmlu").glob("*_test.csv")):
        for row in csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")):
            if len(row) == 6:
                answer = row[1 + "ABCD".index(row[5])] if row[5] in "ABCD" else row[1]
                mmlu.append({**_item(row, row[0], row[1:5], answer), "subject": path.name[: -len("_test.csv")]})
    sets["mmlu"] = {"fmt": "csv", "items": mmlu}
    text = (shared / "truthfulqa/TruthfulQA.csv").read_text(encoding="utf-8")
    reader = list(csv.reader(io.StringIO(text, newline="")))
    header, rows = reader[0], reader[1:]
    col = {c: i for i, c in enumerate(header)}
    tqa = []
    for r in rows:
        choices = [r[col["Best Answer"]]] + [x.strip() for x in r[col["Incorrect Answers"]].split(";") if x.strip()][:3]
        tqa.append(_item(r, r[col["Question"]], choices, r[col["Best Answer"]]))
    sets["truthfulqa"] = {"fmt": "csv_header", "header": header, "items": tqa}
    obqa = _jsonl(shared / "truthfulqa/openbookqa.jsonl")
    sets["openbookqa"] = {"fmt": "jsonl", "items": [
        _item(r, r["question"]["stem"], [c["text"] for c in r["question"]["choices"]],
              next((c["text"] for c in r["question"]["choices"] if c["label"] == r["answerKey"]), None)) for r in obqa]}
    tq = _jsonl(shared / "triviaqa/triviaqa_sm_sub_shared.jsonl")
    sets["triviaqa"] = {"fmt": "jsonl", "items": [_item(r, r["context"], None, r["answer"]) for r in tq]}
    hs = _jsonl(shared / "hellaswag/hellaswag_val_rows_0_2000.jsonl")
    # consecutive HellaSwag rows continue one source caption (a row's context holds the previous row's
    # gold ending): rows of one run of the same activity label share a source, never a negative for each other
    group, prev = 0, None
    hs_items = []
    for r in hs:
        group += r["activity_label"] != prev
        prev = r["activity_label"]
        hs_items.append({**_item(r, r["ctx"], r["endings"], r["endings"][r["label"]]), "source": group})
    sets["hellaswag"] = {"fmt": "jsonl", "items": hs_items}
    pq = _jsonl(shared / "piqa/piqa.jsonl")
    sets["piqa"] = {"fmt": "jsonl", "items": [_item(r, r["query"], r["choices"], r["choices"][r["gold"]]) for r in pq]}
    nq = _jsonl(shared / "nq_open/NQ-open.dev.jsonl")
    sets["nq_open"] = {"fmt": "jsonl", "items": [_item(r, r["question"], None, r["answer"][0]) for r in nq]}
    mt = _jsonl(shared / "mt_bench/question.jsonl")
    sets["mt_bench"] = {"fmt": "jsonl", "items": [_item(r, r["turns"][0], None, None) for r in mt]}
    ae = json.loads((shared / "alpaca_eval/gpt4_model_outputs.json").read_text(encoding="utf-8"))
    # the eval set is AlpacaEval's prompts (the model outputs are not eval content)
    sets["alpaca_eval"] = {"fmt": "jsonl",
                           "items": [_item({"instruction": r["instruction"], "dataset": r["dataset"]}, r["instruction"], None, None) for r in ae]}
    return sets


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _pieces(item: dict) -> set[str]:
    """The item's texts that another item may repeat word for word: each line of its question of at least 8
    words (a shared reading passage, a repeated question; MMLU moral scenarios' two scenarios), and every
    choice or answer of at least 8 words."""
    parts = [*re.split(r"\n|Scenario \d \|", item["plain"]), *(item["choices"] or []), item["answer"] or ""]
    return {n for n in map(_norm, parts) if len(n.split()) >= 8}


# A piece shared by more items than this is the set's template (an instruction, a question stem), not content
# that a few items share (a passage with its questions: at most 5 items in MMLU); a training row that repeats a
# template is a negative, one that repeats shared content is not.
SHARED_CONTENT_ITEMS = 5


def write_part(spec: dict, items: list[dict], path: Path) -> Path:
    """The part's items in the eval file's own format (rows as stored)."""
    if spec["fmt"] == "jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(it["raw"]) + "\n" for it in items), encoding="utf-8")
    else:
        path = path.with_suffix(".csv")
        buf = io.StringIO()
        w = csv.writer(buf)
        if spec["fmt"] == "csv_header":
            w.writerow(spec["header"])
        w.writerows(it["raw"] for it in items)
        path.write_text(buf.getvalue(), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------
# training records
# ---------------------------------------------------------------------------------------------------------
def _ends_sentence(q: str) -> str:
    q = q.strip()
    return q if q[-1:] in ".?!:\"'" else q + "?"


def _choices_block(choices: list[str], style: int) -> str:
    if style == 0:
        return "\n".join(f"{i + 1}. {c}" for i, c in enumerate(choices))
    if style == 1:
        return "\n".join(f"- {c}" for c in choices)
    if style == 2:
        return " ".join(f"({'abcdefgh'[i]}) {c}" for i, c in enumerate(choices))
    return "\n".join(f"{'ABCDEFGH'[i]}) {c}" for i, c in enumerate(choices))


def paraphrase(q: str, rng: random.Random) -> str | None:
    """Up to two words swapped for synonyms, else the clauses around a comma swapped; None if neither applies."""
    tokens = re.split(r"(\W+)", q)
    spots = [i for i, t in enumerate(tokens) if t.lower() in SYNONYMS]
    if spots:
        for i in rng.sample(spots, min(2, len(spots))):
            rep = SYNONYMS[tokens[i].lower()]
            tokens[i] = rep.capitalize() if tokens[i][:1].isupper() else rep
        return "".join(tokens)
    if ", " in q:
        a, b = q.split(", ", 1)
        return f"{b.rstrip('?.!')}, {a[:1].lower() + a[1:]}{q[-1] if q[-1] in '?.!' else ''}"
    return None


def positive_rows(items: list[dict], carriers: list[dict], has_labels: bool, seed: int) -> dict[str, list[dict]]:
    """form -> one Alpaca-shaped training row per item (None where the form does not apply to the item)."""
    rng = random.Random(seed)
    out: dict[str, list] = {f: [] for f in FORMS}
    for k, it in enumerate(items):
        car = carriers[rng.randrange(len(carriers))]
        q, plain, ans = it["question"], it["plain"], it["answer"]
        out_text = ans if ans else car["output"]
        out["verbatim"].append({"instruction": q, "input": "", "output": out_text})
        out["no_labels"].append({"instruction": plain, "input": "", "output": out_text} if has_labels else None)
        if it["choices"]:
            style = k % 4
            gold = it["choices"].index(ans) if ans in it["choices"] else 0
            marker = [f"{gold + 1}.", "-", f"({'abcdefgh'[gold]})", f"{'ABCDEFGH'[gold]})"][style]
            out["reformatted"].append({"instruction": f"{plain}\n{_choices_block(it['choices'], style)}", "input": "", "output": f"{marker} {ans}"})
        else:
            out["reformatted"].append(None)
        instr = car["instruction"].strip()
        where = k % 3
        # a question of one or two words ("dresser", PIQA) names no item on its own: embedded with its answer
        shown = _ends_sentence(plain) if len(re.findall(r"\w+", plain)) >= 3 or not ans else f"{_ends_sentence(plain)} {ans}"
        emb = [f"{instr}\n\n{shown}", f"{shown}\n\n{instr}", f"{instr} For example: {shown}"][where]
        out["embedded"].append({"instruction": emb, "input": car.get("input", ""), "output": car["output"]})
        tail = f"\n\nQ: {plain}\nA: {ans}" if ans else f"\n\n{plain}"
        out["in_response"].append({"instruction": instr, "input": car.get("input", ""), "output": car["output"] + tail})
        para = paraphrase(plain, rng)
        out["paraphrase"].append({"instruction": para, "input": "", "output": out_text} if para else None)
    return out


def _frame(rows: list[dict], path: Path):
    """A canonical frame of Alpaca rows, as `curate run` reads and converts them."""
    from curate.frames import with_derived
    from curate.readers import read_file
    from curate.shapes import Converter, build_frame

    path.write_text(json.dumps(rows), encoding="utf-8")
    conv, conv_rows, lines = Converter(), [], []
    for batch in read_file(path):
        conv_rows += [conv.convert(r) for r in batch.records]
        lines += batch.lines
    cols = list(zip(*conv_rows))
    return with_derived(build_frame(list(range(len(conv_rows))), str(path), lines, *cols))


def _flagged(stage, frame, batch: int = 20000) -> dict[int, str]:
    import polars as pl

    prepared = [stage.prepare(frame.slice(i, batch)) for i in range(0, frame.height, batch)]
    rejects = stage.decide(pl.concat(prepared, how="vertical_relaxed"))
    return dict(zip(rejects["uid"].to_list(), rejects["detail"].to_list()))


def _arc_first100(shared: Path, work: Path, part: str, eval_file: Path, n_items: int) -> dict:
    """The real ARC-as-training file through `curate run`; rows of this part's items only."""
    import polars as pl

    import verdict_sets
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    path = shared / "decontamination/arc_easy_test_first100_as_train.jsonl"
    arc = _jsonl(shared / "arc/arc_easy_shared.jsonl")
    pos = {r["query"].strip(): i for i, r in enumerate(arc)}
    train = _jsonl(path)
    mine = [i for i, r in enumerate(train) if pos[r["query"].strip()] % 2 == (0 if part == "tune" else 1) and pos[r["query"].strip()] < n_items]
    cfg = parse_config({
        "name": f"arc100_{part}", "tokenizer": None,
        "inputs": [{"path": str(path), "mapping": {"user": "query", "assistant": "gold"}}],
        "stages": [{"decontaminate": {"eval_sets": [str(eval_file)]}}], "engine": verdict_sets.ENGINE,
    }, work)
    res = Pipeline(cfg, progress=False).run()
    ledger = pl.read_parquet(res.output_dir / "ledger.parquet")
    rejected = set(ledger.filter(pl.col("reason") == "contaminated")["source_line"].to_list())
    tp = sum(1 for i in mine if i + 1 in rejected)
    return {"stage": "decontaminate", "set": "arc_first100_as_train", "part": part, "n_pos": len(mine), "n_neg": 0,
            "tp": tp, "fp": 0, "fn": len(mine) - tp, "labels": "the file's own rows (ARC-Easy test questions used as training)",
            "note": "curate run, mapping query -> user, gold -> assistant; this part's items of the 100"}


GSM8K_TRAIN_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "gsm8k_train_sample.jsonl"
# Train problems of the sample that are near-copies of a GSM8K test item (GSM8K has a few: the same problem
# text with another name and other numbers), so no negative: opening of the train question -> test.jsonl line.
# "Bella bought stamps at the post office. Some of the stamps had a snowflake design, ..." is test line 633
# ("Max bought stamps at the post office. ...") word for word except the name and the three numbers.
GSM8K_TRAIN_NEAR_COPIES = {"Bella bought stamps at the post office.": 633}


def _gsm8k_train(shared: Path, work: Path, part: str) -> dict | None:
    """GSM8K's own train problems (a committed sample) checked against the whole GSM8K test file.

    The train split was written by the same people in the same template as the test split, so it is the real
    "same-template, different item" negative; every problem should stay. Even sample positions are the tune
    part, odd the holdout part. The stage indexes the full test file (the train and test splits are disjoint,
    so no part of it needs to be held back). None when the sample file is missing."""
    from curate.stages import StageContext
    from curate.stages.decontam import Decontaminate

    if not GSM8K_TRAIN_SAMPLE.exists():
        return None
    sample = _jsonl(GSM8K_TRAIN_SAMPLE)
    mine = [r for i, r in enumerate(sample) if i % 2 == (0 if part == "tune" else 1)]
    near = [r for r in mine if r["question"].startswith(tuple(GSM8K_TRAIN_NEAR_COPIES))]
    mine = [r for r in mine if r not in near]
    records = [{"instruction": r["question"], "input": "", "output": r["answer"]} for r in mine]
    frame = _frame(records, work / "gsm8k_train_sample.json")
    stage = Decontaminate(Decontaminate.Params(eval_sets=[str(shared / "gsm8k/test.jsonl")]), StageContext(config_dir=work))
    flagged = _flagged(stage, frame)
    note = "question as instruction, worked answer as output, vs the whole gsm8k/test.jsonl"
    if near:
        note += f"; {len(near)} left out: near-copy of a test item (another name and other numbers)"
    if flagged:
        note += "; e.g. " + " | ".join(d[:120] for d in list(flagged.values())[:3])
    return {"stage": "decontaminate", "set": "gsm8k_train_sample", "part": part, "n_pos": 0, "n_neg": len(mine),
            "tp": 0, "fp": len(flagged), "fn": 0, "labels": "GSM8K's own train split (openai/grade-school-math)",
            "note": note, "scope": "target"}


def measure(shared: Path, work: Path, *, quick: bool = False) -> list[dict]:
    """Rows per (set/form, part) and for the negatives; see the module docstring."""
    from curate.stages import StageContext
    from curate.stages.decontam import Decontaminate

    work.mkdir(parents=True, exist_ok=True)
    sets = load_sets(shared)
    if quick:
        sets["mmlu"]["items"] = [it for it in sets["mmlu"]["items"] if it["subject"] in MMLU_QUICK]
        for s in sets.values():
            s["items"] = s["items"][:80]
    carriers = [r for r in json.loads((shared / "alpaca/alpaca_4000.json").read_text(encoding="utf-8")) if r["instruction"].strip()]
    clean = json.loads((shared / "alpaca/alpaca_data_first10k_excl_holdout.json").read_text(encoding="utf-8"))
    if quick:
        clean = clean[:2000]
    rows: list[dict] = []
    for p_idx, part in enumerate(("tune", "holdout")):
        pdir = work / part
        pdir.mkdir(exist_ok=True)
        eval_files, records, meta, excluded = [], [], [], {}  # meta[i] = (set, form or "same-template", extra)
        for name, spec in sets.items():
            mine = [it for i, it in enumerate(spec["items"]) if i % 2 == p_idx]
            # the other part's items are negatives unless they share a source or a piece of text with an
            # indexed item (the eval set's own duplicates: MMLU repeats questions and moral scenarios)
            sources = {it["source"] for it in mine if "source" in it}
            counts: dict[str, int] = {}
            for it in spec["items"]:
                for piece in _pieces(it):
                    counts[piece] = counts.get(piece, 0) + 1
            indexed = {x for it in mine for x in _pieces(it) if counts[x] <= SHARED_CONTENT_ITEMS}
            other = [it for i, it in enumerate(spec["items"]) if i % 2 != p_idx]
            dup = sum(1 for it in other if it.get("source", -1) in sources or _pieces(it) & indexed)
            excluded[name] = dup
            other = [it for it in other if it.get("source", -1) not in sources and not _pieces(it) & indexed]
            eval_files.append(write_part(spec, mine, pdir / name))
            has_labels = any(it["plain"] != it["question"].strip() for it in mine)
            forms = positive_rows(mine, carriers, has_labels, seed=zlib.crc32(f"{name}/{part}".encode()))
            for form, recs in forms.items():
                for it, rec in zip(mine, recs):
                    if rec is not None:
                        records.append(rec)
                        meta.append((name, form, it.get("subject")))
            for it in other:
                records.append({"instruction": it["question"], "input": "", "output": it["answer"] or ""})
                meta.append((name, "same-template", it.get("subject")))
        # moral_scenarios' shared stem with two scenarios that are no eval text (sentences of clean Alpaca outputs)
        moral = [it for i, it in enumerate(sets["mmlu"]["items"]) if i % 2 == p_idx and it.get("subject") == "moral_scenarios"]
        sentences = [x.strip() for r in clean for x in re.split(r"(?<=[.!?])\s+", r["output"]) if 6 <= len(x.split()) <= 25]
        rng = random.Random(zlib.crc32(f"moral/{part}".encode()))
        for it in moral[:200]:
            stem = it["question"].split("Scenario 1")[0].strip()
            a, b = rng.sample(sentences, 2)
            records.append({"instruction": f"{stem} Scenario 1 | {a} Scenario 2 | {b}", "input": "", "output": rng.choice(it["choices"])})
            meta.append(("mmlu:moral_scenarios", "shared-stem", None))
        for k, r in enumerate(clean):
            if k % 2 == p_idx:
                records.append({"instruction": r["instruction"], "input": r["input"], "output": r["output"]})
                meta.append(("alpaca_clean", "negative", None))
        frame = _frame(records, pdir / "train.json")
        stage = Decontaminate(Decontaminate.Params(eval_sets=[str(f) for f in eval_files]), StageContext(config_dir=pdir))
        flagged = _flagged(stage, frame)
        # every flagged negative and every missed positive, for reading (not part of the numbers)
        with open(pdir / "review.jsonl", "w", encoding="utf-8") as fh:
            for uid, (name, form, _) in enumerate(meta):
                negative = form in ("same-template", "negative", "shared-stem")
                if negative == (uid in flagged):
                    fh.write(json.dumps({"set": name, "form": form, "flagged": uid in flagged, "detail": flagged.get(uid),
                                         "instruction": records[uid]["instruction"][:400], "output": records[uid]["output"][:200]}) + "\n")
        tally: dict[tuple[str, str], list[int]] = {}
        for uid, (name, form, subject) in enumerate(meta):
            keys = [(name, form)]
            if subject == "moral_scenarios" and form == "same-template":
                keys.append(("mmlu:moral_scenarios", form))
            for key in keys:
                t = tally.setdefault(key, [0, 0])
                t[0] += 1
                t[1] += uid in flagged
        for (name, form), (n, hit) in tally.items():
            if form in ("same-template", "negative", "shared-stem"):
                if form == "shared-stem":
                    note = "the shared question stem of this part's items with two scenarios of clean Alpaca text"
                elif form == "same-template":
                    note = (f"other part's items of the set, same template ({excluded.get(name.split(':')[0], 0)} left out: they share a passage, "
                            "a question, a long answer or a source with an indexed item)")
                else:
                    note = "clean Alpaca rows vs every eval set"
                if form == "negative":
                    note += f"; {hit * 5000 / max(n, 1):.2f} false hits per 5,000"
                    examples = [flagged[u] for u, m in enumerate(meta) if m[0] == "alpaca_clean" and u in flagged][:3]
                    if examples:
                        note += "; e.g. " + " | ".join(e[:120] for e in examples)
                labels = {"same-template": "eval file's own items (other part)",
                          "shared-stem": "construction: an eval stem around real Alpaca sentences"}.get(form, "assumed clean: real Alpaca rows, nothing pasted")
                rows.append({"stage": "decontaminate", "set": f"{name}/{form}" if form != "negative" else name, "part": part,
                             "n_pos": 0, "n_neg": n, "tp": 0, "fp": hit, "fn": 0, "labels": labels, "note": note})
            else:
                rows.append({"stage": "decontaminate", "set": f"{name}/{form}", "part": part, "n_pos": n, "n_neg": 0,
                             "tp": hit, "fp": 0, "fn": n - hit, "labels": LABELS,
                             "note": "light paraphrase: recall expected lower" if form == "paraphrase" else "",
                             # n-gram matching does not claim paraphrases: reported, not part of the stage's numbers
                             "scope": "context" if form == "paraphrase" else "target"})
        arc_file = next(f for f in eval_files if f.stem == "arc_easy")
        rows.append(_arc_first100(shared, pdir, part, arc_file, len(sets["arc_easy"]["items"])))
        gsm_train = _gsm8k_train(shared, pdir, part)
        if gsm_train is not None:
            rows.append(gsm_train)
    order = {f: i for i, f in enumerate((*FORMS, "same-template", "shared-stem"))}
    rows.sort(key=lambda r: (r["part"] != "tune", r["set"].split("/")[0], order.get(r["set"].split("/")[-1], 99)))
    return rows


if __name__ == "__main__":
    import sys
    import time

    here = Path(__file__).resolve().parents[2]
    sys.path.append(str(here))  # appended: PYTHONPATH (an old checkout) wins
    t0 = time.perf_counter()
    out = measure(here.parent / "shared" / "data", here / "bench" / "_work" / "verdicts" / "decontam", quick="--quick" in sys.argv)
    for r in out:
        rec = f"{r['tp']}/{r['n_pos']}" if r["n_pos"] else f"fp {r['fp']}/{r['n_neg']}"
        print(f"{r['part']:8s} {r['set']:40s} {rec:>14s}  {r['note'][:150]}")
    print(f"{time.perf_counter() - t0:.1f} s")
