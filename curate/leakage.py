"""How similar are the closest kept records that sit in different splits? An exact answer, not an estimate.

The dedup stages keep a cluster in one split, but only the pairs they found and merged: a pair their
LSH missed, or one they keep on purpose (two tasks on one passage), falls into splits at random. A
validation loss can then still be memorized from train. So after splits are assigned, the run audits the
kept records on their own:

1. **Search.** Every kept record's text (all turns, joined by line breaks) gets its 5-character shingles
   (the same normalization as ``minhash_dedup``) and a 128-slot MinHash signature; LSH bands and rows are
   chosen so that a pair of exact Jaccard ``floor`` (0.5) becomes a candidate with probability >= 0.99
   (higher similarities more surely). Buckets link each member to their first members as in
   ``minhash_dedup``, so the search stays linear.
2. **Exact score.** Candidate pairs whose records are in different splits are scored by the exact
   Jaccard of their shingle sets (sorted hash sets intersected in compiled code), never by the signature.

The summary's ``split_leakage`` gives the largest exact similarity across splits, the number of cross-split
pairs at or above each level in :data:`LEVELS`, and the closest pairs with their splits; the report prints
them. What it cannot see: a pair below ``floor``, and (with probability <= 1 %) a pair at ``floor``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

NGRAM = 5
NUM_PERM = 128
FLOOR = 0.5
SEARCH_RECALL = 0.99
LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9)
TOP_PAIRS = 10


def shingle_sets(texts: pl.Series, ngram: int = NGRAM) -> tuple[np.ndarray, np.ndarray]:
    """Each text's set of character ``ngram`` hashes, sorted and without repeats: ``(hashes, offsets)`` with
    ``hashes[offsets[d]:offsets[d + 1]]`` the set of text ``d`` (the shingles of ``minhash_dedup``)."""
    from curate.stages import minhash
    from curate.stages.ngrams import char_ngram_hashes

    return minhash.shingle_sets(*char_ngram_hashes(texts, ngram))


def exact_jaccard(hashes: np.ndarray, offsets: np.ndarray, ia, ib) -> np.ndarray:
    """Exact Jaccard of the sets ``ia[i]`` and ``ib[i]`` of :func:`shingle_sets` output (float64)."""
    from curate.stages.minhash import jaccard, set_overlap

    return jaccard(*set_overlap(hashes, offsets, np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)))


def split_leakage(kept: pl.DataFrame, *, floor: float = FLOOR) -> dict:
    """The exact similarity left between splits among ``kept`` (columns ``uid``, ``id``, ``split``, ``text``).

    Returns ``measure``, ``floor`` and ``search_recall_at_floor`` (what the search can miss),
    ``records``, ``pairs_scored`` (candidate pairs across splits, all scored exactly), ``max_similarity``
    (None when no candidate crosses splits), ``pairs_at_or_above`` ({level: count} for :data:`LEVELS` at or
    above ``floor``) and ``closest`` (up to :data:`TOP_PAIRS` pairs: ids, splits, similarity).
    """
    from curate.stages.minhash import candidate_pairs, candidate_probability, choose_bands_rows, signatures

    bands, rows = choose_bands_rows(NUM_PERM, floor, SEARCH_RECALL)
    out = {
        "measure": f"exact Jaccard of {NGRAM}-character shingles (all turns)",
        "floor": floor,
        "search_recall_at_floor": round(float(candidate_probability(floor, bands, rows)), 4),
        "records": kept.height,
        "pairs_scored": 0,
        "max_similarity": None,
        "pairs_at_or_above": {str(level): 0 for level in LEVELS if level >= floor},
        "closest": [],
    }
    if kept.height < 2 or kept["split"].n_unique() < 2:
        return out
    kept = kept.sort("uid")
    hashes, offsets = shingle_sets(kept["text"])
    has = np.diff(offsets) > 0
    idx = np.flatnonzero(has)
    if idx.size < 2:
        return out
    sig = signatures(*_flat(hashes, offsets, idx), NUM_PERM, seed=7)
    ia, ib = candidate_pairs(sig, bands, rows)
    ia, ib = idx[ia], idx[ib]
    split = kept["split"].to_numpy()
    cross = split[ia] != split[ib]
    ia, ib = ia[cross], ib[cross]
    sim = exact_jaccard(hashes, offsets, ia, ib)
    out["pairs_scored"] = int(sim.size)
    if sim.size == 0:
        return out
    out["max_similarity"] = round(float(sim.max()), 4)
    out["pairs_at_or_above"] = {str(level): int((sim >= level).sum()) for level in LEVELS if level >= floor}
    top = np.argsort(-sim, kind="stable")[:TOP_PAIRS]
    ids = kept["id"].to_numpy()
    out["closest"] = [
        {"id_a": str(ids[ia[k]]), "id_b": str(ids[ib[k]]), "split_a": str(split[ia[k]]), "split_b": str(split[ib[k]]),
         "similarity": round(float(sim[k]), 4)}
        for k in top if sim[k] >= floor
    ]
    return out


def _flat(hashes: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shingle sets of documents ``idx`` only, as flat hashes + offsets."""
    lengths = offsets[idx + 1] - offsets[idx]
    new_offsets = np.zeros(idx.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    pos = np.repeat(offsets[idx] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
    return hashes[pos], new_offsets


def kept_texts(ws, run_id: str) -> pl.DataFrame:
    """``uid``, ``id``, ``split`` and ``text`` (all turns joined by line breaks) of a run's kept records."""
    frame = ws.sql(
        """SELECT r.uid, r.id, r.split, array_to_string(list_transform(r.messages, lambda m: coalesce(m.content, '')), chr(10)) AS text
           FROM records r ANTI JOIN rejects j ON r.run_id = j.run_id AND r.uid = j.uid WHERE r.run_id = ?""",
        [run_id],
    )
    return frame
