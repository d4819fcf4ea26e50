"""Semantic (embedding) dedup verdicts: does ``embedding_dedup`` merge what people call the same record,
and keep apart what only looks alike?

Every set is a list of labeled record pairs; a pair counts as merged when the stage, run with its
defaults on the set's records (prepare + decide, as ``curate run`` does, embeddings cached in
``work/embeddings.duckdb`` by model and text hash), puts both records in one duplicate cluster.
Positives should be merged (``fn``: a positive pair left apart), negatives kept apart (``fp``: a
negative pair merged). Records are built the way curate reads an Alpaca row: the user turn is
``instruction`` (+ a blank line + ``input``), the assistant turn ``output``.

Positives:

- ``mrpc`` (positives and negatives): the Microsoft Research Paraphrase Corpus pairs of
  ``self_instruct/t0_prompt_completion/glue_mrpc_paraphrase.jsonl`` with their human yes/no labels
  (the completion). Each sentence is a record of its own, the sentence as the user turn and an empty
  answer, so the pair's similarity is the cosine of the two sentences. (``glue_mrpc_generate_paraphrase``
  holds exactly the 142 "yes" pairs again, so it adds nothing.) Tune: items at even positions; holdout: odd.
- ``alpaca_typos``, ``alpaca_chatty``, ``alpaca_reworded``, ``alpaca_numbers``: a real Alpaca row
  (``alpaca/alpaca_data_first10k_excl_holdout.json``) and an edited copy of it, labels by
  construction: a typo about every 25 characters of instruction, input and answer (swapped, dropped,
  doubled or replaced letters); a chatty prefix on the answer ("Sure! Here is ..."); the instruction
  reworded (an opener such as "Could you", a verb swapped for a synonym, a word or two replaced), the
  answer unchanged; every number in the row changed (rows with digits only).
- ``t0_other_template``: the same item of a T0/P3 task under two prompt templates written by the
  promptsource authors, the same answer: AdversarialQA ("Given the following passage ... answer the
  following question" vs "Question: ... Context: ...") and SAMSum ("Sum up the following dialogue"
  vs "Summarize:"). Tune: items at even positions; holdout: odd.

Hard negatives (distinct records that look alike):

- ``other_teacher``: an Alpaca row and the GPT-4 answer to the very same instruction
  (``alpaca_gpt4/alpaca_en_demo.json``; pairs whose answers are equal are left out).
- ``alpaca_shared_input``: two Alpaca rows with the same ``input`` passage (20+ characters) and
  different instructions (answers differ).
- ``adversarialqa_shared_passage``: two AdversarialQA questions on the same passage (different
  questions, different answers). Tune: passages at even positions of first appearance; holdout: odd.
- ``toolformer_shared_tool``: two GPTeacher-Toolformer rows with the same tool header (the same tool
  description) and different tasks.

Tune / holdout: Alpaca rows 0-4,999 of the file are tune, rows 5,000 and on holdout (a pair belongs
to the part of its Alpaca row; a shared-input group to the part of its first row); Toolformer rows in
the first half of the file are tune; MRPC and T0 by item position, as said above. Sizes are capped and
sampled with fixed seeds (``quick=True``: 4 to 12 pairs per set and part, about half a minute with nothing cached).
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("embedding_dedup",)
PARTS = ("tune", "holdout")
ALPACA = "alpaca/alpaca_data_first10k_excl_holdout.json"
ALPACA_TUNE_ROWS = 5000
T0 = "self_instruct/t0_prompt_completion"
EOT = "<|endoftext|>"


@dataclass
class PairSet:
    """Records (prompt, response) and labeled pairs of them: (record a, record b, duplicate?)."""

    name: str
    part: str
    labels: str
    records: list[tuple[str, str]] = field(default_factory=list)
    pairs: list[tuple[int, int, bool]] = field(default_factory=list)
    _index: dict = field(default_factory=dict, repr=False)

    def add(self, a: tuple[str, str], b: tuple[str, str], duplicate: bool) -> None:
        """Adds the pair (a, b); a record met before is reused, not repeated."""
        ia, ib = self._record(a), self._record(b)
        if ia != ib:
            self.pairs.append((ia, ib, duplicate))

    def _record(self, rec: tuple[str, str]) -> int:
        if rec not in self._index:
            self._index[rec] = len(self.records)
            self.records.append(rec)
        return self._index[rec]


def alpaca_record(row: dict) -> tuple[str, str]:
    """(user turn, assistant turn) as curate reads an Alpaca row."""
    inp = row.get("input") or ""
    return (f"{row['instruction']}\n\n{inp}" if inp else row["instruction"], row["output"])


# -- edits (labels by construction) ---------------------------------------------------------------------

KEYBOARD = dict(zip("abcdefghijklmnopqrstuvwxyz", "sqxsfgfhjkljnbpolwdryczeut"))


def typos(text: str, rng: random.Random, every: int = 25) -> str:
    """A typo (two letters swapped, one dropped, doubled, or replaced by its keyboard neighbour) about
    every ``every`` characters."""
    out, i, next_at = [], 0, rng.randint(every // 2, every * 3 // 2)
    while i < len(text):
        c = text[i]
        if i >= next_at and c.isalpha():
            op = rng.choice(("swap", "drop", "double", "near"))
            if op == "swap" and i + 1 < len(text) and text[i + 1].isalpha():
                out += [text[i + 1], c]
                i += 1
            elif op == "drop":
                pass
            elif op == "double":
                out += [c, c]
            else:
                n = KEYBOARD.get(c.lower(), c)
                out.append(n.upper() if c.isupper() else n)
            next_at = i + rng.randint(every // 2, every * 3 // 2)
        else:
            out.append(c)
        i += 1
    return "".join(out)


CHATTY = (
    "Sure! Here is the answer:\n\n",
    "Sure! Here is what you asked for:\n\n",
    "Certainly! Here's my response:\n\n",
    "Of course! Here it is:\n\n",
    "Great question! Here is the answer:\n\n",
    "Sure thing, happy to help. Here you go:\n\n",
)

VERBS = {
    "generate": "come up with", "describe": "give a description of", "explain": "tell me", "write": "compose",
    "create": "make", "list": "name", "give": "provide", "provide": "give", "identify": "point out",
    "find": "work out", "suggest": "recommend", "summarize": "sum up", "rewrite": "rephrase",
    "classify": "categorize", "name": "list", "construct": "build", "design": "come up with", "make": "create",
    "edit": "revise", "calculate": "compute", "analyze": "examine", "evaluate": "assess",
    "determine": "figure out", "choose": "pick", "select": "pick", "produce": "generate", "develop": "create",
    "outline": "sketch out", "brainstorm": "think of", "compose": "write", "convert": "change",
    "predict": "forecast", "compare": "contrast", "translate": "render",
}
WORDS = {
    "important": "essential", "use": "utilize", "help": "assist", "big": "large", "small": "little",
    "quickly": "rapidly", "often": "frequently", "example": "instance", "show": "demonstrate",
    "many": "numerous", "good": "great", "also": "additionally", "people": "individuals", "improve": "enhance",
    "different": "various", "get": "obtain", "very": "really", "new": "novel", "way": "manner",
    "each": "every", "following": "given", "sentence": "phrase", "text": "passage", "article": "piece",
    "story": "tale", "short": "brief", "words": "terms", "type": "kind", "ways": "methods",
    "reasons": "causes", "benefits": "advantages", "main": "key", "best": "top", "word": "term",
}
OPENERS = ("Please ", "Could you ", "Can you ", "I'd like you to ", "I need you to ")
QUESTION_OPENERS = ("Quick question: ", "I was wondering: ", "Tell me, ", "Here's my question: ")
WH = ("what", "who", "why", "how", "when", "where", "which", "is", "are", "do", "does", "can", "should")


def reword(instruction: str, rng: random.Random) -> str:
    """The instruction said another way: an opener, its leading verb swapped, up to two words replaced."""
    words = instruction.split(" ")
    first = words[0].lower().strip(",.:")
    if first in VERBS:
        words[0] = VERBS[first]
    spots = [i for i, w in enumerate(words) if i and w.lower().rstrip(".,;:!?") in WORDS]
    for i in rng.sample(spots, min(len(spots), 2)):
        core = words[i].rstrip(".,;:!?")
        words[i] = WORDS[core.lower()] + words[i][len(core):]
    text = " ".join(words)
    if first in WH or instruction.rstrip().endswith("?"):
        return rng.choice(QUESTION_OPENERS) + text[:1].lower() + text[1:]
    opener = rng.choice(OPENERS)
    body = text[:1].lower() + text[1:]
    if opener in ("Could you ", "Can you "):
        body = body.rstrip(".!") + "?"
    return opener + body


def change_numbers(row: dict, rng: random.Random) -> dict:
    """The row with every number changed (the same number the same way throughout the row)."""
    new: dict[str, str] = {}

    def sub(m: re.Match) -> str:
        s = m.group(0)
        if s not in new:
            new[s] = str(int(s) + rng.randint(1, 9))
        return new[s]

    return {k: re.sub(r"\d+", sub, v) if isinstance(v, str) else v for k, v in row.items()}


# -- the sets -----------------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _alpaca(shared: Path) -> list[dict]:
    return json.loads((shared / ALPACA).read_text(encoding="utf-8"))


def _part_rows(rows: list[dict], part: str) -> range:
    return range(0, ALPACA_TUNE_ROWS) if part == "tune" else range(ALPACA_TUNE_ROWS, len(rows))


def mrpc(shared: Path, part: str, limit: int) -> PairSet:
    ps = PairSet("mrpc", part, "MRPC annotators (human paraphrase yes/no)")
    pattern = re.compile(r"Does the sentence\n(.*)\nparaphrase \(that is, mean the same thing as\) this sentence\?\n(.*)\n$", re.S)
    items = _jsonl(shared / T0 / "glue_mrpc_paraphrase.jsonl")
    for pos in range(0 if part == "tune" else 1, len(items), 2)[:limit]:
        m = pattern.match(items[pos]["prompt"])
        answer = items[pos]["completion"].replace(EOT, "").strip()
        ps.add((m.group(1), ""), (m.group(2), ""), answer == "yes")
    return ps


EDITS = ("typos", "chatty", "reworded", "numbers")


def alpaca_edits(shared: Path, part: str, kind: str, limit: int, rows: list[dict] | None = None) -> PairSet:
    """Real Alpaca rows of ``part`` and an edited copy of each (``kind``: one of EDITS)."""
    rows = rows or _alpaca(shared)
    rng = random.Random(f"{kind}/{part}")
    ps = PairSet(f"alpaca_{kind}", part, f"construction: edited copy of a real Alpaca row ({kind})")
    cands = [i for i in _part_rows(rows, part) if rows[i]["output"].strip() and len(rows[i]["output"]) >= 20]
    if kind == "numbers":
        cands = [i for i in cands if re.search(r"\d", rows[i]["instruction"] + rows[i]["input"] + rows[i]["output"])]
    # the same originals for every kind (one seed per part): their texts are encoded once
    for i in random.Random(f"originals/{part}").sample(cands, min(limit, len(cands))):
        row = rows[i]
        if kind == "typos":
            copy = {k: typos(v, rng) for k, v in row.items()}
        elif kind == "chatty":
            copy = {**row, "output": rng.choice(CHATTY) + row["output"]}
        elif kind == "reworded":
            copy = {**row, "instruction": reword(row["instruction"], rng)}
        else:
            copy = change_numbers(row, rng)
        ps.add(alpaca_record(row), alpaca_record(copy), True)
    return ps


def t0_other_template(shared: Path, part: str, limit: int) -> PairSet:
    """The same item under two promptsource templates, the same answer (AdversarialQA, SAMSum)."""
    ps = PairSet("t0_other_template", part, "construction (P3/promptsource): one item, two templates, same answer")
    for a, b in (
        ("adversarial_qa_dbert_answer_the_following_q", "adversarial_qa_dbert_question_context_answer"),
        ("samsum_Sum_up_the_following_dialogue", "samsum_Summarize_"),
    ):
        ra, rb = _jsonl(shared / T0 / f"{a}.jsonl"), _jsonl(shared / T0 / f"{b}.jsonl")
        for pos in range(0 if part == "tune" else 1, min(len(ra), len(rb)), 2)[: (limit + 1) // 2]:
            x, y = ra[pos], rb[pos]
            if x["completion"] == y["completion"]:  # the files list the same items in the same order
                ps.add((x["prompt"].strip(), x["completion"].replace(EOT, "").strip()),
                       (y["prompt"].strip(), y["completion"].replace(EOT, "").strip()), True)
    return ps


def other_teacher(shared: Path, part: str, limit: int, rows: list[dict] | None = None) -> PairSet:
    """An Alpaca row (text-davinci-003's answer) and GPT-4's answer to the same instruction."""
    rows = rows or _alpaca(shared)
    ps = PairSet("other_teacher", part, "construction: same instruction, another teacher's answer (GPT-4-LLM)")
    where = {}
    for i, r in enumerate(rows):
        where.setdefault((r["instruction"], r["input"]), i)
    part_rows = _part_rows(rows, part)
    for g in json.loads((shared / "alpaca_gpt4" / "alpaca_en_demo.json").read_text(encoding="utf-8")):
        i = where.get((g["instruction"], g.get("input", "")))
        if i is None or i not in part_rows or " ".join(g["output"].split()) == " ".join(rows[i]["output"].split()):
            continue
        ps.add(alpaca_record(rows[i]), alpaca_record({**rows[i], "output": g["output"]}), False)
        if len(ps.pairs) >= limit:
            break
    return ps


def alpaca_shared_input(shared: Path, part: str, limit: int, rows: list[dict] | None = None) -> PairSet:
    """Pairs of Alpaca rows with the same input passage and different instructions."""
    rows = rows or _alpaca(shared)
    ps = PairSet("alpaca_shared_input", part, "construction: Alpaca rows sharing an input, different instructions")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if len(r["input"]) >= 20:
            groups[r["input"]].append(i)
    part_rows = _part_rows(rows, part)
    pairs = [
        (a, b)
        for members in groups.values()
        if members[0] in part_rows
        for k, a in enumerate(members)
        for b in members[k + 1 :]
        if rows[a]["instruction"] != rows[b]["instruction"] and rows[a]["output"] != rows[b]["output"]
    ]
    for a, b in random.Random(f"shared_input/{part}").sample(pairs, min(limit, len(pairs))):
        ps.add(alpaca_record(rows[a]), alpaca_record(rows[b]), False)
    return ps


def adversarialqa_shared_passage(shared: Path, part: str, limit: int) -> PairSet:
    """Two AdversarialQA questions on one passage: different questions, different answers."""
    ps = PairSet("adversarialqa_shared_passage", part, "AdversarialQA items (different questions on one passage)")
    items = _jsonl(shared / T0 / "adversarial_qa_dbert_answer_the_following_q.jsonl")
    passage = re.compile(r'passage\n\n"(.*)",?\s*\n\nanswer the following question', re.S)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        m = passage.search(it["prompt"])
        groups[m.group(1) if m else it["prompt"]].append(i)
    pairs = []
    for g, members in enumerate(groups.values()):
        if g % 2 == (0 if part == "tune" else 1):
            pairs += [(a, b) for k, a in enumerate(members) for b in members[k + 1 :]
                      if items[a]["completion"] != items[b]["completion"]]
    for a, b in random.Random(f"advqa/{part}").sample(pairs, min(limit, len(pairs))):
        ps.add(*((items[i]["prompt"].strip(), items[i]["completion"].replace(EOT, "").strip()) for i in (a, b)), False)
    return ps


def toolformer_shared_tool(shared: Path, part: str, limit: int) -> PairSet:
    """Two GPTeacher-Toolformer rows with the same tool header (tool and description), different tasks."""
    rows = json.loads((shared / "gpteacher_toolformer" / "toolformer-dedupe-only-dataset.json").read_text(encoding="utf-8"))
    ps = PairSet("toolformer_shared_tool", part, "construction: GPTeacher-Toolformer rows sharing a tool header")
    half = len(rows) // 2
    idx = range(0, half) if part == "tune" else range(half, len(rows))
    by_header: dict[str, list[int]] = defaultdict(list)
    for i in idx:
        header, _, task = rows[i]["instruction"].rpartition("\n")
        by_header[header].append(i)
    rng = random.Random(f"toolformer/{part}")
    members = [m for m in by_header.values() if len(m) > 1]
    seen = set()
    for _ in range(limit * 20):
        if len(ps.pairs) >= limit or not members:
            break
        group = rng.choice(members)
        a, b = sorted(rng.sample(group, 2))
        ta, tb = (rows[i]["instruction"].rpartition("\n")[2] for i in (a, b))
        if (a, b) in seen or ta.strip().lower() == tb.strip().lower():
            continue
        seen.add((a, b))
        ps.add(alpaca_record(rows[a]), alpaca_record(rows[b]), False)
    return ps


def labeled_sets(shared: Path, *, quick: bool = False) -> list[PairSet]:
    """Every labeled set, both parts, at full or quick size."""
    n = 8 if quick else 60
    rows = _alpaca(shared)
    out = []
    for part in PARTS:
        out.append(mrpc(shared, part, 12 if quick else 100))
        out += [alpaca_edits(shared, part, kind, n, rows) for kind in EDITS]
        out.append(t0_other_template(shared, part, 4 if quick else 30))
        out.append(other_teacher(shared, part, n, rows))
        out.append(alpaca_shared_input(shared, part, n, rows))
        out.append(adversarialqa_shared_passage(shared, part, n))
        out.append(toolformer_shared_tool(shared, part, n))
    return out


# -- running the stage --------------------------------------------------------------------------------


def _frame(ps: PairSet):
    from curate.frames import canonical_frame

    return canonical_frame([[("user", p), ("assistant", r)] for p, r in ps.records])


def merged_pairs(ps: PairSet, workspace, **params) -> list[bool]:
    """Per pair of ``ps``: did ``embedding_dedup`` (defaults, unless ``params``) put both in one cluster?"""
    from curate.stages import StageContext
    from curate.stages.semantic import EmbeddingDedup

    stage = EmbeddingDedup(EmbeddingDedup.Params(**params), StageContext(workspace=workspace))
    d = stage.decide(stage.prepare(_frame(ps)))
    rep = dict(zip(d.clusters["uid"].to_list(), d.clusters["rep_uid"].to_list())) if d.clusters is not None else {}
    return [a in rep and rep.get(a) == rep.get(b) for a, b, _ in ps.pairs]


def pair_cosines(ps: PairSet, workspace, model: str = "embedded"):
    """Per pair: (prompt cosine, response cosine) with the stage's own text normalization and vectors."""
    import numpy as np

    from curate.stages import StageContext
    from curate.stages.semantic import EmbeddingDedup

    stage = EmbeddingDedup(EmbeddingDedup.Params(model=model), StageContext(workspace=workspace))
    prep = stage.prepare(_frame(ps))
    h = np.concatenate([prep["h_prompt"].to_numpy(), prep["h_response"].to_numpy()])
    t = prep["t_prompt"].to_list() + prep["t_response"].to_list()
    _, first = np.unique(h, return_index=True)
    hashes, vecs = stage.embeddings(h[first], [t[i] for i in first])
    a = np.array([p[0] for p in ps.pairs], dtype=np.int64)
    b = np.array([p[1] for p in ps.pairs], dtype=np.int64)
    out = []
    for part in ("prompt", "response"):
        v = vecs[np.searchsorted(hashes, prep[f"h_{part}"].to_numpy())]
        out.append(np.einsum("ij,ij->i", v[a], v[b]) if a.size else np.empty(0))
    return out[0], out[1]


def workspace(work: Path):
    """The embedding cache for these sets: a workspace folder ``work/workspace`` (its ``embeddings.duckdb``
    is the cache; nothing else in it is used)."""
    from curate.workspace import Workspace

    work.mkdir(parents=True, exist_ok=True)
    return Workspace(work / "workspace")


def measure(shared: Path, work: Path, *, quick: bool = False) -> list[dict]:
    """One row per (set, part): the stage's default verdicts on the labeled pairs (see the module docstring)."""
    from curate.stages.semantic import EmbeddingDedup

    defaults = EmbeddingDedup.Params()
    ws = workspace(Path(work))
    rows = []
    try:
        for ps in labeled_sets(Path(shared), quick=quick):
            merged = merged_pairs(ps, ws)
            labels = [dup for _, _, dup in ps.pairs]
            tp = sum(m and y for m, y in zip(merged, labels))
            fp = sum(m and not y for m, y in zip(merged, labels))
            n_pos = sum(labels)
            minhash = sum(char_jaccard("\n".join(ps.records[a]), "\n".join(ps.records[b])) >= 0.7 for a, b, _ in ps.pairs)
            rows.append({
                "stage": "embedding_dedup", "set": ps.name, "part": ps.part,
                "n_pos": n_pos, "n_neg": len(labels) - n_pos, "tp": tp, "fp": fp, "fn": n_pos - tp,
                "labels": ps.labels,
                "note": f"pairs at fields={defaults.fields}, threshold={defaults.threshold}; "
                        f"5-char Jaccard >= 0.7 (MinHash's rule) on {minhash}/{len(labels)}",
            })
    finally:
        ws.close()
    for part in PARTS:  # every set of the part together: one precision over positives and hard negatives
        mine = [r for r in rows if r["part"] == part]
        total = {k: sum(r[k] for r in mine) for k in ("n_pos", "n_neg", "tp", "fp", "fn")}
        rows.append({"stage": "embedding_dedup", "set": "all_pairs", "part": part, **total,
                     "labels": "the sets above together", "note": "pooled; precision depends on the mix of sets"})
    return rows


def char_jaccard(a: str, b: str) -> float:
    """Exact Jaccard of minhash_dedup's 5-character shingles (the dedup family's one implementation)."""
    from verdict_sets.dedup import exact_jaccard

    return exact_jaccard(a, b)


if __name__ == "__main__":
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    sys.path.append(str(repo))  # appended: PYTHONPATH (an old checkout) wins
    sys.path.insert(0, str(repo / "bench"))  # verdict_sets.dedup
    t0 = time.perf_counter()
    for r in measure(repo.parent / "shared" / "data", repo / "bench" / "_work" / "verdicts" / "semantic", quick="--quick" in sys.argv):
        print(r["set"], r["part"], r["n_pos"], r["n_neg"], "tp", r["tp"], "fp", r["fp"], "fn", r["fn"])
    print(f"{time.perf_counter() - t0:.1f} s")
