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
import tempfile
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import polars as pl

from curate import __version__
from curate.config import CurateConfig, InputSpec
from curate.executor import (
    STORED_COLUMNS,  # noqa: F401 - re-exported: the records table's columns
    Executor,
    RecordWork,
    RunError,
    StageContractError,  # noqa: F401 - re-exported
    StrictModeError,
    Task,
    TaskResult,
    Timer,
    default_workers,
    input_tasks,
    split_expr,
)
from curate.readers import expand_paths
from curate.shapes import Converter
from curate.stages import GlobalDecision, GlobalStage, RecordStage, Stage, StageContext
from curate.workspace import RunStore, Workspace

RUN_MEMORY_LIMIT = "1GB"  # DuckDB's memory while a run writes its data file (it spills to disk beyond)
PARALLEL_FROM_BYTES = 64 << 20  # inputs smaller than this run in one process unless `workers` is set

__all__ = ["Pipeline", "RunError", "RunResult", "StrictModeError", "config_dict", "run_pipeline"]


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
    return split_expr(cfg.splits, digits)


class _BackgroundWriter:
    """Appends frames to the workspace on a thread of its own, so DuckDB's inserts (which release the
    GIL) overlap with parsing the next batch. The queue is short: memory stays bounded. Only this thread
    touches the connection until ``close()``; an insert error is re-raised there."""

    def __init__(self, ws: RunStore, run_id: str, timer: Timer):
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
        self.timer = Timer()
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
        if cfg.engine == "ray":
            from curate.rayengine import require_ray

            require_ray()  # not installed: a clear error now, before any work
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
                spec.trees,
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

    # -- the record work: what workers run -------------------------------------------------------------------
    def record_work(self) -> RecordWork:
        """The per-record half of the run (parsing, record stages, global stages' prepare) as worker state."""
        stage_index = {id(stage): pos for pos, stage in enumerate(self.stages)}
        passes = [([stage_index[id(s)] for _, s in p.record_stages], [stage_index[id(s)] for _, s in p.global_stages]) for p in self.passes]
        return RecordWork(
            self.converters, [spec.csv_header for spec, _ in self.files], self.stages, passes, self.tokenizer, self.cfg.splits,
            self.cfg.batch_size, self.cfg.max_record_bytes, self.strict,
        )

    def tasks(self, limit_per_input: int | None = None) -> Iterator[Task]:
        """The first pass's tasks; with a limit (per input: ``limit`` in the config or ``limit_per_input``), each
        carries what is left of its input's budget. Lazy: budgets are read as the previous tasks finish."""
        self._used = [0] * len(self.files)
        limits = [min(x for x in (spec.limit, limit_per_input, 1 << 62) if x is not None) for spec, _ in self.files]
        for task in input_tasks(self.files, lambda p: _display_path(p, self.cfg.base_dir), self.cfg.batch_size):
            left = limits[task.input_index] - self._used[task.input_index]
            if left <= 0:
                continue
            if limits[task.input_index] < 1 << 62:
                task.budget = left
            yield task

    def _workers(self, limit_per_input: int | None) -> int:
        if self._limited(limit_per_input):  # a budget is known only once the tasks before have run: one at a time, in this process
            return 1
        if self.cfg.workers:
            return self.cfg.workers
        # starting a worker (imports, the stages' models) costs seconds: small inputs run in this process
        size = sum(p.stat().st_size for _, paths in self.files for p in paths)
        return default_workers() if size >= PARALLEL_FROM_BYTES else 1

    def _executor(self, limit_per_input: int | None):
        """The engine's executor: Ray Data actors for `engine: ray` (unless a limit makes the run sequential), else
        local worker processes (or this process)."""
        workers = self._workers(limit_per_input)
        self.on_ray = self.cfg.engine == "ray" and not self._limited(limit_per_input)
        if self.on_ray:
            from curate.rayengine import RayExecutor

            return RayExecutor(self.record_work(), self.cfg.workers, self.cfg.ray_address, self.progress)
        return Executor(self.record_work(), workers)

    def _limited(self, limit_per_input: int | None) -> bool:
        return limit_per_input is not None or any(spec.limit is not None for spec, _ in self.files)

    def ingest(self, limit_per_input: int | None = None) -> Iterator[tuple[pl.DataFrame, pl.DataFrame, str]]:
        """Yield (canonical frame with derived columns, quarantine frame, file shown) batch by batch, in this process,
        no stage run (what `curate inspect` shows)."""
        work, uid = self.record_work(), 0
        for task in self.tasks(limit_per_input):
            for frame, quarantine, units in work.parse(task, self.timer):
                yield frame.with_columns(pl.col("uid") + uid), quarantine.with_columns(pl.col("uid") + uid), task.shown
                uid += units
                self._used[task.input_index] += units

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
        # Checkpoints (compression) every 512 MB of WAL rather than every 16 MB: fewer, larger writes, while what
        # has been written leaves memory; DuckDB's own cache is capped so the run's memory stays flat in its size.
        store.con.execute("SET checkpoint_threshold = '512MB'")
        store.con.execute(f"SET memory_limit = '{RUN_MEMORY_LIMIT}'")
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
        file_stats: dict[str, dict[str, int]] = {}
        for stage in self.stages:
            stage.setup(ws)
        executor = self.executor = self._executor(limit_per_input)
        self.worker_count = executor.workers
        self.grouped_on_ray: list[str] = []
        self.worker_peaks: dict[int, float] = {}
        try:
            with tempfile.TemporaryDirectory(prefix=f"curate-{self.run_id}-") as spill_dir:
                prepared = _Prepared(Path(spill_dir) / "pass-0")
                self._first_pass(executor, store, file_stats, limit_per_input, prepared)
                self.context.workspace = ws  # for the embedding cache and the labels
                for i, p in enumerate(self.passes):
                    if i > 0 and p.record_stages:
                        prepared = _Prepared(Path(spill_dir) / f"pass-{i}")
                        self._record_pass(executor, store, i, prepared)
                    self._decide(store, p, prepared)
        finally:
            executor.close()
        with self.timer("cluster splits"):
            self._assign_cluster_splits(store)
        return self._summarize(store, file_stats, t0, started)

    def _collect(self, result: TaskResult, prepared: _Prepared) -> None:
        self.timer.merge(result.seconds)
        if result.pid and result.pid != os.getpid():  # a worker process (this one's peak is measured by whoever runs it)
            self.worker_peaks[result.pid] = max(self.worker_peaks.get(result.pid, 0.0), result.peak_rss_mb)
        with self.timer("spill prepared rows"):
            for pos, frame in result.prepared.items():
                prepared.add(pos, frame)

    def _first_pass(self, executor: Executor, store: RunStore, file_stats: dict, limit_per_input: int | None, prepared: _Prepared) -> None:
        """Read every input and run the first pass's record stages (on the executor's workers); store the rows as
        they come back, in input order, with the run's uids; spill what the global stages prepared."""
        bar = _progress(self.progress, "ingest + per-record stages")
        writer = _BackgroundWriter(store, self.run_id, self.timer)
        uid = 0
        try:
            tasks = self.tasks(limit_per_input)
            if executor.workers > 1:  # tasks are planned on a thread of their own (a compressed file is decompressed there)
                tasks = _prefetch(tasks)
            results = executor.map(tasks)
            while True:
                with self.timer("waiting for workers"):
                    result = next(results, None)
                if result is None:
                    break
                result = result.shifted(uid)
                uid += result.units
                self._used[result.input_index] += result.units
                stats = file_stats.setdefault(result.shown, {"records": 0, "quarantined": 0})
                stats["records"] += result.records
                stats["quarantined"] += result.quarantined
                self._collect(result, prepared)
                with self.timer("waiting for the workspace writer"):
                    writer.put(("quarantine", result.quarantine), ("records", result.stored), ("rejects", result.rejects))
                bar.update(result.units)
        finally:
            writer.close()
            bar.close()

    def _decide(self, store: RunStore, p: _Pass, prepared: _Prepared) -> None:
        """Each global stage of a pass decides over what it prepared, minus what an earlier one of the pass rejected:
        in DuckDB over the spilled rows where the stage can (``decide_sql``), else in memory (``decide``)."""
        rejected: list[pl.DataFrame] = []  # uids rejected by this pass's earlier global stages
        for pos, gstage in p.global_stages:
            source = prepared.source(pos)
            if source is None:
                continue
            excluded = pl.concat(rejected).unique() if rejected else pl.DataFrame(schema={"uid": pl.Int64})
            with self.timer(f"stage:{gstage.name}"):
                outcome = self._decide_one(store, gstage, prepared, pos, excluded)
            if outcome is None:
                continue
            decision = GlobalDecision(outcome) if isinstance(outcome, pl.DataFrame) else outcome
            self._store_decision(store, gstage.name, decision)
            if decision.stats:
                self.stage_stats[gstage.name] = decision.stats
            rejected.append(decision.rejects.select(pl.col("uid").cast(pl.Int64)))

    def _decide_one(self, store: RunStore, gstage: GlobalStage, prepared: _Prepared, pos: int,
                    excluded: pl.DataFrame) -> GlobalDecision | pl.DataFrame | None:
        """One global stage's outcome over its spilled rows minus ``excluded`` uids (None when no row is left)."""
        if gstage.group_key and self.on_ray:
            from curate.rayengine import decide_by_key

            self.grouped_on_ray.append(gstage.name)
            return decide_by_key(gstage, prepared.files(pos), excluded, partitions=4 * self.executor.workers)
        store.con.register("excluded_uids", excluded.to_arrow())
        try:
            # an anti join keeps rows whose uid is null (a stage's own tally rows)
            rows = f"(SELECT * FROM {prepared.source(pos)} ANTI JOIN excluded_uids USING (uid))"
            if store.sql(f"SELECT count(*) AS n FROM {rows}").item() == 0:
                return None
            outcome = gstage.decide_sql(store.con, rows)
        finally:
            store.con.unregister("excluded_uids")
        if outcome is not None:
            return outcome
        # in memory, the rows in batch order as prepare() gave them
        return gstage.decide(prepared.frame(pos).join(excluded, on="uid", how="anti"))

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

    def _record_pass(self, executor: Executor, ws: RunStore, pass_index: int, prepared: _Prepared) -> None:
        """A later pass: per-record stages over the kept records, read back from the workspace batch by batch and run
        on the executor's workers; their rejects, rewrites and scores are stored once the reading is done."""
        all_rej: list[pl.DataFrame] = []
        rewrites: list[pl.DataFrame] = []
        new_scores: list[pl.DataFrame] = []
        cols = ["uid", "id", "source_file", "source_line", "shape", "kind", "messages", "tools", "rejected", "prompt_turns", "label",
                "meta", "fixes", "n_chars", "n_tokens"]
        tasks = (Task(pass_index, frame=batch) for batch in ws.kept_batches(self.run_id, cols, self.cfg.batch_size))
        for result in executor.map(tasks):
            self._collect(result, prepared)
            for frames, frame in ((all_rej, result.rejects), (rewrites, result.rewritten), (new_scores, result.scores)):
                if frame is not None and frame.height:
                    frames.append(frame)
        for rej in all_rej:
            ws.append("rejects", self.run_id, rej)
        for new in rewrites:
            arrow = new.to_arrow()  # noqa: F841 - read by DuckDB below
            ws.con.execute(
                "UPDATE records SET messages = a.messages, rejected = a.rejected, fixes = a.fixes, n_chars = a.n_chars "
                "FROM arrow a WHERE records.run_id = ? AND records.uid = a.uid",
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
        kinds = ws.sql(
            """SELECT coalesce(r.kind, 'sft') AS kind, count(*) AS records, count(*) FILTER (WHERE j.uid IS NULL) AS kept,
                      list(DISTINCT r.shape ORDER BY r.shape) AS shapes
               FROM records r LEFT JOIN (SELECT DISTINCT uid FROM rejects WHERE run_id = $1) j ON r.uid = j.uid
               WHERE r.run_id = $1 GROUP BY ALL ORDER BY records DESC""",
            [run_id],
        )
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

        leakage = None
        if self.cfg.report.split_leakage:
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
            # what the records train: conversations (sft), preference pairs, KTO records; exported apart
            "kinds": {r.pop("kind"): r for r in kinds.to_dicts()},
            "stages": stages,
            "quarantine_reasons": dict(zip(qreasons["e"].to_list(), qreasons["n"].to_list())),
            "fixes": dict(zip(fixes["f"].to_list(), fixes["n"].to_list())),
            "splits": {k: int(dict(zip(splits["split"].to_list(), splits["n"].to_list())).get(k, 0)) for k in ("train", "validation", "test")},
            "clusters": {r.pop("stage"): r for r in clusters.to_dicts()},
            "split_links": dict(zip(links["stage"].to_list(), links["n"].to_list())),
            "stage_stats": self.stage_stats,
            "leakage": leakage,
            # workers' seconds are summed over workers (they overlap in wall time)
            "timings": {k: round(v, 3) for k, v in sorted(self.timer.seconds.items(), key=lambda kv: -kv[1])},
            "workers": {"count": self.worker_count, "peak_rss_mb": {str(pid): round(mb, 1) for pid, mb in self.worker_peaks.items()}},
            "engine": {"name": self.cfg.engine, "global_stages_on_ray": self.grouped_on_ray},
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


class _Prepared:
    """What the global stages of a pass prepared, spilled batch by batch to Parquet files in ``folder`` (one
    subfolder per stage position) instead of held in memory."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count: dict[int, int] = {}

    def add(self, pos: int, frame: pl.DataFrame) -> None:
        """Spill one batch of stage ``pos``'s prepared rows."""
        if frame.height == 0:
            return
        n = self.count.get(pos, 0)
        (self.folder / str(pos)).mkdir(parents=True, exist_ok=True)
        frame.write_parquet(self.folder / str(pos) / f"{n:07d}.parquet", compression="lz4", statistics=False)
        self.count[pos] = n + 1

    def source(self, pos: int) -> str | None:
        """A DuckDB table expression of everything stage ``pos`` prepared (in batch order), or None when nothing."""
        if not self.count.get(pos):
            return None
        glob = str(self.folder / str(pos) / "*.parquet").replace("'", "''")
        return f"read_parquet('{glob}', union_by_name = true)"

    def files(self, pos: int) -> list[Path]:
        """Stage ``pos``'s spilled batches, in batch order."""
        return sorted((self.folder / str(pos)).glob("*.parquet"))

    def frame(self, pos: int) -> pl.DataFrame:
        """Everything stage ``pos`` prepared, in memory, in batch order."""
        return pl.concat([pl.read_parquet(f) for f in self.files(pos)], how="vertical_relaxed")


def _report_inputs(ws: RunStore, run_id: str, n: int):
    import numpy as np

    ex = ws.sql(
        """SELECT * FROM (
             SELECT j.reason, j.stage, j.detail, j.duplicate_of, r.uid, r.id, r.source_file, r.source_line, r.messages,
                    r.rejected, r.label, row_number() OVER (PARTITION BY j.stage, j.reason ORDER BY r.uid) AS k
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
           SELECT m.stage, m.k, m.size, m.j, m.uid, m.rep_uid, m.similarity, r.id, r.source_file, r.source_line, r.messages,
                  r.rejected, r.label
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
