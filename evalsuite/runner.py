"""`evalsuite run`: generate for every task of a suite, score with the registered metrics, write the results.

Outputs in ``out_dir``:
- ``examples.parquet``: one row per example: task, source (file:line), prompt (JSON messages), reference,
  output, every per-example metric value (``scores``, JSON) and what metrics say beyond a score
  (``annotations``, JSON: the judge's scores, rationales and raw reply);
- ``results.json``: per task and metric key the headline value and its details (sacrebleu signature, token
  counts...), plus what a comparison must hold equal: the model and adapter, the generation settings, the
  chat template's hash and each task's prompts hash (of the tools too, for examples that offer tools);
- with a workspace: a ``runs`` row (kind 'eval', summary = the headline values) and the examples in
  ``eval_examples``, for the review app and for ``evalsuite compare`` across runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from evalsuite.examples import task_examples  # noqa: F401  (what a run reads; re-exported)
from evalsuite.progress import Clock, format_timing, progress_bar  # noqa: F401  (re-exported for the CLI)
from evalsuite.suite import SuiteConfig, TaskConfig


RESULTS_FORMAT = 2  # 2: per-example ``stats`` and each key's producing ``metric``; what compare reads


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def run_suite(suite: SuiteConfig, model: str = "embedded", adapter: str | None = None, out_dir: str | Path | None = None,
              workspace: str | Path | None = None, device: str = "auto", server: Any = None,
              progress: bool | None = None) -> dict[str, Any]:
    """Run every task; returns the results dict written to ``out_dir/results.json``.

    With ``server`` (a :class:`evalsuite.serving.ServerConfig`, else the suite's ``server:``), generate tasks
    are answered by that OpenAI-compatible server instead of a local model: no model is loaded, so tasks
    that need the model's weights (probes, text perplexity, a ``needs_model`` metric) are refused before
    any work (:func:`server_problems`), and :class:`evalsuite.serving.ServerUnreachable` is raised when the
    server cannot be used. ``progress``: bars on stderr (None: when stderr is a terminal). ``timing`` in
    the results says where the time went (:func:`format_timing` prints it)."""
    import polars as pl

    from chat.generate import generate

    clock = Clock()
    server = server or suite.server
    if server is None and local_problems(suite):
        raise ValueError("; ".join(local_problems(suite)))
    if server is not None:
        from evalsuite.serving import connect

        problems = server_problems(suite)
        if adapter:
            problems.insert(0, "an adapter cannot be applied to a served model (serve the merged model, or run locally)")
        if problems:
            raise ValueError("; ".join(problems))
        with clock.step("connect"):
            served = connect(server, suite.base_dir)
        net = tok = None
        desc = {"model": served.model, "adapter": None, "server": served.description}
        asked = (0, 0)
    else:
        from chat.models import load_model

        with clock.step("load_model"):
            net, tok, desc = load_model(model, adapter, device)
    rows: list[dict[str, Any]] = []
    tasks: dict[str, Any] = {}
    own_tasks = {"text": _text_task, "preference": _preference_task}
    for task in suite.tasks:
        if task.kind != "generate":
            with clock.step("tasks", task.name, "total"):
                task_rows, tasks[task.name] = own_tasks.get(task.kind, _probe_task)(suite, task, net, tok)
            rows += task_rows
            continue
        examples, skipped = task_examples(suite, task)
        if not examples:
            raise ValueError(f"task {task.name}: no example with a prompt and a reference in {task.path} ({len(skipped)} skipped)")
        gen = task.generation or suite.generation
        prompts = [e["prompt"] for e in examples]
        tools = [e.get("tools") for e in examples]
        notes: list[dict[str, Any]] | None = None
        with clock.step("tasks", task.name, "generate"), progress_bar(progress, len(prompts), f"generate {task.name}") as bar:
            if server is not None:
                from evalsuite.serving import reply_output

                replies = served.generate(prompts, max_new_tokens=gen.max_new_tokens, sample=gen.sample, temperature=gen.temperature,
                                          top_p=gen.top_p, seed=gen.seed, names=[f"{task.name}/{i} ({e['source']})" for i, e in enumerate(examples)],
                                          progress=bar.update, tools=tools, tool_choice=[_tool_choice(gen.tool_choice, e) for e in examples])
                outputs = [reply_output(r) for r in replies]
                notes = [{"server": {"finish_reason": r.get("finish_reason")}} for r in replies]
            else:
                from chat.tools import template_messages

                # tool calls, results and definitions in the template's own form, as training renders them (the
                # Hermes text convention for a template without tools); plain conversations pass as they are
                rendered = [template_messages(tok, p, t) for p, t in zip(prompts, tools)]
                outputs = generate(net, tok, [m for m, _ in rendered], max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size,
                                   sample=gen.sample, temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed, progress=bar.update,
                                   tools=[t for _, t in rendered])
        clock.note(task.name, examples=len(prompts))
        if server is not None:  # what the server was asked, and what the cache answered
            clock.note(task.name, from_server=served.answered - asked[0], from_cache=served.cached - asked[1])
            asked = (served.answered, served.cached)
        task_rows, task_result = score_task(task, examples, outputs, net, tok, progress=progress, clock=clock, annotations=notes)
        rows += task_rows
        tasks[task.name] = {"n": len(examples), "skipped": skipped, "generation": gen.recorded(), **task_result}
        if any(tools):
            tasks[task.name]["tools"] = {"offered": sum(1 for t in tools if t), "form": "server" if tok is None else tools_form(tok)}

    results = {
        "format": RESULTS_FORMAT, "suite": suite.name, **desc,
        # a server applies its own template, which we cannot see: no hash, so only server runs compare with it
        "chat_template_sha256": None if tok is None else hashlib.sha256((tok.chat_template or "").encode()).hexdigest(),
        "tasks": tasks,
        "plugins": suite.plugin_records(),  # compare and gate import the same metric code the run used
    }
    task_inputs = {t: (v["prompts_sha256"], v["generation"]) for t, v in tasks.items()}
    results["run_id"] = f"{suite.name}-{_sha([results['model'], adapter, task_inputs, [t.identity() for t in suite.tasks]])[:12]}"
    out = Path(out_dir or suite.resolve(f"evals/{results['run_id']}"))
    with clock.step("write"):
        out.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(rows).write_parquet(out / "examples.parquet")
        if workspace:
            _register(Path(workspace), suite, results, pl.DataFrame(rows), out)
    results["timing"] = clock.timing()
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["output_dir"] = str(out)
    return results


def tools_form(tok: Any) -> str:
    """How a local model sees the tools offered with a prompt (:func:`chat.tools.template_messages`): ``native``
    when its chat template renders tool definitions and calls, ``hermes`` when they are written into the
    conversation as text (the tools in the system turn, calls in ``<tool_call>`` tags), as training writes them."""
    from chat.tools import template_support

    support = template_support(tok)
    return "native" if support["calls"] and support["tools"] else "hermes"


def _tool_choice(setting: str | None, example: dict[str, Any]) -> str | dict[str, Any] | None:
    """The request's tool_choice for one example: the task's setting, ``reference`` made the function the
    reference calls first (none when the reference is no call)."""
    if setting != "reference":
        return setting
    from evalsuite.metrics.toolcall import parse_tool_calls

    ref = parse_tool_calls(example["reference"])
    return {"type": "function", "function": {"name": ref.calls[0]["name"]}} if ref.ok else None


def local_problems(suite: SuiteConfig) -> list[str]:
    """Why ``suite`` cannot run on a local model (empty when it can): a ``tool_choice`` is a server's setting."""
    return [f"task {t.name}: generation.tool_choice is sent to a server; a local model has none (leave it out, or run with --server)"
            for t in suite.tasks if t.kind == "generate" and (t.generation or suite.generation).tool_choice is not None]


def server_problems(suite: SuiteConfig, what: str = "a server run") -> list[str]:
    """Why ``suite`` cannot run without a local model (one reason per task or metric; empty when it can):
    probe and text tasks and ``needs_model`` metrics score the model's own log-likelihoods."""
    from evalsuite.metrics import get_metric

    problems = []
    for task in suite.tasks:
        if task.kind != "generate":
            problems.append(f"task {task.name}: a {task.kind} task scores the model's log-likelihoods, which {what} does not have")
        for spec in task.metrics:
            if get_metric(spec.name).needs_model:
                problems.append(f"task {task.name}: metric {spec.name} needs the model's weights, which {what} does not have")
    return problems


def score_task(task: TaskConfig, examples: list[dict[str, Any]], outputs: list[str], net: Any = None, tok: Any = None,
               progress: bool | None = None, clock: Clock | None = None,
               annotations: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score ``outputs`` (one per example, in order) with every metric of ``task``: (examples.parquet rows, the
    task's ``metric_options``, ``prompts_sha256``, ``references_sha256`` and ``metrics``). What a generated
    run and a scored run (:mod:`evalsuite.score`) share. ``annotations`` start each example's notes
    (metrics add theirs); ``clock`` gets each metric's seconds; ``net``/``tok`` only for ``needs_model``."""
    from evalsuite.metrics import get_metric

    prompts = [e["prompt"] for e in examples]
    tools = [e.get("tools") for e in examples]
    # every accepted answer (a list, from the suite's `references_field`); a single one stays a string, so
    # its references_sha256 is what it was before reference lists existed
    references = [e["references"] if len(e.get("references") or ()) > 1 else e["reference"] for e in examples]
    per_example: dict[str, list[float] | None] = {}
    stats: dict[str, list[list[float]] | None] = {}
    annotations = [dict(a) for a in annotations] if annotations else [{} for _ in examples]
    for note, refs, offered in zip(annotations, references, tools):
        if not isinstance(refs, str):  # the `reference` column holds the first; every accepted answer is kept here
            note["references"] = refs
        if offered:  # the prompt column holds the messages; the tools offered beside them are kept here
            note["tools"] = offered
    metrics: dict[str, Any] = {}
    clock = clock or Clock()
    with progress_bar(progress, len(examples) * len(task.metrics), f"score {task.name}") as bar:
        for spec in task.metrics:
            metric = get_metric(spec.name)
            bar.set_postfix_str(spec.name)
            with clock.step("tasks", task.name, "score", spec.name):
                # perplexity and the judge read one answer: the first accepted one
                extra: dict[str, Any] = {"tools": tools} if metric.needs_tools else {}
                if metric.needs_model:
                    results = metric(net, tok, prompts, [e["reference"] for e in examples], **spec.options, **extra)
                elif metric.needs_prompts:
                    results = metric(outputs, [e["reference"] for e in examples], prompts=prompts, **spec.options, **extra)
                else:
                    results = metric(outputs, references, **spec.options, **extra)
            bar.update(len(examples))
            for key, res in results.items():
                metrics[key] = {"value": res.value, "metric": spec.name, "details": res.details}
                per_example[key] = res.per_example
                stats[key] = res.stat_rows()
                for note, extra in zip(annotations, res.annotations or []):
                    note.update(extra)
    rows = []
    for i, (e, out) in enumerate(zip(examples, outputs)):
        scores = {k: (v[i] if v is not None else None) for k, v in per_example.items()}
        rows.append({"task": task.name, "idx": i, "source": e["source"], "prompt": json.dumps(e["prompt"], ensure_ascii=False),
                     "reference": e["reference"], "output": out, "scores": json.dumps(scores),
                     "stats": json.dumps({k: v[i] for k, v in stats.items() if v is not None}),
                     "annotations": json.dumps(annotations[i], ensure_ascii=False)})
    # the tools an example offers are part of its prompt (another tool set is another question); examples
    # without tools hash as they always did, so earlier runs stay comparable
    prompt_keys = [p if not t else {"messages": p, "tools": t} for p, t in zip(prompts, tools)]
    return rows, {"metric_options": {m.name: m.options for m in task.metrics},
                  "prompts_sha256": _sha(prompt_keys), "references_sha256": _sha(references), "metrics": metrics}


def _probe_task(suite: SuiteConfig, task: TaskConfig, net: Any, tok: Any) -> tuple[list[dict], dict[str, Any]]:
    """A probe kind (evalsuite/probes.py): its loader's items scored by its metric; rows with the answer the
    metric chose (or the greedy continuation) as the output, per-key scores and stats rows, and the metric's
    annotations (log-likelihoods); the task's results."""
    from evalsuite.metrics import get_metric
    from evalsuite.probes import get_probe, item_view

    probe = get_probe(task.kind)
    items = probe.load(suite.resolve(task.path), task.limit)
    if not items:
        raise ValueError(f"task {task.name}: no items in {task.path}")
    res = get_metric(probe.metric)(net, tok, items)
    notes: list[dict[str, Any]] = [{} for _ in items]
    for r in res.values():
        for note, extra in zip(notes, r.annotations or []):
            note.update(extra)
    stat_rows = {k: r.stat_rows() for k, r in res.items()}
    rows, views = [], [item_view(it) for it in items]
    for i, (it, view, note) in enumerate(zip(items, views, notes)):
        scores = {k: (r.per_example[i] if r.per_example is not None else None) for k, r in res.items()}
        rows.append({"task": task.name, "idx": i, "source": getattr(it, "source", ""),
                     "prompt": json.dumps([{"role": "user", "content": view["prompt"]}], ensure_ascii=False),
                     "reference": view["reference"], "output": str(note.get("output", "")), "scores": json.dumps(scores),
                     "stats": json.dumps({k: v[i] for k, v in stat_rows.items() if v is not None}),
                     "annotations": json.dumps({k: v for k, v in note.items() if k != "output"}, ensure_ascii=False)})
    metrics = {k: {"value": r.value, "metric": probe.metric, "details": {**r.details, "n": len(items), "format": task.kind}}
               for k, r in res.items()}
    return rows, {"n": len(items), "skipped": [], "generation": {"kind": task.kind}, "metric_options": {},
                  "prompts_sha256": _sha([v["prompt_key"] for v in views]),
                  "references_sha256": _sha([v["reference_key"] for v in views]), "metrics": metrics}


def _completion_text(messages: list[dict[str, Any]]) -> str:
    """A completion as one text for the examples table: its turns' contents, a tool-call turn as its calls."""
    parts = []
    for m in messages:
        text = m.get("content") or ""
        if m.get("tool_calls"):
            text = (text + "\n" if text else "") + json.dumps(m["tool_calls"], ensure_ascii=False)
        parts.append(text if m["role"] == "assistant" else f"[{m['role']}] {text}")
    return "\n\n".join(parts)


def _preference_task(suite: SuiteConfig, task: TaskConfig, net: Any, tok: Any) -> tuple[list[dict], dict[str, Any]]:
    """Preference pairs (any layout curate reads) scored by the ``preference`` metric. A row per pair: the prompt,
    the chosen completion as the reference, the completion the model gives the higher log-likelihood as the
    output (the reference when it ranks the pair right), and both log-likelihoods and the rejected completion
    in the annotations."""
    from evalsuite.examples import preference_pairs
    from evalsuite.metrics import PREFERENCE_KEYS, get_metric

    pairs, skipped = preference_pairs(suite, task)
    if not pairs:
        first = f"; the first, {skipped[0]['where']}: {skipped[0]['reason']}" if skipped else ""
        raise ValueError(f"task {task.name}: no preference pair in {task.path} ({len(skipped)} records skipped{first})")
    res = get_metric("preference")(net, tok, pairs, batch_size=task.batch_size)
    notes: list[dict[str, Any]] = [{} for _ in pairs]
    for r in res.values():
        for note, extra in zip(notes, r.annotations or []):
            note.update(extra)
    stat_rows = {k: r.stat_rows() for k, r in res.items()}
    rows = []
    for i, (pair, note) in enumerate(zip(pairs, notes)):
        chosen, rejected = _completion_text(pair.chosen), _completion_text(pair.rejected)
        note["preference"]["rejected"] = rejected
        if pair.tools:
            note["tools"] = pair.tools
        scores = {k: (r.per_example[i] if r.per_example is not None else None) for k, r in res.items()}
        rows.append({"task": task.name, "idx": i, "source": pair.source, "prompt": json.dumps(pair.prompt, ensure_ascii=False),
                     "reference": chosen, "output": chosen if scores[PREFERENCE_KEYS[0]] else rejected,
                     "scores": json.dumps(scores), "stats": json.dumps({k: v[i] for k, v in stat_rows.items() if v is not None}),
                     "annotations": json.dumps(note, ensure_ascii=False)})
    metrics = {k: {"value": r.value, "metric": "preference", "details": r.details} for k, r in res.items()}
    return rows, {"n": len(pairs), "skipped": skipped, "generation": {"kind": "preference"}, "metric_options": {},
                  "prompts_sha256": _sha([[p.prompt, p.tools] for p in pairs]),
                  "references_sha256": _sha([[p.chosen, p.rejected] for p in pairs]), "metrics": metrics}


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
