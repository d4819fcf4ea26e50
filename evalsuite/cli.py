"""`evalsuite` command line. Not implemented yet: see issue #5."""

import typer

app = typer.Typer(add_completion=False, help="evaluation, compare and CI gates (not implemented yet: issue #5)")


@app.command()
def run(config: str = typer.Argument(..., help="YAML config")) -> None:
    """Not implemented yet (issue #5)."""
    typer.secho("evalsuite run is not implemented yet (issue #5)", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


if __name__ == "__main__":
    app()
