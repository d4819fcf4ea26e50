"""`evalsuite` command line: a thin shell over :mod:`evalsuite.runner`."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, help="evaluation: run a suite on a model (compare and gates: issue #5, to come)")


@app.callback()
def main() -> None:
    """Subcommands keep their names (`evalsuite run ...`)."""


@app.command()
def run(
    suite: str = typer.Option(..., "--suite", help="suite YAML (see evalsuite/suite.py)"),
    model: str = typer.Option("embedded", "--model", help="embedded (SmolLM2), a local path or a hub id, or a merged model"),
    adapter: str = typer.Option(None, "--adapter", help="a peft adapter folder on top of --model (train run's adapter/)"),
    out: str = typer.Option(None, "--out", help="output folder (default: evals/<run id> next to the suite)"),
    workspace: str = typer.Option(None, "--workspace", help="DuckDB workspace to register the run in"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Generate for every task, score every metric; write examples.parquet and results.json.

    Exit codes: 0 done; 2 invalid suite; 1 failure."""
    from evalsuite.runner import headline, run_suite
    from evalsuite.suite import SuiteError, load_suite

    try:
        cfg = load_suite(suite)
    except SuiteError as exc:
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


if __name__ == "__main__":
    app()
