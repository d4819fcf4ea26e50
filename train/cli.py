"""`train` command line: a thin shell over :func:`train.trainer.run_training`."""

from __future__ import annotations

import typer

from curate.confighelp import config_flag_callbacks
from curate.quiet import quiet_third_party

app = typer.Typer(add_completion=False, help="QLoRA / LoRA / DoRA training over curate's output")
quiet_third_party()  # only messages a user cannot act on (curate/quiet.py says why each is harmless)


@app.callback()
def main() -> None:
    """Subcommands keep their names (`train run CONFIG`) even while there is only one."""


def _config_model():
    from train.config import TrainConfig

    return TrainConfig


_print_config_help, _print_config_schema = config_flag_callbacks(_config_model, "train run CONFIG: every key of the YAML config")


@app.command()
def run(
    config: str = typer.Argument(..., help="YAML config (`--help-config` lists every key)"),
    fresh: bool = typer.Option(False, "--fresh", help="discard checkpoints of an earlier run in the run folder instead of resuming"),
    help_config: bool = typer.Option(False, "--help-config", is_eager=True, callback=_print_config_help,
                                     help="print every config key (nested) with type, default and description, and exit"),
    schema: bool = typer.Option(False, "--schema", is_eager=True, callback=_print_config_schema,
                                help="print the config's JSON Schema (for editors and validators) and exit"),
) -> None:
    """Train an adapter. Writes adapter/, manifest.json, metrics.jsonl, samples.jsonl, loss.png and
    rejected.jsonl to the run folder and a row to the workspace; resumes after a kill.

    Exit codes: 0 trained; 2 invalid config or a failed pre-flight check (nothing trained); 1 failure."""
    from train.config import TrainConfigError, load_train_config
    from train.preflight import PreflightError
    from train.trainer import check_inputs, run_training

    try:
        cfg = load_train_config(config)
        check_inputs(cfg)
    except TrainConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None

    try:
        manifest = run_training(cfg, fresh=fresh)
    except PreflightError as exc:
        typer.secho(f"pre-flight: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        typer.secho(f"train run failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    d = manifest["data"]
    losses = manifest["train_loss"]
    # one step's loss is one batch's: on a short run the first and the last differ mostly by how hard their
    # batches were, so the line shows the eval losses (one fixed set, comparable) and the train loss only without them
    evals = manifest["eval_loss"] or []
    if evals:
        trend = f"; eval loss {' -> '.join(f'{x:.3f}' for x in evals)}"
    elif losses:
        k = max(1, min(3, len(losses) // 3))
        trend = f"; train loss {sum(losses[:k]) / k:.3f} -> {sum(losses[-k:]) / k:.3f} (mean of the first and last {k} steps)"
    else:
        trend = ""
    typer.echo(
        f"trained {cfg.name}: {d['train_examples']} examples ({d['rejected']} rejected, {d['truncated']} truncated), "
        f"{d['trainable_share']:.0%} of tokens trained{trend}"
    )
    if manifest["resumed_from"]:
        typer.echo(f"resumed from {manifest['resumed_from']}")
    if manifest["best_eval_loss"] is not None:
        stop = " (stopped early)" if manifest["stopped_early"] else ""
        typer.echo(f"best eval loss {manifest['best_eval_loss']:.4f} at {manifest['best_checkpoint']}{stop}; restored")
    typer.echo(f"adapter: {cfg.output_path / 'adapter'}")


if __name__ == "__main__":
    app()
