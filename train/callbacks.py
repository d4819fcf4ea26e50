"""transformers ``TrainerCallback``s that `train run` adds to TRL's trainer.

- :class:`LiveMetrics` appends every log row to ``metrics.jsonl`` as it happens (a run can be watched;
  the file is rewritten from the trainer state at the end, so a resumed run has one clean history);
- :class:`SampleGenerations` generates greedily from a few fixed prompts every N steps and logs the
  outputs next to the loss (a loss that falls while answers turn to mush is visible at once);
- :class:`Projection` measures the first steps and logs the projected wall time and cost of the run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class LiveMetrics(TrainerCallback):
    """Appends every logged row (loss, learning rate, eval loss...) with its step and epoch to ``path`` as
    JSON lines (metrics.jsonl), leaving out the ``hidden`` keys; the main process only."""
    def __init__(self, path: Path, hidden: tuple[str, ...] = ()):
        self.path, self.hidden = path, hidden

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Append the row just logged to the metrics file, stamped with wall time."""
        if state.log_history:  # wall time on each row: throughput over time, from the metrics alone
            state.log_history[-1].setdefault("wall_time", round(time.time(), 3))
        if logs and state.is_world_process_zero:
            with open(self.path, "a") as fh:
                row = {k: v for k, v in logs.items() if k not in self.hidden}
                fh.write(json.dumps({**row, "step": state.global_step, "epoch": state.epoch}) + "\n")


class SampleGenerations(TrainerCallback):
    """Greedy generations from ``prompts`` (lists of chat messages ending before an assistant turn) before
    the first step, every ``every`` steps and at the end, appended to ``path`` and to the trainer's log."""

    def __init__(self, tokenizer: Any, prompts: list[list[dict[str, str]]], every: int, max_new_tokens: int, path: Path):
        self.tokenizer, self.prompts, self.every = tokenizer, prompts, every
        self.max_new_tokens, self.path = max_new_tokens, path
        self.last_step = -1

    def generate(self, model: Any) -> list[dict[str, str]]:
        """``{prompt, output}`` per sample prompt: ``model``'s greedy answer, one batch."""
        from chat.generate import generate  # the one batched, greedy generation path

        outputs = generate(model, self.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens, batch_size=len(self.prompts))
        return [{"prompt": m[-1]["content"], "output": o} for m, o in zip(self.prompts, outputs)]

    def _log(self, state, model) -> None:
        if not self.prompts or state.global_step == self.last_step or not state.is_world_process_zero:
            return
        self.last_step = state.global_step
        samples = self.generate(model)
        with open(self.path, "a") as fh:
            for s in samples:
                fh.write(json.dumps({"step": state.global_step, **s}) + "\n")
        state.log_history.append({"step": state.global_step, "samples": samples})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Generate before the first step: the base model's (or the resumed checkpoint's) answers."""
        self._log(state, model)  # the base model's answers (or the resumed checkpoint's), for comparison

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """Generate every ``every`` steps."""
        if state.global_step % self.every == 0:
            self._log(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """Generate once more with the final (best, when restored) weights."""
        self._log(state, model)


class Projection(TrainerCallback):
    """After ``after`` optimizer steps (timed from the end of the first, which carries warm-up costs),
    log and print the projected total wall time and, at ``price_per_hour``, the cost."""

    def __init__(self, after: int = 3, price_per_hour: float = 0.0):
        self.after, self.price = after, price_per_hour
        self.t_first: float | None = None
        self.step_first = 0
        self.projection: dict[str, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        """Time the steps after the first; at ``after`` steps (or at the last step of a shorter run), log and print
        the projection."""
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first, self.step_first = now, state.global_step
            return
        done = state.global_step - self.step_first
        if done == self.after or (not self.projection and state.global_step == state.max_steps):
            per_step = (now - self.t_first) / done
            remaining = (state.max_steps - state.global_step) * per_step
            total = remaining + (now - self.t_first) + per_step * self.step_first
            self.projection = {
                "seconds_per_step": round(per_step, 4), "projected_total_s": round(total, 1),
                "projected_cost": round(total / 3600 * self.price, 4),
            }
            state.log_history.append({"step": state.global_step, **self.projection})
            cost = f", ${self.projection['projected_cost']:.2f} at ${self.price:g}/GPU-hour" if self.price else ""
            print(f"projection: {per_step:.2f} s/step x {state.max_steps} steps = {total / 60:.1f} min{cost}")
