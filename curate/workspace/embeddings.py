"""The workspace's embedding cache: sentence embeddings by model and text hash, shared by every run, so a
re-run with other thresholds does not re-encode. Its own DuckDB file (``embeddings.duckdb``), opened only
for the moment of a lookup or a store (with retry), so two runs embedding at once take turns instead of
failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from curate.workspace.connections import connect_duckdb

CACHE_SQL = "CREATE TABLE IF NOT EXISTS embedding_cache (model VARCHAR, text_hash UBIGINT, embedding FLOAT[], PRIMARY KEY (model, text_hash))"


class EmbeddingCache:
    """The cache file at ``path`` (or an in-memory cache for ``:memory:``)."""

    def __init__(self, path: str):
        self.path = path
        self._memory = duckdb.connect(":memory:") if path == ":memory:" else None
        if self._memory is not None:
            self._memory.execute(CACHE_SQL)

    def _open(self, write: bool) -> duckdb.DuckDBPyConnection | None:
        if self._memory is not None:
            return self._memory
        if not write and not Path(self.path).is_file():
            return None
        con = connect_duckdb(self.path, read_only=not write, what="the embedding cache")
        if write:
            con.execute(CACHE_SQL)
        return con

    def _close(self, con: duckdb.DuckDBPyConnection) -> None:
        if con is not self._memory:
            con.close()

    def lookup(self, model: str, hashes: Any) -> tuple[Any, Any]:
        """The cached vectors of ``model`` for those of ``hashes`` (uint64 text hashes) that are cached.

        Returns (found hashes as uint64, float32 matrix with one row per found hash), in no particular
        order; (empty, empty 0 x 0) when none is cached.
        """
        import numpy as np
        import pyarrow as pa

        empty = np.empty(0, dtype=np.uint64), np.empty((0, 0), dtype=np.float32)
        con = self._open(write=False)
        if con is None:
            return empty
        try:
            if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'embedding_cache'").fetchall()[0][0]:
                return empty
            wanted = pa.table({"text_hash": pa.array(np.unique(np.asarray(hashes, dtype=np.uint64)))})  # noqa: F841 - read by DuckDB
            table = con.sql(
                "SELECT c.text_hash, c.embedding FROM embedding_cache c SEMI JOIN wanted w ON c.text_hash = w.text_hash WHERE c.model = ?",
                params=[model],
            ).to_arrow_table()
        finally:
            self._close(con)
        if table.num_rows == 0:
            return empty
        found = table.column("text_hash").to_numpy().astype(np.uint64, copy=False)
        lists = table.column("embedding").combine_chunks()
        flat = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if flat.size % found.size:
            raise ValueError(f"embedding cache for {model!r} holds vectors of different sizes")
        return found, flat.reshape(found.size, -1)

    def store(self, model: str, hashes: Any, matrix: Any, chunk: int = 50_000) -> None:
        """Add ``matrix`` rows (float32, one per hash) to the cache of ``model``.

        Idempotent: hashes already cached for the model (or repeated in ``hashes``) keep their first vector.
        Each chunk is its own insert, so an interrupted run keeps what it stored.
        """
        import numpy as np
        import pyarrow as pa

        hashes = np.asarray(hashes, dtype=np.uint64)
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        hashes, first = np.unique(hashes, return_index=True)
        matrix = matrix[first]
        dim = matrix.shape[1] if matrix.ndim == 2 else 0
        con = self._open(write=True)
        try:
            for start in range(0, hashes.size, chunk):
                h, m = hashes[start : start + chunk], matrix[start : start + chunk]
                offsets = pa.array(np.arange(0, (h.size + 1) * dim, dim, dtype=np.int32))
                arrow = pa.table({"text_hash": pa.array(h), "embedding": pa.ListArray.from_arrays(offsets, pa.array(m.reshape(-1)))})  # noqa: F841
                con.execute("INSERT OR IGNORE INTO embedding_cache SELECT ?, text_hash, embedding FROM arrow", [model])
        finally:
            self._close(con)
