"""`curate run`: read, normalize, run the stages, keep the ledger, export, report.

Every input unit ends as exactly one of: kept, rejected (stage, reason, detail, duplicate_of) or
quarantined (file, line, error). The run checks ``inputs = kept + rejected + quarantined`` and writes it,
with the per-stage counts, to ``summary.json`` in the run's output folder.

Records stream through the per-record stages batch by batch and land in the workspace; a global stage
(dedup) sees only the small columns its ``prepare`` kept. Stages after a global stage run in a further
pass over the kept records, read back from the workspace in batches.

A run's id is a hash of its config, its input files (path, size, mtime) and the code version. Re-running
a finished run is a no-op (``force`` re-runs it); re-running a run that was killed midway clears what it
left in the workspace and starts over. Output files are written to a temporary folder and swapped in at
the end, so a killed run never leaves half-written output.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import queue
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from curate import __version__
from curate.config import CurateConfig, InputSpec
from curate.frames import with_derived
from curate.readers import Bad, expand_paths, read_file
from curate.shapes import Converter, ShapeError, build_frame
from curate.stages import GlobalDecision, GlobalStage, RecordStage, Stage, StageContext
from curate.workspace import RunStore, Workspace

STORED_COLUMNS = ["uid", "id", "source_file", "source_line", "shape", "messages", "meta", "fixes", "n_chars", "n_tokens", "split", "scores"]


class StrictModeError(RuntimeError):
    """Raised in strict mode at the first malformed record."""


class RunError(RuntimeError):
    """A run cannot go on (the inputs or the workspace changed under it); the message says what happened."""


@dataclass
class RunResult:
    """What :meth:`Pipeline.run` returns: the run's id, its summary (the ``summary.json`` content), output and
    workspace folders, and ``skipped`` when an identical finished run was reused."""
    run_id: str
    summary: dict[str, Any]
    output_dir: Path
    workspace: Path
    skipped: bool = False  # True when an identical finished run was found and nothing was recomputed

    @property
    def ok(self) -> bool:
        """Whether the ledger invariant held: inputs = kept + rejected + quarantined."""
        return bool(self.summary.get("invariant_ok"))


@dataclass
class _Pass:
    """The stages of one streaming pass: per-record stages, then the global stages that follow them.

    Consecutive global stages share a pass: each prepares on the same survivors while records stream,
    and each decides in turn over its prepared rows minus those an earlier one rejected, which is what
    a pass of its own would have seen, without reading the kept set back in between.
    """

    record_stages: list[tuple[int, RecordStage]] = field(default_factory=list)
    global_stages: list[tuple[int, GlobalStage]] = field(default_factory=list)


def _plan(stages: list[Stage]) -> list[_Pass]:
    passes, cur = [], _Pass()
    for pos, stage in enumerate(stages):
        if isinstance(stage, GlobalStage):
            cur.global_stages.append((pos, stage))
        else:
            if cur.global_stages:
                passes.append(cur)
                cur = _Pass()
            cur.record_stages.append((pos, stage))  # type: ignore[arg-type]
    if cur.record_stages or cur.global_stages or not passes:
        passes.append(cur)
    return passes


def _file_fingerprint(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def config_dict(cfg: CurateConfig) -> dict[str, Any]:
    """The config as recorded with the run (and hashed to recognize an identical run): JSON-ready, without
    ``base_dir``, each stage as ``{name: params}`` with every parameter spelled out."""
    data = cfg.model_dump(mode="json", exclude={"base_dir"})
    data["stages"] = [{s.name: s.params.model_dump(mode="json")} for s in cfg.stages]
    return data


def _split_expr(cfg: CurateConfig, digits: int = 0) -> pl.Expr:
    # The id is a BLAKE2b hex digest, so its first 8 hex digits are a uniform 32-bit number: the split is
    # a function of content alone (same record, same split, on every machine and every re-run).
    # ``digits=8`` reads the next 8 instead: for a cluster keyed by its *smallest* id, whose first digits
    # are skewed low (the minimum of many), they would put nearly every cluster in train.
    s = cfg.splits
    u = ((pl.col("id").str.slice(digits, 8).str.to_integer(base=16) + s.seed * 2654435761) % (1 << 32)) / float(1 << 32)
    return (
        pl.when(u < s.train).then(pl.lit("train"))
        .when(u < s.train + s.validation).then(pl.lit("validation"))
        .otherwise(pl.lit("test"))
    )


class _Timer:
    """Seconds spent per phase and per stage, reported in the summary (where does the time go?)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t


class _BackgroundWriter:
    """Appends frames to the workspace on a thread of its own, so DuckDB's inserts (which release the
    GIL) overlap with parsing the next batch. The queue is short: memory stays bounded. Only this thread
    touches the connection until ``close()``; an insert error is re-raised there."""

    def __init__(self, ws: RunStore, run_id: str, timer: _Timer):
        self.ws, self.run_id, self.timer = ws, run_id, timer
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="workspace-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    with self.timer("workspace write (background)"):
                        for table, frame in item:
                            self.ws.append(table, self.run_id, frame)
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    self.error = exc

    def put(self, *items: tuple[str, pl.DataFrame | None]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put([(t, f) for t, f in items if f is not None and f.height])

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


class Pipeline:
    """One configured curate run. ``run()`` does the work; tests may also call the steps."""

    def __init__(self, cfg: CurateConfig, *, progress: bool | None = None, strict: bool | None = None):
        self.timer = _Timer()
        self.stage_stats: dict[str, dict] = {}  # global stages' own counts (GlobalDecision.stats), for the summary
        self.cfg = cfg
        self.strict = cfg.strict if strict is None else strict
        self.progress = sys.stderr.isatty() if progress is None else progress
        # Everything that can fail on a bad config fails here, before any work.
        self.files: list[tuple[InputSpec, list[Path]]] = [(spec, expand_paths(spec.path, cfg.base_dir)) for spec in cfg.inputs]
        self.tokenizer = None
        if cfg.tokenizer:
            from curate.tokens import TokenCounter

            self.tokenizer = TokenCounter.from_spec(cfg.tokenizer, cfg.base_dir)
        self.context = StageContext(config_dir=cfg.base_dir, tokenizer=self.tokenizer)
        self.stages: list[Stage] = [spec.build(self.context) for spec in cfg.stages]
        self.passes = _plan(self.stages)
        self.converters = [
            Converter(
                spec.shape,
                spec.mapping,
                spec.role_aliases,
                cfg.normalize.placeholders,
                cfg.normalize.output_placeholders,
                cfg.normalize.eos_markers,
                cfg.normalize.unwrap_templates,
            )
            for spec in cfg.inputs
        ]
        fp = {
            "config": config_dict(cfg),
            "files": [_file_fingerprint(p) for _, paths in self.files for p in paths],
            # files a stage reads (a blocklist, an eval set): editing one must re-run, not report "up to date"
            "stage_files": [_file_fingerprint(p) for p in self._stage_files()],
            # a user's own stage or shape (a plugin): editing its code must re-run too
            "plugin_files": [_file_fingerprint(p) for p in self._plugin_files()],
            "version": __version__,
        }
        self.fingerprint = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()
        self.run_id = f"{cfg.name}-{self.fingerprint[:12]}"

    def _plugin_files(self) -> list[Path]:
        """The source files of the user code this run executes: stage classes and shapes defined outside
        this project (``plugins:``, ``module:Class`` specs, entry points) and the config's plugin modules."""
        from curate.plugins import import_entry
        from curate.registry import origin_file
        from curate.shapes import SHAPES

        classes: list[Any] = [type(stage) for stage in self.stages]
        for spec in self.cfg.inputs:
            classes += [cls for cls in SHAPES.entries.values() if cls.detectable] if spec.shape == "auto" else [SHAPES.get(spec.shape)]
        files = {f for f in map(origin_file, classes) if f is not None}
        for entry in self.cfg.plugins:
            module_file = getattr(import_entry(entry, self.cfg.base_dir), "__file__", None)
            if module_file:
                files.add(Path(module_file).resolve())
        return sorted(files)

    def _stage_files(self) -> list[Path]:
        """Files the stages read: a stage lists them with ``input_files()``; otherwise any string
        parameter naming an existing file counts (a blocklist path)."""
        found: list[Path] = []
        for spec, stage in zip(self.cfg.stages, self.stages):
            listed = getattr(stage, "input_files", None)
            if listed is not None:
                found.extend(Path(p) for p in listed())
                continue
            for value in spec.params.model_dump().values():
                for v in value if isinstance(value, list) else [value]:
                    if isinstance(v, str) and v and len(v) < 4096:
                        path = self.context.resolve(v)
                        if path.is_file():
                            found.append(path)
        return found

    # -- ingest: files -> canonical batches + quarantine -----------------------------------------------------
    def ingest(self, limit_per_input: int | None = None):
        """Yield (canonical frame with derived columns, quarantine frame, file stats) batch by batch."""
        uid = 0
        for (spec, paths), conv in zip(self.files, self.converters):
            budget = min(x for x in (spec.limit, limit_per_input, 1 << 62) if x is not None)
            for path in paths:
                if budget <= 0:
                    break
                shown = _display_path(path, self.cfg.base_dir)
                for raw in read_file(path, batch_size=self.cfg.batch_size, max_record_bytes=self.cfg.max_record_bytes, csv_header=spec.csv_header):
                    bad: list[tuple[int, Bad]] = []
                    # Bad lines and good records interleave in file order; uids follow that order.
                    uids, lines, shapes, roles, contents, metas, fixes = [], [], [], [], [], [], []
                    events = sorted(
                        [(b.line, 0, b) for b in raw.bad] + [(ln, 1, rec) for ln, rec in zip(raw.lines, raw.records)],
                        key=lambda e: (e[0], e[1]),
                    ) if raw.bad else [(ln, 1, rec) for ln, rec in zip(raw.lines, raw.records)]
                    convert = conv.convert
                    for line, kind, item in events:
                        if budget <= 0:
                            break
                        budget -= 1
                        if kind == 0:
                            bad.append((uid, item))
                        else:
                            try:
                                shape, r, c, m, f = convert(item)
                            except ShapeError as exc:
                                bad.append((uid, Bad(line, exc.message, _raw_excerpt(item), exc.field)))
                            else:
                                uids.append(uid)
                                lines.append(line)
                                shapes.append(shape)
                                roles.append(r)
                                contents.append(c)
                                metas.append(m)
                                fixes.append(f)
                        uid += 1
                    if bad and self.strict:
                        u, b = bad[0]
                        where = f" field {b.field!r}:" if b.field else ""
                        raise StrictModeError(f"{shown}:{b.line}:{where} {b.error} (strict mode stops at the first malformed record)")
                    with self.timer("build+normalize"):
                        frame = build_frame(uids, shown, lines, shapes, roles, contents, metas, fixes)
                    with self.timer("tokenize" if self.tokenizer else "derive"):
                        frame = with_derived(frame, self.tokenizer)
                    quarantine = pl.DataFrame(
                        {
                            "uid": [u for u, _ in bad],
                            "source_file": [shown] * len(bad),
                            "source_line": [b.line for _, b in bad],
                            "field": [b.field for _, b in bad],
                            "error": [b.error for _, b in bad],
                            "raw": [b.raw for _, b in bad],
                        },
                        schema={"uid": pl.Int64, "source_file": pl.Utf8, "source_line": pl.Int64, "field": pl.Utf8, "error": pl.Utf8, "raw": pl.Utf8},
                    )
                    yield frame, quarantine, shown

    # -- the per-record part of a pass, on one batch ---------------------------------------------------------
    def apply_record_stages(self, batch: pl.DataFrame, stages: list[tuple[int, RecordStage]]):
        """Run per-record stages in order on a batch.

        Returns (all rows with rewrites applied, survivors, rejects, scores by uid)."""
        rejects, scores = [], []
        alive = batch
        rows = batch
        for _, stage in stages:
            if alive.height == 0:
                break
            with self.timer(f"stage:{stage.name}"):
                out = stage.evaluate(alive)
            missing = {"reason", "detail"} - set(out.columns)
            if missing or out.height != alive.height:
                raise RunError(f"stage {stage.name!r} broke the stage contract (missing {missing} or row count changed)")
            is_rej = out["reason"].is_not_null()
            if is_rej.any():
                rejects.append(
                    out.filter(is_rej).select(
                        "uid", stage=pl.lit(stage.name), reason="reason", detail="detail",
                        duplicate_of=pl.lit(None, dtype=pl.Utf8),
                    )
                )
            if stage.score_columns:
                scores.append(out.select("uid", *stage.score_columns))
            if stage.rewrites_messages:
                new = out.select("uid", "messages", "fixes", "prompt_text", "response_text", "n_chars")
                rows = rows.update(new, on="uid")
            alive = out.filter(~is_rej).select(batch.columns)
            if stage.rewrites_messages:
                alive = alive.update(out.filter(~is_rej).select("uid", "messages", "fixes", "prompt_text", "response_text", "n_chars"), on="uid")
        score_frame = None
        if scores:
            score_frame = scores[0]
            for s in scores[1:]:
                score_frame = score_frame.join(s, on="uid", how="full", coalesce=True)
        rej = pl.concat(rejects) if rejects else None
        return rows, alive, rej, score_frame

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self, force: bool = False, limit_per_input: int | None = None, write_outputs: bool = True, workspace: Workspace | None = None) -> RunResult:
        """Read every input, run the stages, assign splits and write exports, report, ledger and summary; registers
        the run in the workspace. A finished run with the same config and inputs is reused unless ``force``.
        ``limit_per_input`` and ``write_outputs=False`` serve ``--dry-run``. Raises StrictModeError with ``--strict``."""
        cfg = self.cfg
        out_dir = cfg.output_path
        own_ws = workspace is None
        ws = workspace or Workspace(cfg.workspace_path)
        # Millions of short-lived containers make CPython's cyclic GC rescan every live record over and
        # over (it doubled ingest time); records hold no reference cycles, so refcounting frees them.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            prev = ws.run(self.run_id)
            if (
                not force and prev and prev["status"] == "done" and prev.get("summary")
                and not any(s.volatile for s in self.stages)
                and (out_dir / "summary.json").is_file()
                and json.loads((out_dir / "summary.json").read_text()).get("run_id") == self.run_id
            ):
                return RunResult(self.run_id, prev["summary"], out_dir, Path(ws.path), skipped=True)
            return self._run(ws, out_dir, limit_per_input, write_outputs)
        finally:
            if gc_was_enabled:
                gc.enable()
            if own_ws:
                ws.close()

    def _run(self, ws: Workspace, out_dir: Path, limit_per_input: int | None, write_outputs: bool) -> RunResult:
        cfg, run_id = self.cfg, self.run_id
        t0 = time.perf_counter()
        started = datetime.now(timezone.utc)
        # the run's own data file: only this process opens it until the run is registered done
        store = ws.begin_run(run_id, "curate", cfg.name, config_dict(cfg), self.fingerprint, str(out_dir))
        self.workspace_path = ws.path
        # One checkpoint (compression) at the end instead of one every 16 MB of WAL: fewer, larger writes.
        store.con.execute("SET checkpoint_threshold = '64GB'")
        try:
            summary = self._execute(ws, store, limit_per_input, t0, started)
            with self.timer("workspace checkpoint"):
                store.con.execute("CHECKPOINT")
                store.con.execute("RESET checkpoint_threshold")
            if write_outputs:
                summary["outputs"] = self._write_outputs(store, out_dir, summary)
            store.close()
            ws.finish_run(run_id, "done" if summary["invariant_ok"] else "failed", summary)
        except BaseException:
            store.close()
            ws.finish_run(run_id, "failed")
            raise
        return RunResult(run_id, summary, out_dir, Path(ws.path))

    def _execute(self, ws: Workspace, store: RunStore, limit_per_input: int | None, t0: float, started: datetime) -> dict[str, Any]:
        cfg, run_id = self.cfg, self.run_id
        split = _split_expr(cfg)
        file_stats: dict[str, dict[str, int]] = {}
        first = self.passes[0]
        prepared: dict[int, list[pl.DataFrame]] = {pos: [] for pos, _ in first.global_stages}
        for stage in self.stages:
            stage.setup(ws)
        bar = _progress(self.progress, "ingest + per-record stages")
        writer = _BackgroundWriter(store, run_id, self.timer)
        try:
            self._stream_first_pass(writer, first, prepared, file_stats, limit_per_input, split, bar)
        finally:
            writer.close()
            bar.close()

        self.context.workspace = ws  # for the embedding cache and the labels
        for i, p in enumerate(self.passes):
            if i > 0 and p.record_stages:
                prepared = self._record_pass(store, p, split)
            rejected: list[pl.DataFrame] = []  # uids rejected by this pass's earlier global stages
            for pos, gstage in p.global_stages:
                table = pl.concat(prepared[pos]) if prepared.get(pos) else None
                if table is not None and rejected:
                    # an anti join keeps rows whose uid is null (a stage's own tally rows)
                    table = table.join(pl.concat(rejected).unique(), on="uid", how="anti")
                if table is not None and table.height:
                    with self.timer(f"stage:{gstage.name}"):
                        outcome = gstage.decide(table)
                    decision = GlobalDecision(outcome) if isinstance(outcome, pl.DataFrame) else outcome
                    self._store_decision(store, gstage.name, decision)
                    if decision.stats:
                        self.stage_stats[gstage.name] = decision.stats
                    rejected.append(decision.rejects.select(pl.col("uid").cast(pl.Int64)))
            prepared = {}
        with self.timer("cluster splits"):
            self._assign_cluster_splits(store)
        return self._summarize(store, file_stats, t0, started)

    def _store_decision(self, ws: RunStore, stage: str, decision: GlobalDecision) -> None:
        name = pl.lit(stage)
        rej = decision.rejects
        if rej.height:
            ws.append("rejects", self.run_id, rej.select("uid", stage=name, reason="reason", detail="detail", duplicate_of="duplicate_of"))
        if decision.clusters is not None and decision.clusters.height:
            ws.append("clusters", self.run_id, decision.clusters.select(stage=name, uid="uid", rep_uid="rep_uid", similarity="similarity"))
        if decision.pairs is not None and decision.pairs.height:
            ws.append("similar_pairs", self.run_id, decision.pairs.select(stage=name, uid_a="uid_a", uid_b="uid_b", similarity="similarity"))
        if decision.links is not None and decision.links.height:
            ws.append("split_links", self.run_id, decision.links.select(stage=name, uid_a="uid_a", uid_b="uid_b", similarity="similarity"))

    def _assign_cluster_splits(self, ws: RunStore) -> None:
        """Give every member of a duplicate cluster, and both records of a split link, the same split.

        Clusters of all dedup stages and their split links (two tasks on one passage) are joined into
        connected components (a record an exact duplicate of one member and a near-duplicate of another
        links the three); a component's split is the split its smallest content id gives (from digits of
        that id that the minimum does not skew), so it does not depend on input order either.
        """
        from curate.stages.clusters import component_labels

        edges = ws.sql(
            """SELECT uid, rep_uid FROM clusters WHERE run_id = $1
               UNION ALL SELECT uid_a AS uid, uid_b AS rep_uid FROM split_links WHERE run_id = $1""",
            [self.run_id],
        )
        if edges.height == 0:
            return
        members = ws.sql(
            """SELECT uid, id, split FROM records WHERE run_id = $1 AND uid IN (
                 SELECT uid FROM clusters WHERE run_id = $1 UNION SELECT rep_uid FROM clusters WHERE run_id = $1
                 UNION SELECT uid_a FROM split_links WHERE run_id = $1 UNION SELECT uid_b FROM split_links WHERE run_id = $1)""",
            [self.run_id],
        )
        labels = component_labels(members["uid"].to_numpy(), edges["uid"].to_numpy(), edges["rep_uid"].to_numpy())
        members = members.with_columns(component=pl.Series(labels, dtype=pl.Int64))
        members = members.with_columns(id=pl.col("id").min().over("component"))
        new = members.with_columns(new_split=_split_expr(self.cfg, digits=8)).filter(pl.col("new_split") != pl.col("split"))
        if new.height:
            arrow = new.select("uid", split="new_split").to_arrow()  # noqa: F841 - read by DuckDB below
            ws.con.execute(
                "UPDATE records SET split = a.split FROM arrow a WHERE records.run_id = ? AND records.uid = a.uid",
                [self.run_id],
            )

    def _stream_first_pass(self, writer, first, prepared, file_stats, limit_per_input, split, bar) -> None:
        # Parsing (Python, holds the GIL) runs a batch ahead on its own thread while this thread runs the
        # stages (Polars/NumPy, mostly without the GIL): on two cores the two overlap.
        batches = _prefetch(self.ingest(limit_per_input))
        while True:
            with self.timer("waiting for ingest"):
                item = next(batches, None)
            if item is None:
                break
            frame, quarantine, shown = item
            stats = file_stats.setdefault(shown, {"records": 0, "quarantined": 0})
            stats["records"] += frame.height
            stats["quarantined"] += quarantine.height
            rows, alive, rej, scores = self.apply_record_stages(frame, first.record_stages)
            self._prepare_globals(first, alive, prepared)
            with self.timer("store (prepare rows)"):
                writer.put(("quarantine", quarantine), ("records", self._stored_rows(rows, scores, split)), ("rejects", rej))
            bar.update(frame.height + quarantine.height)

    def _prepare_globals(self, p: _Pass, alive: pl.DataFrame, prepared: dict[int, list[pl.DataFrame]]) -> None:
        if not alive.height:
            return
        for pos, gstage in p.global_stages:
            with self.timer(f"stage:{gstage.name}"):
                prepared[pos].append(gstage.prepare(alive))

    def _record_pass(self, ws: RunStore, p: _Pass, split: pl.Expr) -> dict[int, list[pl.DataFrame]]:
        """A later pass: per-record stages over the kept records, read back from the workspace."""
        prepared: dict[int, list[pl.DataFrame]] = {pos: [] for pos, _ in p.global_stages}
        all_rej, rewrites, new_scores = [], [], []
        cols = ["uid", "id", "source_file", "source_line", "shape", "messages", "meta", "fixes", "n_chars", "n_tokens"]
        for batch in ws.kept_batches(self.run_id, cols, self.cfg.batch_size):
            tokens = batch["n_tokens"]
            batch = with_derived(batch.drop("n_tokens"), None).with_columns(n_tokens=tokens)
            rows, alive, rej, scores = self.apply_record_stages(batch, p.record_stages)
            if rej is not None:
                all_rej.append(rej)
            if scores is not None:
                score_cols = [c for c in scores.columns if c != "uid"]
                new_scores.append(scores.select("uid", new=pl.struct(score_cols).struct.json_encode()))
            if any(s.rewrites_messages for _, s in p.record_stages):
                rewrites.append(rows.select("uid", "messages", "fixes", "n_chars"))
            self._prepare_globals(p, alive, prepared)
        for rej in all_rej:
            ws.append("rejects", self.run_id, rej)
        for new in rewrites:
            arrow = new.to_arrow()  # noqa: F841 - read by DuckDB below
            ws.con.execute(
                "UPDATE records SET messages = a.messages, fixes = a.fixes, n_chars = a.n_chars FROM arrow a WHERE records.run_id = ? AND records.uid = a.uid",
                [self.run_id],
            )
        # a stage after a global stage scores the records that reached it, like any other: its scores join the
        # ones the first pass stored (one JSON object per record), so its threshold can be retuned the same way
        for new in new_scores:
            arrow = new.to_arrow()  # noqa: F841 - read by DuckDB below
            ws.con.execute(
                "UPDATE records SET scores = json_merge_patch(coalesce(records.scores, '{}'), a.new)::VARCHAR "
                "FROM arrow a WHERE records.run_id = ? AND records.uid = a.uid",
                [self.run_id],
            )
        return prepared

    @staticmethod
    def _stored_rows(rows: pl.DataFrame, scores: pl.DataFrame | None, split: pl.Expr) -> pl.DataFrame:
        if scores is not None:
            score_cols = [c for c in scores.columns if c != "uid"]
            scores = scores.select("uid", scores=pl.struct(score_cols).struct.json_encode())
            rows = rows.join(scores, on="uid", how="left")
        else:
            rows = rows.with_columns(scores=pl.lit(None, dtype=pl.Utf8))
        return rows.with_columns(split=split).select(STORED_COLUMNS)

    # -- summary, ledger check -------------------------------------------------------------------------------
    def _summarize(self, ws: RunStore, file_stats: dict, t0: float, started: datetime) -> dict[str, Any]:
        run_id = self.run_id
        c = ws.counts(run_id)
        inputs = c["records"] + c["quarantined"]
        invariant_ok = (
            c["reject_rows"] == c["rejected"]  # nobody rejected twice
            and c["overlap"] == 0  # nobody both a record and quarantined
            and inputs == c["kept"] + c["rejected"] + c["quarantined"]
        )
        by_stage = ws.sql(
            "SELECT stage, reason, count(*) AS n FROM rejects WHERE run_id = ? GROUP BY ALL ORDER BY stage, n DESC, reason",
            [run_id],
        )
        stages, n_in = [], c["records"]
        for pos, stage in enumerate(self.stages):
            sub = by_stage.filter(pl.col("stage") == stage.name)
            reasons = dict(zip(sub["reason"].to_list(), sub["n"].to_list()))
            rejected = int(sum(reasons.values()))
            stages.append({"position": pos, "name": stage.name, "in": n_in, "rejected": rejected, "out": n_in - rejected, "reasons": reasons})
            stats = getattr(stage, "stats", None)
            if stats:  # what a global stage did (texts encoded vs cached, pairs scored...)
                stages[-1]["stats"] = stats
            n_in -= rejected
        ws.write_stage_counts(run_id, stages)
        shapes = ws.sql("SELECT shape, count(*) AS n FROM records WHERE run_id = ? GROUP BY shape ORDER BY n DESC", [run_id])
        qreasons = ws.sql(
            "SELECT regexp_replace(error, ' \\(element.*$', '') AS e, count(*) AS n FROM quarantine WHERE run_id = ? GROUP BY e ORDER BY n DESC",
            [run_id],
        )
        fixes = ws.sql("SELECT f, count(*) AS n FROM (SELECT unnest(fixes) AS f FROM records WHERE run_id = ?) GROUP BY f ORDER BY n DESC", [run_id])
        splits = ws.sql(
            """SELECT split, count(*) AS n FROM records r ANTI JOIN rejects j ON r.run_id = j.run_id AND r.uid = j.uid
               WHERE r.run_id = ? GROUP BY split""",
            [run_id],
        )
        clusters = ws.sql(
            """SELECT stage, count(*) AS clusters, max(n) AS largest, sum(n)::BIGINT AS members FROM (
                 SELECT stage, rep_uid, count(*) AS n FROM clusters WHERE run_id = ? GROUP BY stage, rep_uid)
               GROUP BY stage ORDER BY stage""",
            [run_id],
        )
        links = ws.sql("SELECT stage, count(*) AS n FROM split_links WHERE run_id = ? GROUP BY stage ORDER BY stage", [run_id])
        # The closest kept records in different splits, by exact similarity: what a validation loss could
        # still memorize from the training split (curate.leakage says how it searches and what it can miss).
        from curate.leakage import split_leakage_in_store

        with self.timer("split leakage audit"):
            leakage = split_leakage_in_store(ws, run_id, batch_size=self.cfg.batch_size)
        seconds = time.perf_counter() - t0
        return {
            "run_id": run_id,
            "name": self.cfg.name,
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "records_per_second": round(inputs / seconds, 1) if seconds > 0 else None,
            "inputs": inputs,
            "kept": c["kept"],
            "rejected": c["rejected"],
            "quarantined": c["quarantined"],
            "invariant_ok": bool(invariant_ok),
            "tokenizer": self.tokenizer.name if self.tokenizer else None,
            "unit": "tokens" if self.tokenizer else "characters",
            "files": [{"path": k, **v} for k, v in file_stats.items()],
            "shapes": dict(zip(shapes["shape"].to_list(), shapes["n"].to_list())),
            "stages": stages,
            "quarantine_reasons": dict(zip(qreasons["e"].to_list(), qreasons["n"].to_list())),
            "fixes": dict(zip(fixes["f"].to_list(), fixes["n"].to_list())),
            "splits": {k: int(dict(zip(splits["split"].to_list(), splits["n"].to_list())).get(k, 0)) for k in ("train", "validation", "test")},
            "clusters": {r.pop("stage"): r for r in clusters.to_dicts()},
            "split_links": dict(zip(links["stage"].to_list(), links["n"].to_list())),
            "stage_stats": self.stage_stats,
            "leakage": leakage,
            "timings": {k: round(v, 3) for k, v in sorted(self.timer.seconds.items(), key=lambda kv: -kv[1])},
            "workspace": str(self.workspace_path),
            "version": __version__,
        }

    # -- outputs ---------------------------------------------------------------------------------------------
    def _write_outputs(self, ws: RunStore, out_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
        from curate.export import export_run
        from curate.report import write_report

        out_dir.parent.mkdir(parents=True, exist_ok=True)
        for stale in [*out_dir.parent.glob(f".{out_dir.name}.tmp-*"), *out_dir.parent.glob(f".{out_dir.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a run that was killed while writing
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            # paths in the summary are relative to the run folder, so the folder can be moved
            summary["outputs"] = export_run(ws, self.run_id, tmp)
            examples, lengths = _report_inputs(ws, self.run_id, self.cfg.report.examples_per_reason)
            review = _review_inputs(ws, self.run_id, self.stages, self.cfg.report)
            report_files = write_report(summary, examples, lengths, tmp, review=review)
            summary["outputs"]["report"] = {k: str(Path(v).relative_to(tmp)) for k, v in report_files.items()}
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            _swap_dir(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return summary["outputs"]


def _report_inputs(ws: RunStore, run_id: str, n: int):
    import numpy as np

    ex = ws.sql(
        """SELECT * FROM (
             SELECT j.reason, j.stage, j.detail, j.duplicate_of, r.uid, r.id, r.source_file, r.source_line, r.messages,
                    row_number() OVER (PARTITION BY j.stage, j.reason ORDER BY r.uid) AS k
             FROM rejects j JOIN records r ON r.run_id = j.run_id AND r.uid = j.uid WHERE j.run_id = ?)
           WHERE k <= ? ORDER BY stage, reason, uid""",
        [run_id, n],
    )
    examples: dict[str, list[dict]] = {}
    for row in ex.drop("k").to_dicts():
        examples.setdefault(row["reason"], []).append(row)
    q = ws.sql("SELECT source_file, source_line, field, error, raw FROM quarantine WHERE run_id = ? ORDER BY uid LIMIT ?", [run_id, max(n, 10)])
    examples["quarantine"] = q.to_dicts()
    measure = "coalesce(n_tokens, n_chars)"
    before = ws.sql(f"SELECT {measure} AS n FROM records WHERE run_id = ?", [run_id])["n"].to_numpy()
    after = ws.sql(
        f"SELECT {measure} AS n FROM records r ANTI JOIN rejects j ON r.run_id = j.run_id AND r.uid = j.uid WHERE r.run_id = ?",
        [run_id],
    )["n"].to_numpy()
    return examples, {"before": np.asarray(before), "after": np.asarray(after)}


def _review_inputs(ws: RunStore, run_id: str, stages: list[Stage], report_cfg) -> dict[str, Any]:
    """What the report's duplicate review and contamination sections show.

    - ``clusters``: per dedup stage, its largest clusters (representative first, then members by
      similarity, at most ``report.cluster_members`` each), ``report.clusters`` of them;
    - ``similarities``: per near-dup stage, the scored pairs' similarities and the stage's threshold;
    - ``contamination``: contaminated records with the eval item and matched span (from ``detail``).
    """
    import numpy as np

    rows = ws.sql(
        """WITH sizes AS (SELECT stage, rep_uid, count(*) AS size FROM clusters WHERE run_id = $1 GROUP BY ALL),
                top AS (SELECT *, row_number() OVER (PARTITION BY stage ORDER BY size DESC, rep_uid) AS k FROM sizes
                        QUALIFY k <= $2),
                members AS (SELECT t.stage, t.k, t.size, m.uid, m.rep_uid, m.similarity,
                                   row_number() OVER (PARTITION BY t.stage, t.k ORDER BY m.uid <> m.rep_uid, m.similarity DESC, m.uid) AS j
                            FROM top t JOIN clusters m ON m.run_id = $1 AND m.stage = t.stage AND m.rep_uid = t.rep_uid)
           SELECT m.stage, m.k, m.size, m.j, m.uid, m.rep_uid, m.similarity, r.id, r.source_file, r.source_line, r.messages
           FROM members m JOIN records r ON r.run_id = $1 AND r.uid = m.uid
           WHERE m.j <= $3 + 1 ORDER BY m.stage, m.k, m.j""",
        [run_id, report_cfg.clusters, report_cfg.cluster_members],
    )
    clusters: dict[str, list[dict]] = {}
    for row in rows.to_dicts():
        group = clusters.setdefault(row["stage"], [])
        if not group or group[-1]["k"] != row["k"]:
            group.append({"k": row["k"], "size": row["size"], "members": []})
        group[-1]["members"].append(row)
    thresholds = {s.name: getattr(s.params, "threshold", None) for s in stages}
    pairs = ws.sql("SELECT stage, similarity FROM similar_pairs WHERE run_id = ?", [run_id])
    similarities = {
        stage: {"values": np.asarray(pairs.filter(pl.col("stage") == stage)["similarity"].to_numpy()), "threshold": thresholds.get(stage)}
        for stage in pairs["stage"].unique().sort().to_list()
    }
    contamination = ws.sql(
        """SELECT j.uid, r.source_file, r.source_line, j.detail FROM rejects j JOIN records r ON r.run_id = j.run_id AND r.uid = j.uid
           WHERE j.run_id = ? AND j.reason = 'contaminated' ORDER BY j.uid LIMIT ?""",
        [run_id, report_cfg.contamination_rows],
    ).to_dicts()
    return {"clusters": clusters, "similarities": similarities, "contamination": contamination}


def _swap_dir(new: Path, target: Path) -> None:
    """Replace ``target`` with ``new`` so that readers see the old or the new folder, never a mix."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _display_path(path: Path, base: Path) -> str:
    """``path`` relative to the config's folder (``../data/x.jsonl`` when it lies beside it), else absolute."""
    rel = os.path.relpath(path.resolve(), base.resolve())
    ups = Path(rel).parts.count(os.pardir)
    return rel if ups <= 2 else str(path.resolve())


def _raw_excerpt(item: Any) -> str:
    import orjson

    try:
        text = orjson.dumps(item, default=str).decode()
    except TypeError:
        text = repr(item)
    return text[:300] + ("…" if len(text) > 300 else "")


def _prefetch(iterator, depth: int = 2):
    """Iterate ``iterator`` on a background thread, ``depth`` items ahead; its exceptions re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, name="ingest", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(desc=desc, unit=" rec", unit_scale=True, file=sys.stderr)


def run_pipeline(cfg: CurateConfig, *, force: bool = False, strict: bool | None = None, progress: bool | None = None) -> RunResult:
    """Library entry point of `curate run`."""
    return Pipeline(cfg, progress=progress, strict=strict).run(force=force)
