"""Word n-gram hashes, vectorized: the shingles of MinHash dedup and the evidence of decontamination.

Text is lowercased and split into runs of word characters (``\\w+``, Unicode-aware), so case,
punctuation and whitespace edits do not change the words. Each word is hashed once (64-bit, Polars'
hash); an n-gram's hash combines its words' hashes with a different odd multiplier per position (so
word order matters) and a final avalanche mix (so MinHash sees well-spread values). A document with
fewer than ``n`` words (but at least one) gets a single shingle of all its words, as datasketch and
datatrove users expect: a short record is still comparable.

Everything works on flat arrays plus offsets: ``values[offsets[d]:offsets[d + 1]]`` belong to document
``d``. No Python loop runs per word or per n-gram.
"""

from __future__ import annotations

import numpy as np
import polars as pl

WORD_PATTERN = r"\w+"
_SEED = 0x5EED

# one odd 64-bit multiplier per position in the n-gram (fixed: hashes are stable across runs and machines)
_MULTIPLIERS = np.random.default_rng(20261123).integers(1 << 62, 1 << 63, size=64, dtype=np.uint64) | np.uint64(1)


def words(text: pl.Series | pl.Expr):
    """The lowercased words of each text, as a List(Utf8) column or expression."""
    return text.str.to_lowercase().str.extract_all(WORD_PATTERN)


def word_hashes(text: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash per word, int64 offsets of length len(text) + 1) for a Series of strings."""
    w = words(text.fill_null(""))
    lengths = w.list.len().fill_null(0).to_numpy().astype(np.int64)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = w.explode().drop_nulls() if offsets[-1] else pl.Series([], dtype=pl.Utf8)
    hashes = flat.hash(seed=_SEED).to_numpy().astype(np.uint64, copy=False)
    return hashes, offsets


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64's finalizer: every input bit affects every output bit
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def ngram_hashes(hashes: np.ndarray, offsets: np.ndarray, n: int, short_docs: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes of every word n-gram, per document.

    Returns ``(ngram_hash uint64, ngram_offsets int64, start int64)``: document ``d``'s n-grams are
    ``ngram_hash[ngram_offsets[d]:ngram_offsets[d + 1]]`` and ``start`` is each n-gram's first word,
    counted within its document. With ``short_docs``, a document of 1 to n-1 words gets one n-gram of
    all its words (``start`` 0); otherwise it gets none.
    """
    if not 1 <= n <= _MULTIPLIERS.size:
        raise ValueError(f"n-gram size must be between 1 and {_MULTIPLIERS.size}, got {n}")
    hashes = np.asarray(hashes, dtype=np.uint64)
    total = hashes.size
    lengths = np.diff(offsets)
    n_docs = lengths.size
    acc = np.zeros(total, dtype=np.uint64)
    short = (lengths > 0) & (lengths < n) if short_docs else np.zeros(n_docs, dtype=bool)
    short_value = np.zeros(n_docs, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            if k >= total:
                break
            acc[: total - k] += hashes[k:] * _MULTIPLIERS[k]
            done = short & (lengths == k + 1)
            if done.any():
                short_value[done] = acc[offsets[:-1][done]]
        # n-grams starting at i are valid when i + n <= end of the document
        counts = np.where(lengths >= n, lengths - n + 1, 0)
        counts = np.where(short, 1, counts)
        ngram_offsets = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(counts, out=ngram_offsets[1:])
        doc = np.repeat(np.arange(n_docs, dtype=np.int64), counts)
        start = np.arange(ngram_offsets[-1], dtype=np.int64) - ngram_offsets[:-1][doc]
        pos = offsets[:-1][doc] + start
        out = acc[pos] if total else np.zeros(0, dtype=np.uint64)
        if short.any():
            out[ngram_offsets[:-1][short]] = short_value[short]
        out = _mix(out.copy())
    return out, ngram_offsets, start


def char_ngram_hashes(text: pl.Series, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every character n-gram, per document: ``(uint64 hashes, int64 offsets)``.

    Text is normalized like the word shingles see it: lowercased, every run of non-word characters
    (punctuation, whitespace) collapsed to one space, ends stripped; so "Hello,  World!" and
    "hello world" have the same n-grams. Characters are Unicode code points (UTF-8 decoded here, not
    bytes). A document of 1 to n-1 characters gets one n-gram of all of them; an empty one gets none.
    """
    norm = text.fill_null("").str.to_lowercase().str.replace_all(r"\W+", " ").str.strip_chars()
    arr = norm.to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string: int64 offsets + one data buffer
    _, off_buf, data_buf = arr.buffers()
    byte_off = np.frombuffer(off_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8)[byte_off[0] : byte_off[-1]] if data_buf is not None else np.zeros(0, np.uint8)
    byte_off = byte_off - byte_off[0]
    # a code point starts at every byte that is not a UTF-8 continuation byte (10xxxxxx)
    is_start = (data & 0xC0) != 0x80
    starts = np.flatnonzero(is_start)
    char_len = np.diff(np.append(starts, data.size))
    # a character's value: its (at most 4) UTF-8 bytes packed into one integer, then mixed
    value = data[starts].astype(np.uint64)
    for k in range(1, 4):
        more = char_len > k
        value[more] |= data[starts[more] + k].astype(np.uint64) << np.uint64(8 * k)
    chars_before = np.zeros(data.size + 1, dtype=np.int64)
    np.cumsum(is_start, out=chars_before[1:])
    offsets = chars_before[byte_off]
    hashes, ngram_offsets, _ = ngram_hashes(_mix(value), offsets, n)
    return hashes, ngram_offsets
