"""Verdict sets for near-duplicate dedup (``minhash_dedup``): what it merges, on labeled real data.

Every set is built in memory, seeded, from real rows under ``../shared/data``; the stage runs as ``curate run``
runs it (``prepare`` over batches, then ``decide``) with its DEFAULTS, except the GPTeacher-Toolformer set,
which is about the author's own threshold (0.8). A pair counts as merged when both records end in one
duplicate cluster (one rejected naming the other, or both naming a third).

Sets (``part``: tune = built from Alpaca rows 0-4,999, holdout = rows 5,000+, or a seeded half of a real set):

- ``edited copy: <kind> [J>=0.7]`` / ``[J<0.7]``: one edited copy of each real Alpaca row (labels by
  construction), split by the exact Jaccard of the pair's 5-character shingle sets (as the stage shingles,
  computed here independently): typos (a letter edit every ~25 characters), chatty prefix / suffix on the
  answer, markdown added / removed, sentences or list items reordered, the instruction reworded with the
  answer unchanged, numbers changed, case/punctuation/whitespace, 5 % of the words replaced / swapped.
- ``distinct Alpaca records``: the originals; a false positive is an original merged with a record of another
  original (some are real near-duplicates inside Alpaca: the labels say "distinct rows", not a human's verdict).
- ``same passage, other task (Alpaca)``: real Alpaca rows with the same ``input`` (>= 40 characters) and another
  instruction and answer; pairs must not merge.
- ``same passage, other question (adversarial_qa)``: P3's adversarial_qa rows, one passage with several
  questions and answers; pairs must not merge.
- ``same document and reference, another template (P3)``: P3's xsum / cnn_dailymail / adversarial_qa rows, the
  same source document and reference answer under another prompt template (a reworded instruction with the
  same answer): pairs must merge.
- ``same instruction, other teacher (alpaca_gpt4)``: GPT-4's answer to an Alpaca instruction next to
  davinci-003's: different answers teach different outputs, so they are not duplicates.
- ``edited copies / distinct records under one system prompt``: the tune/holdout sets again with a long real
  system prompt (a glaive tool-call preamble and tool schema) on every record.
- ``GPTeacher-Toolformer, author's 0.8 dedup``: positives are the rows the author's similarity-0.8 dedup
  removed, negatives those it kept (labels: the author's dedup); run at threshold 0.8. The note gives the
  rejects whose exact Jaccard to the record they name is below the threshold, and the largest cluster.

    .venv/bin/python bench/verdict_sets/dedup.py [--quick]
"""

from __future__ import annotations

import json
import random
import re
import sys
import zlib
from collections import defaultdict
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

STAGES: tuple[str, ...] = ("minhash_dedup",)
STAGE = "minhash_dedup"
SPLIT_ROW = 5000  # Alpaca originals below this row are the tune part, the rest the holdout
EDIT_KINDS = (
    "typos",
    "chatty_prefix",
    "chatty_suffix",
    "markdown_added",
    "markdown_removed",
    "sentence_reorder",
    "reworded_instruction",
    "numbers_changed",
    "case_punct_ws",
    "replace_5",
    "swap_5",
)
CONSTRUCTION = "construction: edited copy of a real row"
WORD = re.compile(r"\S+")
NONWORD = re.compile(r"\W+")


# ---------------------------------------------------------------------------------------------------------
# exact Jaccard, computed here (not with the stage's code): lowercased, non-word runs as one space, 5-char sets
# ---------------------------------------------------------------------------------------------------------
def char_shingles(text: str, n: int = 5) -> set[str]:
    """The stage's 5-character shingles of ``text`` as strings (a text shorter than n is one shingle)."""
    t = NONWORD.sub(" ", text.lower()).strip()
    if not t:
        return set()
    if len(t) < n:
        return {t}
    return {t[i : i + n] for i in range(len(t) - n + 1)}


def exact_jaccard(a: str, b: str) -> float:
    """Exact Jaccard of the 5-character shingle sets of two texts."""
    sa, sb = char_shingles(a), char_shingles(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0


# ---------------------------------------------------------------------------------------------------------
# edits
# ---------------------------------------------------------------------------------------------------------
KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"
PREFIXES = (
    "Sure! Here is the answer:",
    "Of course! Here's what you asked for:",
    "Certainly! Below is my response.",
    "Great question! Here you go:",
    "Absolutely, here is my answer:",
    "Sure thing! Here is a possible response:",
)
SUFFIXES = (
    "I hope this helps! Let me know if you have any other questions.",
    "Let me know if you need anything else!",
    "Feel free to ask if you'd like more details.",
    "Hope that helps!",
)
VERB_SYNONYMS = {
    "generate": "create", "create": "produce", "write": "compose", "describe": "explain", "explain": "describe",
    "give": "provide", "provide": "give", "list": "enumerate", "identify": "find", "find": "identify",
    "suggest": "propose", "make": "build", "name": "list", "summarize": "sum up", "classify": "categorize",
    "rewrite": "rephrase", "edit": "revise", "compose": "write", "construct": "build", "come up with": "think of",
    "following": "given", "given": "following", "sentence": "phrase", "short": "brief", "brief": "short",
}
REQUEST_TEMPLATES = ("Please {i}", "Can you {i}?", "I need you to {i}", "Your task: {i}", "Could you {i}?", "{I} Please.")


def _typos(text: str, rng: random.Random, every: int = 25) -> str:
    out, i = [], 0
    chars = list(text)
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < 1.0 / every:
            op = rng.randrange(4)
            if op == 0:
                out.append(rng.choice(KEYBOARD))  # substitution
            elif op == 1:
                pass  # deletion
            elif op == 2:
                out += [c, rng.choice(KEYBOARD)]  # insertion
            elif i + 1 < len(chars):
                out += [chars[i + 1], c]  # transposition
                i += 1
            else:
                out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def case_punct_ws(text: str, rng: random.Random) -> str:
    """``text`` with words' case flipped, end punctuation dropped or added, and whitespace changed (seeded by
    ``rng``): the edit every dedup method must see through (also bench/dedup_quality.py's)."""
    out = []
    for w in text.split():
        r = rng.random()
        if r < 0.15:
            w = w.upper()
        elif r < 0.3:
            w = w.lower()
        elif r < 0.4:
            w = w.capitalize()
        if rng.random() < 0.15:
            w = w.rstrip(".,;:!?") if w[-1:] in ".,;:!?" else w + rng.choice(",.;")
        out.append(w)
    seps = [rng.choice([" ", " ", " ", "  ", "\n", " \t"]) for _ in out]
    return "".join(w + s for w, s in zip(out, seps)).strip()


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _list_lines(text: str) -> list[str]:
    return [ln for ln in text.split("\n") if ln.strip()]


MARKUP = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+|\*\*|__|^#+\s*", re.M)


def _markdown_added(text: str, rng: random.Random) -> str:
    sents = _sentences(text)
    op = rng.randrange(3)
    if op == 0 and len(sents) >= 2:
        return "\n".join(f"- {s}" for s in sents)
    if op == 1:
        words = text.split(" ")
        k = min(len(words), rng.randint(2, 4))
        return "**" + " ".join(words[:k]) + "**" + (" " + " ".join(words[k:]) if words[k:] else "")
    return "## Answer\n\n" + text


def _markdown_removed(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", MARKUP.sub("", text)).strip()


def _reorder(text: str, rng: random.Random) -> str:
    lines = _list_lines(text)
    parts, sep = (lines, "\n") if len(lines) >= 3 else (_sentences(text), " ")
    for _ in range(10):
        shuffled = parts[:]
        rng.shuffle(shuffled)
        if shuffled != parts:
            return sep.join(shuffled)
    return sep.join(parts[::-1])


def _reword_instruction(instruction: str, rng: random.Random) -> str:
    text = instruction.strip()
    for src, dst in VERB_SYNONYMS.items():
        text = re.sub(rf"\b{src}\b", dst, text, count=1) if rng.random() < 0.7 else text
        text = re.sub(rf"\b{src.capitalize()}\b", dst.capitalize(), text, count=1) if rng.random() < 0.7 else text
    template = rng.choice(REQUEST_TEMPLATES)
    body = text.rstrip(".?!")
    return template.format(i=body[:1].lower() + body[1:], I=text)


def _numbers(text: str, rng: random.Random) -> str:
    mapping: dict[str, str] = {}

    def repl(m):
        v = m.group()
        if v not in mapping:
            new = v
            while new == v:
                new = str(rng.randint(0, 10 ** len(v) - 1) if len(v) > 1 else rng.randint(0, 9))
            mapping[v] = new
        return mapping[v]

    return re.sub(r"\d+", repl, text)


def _replace(text: str, share: float, vocab: list[str], rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, round(share * len(words)))):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def _swap(text: str, share: float, rng: random.Random) -> str:
    words = text.split(" ")
    if len(words) < 2:
        return text
    for i in rng.sample(range(len(words) - 1), min(max(1, round(share * len(words))), len(words) - 1)):
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def eligible(rec: dict, kind: str) -> bool:
    """Whether an edit kind applies to a record (reordering needs three sentences, etc.)."""
    out = rec["output"]
    if kind == "markdown_removed":
        return bool(MARKUP.search(out)) or "\n" in out.strip()
    if kind == "sentence_reorder":
        return len(_list_lines(out)) >= 3 or len(_sentences(out)) >= 3
    if kind == "numbers_changed":
        return bool(re.search(r"\d", rec["instruction"] + rec["input"] + out))
    return True


def edit(rec: dict, kind: str, rng: random.Random, vocab: list[str]) -> dict:
    """An edited copy of an Alpaca record (instruction, input, output)."""
    ins, inp, out = rec["instruction"], rec["input"], rec["output"]
    if kind == "typos":
        return {"instruction": _typos(ins, rng), "input": _typos(inp, rng), "output": _typos(out, rng)}
    if kind == "chatty_prefix":
        return {**rec, "output": f"{rng.choice(PREFIXES)}\n\n{out}"}
    if kind == "chatty_suffix":
        return {**rec, "output": f"{out}\n\n{rng.choice(SUFFIXES)}"}
    if kind == "markdown_added":
        return {**rec, "output": _markdown_added(out, rng)}
    if kind == "markdown_removed":
        return {**rec, "output": _markdown_removed(out)}
    if kind == "sentence_reorder":
        return {**rec, "output": _reorder(out, rng)}
    if kind == "reworded_instruction":
        return {**rec, "instruction": _reword_instruction(ins, rng)}
    if kind == "numbers_changed":
        return {"instruction": _numbers(ins, rng), "input": _numbers(inp, rng), "output": _numbers(out, rng)}
    if kind == "case_punct_ws":
        return {f: case_punct_ws(rec[f], rng) if rec[f] else "" for f in ("instruction", "input", "output")}
    if kind == "replace_5":
        return {f: _replace(rec[f], 0.05, vocab, rng) if rec[f].strip() else rec[f] for f in ("instruction", "input", "output")}
    if kind == "swap_5":
        return {f: _swap(rec[f], 0.05, rng) for f in ("instruction", "input", "output")}
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------------------
# records and running the stage
# ---------------------------------------------------------------------------------------------------------
def alpaca_text(rec: dict) -> str:
    """prompt + "\\n" + response as the stage's ``fields: all`` sees an Alpaca record."""
    prompt = f"{rec['instruction']}\n\n{rec['input']}".strip()
    return f"{prompt}\n{rec['output']}"


def conversation(rec: dict, system: str | None = None) -> list[tuple[str, str]]:
    conv = [("user", f"{rec['instruction']}\n\n{rec['input']}".strip()), ("assistant", rec["output"])]
    return [("system", system), *conv] if system else conv


def run_stage(convs: list, params: dict, batch: int = 2000):
    """(decision, stage) of ``minhash_dedup`` with ``params`` over conversations, as the pipeline runs it."""
    from curate.frames import canonical_frame
    from curate.stages import GlobalDecision, StageContext, get_stage

    frame = canonical_frame(convs)
    cls = get_stage(STAGE)
    stage = cls(cls.Params(**params), StageContext(config_dir=REPO))
    prepared = pl.concat([stage.prepare(frame.slice(i, batch)) for i in range(0, frame.height, batch)])
    decision = stage.decide(prepared)
    if not isinstance(decision, GlobalDecision):
        decision = GlobalDecision(decision)
    return decision, stage


def cluster_of(decision, n: int) -> list[int]:
    """Each record's cluster (its representative's uid, or its own uid when in no cluster)."""
    out = list(range(n))
    if decision.clusters is not None and decision.clusters.height:
        for u, r in zip(decision.clusters["uid"].to_list(), decision.clusters["rep_uid"].to_list()):
            out[u] = r
    return out


def _row(set_name: str, part: str, *, n_pos=0, n_neg=0, tp=0, fp=0, fn=0, labels: str, note: str = "") -> dict:
    # copies below the threshold are reported, but merging them is not the stage's claim (its threshold says so);
    # the Toolformer author's 0.8 is a paraphrase-level measure: compared row by row, not a claim either
    scope = "context" if "[J<0.7]" in set_name or "author's" in set_name else "target"
    return {"stage": STAGE, "set": set_name, "part": part, "n_pos": n_pos, "n_neg": n_neg, "tp": tp, "fp": fp, "fn": fn,
            "labels": labels, "note": note, "scope": scope}


# ---------------------------------------------------------------------------------------------------------
# Alpaca: edited copies and hard negatives
# ---------------------------------------------------------------------------------------------------------
def _alpaca_part(shared: Path, part: str, n_originals: int | None, seed: int = 0) -> dict:
    """The records of one part: originals with one edited copy each, GPT-4's answers to some of the same
    instructions, and the real rows that share a passage. Returns records and their labels."""
    alpaca = json.loads((shared / "alpaca" / "alpaca_data_first10k_excl_holdout.json").read_text())
    gpt4 = {r["instruction"].strip(): r for r in json.loads((shared / "alpaca_gpt4" / "alpaca_en_demo.json").read_text())}
    rows = range(0, SPLIT_ROW) if part == "tune" else range(SPLIT_ROW, len(alpaca))
    rng = random.Random(f"{seed}-{part}")
    # same passage, other task: real rows of this part sharing an input of >= 40 characters
    by_input = defaultdict(list)
    for i in rows:
        if len(alpaca[i]["input"].strip()) >= 40:
            by_input[alpaca[i]["input"].strip()].append(i)
    passages = [v for v in by_input.values() if len({alpaca[i]["instruction"] for i in v}) > 1]
    in_passage = {i for v in passages for i in v}
    candidates = [i for i in rows if i not in in_passage and len(WORD.findall(alpaca_text(alpaca[i]))) >= 25]
    rng.shuffle(candidates)
    originals = sorted(candidates[:n_originals] if n_originals else candidates)
    vocab = [w for r in alpaca[:3000] for w in r["output"].split() if w.isalpha()]
    records: list[dict] = []  # {rec, group, kind}
    used = defaultdict(int)
    for g, i in enumerate(originals):
        rec = {k: alpaca[i][k] for k in ("instruction", "input", "output")}
        kinds = [k for k in EDIT_KINDS if eligible(rec, k)]
        kind = min(kinds, key=lambda k: (used[k], rng.random()))  # spread the kinds evenly
        used[kind] += 1
        copy = edit(rec, kind, rng, vocab)
        records.append({"rec": rec, "group": g, "kind": "original", "edit": kind})
        records.append({"rec": copy, "group": g, "kind": kind})
    g = len(originals)
    for i in originals:
        other = gpt4.get(alpaca[i]["instruction"].strip())
        if other and other["output"].strip() != alpaca[i]["output"].strip():
            records.append({"rec": {k: other.get(k, "") for k in ("instruction", "input", "output")}, "group": g,
                            "kind": "other_teacher", "teacher_of": originals.index(i)})
            g += 1
    passage_groups = []
    for v in passages:
        members = []
        for i in v:
            records.append({"rec": {k: alpaca[i][k] for k in ("instruction", "input", "output")}, "group": g, "kind": "same_passage"})
            members.append(g)
            g += 1
        passage_groups.append(members)
    order = list(range(len(records)))
    rng.shuffle(order)  # input order must not give the answer away (keep: first)
    records = [records[i] for i in order]
    return {"records": records, "passage_groups": passage_groups}


def _score_alpaca(data: dict, decision, part: str, suffix: str = "") -> list[dict]:
    records = data["records"]
    cluster = cluster_of(decision, len(records))
    uid_of = {(r["group"], r["kind"] == "original"): u for u, r in enumerate(records) if r["kind"] in EDIT_KINDS or r["kind"] == "original"}
    out = []
    for kind in EDIT_KINDS:
        stats = {True: [0, 0], False: [0, 0]}  # J >= 0.7: [pairs, merged]
        for u, r in enumerate(records):
            if r["kind"] != kind:
                continue
            o = uid_of[(r["group"], True)]
            j = exact_jaccard(alpaca_text(records[o]["rec"]), alpaca_text(r["rec"]))
            s = stats[j >= 0.7 - 1e-12]
            s[0] += 1
            s[1] += cluster[u] == cluster[o]
        for high in (True, False):
            n, hit = stats[high]
            if n:
                out.append(_row(f"edited copy: {kind} [J{'>=' if high else '<'}0.7]{suffix}", part, n_pos=n, tp=hit, fn=n - hit,
                                labels=CONSTRUCTION))
    # distinct originals: merged with a record of another group
    members = defaultdict(set)
    for u, r in enumerate(records):
        members[cluster[u]].add(r["group"])
    originals = [u for u, r in enumerate(records) if r["kind"] == "original"]
    fp = sum(len(members[cluster[u]]) > 1 for u in originals)
    out.append(_row(f"distinct Alpaca records{suffix}", part, n_neg=len(originals), fp=fp,
                    labels="Alpaca rows (distinct rows; some are real near-duplicates)",
                    note="an original merged with a record made from another original"))
    # other teacher: the GPT-4 answer merged with the Alpaca original
    orig_uid = {r["group"]: u for u, r in enumerate(records) if r["kind"] == "original"}
    teacher = [(u, orig_uid[r["teacher_of"]]) for u, r in enumerate(records) if r["kind"] == "other_teacher"]
    out.append(_row(f"same instruction, other teacher (alpaca_gpt4){suffix}", part, n_neg=len(teacher),
                    fp=sum(cluster[a] == cluster[b] for a, b in teacher), labels="alpaca_gpt4: GPT-4's answer to the same instruction"))
    # same passage, other task
    group_uid = {r["group"]: u for u, r in enumerate(records) if r["kind"] == "same_passage"}
    pairs = [(group_uid[a], group_uid[b]) for gs in data["passage_groups"] for i, a in enumerate(gs) for b in gs[i + 1 :]]
    if pairs:
        out.append(_row(f"same passage, other task (Alpaca){suffix}", part, n_neg=len(pairs),
                        fp=sum(cluster[a] == cluster[b] for a, b in pairs), labels="Alpaca's own rows: same input, another instruction and answer"))
    return out


def system_prompt(shared: Path) -> str:
    """A real long system prompt: LLaMA-Factory's glaive tool-call preamble with the file's most used tool schema."""
    rows = json.loads((shared / "chat_llamafactory" / "glaive_toolcall_en_demo.json").read_text())
    tools = max((r["tools"] for r in rows if r["tools"] != "[]"), key=lambda t: sum(r["tools"] == t for r in rows))
    return "You are a helpful assistant with access to the following functions. Use them if required -\n" + tools


# ---------------------------------------------------------------------------------------------------------
# P3 (self_instruct/t0_prompt_completion): same passage under several templates
# ---------------------------------------------------------------------------------------------------------
P3_FAMILIES = {
    "xsum": ("xsum_DOC_tldr", "xsum_article_DOC_summary", "xsum_summarize_DOC"),
    "cnn_dailymail": ("cnn_dailymail_3_0_0_news_summary", "cnn_dailymail_3_0_0_sum_in_brief", "cnn_dailymail_3_0_0_tldr_summary"),
    "adversarial_qa": ("adversarial_qa_dbert_answer_the_following_q", "adversarial_qa_dbert_question_context_answer"),
}
EOT = "<|endoftext|>"


def _p3(shared: Path) -> list[dict]:
    """P3 rows: {prompt, completion, family, template, doc (the longest quoted/plain passage key), key}."""
    out = []
    folder = shared / "self_instruct" / "t0_prompt_completion"
    for family, templates in P3_FAMILIES.items():
        for t in templates:
            for line in (folder / f"{t}.jsonl").read_text().splitlines():
                r = json.loads(line)
                prompt, completion = r["prompt"].strip(), r["completion"].replace(EOT, "").strip()
                out.append({"prompt": prompt, "completion": completion, "family": family, "template": t})
    return out


def _p3_doc_key(row: dict) -> str:
    # the passage: the longest paragraph of the prompt, normalized (templates wrap it differently)
    para = max(re.split(r"\n\s*\n|\n", row["prompt"]), key=len)
    return NONWORD.sub(" ", para.lower()).strip()[:300]


def _p3_question_key(row: dict) -> str:
    m = re.search(r'Question: "?([^"\n]+)"?', row["prompt"])
    return (m.group(1) if m else "").strip().lower()


def _p3_sets(shared: Path, quick: bool) -> list[dict]:
    rows = _p3(shared)
    if quick:
        rows = [r for r in rows if zlib.crc32(_p3_doc_key(r).encode()) % 4 == 0]
    convs = [[("user", r["prompt"]), ("assistant", r["completion"])] for r in rows]
    decision, _ = run_stage(convs, {})
    cluster = cluster_of(decision, len(rows))
    part_of = lambda r: "tune" if zlib.crc32(("part " + _p3_doc_key(r)).encode()) % 2 == 0 else "holdout"  # noqa: E731
    out = []
    # positives: same document (and question), same reference, another template
    by_doc = defaultdict(list)
    for u, r in enumerate(rows):
        by_doc[(r["family"], _p3_doc_key(r), _p3_question_key(r), NONWORD.sub(" ", r["completion"].lower()).strip())].append(u)
    pos = {"tune": [0, 0], "holdout": [0, 0]}
    for members in by_doc.values():
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                if rows[a]["template"] != rows[b]["template"]:
                    s = pos[part_of(rows[a])]
                    s[0] += 1
                    s[1] += cluster[a] == cluster[b]
    # negatives: adversarial_qa, same passage, another question and answer
    by_passage = defaultdict(list)
    for u, r in enumerate(rows):
        if r["family"] == "adversarial_qa":
            by_passage[_p3_doc_key(r)].append(u)
    neg = {"tune": [0, 0], "holdout": [0, 0]}
    for members in by_passage.values():
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                ra, rb = rows[a], rows[b]
                if _p3_question_key(ra) != _p3_question_key(rb) and NONWORD.sub(" ", ra["completion"].lower()) != NONWORD.sub(" ", rb["completion"].lower()):
                    s = neg[part_of(ra)]
                    s[0] += 1
                    s[1] += cluster[a] == cluster[b]
    for part in ("tune", "holdout"):
        n, hit = pos[part]
        out.append(_row("same document and reference, another template (P3)", part, n_pos=n, tp=hit, fn=n - hit,
                        labels="P3 templates: same source document and reference answer"))
        n, hit = neg[part]
        out.append(_row("same passage, other question (adversarial_qa)", part, n_neg=n, fp=hit,
                        labels="adversarial_qa: same passage, another question and answer"))
    return out


# ---------------------------------------------------------------------------------------------------------
# GPTeacher-Toolformer against the author's dedup
# ---------------------------------------------------------------------------------------------------------
def toolformer_comparison(shared: Path, params: dict | None = None) -> dict:
    """Run the stage on the toolformer set and compare its kept set with the author's 0.8 dedup, row by row.

    Returns the agreement table, per-row flags, the rejects below the threshold (exact Jaccard to the
    record they name, on the text the stage compares, and on the whole text) and the largest cluster."""
    folder = shared / "gpteacher_toolformer"
    rows = json.loads((folder / "toolformer-dedupe-only-dataset.json").read_text())
    theirs = json.loads((folder / "toolformer-similarity-0.8-dataset.json").read_text())
    key = lambda r: (r["instruction"], r["input"], r["output"])  # noqa: E731
    their_keys = {key(r) for r in theirs}
    params = {"threshold": 0.8} if params is None else params
    decision, stage = run_stage([conversation(r) for r in rows], params)
    threshold = stage.params.threshold
    rejected = dict(zip(decision.rejects["uid"].to_list(), decision.rejects["duplicate_of"].to_list()))
    uid_of_id = {f"rec{i:06d}": i for i in range(len(rows))}
    # the text the stage compares (after its boilerplate discount, where it has one)
    compared = [alpaca_text(r) for r in rows]
    if hasattr(stage, "texts"):
        from curate.frames import canonical_frame

        prepared = stage.prepare(canonical_frame([conversation(r) for r in rows]))
        compared = stage.texts(prepared)[0].to_list()
    below, below_whole = [], 0
    for u, rep in rejected.items():
        v = uid_of_id[rep]
        j = exact_jaccard(compared[u], compared[v])
        if j < threshold - 1e-9:
            below.append((u, v, j))
        below_whole += exact_jaccard(alpaca_text(rows[u]), alpaca_text(rows[v])) < threshold - 1e-9
    sizes = decision.clusters.group_by("rep_uid").len()["len"] if decision.clusters is not None and decision.clusters.height else pl.Series([1])
    we_keep = [u not in rejected for u in range(len(rows))]
    they_keep = [key(r) in their_keys for r in rows]
    table = {"both kept": 0, "only we keep": 0, "only they keep": 0, "both removed": 0}
    for w, t in zip(we_keep, they_keep):
        table["both kept" if w and t else "only we keep" if w else "only they keep" if t else "both removed"] += 1
    return {"rows": rows, "we_keep": we_keep, "they_keep": they_keep, "table": table, "rejects": len(rejected),
            "below": below, "below_whole_text": below_whole, "largest": int(sizes.max()), "threshold": threshold,
            "decision": decision, "compared": compared}


def _toolformer_rows(shared: Path) -> list[dict]:
    out = []
    for name, params in (("GPTeacher-Toolformer, author's 0.8 dedup", {"threshold": 0.8}),
                         ("GPTeacher-Toolformer, author's 0.8 dedup (stage defaults)", {})):
        res = toolformer_comparison(shared, params)
        half = len(res["rows"]) // 2
        for part, span in (("tune", range(0, half)), ("holdout", range(half, len(res["rows"])))):
            pos = [u for u in span if not res["they_keep"][u]]
            neg = [u for u in span if res["they_keep"][u]]
            tp = sum(not res["we_keep"][u] for u in pos)
            fp = sum(not res["we_keep"][u] for u in neg)
            note = (f"threshold {res['threshold']:g}; rejects below it (exact Jaccard to duplicate_of, compared text): "
                    f"{len(res['below'])} of {res['rejects']} (whole text: {res['below_whole_text']}); largest cluster {res['largest']}")
            out.append(_row(name, part, n_pos=len(pos), n_neg=len(neg), tp=tp, fp=fp, fn=len(pos) - tp,
                            labels="the author's dedup (toolformer-similarity-0.8-dataset.json)", note=note))
    return out


# ---------------------------------------------------------------------------------------------------------
def measure(shared: Path, work: Path, *, quick: bool = False) -> list[dict]:
    """One row per (set, part) for ``minhash_dedup`` with its defaults (see the module docstring)."""
    shared = Path(shared)
    out: list[dict] = []
    n = 300 if quick else None
    system = system_prompt(shared)
    for part in ("tune", "holdout"):
        data = _alpaca_part(shared, part, n)
        decision, _ = run_stage([conversation(r["rec"]) for r in data["records"]], {})
        out += _score_alpaca(data, decision, part)
        decision, _ = run_stage([conversation(r["rec"], system) for r in data["records"]], {})
        rows = _score_alpaca(data, decision, part, suffix=" (shared system prompt)")
        # per kind is printed above; under the system prompt, the totals
        pos_hi = [r for r in rows if r["set"].startswith("edited copy") and "[J>=0.7]" in r["set"]]
        out.append(_row("edited copies [J>=0.7] under one system prompt", part, n_pos=sum(r["n_pos"] for r in pos_hi),
                        tp=sum(r["tp"] for r in pos_hi), fn=sum(r["fn"] for r in pos_hi), labels=CONSTRUCTION,
                        note="a real glaive tool-call system prompt on every record"))
        out += [r for r in rows if not r["set"].startswith("edited copy")]
    out += _p3_sets(shared, quick)
    out += _toolformer_rows(shared)
    return out


if __name__ == "__main__":
    import time

    t0 = time.time()
    rows = measure(REPO.parent / "shared" / "data", REPO / "bench" / "_work", quick="--quick" in sys.argv)
    print("| set | part | n_pos | n_neg | tp | fp | fn | recall | note |\n|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        rec = f"{r['tp'] / r['n_pos']:.3f}" if r["n_pos"] else ""
        print(f"| {r['set']} | {r['part']} | {r['n_pos']} | {r['n_neg']} | {r['tp']} | {r['fp']} | {r['fn']} | {rec} | {r['note']} |")
    print(f"({time.time() - t0:.0f} s)")
