"""The workspace: a folder that curate, train, evalsuite and several app servers and annotators use at once.

DuckDB allows one writing process per file, so no single file can serve a run, two app servers and four
annotators together. The workspace separates the two kinds of data it holds::

    WORKSPACE/
      catalog.sqlite              runs registry + labels, preferences, skips, annotator settings (SQLite, WAL)
      runs/<run_id>-<token>.duckdb one run's bulk data (records, rejects, clusters, eval examples, ...)
      embeddings.duckdb           the embedding cache shared by runs

- **Bulk, append-once results** go to a DuckDB file of the run's own, which only the process running it
  opens until it finishes; it is registered in the catalog in one short transaction when the run starts
  and when it ends. A finished run's file never changes again, so any number of readers open it read-only
  at once. A re-run writes a new file and switches the registry row to it, so readers of the old data are
  never blocked (they keep the old file open until they close it).
- **Small, concurrent human writes** (labels, votes, skips) go to the SQLite catalog in WAL mode: readers
  never wait for a writer, writers queue for a lock held for milliseconds, and a commit is durable when it
  returns, so the app says "saved" only then. Each write carries a unique action key: a retried press is
  stored once.
- A lock held past the retry budget raises :class:`WorkspaceBusy`, whose message the app shows in place of
  a traceback; a path that is not a workspace raises :class:`WorkspaceError` (the CLIs exit 2 with it).

``docs/workspace.md`` has the measurements behind this choice.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from curate.workspace.catalog import Catalog, normalize_annotator
from curate.workspace.connections import BUSY_SECONDS, WorkspaceBusy, WorkspaceError
from curate.workspace.embeddings import EmbeddingCache
from curate.workspace.runstore import RUN_TABLES, RunStore

__all__ = ["Workspace", "WorkspaceBusy", "WorkspaceError", "RunStore", "RUN_TABLES", "normalize_annotator", "check_workspace",
           "workspace_problem"]

DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file


def check_workspace(path: str | Path, *, create: bool) -> Path:
    """``path`` as a workspace folder, or :class:`WorkspaceError` with one line saying why it is not one:
    a file (an older single-file workspace, or not a workspace at all), a folder of other files, or, when
    ``create`` is false, nothing there yet."""
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(16)
        if head[8:12] == DUCKDB_MAGIC:
            raise WorkspaceError(f"{p} is a single-file workspace of an earlier version: "
                                 f"`curate workspace upgrade {p} NEW_FOLDER` copies its runs and labels into a workspace folder")
        raise WorkspaceError(f"{p} is not a workspace (a workspace is a folder holding catalog.sqlite)")
    if p.is_dir() and not (p / "catalog.sqlite").is_file():
        if any(p.iterdir()):
            raise WorkspaceError(f"{p} is not a workspace: a folder of other files (a workspace folder holds catalog.sqlite)")
    if not create and not (p / "catalog.sqlite").is_file():
        raise WorkspaceError(f"no workspace at {p}: `curate run CONFIG` makes one, or pass --workspace")
    if (p / "catalog.sqlite").is_file():
        # asked through SQLite, never with an open() of our own: closing any descriptor of the file drops
        # every POSIX lock this process holds on it, those of SQLite connections in other threads included,
        # and another process may then reset the WAL under them (commits lost after they were reported)
        try:
            con = sqlite3.connect(str(p / "catalog.sqlite"), timeout=BUSY_SECONDS)
            try:
                con.execute("PRAGMA schema_version").fetchone()
            finally:
                con.close()
        except sqlite3.OperationalError:
            pass  # busy or locked: a real catalog; the call that needs it waits or says so
        except sqlite3.DatabaseError:
            raise WorkspaceError(f"{p / 'catalog.sqlite'} is not a SQLite file: this folder is not a usable workspace") from None
    return p


def workspace_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be served, in one line naming it, or None when it is a workspace: nothing there,
    a file that is not a workspace (not a DuckDB file, or a single-file workspace of an earlier version),
    a folder of other files. ``curate app`` exits 2 with this line; the app shows it as its one error."""
    try:
        with Workspace(path, create=False):
            return None
    except WorkspaceError as e:
        return str(e).splitlines()[0] if str(e) else f"{path} is not a workspace"
    except Exception as e:  # noqa: BLE001  (whatever the file is, the answer is one line, not a traceback)
        first = (str(e).splitlines() or [type(e).__name__])[0]
        return f"{path} is not a usable workspace: {first}"


class Workspace(Catalog):
    """A workspace folder (created when ``create`` and missing), or an in-memory one for ``:memory:``.

    Catalog methods (runs registry, labels, preferences, skips, settings) come from :class:`Catalog`; this
    class adds the runs' own data files and the embedding cache.
    """

    def __init__(self, path: str | Path = ":memory:", create: bool = True, read_only: bool | None = None):
        # ``read_only`` is accepted for callers of the single-file workspace: reading never creates anything
        if read_only:
            create = False
        self.path = str(path)
        self._memory_stores: dict[str, duckdb.DuckDBPyConnection] = {}
        if self.path == ":memory:":
            super().__init__(":memory:")
            self.embeddings = EmbeddingCache(":memory:")
            return
        folder = check_workspace(path, create=create)
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "runs").mkdir(exist_ok=True)
        self.folder = folder
        try:
            # the schema is set up by whoever creates the workspace; readers open it as it is
            super().__init__(str(folder / "catalog.sqlite"), setup=create or not (folder / "catalog.sqlite").is_file())
        except Exception as exc:  # noqa: BLE001 - a damaged catalog: one line, not a traceback
            if isinstance(exc, WorkspaceBusy):
                raise
            raise WorkspaceError(f"{folder / 'catalog.sqlite'}: cannot be used as a workspace catalog ({exc})") from None
        self.embeddings = EmbeddingCache(str(folder / "embeddings.duckdb"))

    def close(self) -> None:
        """Nothing stays open between calls; kept so ``with Workspace(...)`` reads as before."""

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the runs' own files -----------------------------------------------------------------------------
    def _data_path(self, data_file: str) -> str:
        return str(self.folder / data_file)

    def begin_run(self, run_id: str, kind: str, name: str, config: dict, fingerprint: str, output_dir: str) -> RunStore:
        """Register ``run_id`` as running and return its new data file, open for writing (the caller closes
        it before :meth:`finish_run`). An earlier attempt's file is removed once the registry points here."""
        if self.path == ":memory:":
            self._memory_stores[run_id] = duckdb.connect(":memory:")
            self._register(run_id, kind, name, config, fingerprint, output_dir, ":memory:")
            return RunStore(":memory:", con=self._memory_stores[run_id])
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)[:80]
        data_file = f"runs/{safe}-{secrets.token_hex(4)}.duckdb"
        store = RunStore(self._data_path(data_file))
        old = self._register(run_id, kind, name, config, fingerprint, output_dir, data_file)
        if old and old != data_file:
            self._remove_data_file(old)
        return store

    def _remove_data_file(self, data_file: str) -> None:
        # readers that still have it open keep reading it (POSIX): only its name goes
        for suffix in ("", ".wal"):
            try:
                os.unlink(self._data_path(data_file) + suffix)
            except FileNotFoundError:
                pass

    @contextmanager
    def run_data(self, run_id: str, write: bool = False) -> Iterator[RunStore]:
        """The data file of ``run_id``: read-only (any number of readers at once), or for writing by the
        process that runs it. Raises :class:`WorkspaceBusy` for a run another live process is still
        writing, :class:`KeyError` for an unknown run."""
        row = self.run(run_id)
        if row is None:
            raise KeyError(f"no run {run_id!r} in this workspace")
        if self.path == ":memory:":
            yield RunStore(":memory:", con=self._memory_stores[run_id])
            return
        if not write and row["status"] == "running" and _alive(row.get("pid"), row.get("host")):
            raise WorkspaceBusy(f"run {run_id} is still running; its data shows here when it finishes")
        path = self._data_path(row["data_file"])
        if not write and not Path(path).is_file():
            raise WorkspaceBusy(f"run {run_id} has no data file (it was removed or is being replaced)")
        store = RunStore(path, read_only=not write)
        try:
            yield store
        finally:
            store.close()

    def query(self, run_id: str, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        """``sql`` over the tables of ``run_id``'s own file (records, rejects, stage_counts, ...)."""
        with self.run_data(run_id) as store:
            return store.sql(sql, params)

    def delete_run(self, run_id: str) -> None:
        """Remove a run from the registry and its data file from disk."""
        row = self.run(run_id)
        self._write("DELETE FROM runs WHERE run_id = ?", [run_id])
        if row and row.get("data_file") and self.path != ":memory:":
            self._remove_data_file(row["data_file"])

    # -- embedding cache ---------------------------------------------------------------------------------
    def cached_embeddings(self, model: str, hashes: Any) -> tuple[Any, Any]:
        """See :meth:`EmbeddingCache.lookup`."""
        return self.embeddings.lookup(model, hashes)

    def store_embeddings(self, model: str, hashes: Any, matrix: Any, chunk: int = 50_000) -> None:
        """See :meth:`EmbeddingCache.store`."""
        self.embeddings.store(model, hashes, matrix, chunk)


def _alive(pid: int | None, host: str | None) -> bool:
    """Whether the process that registered a run may still be running (a run on another host counts as
    alive: we cannot tell)."""
    if pid is None:
        return True
    if host and host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
