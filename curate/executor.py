"""The per-record half of a curate run, on every core: one executor for every pass.

A pass's work is cut into tasks of at most ``batch_size`` input units: a byte range of a plain JSONL file (found
by counting line breaks, so line numbers stay the file's), a block of lines of a compressed JSONL file (the
main process only decompresses), a range of row groups of a Parquet file, a whole JSON array or CSV file, or,
in a pass after a global stage, a batch of kept records read back from the workspace. A task is parsed,
normalized, given its derived columns (lengths, tokens), run through the pass's per-record stages (scores and
keep decisions apart), and the pass's global stages prepare their small columns from the survivors — in a
worker process, on a copy of the run's built stages. The main process takes the results in input order,
shifts each task's uids (numbered from 0 in the worker) to the run's numbering and stores them, so the result
is the same, uid for uid, for any number of workers.

``workers = 1`` runs the same functions in this process. Workers are started with ``spawn`` (no fork of a
process that holds DuckDB and Polars thread pools) and receive the stages pickled once.
"""

from __future__ import annotations

import os
import pickle
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.frames import with_derived
from curate.readers import Bad, compressed_jsonl_blobs, file_format, jsonl_lines, jsonl_ranges, read_file, split_lines
from curate.shapes import Converter, ShapeError, build_frame
from curate.stages import RecordStage, Stage

STORED_COLUMNS = ["uid", "id", "source_file", "source_line", "shape", "kind", "messages", "tools", "rejected", "prompt_turns", "label",
                  "meta", "fixes", "n_chars", "n_tokens", "split", "scores"]
REWRITTEN_COLUMNS = ["uid", "messages", "rejected", "fixes", "n_chars"]
# what a stage that rewrites messages may change in a batch (the derived texts with them)
REWRITE_SOURCE = ["uid", "messages", "rejected", "fixes", "prompt_text", "response_text", "rejected_text", "n_chars"]
QUARANTINE_SCHEMA = {"uid": pl.Int64, "source_file": pl.Utf8, "source_line": pl.Int64, "field": pl.Utf8, "error": pl.Utf8, "raw": pl.Utf8}
COMPRESSED = (".gz", ".zst", ".zstd")


class StrictModeError(RuntimeError):
    """Raised in strict mode at the first malformed record."""


class RunError(RuntimeError):
    """A run cannot go on (the inputs or the workspace changed under it); the message says what happened."""


class EngineUnavailableError(ValueError):
    """The configured engine cannot run here (Ray not installed, its cluster not reachable): the message says why."""


class StageContractError(RunError):
    """A stage returned a frame that breaks the stage contract (missing columns, rows added or lost)."""


def split_keys(rows: pl.DataFrame) -> pl.Series:
    """What decides each record's split: its content id, or for a preference pair or a KTO record a hash of its
    prompt (the same 16 hex digits), so every pair and labeled completion of one prompt lands in one split and
    no test prompt is trained on through a sibling pair."""
    ids = rows["id"]
    if "kind" not in rows.columns:
        return ids
    grouped = rows["kind"].is_in(["preference", "kto"])
    if not grouped.any():
        return ids
    import xxhash

    idx = grouped.arg_true()
    prompts = rows["prompt_text"].gather(idx).fill_null("").to_list()
    return ids.scatter(idx, [xxhash.xxh3_64_hexdigest(p.encode("utf-8", "surrogatepass")) for p in prompts])


def split_expr(splits: Any, digits: int = 0, column: str = "id") -> pl.Expr:
    """train/validation/test from a record's content id and the config's ``splits`` (fractions and seed).

    The id is a BLAKE2b hex digest, so its first 8 hex digits are a uniform 32-bit number: the split is a function
    of content alone (same record, same split, on every machine and every re-run). ``digits=8`` reads the next 8
    instead: for a cluster keyed by its *smallest* id, whose first digits are skewed low (the minimum of many),
    they would put nearly every cluster in train. ``column``: the hex key read (:func:`split_keys`)."""
    u = ((pl.col(column).str.slice(digits, 8).str.to_integer(base=16) + splits.seed * 2654435761) % (1 << 32)) / float(1 << 32)
    return (
        pl.when(u < splits.train).then(pl.lit("train"))
        .when(u < splits.train + splits.validation).then(pl.lit("validation"))
        .otherwise(pl.lit("test"))
    )


class Timer:
    """Seconds spent per phase and per stage, reported in the summary (where does the time go?)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str):
        """Add the time spent inside the ``with`` block to ``key``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t

    def merge(self, seconds: dict[str, float]) -> None:
        """Add another timer's seconds (a worker's) to this one's."""
        for key, value in seconds.items():
            self.seconds[key] = self.seconds.get(key, 0.0) + value


# -- tasks and results --------------------------------------------------------------------------------------
@dataclass
class Task:
    """One unit of record work. ``pass_index`` 0 reads input (``input_index``, ``path`` and a range or ``blob``);
    a later pass carries ``frame``, kept records read back from the workspace. ``budget`` caps the input units
    read (``--limit``)."""

    pass_index: int = 0
    input_index: int = 0
    shown: str = ""
    path: str | None = None
    start: int = 0
    end: int | None = None
    first_line: int = 1
    row_groups: list[int] | None = None
    blob: bytes | None = None
    frame: pl.DataFrame | None = None
    budget: int | None = None


@dataclass
class TaskResult:
    """What a task gives back, its uids numbered from 0 (see :meth:`shifted`).

    - ``units``: input units read (records + quarantined; the uids the task used)
    - ``stored``: the first pass's rows for the ``records`` table (every parsed record, scores and split included)
    - ``rewritten``: a later pass's rewritten rows (``uid``, ``messages``, ``fixes``, ``n_chars``) when a stage
      rewrites messages; ``scores``: its stages' scores (``uid``, ``new`` as a JSON object)
    - ``rejects``, ``quarantine``: rows for those tables; ``prepared``: each global stage's prepared columns, by
      the stage's position in the run
    """

    shown: str
    input_index: int = 0
    units: int = 0
    records: int = 0
    quarantined: int = 0
    stored: pl.DataFrame | None = None
    rewritten: pl.DataFrame | None = None
    scores: pl.DataFrame | None = None
    rejects: pl.DataFrame | None = None
    quarantine: pl.DataFrame | None = None
    prepared: dict[int, pl.DataFrame] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    pid: int = 0

    def shifted(self, base: int) -> TaskResult:
        """This result with every uid raised by ``base`` (the run's uid of the task's first unit)."""
        if base == 0:
            return self

        def shift(frame: pl.DataFrame | None) -> pl.DataFrame | None:
            if frame is None or "uid" not in frame.columns:
                return frame
            return frame.with_columns(pl.col("uid") + base)

        from dataclasses import replace

        return replace(
            self, stored=shift(self.stored), rewritten=shift(self.rewritten), scores=shift(self.scores), rejects=shift(self.rejects),
            quarantine=shift(self.quarantine), prepared={k: v.with_columns(pl.col("uid") + base) for k, v in self.prepared.items()},
        )


@dataclass
class RecordWork:
    """Everything a worker needs to run tasks: the inputs' converters, the run's built stages, the passes (stage
    positions), the tokenizer and the reading and split settings. Pickled once into each worker."""

    converters: list[Converter]
    csv_headers: list[Any]
    stages: list[Stage]
    passes: list[tuple[list[int], list[int]]]  # per pass: positions of its record stages, of its global stages
    tokenizer: Any
    splits: Any
    batch_size: int
    max_record_bytes: int
    strict: bool

    # -- one task ----------------------------------------------------------------------------------------------
    def run(self, task: Task) -> list[TaskResult]:
        """The results of one task (one per batch it read), uids from 0 (see :meth:`results`)."""
        return list(self.results(task))

    def results(self, task: Task) -> Iterator[TaskResult]:
        """The results of one task as each batch is done, uids numbered from 0 at the task's first unit; the last
        carries the task's seconds by phase and this process's peak RSS."""
        timer = Timer()
        if task.pass_index == 0:
            base, previous = 0, None
            for frame, quarantine, units in self.parse(task, timer):
                result = self._first_pass(frame, quarantine, units, task.shown, timer).shifted(base)
                result.input_index = task.input_index
                base += units
                if previous is not None:
                    yield previous
                previous = result
            results = [previous] if previous is not None else []
        else:
            assert task.frame is not None
            results = [self._later_pass(task.pass_index, task.frame, timer)]
        for result in results:
            result.seconds, result.peak_rss_mb, result.pid = timer.seconds, peak_rss_mb(), os.getpid()
            yield result

    def _raw_batches(self, task: Task):
        path = Path(task.path or "")
        if task.blob is not None:
            return jsonl_lines(task.shown, split_lines(task.blob), len(task.blob) + 1, self.max_record_bytes, task.first_line)
        if task.row_groups is not None:
            return _parquet_groups(path, task.row_groups, task.first_line)
        if task.end is not None:
            from curate.readers import read_jsonl

            return read_jsonl(path, self.batch_size + 1, self.max_record_bytes, task.start, task.end, task.first_line)
        return read_file(path, batch_size=self.batch_size, max_record_bytes=self.max_record_bytes, csv_header=self.csv_headers[task.input_index])

    def parse(self, task: Task, timer: Timer) -> Iterator[tuple[pl.DataFrame, pl.DataFrame, int]]:
        """(canonical frame with derived columns, quarantine frame, units) per batch of the task, uids from 0."""
        conv = self.converters[task.input_index]
        budget = task.budget if task.budget is not None else 1 << 62
        uid = 0
        for raw in self._raw_batches(task):
            if budget <= 0:
                break
            first_uid = uid
            bad: list[tuple[int, Bad]] = []
            # Bad lines and good records interleave in file order; uids follow that order.
            uids, lines, shapes, roles, contents, metas, fixes, extras = [], [], [], [], [], [], [], []
            rich = False
            with timer("parse+convert"):
                events = sorted(
                    [(b.line, 0, b) for b in raw.bad] + [(ln, 1, rec) for ln, rec in zip(raw.lines, raw.records)],
                    key=lambda e: (e[0], e[1]),
                ) if raw.bad else [(ln, 1, rec) for ln, rec in zip(raw.lines, raw.records)]
                convert = conv.records
                for line, kind, item in events:
                    if budget <= 0:
                        break
                    if kind == 0:
                        bad.append((uid, item))
                        budget -= 1
                        uid += 1
                        continue
                    try:
                        made = convert(item)
                    except ShapeError as exc:
                        bad.append((uid, Bad(line, exc.message, _raw_excerpt(item), exc.field)))
                        budget -= 1
                        uid += 1
                        continue
                    # one input record is one unit, but for a conversation tree read as several records
                    for shape, r, c, m, f, x in made[:budget]:
                        uids.append(uid)
                        lines.append(line)
                        shapes.append(shape)
                        roles.append(r)
                        contents.append(c)
                        metas.append(m)
                        fixes.append(f)
                        extras.append(x)
                        rich = rich or x is not None
                        budget -= 1
                        uid += 1
            if bad and self.strict:
                _, b = bad[0]
                where = f" field {b.field!r}:" if b.field else ""
                raise StrictModeError(f"{task.shown}:{b.line}:{where} {b.error} (strict mode stops at the first malformed record)")
            with timer("build+normalize"):
                frame = build_frame([u - first_uid for u in uids], task.shown, lines, shapes, roles, contents, metas, fixes,
                                    extras if rich else None)
            with timer("tokenize" if self.tokenizer else "derive"):
                frame = with_derived(frame, self.tokenizer)
            quarantine = pl.DataFrame(
                {
                    "uid": [u - first_uid for u, _ in bad],
                    "source_file": [task.shown] * len(bad),
                    "source_line": [b.line for _, b in bad],
                    "field": [b.field for _, b in bad],
                    "error": [b.error for _, b in bad],
                    "raw": [b.raw for _, b in bad],
                },
                schema=QUARANTINE_SCHEMA,
            )
            yield frame, quarantine, uid - first_uid

    def _first_pass(self, frame: pl.DataFrame, quarantine: pl.DataFrame, units: int, shown: str, timer: Timer) -> TaskResult:
        record_pos, global_pos = self.passes[0]
        rows, alive, rejects, scores = apply_record_stages(frame, [self.stages[i] for i in record_pos], timer)  # type: ignore[misc]
        prepared = self._prepare(global_pos, alive, timer)
        with timer("store (prepare rows)"):
            stored = stored_rows(rows.with_columns(_split_key=split_keys(rows)), scores, split_expr(self.splits, column="_split_key"))
        return TaskResult(shown, units=units, records=frame.height, quarantined=quarantine.height, stored=stored, rejects=rejects,
                          quarantine=quarantine, prepared=prepared)

    def _later_pass(self, pass_index: int, batch: pl.DataFrame, timer: Timer) -> TaskResult:
        record_pos, global_pos = self.passes[pass_index]
        stages = [self.stages[i] for i in record_pos]
        tokens = batch["n_tokens"]
        batch = with_derived(batch.drop("n_tokens"), None).with_columns(n_tokens=tokens)
        rows, alive, rejects, scores = apply_record_stages(batch, stages, timer)  # type: ignore[arg-type]
        new_scores = None
        if scores is not None:
            score_cols = [c for c in scores.columns if c != "uid"]
            new_scores = scores.select("uid", new=pl.struct(score_cols).struct.json_encode())
        rewritten = rows.select(REWRITTEN_COLUMNS) if any(s.rewrites_messages for s in stages) else None  # type: ignore[attr-defined]
        return TaskResult("", rewritten=rewritten, scores=new_scores, rejects=rejects, prepared=self._prepare(global_pos, alive, timer))

    def _prepare(self, global_pos: list[int], alive: pl.DataFrame, timer: Timer) -> dict[int, pl.DataFrame]:
        out = {}
        if alive.height:
            for pos in global_pos:
                stage = self.stages[pos]
                with timer(f"stage:{stage.name}"):
                    out[pos] = stage.prepare(alive)  # type: ignore[attr-defined]
        return out


def apply_record_stages(batch: pl.DataFrame, stages: list[RecordStage], timer: Timer | None = None):
    """Run per-record stages in order on a batch: each scores the records that reached it, then rejects some.

    Returns (all rows with rewrites applied, survivors, rejects or None, scores by uid or None)."""
    timer = timer or Timer()
    rejects, scores = [], []
    alive = batch
    rows = batch
    for stage in stages:
        if alive.height == 0:
            break
        with timer(f"stage:{stage.name}"):
            out = stage.evaluate(alive)
        missing = {"reason", "detail"} - set(out.columns)
        if missing or out.height != alive.height:
            raise StageContractError(f"stage {stage.name!r} broke the stage contract (missing {missing} or row count changed)")
        is_rej = out["reason"].is_not_null()
        if stage.judges_completion and "label" in out.columns and out["label"].is_not_null().any():
            is_rej = is_rej & out["label"].fill_null(True)  # a KTO answer labeled undesirable is bad on purpose
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
            changed = [c for c in REWRITE_SOURCE if c in out.columns and c in rows.columns]
            rows = rows.update(out.select(changed), on="uid")
        alive = out.filter(~is_rej).select(batch.columns)
        if stage.rewrites_messages:
            alive = alive.update(out.filter(~is_rej).select(changed), on="uid")
    score_frame = None
    if scores:
        score_frame = scores[0]
        for s in scores[1:]:
            score_frame = score_frame.join(s, on="uid", how="full", coalesce=True)
    rej = pl.concat(rejects) if rejects else None
    return rows, alive, rej, score_frame


def stored_rows(rows: pl.DataFrame, scores: pl.DataFrame | None, split: pl.Expr) -> pl.DataFrame:
    """The ``records`` table's columns for a batch: scores as one JSON object per record, and the split."""
    if scores is not None:
        score_cols = [c for c in scores.columns if c != "uid"]
        scores = scores.select("uid", scores=pl.struct(score_cols).struct.json_encode())
        rows = rows.join(scores, on="uid", how="left")
    else:
        rows = rows.with_columns(scores=pl.lit(None, dtype=pl.Utf8))
    return rows.with_columns(split=split).select(STORED_COLUMNS)


def _parquet_groups(path: Path, groups: list[int], first_row: int):
    import pyarrow.parquet as pq

    from curate.readers import Batch

    rows = pq.ParquetFile(path).read_row_groups(groups).to_pylist()
    yield Batch(str(path), list(range(first_row, first_row + len(rows))), rows)


def _raw_excerpt(item: Any) -> str:
    import orjson

    try:
        text = orjson.dumps(item, default=str).decode()
    except TypeError:
        text = repr(item)
    return text[:300] + ("…" if len(text) > 300 else "")


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (VmHWM), 0 where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# -- planning: inputs -> tasks ------------------------------------------------------------------------------
def input_tasks(files: list[tuple[Any, list[Path]]], shown_of, batch_size: int) -> Iterator[Task]:
    """The first pass's tasks over every input file, in input order (lazily: a compressed file is decompressed as
    its tasks are taken). ``files`` pairs each input spec with its paths; ``shown_of(path)`` is how a path is
    named in the outputs."""
    for index, (_spec, paths) in enumerate(files):
        for path in paths:
            shown = shown_of(path)
            if path.stat().st_size == 0:
                continue
            fmt = file_format(path)
            compressed = path.name.lower().endswith(COMPRESSED)
            if fmt == "jsonl" and not compressed:
                for start, end, first_line in jsonl_ranges(path, batch_size):
                    yield Task(0, index, shown, str(path), start, end, first_line)
            elif fmt == "jsonl":
                for blob, first_line in compressed_jsonl_blobs(path, batch_size):
                    yield Task(0, index, shown, str(path), first_line=first_line, blob=blob)
            elif fmt == "parquet":
                yield from _parquet_tasks(index, shown, path, batch_size)
            else:  # a JSON array or a CSV file: read as a whole by one worker
                yield Task(0, index, shown, str(path))


def _parquet_tasks(index: int, shown: str, path: Path, batch_size: int) -> Iterator[Task]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    groups: list[int] = []
    rows, first = 0, 1
    for g in range(meta.num_row_groups):
        groups.append(g)
        rows += meta.row_group(g).num_rows
        if rows >= batch_size:
            yield Task(0, index, shown, str(path), first_line=first, row_groups=groups)
            first += rows
            groups, rows = [], 0
    if groups:
        yield Task(0, index, shown, str(path), first_line=first, row_groups=groups)


# -- running tasks ------------------------------------------------------------------------------------------
def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Executor:
    """Runs tasks of one :class:`RecordWork` on ``workers`` processes (1: in this process) and yields their results
    in task order, at most ``2 x workers`` tasks ahead (memory stays bounded whatever the input size)."""

    def __init__(self, work: RecordWork, workers: int):
        self.work, self.workers = work, max(1, workers)
        self.pool = None
        self.worker_peaks: dict[int, float] = {}
        if self.workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            from curate.workerboot import init_worker, run_task

            self.run_task = run_task

            payload = pickle.dumps(work, protocol=pickle.HIGHEST_PROTOCOL)
            # one worker per core: each worker's libraries get cores / workers threads (at least one)
            threads = max(1, default_workers() // self.workers)
            self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=init_worker,
                                            initargs=(payload, threads))

    def map(self, tasks) -> Iterator[TaskResult]:
        """The tasks' results, in task order (in this process: each as soon as its batch is done)."""
        if self.pool is None:
            for task in tasks:
                yield from self.work.results(task)
            return
        pending: deque = deque()
        tasks = iter(tasks)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * self.workers:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                else:
                    pending.append(self.pool.submit(self.run_task, task))
            if not pending:
                return
            yield from pending.popleft().result()

    def close(self) -> None:
        """Stop the workers (cancelling tasks not started)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
