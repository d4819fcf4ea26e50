"""`evalsuite run`: generate for every task of a suite, score with the registered metrics, write the results.

Outputs in ``out_dir``:
- ``examples.parquet``: one row per example: task, source (file:line), prompt (JSON messages), reference,
  output, every per-example metric value (``scores``, JSON) and what metrics say beyond a score
  (``annotations``, JSON: the judge's scores, rationales and raw reply);
- ``results.json``: per task and metric key the headline value and its details (sacrebleu signature, token
  counts...), plus what a comparison must hold equal: the model and adapter, the generation settings, the
  chat template's hash and each task's prompts hash;
- with a workspace: a ``runs`` row (kind 'eval', summary = the headline values) and the examples in
  ``eval_examples``, for the review app and for ``evalsuite compare`` across runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from evalsuite.suite import SuiteConfig, TaskConfig


def task_examples(suite: SuiteConfig, task: TaskConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(examples, skipped): each record's turns before its last assistant turn (the prompt) and that turn's
    text (the reference); records without an assistant turn, or unreadable, are skipped with a reason."""
    from chat.conversations import read_conversations

    convs, bad = read_conversations(suite.resolve(task.path), task.shape, task.mapping, task.limit)
    examples, skipped = [], [{"where": b["where"], "reason": b["reason"]} for b in bad]
    for where, messages in convs:
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if not last:  # None, or an assistant turn with nothing before it to answer
            skipped.append({"where": where, "reason": "no assistant turn after a prompt"})
            continue
        examples.append({"source": where, "prompt": messages[:last], "reference": messages[last]["content"]})
    return examples, skipped


RESULTS_FORMAT = 2  # 2: per-example ``stats`` and each key's producing ``metric``; what compare reads


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def run_suite(suite: SuiteConfig, model: str = "embedded", adapter: str | None = None, out_dir: str | Path | None = None,
              workspace: str | Path | None = None, device: str = "auto") -> dict[str, Any]:
    """Run every task; returns the results dict written to ``out_dir/results.json``."""
    import polars as pl

    from chat.generate import generate
    from chat.models import load_model
    from evalsuite.metrics import get_metric

    net, tok, desc = load_model(model, adapter, device)
    rows: list[dict[str, Any]] = []
    tasks: dict[str, Any] = {}
    for task in suite.tasks:
        if task.kind != "generate":
            task_rows, tasks[task.name] = (_text_task if task.kind == "text" else _probe_task)(suite, task, net, tok)
            rows += task_rows
            continue
        examples, skipped = task_examples(suite, task)
        if not examples:
            raise ValueError(f"task {task.name}: no example with a prompt and a reference in {task.path} ({len(skipped)} skipped)")
        gen = task.generation or suite.generation
        prompts = [e["prompt"] for e in examples]
        references = [e["reference"] for e in examples]
        outputs = generate(net, tok, prompts, max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size,
                           sample=gen.sample, temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed)
        per_example: dict[str, list[float] | None] = {}
        stats: dict[str, list[list[float]] | None] = {}
        annotations: list[dict[str, Any]] = [{} for _ in examples]
        metrics: dict[str, Any] = {}
        for spec in task.metrics:
            metric = get_metric(spec.name)
            if metric.needs_model:
                results = metric(net, tok, prompts, references, **spec.options)
            elif metric.needs_prompts:
                results = metric(outputs, references, prompts=prompts, **spec.options)
            else:
                results = metric(outputs, references, **spec.options)
            for key, res in results.items():
                metrics[key] = {"value": res.value, "metric": spec.name, "details": res.details}
                per_example[key] = res.per_example
                stats[key] = res.stat_rows()
                for note, extra in zip(annotations, res.annotations or []):
                    note.update(extra)
        for i, (e, out) in enumerate(zip(examples, outputs)):
            scores = {k: (v[i] if v is not None else None) for k, v in per_example.items()}
            rows.append({"task": task.name, "idx": i, "source": e["source"], "prompt": json.dumps(e["prompt"], ensure_ascii=False),
                         "reference": e["reference"], "output": out, "scores": json.dumps(scores),
                         "stats": json.dumps({k: v[i] for k, v in stats.items() if v is not None}),
                         "annotations": json.dumps(annotations[i], ensure_ascii=False)})
        tasks[task.name] = {"n": len(examples), "skipped": skipped, "generation": gen.model_dump(),
                            "metric_options": {m.name: m.options for m in task.metrics},
                            "prompts_sha256": _sha(prompts), "references_sha256": _sha(references), "metrics": metrics}

    results = {
        "format": RESULTS_FORMAT, "suite": suite.name, **desc,
        "chat_template_sha256": hashlib.sha256((tok.chat_template or "").encode()).hexdigest(),
        "tasks": tasks,
    }
    results["run_id"] = f"{suite.name}-{_sha([results['model'], adapter, {t: (v['prompts_sha256'], v['generation']) for t, v in tasks.items()}, [t.model_dump() for t in suite.tasks]])[:12]}"
    out = Path(out_dir or suite.resolve(f"evals/{results['run_id']}"))
    out.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(out / "examples.parquet")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["output_dir"] = str(out)
    if workspace:
        _register(Path(workspace), suite, results, pl.DataFrame(rows), out)
    return results


def _probe_task(suite: SuiteConfig, task: TaskConfig, net: Any, tok: Any) -> tuple[list[dict], dict[str, Any]]:
    """A multiple-choice probe: rows (the output is the chosen answer) and the task's results."""
    from evalsuite import probes
    from evalsuite.metrics import get_metric

    load = {"mmlu": probes.mmlu_items, "openbookqa": probes.openbookqa_items, "truthfulqa_mc1": probes.truthfulqa_mc1_items}[task.kind]
    items = load(suite.resolve(task.path), task.limit)
    if not items:
        raise ValueError(f"task {task.name}: no items in {task.path}")
    res = get_metric("multiple_choice")(net, tok, items)
    rows = []
    for i, (it, note) in enumerate(zip(items, res["acc"].annotations)):
        chosen = max(range(len(it.choices)), key=note["loglikelihoods"].__getitem__)
        scores = {k: r.per_example[i] for k, r in res.items()}
        rows.append({"task": task.name, "idx": i, "source": it.source, "prompt": json.dumps([{"role": "user", "content": it.context}]),
                     "reference": it.choices[it.gold], "output": it.choices[chosen], "scores": json.dumps(scores),
                     "stats": json.dumps({k: [v] for k, v in scores.items()}), "annotations": json.dumps(note)})
    metrics = {k: {"value": r.value, "metric": "multiple_choice", "details": {"n": len(items), "format": task.kind}} for k, r in res.items()}
    return rows, {"n": len(items), "skipped": [], "generation": {"kind": task.kind}, "metric_options": {},
                  "prompts_sha256": _sha([(it.context, it.choices) for it in items]),
                  "references_sha256": _sha([it.gold for it in items]), "metrics": metrics}


def _text_task(suite: SuiteConfig, task: TaskConfig, net: Any, tok: Any) -> tuple[list[dict], dict[str, Any]]:
    """Plain text (any file curate reads, ``text_field`` of each record): sliding-window perplexity."""
    from curate.readers import expand_paths, read_file
    from evalsuite.metrics import text_perplexity

    texts, sources, skipped = [], [], []
    for file in expand_paths(str(suite.resolve(task.path)), Path("/")):
        for batch in read_file(file):
            skipped += [{"where": f"{file}:{b.line}", "reason": b.error} for b in batch.bad]
            for line, rec in zip(batch.lines, batch.records):
                value = rec.get(task.text_field) if isinstance(rec, dict) else None
                if not isinstance(value, str) or not value.strip():
                    skipped.append({"where": f"{file}:{line}", "reason": f"no text in field {task.text_field!r}"})
                    continue
                texts.append(value)
                sources.append(f"{file}:{line}")
                if task.limit and len(texts) >= task.limit:
                    break
            if task.limit and len(texts) >= task.limit:
                break
    if not texts:
        raise ValueError(f"task {task.name}: no text in field {task.text_field!r} of {task.path}")
    res = text_perplexity(net, tok, texts, max_length=task.window, stride=task.stride)
    rows = [{"task": task.name, "idx": i, "source": src, "prompt": "[]", "reference": text, "output": "",
             "scores": json.dumps({"text_perplexity": nll}), "stats": json.dumps({"text_perplexity": st}), "annotations": "{}"}
            for i, (src, text, nll, st) in enumerate(zip(sources, texts, res.per_example, res.stats))]
    return rows, {"n": len(texts), "skipped": skipped, "generation": {"kind": "text", "window": task.window, "stride": task.stride},
                  "metric_options": {}, "prompts_sha256": _sha(texts), "references_sha256": _sha(texts),
                  "metrics": {"text_perplexity": {"value": res.value, "metric": "text_perplexity", "details": res.details}}}


def headline(results: dict[str, Any]) -> dict[str, float]:
    """``{"task/key": value}``: the numbers a table or a summary shows."""
    return {f"{t}/{k}": m["value"] for t, v in results["tasks"].items() for k, m in v["metrics"].items()}


def _register(path: Path, suite: SuiteConfig, results: dict[str, Any], frame, out: Path) -> None:
    from curate.workspace import Workspace

    with Workspace(path) as ws:
        with ws.begin_run(results["run_id"], "eval", suite.name, suite.model_dump(mode="json"), results["run_id"], str(out)) as store:
            store.append("eval_examples", results["run_id"], frame)
        ws.finish_run(results["run_id"], "done", {"model": results["model"], "adapter": results["adapter"], "headline": headline(results)})
