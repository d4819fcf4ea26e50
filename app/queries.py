"""What the review app reads and writes, over :class:`curate.workspace.Workspace`: plain functions that the
pages call and the tests call directly. A run's records are queried in that run's own DuckDB file, opened
read-only for the moment of the query; labels, votes and skips come from the SQLite catalog. Every record
query is paged (LIMIT/OFFSET in DuckDB): nothing loads a whole dataset into memory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from curate.workspace import Workspace, normalize_annotator

PAGE = 25


def open_workspace(path: str | Path, read_only: bool = True) -> Workspace:
    """The workspace at ``path`` (never created here: a path that is not one raises WorkspaceError). It
    holds no connection open between calls, so runs, other tabs and other servers use it alongside."""
    return Workspace(path, create=False)


# ---------------------------------------------------------------------------------------------- runs

def runs(ws: Workspace, kind: str | None = None) -> pl.DataFrame:
    """run_id, kind, name, status, started, finished, output_dir, summary of the runs (of one kind), newest first."""
    return ws.runs(kind)


def funnel(ws: Workspace, run_id: str) -> pl.DataFrame:
    """Per stage, in order: records in, rejected, out, and the reasons with their counts."""
    return ws.query(run_id, "SELECT position, stage, n_in, n_rejected, n_out, reasons FROM stage_counts WHERE run_id = ? ORDER BY position", [run_id])


def train_curves(ws: Workspace, run_id: str) -> pl.DataFrame:
    """step, loss, eval_loss (null where not measured)."""
    return ws.query(run_id,
        """SELECT step, max(value) FILTER (WHERE name = 'loss') AS loss, max(value) FILTER (WHERE name = 'eval_loss') AS eval_loss
           FROM train_metrics WHERE run_id = ? GROUP BY step ORDER BY step""", [run_id])


def eval_headline(ws: Workspace, run_id: str) -> dict[str, float]:
    """The headline metrics an eval run registered in the workspace (``{task/key: value}``); empty when the run
    is unknown or has no summary."""
    row = ws.run(run_id)
    return (row or {}).get("summary", {}).get("headline", {}) if row and row.get("summary") else {}


def length_histogram(ws: Workspace, run_id: str, bins: int = 30) -> pl.DataFrame:
    """Kept and rejected record lengths (characters), binned in DuckDB: chars_from, chars_to, status,
    records. Rejected counts are all minus kept: one anti-join, the cheapest way over a million records."""
    return ws.query(run_id,
        f"""WITH b AS (SELECT max(n_chars) + 1 AS hi FROM records WHERE run_id = $1),
                binned AS (SELECT r.uid, least(floor(r.n_chars * {bins} / b.hi), {bins - 1}) AS bin FROM records r, b WHERE r.run_id = $1),
                all_ AS (SELECT bin, count(*) AS n FROM binned GROUP BY bin),
                kept AS (SELECT bin, count(*) AS n FROM binned WHERE uid NOT IN (SELECT uid FROM rejects WHERE run_id = $1) GROUP BY bin),
                both_ AS (SELECT a.bin, coalesce(k.n, 0) AS kept, a.n - coalesce(k.n, 0) AS rejected FROM all_ a LEFT JOIN kept k USING (bin))
            SELECT bin * b.hi / {bins} AS chars_from, (bin + 1) * b.hi / {bins} AS chars_to, status, records
            FROM (UNPIVOT both_ ON kept, rejected INTO NAME status VALUE records), b
            WHERE records > 0 ORDER BY chars_from, status""", [run_id])


# ---------------------------------------------------------------------------------------------- records

# The columns a curate run's records gained with preference pairs, KTO records and tool calls, and what a run
# file written before them stands in with: the app opens such files read-only, so nothing adds them there
KIND_COLUMNS = {"kind": "'sft'", "tools": "NULL::VARCHAR", "rejected": "NULL", "prompt_turns": "NULL::BIGINT", "label": "NULL::BOOLEAN"}


def record_columns(rd: Any) -> dict[str, str]:
    """Column name -> DuckDB type of the records table in a run's file (``rd``: its open RunStore)."""
    return dict(rd.sql("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'records' "
                       "AND schema_name = 'main' AND database_name = current_database()").rows())


def _kind_select(cols: dict[str, str]) -> str:
    """kind, tools, rejected, prompt_turns, label of ``records r``, each a null stand-in (kind ``sft``) where
    the file lacks the column."""
    own = {"kind": "coalesce(r.kind, 'sft')"}
    return ", ".join(f"{own.get(c, f'r.{c}') if c in cols else stand_in} AS {c}" for c, stand_in in KIND_COLUMNS.items())


def filter_options(ws: Workspace, run_id: str) -> dict[str, list[str]]:
    """The values the data browser's filters offer for a curate run: stage, reason, source, shape and kind
    (``sft`` alone for a run file written before records had kinds)."""
    with ws.run_data(run_id) as rd:
        stages = rd.sql("SELECT stage, reasons FROM stage_counts WHERE run_id = ? ORDER BY position", [run_id])
        reasons = sorted({r for js in stages["reasons"] for r in json.loads(js or "{}")})
        col = lambda sql: [x for x in rd.sql(sql, [run_id]).to_series().to_list() if x is not None]  # noqa: E731
        kinds = col("SELECT DISTINCT coalesce(kind, 'sft') FROM records WHERE run_id = ? ORDER BY 1") if "kind" in record_columns(rd) else ["sft"]
        return {"stage": stages["stage"].to_list(), "reason": reasons,
                "source": col("SELECT DISTINCT source_file FROM records WHERE run_id = ? ORDER BY 1"),
                "shape": col("SELECT DISTINCT shape FROM records WHERE run_id = ? ORDER BY 1"), "kind": kinds}


def _search_clause(cols: dict[str, str]) -> tuple[str, int]:
    """The full-text condition over every turn, and how many ``?`` (each the lowered search text) it takes:
    a turn's content and, where the file has them, a tool turn's tool name, each tool call's function name
    and arguments, and the rejected completion's turns. The parts of a turn are joined by a newline, which a
    one-line search cannot contain, so a match never spans two parts."""
    text = "m.content"
    if "tool_calls" in cols.get("messages", ""):
        calls = "array_to_string(list_transform(m.tool_calls, lambda c: concat_ws(chr(10), c.function.name, c.function.arguments)), chr(10))"
        # most turns are text alone: they skip building the joined text
        text = f"CASE WHEN m.tool_calls IS NULL AND m.name IS NULL THEN m.content ELSE concat_ws(chr(10), m.content, m.name, {calls}) END"
    turns = lambda column: f"list_contains(list_transform({column}, lambda m: contains(lower({text}), ?)), true)"  # noqa: E731
    # a file first written before pairs has the old turns in messages and the new ones in rejected (all null)
    if cols.get("rejected") != cols.get("messages"):
        return turns("r.messages"), 1
    # rejected on its own, not concatenated to messages: copying every record's turns costs a third more on
    # a million records, and rejected is null but for pairs
    return f"({turns('r.messages')} OR {turns('r.rejected')})", 2


def _record_filter(run_id: str, cols: dict[str, str], *, status: str | None = None, stage: str | None = None,
                   reason: str | None = None, source: str | None = None, shape: str | None = None,
                   kind: str | None = None, search: str | None = None) -> tuple[str, list[Any]]:
    """A WHERE clause over ``records r`` alone: outcome filters are semi- and anti-joins on the run's rejects,
    so that only the page's rows are ever joined with their ledger entry (a million-record run stays fast).
    ``cols`` (:func:`record_columns`) says which columns the run's file has."""
    where, args = ["r.run_id = ?"], [run_id]
    for column, value in (("r.source_file", source), ("r.shape", shape)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if kind:
        # a file from before kinds holds conversations only: all of it is sft
        where.append("coalesce(r.kind, 'sft') = ?" if "kind" in cols else "'sft' = ?")
        args.append(kind)
    if stage or reason or status == "rejected":
        sub, sub_args = ["run_id = ?"], [run_id]
        for column, value in (("stage", stage), ("reason", reason)):
            if value:
                sub.append(f"{column} = ?")
                sub_args.append(value)
        where.append(f"r.uid IN (SELECT uid FROM rejects WHERE {' AND '.join(sub)})")
        args += sub_args
    if status == "kept":
        where.append("r.uid NOT IN (SELECT uid FROM rejects WHERE run_id = ?)")
        args.append(run_id)
    if search:
        # full-text search in DuckDB (case-insensitive substring)
        clause, n = _search_clause(cols)
        where.append(clause)
        args += [search.lower()] * n
    return " AND ".join(where), args


def _with_outcome(picked: str, columns: str) -> str:
    """SELECT ``columns`` of the records in the CTE ``picked`` (uid, pos), each with its outcome (status,
    stage, reason, detail, duplicate_of from the run's rejects), in ``pos`` order. Its two placeholders
    both take the run id, after the CTE's own."""
    return f"""SELECT {columns}, CASE WHEN j.uid IS NULL THEN 'kept' ELSE 'rejected' END AS status, j.stage, j.reason, j.detail, j.duplicate_of
        FROM {picked} p JOIN records r ON r.run_id = ? AND r.uid = p.uid
        LEFT JOIN (SELECT uid, first(stage ORDER BY stage) AS stage, first(reason ORDER BY stage) AS reason,
                          first(detail ORDER BY stage) AS detail, first(duplicate_of ORDER BY stage) AS duplicate_of
                   FROM rejects WHERE run_id = ? AND uid IN (SELECT uid FROM {picked}) GROUP BY uid) j ON j.uid = r.uid
        ORDER BY p.pos"""


def records_page(ws: Workspace, run_id: str, *, status: str | None = None, stage: str | None = None, reason: str | None = None,
                 source: str | None = None, shape: str | None = None, kind: str | None = None, search: str | None = None,
                 offset: int = 0, limit: int = PAGE) -> tuple[pl.DataFrame, int]:
    """(one page of records with their outcome, total matching): uid, id, source_file, source_line, shape,
    split, messages, scores, kind, tools, rejected, prompt_turns, label, status, stage, reason, detail,
    duplicate_of. ``search`` matches every turn's text, tool calls and the rejected completion included."""
    with ws.run_data(run_id) as rd:
        cols = record_columns(rd)
        where, args = _record_filter(run_id, cols, status=status, stage=stage, reason=reason, source=source, shape=shape,
                                     kind=kind, search=search)
        total = rd.sql(f"SELECT count(*) AS n FROM records r WHERE {where}", args)["n"][0]
        page = rd.sql(
        f"""WITH picked AS (SELECT r.uid, r.uid AS pos FROM records r WHERE {where} ORDER BY pos LIMIT ? OFFSET ?)
            """ + _with_outcome("picked", f"r.uid, r.id, r.source_file, r.source_line, r.shape, r.split, r.messages, r.scores, {_kind_select(cols)}"),
        [*args, limit, offset, run_id, run_id])
    return page, int(total)


def cluster_of(ws: Workspace, run_id: str, uid: int, limit: int = 50) -> pl.DataFrame:
    """The duplicate cluster holding ``uid``: up to ``limit`` members (representative first, then by
    similarity) with their messages, source, kind, tools, rejected, prompt_turns and label, and ``size``, the
    whole cluster's. The members are found first and only they are joined with records."""
    with ws.run_data(run_id) as rd:
        return rd.sql(
        f"""WITH c AS (SELECT stage, rep_uid FROM clusters WHERE run_id = $1 AND uid = $2 LIMIT 1),
                mem AS (SELECT m.uid, m.uid = c.rep_uid AS representative, m.similarity, c.stage, count(*) OVER () AS size
                        FROM clusters m JOIN c ON m.stage = c.stage AND m.rep_uid = c.rep_uid WHERE m.run_id = $1
                        ORDER BY representative DESC, m.similarity DESC, m.uid LIMIT $3)
           SELECT mem.*, r.messages, r.source_file, r.source_line, {_kind_select(record_columns(rd))}
           FROM mem JOIN records r ON r.run_id = $1 AND r.uid = mem.uid
           ORDER BY representative DESC, similarity DESC, mem.uid""", [run_id, uid, limit])


def score_names(ws: Workspace, run_id: str) -> list[str]:
    """The filters' score columns stored for a run (from a sample of records)."""
    rows = ws.query(run_id, "SELECT scores FROM records WHERE run_id = ? AND scores IS NOT NULL LIMIT 200", [run_id])["scores"]
    return sorted({k for s in rows for k, v in json.loads(s).items() if isinstance(v, (int, float))})


# ---------------------------------------------------------------------------------------------- labeling

def annotator_seed(annotator: str) -> int:
    """The seed of an annotator's random queue: stable across sessions, different between annotators (so
    two people labeling at once do not work through the same records in the same order)."""
    return int.from_bytes(hashlib.sha256(normalize_annotator(annotator).encode()).digest()[:4], "little")


def label_queue(ws: Workspace, run_id: str, annotator: str, *, mode: str = "random", status: str | None = None,
                reason: str | None = None, search: str | None = None, score: str | None = None,
                threshold: float | None = None, kind: str | None = None, seed: int | None = None, limit: int = 1) -> pl.DataFrame:
    """Records this annotator has neither labelled nor skipped: in a random order of their own (``seed``,
    default :func:`annotator_seed`), in input order for ``filter``, or ``uncertain``: closest first to
    ``threshold`` on the filter score ``score``. Each with its outcome, kind, tools, rejected completion,
    prompt_turns and label."""

    done = ws.labelled_ids(annotator) + ws.skips(annotator, run_id)
    if mode == "uncertain" and (not score or threshold is None):
        raise ValueError("the uncertain queue needs a score name and a threshold")
    with ws.run_data(run_id) as rd:
        cols = record_columns(rd)
        where, args = _record_filter(run_id, cols, status=status, reason=reason, kind=kind, search=search)
        where += " AND r.id NOT IN (SELECT unnest(?::VARCHAR[]))"
        args.append(done)
        if mode == "uncertain":
            where += " AND json_extract(r.scores, ?) IS NOT NULL"
            args.append(f"$.{score}")
            order, order_args = "abs(CAST(json_extract(r.scores, ?) AS DOUBLE) - ?)", [f"$.{score}", threshold]
        elif mode == "random":
            order, order_args = "hash(r.id, ?)", [annotator_seed(annotator) if seed is None else seed]
        else:
            order, order_args = "r.uid", []
        return rd.sql(
            f"""WITH picked AS (SELECT r.uid, {order} AS pos FROM records r WHERE {where} ORDER BY pos, r.uid LIMIT ?)
                """ + _with_outcome("picked", f"r.uid, r.id, r.source_file, r.source_line, r.shape, r.messages, r.scores, {_kind_select(cols)}"),
            [*order_args, *args, limit, run_id, run_id])


def annotators(ws: Workspace) -> list[str]:
    """Everyone who has labelled, sorted."""
    return [r["annotator"] for r in ws.sql_rows("SELECT DISTINCT annotator FROM labels ORDER BY 1")]


def label_counts(ws: Workspace) -> tuple[int, int]:
    """(current labels: latest per record and annotator, annotators)."""
    row = ws.sql_rows("SELECT (SELECT count(*) FROM (SELECT DISTINCT record_id, annotator FROM labels)) AS n, "
                      "count(DISTINCT annotator) AS a FROM labels")[0]
    return int(row["n"]), int(row["a"])


def recent_labels(ws: Workspace, annotator: str, n: int = 5) -> pl.DataFrame:
    """An annotator's ``n`` latest labels as stored: record (uid, else content id), verdict, tags, saved, edited."""
    rows = ws.sql_rows("""SELECT coalesce(CAST(uid AS TEXT), record_id) AS record, verdict, tags, substr(created, 1, 19) AS saved,
                                 edit IS NOT NULL AS edited
                          FROM labels WHERE annotator = ? ORDER BY seq DESC LIMIT ?""", [normalize_annotator(annotator), n])
    return pl.DataFrame([{**r, "tags": ", ".join(json.loads(r["tags"] or "[]")), "edited": bool(r["edited"])} for r in rows],
                        schema={"record": pl.Utf8, "verdict": pl.Utf8, "tags": pl.Utf8, "saved": pl.Utf8, "edited": pl.Boolean},
                        orient="row")


def agreement(ws: Workspace) -> pl.DataFrame:
    """Cohen's kappa of every pair of annotators over the records both labelled (latest labels)."""
    from sklearn.metrics import cohen_kappa_score

    cur = ws.current_labels()
    names = sorted(set(cur["annotator"]))
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = cur.filter(pl.col("annotator") == a).join(cur.filter(pl.col("annotator") == b), on="record_id")
            if both.height:
                kappa = cohen_kappa_score(both["verdict"], both["verdict_right"]) if both.height > 1 else float("nan")
                agree = (both["verdict"] == both["verdict_right"]).mean()
                rows.append({"annotator_a": a, "annotator_b": b, "overlap": both.height, "agreement": agree,
                             "kappa": None if kappa != kappa else float(kappa)})
    return pl.DataFrame(rows, schema={"annotator_a": pl.Utf8, "annotator_b": pl.Utf8, "overlap": pl.Int64,
                                      "agreement": pl.Float64, "kappa": pl.Float64})


def _labelled_records(ws: Workspace, ids: list[str]) -> dict[str, dict[str, Any]]:
    """messages, source_file, source_line, kind, tools, rejected, prompt_turns and label of each labelled
    record id, from the newest finished curate run that holds it (a run still being written, or gone, is
    passed over)."""
    from curate.workspace import WorkspaceBusy

    found: dict[str, dict[str, Any]] = {}
    for run_id in ws.runs("curate")["run_id"].to_list():  # newest first
        todo = [i for i in ids if i not in found]
        if not todo:
            break
        try:
            with ws.run_data(run_id) as rd:
                rows = rd.sql(f"""SELECT r.id, r.messages, r.source_file, r.source_line, {_kind_select(record_columns(rd))} FROM records r
                                  WHERE r.id IN (SELECT unnest(?::VARCHAR[]))
                                  QUALIFY row_number() OVER (PARTITION BY r.id ORDER BY r.uid) = 1""", [todo])
        except (WorkspaceBusy, KeyError):
            continue
        for r in rows.iter_rows(named=True):
            found[r.pop("id")] = r
    return found


def _rich_fields(rec: dict[str, Any]) -> dict[str, Any]:
    """A labelled pair's or KTO record's own fields for the export: ``rejected`` and ``prompt_turns`` (a
    pair), ``label`` (KTO), ``tools`` (parsed) where the record has them; nothing for a plain conversation."""
    out: dict[str, Any] = {}
    if rec.get("tools"):
        out["tools"] = json.loads(rec["tools"])
    if rec.get("kind") == "preference":
        out.update(rejected=rec.get("rejected"), prompt_turns=rec.get("prompt_turns"))
    elif rec.get("kind") == "kto":
        out.update(label=rec.get("label"), prompt_turns=rec.get("prompt_turns"))
    return out


def labels_jsonl(ws: Workspace) -> bytes:
    """Every annotator's latest label per record, with the record's kind and messages (a pair's rejected turns, a
    KTO record's label, the tools where there are any) and the edit, as JSONL bytes:
    built in memory for a download, so nothing is written to a shared folder."""
    cur = ws.label_rows()
    records = _labelled_records(ws, cur["record_id"].unique().to_list())
    lines = []
    for r in cur.iter_rows(named=True):
        rec = records.get(r["record_id"], {})
        lines.append(json.dumps({"id": r["record_id"], "annotator": r["annotator"], "verdict": r["verdict"], "tags": r["tags"],
                                 "note": r["note"], "created": str(r["created"]), "kind": rec.get("kind", "sft"),
                                 "messages": rec.get("messages"), **_rich_fields(rec),
                                 "edit": json.loads(r["edit"]) if r["edit"] else None, "source_file": rec.get("source_file"),
                                 "source_line": rec.get("source_line")}, ensure_ascii=False))
    return "".join(line + "\n" for line in lines).encode()


def export_labels(ws: Workspace, path: str | Path) -> int:
    """:func:`labels_jsonl` written to ``path`` atomically: a new file next to it, then renamed over it, so a
    reader never sees half a file and a link planted at ``path`` is replaced, never followed. The count."""
    import os
    import tempfile

    data = labels_jsonl(ws)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return data.count(b"\n")


# ---------------------------------------------------------------------------------------------- eval review

def _examples(ws: Workspace, run_id: str, task: str | None = None) -> pl.DataFrame:
    return ws.query(run_id, "SELECT task, idx, source, prompt, reference, output, scores, annotations FROM eval_examples WHERE run_id = ?"
                    + (" AND task = ?" if task else ""), [run_id, *([task] if task else [])])


def eval_tasks(ws: Workspace, base_run: str, ft_run: str) -> list[str]:
    """The tasks both runs generated for (same example indices), sorted. Each run's examples come from its
    own file and are joined here (an eval run holds hundreds to thousands of examples)."""
    b = _examples(ws, base_run).filter(pl.col("output") != "").select("task", "idx")
    f = _examples(ws, ft_run).select("task", "idx")
    return sorted(b.join(f, on=["task", "idx"])["task"].unique().to_list())


def eval_pairs(ws: Workspace, base_run: str, ft_run: str, task: str) -> pl.DataFrame:
    """Per example of ``task``: prompt, reference, both outputs, both score dicts and annotations (the judge)."""
    b = _examples(ws, base_run, task).select("idx", "source", "prompt", "reference", base_output="output", base_scores="scores",
                                             base_notes="annotations")
    f = _examples(ws, ft_run, task).select("idx", ft_output="output", ft_scores="scores", ft_notes="annotations")
    return b.join(f, on="idx").select("idx", "source", "prompt", "reference", "base_output", "ft_output", "base_scores",
                                      "ft_scores", "base_notes", "ft_notes").sort("idx")


def with_deltas(pairs: pl.DataFrame, metric: str, lower_is_better: bool = False) -> pl.DataFrame:
    """``pairs`` plus ``delta`` (fine-tune minus base on ``metric``, sign flipped where lower is better), so
    sorting ascending puts the largest regressions first."""
    def value(js: str) -> float | None:
        v = json.loads(js or "{}").get(metric)
        return None if v is None or v != v else float(v)

    b = [value(x) for x in pairs["base_scores"]]
    f = [value(x) for x in pairs["ft_scores"]]
    sign = -1.0 if lower_is_better else 1.0
    return pairs.with_columns(delta=pl.Series([None if x is None or y is None else sign * (y - x) for x, y in zip(b, f)], dtype=pl.Float64))


def judge_verdicts(ws: Workspace, base_run: str, ft_run: str, task: str) -> dict[int, str]:
    """The judge's pairwise verdict per example (``base``/``fine_tune``/``tie``) from the compare.json that
    `evalsuite compare --judge` wrote in the fine-tune's run folder; else from the rubric judge's scores."""
    ft = ws.run(ft_run) or {}
    cmp_file = Path(ft.get("output_dir") or "") / "compare.json"
    if cmp_file.is_file():
        cmp = json.loads(cmp_file.read_text())
        if cmp.get("base", {}).get("run_id") == base_run and "pairwise" in cmp.get("tasks", {}).get(task, {}):
            return {e["idx"]: ("tie" if e["verdict"] == "inconsistent" else e["verdict"])
                    for e in cmp["tasks"][task]["pairwise"]["examples"] if e["verdict"] is not None}
    out = {}
    for r in with_deltas(eval_pairs(ws, base_run, ft_run, task), "judge_score").iter_rows(named=True):
        if r["delta"] is not None:
            out[r["idx"]] = "fine_tune" if r["delta"] > 0 else "base" if r["delta"] < 0 else "tie"
    return out


def metric_deltas(ws: Workspace, base_run: str, ft_run: str) -> dict[str, Any]:
    """The paired comparison of two eval runs (``evalsuite.compare``'s dict: per task, per metric the two
    values, the delta and its bootstrap 95% interval): the compare.json in the fine-tune's folder when it
    was made against ``base_run``, else computed from both run folders (seeded, so always the same)."""
    from evalsuite.compare import CompareError, compare

    base, ft = ws.run(base_run) or {}, ws.run(ft_run) or {}
    for run_id, row in ((base_run, base), (ft_run, ft)):
        if not row.get("output_dir") or not Path(row["output_dir"]).is_dir():
            raise CompareError(f"run {run_id}: its folder {row.get('output_dir')!r} is gone")
    cmp_file = Path(ft["output_dir"]) / "compare.json"
    if cmp_file.is_file():
        cmp = json.loads(cmp_file.read_text())
        if cmp.get("base", {}).get("run_id") == base_run:
            return cmp
    return compare(base["output_dir"], ft["output_dir"])


def delta_rows(cmp: dict[str, Any]) -> pl.DataFrame:
    """task, metric, delta, ci_low, ci_high, verdict: one row per compared metric, for the interval plot."""
    rows = [{"task": t, "metric": r["metric"], "delta": r["delta"], "ci_low": r["ci95"][0], "ci_high": r["ci95"][1],
             "verdict": r["verdict"]} for t, task in cmp.get("tasks", {}).items() for r in task["metrics"]]
    return pl.DataFrame(rows, schema={"task": pl.Utf8, "metric": pl.Utf8, "delta": pl.Float64, "ci_low": pl.Float64,
                                      "ci_high": pl.Float64, "verdict": pl.Utf8})


def preferences(ws: Workspace, base_run: str, ft_run: str, task: str | None = None) -> pl.DataFrame:
    """Each annotator's latest preference per example (task, idx, annotator, choice, left_side, blind, created)."""
    return ws.preferences(base_run, ft_run, task)


def human_summary(ws: Workspace, base_run: str, ft_run: str, task: str) -> dict[str, Any]:
    """Human win rate of the fine-tune (wins + ties/2 over votes) and, on the items the judge also
    decided, judge-human agreement and Cohen's kappa."""
    from sklearn.metrics import cohen_kappa_score

    prefs = preferences(ws, base_run, ft_run, task)
    out: dict[str, Any] = {"votes": prefs.height}
    if not prefs.height:
        return out
    score = prefs["choice"].replace_strict({"fine_tune": 1.0, "base": 0.0, "tie": 0.5}, return_dtype=pl.Float64)
    out.update(win_rate=float(score.mean()), fine_tune=int((prefs["choice"] == "fine_tune").sum()),
               base=int((prefs["choice"] == "base").sum()), tie=int((prefs["choice"] == "tie").sum()))
    judge = judge_verdicts(ws, base_run, ft_run, task)
    paired = [(c, judge[i]) for i, c in zip(prefs["idx"], prefs["choice"]) if i in judge]
    out["judged"] = len(paired)
    if paired:
        human, machine = zip(*paired)
        out["judge_agreement"] = sum(h == m for h, m in paired) / len(paired)
        k = cohen_kappa_score(human, machine) if len(set(human) | set(machine)) > 1 else float("nan")
        out["judge_kappa"] = None if k != k else float(k)
    return out
