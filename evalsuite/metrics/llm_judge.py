"""The LLM-as-judge rubric as a metric (the judge itself is :mod:`evalsuite.judge`): a mean over the examples
whose verdict parsed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evalsuite.metrics.base import MetricResult, register


JUDGE_KEYS = ("judge_score", "judge_helpfulness", "judge_accuracy", "judge_coherence")


@register("judge", keys=JUDGE_KEYS, needs_prompts=True)
def judge(predictions: Sequence[str], references: Sequence[str], *, prompts: Sequence[Any], **options: Any) -> dict[str, MetricResult]:
    """The LLM-as-judge rubric (:func:`evalsuite.judge.rubric`); ``options`` are a
    :class:`evalsuite.judge.JudgeConfig` (backend, model, url, ...). ``judge_score`` is the mean of the three
    criteria per example (None where one is unparseable); each criterion's value is its mean over the
    examples where it parsed. The judge's reply, scores and rationales go to the examples as annotations."""
    from evalsuite.judge import CRITERIA, JudgeConfig, make_judge, rubric

    out = rubric(make_judge(JudgeConfig(**options)), prompts, predictions, references)
    summary, records = out["summary"], out["records"]
    details = {"judge": out["judge"], "n": summary["n"], "failed": summary["failed"]}
    annotations = [{"judge": {c: r[c] for c in CRITERIA} | {"rationales": r["rationales"], "raw": r["raw"], "error": r["error"]}}
                   for r in records]
    results = {}
    for key, field_name in zip(JUDGE_KEYS, ("judge_score", *CRITERIA)):
        value = summary[field_name]
        results[key] = MetricResult(
            key, float("nan") if value is None else value, [r[field_name] for r in records],
            {**details, "unparseable": summary[f"{field_name}_unparseable"], "scored": sum(r[field_name] is not None for r in records)},
            annotations if key == "judge_score" else None,
        )
    return results
