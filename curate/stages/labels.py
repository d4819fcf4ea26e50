"""Human labels as a pipeline stage: what people decided in the review app enters `curate run`.

Labels live in the workspace's ``labels`` table (written by the app), keyed by the record's content id,
so a label made on one run applies to the same record in every later run. Each annotator's latest label
counts; ``reject_when`` says how several annotators' verdicts combine.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import polars as pl
from pydantic import Field

from curate.frames import with_derived
from curate.schema import MESSAGES
from curate.stages import RecordStage, StageParams, register


@register
class HumanLabels(RecordStage):
    """Drop records people rejected, apply the edits they made.

    Params:
        annotators: whose labels count (default: everyone's).
        reject_when: ``any`` (one reject suffices) or ``majority`` (more rejects than accepts; a tie keeps).

    Reasons: ``human_rejected`` (the detail names the annotators who rejected).
    Scores: ``human_label`` (``accept``, ``reject`` or ``edited``; null for unlabelled records).

    A kept record with an edit gets the most recent edit among the counted annotators (``fixes`` gains
    ``human_edit``). Labels are read from the run's workspace when the run starts; a run with this stage is
    never served from cache, since the labels may have changed since the last run.
    """

    name = "human_labels"
    reasons = ("human_rejected",)
    score_columns = ("human_label",)
    rewrites_messages = True
    volatile = True  # its input is the labels table, not only the config

    class Params(StageParams):
        """Parameters of ``human_labels``."""

        annotators: list[str] | None = Field(default=None, description="whose labels count (annotator names from the review app); null: everyone's")
        reject_when: Literal["any", "majority"] = Field("majority", description=(
            "any: one reject among the counted annotators drops the record; majority: more rejects than accepts (a tie keeps)"))

    def setup(self, workspace: Any) -> None:
        """Read the workspace's current labels (the counted annotators' latest) and decide per record id:
        reject (by ``reject_when``), edited (the latest accepted edit) or accept."""
        labels = workspace.current_labels(self.params.annotators)
        self.decisions: dict[str, tuple[str, str | None, list | None]] = {}
        for record_id, group in labels.group_by("record_id"):
            rejects = group.filter(pl.col("verdict") == "reject")
            n_rej, n_acc = rejects.height, group.height - rejects.height
            reject = n_rej > 0 if self.params.reject_when == "any" else n_rej > n_acc
            edits = group.filter(pl.col("edit").is_not_null() & (pl.col("verdict") == "accept")).sort("created")
            edit = json.loads(edits["edit"][-1]) if edits.height else None
            self.decisions[record_id[0]] = ("reject" if reject else "edited" if edit else "accept",
                                            ", ".join(sorted(rejects["annotator"])) if reject else None, edit)

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score ``human_label`` per record; rejects as ``human_rejected`` naming the annotators; edited records get
        the edited messages (derived columns recomputed) and ``human_edit`` in ``fixes``."""
        decisions = getattr(self, "decisions", {})
        found = [decisions.get(i) for i in batch["id"].to_list()]
        batch = batch.with_columns(
            human_label=pl.Series([d[0] if d else None for d in found], dtype=pl.Utf8),
            reason=pl.Series(["human_rejected" if d and d[0] == "reject" else None for d in found], dtype=pl.Utf8),
            detail=pl.Series([f"rejected by {d[1]}" if d and d[0] == "reject" else None for d in found], dtype=pl.Utf8),
        )
        rows = [i for i, d in enumerate(found) if d and d[0] == "edited"]
        if not rows:
            return batch
        convs = [found[i][2] for i in rows]
        sub = with_derived(batch[rows].select("messages", "fixes").with_columns(
            messages=pl.Series(convs, dtype=MESSAGES),
            fixes=pl.col("fixes").list.concat(pl.lit(["human_edit"], dtype=pl.List(pl.Utf8))),
        ))
        new = {}
        for col in ("messages", "fixes", "prompt_text", "response_text", "n_chars"):
            values = batch[col].to_list()
            for row, v in zip(rows, sub[col].to_list()):
                values[row] = v
            new[col] = pl.Series(values, dtype=batch.schema[col])
        return batch.with_columns(**new)
