"""What a finished (or failed) `train run` leaves behind beside the adapter: the loss plot and the run's
row in the workspace (``runs`` with kind 'train', its curve in ``train_metrics``), where the app
and evalsuite find it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

CURVE_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm", "mean_token_accuracy", "eval_mean_token_accuracy")


def metric_rows(log_history: list[dict[str, Any]]) -> list[tuple[int, float | None, str, float]]:
    """(step, epoch, name, value) for every numeric curve value in the trainer's log history."""
    rows = []
    for entry in log_history:
        for key in CURVE_KEYS:
            value = entry.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                rows.append((int(entry.get("step", 0)), entry.get("epoch"), key, float(value)))
    return rows


def plot_losses(log_history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """``loss.png``: training loss per step and eval loss at each evaluation. None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", lw=1.5)
        best = min(evals, key=lambda x: x[1])
        ax.annotate(f"best {best[1]:.3f}", best, textcoords="offset points", xytext=(5, 8))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def register_start(workspace: Path, run_id: str, name: str, config: dict, fingerprint: str, output_dir: Path, resumed: bool) -> None:
    """The run's row, status 'running' (a resumed run keeps its row and its curve so far)."""
    from curate.workspace import Workspace

    with Workspace(workspace) as ws:
        if resumed and ws.run(run_id):
            ws.mark_running(run_id)
        else:
            ws.begin_run(run_id, "train", name, config, fingerprint, str(output_dir)).close()


def register_finish(workspace: Path, run_id: str, status: str, summary: dict | None, log_history: list[dict]) -> None:
    """The whole curve into the run's own data file (one transaction), then status and summary (the
    manifest's headline figures) in the registry."""
    from curate.workspace import Workspace

    with Workspace(workspace) as ws:
        if ws.run(run_id) is None:  # registered in another workspace, or the row was removed: register it now
            ws.begin_run(run_id, "train", run_id, {}, run_id, "").close()
        with ws.run_data(run_id, write=True) as store:
            store.con.execute("BEGIN")
            store.con.execute("DELETE FROM train_metrics WHERE run_id = ?", [run_id])
            rows = metric_rows(log_history)
            if rows:
                store.con.executemany("INSERT INTO train_metrics VALUES (?, ?, ?, ?, ?)", [(run_id, *r) for r in rows])
            store.con.execute("COMMIT")
        ws.finish_run(run_id, status, summary)
