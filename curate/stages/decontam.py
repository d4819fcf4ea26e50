"""Decontamination: reject training records that contain text of an evaluation set.

Evidence is word overlap after the same normalization on both sides (:func:`normalize`), so the way an eval
item is written down does not decide whether its copy is found:

- Field labels are not words of the item: ``Question:``, ``Answer:``, ``Q:``, ``A:``, ``Options:``,
  ``Choices:``, ``Context:``... (:data:`FIELD_LABELS`, anywhere, and any single word followed by a colon at the
  start of a line). TriviaQA stores ``"Question: ... \\nAnswer:"`` and ARC ``"Question: ..."`` around the
  question; a training copy without them is the same words.
- Choice markers are not words either: ``A.``, ``(B)``, ``c)``, ``1.``, ``[2]``, ``-``, ``*``, ``•`` at the
  start of a line, and ``(B)``, ``b)``, ``(2)``, ``B.``, ``B:`` inside one. Re-lettered, numbered, bulleted
  and inline choice lists become the same word sequence.
- Case, punctuation and whitespace never counted: words are lowercased ``\\w+`` runs
  (:mod:`curate.stages.ngrams`).

Labels, markers, line breaks and sentence punctuation (``.?!;:`` before a space, quotes, brackets, ``|``)
also mark **segment boundaries**: a segment is a sentence, a line, a field, a choice. Turns of a training
record are joined with a line break, so a unit may run from the prompt into the response.

Two kinds of units are evidence:

- ``ngram``-grams (13 words by default) of each eval item's text, read as its stem (the question) followed
  by its other strings (choices, answers...): a copy of the question with its choices in order matches
  across the join. For an item whose question cannot count alone (see below), also the stem followed by
  each one of its other strings, so "Which of the following is true?" + its answer is still the item; for
  the others not, so a paraphrased question followed by one of the eval set's answers is not a hit.
- Whole units, for what is shorter than one n-gram: the stem alone, the stem followed by one of the item's
  other strings, and the stem followed by all of them, each when it has ``min_words`` to ``ngram - 1``
  words of which at least ``min_content_words`` are not :data:`FUNCTION_WORDS` ("who are you", "what is
  it" say nothing about an item). A whole unit matches a training text only where the text has the same
  words **from a segment start to a segment end**: the question as a sentence (or a run of sentences) of
  its own, anywhere in the record ("Answer this trivia question: Who wrote X? Give a short answer."), never
  as part of a longer sentence ("What causes sound" inside "What causes sound waves to bend?"). Only the
  stem is a question: a choice or an answer is never a whole unit on its own, however short the stem ("All
  of the above" or "True" in a training text copies no item), and a stem that is too short or too generic
  counts only together with the item's other text.

Templates. A unit contained in more than ``max_eval_items`` (5) eval items is a template of the eval
sets, not an item's content, and is left out of the index: MMLU's moral_scenarios repeats one 20-word stem
in all 895 items, formal_logic opens 15 items with "Construct a complete truth table...", and "Which of the
following is true?" is a sentence of many items (a whole unit counts the items that contain it as a
sentence, not only those whose whole stem it is). Five is the most questions that share one reading passage
in MMLU, so a passage copied with one of its questions is still evidence. An n-gram with more than
``template_share`` (70 %) of its words inside template n-grams straddles the template's edge ("... clearly
morally wrong? Scenario 1 | He") and is not evidence either.
The stem is the string under the best-ranked key of :data:`STEM_KEYS` (question, query, stem, prompt...);
in a file without such a key (MMLU's headerless CSV, MT-Bench's ``turns``) it is the first field, in
reading order, whose values differ between nearly all items of the file (:data:`STEM_DISTINCT`) and are
more than one word on average: MMLU's question column, TruthfulQA's ``Question`` column even when the
header row is read as data, never a category or a choice column. Strings are NFC-normalized.

Eval side. ``eval_sets`` names files in any format curate reads (JSONL, JSON, CSV/TSV, Parquet; paths,
directories or globs, relative to the config's folder). An eval item is one record of such a file, and its
text is every string value in it, nested lists and objects flattened (keys, numbers and booleans are not
text): MMLU's headerless CSV, ARC's ``{query, choices, gold}``, GSM8K's ``{question, answer}`` and
TruthfulQA's CSV all work without a mapping; ids, choice labels and answer keys (``8-343``, ``B``) are not
text. CSV files are read with the first row as data unless the eval set says ``csv_header: true``. Eval
sets are read once, on the first batch.

The index is three sorted NumPy arrays (unit hash, first eval item, unit length), looked up with a
bitmap prefilter then ``np.searchsorted``. Whole units of a training text are hashed for every run of
segments from a segment start, in one NumPy pass (a cumulative sum of position-weighted word hashes),
so a record costs its n-grams plus about ``ngram`` hashes per segment: no Python object per unit.

Training side. ``prepare(batch)`` hashes the units of the chosen turns (``fields``: all, prompt or
response), vectorized, and keeps only the units found in the index: ``uid``, ``id``, the unit's hash, its
first word and the matched words (rebuilt for the hits only, which are rare). It also emits one tally row
per batch (``uid`` null, ``batch_records``) so that ``decide`` knows N, the number of records that reached
the stage.

Boilerplate. ``decide(prepared)`` counts, per matched unit, the distinct training records that contain it.
A unit in more than ``max(boilerplate_max_records, boilerplate_fraction * N)`` records is boilerplate
(a system prompt, a license header, an instruction template that an eval file happens to share), not
evidence. Frequency is measured on the training side only, and only among the units that match an eval
item, so memory grows with the hits, never with the number of distinct training n-grams. Defaults: 50
records or 0.1% of the records, whichever is larger, so an eval question copied a few dozen times
(TruthfulQA's fine-tuning file has each question about 27 times) is still contamination, while a sentence in
thousands of records is not.

A record with at least ``min_matches`` non-boilerplate units is rejected, reason ``contaminated``; the
detail names the eval item with the most matched units (``file:line``, the file relative to the config's
folder when it is inside it, or the eval set's ``name``), the number of units, and the matched span (the
record's normalized words from its first to its last matched unit of that item, truncated)::

    13-gram overlap with arc/arc_easy_shared.jsonl:2 (5 n-grams): "which piece of safety equipment ..."
    whole-question overlap (4 words) with arc/arc_easy_shared.jsonl:30 (2 n-grams): "what causes sound vibrations"
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curate.stages import GlobalStage, StageContext, StageParams, empty_rejects, register
from curate.stages.ngrams import ngram_hashes, word_hashes, words

# A word that stands for a segment boundary while tokenizing, so boundaries are found in the same pass as
# words; it is removed before hashing. (Text that contains it literally only gets an extra boundary.)
_BREAK_WORD = "zqxjcuratebreakzqxj"
_BREAK_HASH = word_hashes(pl.Series([_BREAK_WORD]))[0][0]
_BREAK = f" {_BREAK_WORD} "

SPAN_CHARS = 160  # characters of matched text shown in a detail

# Field names that label a part of an eval item or a prompt template ("Question:", "A:"); followed by a
# colon they are a boundary, not words.
FIELD_LABELS = (
    "question", "questions", "answer", "answers", "q", "a", "options", "option", "choices", "choice",
    "context", "passage", "input", "output", "response", "instruction", "hint", "premise", "hypothesis",
    "sentence", "goal", "solution", "query", "prompt", "ending", "endings", "problem", "explanation",
)
_LABEL_RE = r"(?i)\b(?:" + "|".join(FIELD_LABELS) + r")[ \t]*:"
# any one word then a colon opens a line as a label ("Scenario:", "Note:")
_LINE_LABEL_RE = r"(?m)^[ \t]*[^\W\d_][\w'-]{0,24}[ \t]*:(?:[ \t]|$)"
# choice markers and bullets at the start of a line or right after a label ("Question: 7. What..."): "A.",
# "(b)", "c)", "1.", "10)", "iv.", "[2]", "-", "*", "•"
_LINE_MARKER_RE = r"(?m)(?:^|" + _BREAK_WORD + r")[ \t]*(?:[-*•·▪◦‣>]+|\(?(?:[A-Za-z]|\d{1,2}|[ivxIVX]{1,4})[.):\]]|\[(?:[A-Za-z]|\d{1,2})\])[ \t]+"
# choice markers inside a line: "(B) ", "b) ", "(2) ", "B. ", "B: " (capital A-H only with a period or
# colon, so the article "a" and words like "Vitamin C" before a comma are untouched)
_INLINE_MARKER_RE = r"(?:^|\s)(?:\(?[A-Ha-h]\)|\(\d{1,2}\)|[A-H][.:])\s"
# sentence ends (punctuation before a space or the end), line breaks, quotes, brackets, table bars
_BOUNDARY_RE = r"[.?!;:]+[)\"'”’\]]*(?:\s|$)|\n|[\"“”«»()\[\]{}|]"

# Words that say nothing about which item a short question is ("who are you", "what is it"): a whole unit
# needs `min_content_words` words outside this list. English function words plus the words of generic
# answer choices ("all of the above", "none of these", "true", "false").
FUNCTION_WORDS = (
    "a an the and or but nor if then than so as of to in on at by for with from into onto about over under "
    "is are was were be been being am do does did done have has had having can could will would shall should "
    "may might must i me my mine you your yours he him his she her hers it its we us our ours they them their "
    "theirs this that these those there here what which who whom whose when where why how not no yes all any "
    "some one each every both either neither none other others such own same just very too also only more most "
    "many much few up down out off again s t don above below true false following"
).split()
_FUNCTION_HASHES = np.unique(word_hashes(pl.Series([" ".join(FUNCTION_WORDS)]))[0])

PREPARED_SCHEMA: dict[str, pl.DataType] = {
    "uid": pl.Int64,
    "id": pl.Utf8,
    "gram": pl.UInt64,
    "start": pl.Int32,
    "span": pl.Utf8,
    "batch_records": pl.Int64,
}

# one odd 64-bit multiplier per position in a whole unit (fixed: hashes are stable across runs and machines;
# a different stream from the n-grams' so a whole unit never equals an n-gram)
_UNIT_MULT = np.random.default_rng(20261205).integers(1 << 62, 1 << 63, size=64, dtype=np.uint64) | np.uint64(1)


class EvalSet(StageParams):
    """One eval set: a file, directory or glob; ``name`` replaces the path in details."""

    path: str = Field(..., description="eval file, directory or glob, relative to the config's folder")
    name: str | None = Field(None, description="shown instead of the path in details")
    csv_header: bool | list[str] = Field(False, description="CSV/TSV: true when the first row names the columns (or the names)")


def normalize(texts: pl.Series) -> pl.Series:
    """Texts with field labels, choice markers, line breaks and sentence punctuation replaced by a boundary
    word (see the module docstring); the words that remain are the evidence. Vectorized (Polars regex)."""
    out = texts.fill_null("")
    for pattern in (_LABEL_RE, _LINE_LABEL_RE, _LINE_MARKER_RE, _INLINE_MARKER_RE, _BOUNDARY_RE):
        out = out.str.replace_all(pattern, _BREAK)
    return out


@dataclass
class Tokens:
    """Words of normalized texts: ``hash[offsets[d]:offsets[d + 1]]`` are text d's words (boundaries
    dropped); ``seg_start``/``seg_end`` flag the words that open or close a segment."""

    hash: np.ndarray
    offsets: np.ndarray
    seg_start: np.ndarray
    seg_end: np.ndarray


def tokens(texts: pl.Series) -> Tokens:
    """Tokens of texts (normalized here with :func:`normalize`)."""
    hashes, offsets = word_hashes(normalize(texts))
    brk = hashes == _BREAK_HASH
    keep = np.flatnonzero(~brk)
    kept_before = np.zeros(hashes.size + 1, dtype=np.int64)
    np.cumsum(~brk, out=kept_before[1:])
    new_offsets = kept_before[offsets]
    seg_start = np.zeros(keep.size, dtype=bool)
    seg_end = np.zeros(keep.size, dtype=bool)
    if keep.size:
        gap = np.diff(keep) > 1  # a boundary was dropped between two kept words
        seg_start[1:] = gap
        seg_end[:-1] = gap
        nonempty = np.diff(new_offsets) > 0
        seg_start[new_offsets[:-1][nonempty]] = True
        seg_end[new_offsets[1:][nonempty] - 1] = True
    return Tokens(hashes[keep], new_offsets, seg_start, seg_end)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (a new array)."""
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def prefix_hashes(hashes: np.ndarray, first: np.ndarray, width: int) -> np.ndarray:
    """``out[i, j]``: the whole-unit hash of words ``first[i] .. first[i] + j`` of ``hashes``, for j < width
    (``mix(sum_k hashes[first + k] * M_k)``); columns that run past the end of the array are meaningless,
    callers mask them."""
    if first.size == 0 or hashes.size == 0 or width == 0:
        return np.zeros((first.size, width), dtype=np.uint64)
    idx = np.minimum(first[:, None] + np.arange(width, dtype=np.int64), hashes.size - 1)
    return _mix(np.cumsum(hashes[idx] * _UNIT_MULT[:width], axis=1, dtype=np.uint64))


@dataclass
class Units:
    """Units of a list of texts: ``hash[i]`` is unit i, of ``length[i]`` words starting at word ``start[i]``
    of text ``doc[i]``."""

    hash: np.ndarray
    doc: np.ndarray
    start: np.ndarray
    length: np.ndarray

    @staticmethod
    def concat(parts: list[Units]) -> Units:
        """The units of ``parts``, one after the other."""
        return Units(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("hash", "doc", "start", "length")))


def ngram_units(tok: Tokens, n: int) -> Units:
    """Every word n-gram of each text."""
    grams, gram_offsets, starts = ngram_hashes(tok.hash, tok.offsets, n, short_docs=False)
    doc = np.repeat(np.arange(tok.offsets.size - 1, dtype=np.int64), np.diff(gram_offsets))
    return Units(grams, doc, starts.astype(np.int64), np.full(grams.size, n, dtype=np.int64))


def whole_units(tok: Tokens, min_words: int, max_words: int, min_content: int = 0) -> Units:
    """Each text of ``min_words`` to ``max_words`` words, at least ``min_content`` of them not
    :data:`FUNCTION_WORDS`, hashed whole (the eval side's whole units)."""
    length = np.diff(tok.offsets)
    content = np.bincount(
        np.repeat(np.arange(length.size), length), weights=~np.isin(tok.hash, _FUNCTION_HASHES), minlength=length.size
    )
    sel = np.flatnonzero((length >= min_words) & (length <= max_words) & (content >= min_content))
    if sel.size == 0:
        return Units(*(np.zeros(0, dtype=t) for t in (np.uint64, np.int64, np.int64, np.int64)))
    mat = prefix_hashes(tok.hash, tok.offsets[sel], max_words)
    return Units(mat[np.arange(sel.size), length[sel] - 1], sel.astype(np.int64), np.zeros(sel.size, dtype=np.int64), length[sel].astype(np.int64))


def segment_run_units(tok: Tokens, min_words: int, max_words: int) -> Units:
    """Every run of words from a segment start to a segment end, of ``min_words`` to ``max_words`` words
    (the training side's candidates for whole units)."""
    first = np.flatnonzero(tok.seg_start)
    if first.size == 0 or max_words < min_words:
        return Units(*(np.zeros(0, dtype=t) for t in (np.uint64, np.int64, np.int64, np.int64)))
    doc = np.searchsorted(tok.offsets, first, side="right") - 1
    end = tok.offsets[doc + 1]
    mat = prefix_hashes(tok.hash, first, max_words)
    idx = first[:, None] + np.arange(max_words, dtype=np.int64)
    ok = (idx < end[:, None]) & tok.seg_end[np.minimum(idx, tok.hash.size - 1)]
    ok[:, : min_words - 1] = False
    r, k = np.nonzero(ok)
    return Units(mat[r, k], doc[r], (first[r] - tok.offsets[doc[r]]).astype(np.int64), (k + 1).astype(np.int64))


def _drop_template_edges(units: Units, pos: np.ndarray, n_words: int, max_items: int, share: float) -> Units:
    """The n-grams (``units``, ``doc`` = item, first word at ``pos`` of ``n_words`` words in all) of which at
    most ``share`` of the words lie inside template n-grams (n-grams of more than ``max_items`` items).

    An n-gram that straddles a template's edge ("... do something clearly morally wrong? Scenario 1 | He")
    repeats the template plus a word or two of the item: any text that uses the template and starts the
    same way has it, so it is not evidence of the item."""
    if units.hash.size == 0:
        return units
    n = int(units.length[0])
    # items per hash (distinct (hash, item) pairs)
    order = np.lexsort((units.doc, units.hash))
    h, it = units.hash[order], units.doc[order]
    new_pair = np.ones(h.size, dtype=bool)
    new_pair[1:] = (h[1:] != h[:-1]) | (it[1:] != it[:-1])
    new_hash = np.ones(h.size, dtype=bool)
    new_hash[1:] = h[1:] != h[:-1]
    group = np.cumsum(new_hash) - 1
    items_per_hash = np.bincount(group, weights=new_pair).astype(np.int64)
    template = np.empty(h.size, dtype=bool)
    template[order] = items_per_hash[group] > max_items
    if not template.any():
        return units
    # words covered by a template n-gram (a difference array over all words)
    cover = np.zeros(n_words + 1, dtype=np.int64)
    np.add.at(cover, pos[template], 1)
    np.add.at(cover, pos[template] + n, -1)
    covered = np.cumsum(cover)[:-1] > 0
    covered_before = np.zeros(n_words + 1, dtype=np.int64)
    np.cumsum(covered, out=covered_before[1:])
    inside = covered_before[pos + n] - covered_before[pos]
    keep = inside <= share * n
    return Units(units.hash[keep], units.doc[keep], units.start[keep], units.length[keep])


def display_words(texts: pl.Series) -> list[list[str]]:
    """The words of each text as the units count them (normalized, lowercased, boundaries dropped), for
    showing matched spans (a few texts: the hits)."""
    return [[w for w in ws if w != _BREAK_WORD] for ws in words(normalize(texts)).to_list()]


class EvalIndex:
    """Units of all eval items: sorted hashes, the first item holding each, and the unit's length."""

    def __init__(self, files: list[str], item_file: np.ndarray, item_line: np.ndarray, units: Units, max_items: int,
                 count_only: Units | None = None):
        """``units`` are the evidence; ``count_only`` units (the segment runs of the items' own texts) only count
        towards how many items contain a unit: a whole question that is a sentence of many other items
        ("Which of the following is true?") is a template even where it is the whole stem of only a few."""
        self.files = files
        self.item_file = item_file
        self.item_line = item_line
        extra = count_only if count_only is not None else Units(*(np.zeros(0, dtype=t) for t in (np.uint64, np.int64, np.int64, np.int64)))
        all_h = np.concatenate([units.hash, extra.hash])
        all_it = np.concatenate([units.doc, extra.doc])
        all_ln = np.concatenate([units.length, extra.length])
        counting = np.concatenate([np.zeros(units.hash.size, dtype=bool), np.ones(extra.hash.size, dtype=bool)])
        # one row per distinct (hash, item), an evidence row where the item has one; the first item per hash
        # holding it as evidence is the one named in details
        order = np.lexsort((counting, all_it, all_h))
        h, it, ln, cnt = all_h[order], all_it[order], all_ln[order], counting[order]
        distinct = np.ones(h.size, dtype=bool)
        distinct[1:] = (h[1:] != h[:-1]) | (it[1:] != it[:-1])
        h, it, ln, cnt = h[distinct], it[distinct], ln[distinct], cnt[distinct]
        first = np.ones(h.size, dtype=bool)
        first[1:] = h[1:] != h[:-1]
        starts = np.flatnonzero(first)
        n_items = np.diff(np.append(starts, h.size))
        row_items = np.repeat(n_items, n_items)
        ev = ~cnt
        h, it, ln, row_items = h[ev], it[ev], ln[ev], row_items[ev]
        first = np.ones(h.size, dtype=bool)
        first[1:] = h[1:] != h[:-1]
        starts = np.flatnonzero(first)
        keep = row_items[starts] <= max_items
        self.templates = int((~keep).sum())
        self.hash = h[starts][keep]
        self.item = it[starts][keep].astype(np.int64)
        self.length = ln[starts][keep]
        # prefilter: one bit per bucket of the low hash bits, ~1/16 of buckets set; most training
        # units are rejected by one gather instead of a binary search
        bits = int(np.clip(np.ceil(np.log2(max(self.hash.size, 1) * 16)), 16, 30))
        self._mask = np.uint64((1 << bits) - 1)
        self._table = np.zeros(1 << bits, dtype=bool)
        self._table[(self.hash & self._mask).astype(np.int64)] = True

    def __len__(self) -> int:
        return int(self.hash.size)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions into ``hashes`` found in the index, their rows in the index)."""
        cand = np.flatnonzero(self._table[(hashes & self._mask).astype(np.int64)])
        if cand.size == 0 or self.hash.size == 0:
            return cand[:0], cand[:0]
        h = hashes[cand]
        row = np.minimum(np.searchsorted(self.hash, h), self.hash.size - 1)
        ok = self.hash[row] == h
        return cand[ok], row[ok]

    def rows(self, grams: np.ndarray) -> np.ndarray:
        """Index rows of hashes known to be in the index."""
        return np.searchsorted(self.hash, grams)

    def ref(self, item: int) -> str:
        """``file:line`` of an item."""
        return f"{self.files[self.item_file[item]]}:{self.item_line[item]}"


# Keys that name an eval item's stem (its question), best first; see _item_texts.
STEM_KEYS = ("question", "query", "stem", "prompt", "problem", "instruction", "input", "goal", "ctx", "context", "sentence", "passage")
_STEM_RANK = {k: i for i, k in enumerate(STEM_KEYS)}
# A file without a stem key: its stem is the first field whose values differ in at least this share of the
# items (a question column; a category, a type or an answer-letter column repeats)
STEM_DISTINCT = 0.9
_WORD = re.compile(r"\w+")
ID_KEYS = ("id", "idx", "uid", "label", "answerkey", "answer_key", "gold_label")


def _item_texts(rec: Any) -> tuple[list[str], list[str], int]:
    """Every string inside a parsed eval record, depth first (keys, numbers and booleans are not text), the
    field path of each (``question.stem``, ``choices[2]``, ``c0``), and the position of the string under
    the best-ranked key of :data:`STEM_KEYS` (-1 if none)."""
    out: list[str] = []
    slots: list[str] = []
    best = (len(STEM_KEYS), -1)

    def walk(value: Any, key: str | None, path: str) -> None:
        nonlocal best
        if isinstance(value, str):
            # ids, choice labels and answer keys ("8-343", "B") are not text of the item
            if len(value.strip()) > 1 and not (key and (key.lower() in ID_KEYS or key.lower().endswith("_id"))):
                rank = _STEM_RANK.get(key.lower(), len(STEM_KEYS)) if key else len(STEM_KEYS)
                if rank < best[0]:
                    best = (rank, len(out))
                out.append(value if value.isascii() else unicodedata.normalize("NFC", value))
                slots.append(path)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k), f"{path}.{k}" if path else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, key if isinstance(v, str) else None, f"{path}[{i}]")

    walk(rec, None, "")
    return out, slots, best[1]


def _file_stem_slot(items: list[tuple[list[str], list[str], int]]) -> str | None:
    """For a file whose items have no stem key: the first field path (in reading order) whose values are
    distinct in at least :data:`STEM_DISTINCT` of the items holding it and average more than one word."""
    order: dict[str, None] = {}
    values: dict[str, list[str]] = {}
    for texts, slots, _ in items:
        for t, s in zip(texts, slots):
            order.setdefault(s)
            values.setdefault(s, []).append(t)
    for slot in order:
        vals = values[slot]
        distinct = len(set(vals)) / len(vals)
        mean_words = sum(len(_WORD.findall(v)) for v in vals) / len(vals)
        if distinct >= STEM_DISTINCT and mean_words > 1:
            return slot
    return None


@dataclass
class ItemTexts:
    """The texts one eval item contributes to the index (see :func:`_unit_texts`)."""

    every: str  # the stem followed by all the item's other strings: n-grams
    stem: str | None  # the stem alone: a whole unit when short
    pairs: list[str]  # the stem followed by each other string: n-grams, only for a stem that cannot count alone
    wholes: list[str]  # the stem followed by each other string, and by all of them: whole units when short


def _unit_texts(texts: list[str], stem: int) -> ItemTexts:
    """The texts of one eval item whose units go into the index. An item without a stem gives its strings
    joined, for n-grams only."""
    if stem < 0:
        return ItemTexts("\n".join(texts), None, [], [])
    head = texts[stem]
    others = texts[:stem] + texts[stem + 1 :]
    every = "\n".join([head, *others])
    pairs = [f"{head}\n{o}" for o in others] if len(others) > 1 else []
    return ItemTexts(every, head, pairs, [every, *pairs] if others else [])


@register
class Decontaminate(GlobalStage):
    """Rejects training records that share words with an eval set (reason ``contaminated``): a word n-gram
    of an eval item, or an item's whole short question as a segment of the record, after field labels and
    choice markers are normalized away on both sides.

    See the module docstring for the rules and why they are so.
    """

    name = "decontaminate"
    reasons = ("contaminated",)

    class Params(StageParams):
        """Parameters of ``decontaminate``."""
        eval_sets: list[str | EvalSet] = Field(
            ..., min_length=1,
            description="eval files (JSONL/JSON/CSV/TSV/Parquet; file, directory or glob, relative to the config's "
            "folder), each a path or {path, name, csv_header}; CSV files are read with the first row as data "
            "unless csv_header: true",
        )
        ngram: int = Field(13, ge=2, le=64, description="n-gram size in words")
        min_words: int = Field(
            3, ge=1,
            description="whole units (an item's question, alone or with its choices, shorter than ngram words) "
            "need at least this many words; a training text must have them from a segment start to a segment end",
        )
        min_content_words: int = Field(
            2, ge=0, description="whole units need at least this many words that are not function words "
            "(FUNCTION_WORDS): 'who are you' or 'all of the above' say nothing about which item they copy",
        )
        fields: Literal["all", "prompt", "response"] = Field(
            "all", description="training text checked: all turns, prompt (system and user) or response (assistant)"
        )
        boilerplate_max_records: int = Field(50, ge=1, description="a unit in more training records than max(this, boilerplate_fraction * N) is boilerplate")
        boilerplate_fraction: float = Field(0.001, ge=0, le=1, description="see boilerplate_max_records")
        max_eval_items: int = Field(5, ge=1, description="a unit in more eval items than this is an eval template, not evidence")
        min_matches: int = Field(1, ge=1, description="distinct units needed to call a record contaminated")
        template_share: float = Field(
            0.7, ge=0, le=1,
            description="an n-gram with more than this share of its words inside eval templates (n-grams of more than "
            "max_eval_items items) is not evidence: it straddles the template's edge",
        )

        @model_validator(mode="after")
        def _min_words_below_ngram(self) -> Decontaminate.Params:
            if self.min_words > self.ngram:
                raise ValueError(f"min_words ({self.min_words}) must not exceed ngram ({self.ngram})")
            return self

    def __init__(self, params: StageParams | None = None, context: StageContext | None = None):
        super().__init__(params, context)
        from curate.config import ConfigError
        from curate.readers import InputError, expand_paths

        base = self.context.config_dir
        self._sets: list[tuple[EvalSet, list[Path]]] = []
        problems = []
        for i, spec in enumerate(self.params.eval_sets):
            spec = spec if isinstance(spec, EvalSet) else EvalSet(path=spec)
            try:
                self._sets.append((spec, expand_paths(spec.path, base)))
            except InputError as exc:
                problems.append(f"{self.name}.eval_sets[{i}]: {exc}")
        if problems:
            raise ConfigError("; ".join(problems))
        self._index: EvalIndex | None = None

    def input_files(self) -> list[Path]:
        """Every eval file this stage reads (for the run's fingerprint: editing one must re-run)."""
        return [p for _, paths in self._sets for p in paths]

    # -- eval side -------------------------------------------------------------------------------------------
    @property
    def index(self) -> EvalIndex:
        """The eval sets' units (read on first use)."""
        if self._index is None:
            self._index = self._load()
        return self._index

    def _display(self, spec: EvalSet, path: Path, single: bool) -> str:
        if spec.name:
            return spec.name if single else f"{spec.name}/{path.name}"
        try:
            return str(path.resolve().relative_to(self.context.config_dir.resolve()))
        except ValueError:
            return spec.path if single and not any(c in spec.path for c in "*?[") else str(path)

    def _load(self) -> EvalIndex:
        from curate.config import ConfigError
        from curate.readers import file_format, read_file

        files: list[str] = []
        item_file: list[int] = []
        item_line: list[int] = []
        parts: list[ItemTexts] = []
        seen: set[Path] = set()
        for spec, paths in self._sets:
            for path in paths:
                if path.resolve() in seen:  # named twice (a glob and a path): its items once
                    continue
                seen.add(path.resolve())
                fi = len(files)
                files.append(self._display(spec, path, len(paths) == 1))
                header = spec.csv_header
                fmt = file_format(path)
                if fmt in ("csv", "tsv") and header is False:
                    header = _column_names(path, "\t" if fmt == "tsv" else ",")
                items, lines = [], []
                for batch in read_file(path, csv_header=header):
                    for line, rec in zip(batch.lines, batch.records):
                        parsed = _item_texts(rec)
                        if parsed[0]:
                            items.append(parsed)
                            lines.append(line)
                if not items:
                    raise ConfigError(f"{self.name}.eval_sets: {files[fi]} has no readable eval item")
                slot = _file_stem_slot(items) if any(stem < 0 for _, _, stem in items) else None
                for (texts, slots, stem), line in zip(items, lines):
                    if stem < 0 and slot is not None and slot in slots:
                        stem = slots.index(slot)
                    item_file.append(fi)
                    item_line.append(line)
                    parts.append(_unit_texts(texts, stem))
        return self._build_index(parts, files, np.asarray(item_file, dtype=np.int32), np.asarray(item_line, dtype=np.int64))

    def _build_index(self, parts: list[ItemTexts], files: list[str], item_file: np.ndarray, item_line: np.ndarray) -> EvalIndex:
        """The index of the items' units, in two passes: a question followed by one of its answers is a unit
        only for items whose question cannot count alone (shorter than ``min_words``, too few content words,
        or only template units), so that a paraphrased question with one of the eval set's answers after it
        is not a hit while an item like "Which of the following is true?" + its answer still is."""
        p = self.params
        n_items = len(parts)
        items = np.arange(n_items, dtype=np.int64)
        every_tok = tokens(pl.Series([x.every for x in parts], dtype=pl.Utf8))
        has_stem = np.array([x.stem is not None for x in parts], dtype=bool)
        stem_tok = tokens(pl.Series([x.stem for x in parts if x.stem is not None], dtype=pl.Utf8))
        stem_item = items[has_stem]
        stem_len = np.zeros(n_items, dtype=np.int64)
        stem_len[has_stem] = np.diff(stem_tok.offsets)
        whole_texts = [w for x in parts for w in x.wholes]
        whole_item = np.repeat(items, [len(x.wholes) for x in parts])

        grams = ngram_units(every_tok, p.ngram)  # doc = item: one `every` text per item
        gram_pos = every_tok.offsets[grams.doc] + grams.start
        stem_own = grams.start + p.ngram <= stem_len[grams.doc]  # n-grams of the question alone
        stem_whole = whole_units(stem_tok, p.min_words, p.ngram - 1, p.min_content_words)
        stem_whole.doc = stem_item[stem_whole.doc]
        others = whole_units(tokens(pl.Series(whole_texts, dtype=pl.Utf8)), p.min_words, p.ngram - 1, p.min_content_words)
        others.doc = whole_item[others.doc]
        # the items' own sentences, matched the way training text is: they count which items contain a whole unit
        runs = segment_run_units(every_tok, p.min_words, p.ngram - 1)
        n_words = every_tok.hash.size

        def build(extra: Units | None = None, extra_pos: np.ndarray | None = None, extra_words: int = 0) -> tuple[EvalIndex, Units]:
            # extra n-grams (the pairs) live in a word space of their own, after the `every` texts' words
            g, pos = grams, gram_pos
            if extra is not None:
                g, pos = Units.concat([grams, extra]), np.concatenate([gram_pos, extra_pos + n_words])
            kept = _drop_template_edges(g, pos, n_words + extra_words, p.max_eval_items, p.template_share)
            units = Units.concat([kept, stem_whole, others])
            return EvalIndex(files, item_file, item_line, units, p.max_eval_items, count_only=runs), kept

        first, kept = build()
        standalone = np.zeros(n_items, dtype=bool)
        own = np.isin(kept.hash, grams.hash[stem_own])
        standalone[kept.doc[own]] = True
        found, _ = first.lookup(stem_whole.hash)
        standalone[stem_whole.doc[found]] = True
        need = [i for i in np.flatnonzero(~standalone & has_stem).tolist() if parts[i].pairs]
        if not need:
            return first
        pair_tok = tokens(pl.Series([t for i in need for t in parts[i].pairs], dtype=pl.Utf8))
        pair_item = np.repeat(np.asarray(need, dtype=np.int64), [len(parts[i].pairs) for i in need])
        pairs = ngram_units(pair_tok, p.ngram)
        pair_pos = pair_tok.offsets[pairs.doc] + pairs.start
        pairs.doc = pair_item[pairs.doc]
        return build(pairs, pair_pos, pair_tok.hash.size)[0]

    # -- training side ---------------------------------------------------------------------------------------
    def record_texts(self, batch: pl.DataFrame) -> pl.Series:
        """The checked text of each record: its turns of ``fields`` joined by line breaks, and for ``all`` and
        ``response`` a preference pair's rejected completion too."""
        roles = {"all": None, "prompt": ["system", "user", "tool"], "response": ["assistant"]}[self.params.fields]
        turn = pl.element()
        if roles is not None:
            turn = turn.filter(pl.element().struct.field("role").is_in(roles))
        content = pl.col("messages").list.eval(turn.struct.field("content").fill_null("")).list.join("\n").fill_null("")
        if roles != ["system", "user", "tool"] and "rejected_text" in batch.columns and batch["rejected_text"].null_count() < batch.height:
            # a preference pair's rejected completion is training text too (a DPO step reads it)
            content = pl.concat_str([content, pl.col("rejected_text")], separator="\n", ignore_nulls=True)
        return batch.select(text=content)["text"]

    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The batch's units that match an eval item (uid, id, gram, start, span), plus one tally row
        (uid null, batch_records = the batch's height)."""
        p, index = self.params, self.index
        texts = self.record_texts(batch)
        tok = tokens(texts)
        grams, gram_offsets, gram_start = ngram_hashes(tok.hash, tok.offsets, p.ngram, short_docs=False)
        runs = segment_run_units(tok, p.min_words, p.ngram - 1)
        g_pos, _ = index.lookup(grams)
        r_pos, _ = index.lookup(runs.hash)
        tally = pl.DataFrame({"batch_records": [batch.height]}, schema={"batch_records": pl.Int64})
        if g_pos.size + r_pos.size == 0:
            return pl.concat([pl.DataFrame(schema=PREPARED_SCHEMA), tally], how="diagonal_relaxed").select(list(PREPARED_SCHEMA)).cast(PREPARED_SCHEMA)
        doc = np.concatenate([np.searchsorted(gram_offsets, g_pos, side="right") - 1, runs.doc[r_pos]])
        start = np.concatenate([gram_start[g_pos], runs.start[r_pos]])
        length = np.concatenate([np.full(g_pos.size, p.ngram, dtype=np.int64), runs.length[r_pos]])
        gram = np.concatenate([grams[g_pos], runs.hash[r_pos]])
        # the matched words, rebuilt from the few texts with a hit
        hit_docs, inverse = np.unique(doc, return_inverse=True)
        hit_words = display_words(texts.gather(hit_docs))
        spans = [" ".join(hit_words[k][s : s + ln]) for k, s, ln in zip(inverse.tolist(), start.tolist(), length.tolist())]
        hits = batch.select("uid", "id")[doc].with_columns(
            gram=pl.Series(gram, dtype=pl.UInt64),
            start=pl.Series(start, dtype=pl.Int32),
            span=pl.Series(spans, dtype=pl.Utf8),
            batch_records=pl.lit(None, dtype=pl.Int64),
        )
        return pl.concat([hits.select(list(PREPARED_SCHEMA)).cast(PREPARED_SCHEMA), tally], how="diagonal_relaxed").select(list(PREPARED_SCHEMA))

    def boilerplate_threshold(self, n_records: int) -> float:
        """A unit in more training records than this is boilerplate."""
        return max(self.params.boilerplate_max_records, self.params.boilerplate_fraction * n_records)

    def decide(self, prepared: pl.DataFrame) -> pl.DataFrame:
        """Rejects (uid, reason ``contaminated``, detail naming the eval item and the matched span)."""
        p, index = self.params, self.index
        n_records = int(prepared["batch_records"].sum() or 0)
        hits = prepared.filter(pl.col("uid").is_not_null()).unique(["uid", "gram", "start"])
        if hits.height == 0:
            return empty_rejects().select("uid", "reason", "detail", "duplicate_of")
        limit = self.boilerplate_threshold(n_records)
        freq = hits.group_by("gram").agg(n_records=pl.col("uid").n_unique())
        hits = hits.join(freq.filter(pl.col("n_records") <= limit).select("gram"), on="gram", how="semi")
        rows = index.rows(hits["gram"].to_numpy())
        hits = hits.with_columns(
            item=pl.Series(index.item[rows], dtype=pl.Int64),
            length=pl.Series(index.length[rows], dtype=pl.Int64),
        )
        per_item = hits.group_by("uid", "item").agg(units=pl.col("gram").n_unique())
        per_record = per_item.group_by("uid").agg(
            total=pl.col("units").sum(),
            n_items=pl.len(),
            best=pl.col("item").sort_by([pl.col("units"), pl.col("item")], descending=[True, False]).first(),
            best_units=pl.col("units").max(),
        ).filter(pl.col("total") >= p.min_matches)
        if per_record.height == 0:
            return empty_rejects().select("uid", "reason", "detail", "duplicate_of")
        per_record = per_record.sort("uid")
        best = hits.join(per_record.select("uid", item="best"), on=["uid", "item"]).sort("uid", "start", "length")
        # one pass over plain lists: the rows of each record are contiguous after the sort
        cols = [best[c].to_list() for c in ("start", "length", "span")]
        bounds = np.flatnonzero(np.diff(best["uid"].to_numpy())) + 1
        starts, ends = np.concatenate([[0], bounds]).tolist(), np.concatenate([bounds, [best.height]]).tolist()
        detail = []
        for a, b, item, units, k in zip(starts, ends, per_record["best"].to_list(), per_record["best_units"].to_list(), per_record["n_items"].to_list()):
            text = _merged_span(cols[0][a:b], cols[1][a:b], cols[2][a:b])
            lengths = cols[1][a:b]
            kind = f"{p.ngram}-gram overlap" if p.ngram in lengths else f"whole-question overlap ({max(lengths)} words)"
            more = f"; {k - 1} more eval item{'s' if k > 2 else ''} matched" if k > 1 else ""
            detail.append(f'{kind} with {index.ref(item)} ({units} n-gram{"s" if units != 1 else ""}): "{text}"{more}')
        return per_record.select(
            "uid",
            reason=pl.lit("contaminated"),
            detail=pl.Series(detail, dtype=pl.Utf8),
            duplicate_of=pl.lit(None, dtype=pl.Utf8),
        )


def _merged_span(starts: list[int], lengths: list[int], spans: list[str]) -> str:
    """The matched words of a record, overlapping units merged, gaps shown as "…", truncated to
    :data:`SPAN_CHARS`. Rows are sorted by start."""
    out: list[str] = []
    end = -1
    for start, length, span in zip(starts, lengths, spans):
        w = span.split(" ")
        if start >= end:
            if out:
                out.append("…")
            out.extend(w)
        elif start + length > end:
            out.extend(w[end - start :])
        end = max(end, start + length)
    text = " ".join(out)
    if len(text) > SPAN_CHARS:
        text = text[:SPAN_CHARS].rsplit(" ", 1)[0] + " …"
    return text


def _column_names(path: Path, delimiter: str) -> list[str]:
    """Names for a CSV read with its first row as data: c0, c1, ... as many as the first row has fields."""
    import csv
    import io

    from curate.readers import _open_binary

    with _open_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        row = next(csv.reader(text, delimiter=delimiter), [])
    return [f"c{i}" for i in range(len(row))]


__all__ = ["Decontaminate", "EvalIndex", "EvalSet", "PREPARED_SCHEMA", "Tokens", "Units", "normalize", "tokens"]
