"""`train` command line: a thin shell over :func:`train.trainer.run_training`."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, help="QLoRA / LoRA / DoRA training over curate's output (issue #4: first slice)")


@app.callback()
def main() -> None:
    """Subcommands keep their names (`train run CONFIG`) even while there is only one."""


@app.command()
def run(config: str = typer.Argument(..., help="YAML config (see train/config.py)")) -> None:
    """Train an adapter; writes adapter/, manifest.json, metrics.jsonl and rejected.jsonl to the run folder."""
    from train.config import TrainConfigError, load_train_config

    from train.trainer import check_inputs, run_training

    try:
        cfg = load_train_config(config)
        check_inputs(cfg)
    except TrainConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None

    try:
        manifest = run_training(cfg)
    except ValueError as exc:
        typer.secho(f"train run failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    d = manifest["data"]
    losses = manifest["train_loss"]
    typer.echo(
        f"trained {cfg.name}: {d['train_examples']} examples ({d['rejected']} rejected, {d['truncated']} truncated), "
        f"{d['trainable_share']:.0%} of tokens trained; loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else f"trained {cfg.name}"
    )
    typer.echo(f"adapter: {cfg.output_path / 'adapter'}")


if __name__ == "__main__":
    app()
