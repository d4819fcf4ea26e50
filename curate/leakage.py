"""How similar are the closest kept records that sit in different splits? An exact answer, not an estimate.

The dedup stages keep a cluster in one split, but only the pairs they found and merged: a pair their
LSH missed, or one they keep on purpose (two tasks on one passage), falls into splits at random. A
validation loss can then still be memorized from train. So after splits are assigned, the run audits the
kept records on their own:

1. **Search.** Every kept record's text (all turns, joined by line breaks; a preference pair's rejected
   completion too) gets its 5-character shingles
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
# a record's audited text: all turns joined by line breaks, a pair's rejected completion after its chosen one
# (a rejected answer trained on is as much a leak as a chosen one); SQL over the run's records table, aliased r
TEXT_SQL = ("array_to_string(list_transform(list_concat(r.messages, r.rejected), lambda m: coalesce(m.content, '')), "
            "chr(10))")


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


def _empty_result(records: int, floor: float, bands: int, rows: int) -> dict:
    from curate.stages.minhash import candidate_probability

    return {
        "measure": f"exact Jaccard of {NGRAM}-character shingles (all turns)",
        "floor": floor,
        "search_recall_at_floor": round(float(candidate_probability(floor, bands, rows)), 4),
        "records": records,
        "pairs_scored": 0,
        "max_similarity": None,
        "pairs_at_or_above": {str(level): 0 for level in LEVELS if level >= floor},
        "closest": [],
    }


def split_leakage_in_store(store, run_id: str, *, floor: float = FLOOR, batch_size: int = 50_000, pairs_per_read: int = 1 << 20) -> dict:
    """:func:`split_leakage` of a run's kept records, streamed: memory stays flat in the number of records.

    The kept texts are read from the run's data file ``batch_size`` at a time; each batch's shingles become
    signatures and then LSH band keys, and only the band keys (``bands`` x 17 bytes a record) are kept, spilled
    to Parquet files in a temporary folder. DuckDB turns them into candidate pairs (each member of a bucket
    linked to the first members, as :func:`curate.stages.minhash.candidate_pairs` does) and writes the pairs across
    splits to a Parquet file; one more pass over the kept records scores them exactly as they stream by (see
    :func:`_score_streamed`), and only the summary's counts and closest pairs are kept: memory stays flat in the
    number of pairs too. Gives the same result as :func:`split_leakage` on the same records (a test holds it to that).
    """
    import tempfile
    from pathlib import Path

    from curate.stages.minhash import LINKS_PER_MEMBER, _kernels, choose_bands_rows, signatures

    bands, rows = choose_bands_rows(NUM_PERM, floor, SEARCH_RECALL)
    records = store.sql(
        "SELECT count(*) AS n FROM records r ANTI JOIN rejects j ON r.run_id = j.run_id AND r.uid = j.uid WHERE r.run_id = ?",
        [run_id],
    ).item()
    out = _empty_result(int(records), floor, bands, rows)
    with tempfile.TemporaryDirectory(prefix="leakage-") as tmp:
        written = 0
        for batch in _kept_text_batches(store, run_id, batch_size):
            hashes, offsets = shingle_sets(batch["text"])
            idx = np.flatnonzero(np.diff(offsets) > 0)
            if idx.size == 0:
                continue
            sig = signatures(*_flat(hashes, offsets, idx), NUM_PERM, seed=7)
            keys = np.empty((bands, idx.size), dtype=np.uint64)
            _kernels()[1](sig, bands, rows, keys)
            uids = batch["uid"].to_numpy()[idx]
            pl.DataFrame({
                "band": np.repeat(np.arange(bands, dtype=np.int16), idx.size),
                "key": keys.reshape(-1),
                "uid": np.tile(uids, bands),
            }).write_parquet(Path(tmp) / f"keys-{written:06d}.parquet")
            written += 1
        if written == 0:
            return out
        glob = str(Path(tmp) / "keys-*.parquet").replace("'", "''")
        pairs_file = str(Path(tmp) / "pairs.parquet").replace("'", "''")
        # the bucket query spills to disk beyond 1 GB instead of taking most of the machine's memory (DuckDB's
        # default limit is 80% of it); the setting belongs to the connection, so it is put back afterwards.
        # The cross-split pairs go to a Parquet file in uid_b order, to be read back as a stream.
        limit = store.sql("SELECT current_setting('memory_limit') AS m").item()
        store.con.execute("SET memory_limit = '1GB'")
        try:
            store.con.execute(
                f"""COPY (
                  WITH k AS (SELECT band, key, uid, row_number() OVER (PARTITION BY band, key ORDER BY uid) - 1 AS rank
                             FROM read_parquet('{glob}')),
                    first AS (SELECT band, key, uid, rank FROM k WHERE rank < {LINKS_PER_MEMBER}),
                    cand AS (SELECT DISTINCT f.uid AS uid_a, m.uid AS uid_b FROM k m JOIN first f
                             ON m.band = f.band AND m.key = f.key AND f.rank < m.rank WHERE m.rank > 0)
                  SELECT c.uid_a, c.uid_b FROM cand c
                    JOIN records a ON a.run_id = $1 AND a.uid = c.uid_a
                    JOIN records b ON b.run_id = $1 AND b.uid = c.uid_b
                  WHERE a.split <> b.split ORDER BY c.uid_b, c.uid_a
                ) TO '{pairs_file}' (FORMAT parquet)""",
                [run_id],
            )
            anchors = store.sql(f"SELECT DISTINCT uid_a FROM read_parquet('{pairs_file}') ORDER BY uid_a")
        finally:
            store.con.execute(f"SET memory_limit = '{limit}'")
        if anchors.height == 0:
            return out
        scores = _ScoreSummary(floor)
        _score_streamed(store, run_id, _pair_stream(Path(tmp) / "pairs.parquet", pairs_per_read), anchors, batch_size, scores, tmp)
    top = scores.top_pairs()
    named = _texts_of(store, run_id, pl.concat([top["uid_a"], top["uid_b"]]).unique().sort(), text=False)
    info = {int(u): (i, sp) for u, i, sp in named.select("uid", "id", "split").iter_rows()}
    return scores.finish(out, info)


class _PairStream:
    """Candidate pairs (``uid_a``, ``uid_b``) read from a Parquet file in ``uid_b`` order, taken up to a bound."""

    def __init__(self, batches):
        self.batches = batches
        self.a = self.b = np.zeros(0, dtype=np.int64)

    def upto(self, last_uid: int) -> tuple[np.ndarray, np.ndarray]:
        """The next pairs whose ``uid_b`` is at most ``last_uid``."""
        parts_a, parts_b = [], []
        while True:
            cut = int(np.searchsorted(self.b, last_uid, side="right"))
            parts_a.append(self.a[:cut])
            parts_b.append(self.b[:cut])
            self.a, self.b = self.a[cut:], self.b[cut:]
            if self.b.size:
                break
            batch = next(self.batches, None)
            if batch is None:
                break
            self.a = batch.column("uid_a").to_numpy().astype(np.int64)
            self.b = batch.column("uid_b").to_numpy().astype(np.int64)
        return np.concatenate(parts_a), np.concatenate(parts_b)


def _pair_stream(path, rows: int) -> _PairStream:
    import pyarrow.parquet as pq

    return _PairStream(iter(pq.ParquetFile(path).iter_batches(batch_size=rows)))


class _ScoreSummary:
    """What the summary keeps of the scored pairs, accumulated chunk by chunk: their number, the largest similarity,
    the count at or above each level and the closest pairs (ties in (uid_a, uid_b) order): memory flat in pairs."""

    def __init__(self, floor: float):
        self.floor = floor
        self.n = 0
        self.max = -1.0
        self.levels = {level: 0 for level in LEVELS if level >= floor}
        self.top = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))

    def add(self, ua: np.ndarray, ub: np.ndarray, sim: np.ndarray) -> None:
        """Count one chunk of scored pairs."""
        if sim.size == 0:
            return
        self.n += int(sim.size)
        self.max = max(self.max, float(sim.max()))
        for level in self.levels:
            self.levels[level] += int((sim >= level).sum())
        a, b, s = (np.concatenate([x, y]) for x, y in zip(self.top, (ua, ub, sim)))
        order = np.lexsort((b, a, -s))[:TOP_PAIRS]
        self.top = (a[order], b[order], s[order])

    def top_pairs(self) -> pl.DataFrame:
        """The closest pairs so far (``uid_a``, ``uid_b``)."""
        return pl.DataFrame({"uid_a": self.top[0], "uid_b": self.top[1]})

    def finish(self, out: dict, info: dict) -> dict:
        """``out`` completed; ``info`` = {uid: (id, split)} of the top pairs' records."""
        if self.n == 0:
            return out
        out["pairs_scored"] = self.n
        out["max_similarity"] = round(self.max, 4)
        out["pairs_at_or_above"] = {str(level): count for level, count in self.levels.items()}
        ua, ub, sim = self.top
        out["closest"] = [
            {"id_a": str(info[int(a)][0]), "id_b": str(info[int(b)][0]), "split_a": str(info[int(a)][1]),
             "split_b": str(info[int(b)][1]), "similarity": round(float(s), 4)}
            for a, b, s in zip(ua, ub, sim) if s >= self.floor
        ]
        return out


def _score_streamed(store, run_id: str, pairs: _PairStream, anchors: pl.DataFrame, batch_size: int, scores: _ScoreSummary,
                    folder) -> None:
    """Exact similarities of the cross-split ``pairs`` (``uid_a`` < ``uid_b``, kept records, in ``uid_b`` order), from
    one more pass over the kept records in uid order, added to ``scores``: each record's shingle set is computed
    once; a pair is scored in the batch that holds its ``uid_b``, against the set of ``uid_a`` (``anchors``), which
    was written to a file in ``folder`` in its own batch (``uid_a`` comes first) and is read back where needed.
    Neither the run's sets nor all the pairs are ever in memory: in data full of near-copies most records are
    someone's ``uid_a``, until the end of the pass."""
    import os
    from pathlib import Path

    anchor_uids = anchors["uid_a"].to_numpy().astype(np.int64)
    start = np.zeros(anchor_uids.size, dtype=np.int64)  # an anchor's set: its first value's index in the file, and length
    length = np.zeros(anchor_uids.size, dtype=np.int64)
    written = 0
    fd = os.open(Path(folder) / "anchor-sets.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for batch in _kept_text_batches(store, run_id, batch_size):
            uids = batch["uid"].to_numpy()
            hashes, offsets = shingle_sets(batch["text"])
            # this batch's anchors go to the file, for the pairs of this batch and the batches to come
            pos = np.searchsorted(anchor_uids, uids)
            is_anchor = (pos < anchor_uids.size) & (anchor_uids[np.minimum(pos, anchor_uids.size - 1)] == uids)
            rows = np.flatnonzero(is_anchor)
            if rows.size:
                values, offs = _flat(hashes, offsets, rows)
                os.pwrite(fd, values.astype(np.uint64).tobytes(), written * 8)
                start[pos[rows]] = written + offs[:-1]
                length[pos[rows]] = np.diff(offs)
                written += values.size
            a, b = pairs.upto(int(uids[-1]))
            if a.size:
                needed = np.unique(a)
                idx = np.searchsorted(anchor_uids, needed)
                sets = [hashes] + [np.frombuffer(os.pread(fd, int(n) * 8, int(s) * 8), dtype=np.uint64)
                                   for s, n in zip(start[idx], length[idx])]
                all_offsets = np.concatenate([offsets, offsets[-1] + np.cumsum(length[idx])])
                row_a = uids.size + np.searchsorted(needed, a)
                row_b = np.searchsorted(uids, b)
                scores.add(a, b, exact_jaccard(np.concatenate(sets), all_offsets, row_a, row_b))
    finally:
        os.close(fd)


def _texts_of(store, run_id: str, uids: pl.Series, text: bool = True) -> pl.DataFrame:
    """``uid``, ``id``, ``split`` (and ``text``: all turns joined by line breaks) of the records ``uids``, by uid."""
    con = store.con
    con.register("leakage_members", pl.DataFrame({"uid": uids}).to_arrow())
    column = f", {TEXT_SQL} AS text" if text else ""
    try:
        return store.sql(
            f"SELECT r.uid, r.id, r.split{column} FROM records r JOIN leakage_members a ON r.uid = a.uid "
            "WHERE r.run_id = $1 ORDER BY r.uid",
            [run_id],
        )
    finally:
        con.unregister("leakage_members")


def _kept_text_batches(store, run_id: str, batch_size: int):
    """``uid`` and ``text`` of a run's kept records in uid order, ``batch_size`` at a time (never all at once)."""
    cur = store.con.cursor()
    reader = cur.sql(
        f"""SELECT r.uid, {TEXT_SQL} AS text
           FROM records r ANTI JOIN rejects j ON r.run_id = j.run_id AND r.uid = j.uid WHERE r.run_id = ? ORDER BY r.uid""",
        params=[run_id],
    ).to_arrow_reader(batch_size)
    try:
        for rb in reader:
            yield pl.from_arrow(rb)
    finally:
        cur.close()


def split_leakage(kept: pl.DataFrame, *, floor: float = FLOOR) -> dict:
    """The exact similarity left between splits among ``kept`` (columns ``uid``, ``id``, ``split``, ``text``), in
    memory: the reference the streamed audit of a run (:func:`split_leakage_in_store`) is held to.

    Returns ``measure``, ``floor`` and ``search_recall_at_floor`` (what the search can miss),
    ``records``, ``pairs_scored`` (candidate pairs across splits, all scored exactly), ``max_similarity``
    (None when no candidate crosses splits), ``pairs_at_or_above`` ({level: count} for :data:`LEVELS` at or
    above ``floor``) and ``closest`` (up to :data:`TOP_PAIRS` pairs: ids, splits, similarity).
    """
    from curate.stages.minhash import candidate_pairs, choose_bands_rows, signatures

    bands, rows = choose_bands_rows(NUM_PERM, floor, SEARCH_RECALL)
    out = _empty_result(kept.height, floor, bands, rows)
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
    if sim.size == 0:
        return out
    uid = kept["uid"].to_numpy()
    scores = _ScoreSummary(floor)
    scores.add(uid[ia], uid[ib], sim)
    info = {int(u): (i, sp) for u, i, sp in kept.select("uid", "id", "split").iter_rows()}
    return scores.finish(out, info)


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
        f"""SELECT r.uid, r.id, r.split, {TEXT_SQL} AS text
           FROM records r ANTI JOIN rejects j ON r.run_id = j.run_id AND r.uid = j.uid WHERE r.run_id = ?""",
        [run_id],
    )
    return frame
