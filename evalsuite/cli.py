"""`evalsuite` command line: a thin shell over :mod:`evalsuite.runner`."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, help="evaluation: run a suite on a model, compare two runs, gate a run in CI")


@app.callback()
def main() -> None:
    """Subcommands keep their names (`evalsuite run ...`)."""


@app.command()
def run(
    suite: str = typer.Option(..., "--suite", help="suite YAML (see evalsuite/suite.py)"),
    model: str = typer.Option("embedded", "--model", help="embedded (SmolLM2), a local path or a hub id, or a merged model"),
    adapter: str = typer.Option(None, "--adapter", help="a peft adapter folder on top of --model (train run's adapter/)"),
    out: str = typer.Option(None, "--out", help="output folder (default: evals/<run id> next to the suite)"),
    workspace: str = typer.Option(None, "--workspace", help="the workspace folder to register the run in"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Generate for every task, score every metric; write examples.parquet and results.json.

    Exit codes: 0 done; 2 invalid suite; 1 failure."""
    from evalsuite.runner import headline, run_suite
    from evalsuite.suite import SuiteError, load_suite

    from curate.workspace import WorkspaceError, check_workspace

    try:
        cfg = load_suite(suite)
        if workspace:
            check_workspace(workspace, create=True)  # before any generation: a bad path costs nothing
    except (SuiteError, WorkspaceError) as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    try:
        results = run_suite(cfg, model=model, adapter=adapter, out_dir=out, workspace=workspace, device=device)
    except ValueError as exc:
        typer.secho(f"evalsuite run failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    for key, value in headline(results).items():
        typer.echo(f"{key:40} {value:.4f}")
    typer.echo(f"results: {results['output_dir']}/results.json")


@app.command("compare")
def compare_cmd(
    base: str = typer.Argument(..., help="the base model's run: an `evalsuite run` folder, or a run id with --workspace"),
    fine_tune: str = typer.Argument(..., help="the fine-tune's run, likewise"),
    out: str = typer.Option(None, "--out", help="folder for compare.json / .md / .html (default: the fine-tune's run folder)"),
    workspace: str = typer.Option(None, "--workspace", help="resolve run ids through this workspace folder"),
    regressions: int = typer.Option(5, "--regressions", help="examples that regressed most, per task"),
    judge: str = typer.Option("none", "--judge", help="pairwise LLM judge over the two runs' outputs: none, local or openai"),
    judge_model: str = typer.Option(None, "--judge-model", help="local: embedded (default), a path or hub id; openai: the model name"),
    judge_url: str = typer.Option(None, "--judge-url", help="openai: base URL up to /v1 (or EVALSUITE_JUDGE_URL); the key is read from OPENAI_API_KEY"),
) -> None:
    """Per metric: both values, delta, paired bootstrap 95% CI (McNemar for exact match), verdict; with
    --judge, a pairwise preference per example in both orders and the fine-tune's win rate.

    Exit codes: 0 compared; 2 the runs cannot be compared (other prompts, template or generation settings)
    or the judge is misconfigured."""
    import json
    from pathlib import Path

    from evalsuite.compare import CompareError, compare, to_html, to_markdown
    from evalsuite.judge import JudgeConfig, JudgeError, make_judge

    if judge not in ("none", "local", "openai"):
        typer.secho(f"--judge must be none, local or openai, not {judge!r}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        judge_backend = None if judge == "none" else make_judge(JudgeConfig(backend=judge, model=judge_model, url=judge_url))
        paths = [_run_folder(x, workspace) for x in (base, fine_tune)]
        result = compare(paths[0], paths[1], regressions=regressions, judge=judge_backend)
    except (CompareError, JudgeError) as exc:
        typer.secho(f"cannot compare: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    folder = Path(out or paths[1])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    (folder / "compare.md").write_text(markdown)
    (folder / "compare.html").write_text(to_html(result))
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
    """Check every rule; exit 0 when all pass, 1 when one fails, 2 when the rules or runs are unusable."""
    from pathlib import Path

    from evalsuite.compare import CompareError
    from evalsuite.gate import GateError, check, junit_xml, load_rules

    try:
        folder = _run_folder(results, workspace)
        outcomes = check(folder, load_rules(rules), _run_folder(baseline, workspace) if baseline else None)
    except (GateError, CompareError) as exc:
        typer.secho(f"gate: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    target = Path(junit or Path(folder) / "gate.xml")
    target.write_text(junit_xml(outcomes))
    for o in outcomes:
        typer.secho(o["message"], fg=typer.colors.GREEN if o["passed"] else typer.colors.RED)
    failed = sum(not o["passed"] for o in outcomes)
    typer.echo(f"{len(outcomes) - failed} of {len(outcomes)} rules passed; JUnit: {target}")
    raise typer.Exit(1 if failed else 0)


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
