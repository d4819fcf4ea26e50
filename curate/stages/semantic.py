"""Embedding (semantic) deduplication: sentence embeddings, a FAISS range search, clusters.

Two records are near-duplicates when the cosine of their sentence embeddings reaches ``threshold``.
What gets embedded is ``fields``:

- ``all`` (default): the prompt (system + user turns) and the response (assistant turns) are embedded
  separately and a pair's similarity is the *smaller* of the two cosines, so the same answer to a
  different question is not a duplicate, and neither is a different answer to the same question.
  (Embedding one concatenation instead lets a long shared answer swamp a short differing question, and
  truncates the answer of a long prompt at the model's ``max_seq_length``.)
- ``response``: the assistant turns only, as the usual hand-written scripts do (they embed ``output``);
- ``prompt``: the system + user turns only.

The default threshold, 0.91, is measured, not guessed (``bench/embed_dedup.py --calibrate``, the
labeled pairs of ``bench/verdict_sets/semantic.py``; pairs, the stage's own similarity). Positives: MRPC
sentence pairs its annotators call paraphrases; edited copies of real Alpaca rows (a typo every ~25
characters, a chatty "Sure! Here is ..." before the answer, the instruction reworded with the answer
unchanged, every number changed); one T0 item under two promptsource templates. Hard negatives:
MRPC's "not a paraphrase" pairs; the same Alpaca instruction answered by GPT-4; Alpaca rows sharing an
input passage, AdversarialQA questions sharing a passage, Toolformer rows sharing a tool (different
tasks). Chosen on the tune part (Alpaca rows 0-4,999, even MRPC items) as the lowest threshold at which
no negative set has more than 10% of its pairs merged (the binding one: another teacher's answer to the
same instruction, whose most similar pairs are often the same answer reworded). On the holdout part
(Alpaca rows 5,000+, odd MRPC items) 0.95 -> 0.91 takes pooled precision 0.97 -> 0.95 and recall
0.31 -> 0.53: reworded instructions 0.35 -> 0.77, changed numbers 0.70 -> 0.82, chatty prefixes 0.15 ->
0.43, MRPC paraphrases 0.23 -> 0.36 (its non-paraphrases merged 0.00 -> 0.08), typos 0.00 -> 0.05.
MiniLM is weak on typos and on boilerplate added to short answers; MinHash (5-character shingles,
Jaccard >= 0.7) catches those (0.53 and 0.90 of the same holdout pairs), while embeddings add what
shares few characters: a quarter of MRPC's paraphrases (MinHash: 0.12), a tenth of the reworded
instructions and 5-10% of the changed numbers that MinHash misses. Comparing prompt and response
separately, they never merge two questions on one shared passage (a plain Jaccard over prompt +
response merges every such pair). Run both.

How it runs:

1. ``prepare`` keeps, per record, the text of each field (whitespace collapsed and stripped: a
   model-independent normalization) and its 64-bit xxh3 hash, plus what the keep policy needs.
2. ``decide`` looks the hashes up in the workspace's ``embedding_cache`` under a model key (the model
   folder's name, a hash of its config files and weight files, and the max sequence length: another
   model, or a fine-tuned one with the same config, never reuses vectors). Only misses are encoded, each
   distinct text once, longest first in chunks (sentence-transformers then batches similar lengths
   together), L2-normalized, and stored chunk by chunk, so re-running with another threshold or keep
   policy encodes nothing. Without a workspace (the stage used on its own) nothing is cached.
3. One vector per distinct combination of hashes goes into a FAISS inner-product index (for ``all``,
   the two halves side by side scaled by 1/sqrt(2): its inner product is the *mean* of the two cosines,
   never below their minimum, so a range search at the floor finds every pair whose minimum reaches it;
   the exact minimum is then computed per candidate). Below ``exact_below`` vectors the index is exact
   (``IndexFlatIP``); from there on it is ``IndexIVFFlat`` with nlist = min(4 * sqrt(n), n / 39) cells
   (spherical k-means; at least 39 training points per cell) searched over ``nprobe`` cells. Near
   duplicates at cosine >= 0.9 nearly always share a cell, so recall stays close to 1 (the benchmark
   ``bench/embed_dedup.py`` measures it against the exact search).
4. Pairs at or above ``threshold`` make the duplicate clusters, handed to
   :func:`curate.stages.clusters.decide_clusters`. With ``action: reject`` they are stars, not
   connected components: records are visited best first by the ``keep`` policy, an unclaimed record
   is kept and claims its unclaimed neighbours. Every rejected record is then within ``threshold`` of
   the record it is rejected for, and no two kept records are (the result of the usual "keep unless
   similar to a kept record" loop, from the sparse pair graph). Connected components would chain
   A~B~C and reject C for A at any distance. ``action: group`` rejects nothing and uses the connected
   components, so every record similar to another shares its split. Records with identical text are
   joined directly, at similarity 1.0, without search. Pairs down to ``threshold - 0.1`` go to the
   report (at most 200,000, the most similar first).

``keep: quality`` uses :func:`curate.stages.clusters.quality_expr` (longer, less repetitive answers
win; ties go to the first record), as every dedup stage does.

Speed: encoding dominates. On 2 CPU cores MiniLM-L6 encodes only tens to hundreds of records per second
(short prompts ~150/s, answers ~35/s; 20,000 Alpaca-shaped records, both fields, took 10 minutes:
~33 records/s), so a CPU run suits a few thousand to a few tens of thousands of records, or a re-run
over cached embeddings. For hundreds of thousands of records and more, encode on a GPU (``device:
cuda`` or ``auto``, fp16, batches of about 262,144 tokens, tokenization on a thread ahead: see
:mod:`curate.embeddings`); ``bench/embed_dedup.py --encode-only --device cuda`` measures it. The rest is cheap: cache read, exact search and
clusters over 20,000 records take 2-5 s on the same 2 cores; the IVF index is faster still.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from curate.schema import turns_text_expr
from curate.stages import GlobalDecision, GlobalStage, StageParams, register
from curate.stages.clusters import decide_clusters, greedy_centers, priority_order, quality_expr

log = logging.getLogger(__name__)

ENCODE_CHUNK = 8192  # texts per encode() call: one cache insert each, so an interrupted run keeps its work
SEARCH_CHUNK = 16384  # queries per range search: bounds the memory of the results
REPORT_FLOOR = 0.1  # report pairs down to threshold - REPORT_FLOOR
REPORT_CAP = 200_000
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


def _hash_texts(texts: pl.Series) -> pl.Series:
    import xxhash

    # xxh3 rather than Polars' hash: the cache outlives runs, and Polars does not promise a stable hash
    h = xxhash.xxh3_64_intdigest
    return pl.Series([h(t.encode()) for t in texts.to_list()], dtype=pl.UInt64)


def folder_fingerprint(folder: Path) -> str:
    """A hash of a model folder: every JSON file's content, and each weight file's size and first MiB."""
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.suffix == ".json" or path.name.endswith(WEIGHT_SUFFIXES):
            digest.update(rel.encode() + b"\0")
            with path.open("rb") as fh:
                if path.suffix == ".json":
                    digest.update(fh.read())
                else:
                    digest.update(str(path.stat().st_size).encode() + fh.read(1 << 20))
    return digest.hexdigest()


@register
class EmbeddingDedup(GlobalStage):
    """Rejects records whose sentence embedding is within cosine ``threshold`` of a kept record's.

    See the module docstring for fields, caching, the index and speed (encoding on CPU is slow: tens to
    hundreds of records/s on 2 cores; use a GPU for large sets). After ``decide``, ``stats`` holds what
    it did: records, distinct texts, cached / encoded counts, index kind, pairs, seconds.
    """

    name = "embedding_dedup"
    reasons = ("semantic_duplicate",)

    class Params(StageParams):
        """Parameters of ``embedding_dedup``."""
        model: str = Field(
            "embedded",
            description="the packaged all-MiniLM-L6-v2 ('embedded'), a sentence-transformers folder, or a hub id",
        )
        fields: Literal["all", "prompt", "response"] = Field(
            "all",
            description=(
                "what is embedded: 'all' = prompt and response separately, a pair's similarity the smaller of "
                "the two cosines; 'prompt' or 'response' alone merge every pair sharing that side (same "
                "instruction answered by another teacher, two questions on one passage): no threshold keeps "
                "their false merges at or below 10% on bench/verdict_sets/semantic.py's hard negatives"
            ),
        )
        threshold: float = Field(
            0.91,
            gt=0.0,
            le=1.0,
            description=(
                "cosine at or above which two records are duplicates (for fields 'all', both cosines). "
                "Calibrated by `bench/embed_dedup.py --calibrate` on labeled pairs (MRPC human paraphrase "
                "labels, edited copies of real Alpaca rows, hard negatives): the lowest threshold at which no "
                "tune negative set has more than 10% of its pairs merged. At 0.91, holdout pairs: precision "
                "0.95, recall 0.53 (0.95 gave 0.97 / 0.31)"
            ),
        )
        keep: Literal["first", "last", "longest", "quality"] = Field(
            "first", description="which member of a cluster is kept (see curate.stages.clusters.priority_order)"
        )
        action: Literal["reject", "group"] = Field(
            "reject", description="'reject' the other members (star clusters), or 'group' them into one split only"
        )
        token_budget: int | None = Field(
            None, ge=64, description="tokens per forward pass; default 2,048 on CPU, 262,144 on GPU"
        )
        device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to encode ('auto': CUDA when present)")
        exact_below: int = Field(
            20_000, ge=0, description="below this many vectors the search is exact (IndexFlatIP), IVF from there on"
        )
        nprobe: int = Field(16, ge=1, description="IVF cells searched per query above exact_below")
        max_seq_length: int | None = Field(None, ge=8, description="tokens per text; default: the model's own (256 for MiniLM)")

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        self.stats: dict[str, object] = {}
        self._key: str | None = None
        spec = self.params.model
        # "org/name" is a hub id; anything written as a path must exist, or the run fails here, not
        # minutes later when sentence-transformers tries the hub for it
        if spec != "embedded" and spec.startswith(("/", ".", "~")) and not self.context.resolve(spec).is_dir():
            from curate.config import ConfigError

            raise ConfigError(f"{self.name}.model: {spec}: no such folder (a sentence-transformers model folder or a hub id)")

    @property
    def parts(self) -> tuple[str, ...]:
        """The fields embedded and compared: (prompt, response) for ``all``, else the one named."""
        return ("prompt", "response") if self.params.fields == "all" else (self.params.fields,)

    # -- streaming -------------------------------------------------------------------------------------------
    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:
        """uid, id, source_file, source_line, n_chars, quality, and per field ``t_<field>`` + ``h_<field>``."""
        if "prompt_text" not in batch.columns:  # a batch without the derived columns
            batch = batch.with_columns(
                prompt_text=turns_text_expr(("system", "user")), response_text=turns_text_expr(("assistant",))
            )
        if "rejected_text" in batch.columns and batch["rejected_text"].null_count() < batch.height:
            # a preference pair is compared on both completions: pairs sharing a chosen answer are not copies
            batch = batch.with_columns(
                response_text=pl.concat_str([pl.col("response_text"), pl.col("rejected_text")], separator="\n\n", ignore_nulls=True))
        out = batch.select(
            "uid", "id", "source_file", "source_line", "n_chars",
            # records of different kinds (conversation, preference pair, KTO record) never duplicate each other
            kind=pl.col("kind").fill_null("sft") if "kind" in batch.columns else pl.lit("sft"),
            quality=quality_expr(),
            **{f"t_{part}": pl.col(f"{part}_text").fill_null("").str.replace_all(r"\s+", " ").str.strip_chars() for part in self.parts},
        )
        return out.with_columns(_hash_texts(out[f"t_{part}"]).alias(f"h_{part}") for part in self.parts)

    # -- the model and its cache key -------------------------------------------------------------------------
    def _model_source(self) -> str:
        spec = self.params.model
        if spec == "embedded":
            from curate.models import minilm_dir

            return str(minilm_dir())
        path = self.context.resolve(spec)
        return str(path) if path.is_dir() else spec  # not a folder here: a hub id, passed through

    def model_key(self) -> str:
        """The cache key of the model: name, a hash of its folder, and the max sequence length in force."""
        if self._key is None:
            source = self._model_source()
            folder = Path(source)
            seq = self.params.max_seq_length
            if folder.is_dir():
                if seq is None:
                    cfg = folder / "sentence_bert_config.json"
                    seq = json.loads(cfg.read_text()).get("max_seq_length") if cfg.is_file() else None
                self._key = f"{folder.name}@{folder_fingerprint(folder)}/seq={seq or 'default'}"
            else:
                self._key = f"hub:{source}/seq={seq or 'default'}"
        return self._key

    def model(self):
        """The loaded sentence-transformers model (loaded once per process, see ``curate.models``)."""
        from curate.models import resolve_device, sentence_model

        return sentence_model(self._model_source(), resolve_device(self.params.device), self.params.max_seq_length)

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalized float32 embeddings of ``texts`` (no cache)."""
        from curate.embeddings import encode_texts

        return encode_texts(self.model(), texts, self.params.token_budget)

    def embeddings(self, hashes: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct hashes, their vectors): cached ones read back, the others encoded and stored."""
        ws, key = self.context.workspace, self.model_key()
        hashes = np.asarray(hashes, dtype=np.uint64)
        found, vecs = ws.cached_embeddings(key, hashes) if ws is not None else (np.empty(0, np.uint64), None)
        miss = ~np.isin(hashes, found)
        todo_h = hashes[miss]
        todo_t = [t for t, m in zip(texts, miss) if m]
        # longest first: a chunk holds similar lengths, so padding is small (and memory trouble shows at once)
        order = sorted(range(len(todo_t)), key=lambda i: -len(todo_t[i]))
        if order:
            t0 = time.perf_counter()
            self.model()
            self.stats["seconds_load"] = round(time.perf_counter() - t0, 3)
        t0, encoded = time.perf_counter(), []
        for start in range(0, len(order), ENCODE_CHUNK):
            idx = order[start : start + ENCODE_CHUNK]
            v = self.encode([todo_t[i] for i in idx])
            if ws is not None:
                ws.store_embeddings(key, todo_h[idx], v)
            encoded.append((todo_h[idx], v))
            log.info("embedding_dedup: encoded %d of %d texts", start + len(idx), len(order))
        self.stats.update(texts=int(hashes.size), cached=int(found.size), encoded=len(todo_t), seconds_encode=round(time.perf_counter() - t0, 3))
        parts = ([(found, vecs)] if found.size else []) + encoded
        if not parts:
            return np.empty(0, np.uint64), np.empty((0, 0), np.float32)
        all_h = np.concatenate([h for h, _ in parts])
        all_v = np.vstack([v for _, v in parts])
        order_h = np.argsort(all_h)
        return all_h[order_h], all_v[order_h]

    # -- search ----------------------------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs (i < j) of rows of ``vectors`` whose inner product is at least ``floor``: (i, j, ip)."""
        import faiss

        n, dim = vectors.shape
        empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
        if n < 2:
            return empty
        if n < self.params.exact_below:
            index = faiss.IndexFlatIP(dim)
            self.stats.update(index="flat")
        else:
            nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.spherical = True  # centroids on the unit sphere, as the vectors are
            index.train(vectors)
            index.nprobe = min(self.params.nprobe, nlist)
            self.stats.update(index="ivf", nlist=nlist, nprobe=index.nprobe)
        index.add(vectors)
        out_i, out_j, out_s = [], [], []
        radius = floor - 1e-6  # FAISS keeps inner products strictly above the radius
        for start in range(0, n, SEARCH_CHUNK):
            lims, sims, ids = index.range_search(vectors[start : start + SEARCH_CHUNK], radius)
            qi = np.repeat(np.arange(start, start + lims.size - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
            keep = qi < ids  # each pair once, no self-matches
            out_i.append(qi[keep])
            out_j.append(ids[keep].astype(np.int64))
            out_s.append(sims[keep])
        return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)

    # -- decision --------------------------------------------------------------------------------------------
    def _star_edges(self, prepared: pl.DataFrame, rows: pl.DataFrame, n_groups: int, gi: np.ndarray, gj: np.ndarray) -> pl.DataFrame:
        """(uid_a = representative, uid_b = member) of the star clusters over the accepted group pairs.

        Connected components chain A~B~C into one cluster even when A and C are far apart (on real data a
        tenth of the rejects were then below the threshold to their representative); a best-first greedy
        cover rejects each member only for a representative within the threshold of it.
        """
        meta = prepared.select("uid", "n_chars", "quality").join(rows.select("uid", "g"), on="uid")
        ranked = priority_order(meta, self.params.keep)
        best = ranked.unique("g", keep="first", maintain_order=True)  # groups best first, with their best record
        best_uid = np.empty(n_groups, dtype=np.int64)
        best_uid[best["g"].to_numpy()] = best["uid"].to_numpy()
        center = greedy_centers(n_groups, gi, gj, best["g"].to_numpy().astype(np.int64))
        rep = best_uid[center[rows["g"].to_numpy().astype(np.int64)]]
        uids = rows["uid"].to_numpy()
        star = rep != uids
        return pl.DataFrame({"uid_a": rep[star], "uid_b": uids[star]}, schema={"uid_a": pl.Int64, "uid_b": pl.Int64})

    def decide(self, prepared: pl.DataFrame) -> GlobalDecision:
        """Embed each distinct text (cached in the workspace), find neighbours above ``threshold`` on every
        compared field, cluster them; members other than the representative rejected as ``semantic_duplicate``
        (or only grouped); returns clusters, pairs and stats."""
        p = self.params
        hcols = [f"h_{part}" for part in self.parts]
        self.stats = {"records": prepared.height}
        # one vector per distinct combination of texts: identical records are never searched twice
        if "kind" not in prepared.columns:
            prepared = prepared.with_columns(kind=pl.lit("sft"))
        keys = [*hcols, "kind"]
        groups = prepared.select(keys).unique(maintain_order=True).with_row_index("g", offset=0)
        rows = prepared.select("uid", *keys).join(groups, on=keys, how="left", maintain_order="left")
        texts = pl.concat(
            [prepared.select(h=pl.col(f"h_{part}"), t=pl.col(f"t_{part}")) for part in self.parts]
        ).unique("h", keep="first")
        hashes, vectors = self.embeddings(texts["h"].to_numpy(), texts["t"].to_list())
        halves = [vectors[np.searchsorted(hashes, groups[c].to_numpy())] for c in hcols]
        index_vectors = halves[0] if len(halves) == 1 else np.hstack(halves) * np.float32(1 / math.sqrt(2))

        def similarity(ga: np.ndarray, gb: np.ndarray) -> np.ndarray:
            # the smallest per-field cosine (one field: its cosine)
            return np.min([np.einsum("ij,ij->i", h[ga], h[gb]) for h in halves], axis=0)

        floor = max(p.threshold - REPORT_FLOOR, 0.0)
        t0 = time.perf_counter()
        gi, gj, sims = self.search(np.ascontiguousarray(index_vectors, dtype=np.float32), floor)
        if len(halves) > 1 and gi.size:
            sims = similarity(gi, gj)
            ok = sims >= floor
            gi, gj, sims = gi[ok], gj[ok], sims[ok]
        group_kind = groups["kind"].to_numpy()
        if gi.size and len(set(group_kind)) > 1:  # no pair across kinds
            same = group_kind[gi] == group_kind[gj]
            gi, gj, sims = gi[same], gj[same], sims[same]
        self.stats.update(seconds_search=round(time.perf_counter() - t0, 3), vectors=groups.height)

        first_uid = rows.group_by("g").agg(pl.col("uid").min()).sort("g")["uid"].to_numpy()
        ua, ub = first_uid[gi], first_uid[gj]
        searched = pl.DataFrame(
            {"uid_a": np.minimum(ua, ub), "uid_b": np.maximum(ua, ub), "similarity": sims.astype(np.float64)},
            schema={"uid_a": pl.Int64, "uid_b": pl.Int64, "similarity": pl.Float64},
        )
        identical = rows.with_columns(uid_a=pl.col("uid").min().over("g")).filter(pl.col("uid") != pl.col("uid_a"))
        pairs = pl.concat([searched, identical.select("uid_a", uid_b="uid", similarity=pl.lit(1.0))])
        accepted = pairs.filter(pl.col("similarity") >= p.threshold)
        report = pairs.sort("similarity", descending=True).head(REPORT_CAP).with_columns(pl.col("similarity").round(4))
        self.stats.update(pairs_scored=pairs.height, pairs_accepted=accepted.height)
        if p.action == "reject":
            ok = sims >= p.threshold
            accepted = self._star_edges(prepared, rows, groups.height, gi[ok], gj[ok])

        by_uid = rows.sort("uid")
        uid_sorted, g_sorted = by_uid["uid"].to_numpy(), by_uid["g"].to_numpy().astype(np.int64)

        def to_rep(member_uids: np.ndarray, rep_uids: np.ndarray) -> np.ndarray:
            ga = g_sorted[np.searchsorted(uid_sorted, member_uids)]
            gb = g_sorted[np.searchsorted(uid_sorted, rep_uids)]
            return similarity(ga, gb)

        return decide_clusters(
            prepared.select("uid", "id", "source_file", "source_line", "n_chars", "quality"),
            accepted,
            keep=p.keep,
            reason="semantic_duplicate",
            measure="cosine",
            similarity_to_rep=to_rep,
            action=p.action,
            report_pairs=report,
        )
