"""What a run shows while it works and says at the end: progress bars with examples/s on a terminal, and
where the time went (``timing`` in results.json)."""

from __future__ import annotations

import contextlib
import time
from typing import Any


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(enabled: bool | None, total: int, desc: str):
    """A tqdm bar on stderr (examples and examples/s) used as a context manager; a no-op when ``enabled`` is
    False, or None and stderr is not a terminal (CI logs stay clean)."""
    import sys

    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=" ex", file=sys.stderr, leave=True)


class Clock:
    """Where a run's time went: seconds per step, nested by name (``step("tasks", "alpaca", "generate")``),
    plus notes (example counts). :meth:`timing` is what results.json stores as ``timing``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.tree: dict[str, Any] = {}

    @contextlib.contextmanager
    def step(self, *path: str):
        """Add the seconds the ``with`` block takes to ``path`` (its last part gets an ``_s`` suffix)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            node = self.tree
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[f"{path[-1]}_s"] = node.get(f"{path[-1]}_s", 0.0) + time.perf_counter() - start

    def note(self, task: str, **values: Any) -> None:
        """Record ``values`` (counts, not seconds) under ``tasks/<task>``."""
        self.tree.setdefault("tasks", {}).setdefault(task, {}).update(values)

    def timing(self) -> dict[str, Any]:
        """The tree, rounded to milliseconds, with ``total_s`` (the clock's age)."""

        def rounded(node: Any) -> Any:
            return {k: rounded(v) for k, v in node.items()} if isinstance(node, dict) else round(node, 3) if isinstance(node, float) else node

        return {**rounded(self.tree), "total_s": round(time.perf_counter() - self.started, 3)}


def format_timing(timing: dict[str, Any]) -> str:
    """Where the time went, one step a line (what `evalsuite run` and `score` print at the end)."""
    lines = [f"time: {timing.get('total_s', 0):.1f} s in all"]
    for key in ("connect_s", "load_model_s"):
        if key in timing:
            lines.append(f"  {key[:-2].replace('_', ' '):34} {timing[key]:8.2f} s")
    for name, t in timing.get("tasks", {}).items():
        for step in ("read_outputs_s", "generate_s", "total_s"):
            if step in t:
                rate = f"  ({t['examples'] / t[step]:.2f} examples/s)" if step == "generate_s" and t.get("examples") and t[step] > 0 else ""
                if step == "generate_s" and "from_cache" in t:
                    rate += f", {t['from_server']} from the server, {t['from_cache']} from the cache"
                lines.append(f"  {name + ': ' + step[:-2].replace('_', ' '):34} {t[step]:8.2f} s{rate}")
        for metric, s in t.get("score", {}).items():
            lines.append(f"  {name + ': score ' + metric.removesuffix('_s'):34} {s:8.2f} s")
    if "write_s" in timing:
        lines.append(f"  {'write':34} {timing['write_s']:8.2f} s")
    return "\n".join(lines)
