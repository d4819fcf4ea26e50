"""`evalsuite` command line: a thin shell over :mod:`evalsuite.runner`."""

from __future__ import annotations

from pathlib import Path

import typer

from curate.confighelp import config_flag_callbacks
from curate.quiet import quiet_third_party

app = typer.Typer(
    add_completion=False,
    help="evaluation: run a suite on a model (or a server), score outputs made elsewhere, compare two runs, gate a run in CI",
)
quiet_third_party()  # only messages a user cannot act on (curate/quiet.py says why each is harmless)


@app.callback()
def main() -> None:
    """Subcommands keep their names (`evalsuite run ...`)."""


def _config_model():
    from evalsuite.suite import SuiteConfig

    return SuiteConfig


_print_config_help, _print_config_schema = config_flag_callbacks(_config_model, "evalsuite run --suite SUITE: every key of the suite YAML")


@app.command()
def run(
    suite: str = typer.Option(..., "--suite", help="suite YAML (`--help-config` lists every key)"),
    model: str = typer.Option("embedded", "--model", help="embedded (SmolLM2), a local path or a hub id, or a merged model"),
    adapter: str = typer.Option(None, "--adapter", help="a peft adapter folder on top of --model (train run's adapter/)"),
    out: str = typer.Option(None, "--out", help="output folder (default: evals/<run id> next to the suite)"),
    workspace: str = typer.Option(None, "--workspace", help="the workspace folder to register the run in"),
    device: str = typer.Option("auto", "--device"),
    server: str = typer.Option(None, "--server", help="generate through this OpenAI-compatible server (base URL up to /v1: vLLM, TGI, "
                                                      "llama.cpp) instead of a local model; settings from the suite's `server:` block"),
    server_model: str = typer.Option(None, "--server-model", help="the served model's name (default: the suite's, else the one model the server lists)"),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="progress bars on stderr (default: when stderr is a terminal)"),
    help_config: bool = typer.Option(False, "--help-config", is_eager=True, callback=_print_config_help,
                                     help="print every suite key (nested) with type, default and description, and exit"),
    schema: bool = typer.Option(False, "--schema", is_eager=True, callback=_print_config_schema,
                                help="print the suite's JSON Schema (for editors and validators) and exit"),
) -> None:
    """Generate for every task, score every metric; write examples.parquet and results.json.

    Exit codes: 0 done; 2 invalid suite, or a server that cannot be used (checked before any work); 1 failure
    (a request that still fails after its retries names its example)."""
    from evalsuite.runner import format_timing, headline, run_suite
    from evalsuite.serving import ServerConfig, ServerUnreachable, connect
    from evalsuite.suite import SuiteError, load_suite

    from curate.workspace import WorkspaceError, check_workspace

    try:
        cfg = load_suite(suite)
        if workspace:
            check_workspace(workspace, create=True)  # before any generation: a bad path costs nothing
        served = cfg.server
        if server or server_model:
            if not server and not served:
                raise SuiteError("--server-model needs --server URL (or a `server:` block in the suite)")
            base = served.model_dump() if served else {}
            served = ServerConfig(**{**base, **({"base_url": server} if server else {}), **({"model": server_model} if server_model else {})})
        if served is not None:
            from evalsuite.runner import server_problems

            problems = server_problems(cfg) + (["--adapter cannot be applied to a served model (serve the merged model)"] if adapter else [])
            if problems:
                raise SuiteError(f"{suite}: cannot run on a server: {'; '.join(problems)}")
            connect(served, cfg.base_dir)  # reachable, key accepted, model served: before any work
        else:
            from evalsuite.runner import local_problems

            if local_problems(cfg):
                raise SuiteError(f"{suite}: cannot run on a local model: {'; '.join(local_problems(cfg))}")
    except (SuiteError, WorkspaceError, ServerUnreachable) as exc:
        _fail(str(exc))
    try:
        results = run_suite(cfg, model=model, adapter=adapter, out_dir=out, workspace=workspace, device=device,
                            server=served, progress=progress)
    except ValueError as exc:  # ServerError included: one line naming the example
        typer.secho(f"evalsuite run failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    for key, value in headline(results).items():
        typer.echo(f"{key:40} {value:.4f}")
    typer.echo(format_timing(results["timing"]))
    typer.echo(f"results: {results['output_dir']}/results.json")


@app.command()
def score(
    suite: str = typer.Option(..., "--suite", help="suite YAML: the tasks, references and metrics (see evalsuite/suite.py)"),
    outputs: list[str] = typer.Option(None, "--outputs", help="TASK=FILE (one task's outputs) or FILE (JSONL lines naming their task); "
                                      "repeatable; default: each task's `predictions:`. *.jsonl: {output, idx or prompt[, task]} per line; "
                                      "any other name: plain text, one output per line"),
    model_name: str = typer.Option(..., "--model-name", help="the name of the model or system that made the outputs (results.json `model`)"),
    task: list[str] = typer.Option(None, "--task", help="score only this task (repeatable; default: every task)"),
    out: str = typer.Option(None, "--out", help="output folder (default: evals/<run id> next to the suite)"),
    workspace: str = typer.Option(None, "--workspace", help="the workspace folder to register the run in"),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="progress bars on stderr (default: when stderr is a terminal)"),
) -> None:
    """Score outputs made elsewhere (vLLM, an API, another team) against the suite's references: the same
    examples.parquet and results.json as `evalsuite run`, for `compare` and `gate`.

    Exit codes: 0 done; 2 invalid suite, or outputs that do not match the examples (missing, extra or
    duplicate; one line naming file, line and field), or a task or metric that needs the model; 1 failure."""
    from evalsuite.runner import format_timing, headline
    from evalsuite.score import OutputsError, score_suite, scoring_problems
    from evalsuite.suite import SuiteError, load_suite

    from curate.workspace import WorkspaceError, check_workspace

    try:
        cfg = load_suite(suite)
        if workspace:
            check_workspace(workspace, create=True)
        problems = scoring_problems(cfg, [t for t in cfg.tasks if not task or t.name in task])
        if problems:
            raise SuiteError(f"{suite}: cannot be scored from outputs: {'; '.join(problems)}")
    except (SuiteError, WorkspaceError) as exc:
        _fail(str(exc))
    try:
        results = score_suite(cfg, outputs or [], model_name=model_name, out_dir=out, workspace=workspace, tasks=task or None,
                              progress=progress)
    except OutputsError as exc:
        _fail(str(exc))
    except ValueError as exc:
        typer.secho(f"evalsuite score failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    for key, value in headline(results).items():
        typer.echo(f"{key:40} {value:.4f}")
    typer.echo(format_timing(results["timing"]))
    typer.echo(f"results: {results['output_dir']}/results.json")


@app.command("compare")
def compare_cmd(
    base: str = typer.Argument(..., help="the base model's run: an `evalsuite run` folder, or a run id with --workspace"),
    fine_tune: str = typer.Argument(..., help="the fine-tune's run, likewise"),
    out: str = typer.Option(None, "--out", help="folder for compare.json / .md / .html (default: the fine-tune's run folder)"),
    workspace: str = typer.Option(None, "--workspace", help="resolve run ids through this workspace folder"),
    regressions: int = typer.Option(5, "--regressions", help="examples that regressed most, per task"),
    judge: str = typer.Option("none", "--judge", help=(
        "pairwise LLM judge of the two runs' outputs: none, local, openai, another registered backend, or file.py:Class")),
    judge_model: str = typer.Option(None, "--judge-model", help="local: embedded (default), a path or hub id; openai: the model name"),
    judge_url: str = typer.Option(None, "--judge-url", help="openai: base URL up to /v1 (or EVALSUITE_JUDGE_URL); the key is read from OPENAI_API_KEY"),
) -> None:
    """Per metric: both values, delta, paired bootstrap 95% CI (McNemar for exact match), verdict; with
    --judge, a pairwise preference per example in both orders and the fine-tune's win rate.

    Exit codes: 0 compared; 2, with one line, when a run is unusable (no or damaged results.json or
    examples.parquet, a missing key, fewer rows than results.json says), the runs are unlike (other prompts,
    references, template, generation settings or metric options; scored outputs against generated ones), the
    judge is misconfigured or the output folder cannot be written."""
    import json
    from pathlib import Path

    from evalsuite.compare import CompareError, compare, to_html, to_markdown
    from evalsuite.judge import JudgeError, make_judge

    try:
        judge_backend = None if judge == "none" else make_judge(_judge_config(judge, judge_model, judge_url))
        paths = [_run_folder(x, workspace) for x in (base, fine_tune)]
        result = compare(paths[0], paths[1], regressions=regressions, judge=judge_backend)
    except (CompareError, JudgeError) as exc:
        _fail(f"cannot compare: {exc}")
    folder = Path(out or paths[1])
    markdown = to_markdown(result)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
        (folder / "compare.md").write_text(markdown)
        (folder / "compare.html").write_text(to_html(result))
    except OSError as exc:
        _fail(f"cannot write the comparison to {folder}: {exc.strerror or exc}")
    typer.echo(markdown.split("\nLargest regressions")[0] if len(result["tasks"]) == 1 else markdown)
    typer.echo(f"written: {folder / 'compare.json'}, compare.md, compare.html")


@app.command()
def gate(
    results: str = typer.Argument(..., help="the run to gate: an `evalsuite run` folder, or a run id with --workspace"),
    rules: str = typer.Option(..., "--rules", help="gate rules YAML (see evalsuite/gate.py)"),
    baseline: str = typer.Option(None, "--baseline", help="the run to compare against (regression and forgetting rules)"),
    junit: str = typer.Option(None, "--junit", help="JUnit XML output (default: gate.xml in the run folder)"),
    workspace: str = typer.Option(None, "--workspace", help="resolve run ids through this workspace folder"),
) -> None:
    """Check every rule; exit 0 when all pass, 1 when one fails, 2 when the rules or runs are unusable.

    Exit 2 prints one line (the file and field at fault) and still writes the JUnit file, with the error as
    its one testcase; an unwritable --junit path is itself exit 2 (CI would see no result)."""
    from pathlib import Path

    from evalsuite.compare import CompareError
    from evalsuite.gate import GateError, check, junit_xml, load_rules

    target = Path(junit) if junit else None
    try:
        folder = _run_folder(results, workspace)
        target = target or Path(folder) / "gate.xml"
        outcomes = check(folder, load_rules(rules), _run_folder(baseline, workspace) if baseline else None)
    except (GateError, CompareError) as exc:
        _gate_unusable(f"gate: {exc}", target or Path(results) / "gate.xml")
    except Exception as exc:  # noqa: BLE001  (exit 1 means "a rule failed": a crash must not read as one)
        _gate_unusable(f"gate: unexpected error, not a rule failure: {type(exc).__name__}: {exc}", target or Path(results) / "gate.xml")
    for o in outcomes:
        typer.secho(o["message"], fg=typer.colors.GREEN if o["passed"] else typer.colors.RED)
    try:
        target.write_text(junit_xml(outcomes))
    except OSError as exc:
        _fail(f"gate: cannot write the JUnit file {target}: {exc.strerror or exc}")
    failed = sum(not o["passed"] for o in outcomes)
    typer.echo(f"{len(outcomes) - failed} of {len(outcomes)} rules passed; JUnit: {target}")
    raise typer.Exit(1 if failed else 0)


def _judge_config(backend: str, model: str | None, url: str | None):
    """The JudgeConfig of ``--judge`` (a backend name, or a ``module:Class`` / ``file.py:Class`` spec relative to
    the working directory); an unknown backend exits 2 with one line and a did-you-mean."""
    from pathlib import Path

    from pydantic import ValidationError

    from evalsuite.judge import JudgeConfig

    try:
        return JudgeConfig.model_validate({"backend": backend, "model": model, "url": url}, context={"base_dir": Path.cwd()})
    except ValidationError as exc:
        _fail(f"--judge: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")


def _one_line(message: str) -> str:
    """A message of several lines (a config error: a heading, then one line per bad key) as one line."""
    from curate.config import one_line

    return one_line(message)


def _fail(message: str) -> None:
    """Exit 2 with ``message`` as one line on stderr."""
    typer.secho(_one_line(message), fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _gate_unusable(message: str, junit: Path) -> None:
    """Exit 2: the JUnit file gets the error as its one testcase where it can be written (the run folder
    itself may be what is missing), and stderr one line."""
    from evalsuite.gate import junit_error

    line = _one_line(message)
    try:
        junit.write_text(junit_error(line))
    except OSError as exc:
        line += f" (and the JUnit file {junit} cannot be written: {exc.strerror or exc})"
    _fail(line)


def _run_folder(ref: str, workspace: str | None) -> str:
    """A run folder as given, or the output folder of run id ``ref`` in the workspace."""
    from pathlib import Path

    from evalsuite.compare import CompareError

    if Path(ref).exists() or not workspace:
        return ref
    from curate.workspace import Workspace, WorkspaceError

    try:
        row = Workspace(workspace, create=False).run(ref)
    except WorkspaceError as exc:
        raise CompareError(str(exc)) from None
    if not row or row["kind"] != "eval":
        raise CompareError(f"{ref}: no eval run of that id in {workspace}")
    return row["output_dir"]


if __name__ == "__main__":
    app()
