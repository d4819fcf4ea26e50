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
  - name: prefs                                   # preference accuracy: chosen vs rejected by log-likelihood
    kind: preference
    path: ../out/quickstart/data/preference/test.jsonl   # any preference layout curate reads
  - name: tools                                   # tool calls: each assistant tool-call turn is an example
    path: ../../shared/data/chat_llamafactory/glaive_toolcall_en_demo.json
    reference_turn: tool_call
    metrics: [tool_call_validity]
generation: {max_new_tokens: 256, batch_size: 16}  # greedy unless sample: true (then seeded)
plugins: [my_metrics]                              # your own metrics (evalsuite/plugins.py), imported first
```
Each record's prompt is every turn before its last assistant turn; the reference is that turn (with
``reference_turn: tool_call``: every assistant turn that calls a tool, and the call). A record's tools go with
its examples. Relative paths are relative to the suite file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from curate.config import FileConfig, check_shape, shape_for_mapping, context_dir, import_plugins, read_yaml, validate
from curate.registry import did_you_mean, is_spec
from evalsuite.serving import ServerConfig


TOOL_CHOICES = ("auto", "required", "none", "reference")
REFERENCE_TURNS = ("last", "tool_call")
OWN_KINDS = ("generate", "text", "preference")  # the task kinds the runner knows itself (the rest are probe kinds)
# the metric a kind scores its own items with: no generate task can name it (it does not score outputs)
KIND_METRICS = {"text": "text_perplexity", "preference": "preference"}


class SuiteError(ValueError):
    """An invalid suite; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricSpec(_Strict):
    """One metric of a task: a registered name and its options (written as ``rouge`` or ``{name: ..., option: ...}``)."""

    name: str = Field(description="a registered metric: rouge, bleu, chrf, exact_match, exact_match_normalized, perplexity, ... or one a plugin registers")
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "the metric's options, e.g. extract: {regex: \"answer is (\\d+)\"} to score only the extracted answer; "
        "written beside name in YAML"))


class GenerationConfig(_Strict):
    """How answers are generated: length, batching, greedy or sampled."""

    max_new_tokens: int = Field(256, ge=1, description="the longest answer, in tokens; answers cut here are scored as they are")
    batch_size: int = Field(16, ge=1, description="prompts per generate call (left-padded); lower it when memory is short")
    sample: bool = Field(False, description="false: greedy, so an eval does not change between runs; true: sample with temperature / top_p, seeded")
    temperature: float = Field(0.7, gt=0, description="sample: softmax temperature (lower: closer to greedy)")
    top_p: float = Field(0.9, gt=0, le=1, description="sample: nucleus sampling's probability mass")
    seed: int = Field(0, description="sample: the seed, so a sampled run repeats")
    tool_choice: str | None = Field(default=None, description=(
        "examples that offer tools, on a server only: the request's tool_choice (auto, required, none), or "
        "`reference` to force each example's reference tool (servers that honour it constrain the call to that "
        "tool: tool_call_args_valid then measures the arguments alone); null: not sent. A local model has no "
        "tool_choice: a local run refuses it"))

    def recorded(self) -> dict[str, Any]:
        """The settings as a run records them (results.json ``generation``, which compare holds equal):
        ``tool_choice`` only when set, so a run that leaves it out compares with runs made before it existed."""
        return self.model_dump(exclude={"tool_choice"} if self.tool_choice is None else None)

    @field_validator("tool_choice")
    @classmethod
    def _known_tool_choice(cls, v: str | None) -> str | None:
        if v is not None and v not in TOOL_CHOICES:
            raise ValueError(f"tool_choice must be one of {', '.join(TOOL_CHOICES)} (or null), not {v!r}")
        return v


class TaskConfig(_Strict):
    """One task of a suite: an eval file and how it is scored."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description=(
        "the task's name: letters, digits, _ . -; result keys are <task>/<metric key> (what gate rules name)"))
    path: str = Field(description="the eval file (any file curate reads, or a probe's CSV/JSONL), relative to the suite file")
    kind: str = Field("generate", description=(
        "generate: answer each prompt, score with `metrics`; text: the sliding-window perplexity of plain text "
        "(`text_field` of each record), the cheap forgetting signal on a general-text slice; or a probe kind "
        "(evalsuite/probes.py: mmlu, arc_easy, arc_challenge, hellaswag, piqa, boolq, winogrande, lambada, ... and "
        "any a plugin registers): the file's items scored by log-likelihood as lm-evaluation-harness scores them; "
        "preference: the file's preference pairs (any layout curate reads) scored by the `preference` metric: "
        "how often the model's log-likelihood of the chosen completion exceeds the rejected one's"))
    text_field: str = Field("text", description="text: the field of each record holding the plain text")
    window: int | None = Field(default=None, ge=2, description="text: tokens per window (default: the model's context)")
    stride: int = Field(512, ge=1, description="text: tokens between window starts")
    batch_size: int = Field(4, ge=1, description=(
        "preference: sequences per forward pass (a pair is two: the chosen and the rejected completion); lower "
        "it when memory is short. The numbers do not change with it beyond float rounding"))
    shape: str = Field("auto", description=(
        "generate and preference: the record layout as in a curate input; auto detects it; mapped needs `mapping` "
        "(a mapping implies it; generate only); or a registered shape (llamafactory_preference, trl_preference, "
        "implicit_preference, ...)"))
    reference_turn: str = Field("last", description=(
        "generate: which assistant turn of a record is the reference. last: its last assistant turn, the prompt "
        "every turn before it; tool_call: every assistant turn that calls a tool is an example, its prompt the "
        "turns before it, its reference the call (scored by tool_call_validity); records without such a turn, or "
        "without tools, are skipped with a reason. Either way a record's tools go with its examples (to the chat "
        "template, or to the server)"))
    mapping: dict[str, str | list[str]] | None = Field(default=None, description=(
        "generate: role -> column(s) for shape mapped, e.g. {user: question, assistant: answer}; giving a mapping "
        "implies shape mapped"))
    references_field: str | None = Field(default=None, description=(
        "generate: the field of each record holding its accepted answers, a string or a list of strings (TriviaQA "
        "`aliases`, NQ-open `answer`; a dotted path reaches a nested field: `answers.text`); every text metric "
        "scores against the whole list (exact/numeric match: any one; BLEU/chrF/ROUGE: multi-reference). The "
        "prompt is the record's turns before its last assistant turn, or all of them when it has none"))
    limit: int | None = Field(default=None, ge=1, description=(
        "score the first N records only (a preference task: the first N pairs; a quicker, noisier run); null: all"))
    metrics: list[MetricSpec] = Field(default_factory=list, description=(
        "generate: the metrics, each a name or {name: ..., options}; at least one. Other kinds score themselves: leave it out"),
        # the schema of what a suite file holds (a bare name, or a name with its options beside it), not MetricSpec's
        json_schema_extra={"items": {"anyOf": [
            {"type": "string", "description": "a registered metric's name"},
            {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}},
             "description": "{name: METRIC, OPTION: value, ...}, e.g. {name: exact_match, extract: {regex: ...}}"}]}})
    generation: GenerationConfig | None = Field(default=None, description="generate: settings for this task; null: the suite's `generation`")
    predictions: str | None = Field(default=None, description=(
        "`evalsuite score`: this task's outputs made elsewhere (a .jsonl with `output` and `idx` or `prompt` per line, "
        "or a text file with one output per line), relative to the suite file; `evalsuite run` ignores it"))

    def identity(self) -> dict[str, Any]:
        """The task's settings as its run id hashes them: the keys added later (``batch_size``,
        ``reference_turn``, ``generation.tool_choice``) only when they differ from their defaults, so a suite
        that does not use them keeps the run ids it had."""
        out = self.model_dump()
        for key, default in (("batch_size", 4), ("reference_turn", "last")):
            if out[key] == default:
                del out[key]
        if self.generation is not None:
            out["generation"] = self.generation.recorded()
        return out

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str, info: ValidationInfo) -> str:
        """"generate", "text", a registered probe kind or a ``module:loader`` spec; an unknown one names the
        close ones and all."""
        from evalsuite.probes import PROBE_REGISTRY, PROBES, UnknownProbe

        if is_spec(v):
            return PROBE_REGISTRY.lookup(v, context_dir(info))[0]
        if v in OWN_KINDS or v in PROBE_REGISTRY:
            return v
        raise UnknownProbe(f"unknown task kind {v!r}{did_you_mean(v, [*OWN_KINDS, *PROBES])}; "
                           f"kinds: {', '.join(OWN_KINDS)}, {', '.join(sorted(PROBES))}")

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, value: str, info: ValidationInfo) -> str:
        return check_shape(value, info)

    @field_validator("reference_turn")
    @classmethod
    def _known_reference_turn(cls, v: str) -> str:
        if v not in REFERENCE_TURNS:
            raise ValueError(f"reference_turn must be one of {', '.join(REFERENCE_TURNS)}, not {v!r}")
        return v

    @model_validator(mode="after")
    def _mapping_means_mapped(self):
        self.shape = shape_for_mapping(self.shape, self.mapping)
        return self

    @model_validator(mode="after")
    def _metrics_for_generation(self) -> TaskConfig:
        if self.kind == "generate" and not self.metrics:
            raise ValueError("a generate task needs at least one metric")
        if self.kind != "generate" and self.metrics:
            from evalsuite.probes import PROBES

            own = KIND_METRICS.get(self.kind) or (PROBES[self.kind].metric if self.kind in PROBES else "its probe's metric")
            raise ValueError(f"a {self.kind} task scores itself (with {own}): leave `metrics` out")
        return self

    @field_validator("metrics")
    @classmethod
    def _extractors_known(cls, v: list[MetricSpec]) -> list[MetricSpec]:
        """A metric's ``extract:`` is checked before any work: a bad spec, a missing regex group or an unknown
        extractor name (with a did-you-mean) is a suite error, not a failure after generation."""
        from evalsuite.metrics.extract import make_extractor

        for m in v:
            if m.options.get("extract"):
                make_extractor(m.options["extract"])
        return v

    @model_validator(mode="after")
    def _references_field_for_generation(self) -> TaskConfig:
        if self.references_field is not None and self.kind != "generate":
            raise ValueError(f"references_field: a {self.kind} task reads its own answers; it is for generate tasks")
        if self.references_field is not None and not self.references_field.strip():
            raise ValueError("references_field: empty field name")
        if self.reference_turn != "last" and self.kind != "generate":
            raise ValueError(f"reference_turn: a {self.kind} task reads its own items; it is for generate tasks")
        if self.reference_turn == "tool_call" and self.references_field is not None:
            raise ValueError("reference_turn tool_call: the reference is the call, so references_field cannot name other answers")
        if self.kind == "preference" and self.mapping is not None:
            raise ValueError("mapping: a mapping makes conversations, not preference pairs; give a preference file (shape auto or a preference shape)")
        return self

    @field_validator("metrics", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        """``metrics: [rouge, {name: exact_match, extract: {...}}]``: a bare name, or a name with options."""
        out: list[Any] = []
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
    def _known(cls, v: list[MetricSpec], info: ValidationInfo) -> list[MetricSpec]:
        """Every metric registered (a ``module:function`` spec is imported and registered, and replaced by its
        name); a judge's ``backend`` known too. UnknownMetric (a ValueError) lists the known names."""
        from evalsuite.judge import check_judge_options
        from evalsuite.metrics.base import resolve_metric
        from evalsuite.probes import PROBES

        owners: dict[str, list[str]] = {}
        for kind, metric in [*((k, p.metric) for k, p in PROBES.items()), *KIND_METRICS.items()]:
            owners.setdefault(metric, []).append(kind)
        for m in v:
            m.name = resolve_metric(m.name, context_dir(info))
            # it scores a kind's own items (probe items, pairs, text), not generated outputs (another kind's
            # metrics are refused whatever they are, by _metrics_for_generation)
            if m.name in owners and info.data.get("kind", "generate") == "generate":
                kinds = sorted(owners[m.name])
                raise ValueError(f"metric {m.name} scores the items of a task kind, not generated outputs: give the task "
                                 f"kind: {kinds[0] if len(kinds) == 1 else 'one of ' + ', '.join(kinds)} (and no metrics)")
            if m.name == "judge":
                m.options = check_judge_options(m.options, context_dir(info))
        return v


class SuiteConfig(FileConfig):
    """An eval suite (`evalsuite run` / `score`): tasks, generation settings, an optional server, plugins."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the suite's name: letters, digits, _ . -; part of each run's id")
    tasks: list[TaskConfig] = Field(min_length=1, description="the tasks, run in order; at least one")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="generation settings of every generate task that has none of its own")
    server: ServerConfig | None = Field(default=None, description=(
        "generate through this OpenAI-compatible server instead of a local model (evalsuite/serving.py); "
        "`evalsuite run --server URL` overrides it"))
    plugins: list[str] = Field(default_factory=list, description=(
        "the user's own modules that register metrics (module names, or .py paths relative to the suite file), "
        "imported before the suite is checked (evalsuite/plugins.py)"))

    def plugin_records(self) -> list[dict[str, str | None]]:
        """What a run records of its plugins (module and file), so compare and gate import the same code: the
        ``plugins`` list, then the module of each metric a task names by ``module:function`` (or that an
        installed package registered) that the list does not hold."""
        import sys

        from curate.registry import origin_file
        from evalsuite.metrics.base import METRIC_REGISTRY
        from evalsuite.plugins import load_plugins, plugin_record

        records = load_plugins(self.plugins, self.base_dir)
        files = {r["file"] for r in records}
        for task in self.tasks:
            for m in task.metrics:
                origin = METRIC_REGISTRY.origins.get(m.name)
                file = origin_file(origin)
                module = sys.modules.get(getattr(origin, "__module__", "") or "")
                if file is not None and module is not None and str(file) not in files:
                    files.add(str(file))
                    records.append(plugin_record(module))
        return records


def load_suite(path: str | Path) -> SuiteConfig:
    """Read and validate a suite YAML; SuiteError names the file and every bad key. The suite's ``plugins``
    are imported first, so the metrics they register are known when the tasks are checked."""
    data = read_yaml(path, SuiteError)
    import_plugins(data, Path(path).parent, str(path), SuiteError)
    return validate(SuiteConfig, data, Path(path).parent, str(path), SuiteError)
