"""Word and character n-gram hashes, compiled: the shingles of MinHash dedup and the evidence of decontamination.

Text is lowercased (Polars, Unicode-aware) and split into runs of word characters: exactly the words of
``\\w+`` (:func:`words`), so case, punctuation and whitespace edits do not change them. Each word is
hashed once (FNV-1a over its UTF-8 bytes, then splitmix64's finalizer); an n-gram's hash combines its
words' hashes with a different odd multiplier per position (so word order matters) and the same final
mix (so MinHash sees well-spread values). A document with fewer than ``n`` words (but at least one) gets
a single shingle of all its words, as datasketch and datatrove users expect: a short record is still
comparable. Hashes depend on nothing but the text: the same on every run and machine.

Everything works on flat arrays plus offsets: ``values[offsets[d]:offsets[d + 1]]`` belong to document
``d``. Tokenizing and n-gram hashing run in numba kernels, parallel over documents (compiled on first
use, cached on disk: :func:`compile_kernels`); the word-character test is a table of all code points
that Polars' regex engine builds once, so the kernel's words are the regex's words. Tiny inputs (under
4 kB, e.g. one word hashed at import time) take a pure-Python path with the same hash.
"""

from __future__ import annotations

import functools

import numpy as np
import polars as pl

WORD_PATTERN = r"\w+"
_SEED = 0x5EED
_FNV_OFFSET = 0xCBF29CE484222325 ^ _SEED
_FNV_PRIME = 0x100000001B3
_M64 = (1 << 64) - 1
_SMALL_BYTES = 4096  # below this, no compiled code is needed (or loaded)

# one odd 64-bit multiplier per position in the n-gram (fixed: hashes are stable across runs and machines)
_MULTIPLIERS = np.random.default_rng(20261123).integers(1 << 62, 1 << 63, size=64, dtype=np.uint64) | np.uint64(1)


def words(text: pl.Series | pl.Expr):
    """The lowercased words of each text, as a List(Utf8) column or expression."""
    return text.str.to_lowercase().str.extract_all(WORD_PATTERN)


# ---------------------------------------------------------------------------------------------------------
# compiled kernels
# ---------------------------------------------------------------------------------------------------------
def compile_kernels(namespace: dict, *fns):
    """numba-compile module-level kernels: parallel, no GIL, machine code cached on disk.

    Kernels loop over documents with ``prange``, a name this sets to ``numba.prange`` in ``namespace``
    (the kernels' module globals; it is plain ``range`` until then, so numba is imported only when a
    kernel is first needed). The cache lives next to the module or, where that is read-only, in numba's
    user cache dir (``NUMBA_CACHE_DIR``); with neither writable, kernels compile in every process.
    """
    import numba

    namespace["prange"] = numba.prange
    out = []
    for fn in fns:
        try:
            out.append(numba.njit(parallel=True, nogil=True, cache=True)(fn))
        except RuntimeError:  # numba found no writable cache location
            out.append(numba.njit(parallel=True, nogil=True)(fn))
    return out


prange = range  # numba.prange once compiled


def _mix64(x):
    # splitmix64's finalizer: every input bit affects every output bit
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _char(data, pos):
    # (code point, byte length) of the UTF-8 character at data[pos] (the text is valid UTF-8)
    b = data[pos]
    if b < 0x80:
        return np.int64(b), 1
    if b < 0xE0:
        n, cp = 2, np.int64(b & 0x1F)
    elif b < 0xF0:
        n, cp = 3, np.int64(b & 0x0F)
    else:
        n, cp = 4, np.int64(b & 0x07)
    for j in range(pos + 1, pos + n):
        cp = (cp << 6) | (data[j] & 0x3F)
    return cp, n


def _word_at(data, pos, is_word):
    # (is the character at data[pos] a word character, its byte length): ASCII by table, else decoded
    b = data[pos]
    if b < 0x80:
        return is_word[b], 1
    cp, n = _char_nb(data, pos)
    return is_word[cp], n


def _count_kernel(data, byte_off, is_word, counts):
    # counts[d] = number of words of document d (branch-free: a word ends where a non-word char follows)
    for d in prange(byte_off.size - 1):
        pos, end = byte_off[d], byte_off[d + 1]
        k = 0
        in_word = False
        while pos < end:
            w, n = _word_at_nb(data, pos, is_word)
            pos += n
            k += in_word and not w
            in_word = w
        counts[d] = k + in_word


def _hash_kernel(data, byte_off, is_word, out_off, out):
    # out[out_off[d]:out_off[d + 1]] = the hashes of document d's words (see _py_word_hash)
    for d in prange(byte_off.size - 1):
        pos, end = byte_off[d], byte_off[d + 1]
        k = out_off[d]
        in_word = False
        h = np.uint64(0)
        while pos < end:
            w, n = _word_at_nb(data, pos, is_word)
            if w:
                if not in_word:
                    h = np.uint64(_FNV_OFFSET)
                for j in range(pos, pos + n):
                    h = (h ^ np.uint64(data[j])) * np.uint64(_FNV_PRIME)
            elif in_word:
                out[k] = _mix_nb(h)
                k += 1
            in_word = w
            pos += n
        if in_word:
            out[k] = _mix_nb(h)


def _ngram_kernel(hashes, offsets, n, short_docs, mult, ngram_offsets, out, start):
    for d in prange(offsets.size - 1):
        lo, length, o = offsets[d], offsets[d + 1] - offsets[d], ngram_offsets[d]
        if length >= n:
            for s in range(length - n + 1):
                acc = np.uint64(0)
                for k in range(n):
                    acc += hashes[lo + s + k] * mult[k]
                out[o + s] = _mix_nb(acc)
                start[o + s] = s
        elif short_docs and length > 0:
            acc = np.uint64(0)
            for k in range(length):
                acc += hashes[lo + k] * mult[k]
            out[o] = _mix_nb(acc)
            start[o] = 0


def _char_count_kernel(data, byte_off, is_word, counts):
    # counts[d] = characters of document d once normalized: word characters, one space between their runs
    for d in prange(byte_off.size - 1):
        pos, end = byte_off[d], byte_off[d + 1]
        k = 0
        started = False
        gap = False
        while pos < end:
            w, n = _word_at_nb(data, pos, is_word)
            if w:
                k += 1 + (gap and started)
                started = True
                gap = False
            else:
                gap = True
            pos += n
        counts[d] = k


def _char_value_kernel(data, byte_off, is_word, out_off, out):
    # out[out_off[d]:out_off[d + 1]] = mixed values of document d's normalized characters (a character's
    # value: its UTF-8 bytes packed little-endian into one integer; the separator is a space, 0x20)
    for d in prange(byte_off.size - 1):
        pos, end = byte_off[d], byte_off[d + 1]
        k = out_off[d]
        started = False
        gap = False
        while pos < end:
            w, n = _word_at_nb(data, pos, is_word)
            if w:
                if gap and started:
                    out[k] = _mix_nb(np.uint64(32))
                    k += 1
                v = np.uint64(0)
                for j in range(n):
                    v |= np.uint64(data[pos + j]) << np.uint64(8 * j)
                out[k] = _mix_nb(v)
                k += 1
                started = True
                gap = False
            else:
                gap = True
            pos += n


def _newline_count_kernel(data, byte_off, counts):
    for d in prange(byte_off.size - 1):
        k = 0
        for pos in range(byte_off[d], byte_off[d + 1]):
            k += data[pos] == 10
        counts[d] = k


def _line_hash_kernel(data, byte_off, is_word, out_off, out, counts):
    # out[out_off[d]:out_off[d] + counts[d]] = the hashes of document d's lines that have a word character:
    # FNV-1a over the line's word characters, one separator byte between runs of them (so a line is hashed
    # as its words joined by single spaces: punctuation, whitespace and the ends do not count)
    for d in prange(byte_off.size - 1):
        pos, end = byte_off[d], byte_off[d + 1]
        k = out_off[d]
        h = np.uint64(_FNV_OFFSET)
        has_word = False
        gap = False
        while pos < end:
            b = data[pos]
            if b == 10:  # "\n": the line ends
                if has_word:
                    out[k] = _mix_nb(h)
                    k += 1
                h = np.uint64(_FNV_OFFSET)
                has_word = False
                gap = False
                pos += 1
                continue
            w, n = _word_at_nb(data, pos, is_word)
            if w:
                if gap and has_word:
                    h = (h ^ np.uint64(32)) * np.uint64(_FNV_PRIME)
                gap = False
                for j in range(pos, pos + n):
                    h = (h ^ np.uint64(data[j])) * np.uint64(_FNV_PRIME)
                has_word = True
            else:
                gap = True
            pos += n
        if has_word:
            out[k] = _mix_nb(h)
            k += 1
        counts[d] = k - out_off[d]


_mix_nb, _char_nb, _word_at_nb = _mix64, _char, _word_at  # the kernels' helpers: compiled by _kernels() first


@functools.cache
def _kernels():
    import numba

    globals()["_mix_nb"] = numba.njit(cache=True, inline="always")(_mix64)
    globals()["_char_nb"] = numba.njit(cache=True)(_char)
    globals()["_word_at_nb"] = numba.njit(cache=True, inline="always")(_word_at)
    return compile_kernels(globals(), _count_kernel, _hash_kernel, _ngram_kernel)


@functools.cache
def _line_kernels():
    _kernels()  # compiles the helpers first
    return compile_kernels(globals(), _newline_count_kernel, _line_hash_kernel, _char_count_kernel, _char_value_kernel)


@functools.cache
def word_char_table() -> np.ndarray:
    """``table[code point]``: is it a word character (``\\w``) for Polars' regex engine?"""
    cps = np.concatenate([np.arange(1, 0xD800), np.arange(0xE000, 0x110000)]).astype("<u4")  # no surrogates
    marked = pl.Series([cps.tobytes().decode("utf-32-le")]).str.replace_all(r"\W", "\x00").item()
    table = np.zeros(0x110000, dtype=np.bool_)
    table[cps] = np.frombuffer(marked.encode("utf-32-le"), dtype="<u4") != 0
    return table


# ---------------------------------------------------------------------------------------------------------
# words
# ---------------------------------------------------------------------------------------------------------
def _utf8(text: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes of all texts, int64 byte offsets) of a Series without nulls."""
    arr = text.to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string: int64 offsets + one data buffer
    _, off_buf, data_buf = arr.buffers()
    off = np.frombuffer(off_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8)[off[0] : off[-1]] if data_buf is not None else np.zeros(0, np.uint8)
    return data, off - off[0]


def _py_word_hash(word: str) -> int:
    """A word's hash: FNV-1a (64-bit, seeded) over its UTF-8 bytes, then splitmix64's finalizer."""
    h = _FNV_OFFSET
    for b in word.encode():
        h = ((h ^ b) * _FNV_PRIME) & _M64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


def word_hashes(text: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash per word, int64 offsets of length len(text) + 1) for a Series of strings."""
    lower = text.fill_null("").str.to_lowercase()
    data, byte_off = _utf8(lower)
    n = byte_off.size - 1
    offsets = np.zeros(n + 1, dtype=np.int64)
    if data.size < _SMALL_BYTES:
        w = lower.str.extract_all(WORD_PATTERN)
        np.cumsum(w.list.len().fill_null(0).to_numpy(), out=offsets[1:])
        flat = w.explode().drop_nulls().to_list() if offsets[-1] else []
        return np.array([_py_word_hash(x) for x in flat], dtype=np.uint64), offsets
    count, hash_words, _ = _kernels()
    table = word_char_table()
    count(data, byte_off, table, offsets[1:])
    np.cumsum(offsets, out=offsets)
    hashes = np.empty(offsets[-1], dtype=np.uint64)
    hash_words(data, byte_off, table, offsets, hashes)
    return hashes, offsets


# ---------------------------------------------------------------------------------------------------------
# n-grams
# ---------------------------------------------------------------------------------------------------------
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array, in place."""
    with np.errstate(over="ignore"):
        return _mix64(x)


def ngram_hashes(hashes: np.ndarray, offsets: np.ndarray, n: int, short_docs: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes of every word n-gram, per document.

    Returns ``(ngram_hash uint64, ngram_offsets int64, start int64)``: document ``d``'s n-grams are
    ``ngram_hash[ngram_offsets[d]:ngram_offsets[d + 1]]`` and ``start`` is each n-gram's first word,
    counted within its document. With ``short_docs``, a document of 1 to n-1 words gets one n-gram of
    all its words (``start`` 0); otherwise it gets none. An n-gram's hash is
    ``mix(sum_k hash[word k] * M_k mod 2**64)``.
    """
    if not 1 <= n <= _MULTIPLIERS.size:
        raise ValueError(f"n-gram size must be between 1 and {_MULTIPLIERS.size}, got {n}")
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    counts = np.where(lengths >= n, lengths - n + 1, 0)
    if short_docs:
        counts = np.where((lengths > 0) & (lengths < n), 1, counts)
    ngram_offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(counts, out=ngram_offsets[1:])
    out = np.empty(ngram_offsets[-1], dtype=np.uint64)
    start = np.empty(ngram_offsets[-1], dtype=np.int64)
    if out.size:
        _kernels()[2](hashes, offsets, n, short_docs, _MULTIPLIERS, ngram_offsets, out, start)
    return out, ngram_offsets, start


def char_ngram_hashes(text: pl.Series, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every character n-gram, per document: ``(uint64 hashes, int64 offsets)``.

    Text is normalized like the word shingles see it: lowercased, every run of non-word characters
    (punctuation, whitespace) collapsed to one space, ends stripped; so "Hello,  World!" and
    "hello world" have the same n-grams. Characters are Unicode code points (UTF-8 decoded here, not
    bytes). A document of 1 to n-1 characters gets one n-gram of all of them; an empty one gets none.
    Normalizing and decoding run in compiled code (numba, parallel over documents), without a regex pass
    or per-byte arrays.
    """
    lower = text.fill_null("").str.to_lowercase()
    data, byte_off = _utf8(lower)
    docs = byte_off.size - 1
    offsets = np.zeros(docs + 1, dtype=np.int64)
    if docs:
        _, _, count_chars, char_values = _line_kernels()
        table = word_char_table()
        count_chars(data, byte_off, table, offsets[1:])
        np.cumsum(offsets, out=offsets)
        values = np.empty(offsets[-1], dtype=np.uint64)
        char_values(data, byte_off, table, offsets, values)
    else:
        values = np.zeros(0, dtype=np.uint64)
    hashes, ngram_offsets, _ = ngram_hashes(values, offsets, n)
    return hashes, ngram_offsets


def line_hashes(text: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of each text's lines, per document: ``(uint64 hashes, int64 offsets)``.

    A line is compared as the shingles see it: lowercased, its words (``\\w+`` runs) joined by single spaces,
    so punctuation, whitespace and case do not make two lines differ. Lines without a word character get
    no hash. Used to find boilerplate (lines that many records share)."""
    lower = text.fill_null("").str.to_lowercase()
    data, byte_off = _utf8(lower)
    n = byte_off.size - 1
    count_newlines, hash_lines, _, _ = _line_kernels()
    per_doc = np.zeros(n, dtype=np.int64)
    if n:
        count_newlines(data, byte_off, per_doc)
    room = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_doc + 1, out=room[1:])  # lines per document, at most
    out = np.empty(room[-1], dtype=np.uint64)
    counts = np.zeros(n, dtype=np.int64)
    if n:
        hash_lines(data, byte_off, word_char_table(), room, out, counts)
    keep = np.zeros(room[-1], dtype=bool)
    starts = np.repeat(room[:-1], counts)
    keep[starts + (np.arange(starts.size) - np.repeat(np.cumsum(counts) - counts, counts))] = True
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return out[keep], offsets
