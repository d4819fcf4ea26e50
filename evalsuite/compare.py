"""`evalsuite compare BASE FT`: is the fine-tune better than its base by more than noise, per metric?

Both runs must have scored the same prompts (hash per task), with the same chat template and generation
settings; otherwise :class:`CompareError` says which differs (a delta between unlike runs means nothing).

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

BOOTSTRAP = 1000


class CompareError(ValueError):
    """The two runs cannot be compared; the message says what differs."""


def load_run(path: str | Path) -> tuple[dict[str, Any], Any]:
    """(results, examples frame) from a run folder (or its results.json)."""
    import polars as pl

    from evalsuite.runner import RESULTS_FORMAT

    folder = Path(path)
    folder = folder.parent if folder.name == "results.json" else folder
    if not (folder / "results.json").is_file():
        raise CompareError(f"{folder}: no results.json (an `evalsuite run` output folder is expected)")
    results = json.loads((folder / "results.json").read_text())
    if results.get("format", 1) < RESULTS_FORMAT:
        raise CompareError(f"{folder}: made by an earlier evalsuite without per-example statistics; run `evalsuite run` again")
    return results, pl.read_parquet(folder / "examples.parquet")


def check_comparable(base: dict[str, Any], ft: dict[str, Any]) -> list[str]:
    """The tasks both runs share; CompareError when prompts, template or generation settings differ."""
    problems = []
    if base["chat_template_sha256"] != ft["chat_template_sha256"]:
        problems.append("the chat templates differ")
    shared = [t for t in base["tasks"] if t in ft["tasks"]]
    if not shared:
        problems.append(f"no task in common (base: {sorted(base['tasks'])}, fine-tune: {sorted(ft['tasks'])})")
    for t in shared:
        b, f = base["tasks"][t], ft["tasks"][t]
        if b["prompts_sha256"] != f["prompts_sha256"]:
            problems.append(f"task {t}: the prompts differ")
        if b["generation"] != f["generation"]:
            diff = {k: (b["generation"][k], f["generation"].get(k)) for k in b["generation"] if b["generation"][k] != f["generation"].get(k)}
            problems.append(f"task {t}: generation settings differ {diff}")
        bo, fo = b.get("metric_options", {}), f.get("metric_options", {})
        for m in sorted(set(bo) & set(fo)):
            if bo[m] != fo[m]:  # another judge, another extractor: the numbers measure different things
                problems.append(f"task {t}: metric {m} options differ ({bo[m]} vs {fo[m]})")
    if problems:
        raise CompareError("; ".join(problems))
    return shared


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
    """The comparison as a dict (what the JSON output holds); see the module docstring."""
    import numpy as np

    base, base_ex = load_run(base_path)
    ft, ft_ex = load_run(ft_path)
    out: dict[str, Any] = {"base": _who(base), "fine_tune": _who(ft), "bootstrap": BOOTSTRAP, "tasks": {}}
    rng = np.random.default_rng(seed)
    for t in check_comparable(base, ft):
        b_frame = base_ex.filter(base_ex["task"] == t).sort("idx")
        f_frame = ft_ex.filter(ft_ex["task"] == t).sort("idx")
        n = b_frame.height
        samples = rng.integers(0, n, size=(BOOTSTRAP, n))
        rows = []
        for key in [k for k in base["tasks"][t]["metrics"] if k in ft["tasks"][t]["metrics"]]:
            b_val, f_val = base["tasks"][t]["metrics"][key]["value"], ft["tasks"][t]["metrics"][key]["value"]
            score = key_score(ft, t, key)
            name = ft["tasks"][t]["metrics"][key]["metric"]
            b_stats, b_fn = _statistic(key, name, base["tasks"][t], b_frame, score)
            f_stats, f_fn = _statistic(key, name, ft["tasks"][t], f_frame, score)
            deltas = np.array([f_fn(f_stats[s]) - b_fn(b_stats[s]) for s in samples])
            deltas = deltas[~np.isnan(deltas)]
            lo, hi = (float(x) for x in np.percentile(deltas, [2.5, 97.5])) if len(deltas) else (math.nan, math.nan)
            sign = 1 if score.higher_is_better else -1
            pairs = [(x, y) for x, y in zip((_num(json.loads(s)[key]) for s in b_frame["scores"]),
                                            (_num(json.loads(s)[key]) for s in f_frame["scores"])) if x is not None and y is not None]
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
        sign = 1 if key_score(ft, t, first).higher_is_better else -1

        def change(i: int) -> float:
            b, f = _num(json.loads(b_frame["scores"][i])[first]), _num(json.loads(f_frame["scores"][i])[first])
            return 0.0 if b is None or f is None else sign * (f - b)

        drops = sorted(range(n), key=change)
        out["tasks"][t] = {"n": n, "metrics": rows, "regressed_on": first, "regressions": [
            {"idx": i, "source": b_frame["source"][i], "prompt": b_frame["prompt"][i], "reference": b_frame["reference"][i],
             "base_output": b_frame["output"][i], "fine_tune_output": f_frame["output"][i],
             "base": json.loads(b_frame["scores"][i])[first], "fine_tune": json.loads(f_frame["scores"][i])[first]}
            for i in drops[:regressions] if change(i) < 0
        ]}
        if judge is not None and "kind" not in base["tasks"][t]["generation"]:  # generation tasks: outputs to judge
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
    b, f = cmp["base"], cmp["fine_tune"]
    lines = [f"# {f['model']}{' + ' + f['adapter'] if f['adapter'] else ''} vs {b['model']}{' + ' + b['adapter'] if b['adapter'] else ''}", ""]
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
