"""The report of one `curate run`: Markdown, a self-contained HTML page, JSON, and two PNG charts.

``write_report(summary, examples, token_lengths, out_dir)`` writes into ``out_dir``:

- ``report.md``          for people reading the folder (links the PNGs by relative path)
- ``report.html``        one self-contained file: inline CSS, PNGs as base64 data URIs, no script, nothing
                         fetched from anywhere (a Content-Security-Policy meta tag says so to the browser too)
- ``report.json``        for machines: the summary, the funnel, reason counts, length quantiles, examples
- ``funnel.png``         records left after each stage, as horizontal bars
- ``token_lengths.png``  length histograms before and after, log-scaled counts, the long tail clipped into
                         the last bin, median and p95 marked

Record text is hostile input. In HTML every record-derived string (and every other string, for that matter)
goes through Jinja2 autoescaping; nothing is marked safe. In Markdown, record text only ever appears inside
fenced code blocks or inline code spans whose backtick fence is longer than any backtick run in the text, so
a record cannot close the fence, and markdown images, links and raw HTML in records stay inert. Control and
bidi-override characters are shown as visible ``<U+XXXX>`` markers; lone surrogates are replaced.
"""

from __future__ import annotations

import base64
import json
import math
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

TURN_CHARS = 600  # per turn, in the Markdown and HTML examples
JSON_TURN_CHARS = 4000  # per string, in report.json's examples
RAW_CHARS = 600  # quarantine excerpts
DETAIL_CHARS = 300
QUANTILES = (("p5", 5), ("p25", 25), ("median", 50), ("p75", 75), ("p95", 95), ("p99", 99))
HIST_CLIP_PERCENTILE = 99.5
INGEST_STAGE = "ingest (quarantine)"

REPORT_FILES = {
    "markdown": "report.md",
    "html": "report.html",
    "json": "report.json",
    "histogram": "token_lengths.png",
    "funnel": "funnel.png",
}
SIMILARITY_PNG = "similarity.png"
SIMILARITY_BINS = 0.05  # width of the near-threshold histogram's table rows


def write_report(
    summary: dict,
    examples: dict[str, list[dict]],
    token_lengths: dict[str, np.ndarray],
    out_dir: Path,
    review: dict | None = None,
) -> dict[str, Path]:
    """Write the run report into ``out_dir``.

    ``review`` (optional, from the pipeline) holds the dedup and decontamination review: ``clusters``
    (stage -> largest clusters, each ``{"k", "size", "members": [rows, representative first]}``),
    ``similarities`` (stage -> ``{"values": array, "threshold": float}``) and ``contamination``
    (rows with ``source_file``, ``source_line``, ``detail``).

    Returns ``{"markdown", "html", "json", "histogram", "funnel"}`` (plus ``"similarity"`` when a
    near-dup stage scored pairs) mapped to the written paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / v for k, v in REPORT_FILES.items()}

    ctx = _context(summary, examples or {}, token_lengths or {})
    ctx.update(_review_context(summary, review or {}))
    _funnel_png(ctx["funnel"], paths["funnel"])
    _lengths_png(ctx["_before"], ctx["_after"], ctx["unit"], ctx["clip"], paths["histogram"])
    image_keys = ["funnel", "histogram"]
    if ctx["_similarities"]:
        paths["similarity"] = out_dir / SIMILARITY_PNG
        _similarity_png(ctx["_similarities"], paths["similarity"])
        image_keys.append("similarity")

    paths["markdown"].write_text(_markdown(ctx), encoding="utf-8")
    images = {k: base64.b64encode(paths[k].read_bytes()).decode("ascii") for k in image_keys}
    paths["html"].write_text(_html(ctx, images), encoding="utf-8")
    paths["json"].write_text(json.dumps(_json_report(ctx, summary, examples or {}), indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return paths


# ------------------------------------------------------------------------------------------------------------
# text hygiene
# ------------------------------------------------------------------------------------------------------------

# C0/C1 controls except tab and newline, zero-width and bidi controls (Trojan-source style tricks)
_INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def _str(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bytes):
        x = x.decode("utf-8", "replace")
    s = x if isinstance(x, str) else str(x)
    # lone surrogates (possible from JSON "\ud800") cannot be written as UTF-8
    return s.encode("utf-8", "replace").decode("utf-8")


def _visible(s: Any) -> str:
    """Text for display: newlines normalized, invisible and control characters shown as <U+XXXX>."""
    s = _str(s).replace("\r\n", "\n").replace("\r", "\n")
    return _INVISIBLE.sub(lambda m: f"<U+{ord(m.group()):04X}>", s)


def _truncate(s: str, n: int) -> str:
    if len(s) <= n:
        return s
    return s[:n] + f" … [truncated, {len(s) - n:,} more chars]"


def _oneline(s: Any, n: int = DETAIL_CHARS) -> str:
    return _truncate(" ".join(_visible(s).split()), n)


def _fmt_int(n: Any) -> str:
    try:
        return f"{int(n):,}"
    except (TypeError, ValueError):
        return _str(n) or "–"


def _pct(part: float, whole: float) -> str:
    if not whole:
        return "–"
    p = 100.0 * part / whole
    if 0 < p < 0.1:
        return "<0.1%"
    if 99.9 < p < 100:
        return ">99.9%"
    return f"{p:.1f}%"


def _fmt_num(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    x = round(float(x), 1)
    if x.is_integer():
        return f"{int(x):,}"
    return f"{x:,.1f}"


def _fmt_sim(x: Any) -> str:
    """A similarity (Jaccard, cosine) to three decimals: 0.977 is not 1."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "–"
    return f"{f:.3f}" if math.isfinite(f) else "–"


def _int(x: Any) -> int:
    try:
        return int(x)
    except (TypeError, ValueError):
        return 0


# ------------------------------------------------------------------------------------------------------------
# the numbers, once, for all three renderings
# ------------------------------------------------------------------------------------------------------------


def _lengths(a: Any) -> np.ndarray:
    if a is None:
        return np.zeros(0)
    try:
        v = np.asarray(a, dtype=float).ravel()
    except (TypeError, ValueError):
        v = np.asarray([x if isinstance(x, (int, float)) else np.nan for x in a], dtype=float)
    return v[np.isfinite(v)]


def _quantiles(v: np.ndarray) -> dict[str, float | int | None]:
    if v.size == 0:
        return {"count": 0, "mean": None, "min": None, **{k: None for k, _ in QUANTILES}, "max": None}
    qs = np.percentile(v, [q for _, q in QUANTILES])
    out: dict[str, float | int | None] = {"count": int(v.size), "mean": round(float(v.mean()), 2), "min": float(v.min())}
    out.update({k: round(float(x), 2) for (k, _), x in zip(QUANTILES, qs)})
    out["max"] = float(v.max())
    return out


def _messages(m: Any, prefix: str = "") -> list[dict[str, str]]:
    """Turns as {role, content} for display: a tool call is shown after the turn's text as ``→ name(arguments)``,
    a tool result's role names the tool; ``prefix`` marks the role (a pair's rejected side)."""
    if m is None:
        return []
    if isinstance(m, str):
        try:
            m = json.loads(m)
        except ValueError:
            return [{"role": "?", "content": m}]
    if isinstance(m, dict):
        m = [m]
    turns = []
    for t in m:
        if isinstance(t, dict):
            role = _str(t.get("role")) or "?"
            content = _str(t.get("content"))
            calls = [c for c in t.get("tool_calls") or [] if isinstance(c, dict)]
            if calls:
                shown = [f"→ {_str((c.get('function') or {}).get('name'))}({_str((c.get('function') or {}).get('arguments'))})" for c in calls]
                content = "\n".join([content, *shown]) if content else "\n".join(shown)
            if role == "tool" and t.get("name"):
                role = f"tool: {_str(t.get('name'))}"
            turns.append({"role": prefix + role, "content": content})
        else:
            turns.append({"role": "?", "content": _str(t)})
    return turns


def _context(summary: dict, examples: dict[str, list[dict]], token_lengths: dict) -> dict[str, Any]:
    inputs = _int(summary.get("inputs"))
    kept = _int(summary.get("kept"))
    rejected = _int(summary.get("rejected"))
    quarantined = _int(summary.get("quarantined"))
    arithmetic_ok = inputs == kept + rejected + quarantined
    ok = bool(summary.get("invariant_ok")) and arithmetic_ok
    rel = "=" if arithmetic_ok else "≠"
    invariant = {
        "ok": ok,
        "arithmetic_ok": arithmetic_ok,
        "text": f"inputs = kept + rejected + quarantined: {inputs:,} {rel} {kept:,} + {rejected:,} + {quarantined:,}",
        "mark": "✓" if ok else "✗",
        "note": ""
        if ok
        else (
            "the counts do not add up" if not arithmetic_ok else "the ledger check failed (a record rejected twice, or both kept and quarantined)"
        ),
    }

    # funnel: ingest (quarantine) first, then every stage in pipeline order
    stages = [s for s in (summary.get("stages") or []) if isinstance(s, dict)]
    funnel = [{"stage": INGEST_STAGE, "in": inputs, "rejected": quarantined, "out": inputs - quarantined}]
    for s in stages:
        n_in, n_rej = _int(s.get("in")), _int(s.get("rejected"))
        n_out = _int(s["out"]) if s.get("out") is not None else n_in - n_rej
        funnel.append({"stage": _str(s.get("name")), "in": n_in, "rejected": n_rej, "out": n_out})
    for row in funnel:
        row["out_pct_of_inputs"] = _pct(row["out"], inputs)
        row["rejected_pct_of_in"] = _pct(row["rejected"], row["in"])
        row["rejected_pct_of_inputs"] = _pct(row["rejected"], inputs)
    funnel_notes = []
    if funnel[-1]["out"] != kept:
        funnel_notes.append(f"the last stage leaves {funnel[-1]['out']:,} records but the summary says {kept:,} kept")
    stage_rejected = sum(r["rejected"] for r in funnel[1:])
    if stages and stage_rejected != rejected:
        funnel_notes.append(f"the stages reject {stage_rejected:,} records in all but the summary says {rejected:,} rejected")

    # reason counts, largest first
    reasons = []
    total_reasons = sum(_int(n) for s in stages for n in (s.get("reasons") or {}).values())
    for pos, s in enumerate(stages):
        for reason, n in (s.get("reasons") or {}).items():
            reasons.append(
                {
                    "stage": _str(s.get("name")),
                    "reason": _str(reason),
                    "count": _int(n),
                    "share": _pct(_int(n), total_reasons),
                    "pct_of_inputs": _pct(_int(n), inputs),
                    "_pos": pos,
                }
            )
    reasons.sort(key=lambda r: (-r["count"], r["_pos"], r["reason"]))

    valid = inputs - quarantined
    fixes = sorted(((_str(k), _int(v)) for k, v in (summary.get("fixes") or {}).items()), key=lambda kv: (-kv[1], kv[0]))
    qreasons = sorted(((_str(k), _int(v)) for k, v in (summary.get("quarantine_reasons") or {}).items()), key=lambda kv: (-kv[1], kv[0]))
    shapes = sorted(((_str(k), _int(v)) for k, v in (summary.get("shapes") or {}).items()), key=lambda kv: (-kv[1], kv[0]))
    kinds = [{"kind": _str(k), "records": _int(v.get("records")), "kept": _int(v.get("kept")),
              "shapes": ", ".join(_str(x) for x in v.get("shapes") or [])}
             for k, v in (summary.get("kinds") or {}).items() if isinstance(v, dict)]
    splits = [(_str(k), _int(v)) for k, v in (summary.get("splits") or {}).items()]
    files = []
    for f in summary.get("files") or []:
        if isinstance(f, dict):
            files.append({"path": _str(f.get("path")), "records": _int(f.get("records")), "quarantined": _int(f.get("quarantined"))})

    before = _lengths(token_lengths.get("before"))
    after = _lengths(token_lengths.get("after"))
    base = before if before.size else after
    clip = float(np.percentile(base, HIST_CLIP_PERCENTILE)) if base.size else 1.0
    clip = max(math.ceil(clip), 1.0)
    unit = _str(summary.get("unit")) or "tokens"
    lengths = {"before": _quantiles(before), "after": _quantiles(after)}

    # examples grouped by (stage, reason), in the order of the reason table
    groups: dict[tuple[str, str], list[dict]] = {}
    for key, rows in examples.items():
        if key == "quarantine":
            continue
        for r in rows or []:
            if not isinstance(r, dict):
                continue
            g = (_str(r.get("stage")), _str(r.get("reason")) or _str(key))
            groups.setdefault(g, []).append(_example(r))
    order = {(r["stage"], r["reason"]): i for i, r in enumerate(reasons)}
    counts = {(r["stage"], r["reason"]): r["count"] for r in reasons}
    example_groups = [
        {"stage": st, "reason": rs, "count": counts.get((st, rs)), "items": items}
        for (st, rs), items in sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    ]
    quarantine_examples = [
        {
            "source": f"{_oneline(q.get('source_file'), 200)}:{_fmt_int(q.get('source_line'))}",
            "field": _oneline(q.get("field"), 200),
            "error": _oneline(q.get("error")),
            "raw": _truncate(_visible(q.get("raw")).rstrip(), RAW_CHARS),
        }
        for q in (examples.get("quarantine") or [])
        if isinstance(q, dict)
    ]

    outputs = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else _str(k), x)
        else:
            outputs.append((prefix, _str(v)))

    walk("", summary.get("outputs") or {})

    return {
        "name": _str(summary.get("name")) or "run",
        "run_id": _str(summary.get("run_id")),
        "started": _str(summary.get("started")),
        "finished": _str(summary.get("finished")),
        "seconds": summary.get("seconds"),
        "tokenizer": _str(summary.get("tokenizer")) or None,
        "version": _str(summary.get("version")) or None,
        "unit": unit,
        "inputs": inputs,
        "kept": kept,
        "rejected": rejected,
        "quarantined": quarantined,
        "valid": valid,
        "invariant": invariant,
        "files": files,
        "shapes": [{"shape": k, "records": v, "share": _pct(v, valid)} for k, v in shapes],
        "kinds": kinds,
        "funnel": funnel,
        "funnel_notes": funnel_notes,
        "reasons": [{k: v for k, v in r.items() if not k.startswith("_")} for r in reasons],
        "fixes": [{"fix": k, "records": v, "share": _pct(v, valid)} for k, v in fixes],
        "quarantine_reasons": [{"error": k, "count": v, "share": _pct(v, quarantined)} for k, v in qreasons],
        "splits": [{"split": k, "records": v, "share": _pct(v, kept)} for k, v in splits],
        "lengths": lengths,
        "clip": clip,
        "example_groups": example_groups,
        "quarantine_examples": quarantine_examples,
        "outputs": outputs,
        "_before": before,
        "_after": after,
    }


def _example(r: dict) -> dict[str, Any]:
    return {
        "uid": _str(int(r["uid"])) if isinstance(r.get("uid"), (int, np.integer)) else (_oneline(r.get("uid"), 40) or "–"),
        "id": _oneline(r.get("id"), 80),
        "source": f"{_oneline(r.get('source_file'), 200)}:{_fmt_int(r.get('source_line'))}",
        "detail": _oneline(r.get("detail")),
        "duplicate_of": _oneline(r.get("duplicate_of"), 80),
        "turns": [
            {"role": _oneline(t["role"], 40), "content": _truncate(_visible(t["content"]), TURN_CHARS)}
            for t in _messages(r.get("messages"), "" if r.get("label") is not False else "undesirable ")
            + _messages(r.get("rejected"), "rejected ")
        ],
    }


# ------------------------------------------------------------------------------------------------------------
# charts (object-oriented matplotlib on the Agg canvas: no pyplot, no global figure state to leak)
# ------------------------------------------------------------------------------------------------------------


def _new_figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    fig.savefig(path, format="png", metadata={"Software": None})
    fig.clear()


def _funnel_png(funnel: list[dict], path: Path) -> None:
    n = len(funnel)
    fig = _new_figure(9, 1.0 + 0.45 * max(n, 2))
    ax = fig.add_subplot()
    labels = [r["stage"] if len(r["stage"]) <= 32 else r["stage"][:31] + "…" for r in funnel]
    y = np.arange(n)
    outs = np.array([r["out"] for r in funnel], dtype=float)
    rej = np.array([r["rejected"] for r in funnel], dtype=float)
    ax.barh(y, outs, color="#3b7dd8", label="left after stage")
    ax.barh(y, rej, left=outs, color="#e07b39", label="removed by stage")
    top = float(max((r["in"] for r in funnel), default=0) or 1)
    for i, r in enumerate(funnel):
        txt = f"{r['out']:,}  (−{r['rejected']:,})" if r["rejected"] else f"{r['out']:,}"
        ax.text(r["in"] + top * 0.01, i, txt, va="center", fontsize=9)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.3)
    ax.set_xlabel("records")
    ax.set_title("Records through the pipeline")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)


def _lengths_png(before: np.ndarray, after: np.ndarray, unit: str, clip: float, path: Path) -> None:
    fig = _new_figure(9, 6)
    axes = fig.subplots(2, 1, sharex=True)
    bins = np.linspace(0.0, clip, 61)
    series = (("before (all ingested records)", before, "#8a8a8a"), ("after (kept records)", after, "#3b7dd8"))
    for ax, (label, v, color) in zip(axes, series):
        ax.spines[["top", "right"]].set_visible(False)
        if v.size == 0:
            ax.text(0.5, 0.5, "no records", transform=ax.transAxes, ha="center", va="center", color="#666")
            ax.set_title(f"{label}: 0 records", fontsize=10, loc="left")
            continue
        if v is after and before.size:
            ax.hist(np.clip(before, 0, clip), bins=bins, histtype="step", color="#8a8a8a", log=True, label="before")
        ax.hist(np.clip(v, 0, clip), bins=bins, color=color, alpha=0.85, log=True, label=label.split(" ")[0])
        med, p95 = np.percentile(v, [50, 95])
        ax.axvline(min(med, clip), color="black", lw=1.2)
        ax.axvline(min(p95, clip), color="black", lw=1.2, ls="--")
        over = int((v > clip).sum())
        box = f"median {_fmt_num(float(med))}  (solid)\np95 {_fmt_num(float(p95))}  (dashed)\nmax {_fmt_num(float(v.max()))}"
        if over:
            box += f"\n{over:,} above {_fmt_num(clip)}: in last bin"
        ax.text(0.99, 0.95, box, transform=ax.transAxes, ha="right", va="top", fontsize=8.5,
                bbox={"boxstyle": "round", "fc": "white", "ec": "#bbbbbb"})
        ax.set_title(f"{label}: {v.size:,} records", fontsize=10, loc="left")
        ax.set_ylabel("records (log)")
        if v is after and before.size:
            ax.legend(loc="upper center", fontsize=8, frameon=False)
    axes[-1].set_xlabel(f"length ({unit}); clipped at p{HIST_CLIP_PERCENTILE:g} of 'before' = {_fmt_num(clip)}")
    axes[-1].set_xlim(0, clip)
    _save(fig, path)


def _similarity_png(similarities: list[dict], path: Path) -> None:
    n = len(similarities)
    fig = _new_figure(9, 2.6 * n + 0.4)
    axes = np.atleast_1d(fig.subplots(n, 1))
    for ax, sim in zip(axes, similarities):
        v, t = sim["_values"], sim["threshold"]
        lo = float(min(v.min(), t if t is not None else 1.0)) if v.size else 0.0
        ax.hist(v, bins=np.linspace(max(0.0, lo - 0.005), 1.0 + 1e-9, 61), color="#3b7dd8", log=True)
        if t is not None:
            ax.axvline(t, color="#c00000", lw=1.4, label=f"threshold {t:g}")
            ax.legend(loc="upper left", fontsize=8, frameon=False)
        ax.set_title(f"{sim['stage']}: {v.size:,} scored pairs", fontsize=10, loc="left")
        ax.set_ylabel("pairs (log)")
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1].set_xlabel("similarity of a candidate pair (pairs at or above the threshold are merged)")
    _save(fig, path)


def _review_context(summary: dict, review: dict) -> dict[str, Any]:
    """The report's duplicate-cluster, similarity and contamination sections."""
    counts = summary.get("clusters") or {}
    clusters = review.get("clusters") or {}
    sims = review.get("similarities") or {}
    dedup = []
    for stage in sorted(set(counts) | set(clusters) | set(sims)):
        c = counts.get(stage) or {}
        top = []
        for cl in clusters.get(stage) or []:
            members = []
            for m in cl.get("members") or []:
                e = _example(m)
                e["similarity"] = _fmt_sim(m.get("similarity"))
                e["is_rep"] = m.get("uid") == m.get("rep_uid")
                members.append(e)
            top.append({"k": _int(cl.get("k")), "size": _int(cl.get("size")), "members": members, "more": max(_int(cl.get("size")) - len(members), 0)})
        dedup.append(
            {
                "stage": _str(stage),
                "clusters": _int(c.get("clusters")),
                "members": _int(c.get("members")),
                "largest": _int(c.get("largest")),
                "top": top,
            }
        )
    similarities, bins = [], []
    for stage, info in sims.items():
        v = np.asarray(info.get("values") if info.get("values") is not None else [], dtype=float)
        v = v[np.isfinite(v)]
        t = info.get("threshold")
        t = float(t) if isinstance(t, (int, float)) else None
        similarities.append({"stage": _str(stage), "threshold": t, "_values": v})
        if v.size:
            start = math.floor((t if t is not None else float(v.min())) / SIMILARITY_BINS - 4) * SIMILARITY_BINS
            edges = np.round(np.arange(max(start, 0.0), 1.0 + 1e-9, SIMILARITY_BINS), 4)
            hist, _ = np.histogram(v, bins=np.append(edges, 1.0 + 1e-9) if edges[-1] < 1.0 else edges)
            for lo, n in zip(edges, hist):
                hi = min(lo + SIMILARITY_BINS, 1.0)
                merged = "yes" if t is not None and lo >= t else ("partly" if t is not None and hi > t else "no")
                bins.append({"stage": _str(stage), "range": f"{lo:.2f}–{hi:.2f}", "pairs": int(n), "merged": merged})
    contamination = [
        {"source": f"{_oneline(r.get('source_file'), 200)}:{_fmt_int(r.get('source_line'))}", "detail": _oneline(r.get("detail"), 600)}
        for r in review.get("contamination") or []
        if isinstance(r, dict)
    ]
    links = sum(_int(v) for v in (summary.get("split_links") or {}).values())
    stage_stats = [
        {"stage": _str(stage), "text": ", ".join(f"{_str(k).replace('_', ' ')}: {_fmt_int(v) if isinstance(v, int) else _str(v)}" for k, v in st.items())}
        for stage, st in sorted((summary.get("stage_stats") or {}).items()) if isinstance(st, dict) and st
    ]
    return {"dedup": dedup, "similarity_bins": bins, "contamination": contamination, "leakage": _leakage_context(summary.get("leakage"), links),
            "stage_stats": stage_stats,
            "_similarities": [s for s in similarities if s["_values"].size]}


def _leakage_context(leak: Any, links: int = 0) -> dict[str, Any] | None:
    """The split-leakage audit (curate.leakage) as display strings, with the number of split links (pairs
    kept both but in one split); None when the run has no audit."""
    if not isinstance(leak, dict) or "measure" not in leak:
        return None
    levels = leak.get("pairs_at_or_above") or {}
    return {
        "measure": _str(leak.get("measure")),
        "max": _fmt_sim(leak.get("max_similarity")) if leak.get("max_similarity") is not None else None,
        "records": _int(leak.get("records")),
        "pairs": _int(leak.get("pairs_scored")),
        "floor": _fmt_sim(leak.get("floor")),
        "recall": _pct_str(leak.get("search_recall_at_floor")),
        "links": links,
        "levels": [{"level": _fmt_sim(k), "pairs": _int(v)} for k, v in levels.items()],
        "closest": [
            {"a": _oneline(c.get("id_a"), 40), "b": _oneline(c.get("id_b"), 40), "splits": f"{_str(c.get('split_a'))} / {_str(c.get('split_b'))}",
             "similarity": _fmt_sim(c.get("similarity"))}
            for c in leak.get("closest") or [] if isinstance(c, dict)
        ],
    }


def _pct_str(x: Any) -> str:
    try:
        return f"{float(x):.0%}"
    except (TypeError, ValueError):
        return "–"


def leakage_sentence(lk: dict[str, Any]) -> str:
    """One or two sentences on the split-leakage audit, for the Markdown and HTML reports."""
    n = lk.get("links") or 0
    linked = (f" {n:,} pair{'s' if n != 1 else ''} of records share{'s' if n == 1 else ''} a passage but not a task: both records "
              "are kept, in one split.") if n else ""
    return _leakage_first(lk) + linked


def _leakage_first(lk: dict[str, Any]) -> str:
    if lk["max"] is None or float(lk["max"]) < float(lk["floor"]):
        largest = f"; the closest pair scored is at {lk['max']}" if lk["max"] is not None else ""
        return (f"No two kept records in different splits reach {lk['floor']} ({lk['measure']}{largest}; the search finds "
                f"a pair at {lk['floor']} with probability {lk['recall']}, higher similarities more surely).")
    return (f"Largest similarity left between splits: **{lk['max']}** ({lk['measure']}, scored exactly on {lk['pairs']:,} "
            f"candidate pairs across splits among {lk['records']:,} kept records; the search finds a pair at {lk['floor']} "
            f"with probability {lk['recall']}, higher similarities more surely).")


# ------------------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------------------


def _longest_backtick_run(s: str) -> int:
    return max((len(m) for m in re.findall(r"`+", s)), default=0)


def _code(s: Any, table: bool = False) -> str:
    """An inline code span that the text cannot close; in a table, pipes escaped (GFM)."""
    s = " ".join(_visible(s).split())
    if not s:
        return ""
    fence = "`" * (_longest_backtick_run(s) + 1)
    if table:
        s = s.replace("|", "\\|")
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _fenced(text: str) -> str:
    """A fenced code block that the text cannot close: the fence is longer than any backtick run inside."""
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return f"{fence}text\n{text}\n{fence}"


def _md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _chat_text(turns: list[dict]) -> str:
    if not turns:
        return "(no messages)"
    return "\n\n".join(f"[{t['role']}]\n{t['content']}" for t in turns)


def _markdown(c: dict) -> str:
    L: list[str] = []
    inv = c["invariant"]
    L.append(f"# Curation report: {_code(c['name'])}")
    L.append("")
    meta = [f"run {_code(c['run_id'])}" if c["run_id"] else "", f"started {_code(c['started'])}" if c["started"] else ""]
    if c["finished"]:
        meta.append(f"finished {_code(c['finished'])}")
    if isinstance(c["seconds"], (int, float)):
        meta.append(f"{c['seconds']:.1f} s")
    meta.append(f"lengths in {c['unit']}" + (f" ({_code(c['tokenizer'])})" if c["tokenizer"] else ""))
    L.append(" · ".join(m for m in meta if m))
    L.append("")
    if inv["ok"]:
        L.append(f"**{inv['text']} {inv['mark']}**")
    else:
        L.append(f"**{inv['text']} {inv['mark']} INVARIANT BROKEN: {inv['note']}**")
    L.append("")
    L.append(f"Kept **{c['kept']:,}** ({_pct(c['kept'], c['inputs'])}), rejected **{c['rejected']:,}** "
             f"({_pct(c['rejected'], c['inputs'])}), quarantined **{c['quarantined']:,}** ({_pct(c['quarantined'], c['inputs'])}).")
    L.append("")

    L.append("## Inputs")
    L.append("")
    if c["files"]:
        L += _md_table(["file", "records", "quarantined"], [[_code(f["path"], True), f"{f['records']:,}", f"{f['quarantined']:,}"] for f in c["files"]])
        L.append("")
    if c["shapes"]:
        L += _md_table(["shape", "records", "share"], [[_code(s["shape"], True), f"{s['records']:,}", s["share"]] for s in c["shapes"]])
        L.append("")
    if len(c["kinds"]) > 1 or any(k["kind"] != "sft" for k in c["kinds"]):
        L += _md_table(["kind", "records", "kept", "shapes"],
                       [[_code(k["kind"], True), f"{k['records']:,}", f"{k['kept']:,}", k["shapes"]] for k in c["kinds"]], "lrrl")
        L.append("")

    L.append("## Funnel")
    L.append("")
    L += _md_table(
        ["stage", "in", "rejected", "out", "out % of inputs", "rejected % of stage in"],
        [[_code(r["stage"], True), f"{r['in']:,}", f"{r['rejected']:,}", f"{r['out']:,}", r["out_pct_of_inputs"], r["rejected_pct_of_in"]]
         for r in c["funnel"]],
    )
    L.append("")
    for note in c["funnel_notes"]:
        L.append(f"**Warning: {note}.**")
        L.append("")
    L.append("![Funnel: records left after each stage](funnel.png)")
    L.append("")

    L.append("## Rejections by reason")
    L.append("")
    if c["reasons"]:
        L += _md_table(
            ["stage", "reason", "count", "share of rejections", "% of inputs"],
            [[_code(r["stage"], True), _code(r["reason"], True), f"{r['count']:,}", r["share"], r["pct_of_inputs"]] for r in c["reasons"]],
            "llrrr",
        )
    else:
        L.append("No record was rejected.")
    L.append("")

    L.append("## Fixes applied")
    L.append("")
    if c["fixes"]:
        L += _md_table(["fix", "records", "share of records"], [[_code(f["fix"], True), f"{f['records']:,}", f["share"]] for f in c["fixes"]])
    else:
        L.append("No normalization changed a record.")
    L.append("")

    L.append("## Quarantine")
    L.append("")
    if c["quarantine_reasons"]:
        L += _md_table(["error", "count", "share"], [[_code(q["error"], True), f"{q['count']:,}", q["share"]] for q in c["quarantine_reasons"]])
    else:
        L.append("Nothing was quarantined.")
    L.append("")

    L.append(f"## Lengths ({c['unit']})")
    L.append("")
    cols = ["count", "mean", "min"] + [k for k, _ in QUANTILES] + ["max"]
    L += _md_table(["records"] + cols, [[k] + [_fmt_num(c["lengths"][k][q]) for q in cols] for k in ("before", "after")])
    L.append("")
    L.append("![Length histograms before and after](token_lengths.png)")
    L.append("")

    L.append("## Splits")
    L.append("")
    if c["splits"]:
        L += _md_table(["split", "records", "share of kept"], [[_code(s["split"], True), f"{s['records']:,}", s["share"]] for s in c["splits"]])
    else:
        L.append("No splits recorded.")
    L.append("")
    if c["leakage"]:
        lk = c["leakage"]
        L.append(leakage_sentence(lk))
        L.append("")
        if lk["closest"]:
            L += _md_table(["record", "record", "splits", "similarity"],
                           [[_code(x["a"], True), _code(x["b"], True), x["splits"], x["similarity"]] for x in lk["closest"]], "lllr")
            L.append("")

    if c["dedup"]:
        L.append("## Duplicate clusters")
        L.append("")
        L += _md_table(
            ["stage", "clusters", "records in clusters", "largest"],
            [[_code(d["stage"], True), f"{d['clusters']:,}", f"{d['members']:,}", f"{d['largest']:,}"] for d in c["dedup"]],
            "lrrr",
        )
        L.append("")
        L.append("Splits are assigned per cluster: members of one cluster never straddle train/validation/test.")
        L.append("")
        for st in c["stage_stats"]:
            L.append(f"- {_code(st['stage'], True)}: {st['text']}")
        if c["stage_stats"]:
            L.append("")
        if c["_similarities"]:
            L.append("### Similarity of candidate pairs near the threshold")
            L.append("")
            L += _md_table(["stage", "similarity", "pairs", "merged"],
                           [[_code(b["stage"], True), b["range"], f"{b['pairs']:,}", b["merged"]] for b in c["similarity_bins"]], "llrl")
            L.append("")
            L.append(f"![Similarity of candidate pairs]({SIMILARITY_PNG})")
            L.append("")
        for d in c["dedup"]:
            for cl in d["top"]:
                L.append(f"### {_code(d['stage'])}: cluster {cl['k']} ({cl['size']:,} records)")
                L.append("")
                for e in cl["members"]:
                    head = "**kept representative**" if e["is_rep"] else f"similarity to representative **{e['similarity']}**"
                    L.append(f"{head} · uid {e['uid']} · {_code(e['source'])}")
                    L.append("")
                    L.append(_fenced(_chat_text(e["turns"])))
                    L.append("")
                if cl["more"]:
                    L.append(f"… and {cl['more']:,} more member{'' if cl['more'] == 1 else 's'}.")
                    L.append("")

    if c["contamination"]:
        L.append("## Contamination")
        L.append("")
        L += _md_table(["training record", "eval item and matched span"],
                       [[_code(r["source"], True), _code(r["detail"], True)] for r in c["contamination"]], "ll")
        L.append("")

    L.append("## Examples of rejections")
    L.append("")
    if not c["example_groups"]:
        L.append("No examples.")
        L.append("")
    for g in c["example_groups"]:
        count = f" ({g['count']:,} record{'' if g['count'] == 1 else 's'})" if g["count"] is not None else ""
        L.append(f"### {_code(g['stage'])} / {_code(g['reason'])}{count}")
        L.append("")
        for e in g["items"]:
            parts = [f"**uid {e['uid']}**", _code(e["source"])]
            if e["id"]:
                parts.append(f"id {_code(e['id'])}")
            if e["duplicate_of"]:
                parts.append(f"duplicate of {_code(e['duplicate_of'])}")
            L.append(" · ".join(parts))
            if e["detail"]:
                L.append("")
                L.append(f"detail: {_code(e['detail'])}")
            L.append("")
            L.append(_fenced(_chat_text(e["turns"])))
            L.append("")

    L.append("## Quarantine examples")
    L.append("")
    if not c["quarantine_examples"]:
        L.append("None.")
        L.append("")
    for q in c["quarantine_examples"]:
        parts = [_code(q["source"]), _code(q["error"])]
        if q["field"]:
            parts.append(f"field {_code(q['field'])}")
        L.append(" · ".join(parts))
        L.append("")
        L.append(_fenced(q["raw"] or "(empty)"))
        L.append("")

    if c["outputs"]:
        L.append("## Outputs")
        L.append("")
        L += _md_table(["output", "path"], [[_code(k, True), _code(v, True)] for k, v in c["outputs"]], "ll")
        L.append("")
    return "\n".join(L)


# ------------------------------------------------------------------------------------------------------------
# HTML
# ------------------------------------------------------------------------------------------------------------

# No script, no external URL, nothing marked |safe: every {{ }} is autoescaped. A line that starts with {{- or {%-
# continues the one above (the minus strips the line break): long lines are wrapped without changing the page.
_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Curation report: {{ c.name }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; margin: 0 auto; max-width: 1100px; padding: 1.5em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin: 1.2em 0 .4em; }
.meta { color: #555; } code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
table { border-collapse: collapse; margin: .6em 0; } th, td { padding: .25em .7em; border-bottom: 1px solid #e5e5e5; text-align: left; vertical-align: top; }
th { background: #f6f6f6; } td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.inv { font-size: 1.1em; padding: .5em .8em; border-radius: 6px; display: inline-block; }
.inv.good { background: #eaf7ea; color: #1d6b2a; } .inv.bad { background: #fdecec; color: #c00000; font-weight: bold; border: 2px solid #c00000; }
.warn { color: #c00000; font-weight: bold; }
img.chart { max-width: 100%; border: 1px solid #eee; }
.example { border: 1px solid #ddd; border-radius: 6px; margin: .7em 0; padding: .5em .7em; background: #fcfcfc; }
.example .head { color: #444; font-size: 12.5px; margin-bottom: .4em; word-break: break-all; }
.turn { margin: .35em 0; padding: .35em .6em; border-radius: 6px; border-left: 4px solid #bbb; background: #fff; }
.turn.user { border-left-color: #3b7dd8; } .turn.assistant { border-left-color: #2e9d5b; } .turn.system { border-left-color: #a16bd1; }
.role { font-size: 11px; font-weight: bold; text-transform: uppercase; letter-spacing: .05em; color: #666; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: .2em 0; }
details > summary { cursor: pointer; font-weight: 600; margin: .6em 0; }
.cluster { display: grid; grid-auto-flow: column; grid-auto-columns: minmax(260px, 1fr); gap: .6em; overflow-x: auto; }
.cluster .example { margin: 0; } .example.rep { border: 2px solid #2e9d5b; background: #f3fbf5; }
</style>
</head>
<body>
<h1>Curation report: {{ c.name }}</h1>
<p class="meta">
{% if c.run_id %}run <code>{{ c.run_id }}</code>{% endif %}
{% if c.started %} · started {{ c.started }}{% endif %}
{% if c.finished %} · finished {{ c.finished }}{% endif %}
{% if c.seconds is number %} · {{ '%.1f' % c.seconds }} s{% endif %}
 · lengths in {{ c.unit }}{% if c.tokenizer %} ({{ c.tokenizer }}){% endif %}
{% if c.version %} · curate {{ c.version }}{% endif %}
</p>
<p class="inv {{ 'good' if c.invariant.ok else 'bad' }}" id="invariant">{{ c.invariant.text }} <strong>{{ c.invariant.mark }}</strong>
{%- if not c.invariant.ok %} INVARIANT BROKEN: {{ c.invariant.note }}{% endif %}</p>
<p>Kept <b>{{ fi(c.kept) }}</b> ({{ pct(c.kept, c.inputs) }}), rejected <b>{{ fi(c.rejected) }}</b> ({{ pct(c.rejected, c.inputs) }}),
quarantined <b>{{ fi(c.quarantined) }}</b> ({{ pct(c.quarantined, c.inputs) }}).</p>

<h2 id="inputs">Inputs</h2>
{% if c.files %}
<table><tr><th>file</th><th class="n">records</th><th class="n">quarantined</th></tr>
{% for f in c.files %}<tr><td class="mono">{{ f.path }}</td><td class="n">{{ fi(f.records) }}</td><td class="n">{{ fi(f.quarantined) }}</td></tr>
{% endfor %}</table>
{% endif %}
{% if c.shapes %}
<table><tr><th>shape</th><th class="n">records</th><th class="n">share</th></tr>
{% for s in c.shapes %}<tr><td>{{ s.shape }}</td><td class="n">{{ fi(s.records) }}</td><td class="n">{{ s.share }}</td></tr>
{% endfor %}</table>
{% endif %}
{% if c.kinds|length > 1 or (c.kinds and c.kinds[0].kind != 'sft') %}
<table id="kinds"><tr><th>kind</th><th class="n">records</th><th class="n">kept</th><th>shapes</th></tr>
{% for k in c.kinds %}<tr><td>{{ k.kind }}</td><td class="n">{{ fi(k.records) }}</td><td class="n">{{ fi(k.kept) }}</td><td>{{ k.shapes }}</td></tr>
{% endfor %}</table>
{% endif %}

<h2 id="funnel">Funnel</h2>
<table id="funnel-table"><tr><th>stage</th><th class="n">in</th><th class="n">rejected</th><th class="n">out</th>
{{- '' }}<th class="n">out % of inputs</th><th class="n">rejected % of stage in</th></tr>
{% for r in c.funnel %}<tr><td class="mono">{{ r.stage }}</td><td class="n">{{ fi(r['in']) }}</td><td class="n">{{ fi(r.rejected) }}</td>
{{- '' }}<td class="n">{{ fi(r.out) }}</td><td class="n">{{ r.out_pct_of_inputs }}</td><td class="n">{{ r.rejected_pct_of_in }}</td></tr>
{% endfor %}</table>
{% for note in c.funnel_notes %}<p class="warn">Warning: {{ note }}.</p>{% endfor %}
<img class="chart" alt="Funnel: records left after each stage" src="data:image/png;base64,{{ img.funnel }}">

<h2 id="reasons">Rejections by reason</h2>
{% if c.reasons %}
<table><tr><th>stage</th><th>reason</th><th class="n">count</th><th class="n">share of rejections</th><th class="n">% of inputs</th></tr>
{% for r in c.reasons %}<tr><td class="mono">{{ r.stage }}</td><td class="mono">{{ r.reason }}</td><td class="n">{{ fi(r.count) }}</td>
{{- '' }}<td class="n">{{ r.share }}</td><td class="n">{{ r.pct_of_inputs }}</td></tr>
{% endfor %}</table>
{% else %}<p>No record was rejected.</p>{% endif %}

<h2 id="fixes">Fixes applied</h2>
{% if c.fixes %}
<table><tr><th>fix</th><th class="n">records</th><th class="n">share of records</th></tr>
{% for f in c.fixes %}<tr><td class="mono">{{ f.fix }}</td><td class="n">{{ fi(f.records) }}</td><td class="n">{{ f.share }}</td></tr>
{% endfor %}</table>
{% else %}<p>No normalization changed a record.</p>{% endif %}

<h2 id="quarantine">Quarantine</h2>
{% if c.quarantine_reasons %}
<table><tr><th>error</th><th class="n">count</th><th class="n">share</th></tr>
{% for q in c.quarantine_reasons %}<tr><td>{{ q.error }}</td><td class="n">{{ fi(q.count) }}</td><td class="n">{{ q.share }}</td></tr>
{% endfor %}</table>
{% else %}<p>Nothing was quarantined.</p>{% endif %}

<h2 id="lengths">Lengths ({{ c.unit }})</h2>
<table><tr><th>records</th>{% for q in qcols %}<th class="n">{{ q }}</th>{% endfor %}</tr>
{% for k in ['before', 'after'] %}<tr><td>{{ k }}</td>{% for q in qcols %}<td class="n">{{ fn(c.lengths[k][q]) }}</td>{% endfor %}</tr>
{% endfor %}</table>
<img class="chart" alt="Length histograms before and after" src="data:image/png;base64,{{ img.histogram }}">

<h2 id="splits">Splits</h2>
{% if c.splits %}
<table><tr><th>split</th><th class="n">records</th><th class="n">share of kept</th></tr>
{% for s in c.splits %}<tr><td>{{ s.split }}</td><td class="n">{{ fi(s.records) }}</td><td class="n">{{ s.share }}</td></tr>
{% endfor %}</table>
{% else %}<p>No splits recorded.</p>{% endif %}
{% if c.leakage %}<p>{{ leakage_sentence(c.leakage) | replace("**", "") }}</p>
{% if c.leakage.closest %}<table><tr><th>record</th><th>record</th><th>splits</th><th class="n">similarity</th></tr>
{% for x in c.leakage.closest %}<tr><td class="mono">{{ x.a }}</td><td class="mono">{{ x.b }}</td>
{{- '' }}<td>{{ x.splits }}</td><td class="n">{{ x.similarity }}</td></tr>
{% endfor %}</table>{% endif %}{% endif %}

{% if c.dedup %}
<h2 id="duplicates">Duplicate clusters</h2>
<table><tr><th>stage</th><th class="n">clusters</th><th class="n">records in clusters</th><th class="n">largest</th></tr>
{% for d in c.dedup %}<tr><td class="mono">{{ d.stage }}</td><td class="n">{{ fi(d.clusters) }}</td>
{{- '' }}<td class="n">{{ fi(d.members) }}</td><td class="n">{{ fi(d.largest) }}</td></tr>
{% endfor %}</table>
<p>Splits are assigned per cluster: members of one cluster never straddle train/validation/test.</p>
{% if c.stage_stats %}<ul>{% for st in c.stage_stats %}<li><span class="mono">{{ st.stage }}</span>: {{ st.text }}</li>{% endfor %}</ul>{% endif %}
{% if img.get('similarity') %}
<h3>Similarity of candidate pairs near the threshold</h3>
<table><tr><th>stage</th><th>similarity</th><th class="n">pairs</th><th>merged</th></tr>
{% for b in c.similarity_bins %}<tr><td class="mono">{{ b.stage }}</td><td>{{ b.range }}</td><td class="n">{{ fi(b.pairs) }}</td><td>{{ b.merged }}</td></tr>
{% endfor %}</table>
<img class="chart" alt="Similarity of candidate pairs" src="data:image/png;base64,{{ img.similarity }}">
{% endif %}
{% for d in c.dedup %}{% for cl in d.top %}
<details{% if loop.index <= 2 %} open{% endif %}>
<summary><span class="mono">{{ d.stage }}</span>: cluster {{ cl.k }} ({{ fi(cl.size) }} records)</summary>
<div class="cluster">
{% for e in cl.members %}<div class="example {{ 'rep' if e.is_rep else '' }}">
<div class="head">{% if e.is_rep %}<b>kept representative</b>{% else %}similarity <b>{{ e.similarity }}</b>{% endif %}
{{- ' · uid ' }}{{ e.uid }} · <span class="mono">{{ e.source }}</span></div>
{% for t in e.turns %}<div class="turn {{ t.role if t.role in roles else 'other' }}"><div class="role">{{ t.role }}</div><pre>{{ t.content }}</pre></div>
{% else %}<p>(no messages)</p>{% endfor %}
</div>{% endfor %}
</div>
{% if cl.more %}<p>… and {{ fi(cl.more) }} more member{{ '' if cl.more == 1 else 's' }}.</p>{% endif %}
</details>
{% endfor %}{% endfor %}
{% endif %}

{% if c.contamination %}
<h2 id="contamination">Contamination</h2>
<table><tr><th>training record</th><th>eval item and matched span</th></tr>
{% for r in c.contamination %}<tr><td class="mono">{{ r.source }}</td><td>{{ r.detail }}</td></tr>
{% endfor %}</table>
{% endif %}

<h2 id="examples">Examples of rejections</h2>
{% if not c.example_groups %}<p>No examples.</p>{% endif %}
{% for g in c.example_groups %}
<details{% if loop.index <= 3 %} open{% endif %}>
<summary><span class="mono">{{ g.stage }}</span> / <span class="mono">{{ g.reason }}</span>
{%- if g.count is not none %} ({{ fi(g.count) }} record{{ '' if g.count == 1 else 's' }}){% endif %}</summary>
{% for e in g["items"] %}
<div class="example">
<div class="head">uid {{ e.uid }} · <span class="mono">{{ e.source }}</span>{% if e.id %} · id <span class="mono">{{ e.id }}</span>{% endif %}
{%- if e.duplicate_of %} · duplicate of <span class="mono">{{ e.duplicate_of }}</span>{% endif %}
{%- if e.detail %}<br>detail: <span class="mono">{{ e.detail }}</span>{% endif %}</div>
{% for t in e.turns %}<div class="turn {{ t.role if t.role in roles else 'other' }}"><div class="role">{{ t.role }}</div><pre>{{ t.content }}</pre></div>
{% else %}<p>(no messages)</p>{% endfor %}
</div>
{% endfor %}
</details>
{% endfor %}

<h2 id="quarantine-examples">Quarantine examples</h2>
{% if not c.quarantine_examples %}<p>None.</p>{% endif %}
{% for q in c.quarantine_examples %}
<div class="example"><div class="head"><span class="mono">{{ q.source }}</span> · {{ q.error }}
{%- if q.field %} · field <span class="mono">{{ q.field }}</span>{% endif %}</div>
<pre>{{ q.raw if q.raw else '(empty)' }}</pre></div>
{% endfor %}

{% if c.outputs %}
<h2 id="outputs">Outputs</h2>
<table><tr><th>output</th><th>path (relative to the run folder)</th></tr>
{% for k, v in c.outputs %}<tr><td class="mono">{{ k }}</td><td class="mono">{{ v }}</td></tr>
{% endfor %}</table>
{% endif %}
</body>
</html>
"""


def _html(c: dict, images: dict[str, str]) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    tmpl = env.from_string(_HTML)
    return tmpl.render(
        c=c,
        img=images,
        qcols=["count", "mean", "min"] + [k for k, _ in QUANTILES] + ["max"],
        roles=("system", "user", "assistant"),
        fi=_fmt_int,
        fn=_fmt_num,
        pct=_pct,
        leakage_sentence=leakage_sentence,
    )


# ------------------------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------------------------


def _jsonable(x: Any, limit: int | None = None) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN to null, strings valid UTF-8 (and capped at ``limit``)."""
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, (str, bytes)):
        s = _str(x)
        return _truncate(s, limit) if limit else s
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, (datetime, date)):
        return x.isoformat()
    if isinstance(x, dict):
        return {_str(k): _jsonable(v, limit) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, np.ndarray)):
        return [_jsonable(v, limit) for v in x]
    if hasattr(x, "to_list"):  # polars/pandas series
        return [_jsonable(v, limit) for v in x.to_list()]
    return _str(x)


def _json_report(c: dict, summary: dict, examples: dict) -> dict[str, Any]:
    return {
        "report_version": 1,
        "summary": _jsonable(summary),
        "invariant": c["invariant"],
        "funnel": c["funnel"],
        "reasons": c["reasons"],
        "quarantine_reasons": c["quarantine_reasons"],
        "fixes": c["fixes"],
        "lengths": {
            "unit": c["unit"],
            "tokenizer": c["tokenizer"],
            "quantiles": c["lengths"],
            "histogram_clip": c["clip"],
        },
        # the examples as the pipeline handed them over (reason -> rows; "quarantine" -> rows), strings capped
        "examples": _jsonable(examples, JSON_TURN_CHARS),
        "duplicates": [{k: v for k, v in d.items()} for d in c["dedup"]],
        "split_leakage": c["leakage"],
        "stage_stats": c["stage_stats"],
        "similarity_bins": c["similarity_bins"],
        "contamination": c["contamination"],
        "files": {k: v for k, v in REPORT_FILES.items()},
    }
