"""MinHash near-duplicate detection: LSH proposes pairs, every verdict is an exact Jaccard to the kept record.

**What the threshold means.** A record is rejected as ``near_duplicate`` only for a kept record (its
representative, named in ``duplicate_of``) whose *exact* Jaccard to it is at or above ``threshold``: the
Jaccard of the two records' shingle sets (5-character shingles by default) of the text compared, after the
boilerplate discount. ``detail`` gives that number. There are no chains: the representative is the record
the reject was compared with, never a third record reached through it.

``prepare(batch)`` keeps the small columns and the text of ``fields`` (signatures need the whole run's
boilerplate lines first, and verification needs the text of candidate pairs: keeping it costs memory of the
order of the text itself, about 0.7 GB for a million Alpaca-sized records, and saves reading the
workspace back). ``decide``:

1. **Boilerplate discount.** Lines (compared lowercased, their words joined by single spaces) that at least
   ``max(boilerplate_min_records, boilerplate_share * records)`` records contain (50 and 0.1 % by default) are
   boilerplate: tool headers, system prompts, templates. They are removed from the text before shingling, so
   templated records are compared on what differs (GPTeacher-Toolformer's 7,673 rows share ~10 headers of
   ~300 characters; compared whole, any two questions under one header look alike). A record made only of
   boilerplate keeps its whole text: it merges only with records equal to it as a whole, not with its template.
2. **Signatures and LSH.** Shingles (word or character n-grams, :mod:`curate.stages.ngrams`) are min-reduced
   into MinHash signatures of ``num_perm`` 32-bit slots in compiled code (numba, parallel over documents),
   50,000 records at a time. The signature is cut into ``bands`` bands of ``rows`` slots (datasketch's
   scheme); records whose band hashes agree in some band are candidate pairs. A pair of Jaccard ``s`` becomes
   a candidate with probability ``1 - (1 - s**rows)**bands``. By default the split is chosen for recall: the
   ``bands * rows <= num_perm`` split with ``P(candidate | s = threshold) >= 0.99`` and the fewest false
   candidates (17 bands of 4 rows at 0.7: 99.1 % at 0.7; 16 x 6 at 0.8, where datasketch's 9 x 13 catches
   about 40 %). A bucket of m records is not expanded into m (m - 1) / 2 pairs: each member is paired with the
   first ``LINKS_PER_MEMBER`` (8) members of its bucket, in the keep policy's order (best first), so the
   likely representatives are compared with everyone.
3. **Exact verification.** Candidates whose MinHash estimate is within ``margin_sigmas`` (3) standard errors
   below the threshold, or at least ``threshold - 0.2`` (for the report), are checked exactly: both records'
   shingle sets are rebuilt, sorted and intersected in compiled code, 10,000 pairs at a time. A pair is
   *similar* when its exact Jaccard is ``>= threshold`` and, with ``fields: all``, its two responses alone
   (discounted; as written where nothing is left, so "Positive" and "Negative" stay two answers) have an
   exact Jaccard (5-character shingles) ``>= response_similarity`` (0.3): a different task on the
   same passage (same long input, another instruction and answer) is not a duplicate, unless
   ``passage_level: true`` asks for passage-level dedup. Such a pair is returned as a split link: both
   records are kept, in one split (a test question on a passage seen in training is not held out).
4. **Clusters.** ``linkage: star`` (default): records are visited best first by the ``keep`` policy; an
   unclaimed record is kept and claims its unclaimed similar records, which are rejected naming it. So every
   reject is similar to the record it names, and no two kept records are similar.
   ``linkage: union_find`` gives connected components instead (a reject may then be below the threshold to
   its representative; ``detail`` still gives the exact number). ``action: group`` rejects nothing and only
   keeps each cluster in one split. Verified pairs scoring ``>= threshold - 0.2`` (at most 500,000) go to the
   report with their exact Jaccard.

**Permutations.** Slot ``p`` of a signature is ``min over shingles x of (a_p * x + b_p) mod 2**64 >> 32``
with ``x`` the shingle's 64-bit hash folded to 32 bits and ``a_p``, ``b_p`` random 64-bit constants from
``seed``: Dietzfelbinger's multiply-add-shift (datasketch and datatrove use ``(a x + b) mod (2**61 - 1)``).

**Records without shingles** (no word characters in the compared text) are never anyone's duplicate.

**Defaults** (5-character shingles, threshold 0.7, response Jaccard 0.3) are chosen on
``bench/verdict_sets/dedup.py``: one edited copy of each real Alpaca row (typos, chatty prefix/suffix,
markdown, reordering, reworded instruction, changed numbers, case/punctuation/whitespace, 5 % words replaced
or swapped) against hard negatives (another teacher's answer, other tasks on one passage in Alpaca and
AdversarialQA, GPTeacher-Toolformer's shared headers, a shared system prompt). Tuned on Alpaca rows 0-4,999,
checked on rows 5,000+: at least 0.98 of the copies of every kind whose exact Jaccard is >= 0.7 merge. Below
0.7, records under one template start to merge across subjects ("history of the Taj Mahal" / "of the
iPhone" at 0.61); a response threshold above 0.3 starts to lose edited copies. 5-word shingles
(``shingle: word``) are the faster near-verbatim setting.

**quality** (for ``keep: quality``): :func:`curate.stages.clusters.quality_expr`, shared by the dedup stages.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curate.stages import GlobalDecision, GlobalStage, StageParams, empty_rejects, register
from curate.stages.clusters import decide_clusters, priority_order, quality_expr
from curate.stages.ngrams import char_ngram_hashes, compile_kernels, line_hashes, ngram_hashes, word_hashes

LINKS_PER_MEMBER = 8  # each bucket member is paired with this many first members of the bucket
REPORT_MARGIN = 0.2  # candidate pairs down to threshold - this go to the report
REPORT_MAX_PAIRS = 500_000
DEFAULT_NGRAM = {"word": 5, "char": 5}
TARGET_RECALL = 0.99


# ---------------------------------------------------------------------------------------------------------
# bands and rows
# ---------------------------------------------------------------------------------------------------------
def candidate_probability(s: float | np.ndarray, bands: int, rows: int):
    """P(a pair of Jaccard ``s`` shares at least one band bucket) = 1 - (1 - s**rows)**bands."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def choose_bands_rows(num_perm: int, threshold: float, recall: float = TARGET_RECALL) -> tuple[int, int]:
    """The ``(bands, rows)`` with ``bands * rows <= num_perm`` and ``P(candidate | threshold) >= recall``
    that has the fewest false candidates (smallest integral of the candidate curve over [0, threshold]).

    If no split reaches ``recall``, the one with the highest recall at the threshold.
    """
    grid = np.linspace(0.0, threshold, 201)
    best, best_cost = None, math.inf
    fallback, fallback_p = (num_perm, 1), -1.0
    for rows in range(1, num_perm + 1):
        p_band = threshold**rows
        if p_band >= 1.0:
            bands = 1
        elif p_band <= 0.0:
            continue
        else:  # the fewest bands that reach the recall: more bands only add false candidates
            bands = max(1, math.ceil(math.log1p(-recall) / math.log1p(-p_band)))
        if bands * rows > num_perm:
            bands = num_perm // rows
            p = float(candidate_probability(threshold, bands, rows))
            if p > fallback_p:
                fallback, fallback_p = (bands, rows), p
            continue
        cost = float(candidate_probability(grid, bands, rows).mean()) * threshold  # ~ the integral
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best if best is not None else fallback


# ---------------------------------------------------------------------------------------------------------
# compiled kernels (numba: compiled on first use, cached on disk; see ngrams.compile_kernels)
# ---------------------------------------------------------------------------------------------------------
def _signature_kernel(shingles, offsets, a, b, out):
    n_docs = offsets.size - 1
    n_perm = a.size
    for d in prange(n_docs):
        row = np.full(n_perm, np.uint64(0xFFFFFFFF), dtype=np.uint64)
        for i in range(offsets[d], offsets[d + 1]):
            h = shingles[i]
            x = (h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)  # fold to 32 bits
            for p in range(n_perm):
                v = (a[p] * x + b[p]) >> np.uint64(32)
                if v < row[p]:
                    row[p] = v
        for p in range(n_perm):
            out[d, p] = np.uint32(row[p])


def _band_key_kernel(sig, bands, rows, out):
    # out[j, d]: a 64-bit hash of band j of document d (a collision only makes a false candidate)
    n = sig.shape[0]
    for d in prange(n):
        for j in range(bands):
            h = np.uint64(0x9E3779B97F4A7C15) * np.uint64(j + 1)
            for k in range(j * rows, (j + 1) * rows):
                h = (h ^ np.uint64(sig[d, k])) * np.uint64(0xFF51AFD7ED558CCD)
                h ^= h >> np.uint64(32)
            out[j, d] = h


def _similarity_kernel(sig, ia, ib, out):
    n_perm = sig.shape[1]
    for i in prange(ia.size):
        a, b = ia[i], ib[i]
        eq = 0
        for p in range(n_perm):
            eq += sig[a, p] == sig[b, p]
        out[i] = eq / n_perm


def _sort_unique_kernel(values, offsets, out, counts):
    # out[offsets[d]:offsets[d] + counts[d]] = the distinct values of document d, sorted
    for d in prange(offsets.size - 1):
        lo, hi = offsets[d], offsets[d + 1]
        if hi == lo:
            counts[d] = 0
            continue
        seg = np.sort(values[lo:hi])
        k = lo
        out[k] = seg[0]
        for i in range(1, seg.size):
            if seg[i] != seg[i - 1]:
                k += 1
                out[k] = seg[i]
        counts[d] = k - lo + 1


def _compact_kernel(src, offsets, counts, new_offsets, dst):
    for d in prange(offsets.size - 1):
        dst[new_offsets[d] : new_offsets[d] + counts[d]] = src[offsets[d] : offsets[d] + counts[d]]


def _overlap_kernel(values, offsets, ia, ib, inter, size_a, size_b):
    # |set a & set b| by a merge of two sorted, duplicate-free segments
    for i in prange(ia.size):
        a0, a1 = offsets[ia[i]], offsets[ia[i] + 1]
        b0, b1 = offsets[ib[i]], offsets[ib[i] + 1]
        size_a[i] = a1 - a0
        size_b[i] = b1 - b0
        k = 0
        while a0 < a1 and b0 < b1:
            va, vb = values[a0], values[b0]
            if va == vb:
                k += 1
                a0 += 1
                b0 += 1
            elif va < vb:
                a0 += 1
            else:
                b0 += 1
        inter[i] = k


prange = range  # numba.prange once compiled (numba is imported only when a kernel is first needed)


@functools.cache
def _kernels():
    return compile_kernels(
        globals(), _signature_kernel, _band_key_kernel, _similarity_kernel, _sort_unique_kernel, _overlap_kernel, _compact_kernel
    )


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The multiply-add-shift constants ``(a, b)``, uint64 each, of the ``num_perm`` permutations."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
    b = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
    return a, b


def signatures(shingles: np.ndarray, offsets: np.ndarray, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """MinHash signatures, uint32 of shape ``(n_docs, num_perm)``, of flat shingle hashes + offsets.

    A document without shingles gets all slots 0xFFFFFFFF.
    """
    a, b = permutations(num_perm, seed)
    out = np.empty((offsets.size - 1, num_perm), dtype=np.uint32)
    if out.shape[0]:
        _kernels()[0](np.ascontiguousarray(shingles, dtype=np.uint64), np.ascontiguousarray(offsets, dtype=np.int64), a, b, out)
    return out


def estimated_jaccard(sig: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Share of equal slots of rows ``ia[i]`` and ``ib[i]`` of ``sig`` (float64)."""
    out = np.empty(ia.size, dtype=np.float64)
    if ia.size:
        _kernels()[2](sig, np.ascontiguousarray(ia, dtype=np.int64), np.ascontiguousarray(ib, dtype=np.int64), out)
    return out


def _unique_sorted(codes: np.ndarray) -> np.ndarray:
    # sort + adjacent compare: several times faster than np.unique's hash table on a million int64
    codes = np.sort(codes)
    keep = np.ones(codes.size, dtype=bool)
    keep[1:] = codes[1:] != codes[:-1]
    return codes[keep]


def candidate_pairs(sig: np.ndarray, bands: int, rows: int, links: int = LINKS_PER_MEMBER) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs ``(i, j)``, ``i < j``, that share a band bucket, each member linked to the first
    ``links`` members of its bucket. Unique pairs, sorted."""
    n = sig.shape[0]
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.empty((bands, n), dtype=np.uint64)
    _kernels()[1](sig, bands, rows, keys)
    pos = np.arange(n, dtype=np.int64)
    found, parts, pending = np.zeros(0, dtype=np.int64), [], 0
    for j in range(bands):
        order = np.argsort(keys[j], kind="stable")  # stable: within a bucket, input order
        sk = keys[j][order]
        new = np.ones(n, dtype=bool)
        new[1:] = sk[1:] != sk[:-1]
        run_start = np.maximum.accumulate(np.where(new, pos, 0))
        rank = pos - run_start
        members = np.flatnonzero(rank > 0)
        for m in range(links):
            members = members[rank[members] > m]
            if members.size == 0:
                break
            # pair code i * n + j with i < j (the earlier member comes first in a stable sort)
            parts.append(order[run_start[members] + m] * n + order[members])
            pending += members.size
        if pending > 4 * n:  # drop pairs repeated across bands now and then: memory stays O(links * n)
            found, parts, pending = _unique_sorted(np.concatenate([found, *parts])), [], 0
    found = _unique_sorted(np.concatenate([found, *parts]))
    return found // n, found % n


# ---------------------------------------------------------------------------------------------------------
# exact verification
# ---------------------------------------------------------------------------------------------------------
def shingle_sets(shingles: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's shingle hashes as a set: sorted and without repeats, ``(values, offsets)``."""
    shingles = np.ascontiguousarray(shingles, dtype=np.uint64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    n = offsets.size - 1
    counts = np.zeros(n, dtype=np.int64)
    new_offsets = np.zeros(n + 1, dtype=np.int64)
    if shingles.size == 0:
        return shingles, new_offsets
    k = _kernels()
    work = np.empty_like(shingles)
    k[3](shingles, offsets, work, counts)
    np.cumsum(counts, out=new_offsets[1:])
    values = np.empty(new_offsets[-1], dtype=np.uint64)
    k[5](work, offsets, counts, new_offsets, values)
    return values, new_offsets


def set_overlap(values: np.ndarray, offsets: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(|A & B|, |A|, |B|)`` for the sets of documents ``ia[i]`` and ``ib[i]`` (from :func:`shingle_sets`)."""
    n = ia.size
    inter, size_a, size_b = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    if n:
        _kernels()[4](values, offsets, np.ascontiguousarray(ia, dtype=np.int64), np.ascontiguousarray(ib, dtype=np.int64), inter, size_a, size_b)
    return inter, size_a, size_b


def jaccard(inter: np.ndarray, size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """|A & B| / |A | B| (1.0 for two empty sets)."""
    union = size_a + size_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


# ---------------------------------------------------------------------------------------------------------
# boilerplate
# ---------------------------------------------------------------------------------------------------------
def discount_boilerplate(parts: list[pl.Series], min_records: int, share: float) -> tuple[list[pl.Series], dict]:
    """Remove the lines that many records share (tool headers, system prompts, templates) from ``parts``.

    ``parts`` are aligned text columns of the same records (e.g. prompt and response). A line (compared
    lowercased, its words joined by single spaces, as the shingles see it: :func:`line_hashes`) is
    *boilerplate* when at least ``max(min_records, share * records)`` records contain it, in any part.
    Boilerplate lines are removed from every part of every record that has some other line; a record made
    only of boilerplate keeps all its text, so it is compared on everything and merges only with records like
    it as a whole, never with every record of its template. Returns the new parts and counts for the stage's
    stats.
    """
    n = parts[0].len()
    cutoff = max(int(min_records), math.ceil(share * n))
    stats = {"boilerplate_cutoff_records": cutoff, "boilerplate_lines": 0, "records_discounted": 0}
    if n < cutoff:
        return parts, stats
    per_part = [line_hashes(s) for s in parts]
    lines = pl.DataFrame(
        {
            "row": np.concatenate([np.repeat(np.arange(n, dtype=np.int64), np.diff(o)) for _, o in per_part]),
            "key": np.concatenate([h for h, _ in per_part]),
        }
    )
    boiler = lines.unique().group_by("key").len().filter(pl.col("len") >= cutoff)["key"]
    stats["boilerplate_lines"] = boiler.len()
    if boiler.len() == 0:
        return parts, stats
    per_row = lines.with_columns(bp=pl.col("key").is_in(boiler.implode())).group_by("row").agg(
        any_bp=pl.col("bp").any(), all_bp=pl.col("bp").all()
    )
    rows = per_row.filter(pl.col("any_bp") & ~pl.col("all_bp"))["row"].sort()
    stats["records_discounted"] = rows.len()
    if rows.len() == 0:
        return parts, stats
    boiler_set = np.sort(boiler.to_numpy())
    out = []
    for s in parts:
        sub = pl.DataFrame({"text": s.gather(rows).fill_null("")}).with_row_index("i")
        split = sub.select("i", line=pl.col("text").str.split("\n")).explode("line")
        h, o = line_hashes(split["line"])
        one = np.diff(o) == 1  # a line has one hash, or none (no word character: never boilerplate)
        key = np.zeros(split.height, dtype=np.uint64)
        key[one] = h
        at = np.minimum(np.searchsorted(boiler_set, key), boiler_set.size - 1)
        is_bp = one & (boiler_set[at] == key)
        kept = split.filter(pl.Series(~is_bp)).group_by("i", maintain_order=True).agg(pl.col("line").str.join("\n"))
        new = sub.join(kept, on="i", how="left")["line"].fill_null("")
        out.append(s.fill_null("").scatter(rows, new))
    return out, stats


# ---------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------
def _text_expr(fields: str) -> pl.Expr:
    if fields == "prompt":
        return pl.col("prompt_text").fill_null("")
    if fields == "response":
        return pl.col("response_text").fill_null("")
    return pl.concat_str([pl.col("prompt_text").fill_null(""), pl.col("response_text").fill_null("")], separator="\n")


SIGNATURE_CHUNK = 50_000  # records shingled at once in decide (memory: their shingles only)
EXACT_CHUNK = 10_000  # candidate pairs verified at once (memory: the shingle sets of their records only)


@register
class MinHashDedup(GlobalStage):
    """Near-duplicate removal: MinHash + LSH proposes pairs, every pair is verified by its EXACT Jaccard.

    A record is rejected only as the duplicate of a kept record (its representative, named in
    ``duplicate_of``) whose exact Jaccard to it, over the 5-character shingle sets of their texts after the
    boilerplate discount, is at or above ``threshold``, and whose response is like its own (``response_similarity``;
    off with ``passage_level``). Clusters are stars around kept records (``linkage: star``): no chains.

    Defaults: prompt + response text, 5-character shingles (``shingle: word`` uses 5-word ones), 128
    permutations, threshold 0.7, bands/rows chosen for 99 % recall at the threshold, lines shared by at
    least max(50, 0.1 % of the records) discounted, response Jaccard 0.3, ``keep: first``,
    ``action: reject``. See the module docstring for the details.
    """

    name = "minhash_dedup"
    reasons = ("near_duplicate",)

    class Params(StageParams):
        """Parameters of ``minhash_dedup``."""
        fields: Literal["all", "prompt", "response"] = Field(
            "all", description="the text compared: prompt + response (all), the prompt turns (system, user) or the responses"
        )
        shingle: Literal["word", "char"] = Field("char", description="shingles of characters (default) or of words")
        ngram: int | None = Field(None, ge=1, le=64, description="shingle size; default 5 words or 5 characters")
        num_perm: int = Field(128, ge=2, le=2048, description="MinHash permutations (signature slots); more: finer estimates, slower")
        threshold: float = Field(
            0.7, gt=0.0, le=1.0,
            description="a reject's exact Jaccard to the kept record it names (shingle sets after the boilerplate discount) is at least this",
        )
        bands: int | None = Field(None, ge=1, description="LSH bands; default chosen with rows for 99 % candidate recall at the threshold")
        rows: int | None = Field(None, ge=1, description="signature slots per LSH band; give with bands")
        keep: Literal["first", "last", "longest", "quality"] = Field(
            "first", description="which record of a cluster stays: input order first or last, the longest, the highest quality score"
        )
        action: Literal["reject", "group"] = Field(
            "reject", description="reject the duplicates, or only keep each cluster in one train/validation/test split"
        )
        seed: int = Field(1, description="seed of the MinHash permutations")
        margin_sigmas: float = Field(
            3.0, ge=0.0, le=6.0,
            description="candidate pairs whose MinHash estimate is more than this many standard errors below the threshold "
            "are not checked exactly (they cannot reach it but by chance); the decision itself is always exact",
        )
        linkage: Literal["star", "union_find"] = Field(
            "star",
            description="star: a record is rejected only for a kept record it is itself similar to (no chains); union_find: "
            "connected components (A~B, B~C merge A and C, however far apart: a reject may then be below the threshold to its representative)",
        )
        boilerplate_min_records: int = Field(
            50, ge=2,
            description="a line shared by at least this many records (and boilerplate_share of them) is boilerplate: removed "
            "before shingling, so templated records are compared on what differs",
        )
        boilerplate_share: float = Field(
            0.001, ge=0.0, le=1.0, description="the share of all records a line must be in to count as boilerplate (with boilerplate_min_records)"
        )
        discount_boilerplate: bool = Field(True, description="remove boilerplate lines before shingling (false: compare whole texts)")
        response_similarity: float = Field(
            0.3, ge=0.0, le=1.0,
            description="with fields all, two records merge only if their responses alone have at least this exact Jaccard "
            "(5-character shingles): a different task on the same passage (same input, another instruction and answer) is no duplicate",
        )
        passage_level: bool = Field(
            False, description="merge records on their whole text alone, whatever their responses (passage-level dedup: no response check)"
        )

        @model_validator(mode="after")
        def _check_bands(self):
            if (self.bands is None) != (self.rows is None):
                raise ValueError("give both bands and rows, or neither (then they are chosen for recall)")
            if self.bands is not None and self.bands * self.rows > self.num_perm:
                raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
            return self

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        self.stats: dict = {}

    @property
    def ngram(self) -> int:
        """The shingle size in use: ``ngram``, else 5 (words or characters)."""
        return self.params.ngram or DEFAULT_NGRAM[self.params.shingle]

    @property
    def bands_rows(self) -> tuple[int, int]:
        """(bands, rows) of the LSH index: as configured, else chosen for 99 % candidate recall at ``threshold``."""
        p = self.params
        if p.bands is not None:
            return p.bands, p.rows
        return choose_bands_rows(p.num_perm, p.threshold)

    @property
    def check_from(self) -> float:
        """The MinHash estimate from which a candidate pair is checked exactly: the threshold less
        ``margin_sigmas`` standard errors of the estimate at the threshold."""
        p = self.params
        return p.threshold - p.margin_sigmas * math.sqrt(p.threshold * (1.0 - p.threshold) / p.num_perm)

    accept_at = check_from  # the name older callers use

    @property
    def response_check(self) -> bool:
        """Whether pairs must also share their responses (fields all, not passage-level, response_similarity > 0)."""
        p = self.params
        return p.fields == "all" and not p.passage_level and p.response_similarity > 0

    def shingles(self, text: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """(uint64 shingle hashes, int64 offsets per document) of a Series of texts."""
        if self.params.shingle == "char":
            return char_ngram_hashes(text, self.ngram)
        hashes, offsets = word_hashes(text)
        ngrams, ngram_offsets, _ = ngram_hashes(hashes, offsets, self.ngram)
        return ngrams, ngram_offsets

    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The small columns, the keep policy's ``quality`` and the text of ``fields`` (signatures need the
        whole run's boilerplate lines first, and verification needs the text of candidate pairs)."""
        p = self.params
        cols = [pl.col(c) for c in ("uid", "id", "source_file", "source_line", "n_chars")]
        # records of different kinds (a conversation, a preference pair, a KTO record) never duplicate each other
        cols.append(pl.col("kind").fill_null("sft") if "kind" in batch.columns else pl.lit("sft").alias("kind"))
        if p.keep == "quality":
            cols.append(quality_expr().alias("quality"))
        if p.fields in ("all", "prompt"):
            cols.append(pl.col("prompt_text").fill_null(""))
        if p.fields in ("all", "response"):
            response = pl.col("response_text").fill_null("")
            if "rejected_text" in batch.columns and batch["rejected_text"].null_count() < batch.height:
                # a preference pair is compared on both completions: pairs sharing a chosen answer are not copies
                response = pl.concat_str([response, pl.col("rejected_text")], separator="\n\n", ignore_nulls=True).alias("response_text")
            cols.append(response)
        return batch.select(cols)

    def parts(self, prepared: pl.DataFrame) -> pl.DataFrame:
        """The compared text columns (``prompt_text`` and/or ``response_text`` per ``fields``) of each record,
        boilerplate discounted, plus ``response_check``: the text the response check compares (the discounted
        response, or the response as written where nothing of it is left)."""
        p = self.params
        names = [c for c in ("prompt_text", "response_text") if c in prepared.columns]
        parts = [prepared[c] for c in names]
        if p.discount_boilerplate:
            parts, stats = discount_boilerplate(parts, p.boilerplate_min_records, p.boilerplate_share)
            self.stats.update(stats)
        out = pl.DataFrame(dict(zip(names, parts)))
        if self.response_check:
            # the response check reads the discounted response (a frequent chatty line does not count), or the
            # response as written where the discount left nothing of it: a one-line label shared by thousands
            # of records ("Positive") is boilerplate, but "Positive" and "Negative" are still two answers
            out = out.with_columns(
                response_check=pl.when(pl.col("response_text").str.strip_chars() == "")
                .then(prepared["response_text"])
                .otherwise(pl.col("response_text"))
            )
        return out

    @staticmethod
    def compared(parts: pl.DataFrame) -> pl.Series:
        """The text that is shingled: the parts joined by a newline (built per chunk: no copy of the whole run)."""
        cols = [c for c in ("prompt_text", "response_text") if c in parts.columns]
        return parts[cols[0]] if len(cols) == 1 else parts.select(pl.concat_str(cols, separator="\n")).to_series()

    def texts(self, prepared: pl.DataFrame) -> tuple[pl.Series, pl.Series | None]:
        """(the compared text, boilerplate discounted; the response the response check compares, or None
        without the check) of each record."""
        parts = self.parts(prepared)
        return self.compared(parts), parts["response_check"] if self.response_check else None

    def _signatures(self, parts: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        n = parts.height
        sig = np.empty((n, p.num_perm), dtype=np.uint32)
        sizes = np.zeros(n, dtype=np.int64)
        for lo in range(0, n, SIGNATURE_CHUNK):
            shingles, offsets = self.shingles(self.compared(parts.slice(lo, SIGNATURE_CHUNK)))
            sig[lo : lo + offsets.size - 1] = signatures(shingles, offsets, p.num_perm, p.seed)
            sizes[lo : lo + offsets.size - 1] = np.diff(offsets)
        return sig, sizes

    def exact_scores(self, parts: pl.DataFrame, ia: np.ndarray, ib: np.ndarray, response: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(exact Jaccard of the compared texts, exact Jaccard of the responses) of record pairs, given as row
        positions in ``parts``. The second is 1.0 without the response check and for pairs below the threshold
        (whose verdict it cannot change)."""
        sim = np.empty(ia.size, dtype=np.float64)
        resp = np.ones(ia.size, dtype=np.float64)
        response = response and self.response_check
        for lo in range(0, ia.size, EXACT_CHUNK):
            a, b = ia[lo : lo + EXACT_CHUNK], ib[lo : lo + EXACT_CHUNK]
            docs, local = np.unique(np.concatenate([a, b]), return_inverse=True)
            la, lb = local[: a.size], local[a.size :]
            sub = parts[docs]
            values, offsets = shingle_sets(*self.shingles(self.compared(sub)))
            sim[lo : lo + a.size] = jaccard(*set_overlap(values, offsets, la, lb))
            # the responses, of the pairs that reach the threshold only (the others are decided): 5-character
            # shingles whatever `shingle` is (a swapped word in a short answer breaks five word 5-grams of
            # maybe twenty, but only a few of its character 5-grams)
            reach = np.flatnonzero(sim[lo : lo + a.size] >= self.params.threshold - 1e-9) if response else np.zeros(0, np.int64)
            if reach.size:
                docs2, local2 = np.unique(np.concatenate([la[reach], lb[reach]]), return_inverse=True)
                values, offsets = shingle_sets(*char_ngram_hashes(sub["response_check"][docs2], DEFAULT_NGRAM["char"]))
                resp[lo + reach] = jaccard(*set_overlap(values, offsets, local2[: reach.size], local2[reach.size :]))
        return sim, resp

    def decide(self, prepared: pl.DataFrame) -> GlobalDecision:
        """Candidate pairs from LSH buckets, verified by exact Jaccard (and the responses' Jaccard), clustered by
        ``linkage``; members other than the representative (by ``keep``) rejected as ``near_duplicate``, or with
        ``action: group`` kept and only clustered. Returns clusters, pairs near the threshold and stats."""
        p = self.params
        self.stats = {}
        # best first by the keep policy: a bucket's first members (linked to every member) are the likely centres
        if not (p.keep == "first" and prepared["uid"].is_sorted()):  # (sorting would copy every text)
            prepared = priority_order(prepared, p.keep)
        parts = self.parts(prepared)
        prepared = prepared.drop([c for c in ("prompt_text", "response_text") if c in prepared.columns])
        sig, sizes = self._signatures(parts)
        has = np.flatnonzero(sizes > 0)  # records without shingles (no word character) are nobody's duplicate
        if has.size < prepared.height:
            prepared, parts, sig = prepared[has], parts[has], sig[has]
        uids = prepared["uid"].to_numpy().astype(np.int64)
        if sig.shape[0] < 2:
            return GlobalDecision(empty_rejects().drop("stage"))
        bands, rows = self.bands_rows
        ia, ib = candidate_pairs(sig, bands, rows)
        if "kind" in prepared.columns and prepared["kind"].n_unique() > 1:  # no pair across kinds
            kind = prepared["kind"].to_numpy()
            same = kind[ia] == kind[ib]
            ia, ib = ia[same], ib[same]
        est = estimated_jaccard(sig, ia, ib)
        report_floor = max(p.threshold - REPORT_MARGIN, 0.0)
        check = np.flatnonzero(est >= min(report_floor, self.check_from) - 1e-9)
        if check.size > REPORT_MAX_PAIRS:  # too many for the report: verify only what the decision needs
            check = np.flatnonzero(est >= self.check_from - 1e-9)
        ia, ib = ia[check], ib[check]
        sim, resp = self.exact_scores(parts, ia, ib)
        self.stats.update(candidate_pairs=int(est.size), pairs_verified=int(check.size))
        near = np.flatnonzero(sim >= report_floor)
        if near.size > REPORT_MAX_PAIRS:
            near = near[np.argpartition(-sim[near], REPORT_MAX_PAIRS - 1)[:REPORT_MAX_PAIRS]]
        report = pl.DataFrame({"uid_a": uids[ia[near]], "uid_b": uids[ib[near]], "similarity": np.round(sim[near], 4)})
        ok = (sim >= p.threshold - 1e-9) & (resp >= p.response_similarity - 1e-9)
        self.stats.update(pairs_accepted=int(ok.sum()), pairs_failing_response_check=int(((sim >= p.threshold - 1e-9) & ~ok).sum()))
        ua, ub = uids[ia[ok]], uids[ib[ok]]
        pairs = pl.DataFrame({"uid_a": np.minimum(ua, ub), "uid_b": np.maximum(ua, ub)}, schema={"uid_a": pl.Int64, "uid_b": pl.Int64})
        edge_sim = pairs.with_columns(similarity=pl.Series(sim[ok], dtype=pl.Float64))
        pos = pl.DataFrame({"uid": uids, "pos": np.arange(uids.size)})

        def similarity_to_rep(member: np.ndarray, rep: np.ndarray) -> np.ndarray:
            # star: every member's pair with its centre was verified (look it up); union_find: compute it
            q = pl.DataFrame({"uid_a": np.minimum(member, rep), "uid_b": np.maximum(member, rep)}, schema={"uid_a": pl.Int64, "uid_b": pl.Int64})
            found = q.join(edge_sim, on=["uid_a", "uid_b"], how="left", maintain_order="left")["similarity"]
            out = found.to_numpy().copy()
            missing = np.flatnonzero(found.is_null().to_numpy())
            if missing.size:
                pa = pl.DataFrame({"uid": member[missing]}).join(pos, on="uid", how="left", maintain_order="left")["pos"].to_numpy()
                pb = pl.DataFrame({"uid": rep[missing]}).join(pos, on="uid", how="left", maintain_order="left")["pos"].to_numpy()
                out[missing] = self.exact_scores(parts, pa, pb, response=False)[0]
            return out

        decision = decide_clusters(
            prepared,
            pairs,
            keep=p.keep,
            reason="near_duplicate",
            measure="Jaccard",
            similarity_to_rep=similarity_to_rep,
            action=p.action,
            report_pairs=report,
            linkage=p.linkage,
        )
        # pairs similar as a whole whose responses differ (two tasks on one passage) are both kept, but in one
        # split: a test question on a passage the model trained on is not a held-out question
        linked = (sim >= p.threshold - 1e-9) & ~ok
        if linked.any():
            decision.links = pl.DataFrame(
                {"uid_a": uids[ia[linked]], "uid_b": uids[ib[linked]], "similarity": np.round(sim[linked], 4)},
                schema={"uid_a": pl.Int64, "uid_b": pl.Int64, "similarity": pl.Float64},
            )
        decision.stats = {**self.stats, "pairs_linked": int(linked.sum())}
        return decision
