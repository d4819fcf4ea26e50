"""Decontamination: reject training records that contain text of an evaluation set.

The evidence is word n-gram overlap (13-grams by default), with the tokenization of
:mod:`curate.stages.ngrams` on both sides: lowercased ``\\w+`` runs, so case, punctuation and whitespace
do not matter ("Question: What causes sound?" and "question what causes SOUND" are the same words).

Units of evidence. Every text (a training turn, an eval item's field) gives its word ``ngram``-grams, each
text separately (an n-gram never spans two turns or two fields). On the eval side a short item adds one
more unit:

- Short-item rule. When an item's stem (its question, see below) has fewer than ``ngram`` words, each of
  its lines of at least ``min_words`` words is hashed whole, as one unit, and it matches a training text
  only where that text has the same words *as a whole line* (a turn of its own, or one line of a turn).
  A quarter of ARC-Easy is shorter than a 13-gram ("Question: What causes sound?", 4 words counting the
  label), so without this they could never be found. GPT-3 matched short items anywhere in the training
  text, which needs every n-gram size on the training side and brings back the spurious collisions that
  made it stop at N = 8; a whole line is specific enough at 4 words and costs one hash per training line.
  Only the stem gets this unit: a short choice or answer ("A penny saved is a penny earned.", "1, 2, 3,
  4.") inside a training text is not a copy of the item. (Labels are words: a stem stored as "Question:
  ..." matches a training line that keeps the label; longer stems match through their n-grams anyway.)

Eval side. ``eval_sets`` names files in any format curate reads (JSONL, JSON, CSV/TSV, Parquet; paths,
directories or globs, relative to the config's folder). An eval item is one record of such a file, and its
text is every string value in it, nested lists and objects flattened (question, choices, answer...; keys,
numbers and booleans are not text): MMLU's headerless CSV, ARC's ``{query, choices, gold}``, GSM8K's
``{question, answer}`` and TruthfulQA's CSV all work without a mapping. The stem is the string under the
best-ranked of :data:`STEM_KEYS` (question, query, stem, prompt, ...), failing that the first string of at
least ``min_words`` words (the first column of MMLU). CSV files are read with the first row as data unless
the eval set says ``csv_header: true`` (a header row read as data is one harmless extra item: column names
are too short to be evidence). A unit found in more than ``max_eval_items`` eval items is a template of the
eval set (MMLU's moral_scenarios repeats one 20-word question stem in all 895 items), not an item's
content, and is left out of the index. Eval sets are read once, on the first batch.

The index is three sorted NumPy arrays (unit hash, first eval item, unit length), looked up with a
bitmap prefilter then ``np.searchsorted``: no Python object per n-gram.

Training side. ``prepare(batch)`` hashes the units of the chosen turns (``fields``: all, prompt or
response), vectorized, and keeps only the units found in the index: ``uid``, ``id``, the unit's hash,
its turn and first word, and the matched words (rebuilt for the hits only, which are rare). It also emits
one tally row per batch (``uid`` null, ``batch_records``) so that ``decide`` knows N, the number of
records that reached the stage.

Boilerplate. ``decide(prepared)`` counts, per matched unit, the distinct training records that contain it.
A unit in more than ``max(boilerplate_max_records, boilerplate_fraction * N)`` records is boilerplate
(a system prompt, a license header, an instruction template that an eval file happens to share), not
evidence. Frequency is measured on the training side only, and only among the units that match an eval
item: those are the only units ``prepare`` keeps, so memory grows with the hits, never with the number of
distinct training n-grams (a billion for a million records). Defaults: 50 records or 0.1% of the
records, whichever is larger, so an eval question copied a few dozen times (TruthfulQA's fine-tuning file
has each question about 27 times) is still contamination, while a sentence in thousands of records is not.

A record with at least ``min_matches`` non-boilerplate units is rejected, reason ``contaminated``; the
detail names the eval item with the most matched units (``file:line``, the file relative to the config's
folder when it is inside it, or the eval set's ``name``), the number of units, and the matched span
(the record's words from its first to its last matched unit of that item, truncated)::

    13-gram overlap with arc/arc_easy_shared.jsonl:2 (6 n-grams): "question which piece of safety equipment ..."
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

# A word that stands for a line break while tokenizing, so lines are found in the same pass as words;
# it is removed before hashing. (Text that contains it literally only gets an extra line break.)
_BREAK_WORD = "zqxjcuratelinebreakzqxj"
_BREAK_HASH = word_hashes(pl.Series([_BREAK_WORD]))[0][0]

SPAN_CHARS = 160  # characters of matched text shown in a detail

PREPARED_SCHEMA: dict[str, pl.DataType] = {
    "uid": pl.Int64,
    "id": pl.Utf8,
    "gram": pl.UInt64,
    "turn": pl.Int32,
    "start": pl.Int32,
    "span": pl.Utf8,
    "batch_records": pl.Int64,
}


class EvalSet(StageParams):
    """One eval set: a file, directory or glob; ``name`` replaces the path in details."""

    path: str
    name: str | None = None
    csv_header: bool | list[str] = False


@dataclass
class Units:
    """Units of a list of texts: ``hash[i]`` is unit i, of ``length[i]`` words starting at word ``start[i]``
    of text ``doc[i]`` (``doc`` is filled only when asked for)."""

    hash: np.ndarray
    doc: np.ndarray
    start: np.ndarray
    length: np.ndarray


def _tokens(texts: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(word hashes, word offsets per text, line-start flag per word), line breaks dropped."""
    marked = texts.fill_null("").str.replace_all("\n", f" {_BREAK_WORD} ", literal=True)
    hashes, offsets = word_hashes(marked)
    brk = hashes == _BREAK_HASH
    if not brk.any():
        line_start = np.zeros(hashes.size, dtype=bool)
        line_start[offsets[:-1][np.diff(offsets) > 0]] = True
        return hashes, offsets, line_start
    keep = np.flatnonzero(~brk)
    kept_before = np.zeros(hashes.size + 1, dtype=np.int64)
    np.cumsum(~brk, out=kept_before[1:])
    new_offsets = kept_before[offsets]
    # a kept word starts a line when a break was dropped just before it, or when it starts its text
    line_start = np.ones(keep.size, dtype=bool)
    if keep.size:
        line_start[1:] = np.diff(keep) > 1
    starts = new_offsets[:-1][np.diff(new_offsets) > 0]
    line_start[starts] = True
    return hashes[keep], new_offsets, line_start


def text_units(texts: pl.Series, n: int, min_words: int, with_doc: bool = True) -> tuple[Units, np.ndarray, np.ndarray]:
    """The n-grams of each text plus each line of ``min_words`` to ``n - 1`` words as one unit.

    Units come n-grams first (text by text, ``gram_offsets`` delimit them), then short lines (``line_doc``
    is the text of each). Returns ``(units, gram_offsets, line_doc)``; ``units.doc`` is filled only with
    ``with_doc`` (the training side needs it for its few hits only).
    """
    hashes, offsets, line_start = _tokens(texts)
    grams, gram_offsets, starts = ngram_hashes(hashes, offsets, n, short_docs=False)
    n_grams = grams.size
    # short lines: the words of each line of min_words..n-1 words, hashed whole (short_docs)
    line_first = np.flatnonzero(line_start)
    line_len = np.diff(np.append(line_first, hashes.size))
    short = (line_len >= min_words) & (line_len < n)
    s_first, s_len = line_first[short], line_len[short]
    if s_first.size:
        s_offsets = np.zeros(s_first.size + 1, dtype=np.int64)
        np.cumsum(s_len, out=s_offsets[1:])
        pos = np.repeat(s_first - s_offsets[:-1], s_len) + np.arange(s_offsets[-1], dtype=np.int64)
        s_hash, _, _ = ngram_hashes(hashes[pos], s_offsets, n, short_docs=True)
        s_doc = np.searchsorted(offsets, s_first, side="right") - 1
        s_start = s_first - offsets[s_doc]
    else:
        s_hash = np.zeros(0, dtype=np.uint64)
        s_doc = s_start = np.zeros(0, dtype=np.int64)
    all_hash = np.concatenate([grams, s_hash])
    start = np.concatenate([starts, s_start])
    length = np.concatenate([np.full(n_grams, n, dtype=np.int64), s_len.astype(np.int64)])
    doc = np.zeros(0, dtype=np.int64)
    if with_doc:
        g_doc = np.repeat(np.arange(offsets.size - 1, dtype=np.int64), np.diff(gram_offsets))
        doc = np.concatenate([g_doc, s_doc])
    return Units(all_hash, doc, start, length), gram_offsets, s_doc


class EvalIndex:
    """Units of all eval items: sorted hashes, the first item holding each, and the unit's length."""

    def __init__(self, files: list[str], item_file: np.ndarray, item_line: np.ndarray, units: Units, max_items: int):
        self.files = files
        self.item_file = item_file
        self.item_line = item_line
        # one row per distinct (hash, item); the first item per hash is the one named in details
        order = np.lexsort((units.doc, units.hash))
        h, it, ln = units.hash[order], units.doc[order], units.length[order]
        distinct = np.ones(h.size, dtype=bool)
        distinct[1:] = (h[1:] != h[:-1]) | (it[1:] != it[:-1])
        h, it, ln = h[distinct], it[distinct], ln[distinct]
        first = np.ones(h.size, dtype=bool)
        first[1:] = h[1:] != h[:-1]
        starts = np.flatnonzero(first)
        n_items = np.diff(np.append(starts, h.size))
        keep = n_items <= max_items
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
        return f"{self.files[self.item_file[item]]}:{self.item_line[item]}"


# Keys that name an eval item's stem (its question), best first; see _item_texts.
STEM_KEYS = ("question", "query", "stem", "prompt", "problem", "instruction", "input", "goal", "ctx", "context", "sentence", "passage")
_STEM_RANK = {k: i for i, k in enumerate(STEM_KEYS)}
_WORD = re.compile(r"\w+")


def _item_texts(rec: Any, min_words: int) -> tuple[list[str], int]:
    """Every string inside a parsed eval record, depth first (keys, numbers and booleans are not text),
    and the position of its stem among them (-1 if none).

    The stem is the string under the best-ranked key of :data:`STEM_KEYS`; failing one, the first string
    of at least ``min_words`` words (the question column of MMLU's headerless CSV).
    """
    out: list[str] = []
    best = (len(STEM_KEYS), -1)

    def walk(value: Any, key: str | None) -> None:
        nonlocal best
        if isinstance(value, str):
            if value.strip():
                rank = _STEM_RANK.get(key.lower(), len(STEM_KEYS)) if key else len(STEM_KEYS)
                if rank < best[0]:
                    best = (rank, len(out))
                out.append(value if value.isascii() else unicodedata.normalize("NFC", value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, key if isinstance(v, str) else None)

    walk(rec, None)
    stem = best[1]
    if stem < 0:
        stem = next((i for i, t in enumerate(out) if len(_WORD.findall(t)) >= min_words), -1)
    return out, stem


@register
class Decontaminate(GlobalStage):
    """Rejects training records that share word n-grams with an eval set (reason ``contaminated``).

    Params:
        eval_sets: eval files (JSONL/JSON/CSV/TSV/Parquet; file, directory or glob, relative to the
            config's folder), each a path or ``{path, name, csv_header}``. A missing one is an error before
            any work starts. CSV files are read with the first row as data unless ``csv_header: true``.
        ngram: n-gram size in words (13).
        min_words: short-item rule: an eval item's stem of fewer than ``ngram`` words is evidence on its
            own when it has at least ``min_words`` words and a training text has it as a whole line (4).
        fields: the training text checked: ``all`` turns (default), ``prompt`` (system and user) or
            ``response`` (assistant).
        boilerplate_max_records, boilerplate_fraction: a unit in more than
            ``max(boilerplate_max_records, boilerplate_fraction * N)`` of the N training records reaching
            the stage is boilerplate, not evidence (50 and 0.001).
        max_eval_items: a unit found in more eval items than this is an eval template, not evidence (10).
        min_matches: distinct units needed to call a record contaminated (1).

    See the module docstring for the rules and why they are so.
    """

    name = "decontaminate"
    reasons = ("contaminated",)

    class Params(StageParams):
        eval_sets: list[str | EvalSet] = Field(min_length=1)
        ngram: int = Field(13, ge=2, le=64)
        min_words: int = Field(4, ge=1)
        fields: Literal["all", "prompt", "response"] = "all"
        boilerplate_max_records: int = Field(50, ge=1)
        boilerplate_fraction: float = Field(0.001, ge=0, le=1)
        max_eval_items: int = Field(10, ge=1)
        min_matches: int = Field(1, ge=1)

        @model_validator(mode="after")
        def _min_words_below_ngram(self) -> "Decontaminate.Params":
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
        texts: list[str] = []
        text_item: list[int] = []
        text_stem: list[bool] = []
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
                n_items = 0
                for batch in read_file(path, csv_header=header):
                    for line, rec in zip(batch.lines, batch.records):
                        parts, stem = _item_texts(rec, self.params.min_words)
                        if not parts:
                            continue
                        item = len(item_line)
                        item_file.append(fi)
                        item_line.append(line)
                        texts.extend(parts)
                        text_item.extend([item] * len(parts))
                        text_stem.extend(i == stem for i in range(len(parts)))
                        n_items += 1
                if n_items == 0:
                    raise ConfigError(f"{self.name}.eval_sets: {files[fi]} has no readable eval item")
        p = self.params
        series = pl.Series(texts, dtype=pl.Utf8)
        units, _, _ = text_units(series, p.ngram, p.min_words)
        # Short lines count only in a short stem (the item's question, fewer than `ngram` words): a short
        # choice or answer ("A penny saved is a penny earned.") or a short line of a long question ("[1, 2,
        # 3, 4]" in a code listing) found in a training text is not a copy of the item.
        short_stem = np.asarray(text_stem, dtype=bool) & (words(series).list.len().to_numpy() < p.ngram)
        keep = (units.length == p.ngram) | short_stem[units.doc]
        units = Units(units.hash[keep], np.asarray(text_item, dtype=np.int64)[units.doc[keep]], units.start[keep], units.length[keep])
        return EvalIndex(files, np.asarray(item_file, dtype=np.int32), np.asarray(item_line, dtype=np.int64), units, p.max_eval_items)

    # -- training side ---------------------------------------------------------------------------------------
    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The batch's units that match an eval item (uid, id, gram, turn, start, span), plus one tally row
        (uid null, batch_records = the batch's height)."""
        p, index = self.params, self.index
        roles = {"all": None, "prompt": ["system", "user"], "response": ["assistant"]}[p.fields]
        turns = batch.select("uid", "id", m=pl.col("messages")).with_columns(
            turn=pl.int_ranges(pl.col("m").list.len(), dtype=pl.Int32)
        ).explode("m", "turn").drop_nulls("m")
        turns = turns.select("uid", "id", "turn", role=pl.col("m").struct.field("role"), text=pl.col("m").struct.field("content"))
        if roles is not None:
            turns = turns.filter(pl.col("role").is_in(roles))
        units, gram_offsets, short_doc = text_units(turns["text"], p.ngram, p.min_words, with_doc=False)
        pos, _ = index.lookup(units.hash)
        tally = pl.DataFrame({"batch_records": [batch.height]}, schema={"batch_records": pl.Int64})
        if pos.size == 0:
            return pl.concat([pl.DataFrame(schema=PREPARED_SCHEMA), tally], how="diagonal_relaxed").select(list(PREPARED_SCHEMA)).cast(PREPARED_SCHEMA)
        n_grams = int(gram_offsets[-1])
        is_gram = pos < n_grams
        doc = np.empty(pos.size, dtype=np.int64)
        doc[is_gram] = np.searchsorted(gram_offsets, pos[is_gram], side="right") - 1
        doc[~is_gram] = short_doc[pos[~is_gram] - n_grams]
        start, length = units.start[pos], units.length[pos]
        # the matched words, rebuilt from the few turns with a hit
        hit_docs, inverse = np.unique(doc, return_inverse=True)
        hit_words = words(turns["text"].gather(hit_docs)).to_list()
        spans = [" ".join(hit_words[k][s : s + ln]) for k, s, ln in zip(inverse.tolist(), start.tolist(), length.tolist())]
        hits = turns.select("uid", "id", "turn")[doc].with_columns(
            gram=pl.Series(units.hash[pos], dtype=pl.UInt64),
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
        hits = prepared.filter(pl.col("uid").is_not_null()).unique(["uid", "gram", "turn", "start"])
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
        best = hits.join(per_record.select("uid", item="best"), on=["uid", "item"]).sort("uid", "turn", "start")
        # one pass over plain lists: the rows of each record are contiguous after the sort
        cols = [best[c].to_list() for c in ("uid", "turn", "start", "length", "span")]
        bounds = np.flatnonzero(np.diff(best["uid"].to_numpy())) + 1
        starts, ends = np.concatenate([[0], bounds]).tolist(), np.concatenate([bounds, [best.height]]).tolist()
        detail = []
        for a, b, item, units, k in zip(starts, ends, per_record["best"].to_list(), per_record["best_units"].to_list(), per_record["n_items"].to_list()):
            text = _merged_span(cols[1][a:b], cols[2][a:b], cols[3][a:b], cols[4][a:b])
            lengths = cols[3][a:b]
            kind = f"{p.ngram}-gram overlap" if p.ngram in lengths else f"whole-line overlap ({lengths[0]} words)"
            more = f"; {k - 1} more eval item{'s' if k > 2 else ''} matched" if k > 1 else ""
            detail.append(f'{kind} with {index.ref(item)} ({units} n-gram{"s" if units != 1 else ""}): "{text}"{more}')
        return per_record.select(
            "uid",
            reason=pl.lit("contaminated"),
            detail=pl.Series(detail, dtype=pl.Utf8),
            duplicate_of=pl.lit(None, dtype=pl.Utf8),
        )


def _merged_span(turns: list[int], starts: list[int], lengths: list[int], spans: list[str]) -> str:
    """The matched words of a record's first matching turn, overlapping units merged, gaps shown as "…",
    truncated to :data:`SPAN_CHARS`. Rows are sorted by turn then start."""
    out: list[str] = []
    end = -1
    for turn, start, length, span in zip(turns, starts, lengths, spans):
        if turn != turns[0]:
            break
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


__all__ = ["Decontaminate", "EvalIndex", "EvalSet", "text_units", "PREPARED_SCHEMA"]
