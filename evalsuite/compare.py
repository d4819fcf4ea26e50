"""`evalsuite compare BASE FT`: is the fine-tune better than its base by more than noise, per metric?

Both runs must have scored the same prompts against the same references (a hash of each per task), with the
same chat template, generation settings and metric options; otherwise :class:`CompareError` says which
differs and in which task (a delta between unlike runs means nothing). Runs that scored outputs made elsewhere
(``evalsuite score``: generation kind ``scored``) compare with each other, never with a run that generated its
own. A task (or a result key) present in one run only is listed under ``not_compared`` and in the report,
never silently dropped.

Every input is checked once, by :func:`load_run`, before any number is computed: results.json against
:class:`RunResults`, examples.parquet's columns and, per task, its row count, indexes and per-example scores
and statistics against what results.json says. A broken run is a :class:`CompareError` naming the file and the
field, which the command line reports in one line (exit 2).

Per task and metric key:
- both values and the delta (fine-tune minus base);
- a paired bootstrap 95% interval of the delta (1,000 resamples of the examples, the same resample for
  both runs, seeded): each resample's value is rebuilt by the metric's own aggregation from the per-example
  statistics the run stored (corpus BLEU/chrF from sacrebleu's sufficient statistics of the scored text,
  perplexity token-weighted, a mean metric as the mean of its scores);
- for keys whose per-example outcomes are paired 0/1 (the metric says so: exact match, probe accuracy)
  McNemar's exact test on the discordant pairs;
- a verdict: ``better`` / ``worse`` when the interval (or McNemar's p < 0.05) excludes no change, else
  ``no significant change``, in the metric's direction (lower perplexity is better);
- win / tie / loss counts over examples, and the examples that regressed most on the task's first metric.

Judge scores (``judge_*``) can be missing for an example (an unparseable verdict): means skip them, and
win/tie/loss counts only the examples both runs have a score for. With ``judge`` (a
:class:`evalsuite.judge.JudgeConfig`), every generation task also gets a pairwise verdict per example, both
orders, and the fine-tune's win rate with its interval (:func:`evalsuite.judge.pairwise`).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BOOTSTRAP = 1000
SCORED = "scored"  # the generation kind of a run that scored outputs made elsewhere (`evalsuite score`)
EXAMPLE_COLUMNS = ("task", "idx", "source", "prompt", "reference", "output", "scores", "stats")


class CompareError(ValueError):
    """The two runs cannot be compared, or one is unusable; the message names the file, task or field."""


class _Open(BaseModel):
    # later evalsuite versions (and other writers) may add keys: only what compare and gate read is checked
    model_config = ConfigDict(extra="allow")


class MetricEntry(_Open):
    """One result key of a task in results.json."""

    value: float = Field(description="the headline value (NaN where the metric had nothing to score)")
    metric: str = Field(min_length=1, description="the registered metric that produced the key (asked for its Score)")
    details: dict[str, Any] = Field(default_factory=dict, description="what the metric reports beside the value")


class TaskResults(_Open):
    """One task of results.json: what a comparison must hold equal, and its results."""

    n: int = Field(ge=1, description="examples scored: the task's rows in examples.parquet")
    generation: dict[str, Any] = Field(description="generation settings, or {kind: ...} for probes, text and scored outputs")
    prompts_sha256: str = Field(min_length=1, description="hash of the task's prompts, in order")
    references_sha256: str = Field(min_length=1, description="hash of the task's references (the answer key), in order")
    metric_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="each metric's options as the suite gave them")
    metrics: dict[str, MetricEntry] = Field(min_length=1, description="result key -> value and producing metric")


class PluginRecord(_Open):
    """A user module the run imported for its metrics (evalsuite/plugins.py)."""

    module: str = Field(min_length=1, description="module name")
    file: str | None = Field(default=None, description="the file it was loaded from")


class RunResults(_Open):
    """results.json as compare and gate read it."""

    format: int = Field(description="results format; per-example statistics from format 2 on")
    model: str = Field(description="the model, as the run named it")
    adapter: str | None = Field(default=None, description="the adapter on top of the model, if any")
    run_id: str | None = Field(default=None, description="the run's id")
    chat_template_sha256: str | None = Field(description="hash of the chat template; null for scored outputs made elsewhere")
    tasks: dict[str, TaskResults] = Field(min_length=1, description="task name -> its results")
    plugins: list[PluginRecord] = Field(default_factory=list, description="user metric modules to import before reading keys")


def _one_line(text: object) -> str:  # a message, or an exception (its str())
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _first_error(exc: ValidationError, file: Path) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{file}: {loc}: {first['msg']}{more}"


def _read_results(folder: Path) -> dict[str, Any]:
    from evalsuite.runner import RESULTS_FORMAT

    file = folder / "results.json"
    if not file.is_file():
        raise CompareError(f"{folder}: no results.json (an `evalsuite run` or `evalsuite score` output folder is expected)")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompareError(f"{file}: not readable JSON ({_one_line(exc) or 'empty file'})") from None
    if not isinstance(raw, dict):
        raise CompareError(f"{file}: a JSON object is expected, got {type(raw).__name__}")
    fmt = raw.get("format")
    if not isinstance(fmt, int) or fmt < RESULTS_FORMAT:
        raise CompareError(f"{file}: format: {fmt!r}, not a results format this evalsuite reads (made by an earlier "
                           f"evalsuite without per-example statistics, or not by evalsuite); run `evalsuite run` again")
    if fmt > RESULTS_FORMAT:
        raise CompareError(f"{file}: format: {fmt}, made by a newer evalsuite (this one reads format {RESULTS_FORMAT})")
    try:
        return RunResults.model_validate(raw).model_dump()
    except ValidationError as exc:
        raise CompareError(_first_error(exc, file)) from None


def _json_cell(text: Any, file: Path, where: str, column: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise CompareError(f"{file}: {where}: column {column}: a JSON object is expected, got {str(text)[:60]!r}")
    return value


def _check_examples(frame: Any, results: dict[str, Any], file: Path) -> None:
    """Each task of ``results`` has exactly its ``n`` rows (idx 0..n-1), every row a score for each of the task's
    keys, and per key statistics rows of one width; CompareError naming the task, row and column otherwise."""
    import polars as pl

    missing = [c for c in EXAMPLE_COLUMNS if c not in frame.columns]
    if missing:
        raise CompareError(f"{file}: no column {', '.join(missing)} (it has {', '.join(frame.columns)})")
    for col, dtype in (("task", pl.Utf8), ("idx", None), ("scores", pl.Utf8), ("stats", pl.Utf8), ("output", pl.Utf8), ("source", pl.Utf8)):
        if dtype is None and not frame[col].dtype.is_integer() or dtype is not None and frame[col].dtype != dtype:
            raise CompareError(f"{file}: column {col} is {frame[col].dtype}, {'an integer' if dtype is None else 'text'} column expected")
    extra = sorted(set(frame["task"].unique().to_list()) - set(results["tasks"]))
    if extra:
        raise CompareError(f"{file}: rows of task {extra[0]}, which results.json does not list (its tasks: {', '.join(results['tasks'])})")
    for t, task in results["tasks"].items():
        rows = frame.filter(pl.col("task") == t).sort("idx")
        if rows.height != task["n"]:
            raise CompareError(f"{file}: task {t}: {rows.height} rows, results.json says n = {task['n']} "
                               f"({'examples missing' if rows.height < task['n'] else 'extra rows'}: a truncated or mixed-up run folder)")
        if rows["idx"].to_list() != list(range(task["n"])):
            raise CompareError(f"{file}: task {t}: idx is not 0..{task['n'] - 1} once each")
        keys = list(task["metrics"])
        widths: dict[str, int] = {}
        for i, (sc, st) in enumerate(zip(rows["scores"], rows["stats"])):
            where = f"task {t}, idx {i}"
            scores = _json_cell(sc, file, where, "scores")
            lacking = [k for k in keys if k not in scores]
            if lacking:
                raise CompareError(f"{file}: {where}: scores: no {', '.join(lacking)} (results.json has these keys for task {t})")
            bad = [k for k in keys if scores[k] is not None and not isinstance(scores[k], (int, float))]
            if bad:
                raise CompareError(f"{file}: {where}: scores: {bad[0]} is {scores[bad[0]]!r}, a number or null expected")
            for k, row in _json_cell(st, file, where, "stats").items():
                if row is None:
                    continue
                if not isinstance(row, list) or not row or not all(isinstance(x, (int, float)) for x in row):
                    raise CompareError(f"{file}: {where}: stats: {k} is {str(row)[:60]}, a list of numbers expected")
                if widths.setdefault(k, len(row)) != len(row):
                    raise CompareError(f"{file}: {where}: stats: {k} has {len(row)} numbers, earlier rows {widths[k]}")


def load_run(path: str | Path) -> tuple[dict[str, Any], Any]:
    """(results, examples frame) of a run folder (or its results.json), both checked: the one place a run is
    validated. :class:`CompareError` names the file and field of the first problem: no or unreadable
    results.json, a missing key, an older or newer format, a missing or unreadable examples.parquet, a task
    with fewer or more rows than results.json says, a row without a score of one of its task's keys, a plugin
    the run used that cannot be imported."""
    import polars as pl

    from evalsuite.plugins import PluginError, load_recorded

    folder = Path(path)
    folder = folder.parent if folder.name == "results.json" else folder
    if not folder.is_dir():
        raise CompareError(f"{folder}: {'not a run folder (a file)' if folder.exists() else 'no such run folder'}")
    results = _read_results(folder)
    file = folder / "examples.parquet"
    if not file.is_file():
        raise CompareError(f"{file}: missing (the run's per-example rows; the run folder is incomplete)")
    try:
        frame = pl.read_parquet(file)
    except Exception as exc:  # noqa: BLE001  (polars and arrow raise several types for a damaged file)
        raise CompareError(f"{file}: not a readable Parquet file (truncated or damaged?): {_one_line(exc)[:200]}") from None
    _check_examples(frame, results, file)
    try:
        load_recorded(results["plugins"])
    except PluginError as exc:
        raise CompareError(f"{folder / 'results.json'}: plugins: {exc}") from None
    return results, frame


def _is_scored(task: dict[str, Any]) -> bool:
    return task["generation"].get("kind") == SCORED


def check_comparable(base: dict[str, Any], ft: dict[str, Any]) -> list[str]:
    """The tasks both runs share. CompareError, naming the task, when the prompts, the references (same
    prompts, another answer key), the number of examples, the generation settings, a metric's options or the
    metric behind a result key differ; when the chat templates differ; when one run generated its outputs
    and the other scored outputs made elsewhere; or when no task is shared."""
    problems = []
    shared = [t for t in base["tasks"] if t in ft["tasks"]]
    if not shared:
        problems.append(f"no task in common (base: {sorted(base['tasks'])}, fine-tune: {sorted(ft['tasks'])})")
    mixed = False
    for t in shared:
        b, f = base["tasks"][t], ft["tasks"][t]
        if _is_scored(b) != _is_scored(f):
            mixed = True
            which = "base" if _is_scored(b) else "fine-tune"
            problems.append(f"task {t}: the {which} run scored outputs made elsewhere (`evalsuite score`) and the other "
                            f"generated its own (`evalsuite run`), under settings the scored run does not know: compare "
                            f"two scored runs, or two generated runs")
        if b["prompts_sha256"] != f["prompts_sha256"]:
            problems.append(f"task {t}: the prompts differ")
        elif b["references_sha256"] != f["references_sha256"]:
            problems.append(f"task {t}: the references differ (the same prompts with another answer key)")
        if b["n"] != f["n"]:
            problems.append(f"task {t}: {b['n']} examples in the base run, {f['n']} in the fine-tune run")
        if not _is_scored(b) and not _is_scored(f) and b["generation"] != f["generation"]:
            gb, gf = b["generation"], f["generation"]
            diff = {k: (gb.get(k), gf.get(k)) for k in sorted(set(gb) | set(gf)) if gb.get(k) != gf.get(k)}
            problems.append(f"task {t}: generation settings differ {diff}")
        bo, fo = b.get("metric_options", {}), f.get("metric_options", {})
        for m in sorted(set(bo) & set(fo)):
            if bo[m] != fo[m]:  # another judge, another extractor: the numbers measure different things
                problems.append(f"task {t}: metric {m} options differ ({bo[m]} vs {fo[m]})")
        for k in [k for k in b["metrics"] if k in f["metrics"]]:
            if b["metrics"][k]["metric"] != f["metrics"][k]["metric"]:
                problems.append(f"task {t}: result {k} comes from metric {b['metrics'][k]['metric']} in the base run "
                                f"and {f['metrics'][k]['metric']} in the fine-tune run")
    bt, ftt = base.get("chat_template_sha256"), ft.get("chat_template_sha256")
    if not mixed and bt != ftt:
        unseen = "base" if bt is None else "fine-tune" if ftt is None else None
        problems.append("the chat templates differ" + (f" (the {unseen} run's is unknown: its outputs came from a server, which "
                                                       f"applies its own)" if unseen else ""))
    if problems:
        raise CompareError("; ".join(problems))
    return shared


def not_compared(base: dict[str, Any], ft: dict[str, Any]) -> list[dict[str, Any]]:
    """What one run has and the other lacks: tasks, and result keys of shared tasks; each with the note the
    report prints (``task X is only in the base run: not compared``)."""
    out = []
    for side, mine, other in (("base", base, ft), ("fine-tune", ft, base)):
        for t in mine["tasks"]:
            if t not in other["tasks"]:
                out.append({"task": t, "metric": None, "only_in": side, "note": f"task {t} is only in the {side} run: not compared"})
            else:
                for k in mine["tasks"][t]["metrics"]:
                    if k not in other["tasks"][t]["metrics"]:
                        out.append({"task": t, "metric": k, "only_in": side,
                                    "note": f"task {t}: result {k} is only in the {side} run: not compared"})
    return out


def key_score(results: dict[str, Any], task: str, key: str):
    """The :class:`evalsuite.metrics.Score` of result ``key`` of ``task``: asked of the metric that produced it."""
    from evalsuite.metrics import UnknownMetric, score_of

    entry = results["tasks"][task]["metrics"][key]
    try:
        return score_of(entry["metric"], key)
    except (UnknownMetric, KeyError) as exc:
        raise CompareError(f"task {task}, result {key}: {exc}") from None


def _statistic(key: str, metric_name: str, task: dict[str, Any], frame, score) -> tuple[Any, Any]:
    """(per-example stats rows, function of a resample of rows -> metric value): what a bootstrap resamples.
    The rows were computed by the metric on the text it scored (after extraction, with every reference)."""
    import numpy as np

    options = task.get("metric_options", {}).get(metric_name, {})
    rows = [json.loads(s).get(key) for s in frame["stats"]]
    width = max((len(r) for r in rows if r is not None), default=1)
    stats = np.array([[math.nan] * width if r is None else r for r in rows], dtype=float)
    return stats, lambda sample: score.aggregate(sample, options)


def mcnemar(base: list[float], ft: list[float]) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes."""
    from scipy.stats import binomtest

    b = sum(1 for x, y in zip(base, ft) if x > y)  # base right, fine-tune wrong
    c = sum(1 for x, y in zip(base, ft) if y > x)
    return 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5).pvalue)


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def compare(base_path: str | Path, ft_path: str | Path, regressions: int = 5, seed: int = 0, judge: Any = None) -> dict[str, Any]:
    """The comparison as a dict (what the JSON output holds); see the module docstring. Both runs are
    checked (:func:`load_run`) and must be alike (:func:`check_comparable`) before anything is computed;
    ``not_compared`` lists what only one run has."""
    import numpy as np

    base, base_ex = load_run(base_path)
    ft, ft_ex = load_run(ft_path)
    shared = check_comparable(base, ft)
    out: dict[str, Any] = {"base": _who(base), "fine_tune": _who(ft), "bootstrap": BOOTSTRAP,
                           "not_compared": not_compared(base, ft), "tasks": {}}
    rng = np.random.default_rng(seed)
    for t in shared:
        keys = [k for k in base["tasks"][t]["metrics"] if k in ft["tasks"][t]["metrics"]]
        if not keys:
            continue  # every key of the task is listed in not_compared
        scores = {k: key_score(ft, t, k) for k in keys}  # an unknown metric fails here, before any bootstrap
        b_frame = base_ex.filter(base_ex["task"] == t).sort("idx")
        f_frame = ft_ex.filter(ft_ex["task"] == t).sort("idx")
        b_scores = [json.loads(s) for s in b_frame["scores"]]
        f_scores = [json.loads(s) for s in f_frame["scores"]]
        n = b_frame.height
        samples = rng.integers(0, n, size=(BOOTSTRAP, n))
        rows = []
        for key in keys:
            b_val, f_val = base["tasks"][t]["metrics"][key]["value"], ft["tasks"][t]["metrics"][key]["value"]
            score = scores[key]
            name = ft["tasks"][t]["metrics"][key]["metric"]
            b_stats, b_fn = _statistic(key, name, base["tasks"][t], b_frame, score)
            f_stats, f_fn = _statistic(key, name, ft["tasks"][t], f_frame, score)
            deltas = np.array([f_fn(f_stats[s]) - b_fn(b_stats[s]) for s in samples])
            deltas = deltas[~np.isnan(deltas)]
            lo, hi = (float(x) for x in np.percentile(deltas, [2.5, 97.5])) if len(deltas) else (math.nan, math.nan)
            sign = 1 if score.higher_is_better else -1
            pairs = [(x, y) for x, y in zip((_num(s[key]) for s in b_scores), (_num(s[key]) for s in f_scores))
                     if x is not None and y is not None]
            b_ex, f_ex = [x for x, _ in pairs], [y for _, y in pairs]
            wins = sum(1 for x, y in pairs if sign * (y - x) > 1e-12)
            losses = sum(1 for x, y in pairs if sign * (x - y) > 1e-12)
            row = {"metric": key, "base": b_val, "fine_tune": f_val, "delta": f_val - b_val, "ci95": [lo, hi],
                   "wins": wins, "ties": len(pairs) - wins - losses, "losses": losses}
            if len(pairs) < n:
                row["paired"] = len(pairs)
            significant = lo > 0 or hi < 0
            if score.binary:  # paired 0/1 outcomes
                row["mcnemar_p"] = mcnemar(b_ex, f_ex)
                significant = row["mcnemar_p"] < 0.05
            row["verdict"] = "no significant change" if not significant or row["delta"] == 0 else (
                "better" if sign * row["delta"] > 0 else "worse")
            rows.append(row)
        first = rows[0]["metric"]
        sign = 1 if scores[first].higher_is_better else -1
        pairs_first = ((_num(b_scores[i][first]), _num(f_scores[i][first])) for i in range(n))
        change = [0.0 if b is None or f is None else sign * (f - b) for b, f in pairs_first]  # per example, + is better
        drops = sorted(range(n), key=change.__getitem__)
        out["tasks"][t] = {"n": n, "metrics": rows, "regressed_on": first, "regressions": [
            {"idx": i, "source": b_frame["source"][i], "prompt": b_frame["prompt"][i], "reference": b_frame["reference"][i],
             "base_output": b_frame["output"][i], "fine_tune_output": f_frame["output"][i],
             "base": b_scores[i][first], "fine_tune": f_scores[i][first]}
            for i in drops[:regressions] if change[i] < 0
        ]}
        generation_kind = base["tasks"][t]["generation"].get("kind")
        if judge is not None and generation_kind in (None, SCORED):  # tasks whose outputs answer the prompts
            out["tasks"][t]["pairwise"] = _pairwise(judge, b_frame, f_frame, seed)
    return out


def _pairwise(judge: Any, b_frame, f_frame, seed: int) -> dict[str, Any]:
    from evalsuite.judge import make_judge, pairwise

    if not hasattr(judge, "complete"):
        judge = make_judge(judge)
    res = pairwise(judge, [json.loads(p) for p in b_frame["prompt"]], b_frame["output"].to_list(), f_frame["output"].to_list(), seed=seed)
    examples = [{"idx": i, "source": src, **{k: r[k] for k in ("verdict", "order1", "order2", "error")}}
                for i, (src, r) in enumerate(zip(b_frame["source"], res["records"]))]
    return {**res["summary"], "judge": res["judge"], "examples": examples}


def _who(results: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": results.get("run_id"), "model": results.get("model"), "adapter": results.get("adapter")}


def _pairwise_line(p: dict[str, Any]) -> str:
    j = p["judge"]
    rate = "no win rate" if p["win_rate"] is None else f"fine-tune win rate {p['win_rate']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]: {p['verdict']}"
    return (f"Pairwise judge ({j['backend']}: {j['model']}, both orders): {rate}; fine-tune {p['fine_tune']}, base {p['base']}, "
            f"tie {p['tie']}, inconsistent {p['inconsistent']}, unparseable {p['unparseable']}, failed {p['failed']}; "
            f"orders agreed on {'-' if p['order_agreement'] is None else format(p['order_agreement'], '.0%')}, "
            f"answer A chosen {'-' if p['first_position_rate'] is None else format(p['first_position_rate'], '.0%')}")


def to_markdown(cmp: dict[str, Any]) -> str:
    """The comparison as Markdown: the notes on what was not compared first, then a table per task."""
    b, f = cmp["base"], cmp["fine_tune"]
    lines = [f"# {f['model']}{' + ' + f['adapter'] if f['adapter'] else ''} vs {b['model']}{' + ' + b['adapter'] if b['adapter'] else ''}", ""]
    if cmp.get("not_compared"):
        lines += ["Not compared:", ""] + [f"- {x['note']}" for x in cmp["not_compared"]] + [""]
    for t, task in cmp["tasks"].items():
        lines += [f"## {t} ({task['n']} examples)", "", "| metric | base | fine-tune | delta | 95% CI | verdict | W/T/L |", "|---|---|---|---|---|---|---|"]
        for r in task["metrics"]:
            p = f" (McNemar p={r['mcnemar_p']:.3g})" if "mcnemar_p" in r else ""
            lines.append(f"| {r['metric']} | {r['base']:.4f} | {r['fine_tune']:.4f} | {r['delta']:+.4f} | "
                         f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] | {r['verdict']}{p} | {r['wins']}/{r['ties']}/{r['losses']} |")
        if "pairwise" in task:
            lines += ["", _pairwise_line(task["pairwise"])]
        lines += ["", f"Largest regressions on {task['regressed_on']}:", ""]
        for x in task["regressions"]:
            lines += [f"- `{x['source']}` {x['base']:.3f} -> {x['fine_tune']:.3f}", "", "```text", f"PROMPT: {x['prompt']}",
                      f"BASE: {x['base_output']}", f"FINE-TUNE: {x['fine_tune_output']}", "```", ""]
    return "\n".join(lines) + "\n"


def to_html(cmp: dict[str, Any]) -> str:
    """Self-contained HTML; every record text is escaped (model outputs are hostile input)."""
    e = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>evalsuite compare</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{border:1px solid #ccc;padding:4px}"
             "table{border-collapse:collapse}.better{color:#070}.worse{color:#a00}pre{white-space:pre-wrap;background:#f6f6f6}</style>"]
    if cmp.get("not_compared"):
        parts.append("<p>Not compared:</p><ul>" + "".join(f"<li>{e(x['note'])}</li>" for x in cmp["not_compared"]) + "</ul>")
    for t, task in cmp["tasks"].items():
        parts.append(f"<h2>{e(t)} ({task['n']} examples)</h2><table><tr><th>metric</th><th>base</th><th>fine-tune</th>"
                     "<th>delta</th><th>95% CI</th><th>verdict</th><th>W/T/L</th></tr>")
        for r in task["metrics"]:
            cls = r["verdict"].split()[0]
            parts.append(f"<tr><td>{e(r['metric'])}</td><td>{r['base']:.4f}</td><td>{r['fine_tune']:.4f}</td><td>{r['delta']:+.4f}</td>"
                         f"<td>[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]</td><td class='{cls}'>{e(r['verdict'])}</td>"
                         f"<td>{r['wins']}/{r['ties']}/{r['losses']}</td></tr>")
        parts.append("</table>")
        if "pairwise" in task:
            parts.append(f"<p>{e(_pairwise_line(task['pairwise']))}</p>")
        parts.append(f"<h3>Largest regressions on {e(task['regressed_on'])}</h3>")
        for x in task["regressions"]:
            parts.append(f"<p>{e(x['source'])}: {x['base']:.3f} &rarr; {x['fine_tune']:.3f}</p><pre>{e(x['prompt'])}</pre>"
                         f"<pre>BASE: {e(x['base_output'])}</pre><pre>FINE-TUNE: {e(x['fine_tune_output'])}</pre>")
    return "\n".join(parts) + "\n"
