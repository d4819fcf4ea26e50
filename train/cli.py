"""`train` command line. Not implemented yet: see issue #4."""

import typer

app = typer.Typer(add_completion=False, help="QLoRA training over curate's output (not implemented yet: issue #4)")


@app.command()
def run(config: str = typer.Argument(..., help="YAML config")) -> None:
    """Not implemented yet (issue #4)."""
    typer.secho("train run is not implemented yet (issue #4)", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


if __name__ == "__main__":
    app()
