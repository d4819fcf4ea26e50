"""Per-record quality filters: length, repetition, blocklists, refusals, instructions the model cannot see.

Every stage here is a :class:`~curate.stages.RecordStage`: ``evaluate(batch)`` returns the batch with
``reason`` (null = keep), ``detail`` and the stage's score columns (``<stage>_<metric>``). The work is
vectorized: Polars string and list kernels (regex, Aho-Corasick, split, ``list.n_unique``) over whole
columns, and for Gopher's n-gram statistics NumPy over the hashed words of the whole batch (one sort per
n); no Python loop runs per record. When a record fails several checks of one stage it gets the first failing reason in the order
the stage's ``reasons`` tuple lists them.

Words. Word-level statistics split text into tokens at whitespace and ASCII/typographic punctuation
(``_SEPARATORS``), so "don't" is two tokens and "banana!Eat" is two; it is close to ``\\w+`` without the
cost of a Unicode regex over every character. Lengths of word n-grams are counted in UTF-8 bytes and
divided by the text's length in bytes (the same ratio as characters for ASCII text).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from curate.schema import turns_text_expr
from curate.stages import RecordStage, StageContext, StageParams, register

__all__ = [
    "ResponseLength",
    "Length",
    "UniqueWords",
    "GopherRepetition",
    "Blocklist",
    "Refusal",
    "UnseeableContext",
    "DEFAULT_REFUSAL_PHRASES",
]

# -- shared helpers ---------------------------------------------------------------------------------------

_SEPARATORS = list("\n\t\r!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + list("\u201c\u201d\u2018\u2019\u2014\u2013\u2026\u00ab\u00bb\u2022\u00b7")
_SEPARATOR_MAP = dict.fromkeys(_SEPARATORS, " ")
_APOSTROPHES = {"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'"}


def _first_failing(checks: Sequence[tuple[pl.Expr, str, pl.Expr]]) -> tuple[pl.Expr, pl.Expr]:
    """``reason`` and ``detail`` expressions from ordered (condition, reason, detail) checks.

    The first condition that is true wins; a null condition counts as false (the check does not apply).
    """
    if not checks:
        return pl.lit(None, dtype=pl.Utf8).alias("reason"), pl.lit(None, dtype=pl.Utf8).alias("detail")
    reason = pl.when(checks[0][0].fill_null(False)).then(pl.lit(checks[0][1]))
    detail = pl.when(checks[0][0].fill_null(False)).then(checks[0][2])
    for cond, code, text in checks[1:]:
        reason = reason.when(cond.fill_null(False)).then(pl.lit(code))
        detail = detail.when(cond.fill_null(False)).then(text)
    return (
        reason.otherwise(pl.lit(None, dtype=pl.Utf8)).cast(pl.Utf8).alias("reason"),
        detail.otherwise(pl.lit(None, dtype=pl.Utf8)).cast(pl.Utf8).alias("detail"),
    )


def _with_verdict(batch: pl.DataFrame, checks: Sequence[tuple[pl.Expr, str, pl.Expr]]) -> pl.DataFrame:
    """``batch`` plus ``reason`` and ``detail`` from ordered checks (see :func:`_first_failing`).

    The detail strings are formatted for the rejected rows only (formatting every row costs more than
    the checks themselves).
    """
    reason, detail = _first_failing(checks)
    batch = batch.with_columns(reason)
    idx = batch["reason"].is_not_null().arg_true()
    details = pl.Series("detail", [None] * batch.height, dtype=pl.Utf8)
    if len(idx):
        details = details.scatter(idx, batch[idx].select(detail).to_series())
    return batch.with_columns(details)


def _pct(expr: pl.Expr) -> pl.Expr:
    """A fraction as a whole percentage, for details."""
    return (expr * 100).round(0).cast(pl.Int64)


# A token: a run of characters that are neither a space nor a separator (what _split_words keeps)
_WORD_RUN = "[^ " + "".join(pl.escape_regex(c) if c not in "\n\t\r" else {"\n": r"\n", "\t": r"\t", "\r": r"\r"}[c] for c in _SEPARATORS) + "]+"


def _split_words(text: pl.Expr) -> pl.Expr:
    """Text to a list of tokens split at whitespace and punctuation (with "" between adjacent separators)."""
    return text.str.replace_many(_SEPARATOR_MAP).str.split(" ")


def _word_count(text: pl.Expr) -> pl.Expr:
    words = _split_words(text)
    return (words.list.len() - words.list.count_matches("")).cast(pl.Int64)


def _tokens(text: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens of every text in the batch, flattened and in order: row index (int64), 64-bit hash (uint64)
    and length in bytes (uint64)."""
    text = text.fill_null("")
    flat = (
        text.to_frame("t")
        .with_row_index("row")
        .select("row", w=_split_words(pl.col("t")))
        .explode("w")
        .filter(pl.col("w") != "")  # the empty strings between adjacent separators
        .select(pl.col("row").cast(pl.Int64), h=pl.col("w").hash(seed=0x5EED), n=pl.col("w").str.len_bytes().cast(pl.UInt64))
    )
    return flat["row"].to_numpy(), flat["h"].to_numpy(), flat["n"].to_numpy()


_U = np.uint64


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Start index of every run of equal values in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(([0], np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1))


_ROW_BITS = 20  # rows per block in packed keys: row (20 bits) | hash (32 bits) | length (12 bits)
_LEN_BITS = 12
_LEN_MAX = (1 << _LEN_BITS) - 1


def _top_ngram_fracs(text: pl.Series, ns: Sequence[int], min_words: int) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Per record and n: characters covered by the most frequent word n-gram / characters of the text.

    As in Gopher / datatrove's ``find_top_duplicate``: the count of the most frequent n-gram times its
    length (words joined by single spaces). Ties on the count go to the longest n-gram. An n-gram seen
    only once is not a repetition: its fraction is 0. Records with fewer than ``min_words`` words get NaN.
    Also returns the word counts, -1 where the text is too short (in bytes) to hold ``min_words`` words.

    Implementation: every n-gram of the batch becomes one uint64 key, (row | 32-bit n-gram hash | length),
    and one sort of all keys puts repeats next to each other; run lengths are counted on the repeated
    positions only, and the per-row maximum comes from ``maximum.reduceat``.
    32 bits of hash per record make a collision between two distinct n-grams of one record unlikely
    (about m^2 / 2^33 for m n-grams) and harmless (it can only merge two counts).
    """
    n_rows = len(text)
    out = {n: np.full(n_rows, np.nan) for n in ns}
    text_bytes = text.fill_null("").str.len_bytes().to_numpy().astype(np.float64)
    # k words need at least 2k - 1 bytes: shorter texts are not even split into words
    n_words = np.full(n_rows, -1, dtype=np.int64)
    long_enough = np.flatnonzero(text_bytes >= 2 * min_words - 1)
    if len(long_enough) == 0:
        return out, n_words
    # the exact word count is one regex pass (runs of non-separators), much cheaper than splitting; only
    # the records that reach the gate are split into words
    n_words[long_enough] = text.gather(long_enough).str.count_matches(_WORD_RUN).to_numpy()
    gated = n_words >= max(min_words, 2)
    if not ns or not gated.any():
        return out, n_words
    for n in ns:
        out[n][gated] = 0.0
    gated_rows = np.flatnonzero(gated)
    rows, hashes, lengths = _tokens(text.gather(gated_rows))
    rows = gated_rows[rows]
    # a row number must fit its 20 bits of the packed key: big batches go in blocks of 2**20 rows
    row_shift, hash_shift = _U(64 - _ROW_BITS), _U(64 - 32 - _LEN_BITS)
    len_mask = _U(_LEN_MAX)
    hash_mask = ~(_U(_LEN_MAX) | (_U((1 << _ROW_BITS) - 1) << row_shift))
    for b0 in range(0, n_rows, 1 << _ROW_BITS):
        lo, hi = np.searchsorted(rows, [b0, b0 + (1 << _ROW_BITS)])
        if hi - lo < 2:
            continue
        local = rows[lo:hi] - b0
        row_bits = local.astype(np.uint64)
        row_bits <<= row_shift
        starts_of_rows = np.flatnonzero(local[1:] != local[:-1]) + 1  # first token of each record but the first
        h = hashes[lo:hi]
        ln = np.minimum(lengths[lo:hi], _U(1000))  # 4 x 1000 + 3 fits the 12 length bits
        gram_h, gram_len = h, ln
        for n in range(2, max(ns) + 1):
            # n-gram i = (n-1)-gram i + word i+n-1: multiply-xor; the top 32 bits of the result are used
            gram_h = gram_h[:-1] * _U(0x9E3779B97F4A7C15)
            gram_h ^= h[n - 1 :]
            gram_len = gram_len[:-1] + ln[n - 1 :]
            gram_len += _U(1)
            if n not in ns:
                continue
            key = gram_h >> hash_shift
            key &= hash_mask
            key |= row_bits[: len(key)]
            key |= gram_len
            # The n-grams that run from one record into the next get distinct keys of length 0, which no
            # real n-gram has: they must neither count nor be counted.
            cross = (starts_of_rows[:, None] - np.arange(1, n)[None, :]).ravel()
            cross = cross[(cross >= 0) & (cross < len(key))]
            key[cross] = row_bits[cross] | (np.arange(len(cross), dtype=np.uint64) << _U(_LEN_BITS))
            key.sort()
            # Most n-grams occur once: work only on the (few) positions equal to their predecessor.
            repeat = np.flatnonzero(key[1:] == key[:-1])
            if len(repeat) == 0:
                continue
            rep_keys = key[repeat]  # sorted; a key occurring c times appears c - 1 times here
            starts = _run_starts(rep_keys)
            counts = np.diff(np.append(starts, len(rep_keys))).astype(np.uint64) + _U(1)
            firsts = rep_keys[starts]
            run_row = (firsts >> row_shift).astype(np.int64)
            score = (counts << _U(_LEN_BITS)) | (firsts & len_mask)
            row_starts = _run_starts(run_row)
            best = np.maximum.reduceat(score, row_starts)
            best_count = (best >> _U(_LEN_BITS)).astype(np.float64)
            best_len = (best & len_mask).astype(np.float64)
            target = run_row[row_starts] + b0
            frac = best_count * best_len / np.maximum(text_bytes[target], 1.0)
            out[n][target] = np.minimum(frac, 1.0)
    return out, n_words


# Markup tags ("<td>", "</div>", "<br/>") are structure, not words: word statistics read the text without them,
# so a table's tags do not count as a repeated phrase.
_MARKUP_TAG = r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>\n]{0,80})?/?>"


def _without_markup(text: pl.Series) -> pl.Series:
    """``text`` with markup tags replaced by a space (only the texts that hold a ``<`` are touched)."""
    text = text.fill_null("")
    has = text.str.contains("<", literal=True)
    if not has.any():
        return text
    idx = has.arg_true()
    return text.scatter(idx, text.gather(idx).str.replace_all(_MARKUP_TAG, " "))


def _dup_ngram_char_frac(text: pl.Series, n: int, rows_to_judge: np.ndarray) -> np.ndarray:
    """Per record: characters of the words inside a word n-gram that already occurred earlier in the same
    record / characters of all its words (Gopher's "duplicate n-gram character fraction", as datatrove's
    ``find_all_duplicate``: overlapping repeats count their words once). NaN for records not in
    ``rows_to_judge``.

    A text that repeats a passage of ``n`` or more words has the second and later copies counted; a list whose
    items share a lead phrase shorter than ``n`` words ("What is the difference between a ... and a ...") has
    few repeated n-grams, and a chorus sung three times in a song holds about a third of its words.

    Implementation: every n-gram of the batch gets a 64-bit key (its words' hashes combined, mixed with its
    record number); Polars' ``is_first_distinct`` (one hash pass) finds every key equal to an earlier one;
    the words a repeat covers are marked with a +1/-1 difference array and a cumulative sum, and summed per
    record with ``bincount``.
    """
    n_rows = len(text)
    out = np.full(n_rows, np.nan)
    if len(rows_to_judge) == 0:
        return out
    rows, hashes, lengths = _tokens(text.gather(rows_to_judge))
    rows = rows_to_judge[rows]
    out[rows_to_judge] = 0.0
    m = len(rows)
    if m < n:
        return out
    gram = hashes[: m - n + 1].copy()
    for k in range(1, n):
        gram *= _U(0x9E3779B97F4A7C15)
        gram ^= hashes[k : m - n + 1 + k]
    gram ^= rows[: m - n + 1].astype(np.uint64) * _U(0xD6E8FEB86659FD93)
    inside = rows[: m - n + 1] == rows[n - 1 :]  # the n-gram does not run from one record into the next
    # a key equal to an earlier one (in text order) is a repeat: one hash pass, no sort
    repeat = ~pl.Series(gram).is_first_distinct().to_numpy()
    starts = np.flatnonzero(repeat & inside)
    if len(starts) == 0:
        return out
    diff = np.bincount(starts, minlength=m + 1)[: m + 1] - np.bincount(starts + n, minlength=m + 1)[: m + 1]
    covered = np.cumsum(diff)[:m] > 0
    weights = lengths.astype(np.float64)
    dup = np.bincount(rows, weights=weights * covered, minlength=n_rows)
    total = np.bincount(rows, weights=weights, minlength=n_rows)
    judged = rows_to_judge
    out[judged] = dup[judged] / np.maximum(total[judged], 1.0)
    return out


def _duplicate_parts(text: pl.Series, kind: Literal["line", "paragraph"]) -> pl.DataFrame:
    """Per record: number of lines (paragraphs), duplicates among them, characters in the duplicates.

    As datatrove's ``find_duplicates``: an element equal to an earlier one of the same record is a
    duplicate; its characters count toward the duplicate characters. Lines are split at runs of newlines,
    paragraphs at runs of two or more. Only records that contain a separator are split (the rest have one
    element and no duplicate).
    """
    n_rows = len(text)
    text = text.fill_null("")
    sep = "\n" if kind == "line" else "\n\n"
    base = pl.DataFrame(
        {
            "parts": pl.Series(np.ones(n_rows, dtype=np.int64)),
            "dups": pl.Series(np.zeros(n_rows, dtype=np.int64)),
            "dup_chars": pl.Series(np.zeros(n_rows, dtype=np.int64)),
        }
    )
    frame = pl.DataFrame({"t": text}).with_row_index("row")
    multi = frame.filter(pl.col("t").str.strip_chars("\n").str.contains(sep, literal=True))
    if multi.height == 0:
        return base
    parts = (
        multi.select("row", part=pl.col("t").str.strip_chars("\n").str.split(sep))
        .explode("part")
        .with_columns(pl.col("part").str.strip_chars("\n"))
        .filter(pl.col("part") != "")
        .with_columns(dup=~pl.struct("row", h=pl.col("part").hash()).is_first_distinct())
        .group_by("row")
        .agg(
            parts=pl.len().cast(pl.Int64),
            dups=pl.col("dup").sum().cast(pl.Int64),
            dup_chars=pl.col("part").str.len_chars().filter(pl.col("dup")).sum().cast(pl.Int64),
        )
    )
    idx = parts["row"].to_numpy().astype(np.int64)
    for col in ("parts", "dups", "dup_chars"):
        values = base[col].to_numpy().copy()
        values[idx] = parts[col].to_numpy()
        base = base.with_columns(pl.Series(col, values))
    return base


def _read_terms(path: Path) -> list[str]:
    """Terms from a list file: one per line, ``#`` starts a comment line, blank lines are ignored."""
    if not path.is_file():
        raise FileNotFoundError(f"blocklist file not found: {path}")
    terms = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            terms.append(line)
    return terms


def _normalize_phrase(s: str) -> str:
    for k, v in _APOSTROPHES.items():
        s = s.replace(k, v)
    return " ".join(s.lower().split())


class _TermMatcher:
    r"""First whole-word, case-insensitive occurrence of any of many terms, vectorized.

    The text is lower-cased once; a regex alternation of the bare terms (which Rust's regex engine runs
    as a multi-literal Teddy search; for lists longer than ``CHUNK``, one Aho-Corasick pass with
    ``str.contains_any``) finds candidate records, and only those get the
    word-boundary regex ``(?:^|\W)(term1|term2|...)(?:\W|$)``. Terms are compiled in chunks so each regex
    stays small. A term that starts or ends with punctuation ("c++") works: the boundary is "not a word
    character", not ``\b``. An apostrophe in a term also matches a curly one. A space in a term matches
    one space: the text is not rewritten (collapsing whitespace would cost a regex pass over every
    record and defeat the literal search). The returned match is the term in its normalized form (lower
    case, straight apostrophes, single spaces).
    """

    CHUNK = 2000  # terms per regex: up to here one regex pass beats Aho-Corasick (measured)

    def __init__(self, terms: Sequence[str]):
        norm = sorted({_normalize_phrase(t) for t in terms if t.strip()}, key=lambda t: (-len(t), t))
        self.terms = norm
        chunks = [norm[i : i + self.CHUNK] for i in range(0, len(norm), self.CHUNK)]
        self.any_patterns = ["(?:" + "|".join(map(self._term_regex, c)) + ")" for c in chunks]
        curly = [t.replace("'", q) for t in norm if "'" in t for q in _APOSTROPHES]
        self.literals = norm + curly
        self.patterns = [r"(?:^|[^\w])(" + "|".join(map(self._term_regex, c)) + r")(?:[^\w]|$)" for c in chunks]

    @staticmethod
    def _term_regex(term: str) -> str:
        return pl.escape_regex(term).replace("'", "['\u2019\u2018\u02bc\u2032]")

    def first_match(self, text: pl.Series) -> pl.Series:
        """The first matched term per record (null where none), from the raw (not lower-cased) text."""
        n = len(text)
        result = pl.Series("match", [None] * n, dtype=pl.Utf8)
        if not self.terms or n == 0:
            return result
        lowered = text.fill_null("").str.to_lowercase()
        if len(self.any_patterns) == 1:
            candidates = lowered.str.contains(self.any_patterns[0])
        else:  # one Aho-Corasick pass beats many regex passes for long lists
            candidates = lowered.str.contains_any(self.literals)
        idx = candidates.arg_true()
        if len(idx) == 0:
            return result
        sub = lowered.gather(idx)
        found = pl.Series([None] * len(sub), dtype=pl.Utf8)
        for pattern in self.patterns:
            found = found.fill_null(sub.str.extract(pattern, 1))
        found = found.str.replace_many(_APOSTROPHES)
        return result.scatter(idx, found)


# -- response_length -----------------------------------------------------------------------------------------


@register
class ResponseLength(RecordStage):
    """Empty or too-short responses (all assistant turns together, surrounding whitespace ignored).

    Params:
        min_chars: fewest characters a response needs (default 1: only empty responses fail). Short
            answers ("Yes.", "4", "Paris") are correct answers to many instructions, so a higher floor
            is a per-dataset decision.
        min_words: fewest words a response needs (default 0: off).

    Reasons, in order: ``empty_response``, ``response_too_short``.
    Scores: ``response_length_chars``, ``response_length_words``.
    """

    name = "response_length"
    judges_completion = True
    reasons = ("empty_response", "response_too_short")
    score_columns = ("response_length_chars", "response_length_words")

    class Params(StageParams):
        """Parameters of ``response_length``."""

        min_chars: int = Field(1, ge=0, description=(
            "fewest characters a response needs; 1: only empty responses fail. Short answers ('Yes.', '4', 'Paris') "
            "are correct answers to many instructions, so a higher floor is a per-dataset decision"))
        min_words: int = Field(0, ge=0, description="fewest words a response needs; 0: off")

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Reasons ``empty_response`` and ``response_too_short`` against ``min_chars`` / ``min_words``; scores the
        response's characters and (when ``min_words`` is set) words."""
        p = self.params
        stripped = pl.col("response_text").fill_null("").str.strip_chars()
        batch = batch.with_columns(response_length_chars=stripped.str.len_chars().cast(pl.Int64))
        if p.min_words > 0:
            batch = batch.with_columns(response_length_words=_word_count(pl.col("response_text").fill_null("")))
        else:  # counting words costs a pass over the text; skip it when no word floor is set
            batch = batch.with_columns(response_length_words=pl.lit(None, dtype=pl.Int64))
        chars, words = pl.col("response_length_chars"), pl.col("response_length_words")
        return _with_verdict(
            batch,
            [
                (chars == 0, "empty_response", pl.lit("response is empty")),
                (chars < p.min_chars, "response_too_short", pl.format("response has {} chars (min {})", chars, pl.lit(p.min_chars))),
                (words < p.min_words, "response_too_short", pl.format("response has {} words (min {})", words, pl.lit(p.min_words))),
            ],
        )


# -- length --------------------------------------------------------------------------------------------------


@register
class Length(RecordStage):
    """Records too long to train on (or with a too-short prompt).

    Params:
        max_chars: most characters over all turns (default 20,000, about 5k tokens of English: longer
            records are usually pasted documents or degenerate generations, and would be truncated at the
            usual 2k-8k token training lengths anyway). null disables.
        max_tokens: most tokens over all turns with the configured tokenizer (default null: off). Set it
            to the training ``max_seq_length`` so nothing is silently truncated; needs ``tokenizer:`` in
            the config.
        min_prompt_chars: fewest characters of the prompt (system and user turns, default null: off;
            empty user turns are ``conversation_structure``'s ``empty_turn``).

    Reasons, in order: ``too_long_tokens`` (the limit that maps to the training context), ``too_long_chars``,
    ``prompt_too_short``. Scores: ``length_chars``, ``length_tokens``, ``length_prompt_chars``.
    """

    name = "length"
    reasons = ("too_long_tokens", "too_long_chars", "prompt_too_short")
    score_columns = ("length_chars", "length_tokens", "length_prompt_chars")

    class Params(StageParams):
        """Parameters of ``length``."""

        max_chars: int | None = Field(20_000, ge=1, description=(
            "most characters over all turns (20,000 is about 5k English tokens: longer records are usually pasted "
            "documents or degenerate generations); null: off"))
        max_tokens: int | None = Field(None, ge=1, description=(
            "most tokens over all turns with the config's tokenizer; set it to the training max_seq_len so nothing "
            "is silently truncated; needs `tokenizer:`; null: off"))
        min_prompt_chars: int | None = Field(None, ge=0, description=(
            "fewest characters of the prompt (system and user turns); null: off (empty turns are "
            "conversation_structure's empty_turn)"))

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Reasons ``too_long_tokens``, ``too_long_chars``, ``prompt_too_short`` (the first that applies); raises
        ValueError when ``max_tokens`` is set but the run has no tokenizer."""
        p = self.params
        if p.max_tokens is not None and batch.height and batch["n_tokens"].null_count() > 0:
            raise ValueError("length.max_tokens needs a tokenizer: set `tokenizer:` in the config")
        batch = batch.with_columns(
            length_chars=pl.col("n_chars").cast(pl.Int64),
            length_tokens=pl.col("n_tokens").cast(pl.Int64),
            length_prompt_chars=pl.col("prompt_text").fill_null("").str.strip_chars().str.len_chars().cast(pl.Int64),
        )
        checks = []
        if p.max_tokens is not None:
            t = pl.col("length_tokens")
            checks.append((t > p.max_tokens, "too_long_tokens", pl.format("{} tokens (max {})", t, pl.lit(p.max_tokens))))
        if p.max_chars is not None:
            c = pl.col("length_chars")
            checks.append((c > p.max_chars, "too_long_chars", pl.format("{} chars over all turns (max {})", c, pl.lit(p.max_chars))))
        if p.min_prompt_chars is not None:
            c = pl.col("length_prompt_chars")
            detail = pl.format("prompt has {} chars (min {})", c, pl.lit(p.min_prompt_chars))
            checks.append((c < p.min_prompt_chars, "prompt_too_short", detail))
        return _with_verdict(batch, checks)


# -- unique_words --------------------------------------------------------------------------------------------

# A word for the unique-word ratio: a token of two or more characters with at least one letter. Numbers,
# symbols and grid cells are not words (a Sudoku grid is nine digits repeated; a truth table is 0s and 1s),
# nor are single letters (notes "A A G G", variables, option letters "a." "b.").
_WORD_WITH_LETTER = r"^(?:[^\W\d_]\w|\w[^\W\d_])"


@register
class UniqueWords(RecordStage):
    """Responses that keep repeating the same few words (lower-cased words, distinct / all).

    The plain ratio falls with length for any text (Heaps' law: a 30-word answer has ~75% distinct words,
    a 500-word GPT-4 answer 25-50%), so a fixed floor on it either misses short loops or rejects long answers.
    The default rule is on the length-normalized ratio, Herdan's C = log(distinct) / log(words), which
    stays near 0.8-0.9 for prose of any length and drops for loops ("Eat a banana!" x 2000: 0.13).
    C >= 0.5 is the same as a plain ratio floor of words^-0.5: 18% at 30 words, 10% at 100, 3% at 1000.

    Words are tokens of two or more characters with a letter, read without markup tags: numbers, symbols,
    single letters (notes, variables, option letters) and ``<td>`` are not words, so a Sudoku grid, a truth table
    or a table of figures is not judged (they repeat digits by design) and an HTML answer is judged on its text.
    Instruction answers repeat words for good reasons (a list of labels, a chord chart, code's ``self.name = name``);
    the defaults judge only answers of 30 words or more and take C < 0.5, where natural text does not go: on shared/data that flags 1 of the 9,807
    Alpaca answers (an HTML table template whose 35 cells all say "Row N"), none of the 805 AlpacaEval GPT-4
    or Llama-2-chat answers or of the 6,400 human Dolly answers, and catches the looping generations: the
    cookbook's "Eat a banana!" answer, 167 of 252 vanilla-davinci self-instruct outputs, 3 flan-t5 loops
    in the Dolly generations. Passage loops with a large vocabulary (a sentence said over and over after a
    real answer) are ``gopher_repetition``'s: on the looped real answers of bench/verdict_sets/filters.py
    this rule alone catches about 22%. (Before: every token a word, 20 words, C < 0.6; that rejected Sudoku grids,
    truth tables, class definitions and label lists.)

    Params:
        min_log_ratio: the lowest acceptable Herdan's C (default 0.5; null disables).
        min_ratio: the lowest acceptable plain distinct/words ratio (default null: off).
        min_words: only responses with at least this many words are judged (default 30): short answers
            repeat words naturally ("No, no, no.", a list of five labels) and any ratio over a handful of
            words is noise.

    Checks, in order: the log ratio, the plain ratio; both report ``low_unique_word_ratio``.
    Scores: ``unique_words_ratio``, ``unique_words_log_ratio`` (null under 2 words), ``unique_words_words``.
    """

    name = "unique_words"
    judges_completion = True
    reasons = ("low_unique_word_ratio",)
    score_columns = ("unique_words_ratio", "unique_words_log_ratio", "unique_words_words")

    class Params(StageParams):
        """Parameters of ``unique_words``."""
        min_log_ratio: float | None = Field(
            0.5, ge=0.0, le=1.0, description="lowest acceptable Herdan's C = log(distinct words) / log(words); null disables"
        )
        min_ratio: float | None = Field(None, ge=0.0, le=1.0, description="lowest acceptable distinct/words ratio; null: off")
        min_words: int = Field(30, ge=2, description="judge only responses with at least this many words (tokens with a letter)")

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Reason ``low_unique_word_ratio`` for responses of at least ``min_words`` words whose distinct-word
        ratios are below the floors; markup ignored; scores both ratios and the word count."""
        p = self.params
        text = _without_markup(batch["response_text"]).str.to_lowercase()
        words = text.to_frame("t").select(_split_words(pl.col("t"))).to_series()
        # only tokens with a letter are words ("" between adjacent separators, numbers and symbols are not)
        words = words.list.eval(pl.element().filter(pl.element().str.contains(_WORD_WITH_LETTER)))
        n_words = words.list.len().cast(pl.Int64)
        n_distinct = words.list.n_unique().cast(pl.Int64)
        frame = pl.DataFrame({"d": n_distinct, "w": n_words}).select(
            unique_words_ratio=(pl.col("d") / pl.col("w").replace(0, None)).cast(pl.Float64),
            unique_words_log_ratio=pl.when(pl.col("w") >= 2).then(pl.col("d").log() / pl.col("w").log()).cast(pl.Float64),
            unique_words_words=pl.col("w"),
        )
        batch = batch.with_columns(frame)
        r, c, w = pl.col("unique_words_ratio"), pl.col("unique_words_log_ratio"), pl.col("unique_words_words")
        judged = w >= p.min_words
        detail = pl.format("{} distinct in {} words ({}%, log ratio {})", (r * w).round(0).cast(pl.Int64), w, _pct(r), c.round(2))
        checks = []
        if p.min_log_ratio is not None:
            min_c = pl.lit(p.min_log_ratio)
            checks.append((judged & (c < p.min_log_ratio), "low_unique_word_ratio", pl.format("{}; min log ratio {}", detail, min_c)))
        if p.min_ratio is not None:
            min_r = pl.lit(round(p.min_ratio * 100))
            checks.append((judged & (r < p.min_ratio), "low_unique_word_ratio", pl.format("{}; min {}%", detail, min_r)))
        return _with_verdict(batch, checks)


# -- gopher_repetition ---------------------------------------------------------------------------------------


@register
class GopherRepetition(RecordStage):
    """Degenerate repetition in the response (Gopher's repetition rules, calibrated for instruction answers).

    The rules are those of Gopher (Rae et al. 2021, table A1), as datatrove's GopherRepetitionFilter.

    Checks, in order:

    1. ``dup_para_frac``: duplicate paragraphs / paragraphs (split at two or more newlines)
    2. ``dup_para_char_frac``: characters in duplicate paragraphs / characters of the response
    3. ``dup_line_frac``: duplicate lines / lines (split at newlines)
    4. ``dup_line_char_frac``: characters in duplicate lines / characters of the response
    5. ``dup_ngram_char_frac``: characters of the words inside a repeated word n-gram (n = ``dup_ngram_n``,
       default 10) / characters of all words: a passage said again, wherever the line breaks fall
    6. ``top_2gram_frac``, ``top_3gram_frac``, ``top_4gram_frac``: characters covered by the most frequent
       word n-gram (count x length) / characters of the response

    A duplicate is an element equal to an earlier one (the first occurrence is not counted).

    Why the defaults differ from Gopher's. Gopher's thresholds were set for web pages, where repeated lines
    are navigation and boilerplate. In instruction answers repetition is often the answer: a song repeats
    its chorus (a third of the lines), a survey repeats "a. Very satisfied ... e. Very dissatisfied" under
    every question (half the lines), an HTML form repeats its closing tags, a list of questions repeats
    "What is the difference between" (the top 4-gram covers a third of the text). A degenerate generation
    differs in degree: the loop takes over, and most of the text is copies. So the defaults keep only the
    rules that weigh characters, at 0.5 ("more than half of the response repeats what it already said"),
    and turn off the count-of-elements and top-n-gram rules (null; set them for web-like text). The
    10-gram rule sees loops that do not follow line breaks ("Eat a banana!Eat a banana!...", a sentence
    said over and over in one paragraph), and 10 words are longer than any lead phrase a list repeats.
    Word statistics read the text without markup tags.

    On shared/data the defaults flag 2 of 9,807 Alpaca answers (a JSON request template given twice, an
    HTML table template) and none of the 999 Alpaca-GPT-4, 1,610 AlpacaEval GPT-4/Llama-2-chat or 6,400
    human Dolly answers, and catch 97% of real answers made to loop (a sentence, a block of lines or a
    phrase repeated until the copies are 60-80% of the text, or a phrase looped alone;
    bench/verdict_sets/filters.py: 97.2% tune, 96.4% holdout, the misses being loops under 30 words) and
    the cookbook's "Eat a banana!" answer. Gopher's own thresholds (and a 100-word gate) rejected 0.2% of
    Alpaca, nearly all songs, surveys, forms and question lists.

    Params:
        dup_para_frac, dup_line_frac (default null), dup_para_char_frac, dup_line_char_frac (default 0.5),
        dup_ngram_char_frac (default 0.5) with dup_ngram_n (default 10), top_ngram_fracs (default all null;
        Gopher's were {2: 0.20, 3: 0.18, 4: 0.16}): null disables a rule.
        min_words: the rules judge only responses with at least this many words (default 30). Under that
            every ratio hangs on a couple of elements.

    Scores: the eight fractions (the n-gram ones null below ``min_words``; the line and paragraph ones for
    every record, so the gate can be retuned) and ``gopher_repetition_words`` (null when the response is
    too short, in bytes, to hold ``min_words`` words, so it was not split into words).

    Differences from datatrove: words are split at whitespace and punctuation instead of NLTK's word
    tokenizer (punctuation is not a token), a top n-gram must occur at least twice, and one duplicate
    n-gram length is checked instead of the six (5 to 10) Gopher checks.
    """

    name = "gopher_repetition"
    judges_completion = True
    reasons = (
        "dup_para_frac",
        "dup_para_char_frac",
        "dup_line_frac",
        "dup_line_char_frac",
        "dup_ngram_char_frac",
        "top_2gram_frac",
        "top_3gram_frac",
        "top_4gram_frac",
    )
    score_columns = (
        "gopher_repetition_dup_para_frac",
        "gopher_repetition_dup_para_char_frac",
        "gopher_repetition_dup_line_frac",
        "gopher_repetition_dup_line_char_frac",
        "gopher_repetition_dup_ngram_char_frac",
        "gopher_repetition_top_2gram_frac",
        "gopher_repetition_top_3gram_frac",
        "gopher_repetition_top_4gram_frac",
        "gopher_repetition_words",
    )

    class Params(StageParams):
        """Parameters of ``gopher_repetition``."""
        dup_para_frac: float | None = Field(None, ge=0.0, le=1.0, description="max duplicate paragraphs / paragraphs (Gopher: 0.30)")
        dup_para_char_frac: float | None = Field(
            0.5, ge=0.0, le=1.0, description="max characters in duplicate paragraphs / characters (Gopher: 0.20)"
        )
        dup_line_frac: float | None = Field(None, ge=0.0, le=1.0, description="max duplicate lines / lines (Gopher: 0.30)")
        dup_line_char_frac: float | None = Field(
            0.5, ge=0.0, le=1.0, description="max characters in duplicate lines / characters (Gopher: 0.20)"
        )
        dup_ngram_char_frac: float | None = Field(
            0.5, ge=0.0, le=1.0, description="max characters of words inside a repeated word n-gram / characters of words"
        )
        dup_ngram_n: int = Field(10, ge=5, le=10, description="n of the duplicate n-gram rule (Gopher: 5 to 10)")
        top_ngram_fracs: dict[int, float | None] = Field(
            default_factory=lambda: {2: None, 3: None, 4: None},
            description="max characters covered by the most frequent word n-gram, per n in 2, 3, 4 (Gopher: 0.20, 0.18, 0.16)",
        )
        min_words: int = Field(30, ge=0, description="judge only responses with at least this many words")

        @field_validator("top_ngram_fracs")
        @classmethod
        def _known_ns(cls, v: dict[int, float | None]) -> dict[int, float | None]:
            bad = sorted(set(v) - {2, 3, 4})
            if bad:
                raise ValueError(f"top_ngram_fracs: n must be 2, 3 or 4, got {bad}")
            for n, t in v.items():
                if t is not None and not 0.0 <= t <= 1.0:
                    raise ValueError(f"top_ngram_fracs[{n}] must be between 0 and 1, got {t}")
            return v

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The repetition fractions of each response (lines, paragraphs, n-grams), a reason for the first rule
        above its limit (responses of at least ``min_words`` words only); every fraction kept as a score."""
        p = self.params
        text = batch["response_text"].fill_null("")
        words_text = _without_markup(text)
        ns = sorted(n for n, t in p.top_ngram_fracs.items() if t is not None)
        tops, n_words = _top_ngram_fracs(words_text, ns, p.min_words)
        if p.dup_ngram_char_frac is not None:
            judged = np.flatnonzero(n_words >= max(p.min_words, p.dup_ngram_n))
            dup_ngram = _dup_ngram_char_frac(words_text, p.dup_ngram_n, judged)
        else:
            dup_ngram = np.full(batch.height, np.nan)
        chars = text.str.len_chars().cast(pl.Float64).clip(lower_bound=1.0)
        cols: dict[str, pl.Series] = {}
        for kind, short in (("paragraph", "para"), ("line", "line")):
            d = _duplicate_parts(text, kind)  # type: ignore[arg-type]
            cols[f"gopher_repetition_dup_{short}_frac"] = d["dups"] / d["parts"]
            cols[f"gopher_repetition_dup_{short}_char_frac"] = (d["dup_chars"] / chars).clip(upper_bound=1.0)
            cols[f"_{short}_parts"] = d["parts"]
            cols[f"_{short}_dups"] = d["dups"]
        cols["gopher_repetition_dup_ngram_char_frac"] = pl.Series(dup_ngram).fill_nan(None)
        for n in (2, 3, 4):
            cols[f"gopher_repetition_top_{n}gram_frac"] = (
                pl.Series(tops[n]).fill_nan(None) if n in tops else pl.Series([None] * batch.height, dtype=pl.Float64)
            )
        cols["gopher_repetition_words"] = pl.Series(n_words).replace(-1, None)
        batch = batch.with_columns(
            **{k: v.cast(pl.Int64 if k.startswith("_") or k.endswith("_words") else pl.Float64) for k, v in cols.items()}
        )

        gate = pl.col("gopher_repetition_words") >= p.min_words
        checks = []
        for short, label in (("para", "paragraphs"), ("line", "lines")):
            frac_t = getattr(p, f"dup_{short}_frac")
            char_t = getattr(p, f"dup_{short}_char_frac")
            frac = pl.col(f"gopher_repetition_dup_{short}_frac")
            charf = pl.col(f"gopher_repetition_dup_{short}_char_frac")
            if frac_t is not None:
                checks.append(
                    (
                        gate & (frac > frac_t),
                        f"dup_{short}_frac",
                        pl.format(
                            "{} of {} {} repeat an earlier one ({}%, max {}%)",
                            pl.col(f"_{short}_dups"), pl.col(f"_{short}_parts"), pl.lit(label), _pct(frac), pl.lit(round(frac_t * 100)),
                        ),
                    )
                )
            if char_t is not None:
                checks.append(
                    (
                        gate & (charf > char_t),
                        f"dup_{short}_char_frac",
                        pl.format(
                            "repeated {} hold {}% of the characters (max {}%)", pl.lit(label), _pct(charf), pl.lit(round(char_t * 100))
                        ),
                    )
                )
        if p.dup_ngram_char_frac is not None:
            frac = pl.col("gopher_repetition_dup_ngram_char_frac")
            checks.append(
                (
                    gate & (frac > p.dup_ngram_char_frac),
                    "dup_ngram_char_frac",
                    pl.format(
                        "repeated {}-word passages hold {}% of the words' characters (max {}%)",
                        pl.lit(p.dup_ngram_n), _pct(frac), pl.lit(round(p.dup_ngram_char_frac * 100)),
                    ),
                )
            )
        for n in ns:
            t = p.top_ngram_fracs[n]
            frac = pl.col(f"gopher_repetition_top_{n}gram_frac")
            checks.append(
                (
                    gate & (frac > t),
                    f"top_{n}gram_frac",
                    pl.format(
                        "the most frequent {}-gram covers {}% of the characters (max {}%)", pl.lit(n), _pct(frac), pl.lit(round(t * 100))
                    ),
                )
            )
        return _with_verdict(batch, checks).drop("_para_parts", "_para_dups", "_line_parts", "_line_dups")


# -- blocklist -----------------------------------------------------------------------------------------------


@register
class Blocklist(RecordStage):
    """Records containing a blocklisted term: whole-word, case-insensitive.

    Params:
        file: a list file, one term per line (``#`` comment lines and blank lines ignored), relative to
            the config's folder. A missing file is an error before any work starts.
        terms: more terms, inline.
        fields: where to look: ``response``, ``prompt`` (system and user turns) or ``all`` (default).

    A term matches as a whole word or phrase: "ass" does not match "class", "c++" matches "c++,", a
    curly apostrophe matches a straight one, and a space in a term matches one space. The detail names
    the term and where it was found (the response is checked first). Reason: ``blocklisted_term``.
    """

    name = "blocklist"
    reasons = ("blocklisted_term",)
    score_columns = ()

    class Params(StageParams):
        """Parameters of ``blocklist``."""

        file: str | None = Field(default=None, description=(
            "a list file, one term per line (# comment lines and blank lines ignored), relative to the config's "
            "folder; a missing file is an error before any work starts"))
        terms: list[str] = Field(default_factory=list, description="more terms, inline; matched as whole words or phrases, case-insensitively")
        fields: Literal["response", "prompt", "all"] = Field("all", description="where to look: response, prompt (system and user turns) or all")

    def __init__(self, params: StageParams | None = None, context: StageContext | None = None):
        super().__init__(params, context)
        terms = list(self.params.terms)
        if self.params.file:
            terms += _read_terms(self.context.resolve(self.params.file))
        self.matcher = _TermMatcher(terms)
        if not self.matcher.terms:
            raise ValueError("blocklist has no terms: set `file:` (a list file) or `terms:`")

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Reason ``blocklisted_term`` where a term occurs as a whole word in the checked fields (response
        first); the detail names the term and the field."""
        fields = {"response": ["response"], "prompt": ["prompt"], "all": ["response", "prompt"]}[self.params.fields]
        matches = []
        for f in fields:
            matches.append((f, self.matcher.first_match(batch[f"{f}_text"])))
        batch = batch.with_columns(*[m.alias(f"_bl_{f}") for f, m in matches])
        checks = [
            (
                pl.col(f"_bl_{f}").is_not_null(),
                "blocklisted_term",
                pl.format("blocklisted term '{}' in the {}", pl.col(f"_bl_{f}"), pl.lit(f)),
            )
            for f in fields
        ]
        return _with_verdict(batch, checks).drop([f"_bl_{f}" for f in fields])


# -- refusal -------------------------------------------------------------------------------------------------

DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = (
    # AI self-reference (ShareGPT/WizardLM "unfiltered" cleaners' core list)
    "as an ai language model",
    "as a language model",
    "as a large language model",
    "as an ai model",
    "as an ai assistant",
    "as an ai,",
    "as an artificial intelligence",
    "i am an ai language model",
    "i'm an ai language model",
    "i am a language model",
    "i'm a language model",
    "i am just an ai",
    "i'm just an ai",
    "i am only an ai",
    "i'm only an ai",
    "i am an artificial intelligence",
    "i am not capable of",
    # the assistant's own identity, not a topic ("ChatGPT was developed by OpenAI" is a fact)
    "i was trained by openai",
    "i was developed by openai",
    "i was created by openai",
    "i am trained by openai",
    "i am developed by openai",
    "i'm trained by openai",
    "i am chatgpt",
    "i'm chatgpt",
    "as chatgpt",
    "openai's content policy",
    "openai's use case policy",
    "violates my content policy",
    "against my content policy",
    # knowledge cutoff / browsing
    "my knowledge cutoff",
    "my knowledge cut-off",
    "my knowledge cut off",
    "my training data only goes",
    "my last training update",
    "as of my last update",
    "as of my last knowledge update",
    "i don't have access to real-time",
    "i do not have access to real-time",
    "i don't have real-time",
    "i do not have real-time",
    "i don't have the ability to browse",
    "i do not have the ability to browse",
    "i cannot browse the internet",
    "i can't browse the internet",
    "i am unable to browse",
    "i'm unable to browse",
    # no opinions / feelings / body
    "i don't have personal opinions",
    "i do not have personal opinions",
    "i don't have personal beliefs",
    "i do not have personal beliefs",
    "i don't have personal experiences",
    "i do not have personal experiences",
    "i don't have personal preferences",
    "i do not have personal preferences",
    "i don't have feelings",
    "i do not have feelings",
    "i don't have emotions",
    "i do not have emotions",
    "i don't have a physical body",
    "i do not have a physical body",
    "i don't have a personal",
    "i do not have a personal",
    # refusals
    "i'm sorry, but i cannot",
    "i'm sorry, but i can't",
    "i am sorry, but i cannot",
    "i'm sorry, i cannot",
    "i'm sorry, i can't",
    "i am sorry, i cannot",
    "sorry, but i cannot",
    "sorry, but i can't",
    "i apologize, but i cannot",
    "i apologize, but i can't",
    "i apologize, but as an",
    "i cannot fulfill",
    "i can't fulfill",
    "i'm unable to fulfill",
    "i am unable to fulfill",
    "i cannot comply",
    "i can't comply",
    "i cannot assist with",
    "i can't assist with",
    "i cannot help with that",
    "i can't help with that",
    "i'm not able to help with",
    "i am not able to help with",
    "i must decline",
    "against my programming",
    "i am not programmed to",
    "i'm not programmed to",
    "it is not appropriate for me to",
    "it's not appropriate for me to",
    "i cannot provide a response",
    "i can't provide a response",
    "i cannot provide an answer",
    "i can't provide an answer",
    "i cannot provide a definitive answer",
    "i can't provide a definitive answer",
    "i'm unable to provide a response",
    # Alpaca (text-davinci-003) non-answers to image/design tasks
    "cannot be fulfilled by a gpt model",
    "cannot be completed by a gpt model",
    "cannot be performed by a gpt model",
    "not possible for a gpt model",
    "as a gpt model",
    "requires a visual output",
    "requires visual output",
    "requires visual creative output",
    "involves creating visual output",
    "which the model cannot generate",
    # placeholders a generator left instead of an answer (readers blank the exact "<nooutput>" forms)
    "<nooutput>",
    "<noinput>",
    "no output required",
    "no output needed",
)


@register
class Refusal(RecordStage):
    """Refusals and AI boilerplate in the response ("As an AI language model", "I'm sorry, but I cannot").

    Matching is case-insensitive, on whole words, with curly apostrophes read as straight ones, and only in
    the response's opening (its first ``opening_chars`` characters): an assistant declines or disclaims
    before it answers, and a response that is mostly the disclaimer is short enough to be all opening. The
    same words further into an answer are a topic, not a refusal ("... ChatGPT, as a large language model,
    ...", a dialogue in which a character says "I'm sorry, but I can't"). The default list
    (``DEFAULT_REFUSAL_PHRASES``) takes the unambiguous core of the lists the ShareGPT_Vicuna_unfiltered and
    WizardLM "unfiltered" cleaners used, adds the non-answers Alpaca's text-davinci-003 gave to image tasks
    ("cannot be fulfilled by a GPT model", "<noinput>", "No output required"), and leaves out their broad
    entries ("I'm sorry", "Please note", "It is important to", "OpenAI", "GPT", "content policy",
    "developed by OpenAI"), which hit ordinary answers (apology letters, dialogues, answers about GPT models).
    AI self-descriptions ("I am a language model", "I was trained by OpenAI") are flagged: they teach a
    fine-tuned model someone else's identity. Add the broad entries back with ``extra_phrases`` for ChatGPT
    data, and set ``opening_chars`` to null to match anywhere.

    On shared/data it flags 20 of 9,807 Alpaca answers (all non-answers: "<nooutput>", "<noinput>",
    "requires visual creative output"), 42 of 805 Llama-2-chat and 20 of 805 GPT-4 AlpacaEval answers, 27
    of 999 Alpaca-GPT-4 answers and 7 of 6,400 human Dolly answers, all opening with AI boilerplate ("As an
    AI, I don't have ...").

    Params:
        phrases: the phrase list (default: ``DEFAULT_REFUSAL_PHRASES``); setting it replaces the default.
        extra_phrases: phrases appended to ``phrases``.
        opening_chars: how much of the response is read (default 300 characters, two or three sentences);
            null reads all of it.

    Reason: ``refusal_or_boilerplate``; the detail names the phrase.
    Score: ``refusal_offset``, where the first phrase found starts (characters into the response; null where
    none was found in the opening plus 60 characters).
    """

    name = "refusal"
    judges_completion = True
    reasons = ("refusal_or_boilerplate",)
    score_columns = ("refusal_offset",)

    class Params(StageParams):
        """Parameters of ``refusal``."""
        phrases: list[str] = Field(
            default_factory=lambda: list(DEFAULT_REFUSAL_PHRASES), description="the phrase list; setting it replaces the default"
        )
        extra_phrases: list[str] = Field(default_factory=list, description="phrases appended to ``phrases``")
        opening_chars: int | None = Field(
            300, ge=1, description="characters of the response's opening that are read; null: the whole response"
        )

    def __init__(self, params: StageParams | None = None, context: StageContext | None = None):
        super().__init__(params, context)
        self.matcher = _TermMatcher([*self.params.phrases, *self.params.extra_phrases])

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Reason ``refusal_or_boilerplate`` when a phrase starts within the response's first ``opening_chars``;
        score ``refusal_offset`` (where it starts; null: none)."""
        opening = self.params.opening_chars
        text = batch["response_text"].fill_null("")
        if opening is not None:  # a phrase's length past the opening, so a phrase starting in it is not cut
            text = text.str.slice(0, opening + 60)
        hit = self.matcher.first_match(text)
        # where the phrase starts (characters into the response): the score the opening rule keeps by
        offset = text.str.to_lowercase().str.replace_many(_APOSTROPHES).str.find(hit, literal=True).cast(pl.Int64)
        batch = batch.with_columns(offset.alias("refusal_offset"), hit.alias("_refusal"))
        where = pl.col("refusal_offset")
        found = where.is_not_null() if opening is None else where <= opening
        checks = [(found, "refusal_or_boilerplate", pl.format("response opens with '{}'", pl.col("_refusal")))]
        return _with_verdict(batch, checks).drop("_refusal")


# -- unseeable_context ---------------------------------------------------------------------------------------

_MEDIA_NOUNS = (
    r"images?|photos?|photographs?|pictures?|pics?|paintings?|artworks?|drawings?|sketch(?:es)?|illustrations?"
    r"|videos?|clips?|footage|audio|recordings?|sound ?clips?|voice ?(?:note|message|memo)s?|podcasts?|songs?"
    r"|screenshots?|screen ?shots?|memes?|gifs?|x-rays?|scans?|charts?|graphs?|diagrams?"
    r"|histograms?|infographics?|logos?|maps?"
)
# after "this"/"the given": not "graph" (graph theory), "figure" (historical figure), "plot" (a story's),
# and not "song" (the lyrics or the title usually follow)
_POINTER_MEDIA_NOUNS = _MEDIA_NOUNS.replace("|charts?|graphs?|diagrams?", "|charts?|diagrams?").replace("|podcasts?|songs?", "|podcasts?")
_FILE_NOUNS = (
    r"files?|attachments?|documents?|docs?|pdfs?|spreadsheets?|excel (?:file|sheet|workbook)s?|worksheets?"
    r"|csv(?: file)?s?|word (?:file|document)s?|presentations?|slides?|slide ?decks?|zip(?: file)?s?|folders?"
)
_LINK_NOUNS = r"links?|urls?|web ?pages?|web ?sites?|sites?|web ?links?|hyperlinks?"
_DEICTIC = (
    r"this|these|the following|following|the given|given|the provided|the above|the below|the attached|the linked"
    r"|the uploaded|the accompanying|the enclosed|the shown|the displayed"
)
_ATTACHED = r"attached|uploaded|enclosed|accompanying|linked|embedded"

_URL = r"(?:https?://|\bwww\.)[^\s)\]>\"']+"
_MEDIA_EXT = r"\.(?:jpe?g|png|gif|svg|webp|bmp|tiff?|heic|mp4|mov|avi|mkv|webm|mp3|wav|ogg|flac|m4a)\b"
_MEDIA_HOSTS = (
    r"youtube\.com|youtu\.be|vimeo\.com|imgur\.com|flickr\.com|pinimg\.com|pinterest\.|unsplash\.com|shutterstock\.com"
    r"|pexels\.com|instagram\.com|soundcloud\.com|spotify\.com|tiktok\.com|upload\.wikimedia\.org|ibb\.co"
)
_FILE_EXT = r"\.(?:pdf|docx?|xlsx?|pptx?|csv|tsv|zip|rar|txt|json|xml|odt|ods)\b"
_FILE_HOSTS = r"docs\.google\.com|drive\.google\.com|dropbox\.com|onedrive\.live\.com|sharepoint\.com"
_MEDIA_URL = r"(?:https?://|www\.)(?:[^\s)\]>\"']*" + _MEDIA_EXT + r"|(?:[a-z0-9-]+\.)*(?:" + _MEDIA_HOSTS + r"))"
_FILE_URL = r"(?:https?://|www\.)(?:[^\s)\]>\"']*" + _FILE_EXT + r"|(?:[a-z0-9-]+\.)*(?:" + _FILE_HOSTS + r"))"
# A URL in a task about URLs or code (build a link, parse a domain, call an endpoint), or in tool-use data,
# is data, not a dependency. Checked on the text with its URLs removed (".html" in a link is not HTML).
_URL_AS_DATA = (
    r"(?:^|[^\w./-])(?:regex|regular expressions?|html|href|css|javascript|python|java|sql|code|function|script"
    r"|program|api|endpoint|http request|curl|parse|domain names?|domains?|shorten(?:ed|er)?|encode|decode"
    r"|valid(?:ate)? (?:url|link)|url (?:format|structure|encoding)|hyperlink|markdown|anchor|button|qr code|slug"
    r"|query string|redirect|toolformer|tools? access|available tools|function calls?|[a-z_]+\(url\)"
    r"|web search results|search results|github actions?|workflow|yaml|json|xml|config(?:uration)?)(?:\b|$)"
    r"|```|\$\{|\{\{"
)
# Placeholders a generator left where media, a file or a link should be: <image>, [Image provided], ![alt](...)
_PLACEHOLDER_MEDIA = (
    r"<\s*/?\s*(?:image|img|photo|picture|video|audio|figure|chart|graph|diagram|drawing|painting|screenshot)\b[^>]*>"
    r"|\[\s*(?:input:\s*)?(?:an? |the )?(?:" + _MEDIA_NOUNS + r")\b[^\]\n]{0,80}\]"
    r"|!\[[^\]\n]*\]\s*[(\[]"
    r"|(?:^|\n)\s*(?:" + _ATTACHED + r"|provided|sample|input) (?:" + _MEDIA_NOUNS + r")\.?\s*(?:$|\n)"
)
_PLACEHOLDER_FILE = (
    r"<\s*(?:file|attachment|document|pdf|spreadsheet)\b[^>]*>"
    r"|\[\s*(?:input:\s*)?(?:an? |the )?(?:file|attachment|document|pdf|spreadsheet)\b[^\]\n]{0,80}\]"
)
_PLACEHOLDER_LINK = r"<\s*(?:link|url)\b[^>]*>|\[\s*(?:input:\s*)?(?:an? |the )?(?:link|url|hyperlink)\b[^\]\n]{0,80}\]"
# Phrases that always point at something outside the text
_MEDIA_MENTION = (
    # not a count in between: "she uploaded 72 pictures" is a story, "the attached photo" a pointer
    r"\b(?:(?:" + _ATTACHED + r"|provided|shown) (?:[a-z'-]+ ){0,1}?(?:" + _MEDIA_NOUNS + r")"
    r"|(?:" + _MEDIA_NOUNS + r") (?:attached|uploaded|provided|shown|above|below|here)"
    r"|\b(?:in|from|on|of) (?:this|these) (?:image|photo|photograph|picture|pic|video|clip|recording|audio"
    r"|screenshot|painting|drawing|artwork|figure)s?"
    r"|\b(?:transcribe|listen to|watch) (?:the|this|these|the following|the given)(?: [a-z0-9'-]+){0,2}? "
    r"(?:audio|recording|video|clip|podcast|song|speech|interview|lecture|voicemail|tape)s?)\b"
)
_FILE_MENTION = (
    _PLACEHOLDER_FILE
    + r"|\b(?:" + _ATTACHED + r")\s+(?:[a-z0-9'-]+\s+){0,1}?(?:" + _FILE_NOUNS + r")\b"
    + r"|\b(?:" + _FILE_NOUNS + r")\s+(?:attached|uploaded|enclosed)\b"
    + r"|\b(?:the|this) (?:pdf|spreadsheet|excel file|csv file|zip file|attachment)s? (?:below|above|provided|given)\b"
    + r"|\bsee (?:the )?attach(?:ed|ment)\b"
)
_LINK_MENTION = _PLACEHOLDER_LINK + r"|\b(?:" + _LINK_NOUNS + r") (?:below|above|provided|attached|given)\b"
_POINTER_FILE_NOUNS = r"pdfs?|spreadsheets?|attachments?|excel (?:file|sheet)s?|csv files?"


# Literal stems (no word boundaries, so the regex engine runs them as a multi-literal search) that every
# check above needs at least one of.
_TRIGGER = (
    r"https?://|www\.|!\[|imag|img|photo|pict|pics|pic |paint|artwork|drawing|sketch|illustrat|video|clip|footage|audio"
    r"|record|sound clip|voice note|voice message|voice memo|voicemail|podcast|song|screen|meme|gif|x-ray|scan"
    r"|chart| graph|\ngraph|\[graph|<graph|infograph|diagram|histogram|figure|logo|map|file|attach|doc|pdf|sheet"
    r"|excel|csv|word file|word doc|presentation|slide|zip|folder|link|url|web|site|transcribe|listen|watch"
    r"|upload|enclosed"
)


# Tasks whose text is the object, not a pointer: the words are to be translated or their language named
DEFAULT_TEXT_TASK_PATTERN = r"\btranslat|\b(?:identify|detect|determine|which|what|name) (?:is )?(?:the )?languages?\b|\blanguage (?:of|is)\b"


def _deictic(nouns: str, gap: int = 2, in_the: bool = True) -> str:
    """"this photo", "the following stock chart", "the given (two words) video", "in the picture": the tail
    after it is group 1. The words in between must be on the same line, separated by single spaces.
    """
    lead = r"\b(?:" + _DEICTIC + r") (?:[a-z0-9'-]+ ){0," + str(gap) + r"}?"
    if in_the:
        lead = r"(?:" + lead + r"|\b(?:in|from|on) the )"
    return r"(?s)" + lead + r"(?:" + nouns + r")\b(.*)$"


@register
class UnseeableContext(RecordStage):
    """Instructions that depend on something the model cannot see: a web page, an image, a file.

    Only user turns are read (a system prompt may well mention the product's web site). Checks, in order:

    1. ``media_dependent``: an image/audio/video the text points at but does not contain: a placeholder
       (``<image>``, ``[Image provided]``, a Markdown image ``![..](..)``, an input that is just
       "Attached photo"), a link to an image/video file or host (``.jpg``, YouTube, Imgur...), "the
       attached/uploaded photo", "in the picture", "transcribe the recording", or a pointer ("this
       painting", "the given chart", "the video below") followed by at most ``max_tail_words`` words,
       i.e. not followed by a description of it.
    2. ``file_dependent``: an attachment or file: "the attached document", "the PDF below", ``<file>``,
       a link to a ``.pdf``/``.xlsx``/Google Docs file, or "this spreadsheet" with nothing after it.
    3. ``url_dependent``: any other http(s)/www link, unless the task is about the URL itself or code
       (HTML, regex, an API endpoint, a domain: ``_URL_AS_DATA``); a ``[Link to an article]``
       placeholder; "the link below" or "this website" with nothing after it.

    Tuned on shared/data/alpaca_cleaning_dev (the AlpacaDataCleaned project's removals) and the Alpaca
    rows around it. Of its 4,370 raw rows it flags 17 of the 24 the cleaners removed (all 17 that needed
    a link or an image; the other 7 ask for a poster, a graphic or a 3D model, or have an "N/A" or garbled
    answer, and ``refusal`` catches 5 of those by their "<noinput>"/"No output required" answers) and 18
    of the 4,254 they kept unchanged, 17 of which do depend on media or links the cleaners missed
    ("Attached photo", "[Image provided]", "<image attached>", www.somethinggreen.uk). On data without
    such tasks it stays quiet: 1 of 6,400 Dolly instructions, 2 of 7,673 GPTeacher tool-use prompts (URLs
    in tool-use or code tasks are data), 0 of 500 ShareGPT and 300 KTO conversations.

    Params:
        max_tail_words: how many words may follow a pointer ("this photo ...") for it to still count as
            a reference to something missing (default 6: "Describe this photo in one sentence." is one,
            "Write a caption for this photo: a dog runs on a beach at sunset" describes it).
        check_media, check_files, check_urls: turn a family of checks off (all default true).
        text_task_pattern: a regex over the lower-cased user turns; records that match are not judged,
            because the text is the object of the task, not a reference to something outside it (default:
            translation and identify-the-language tasks: "Translate into German: ... the attached photo
            ..." asks for the words, not the photo).
    """

    name = "unseeable_context"
    reasons = ("media_dependent", "file_dependent", "url_dependent")
    score_columns = ()

    class Params(StageParams):
        """Parameters of ``unseeable_context``."""
        max_tail_words: int = Field(6, ge=0, description="words that may follow a pointer ('this photo') for it to count")
        check_media: bool = Field(True, description="run the media_dependent checks")
        check_files: bool = Field(True, description="run the file_dependent checks")
        check_urls: bool = Field(True, description="run the url_dependent checks")
        text_task_pattern: str | None = Field(
            DEFAULT_TEXT_TASK_PATTERN,
            description="regex over the lower-cased user turns marking tasks whose text is data (translation, "
            "identify-the-language); matching records are not judged; null judges every record",
        )

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Reasons ``media_dependent``, ``file_dependent``, ``url_dependent`` for prompts that point at something
        the model cannot see; prompts matching ``text_task_pattern`` (the text is given) are not judged."""
        # Every check needs one of a few literal stems; the regexes run only on records that have one.
        user = batch.select(turns_text_expr(("user",)).fill_null("").str.to_lowercase()).to_series()
        judged = user.str.contains(_TRIGGER)
        if self.params.text_task_pattern:
            judged = judged & ~user.str.contains(self.params.text_task_pattern)
        idx = judged.arg_true()
        reason = pl.Series("reason", [None] * batch.height, dtype=pl.Utf8)
        detail = pl.Series("detail", [None] * batch.height, dtype=pl.Utf8)
        if len(idx):
            sub = pl.DataFrame({"_u": user.gather(idx).str.replace_many(_APOSTROPHES)})
            parts, checks = self._checks()
            # The regex results are computed once, as columns (in parallel); the when/then chains of the
            # verdict then only read them.
            sub = sub.with_columns(**parts).select(*_first_failing(checks))
            reason, detail = reason.scatter(idx, sub["reason"]), detail.scatter(idx, sub["detail"])
        return batch.with_columns(reason, detail)

    def input_files(self) -> list[str]:
        """Files the stage reads, for the run's cache key: none (``text_task_pattern`` is a regex, not a path)."""
        return []

    def _checks(self) -> tuple[dict[str, pl.Expr], list[tuple[pl.Expr, str, pl.Expr]]]:
        """The regex results over ``_u`` (the lower-cased user turns) as named expressions, and the ordered
        (condition, reason, detail) checks over those columns."""
        p = self.params
        u = pl.col("_u")
        parts: dict[str, pl.Expr] = {}

        def col(name: str, expr: pl.Expr) -> pl.Expr:
            parts[name] = expr
            return pl.col(name)

        url = col("_url", u.str.extract(r"(" + _URL + r")", 1))
        url_as_data = col("_url_as_data", u.str.replace_all(_URL, " ").str.contains(_URL_AS_DATA))
        needs_url = url.is_not_null() & ~url_as_data
        short_url = url.str.slice(0, 60)

        def pointer(nouns: str, in_the: bool = True) -> pl.Expr:
            # a short tail without a quoted title: nothing after the pointer describes or names the thing
            tail = u.str.extract(_deictic(nouns, in_the=in_the), 1).str.replace_all(_URL, " ")  # a link describes nothing
            short = tail.str.count_matches(r"[\w']+") <= p.max_tail_words
            return col(f"_pointer{len(parts)}", tail.is_not_null() & short & ~tail.str.contains("[\"\u201c\u201d\u00ab]"))

        def found(pattern: str) -> pl.Expr:
            return col(f"_found{len(parts)}", u.str.extract(r"(" + pattern + r")", 1).str.strip_chars().str.slice(0, 60))

        def contains(pattern: str) -> pl.Expr:
            return col(f"_contains{len(parts)}", u.str.contains(pattern))

        def quoted(text: pl.Expr, reason: str, what: str) -> tuple[pl.Expr, str, pl.Expr]:
            return text.is_not_null(), reason, pl.format(what + ": '{}'", text)

        checks: list[tuple[pl.Expr, str, pl.Expr]] = []
        if p.check_media:
            placeholder, mention = found(_PLACEHOLDER_MEDIA), found(_MEDIA_MENTION)
            checks += [
                quoted(placeholder, "media_dependent", "refers to media it does not contain"),
                (needs_url & contains(_MEDIA_URL), "media_dependent", pl.format("needs the image/audio/video at {}", short_url)),
                quoted(mention, "media_dependent", "refers to media it does not contain"),
                (pointer(_POINTER_MEDIA_NOUNS), "media_dependent", pl.lit("refers to an image/audio/video that is not in the prompt")),
            ]
        if p.check_files:
            mention = found(_FILE_MENTION)
            checks += [
                quoted(mention, "file_dependent", "refers to a file it does not contain"),
                (needs_url & contains(_FILE_URL), "file_dependent", pl.format("needs the file at {}", short_url)),
                (pointer(_POINTER_FILE_NOUNS), "file_dependent", pl.lit("refers to a file that is not in the prompt")),
            ]
        if p.check_urls:
            mention = found(_LINK_MENTION)
            checks += [
                (needs_url, "url_dependent", pl.format("needs the content at {}", short_url)),
                quoted(pl.when(~url_as_data).then(mention), "url_dependent", "refers to a link it does not contain"),
                (
                    pointer(_LINK_NOUNS, in_the=False) & ~url_as_data,
                    "url_dependent",
                    pl.lit("refers to a link or web page that is not in the prompt"),
                ),
            ]
        return parts, checks
