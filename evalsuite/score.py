"""`evalsuite score`: score outputs made anywhere (vLLM, an API, another team's system) against a suite's
references, into the same run folder `evalsuite run` writes, so `compare` and `gate` take it like any other.

Which outputs answer which task: ``--outputs TASK=FILE`` (one task per file), ``--outputs FILE`` (a JSONL
whose lines name their ``task``; for a one-task suite the name may be left out, and then a text file works
too), or the task's ``predictions:`` in the suite file. ``--task`` scores only the named tasks; by default
every task is scored and each needs its outputs.

Two formats, told apart by the file name:

- ``*.jsonl`` / ``*.ndjson``: one JSON object per line with ``output`` (a string, the model's answer) and
  what says which example it answers: ``idx`` (the example's position among the task's examples, 0-based:
  the ``idx`` column of examples.parquet), or ``prompt`` (the prompt's last user turn as a string, or the
  whole prompt as a list of ``{role, content}`` messages), or both (they must agree). Examples with the same
  prompt are matched in order of appearance. ``task`` names the task; any other field is ignored. Blank
  lines are skipped.
- anything else: plain text, one output per line (WMT-style system outputs), line k answering the example
  of ``idx`` k-1. The line ending is removed, nothing else. Refused when the task skipped records (the
  lines would shift): use JSONL with ``idx`` or ``prompt`` then.

Every example must get exactly one output: a missing, extra (no such example) or duplicate (an example
already answered) output is an :class:`OutputsError` naming ``file:line: field``; `evalsuite score` exits 2
with that one line before scoring anything. Probe and text tasks, and metrics that need the model's weights
(perplexity), cannot be scored from outputs: refused in one line naming the task and metric.

The run records ``model`` as the user names it (``--model-name``), ``generation: {"kind": "scored"}`` per task
(two scored runs compare; a scored and a generated run do not: their generation differs),
``chat_template_sha256: null`` and, per task, ``outputs: {path, format, sha256}`` (the file scored); each
example's ``annotations`` say which file line its output came from (``output_from``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalsuite.suite import SuiteConfig, TaskConfig

JSONL_SUFFIXES = (".jsonl", ".ndjson")
SCORED = {"kind": "scored"}


class OutputsError(ValueError):
    """Outputs that cannot be matched to a suite's examples; the message is one line naming file, line, field."""


@dataclass
class Output:
    """One output as read: where it came from and what it says about its example."""

    where: str  # file:line
    field_prefix: str  # "file:line: " for messages
    output: str
    idx: int | None = None
    prompt: str | list[dict[str, str]] | None = None


def outputs_format(path: str | Path) -> str:
    """``"jsonl"`` for ``*.jsonl`` / ``*.ndjson``, else ``"text"`` (one output per line)."""
    return "jsonl" if Path(path).suffix.lower() in JSONL_SUFFIXES else "text"


def file_sha256(path: str | Path) -> str:
    """sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _text_lines(path: Path) -> list[str]:
    # "\n" is the only separator (a translation may hold U+2028 or a form feed, which splitlines() would
    # break on); a trailing "\r" goes with its line ending; a final "\n" ends the last line, it does not
    # start an empty one
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_outputs(path: str | Path, task: str | None, tasks: list[str], other_tasks: tuple[str, ...] = ()) -> dict[str, list[Output]]:
    """``{task: [Output]}`` from one file. ``task``: the task the whole file answers (``TASK=FILE``), else
    each JSONL line's ``task`` field (which may be left out when ``tasks`` has one name). Lines of
    ``other_tasks`` (tasks of the suite not being scored) are skipped; any other unknown task is an error."""
    path = Path(path)
    if not path.is_file():
        raise OutputsError(f"{path}: no such outputs file")
    only = task or (tasks[0] if len(tasks) == 1 else None)
    if outputs_format(path) == "text":
        if only is None:
            raise OutputsError(f"{path}: a text file holds one task's outputs: give it as --outputs TASK={path}")
        return {only: [Output(f"{path}:{n}", f"{path}:{n}: ", line, idx=n - 1) for n, line in enumerate(_text_lines(path), 1)]}
    out: dict[str, list[Output]] = {}
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            at = f"{path}:{n}: "
            try:
                rec = json.loads(raw)
            except ValueError as exc:
                raise OutputsError(f"{at}not valid JSON ({exc})") from None
            if not isinstance(rec, dict):
                raise OutputsError(f"{at}a line must be a JSON object, got {type(rec).__name__}")
            name = rec.get("task", only)
            if name is None:
                raise OutputsError(f"{at}task: missing (the suite has tasks {tasks}; name one per line, or give --outputs TASK=FILE)")
            if task is not None and name != task:
                raise OutputsError(f"{at}task: {name!r}, but this file was given for task {task!r}")
            if name not in tasks:
                if name in other_tasks:
                    continue  # a task of the suite that is not being scored (--task)
                raise OutputsError(f"{at}task: no task {name!r} in the suite (tasks: {', '.join(tasks)})")
            if "output" not in rec:
                raise OutputsError(f"{at}output: missing")
            if not isinstance(rec["output"], str):
                raise OutputsError(f"{at}output: must be a string, got {type(rec['output']).__name__}")
            idx = rec.get("idx")
            if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int) or idx < 0):
                raise OutputsError(f"{at}idx: must be an integer >= 0, got {idx!r}")
            prompt = rec.get("prompt")
            if prompt is not None and not _is_prompt(prompt):
                raise OutputsError(f"{at}prompt: must be a string or a list of {{role, content}} messages")
            if idx is None and prompt is None:
                raise OutputsError(f"{at}idx: missing (each line needs `idx` or `prompt` to say which example it answers)")
            out.setdefault(name, []).append(Output(f"{path}:{n}", at, rec["output"], idx, prompt))
    return out


def _is_prompt(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                           and isinstance(m.get("content"), str) for m in value)


def _last_user(prompt: list[dict[str, str]]) -> str | None:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), None)


def match_outputs(task: str, examples: list[dict[str, Any]], outputs: list[Output], path: str | Path,
                  skipped: list[dict[str, str]] | None = None, fmt: str = "jsonl") -> list[Output]:
    """The :class:`Output` answering each example, in example order; OutputsError on an output that answers no example,
    one answering an example already answered, a prompt that disagrees with its ``idx``, or an example left
    without an output."""
    n = len(examples)
    if fmt == "text" and skipped:
        raise OutputsError(f"{path}: task {task} skipped {len(skipped)} record(s) (first: {skipped[0]['where']}: {skipped[0]['reason']}), "
                           "so its lines would not line up with the examples: give JSONL lines with `idx` or `prompt`")
    by_prompt: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_prompt.setdefault(json.dumps(e["prompt"], sort_keys=True, ensure_ascii=False), []).append(i)
        last = _last_user(e["prompt"])
        if last is not None:
            by_prompt.setdefault("\x00" + last, []).append(i)
    answered: dict[int, str] = {}
    result: list[Output | None] = [None] * n
    for o in sorted(outputs, key=lambda o: o.idx is None):  # idx first: a prompt then takes an example still free
        if o.idx is not None:
            if o.idx >= n:
                field = "line" if fmt == "text" else "idx"
                raise OutputsError(f"{o.field_prefix}{field}: no example {o.idx} in task {task}, which has {n} (idx 0-{n - 1})")
            i = o.idx
            if o.prompt is not None and not _prompt_matches(o.prompt, examples[i]["prompt"]):
                raise OutputsError(f"{o.field_prefix}prompt: not the prompt of example {i} of task {task} ({examples[i]['source']})")
        else:
            key = "\x00" + o.prompt if isinstance(o.prompt, str) else json.dumps(o.prompt, sort_keys=True, ensure_ascii=False)
            candidates = by_prompt.get(key)
            if not candidates:
                raise OutputsError(f"{o.field_prefix}prompt: matches no example of task {task}: {str(o.prompt)[:80]!r}")
            free = [i for i in candidates if i not in answered]
            if not free:
                raise OutputsError(f"{o.field_prefix}prompt: every example of task {task} with this prompt is already answered "
                                   f"(at {answered[candidates[-1]]})")
            i = free[0]
        if i in answered:
            raise OutputsError(f"{o.field_prefix}{'idx' if fmt == 'jsonl' else 'line'}: example {i} of task {task} is already answered at {answered[i]}")
        answered[i] = o.where
        result[i] = o
    missing = [i for i in range(n) if result[i] is None]
    if missing:
        shown = ", ".join(f"{i} ({examples[i]['source']})" for i in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise OutputsError(f"{path}: task {task}: {len(missing)} of {n} examples have no output: idx {shown}{more}")
    return result  # type: ignore[return-value]


def _prompt_matches(given: str | list[dict[str, str]], prompt: list[dict[str, str]]) -> bool:
    if isinstance(given, str):
        return given == _last_user(prompt)
    return [{"role": m["role"], "content": m["content"]} for m in given] == prompt


def scoring_problems(suite: SuiteConfig, tasks: list[TaskConfig]) -> list[str]:
    """Why these tasks cannot be scored from outputs (one reason per task or metric; empty when they can)."""
    from evalsuite.runner import server_problems

    sub = suite.model_copy(update={"tasks": tasks})
    return server_problems(sub, "scoring outputs")


def score_suite(suite: SuiteConfig, outputs: list[str] | None = None, model_name: str = "outputs",
                out_dir: str | Path | None = None, workspace: str | Path | None = None, tasks: list[str] | None = None,
                progress: bool | None = None) -> dict[str, Any]:
    """Score outputs made elsewhere; returns the results dict written to ``out_dir/results.json``.

    ``outputs``: ``"TASK=FILE"`` or ``"FILE"`` items (see the module docstring); a task none of them covers
    uses its ``predictions:``. ``tasks``: the names to score (default: all). Every problem with the outputs
    is found before any metric runs (:class:`OutputsError`); an unscorable task or metric is a ValueError."""
    import polars as pl

    from evalsuite.runner import RESULTS_FORMAT, Clock, _register, _sha, score_task, task_examples

    clock = Clock()
    names = [t.name for t in suite.tasks]
    unknown = [t for t in tasks or [] if t not in names]
    if unknown:
        raise OutputsError(f"--task: no task {unknown[0]!r} in suite {suite.name} (tasks: {', '.join(names)})")
    chosen = [t for t in suite.tasks if not tasks or t.name in tasks]
    problems = scoring_problems(suite, chosen)
    if problems:
        raise ValueError("; ".join(problems))
    chosen_names = [t.name for t in chosen]
    others = tuple(n for n in names if n not in chosen_names)

    # which file answers which task
    sources: dict[str, Path] = {}
    read: dict[str, list[Output]] = {}
    for item in outputs or []:
        # TASK=FILE when the part before the first "=" names a task of the suite (a file name may hold "=")
        task, _, file = item.partition("=") if item.partition("=")[0] in names else ("", "", item)
        path = Path(file)
        if task and task not in chosen_names:
            raise OutputsError(f"--outputs {item}: task {task!r} is not being scored (--task {' '.join(chosen_names)})")
        for name, lines in read_outputs(path, task or None, chosen_names, others).items():
            if name in sources and sources[name] != path:
                raise OutputsError(f"{path}: task {name} already has outputs from {sources[name]}")
            sources[name] = path
            read.setdefault(name, []).extend(lines)
    for t in chosen:
        if t.name not in sources:
            if not t.predictions:
                raise OutputsError(f"task {t.name}: no outputs (give --outputs {t.name}=FILE, or `predictions:` for the task in the suite)")
            path = suite.resolve(t.predictions)
            sources[t.name] = path
            read[t.name] = read_outputs(path, t.name, chosen_names, others).get(t.name, [])

    # match every task's outputs to its examples before scoring anything: a bad file costs nothing
    matched: dict[str, tuple[list[dict[str, Any]], list[dict[str, str]], list[Output]]] = {}
    for t in chosen:
        with clock.step("tasks", t.name, "read_outputs"):
            examples, skipped = task_examples(suite, t)
            if not examples:
                raise ValueError(f"task {t.name}: no example with a prompt and a reference in {t.path} ({len(skipped)} skipped)")
            answers = match_outputs(t.name, examples, read.get(t.name, []), sources[t.name], skipped, outputs_format(sources[t.name]))
        clock.note(t.name, examples=len(examples))
        matched[t.name] = (examples, skipped, answers)

    rows: list[dict[str, Any]] = []
    results_tasks: dict[str, Any] = {}
    for t in chosen:
        examples, skipped, answers = matched[t.name]
        notes = [{"output_from": o.where} for o in answers]  # which line of which file each output came from
        task_rows, task_result = score_task(t, examples, [o.output for o in answers], progress=progress, clock=clock, annotations=notes)
        rows += task_rows
        path = sources[t.name]
        results_tasks[t.name] = {"n": len(examples), "skipped": skipped, "generation": dict(SCORED), **task_result,
                                 "outputs": {"path": str(path), "format": outputs_format(path), "sha256": file_sha256(path)}}

    results: dict[str, Any] = {
        "format": RESULTS_FORMAT, "suite": suite.name, "model": model_name, "adapter": None,
        "chat_template_sha256": None,  # the outputs were made elsewhere, with a template we cannot see
        "tasks": results_tasks,
    }
    if hasattr(suite, "plugin_records"):
        results["plugins"] = suite.plugin_records()  # compare and gate import the same metric code the run used
    task_inputs = {t: (v["prompts_sha256"], v["outputs"]["sha256"]) for t, v in results_tasks.items()}
    results["run_id"] = f"{suite.name}-{_sha([model_name, 'scored', task_inputs, [t.identity() for t in chosen]])[:12]}"
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

