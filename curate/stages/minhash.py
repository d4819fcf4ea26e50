"""MinHash near-duplicate detection: signatures while records stream, LSH candidates, verified pairs.

``prepare(batch)`` turns each record's text into shingles (word or character n-grams, see
:mod:`curate.stages.ngrams`) and min-reduces them into a MinHash signature of ``num_perm`` 32-bit
slots, in compiled code (numba, parallel over documents). ``decide`` sees only ids, lengths, the
``quality`` score and the signatures, never text:

1. **LSH.** The signature is cut into ``bands`` bands of ``rows`` slots (datasketch's scheme); records
   whose band hashes agree in some band are candidate pairs. A pair of Jaccard ``s`` becomes a candidate
   with probability ``1 - (1 - s**rows)**bands``. By default the split is chosen for recall, not
   datasketch's balance of errors: the ``bands * rows <= num_perm`` split with
   ``P(candidate | s = threshold) >= 0.99`` and the fewest false candidates (the smallest integral of
   the curve below the threshold). At 128 permutations and 0.8 that is 16 bands of 6 rows: 99.2 % of
   pairs at 0.8 become candidates (datasketch's 9 x 13 catches about 40 %), 53 % at 0.6, 22 % at 0.5;
   at the default 0.7 it is 17 bands of 4 rows (99.1 % at 0.7, 67 % at 0.5, 13 % at 0.3).
2. **Verification.** Every candidate pair is scored by its estimated Jaccard, the share of equal slots
   over the *whole* signature (all ``num_perm``). False candidates cost only this check. The estimate
   is noisy (standard error ``sqrt(s (1 - s) / num_perm)``, 0.04 at 0.7): accepting at ``>= threshold``
   would lose half the pairs whose true Jaccard is the threshold, so a pair is accepted down to
   ``threshold - margin_sigmas`` standard errors (1 by default: 0.659 at 0.7). bench/dedup_quality.py
   measures the result against exact Jaccard: 0.99 of the pairs at or above the threshold merged, 0.8 %
   of the accepted pairs below threshold - 0.1.
3. **Buckets.** A bucket of m records would give m (m - 1) / 2 pairs; instead each member is paired
   with the first ``LINKS_PER_MEMBER`` (8) members of its bucket (input order), so a band yields at most
   8 n pairs whatever the data (a boilerplate answer shared by 100,000 records gives 800,000 candidates,
   not 5 billion). Buckets of up to 9 members still get all their pairs; in a larger one, two late
   members are compared only through the early ones, which is enough for clustering when the bucket
   really is one cluster. Pairs repeated across bands are counted once.
4. **Clusters.** Accepted pairs go to :func:`curate.stages.clusters.decide_clusters`: connected
   components (union-find; ``linkage: star`` instead rejects a record only for a kept record it is
   directly similar to, never through a chain), the ``keep`` policy's representative, and rejects naming
   it (``duplicate_of``) with the member's estimated Jaccard to it; ``action: group`` rejects nothing and only keeps each cluster in
   one split. Candidate pairs scoring ``>= threshold - 0.2`` (at most 500,000, the highest) go to the
   report.

**Permutations.** Slot ``p`` of a signature is ``min over shingles x of (a_p * x + b_p) mod 2**64 >> 32``
with ``x`` the shingle's 64-bit hash folded to 32 bits and ``a_p``, ``b_p`` random 64-bit constants
from ``seed``: Dietzfelbinger's multiply-add-shift, a strongly universal family from 32 to 32 bits
that costs one 64-bit multiply-add per shingle and slot (datasketch and datatrove use
``(a x + b) mod (2**61 - 1)``, which needs a modulo). Shingle hashes are already well mixed, so
the estimates match exact Jaccard (the tests check it against exact shingle sets).

**Records without shingles** (no word characters at all, or empty text in the chosen fields) get no
signature: ``prepare`` drops them, so they are never anyone's duplicate.

**Defaults** (5-character shingles, threshold 0.7) are chosen on bench/dedup_quality.py's ground truth
of real Alpaca records: they catch 0.98 of the near-duplicates with 5 % of the words replaced or swapped
and all case/punctuation/whitespace variants, at 0.994 precision with same-instruction answers by another
teacher as negatives. 5-word shingles at 0.8 (datatrove's habit) catch only exact-ish copies: one replaced
word in twenty breaks five shingles, and such a pair's Jaccard falls near 0.6. Character shingles cost
more per record (about 5x the shingles of word 5-grams); ``shingle: word`` is the fast choice for very
large sets where only near-verbatim copies matter.

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
from curate.stages.clusters import decide_clusters, quality_expr
from curate.stages.ngrams import char_ngram_hashes, compile_kernels, ngram_hashes, word_hashes

LINKS_PER_MEMBER = 8  # each bucket member is paired with this many first members of the bucket
REPORT_MARGIN = 0.2  # candidate pairs down to threshold - this go to the report
REPORT_MAX_PAIRS = 500_000
DEFAULT_NGRAM = {"word": 5, "char": 5}
TARGET_RECALL = 0.99
_EMPTY = np.uint32(0xFFFFFFFF)


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


prange = range  # numba.prange once compiled (numba is imported only when a kernel is first needed)


@functools.cache
def _kernels():
    return compile_kernels(globals(), _signature_kernel, _band_key_kernel, _similarity_kernel)


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
# the stage
# ---------------------------------------------------------------------------------------------------------
def _text_expr(fields: str) -> pl.Expr:
    if fields == "prompt":
        return pl.col("prompt_text").fill_null("")
    if fields == "response":
        return pl.col("response_text").fill_null("")
    return pl.concat_str([pl.col("prompt_text").fill_null(""), pl.col("response_text").fill_null("")], separator="\n")


@register
class MinHashDedup(GlobalStage):
    """Near-duplicate removal by MinHash + LSH with every candidate pair verified (estimated Jaccard).

    Defaults: prompt + response text, 5-character shingles (``shingle: word`` uses 5-word ones),
    128 permutations, threshold 0.7 (estimated Jaccard, verified down to one standard error below),
    bands/rows chosen for 99 % recall at the threshold (17 x 4 at the defaults), ``keep: first``,
    ``action: reject``. See the module docstring for the details.
    """

    name = "minhash_dedup"
    reasons = ("near_duplicate",)

    class Params(StageParams):
        fields: Literal["all", "prompt", "response"] = "all"
        shingle: Literal["word", "char"] = "char"
        ngram: int | None = Field(None, ge=1, le=64, description="shingle size; default 5 words or 5 characters")
        num_perm: int = Field(128, ge=2, le=2048)
        threshold: float = Field(0.7, gt=0.0, le=1.0)
        bands: int | None = Field(None, ge=1)
        rows: int | None = Field(None, ge=1)
        keep: Literal["first", "last", "longest", "quality"] = "first"
        action: Literal["reject", "group"] = "reject"
        seed: int = 1
        margin_sigmas: float = Field(1.0, ge=0.0, le=4.0, description="verification accepts estimates down to threshold - this many standard errors")
        linkage: Literal["union_find", "star"] = "union_find"

        @model_validator(mode="after")
        def _check_bands(self):
            if (self.bands is None) != (self.rows is None):
                raise ValueError("give both bands and rows, or neither (then they are chosen for recall)")
            if self.bands is not None and self.bands * self.rows > self.num_perm:
                raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
            return self

    @property
    def ngram(self) -> int:
        return self.params.ngram or DEFAULT_NGRAM[self.params.shingle]

    @property
    def bands_rows(self) -> tuple[int, int]:
        p = self.params
        if p.bands is not None:
            return p.bands, p.rows
        return choose_bands_rows(p.num_perm, p.threshold)

    @property
    def accept_at(self) -> float:
        """The estimated Jaccard a verified pair needs: the threshold less ``margin_sigmas`` standard errors
        of the estimate at the threshold, so that pairs whose true Jaccard is at the threshold are not lost
        to the estimator's noise half of the time."""
        p = self.params
        return p.threshold - p.margin_sigmas * math.sqrt(p.threshold * (1.0 - p.threshold) / p.num_perm)

    def shingles(self, text: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """(uint64 shingle hashes, int64 offsets per document) of a Series of texts."""
        if self.params.shingle == "char":
            return char_ngram_hashes(text, self.ngram)
        hashes, offsets = word_hashes(text)
        ngrams, ngram_offsets, _ = ngram_hashes(hashes, offsets, self.ngram)
        return ngrams, ngram_offsets

    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        text = batch.select(_text_expr(p.fields)).to_series()
        shingles, offsets = self.shingles(text)
        sig = signatures(shingles, offsets, p.num_perm, p.seed)
        cols = [pl.col(c) for c in ("uid", "id", "source_file", "source_line", "n_chars")]
        if p.keep == "quality":
            cols.append(quality_expr().alias("quality"))
        out = batch.select(cols).with_columns(signature=pl.Series(sig, dtype=pl.Array(pl.UInt32, p.num_perm)))
        has = np.diff(offsets) > 0
        return out if has.all() else out.filter(pl.Series(has))

    def decide(self, prepared: pl.DataFrame) -> GlobalDecision:
        p = self.params
        if not prepared["uid"].is_sorted():
            prepared = prepared.sort("uid")  # bucket order is input order
        sig = np.ascontiguousarray(prepared["signature"].to_numpy())
        prepared = prepared.drop("signature")
        uids = prepared["uid"].to_numpy().astype(np.int64)
        if sig.shape[0] < 2:
            return GlobalDecision(empty_rejects().drop("stage"))
        bands, rows = self.bands_rows
        ia, ib = candidate_pairs(sig, bands, rows)
        sim = estimated_jaccard(sig, ia, ib)
        floor = max(p.threshold - REPORT_MARGIN, 0.0)
        near = np.flatnonzero(sim >= floor)
        if near.size > REPORT_MAX_PAIRS:
            near = near[np.argpartition(-sim[near], REPORT_MAX_PAIRS - 1)[:REPORT_MAX_PAIRS]]
        report = pl.DataFrame({"uid_a": uids[ia[near]], "uid_b": uids[ib[near]], "similarity": np.round(sim[near], 4)})
        ok = sim >= self.accept_at - 1e-9  # slot shares are k / num_perm: no float fuzz at the threshold
        pairs = pl.DataFrame({"uid_a": uids[ia[ok]], "uid_b": uids[ib[ok]]})

        def similarity_to_rep(member: np.ndarray, rep: np.ndarray) -> np.ndarray:
            return estimated_jaccard(sig, np.searchsorted(uids, member), np.searchsorted(uids, rep))

        return decide_clusters(
            prepared,
            pairs,
            keep=p.keep,
            reason="near_duplicate",
            measure="estimated Jaccard",
            similarity_to_rep=similarity_to_rep,
            action=p.action,
            report_pairs=report,
            linkage=p.linkage,
        )
