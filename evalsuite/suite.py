"""The typed eval suite: tasks (an eval set in any shape curate reads, metrics, generation settings).

```yaml
name: alpaca-holdout
tasks:
  - name: alpaca
    path: ../out/quickstart/data/test.jsonl        # curate's test split, or any file curate reads
    limit: 200
    metrics: [rouge, bleu, chrf, exact_match_normalized, perplexity]
    # a metric with options: {name: exact_match, extract: {regex: "answer is (\\d+)"}}
  - name: mmlu-geography                          # a forgetting probe: acc / acc_norm by log-likelihood
    kind: mmlu
    path: ../../shared/data/mmlu/high_school_geography_test.csv
    limit: 100
  - name: c4                                      # general text: the cheap forgetting signal
    kind: text
    path: ../../shared/data/pretrain_text/c4_demo.jsonl
    limit: 50
    window: 1024
generation: {max_new_tokens: 256, batch_size: 16}  # greedy unless sample: true (then seeded)
```
Each record's prompt is every turn before its last assistant turn; the reference is that turn.
Relative paths are relative to the suite file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curate.config import FileConfig, read_yaml, validate


class SuiteError(ValueError):
    """An invalid suite; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricSpec(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)
    sample: bool = False  # greedy by default: an eval should not change between runs
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    seed: int = 0


class TaskConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: str
    # generate: answer each prompt, score with `metrics`; a probe format: log-likelihood multiple choice
    # (acc, acc_norm) as lm-evaluation-harness scores it, the forgetting check (evalsuite/probes.py)
    # text: the sliding-window perplexity of plain text (`text_field` of each record), the cheap
    # forgetting signal between runs on a general-text slice the user names
    kind: Literal["generate", "mmlu", "openbookqa", "truthfulqa_mc1", "text"] = "generate"
    text_field: str = "text"
    window: int | None = Field(default=None, ge=2, description="text: tokens per window (default: the model's context)")
    stride: int = Field(512, ge=1, description="text: tokens between window starts")
    shape: Literal["auto", "alpaca", "dolly", "sharegpt", "openai", "prompt_completion", "mapped"] = "auto"
    mapping: dict[str, str | list[str]] | None = None
    limit: int | None = Field(default=None, ge=1)
    metrics: list[MetricSpec] = Field(default_factory=list)
    generation: GenerationConfig | None = None  # default: the suite's

    @model_validator(mode="after")
    def _metrics_for_generation(self) -> "TaskConfig":
        if self.kind == "generate" and not self.metrics:
            raise ValueError("a generate task needs at least one metric")
        if self.kind != "generate" and self.metrics:
            raise ValueError(f"a {self.kind} task scores itself (acc/acc_norm, or text_perplexity): leave `metrics` out")
        return self

    @field_validator("metrics", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        """``metrics: [rouge, {name: exact_match, extract: {...}}]``: a bare name, or a name with options."""
        out = []
        for m in v or []:
            if isinstance(m, str):
                out.append({"name": m})
            elif isinstance(m, dict) and "name" in m and "options" not in m:
                out.append({"name": m["name"], "options": {k: x for k, x in m.items() if k != "name"}})
            else:
                out.append(m)
        return out

    @field_validator("metrics")
    @classmethod
    def _known(cls, v: list[MetricSpec]) -> list[MetricSpec]:
        from evalsuite.metrics import get_metric

        for m in v:
            get_metric(m.name)  # UnknownMetric (a ValueError) lists the known names
        return v


class SuiteConfig(FileConfig):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    tasks: list[TaskConfig] = Field(min_length=1)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)


def load_suite(path: str | Path) -> SuiteConfig:
    """Read and validate a suite YAML; SuiteError names the file and every bad key."""
    return validate(SuiteConfig, read_yaml(path, SuiteError), Path(path).parent, str(path), SuiteError)
