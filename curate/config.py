"""The typed `curate run` config, validated before any work starts.

```yaml
name: quickstart
inputs:
  - path: data/alpaca.json          # a file, a directory or a glob
  - path: data/gsm8k.jsonl
    shape: mapped                    # explicit column mapping for shapes curate does not know
    mapping: {user: question, assistant: answer}
tokenizer: embedded                  # SmolLM2's tokenizer; a tokenizer.json / folder / model id; or null (words)
stages:                              # run in this order
  - conversation_structure
  - response_length: {min_chars: 1}
  - exact_dedup: {keep: first}
splits: {train: 0.9, validation: 0.05, test: 0.05}
plugins: [my_stages, ./my_shapes.py]  # your own stages / shapes (curate/plugins.py), imported first
```
Relative paths are relative to the config file's folder. A stage or shape may also be named by
``module:Class`` or ``./file.py:Class`` (docs/extending.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from curate.registry import RegistryError
from curate.shapes import DEFAULT_EOS_MARKERS, DEFAULT_OUTPUT_PLACEHOLDERS, DEFAULT_PLACEHOLDERS, resolve_shape
from curate.stages import StageParams, get_stage, resolve_stage

Role = Literal["system", "user", "assistant", "tool"]
MappedRole = Literal["system", "user", "assistant"]


class ConfigError(ValueError):
    """An invalid config; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileConfig(_Strict):
    """A config read from a file: unknown keys are errors, and relative paths resolve against the
    file's folder (``base_dir``, set by :func:`validate`). `curate` and `train` configs share it."""

    base_dir: SkipJsonSchema[Path] = Field(default_factory=Path.cwd, exclude=True, description=(
        "the config file's folder, set by the loader (never written in the file): relative paths resolve against it"))

    def resolve(self, path: str | Path) -> Path:
        """``path`` made absolute: ``~`` expanded, a relative path taken from the config file's folder."""
        p = Path(path).expanduser()
        return (p if p.is_absolute() else (self.base_dir / p)).resolve()


FileConfigT = TypeVar("FileConfigT", bound=FileConfig)


def context_dir(info: ValidationInfo) -> Path | None:
    """The config file's folder, which :func:`validate` passes to validators (a ``./file.py:Class`` spec is
    relative to it); None when a model is built directly."""
    return (info.context or {}).get("base_dir") if isinstance(info.context, dict) else None


def check_shape(value: Any, info: ValidationInfo) -> str:
    """A ``shape`` value: ``auto``, a registered shape or a ``module:Class`` spec (registered on the way);
    an unknown name is an error with a did-you-mean. Shared by every config with a ``shape``."""
    if not isinstance(value, str):
        raise ValueError(f"a shape name is a string, got {value!r}")
    return resolve_shape(value, context_dir(info))


def shape_for_mapping(shape: str, mapping: Any) -> str:
    """The shape a source with ``mapping`` reads (shared by every config with ``shape`` and ``mapping``): a mapping
    with shape auto means mapped (left auto, the mapping would be ignored and every record skipped); shape mapped
    without a mapping is a ValueError."""
    if mapping and shape == "auto":
        return "mapped"
    if shape == "mapped" and not mapping:
        raise ValueError("shape 'mapped' needs a `mapping` such as {user: question, assistant: answer}")
    return shape


class InputSpec(_Strict):
    """One input of a run: a file, a folder or a glob, and how to read its records."""

    path: str = Field(description=(
        "a file, a directory (every readable file in it) or a glob, relative to the config file; JSON, JSONL, Parquet, "
        "CSV/TSV, each optionally .gz or .zst"))
    shape: str = Field("auto", description=(
        "the record layout: auto detects it per record (alpaca, dolly, sharegpt, openai, prompt_completion, "
        "preference pairs of LLaMA-Factory, TRL and HH-RLHF, KTO, OpenAssistant trees, and any registered shape); "
        "name one to force it, mapped (with `mapping`) for columns curate does not know, or "
        "./my_shapes.py:MyShape for your own (docs/extending.md)"))
    mapping: dict[MappedRole, str | list[str]] | None = Field(default=None, description=(
        "role -> column(s) for shape mapped, e.g. {user: question, assistant: answer}; a list of columns is joined "
        "with a blank line (instruction + input); `user` is required. Giving a mapping implies shape mapped"))
    role_aliases: dict[str, Role] = Field(default_factory=dict, description=(
        "extra speaker names -> system/user/assistant/tool for chat shapes whose turns use other names "
        "(e.g. {customer: user, agent: assistant}); human/gpt/bot, observation/function (tool results) and the like "
        "are known already"))
    csv_header: bool | list[str] = Field(True, description=(
        "CSV/TSV only: true when the first row names the columns; a list gives the column names of a file "
        "without a header row"))
    limit: int | None = Field(default=None, ge=1, description="read at most this many records from this input (a quick look at a large file); null: all")
    trees: Literal["best", "all", "pairs"] = Field("best", description=(
        "conversation trees (OpenAssistant exports): best reads each tree as one conversation along the best-ranked "
        "replies; all as one conversation per root-to-leaf branch; pairs as preference pairs, the best-ranked reply "
        "against each lower-ranked sibling"))

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, value: str, info: ValidationInfo) -> str:
        return check_shape(value, info)

    @model_validator(mode="after")
    def _mapping_needs_mapped(self) -> InputSpec:
        if self.shape == "mapped" and not self.mapping:
            raise ValueError("shape 'mapped' needs a `mapping` such as {user: question, assistant: answer}")
        if self.mapping and self.shape not in ("mapped", "auto"):
            raise ValueError(f"`mapping` is only used with shape 'mapped', not {self.shape!r}")
        if self.mapping and self.shape == "auto":
            self.shape = "mapped"
        if self.mapping is not None and "user" not in self.mapping:
            raise ValueError("`mapping` needs at least a `user` column")
        return self


class NormalizeConfig(_Strict):
    """How records are cleaned while they are read (each change listed in the record's ``fixes``)."""

    placeholders: list[str] = Field(default_factory=lambda: list(DEFAULT_PLACEHOLDERS), description=(
        "input values that mean 'no input' (`<noinput>`, 'N/A'...): removed from the prompt (fix placeholder_input); "
        "compared by their words, so bracket and quoting variants match. Replacing the list drops the defaults"))
    output_placeholders: list[str] = Field(default_factory=lambda: list(DEFAULT_OUTPUT_PLACEHOLDERS), description=(
        "answers that mean 'no answer' (`<nooutput>`...): the answer becomes empty (fix placeholder_output), so "
        "response_length rejects the record"))
    eos_markers: list[str] = Field(default_factory=lambda: list(DEFAULT_EOS_MARKERS), description=(
        "end-of-text tokens left at the end of an answer (`<|endoftext|>`, `</s>`...): stripped (fix eos_marker)"))
    unwrap_templates: bool = Field(True, description=(
        "turn an Alpaca-templated prompt ('Below is an instruction... ### Instruction:') back into a plain turn "
        "(fix template_unwrapped); false keeps the template text"))


class SplitConfig(_Strict):
    """Shares of the kept records per split; duplicates and linked records always share one split."""

    train: float = Field(0.9, ge=0, le=1, description="share of kept records in data/train.*; the three shares must add up to 1")
    validation: float = Field(0.05, ge=0, le=1, description="share in data/validation.* (train run's eval loss and early stopping)")
    test: float = Field(0.05, ge=0, le=1, description="share in data/test.* (never trained on: evalsuite's held-out set)")
    seed: int = Field(0, description="seed of the split assignment; change it for a different split of the same records")

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1, got {total:g}")
        return self


class ReportConfig(_Strict):
    """What report.html / .md show beyond the counts."""

    examples_per_reason: int = Field(3, ge=0, le=100, description="rejected records shown as examples of each reason code")
    clusters: int = Field(5, ge=0, le=100, description="largest duplicate clusters shown per dedup stage")
    cluster_members: int = Field(4, ge=1, le=50, description="members shown next to each cluster's representative")
    contamination_rows: int = Field(50, ge=0, le=10_000, description="contaminated records listed with their matched span")
    split_leakage: bool = Field(True, description=(
        "audit the closest kept records across splits by exact similarity (a near-duplicate search of its own over the "
        "kept records; docs/scale.md gives its cost per record). false: the summary's leakage is null"))


class StageSpec(_Strict):
    """One validated entry of ``stages``: a registered stage and its parameters (written in YAML as
    ``name`` or ``{name: {params}}``)."""

    name: str = Field(description="a registered stage (`curate stages` lists them)")
    params: SerializeAsAny[StageParams] = Field(description="the stage's parameters, validated against its Params")

    def build(self, context):
        """The stage instance for one run, given the run's :class:`~curate.stages.StageContext`."""
        return get_stage(self.name)(self.params, context)


# The stage list of a config that names none: every quality filter at its defaults, PII flagged (not
# removed), then exact and MinHash dedup. The blocklist and decontamination need user files, and embedding
# dedup needs a GPU to be quick, so they are not defaults.
DEFAULT_STAGES = (
    "conversation_structure",
    "preference_pair",
    "response_length",
    "length",
    "unseeable_context",
    "language",
    "refusal",
    "unique_words",
    "gopher_repetition",
    {"pii": {"action": "flag"}},
    "exact_dedup",
    "minhash_dedup",
)


class CurateConfig(FileConfig):
    """A `curate run` config: inputs, normalization, the stage list, splits and where the results go."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description=(
        "the run's name: letters, digits, _ . -; names the output folder (out/<name>) and the run in the workspace"))
    inputs: list[InputSpec] = Field(min_length=1, description="the files to read, each with its shape; at least one")
    output_dir: str | None = Field(default=None, description=(
        "where report, exports, ledger and summary are written, relative to the config; default: out/<name> next to the config"))
    workspace: str = Field("workspace", description=(
        "the workspace folder the run registers in (runs registry, labels, each run's data file), relative to the config; "
        "shared with train, evalsuite and the app"))
    tokenizer: str | None = Field("embedded", description=(
        "counts tokens for the length stage and the report: embedded (SmolLM2's tokenizer, shipped with curate), a "
        "tokenizer.json, a folder holding one, or a hub id; use your model's tokenizer so max_tokens means its tokens. "
        "null: no token counts (then length.max_tokens cannot be set)"))
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig, description="placeholder, end-marker and template clean-up applied while reading")
    stages: list[StageSpec] = Field(default_factory=lambda: CurateConfig._parse_stages(list(DEFAULT_STAGES)), description=(
        "the stages, run in this order; each a name or {name: {params}}. A record is rejected by the first stage that "
        "rejects it. Leave the key out for the default list; [] keeps everything that parses"))
    splits: SplitConfig = Field(default_factory=SplitConfig, description="train / validation / test shares of the kept records")
    report: ReportConfig = Field(default_factory=ReportConfig, description="how many examples, clusters and contaminated records the report shows")
    batch_size: int = Field(50_000, ge=1, description=(
        "records read and filtered per batch; lower it when records are large and memory is short"))
    max_record_bytes: int = Field(4 * 1024 * 1024, ge=1024, description=(
        "a record larger than this (bytes of its JSON line, or characters) is quarantined, not read: protects memory "
        "from a runaway line"))
    engine: Literal["local", "ray"] = Field("local", description=(
        "where the record work and the per-key global stages run: local (worker processes on this machine) or ray "
        "(Ray Data: the optional extra finetune-workbench[ray]); the same kept set, rejects and exports either way"))
    ray_address: str | None = Field(None, description=(
        "engine ray: the address of a running Ray cluster (host:6379 or ray://host:10001), whose workers can read the "
        "input paths; null: start Ray on this machine, on loopback, for the run"))
    workers: int | None = Field(None, ge=1, description=(
        "processes that parse records and run the per-record stages (each holds a copy of the stages' models); "
        "null: one per core this process may use, or 1 (this process) when the inputs total under 64 MB. "
        "The result is the same for any number"))
    strict: bool = Field(False, description=(
        "stop at the first malformed record (exit 2) instead of quarantining it; `curate run --strict` sets it too"))
    plugins: list[str] = Field(default_factory=list, description=(
        "your own modules that register stages or shapes (module names, or .py paths relative to the config file), "
        "imported before the config is checked (curate/plugins.py, docs/extending.md)"))


    @field_validator("stages", mode="before")
    @classmethod
    def _check_stages(cls, value: Any, info: ValidationInfo) -> list[StageSpec]:
        """``stages:`` entries as names (or ``module:Class`` specs, relative to the config's folder) with params."""
        return cls._parse_stages(value, context_dir(info))

    @classmethod
    def _parse_stages(cls, value: Any, base_dir: Path | None = None) -> list[StageSpec]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError("`stages` must be a list of stage names or {name: {params}}")
        specs: list[StageSpec] = []
        problems: list[str] = []
        params: Any  # whatever the YAML holds; checked to be a mapping below
        for i, item in enumerate(value):
            if isinstance(item, str):
                name, params = item, {}
            elif isinstance(item, dict) and len(item) == 1:
                name, params = next(iter(item.items()))
                params = params or {}
            elif isinstance(item, dict) and "name" in item:
                name, params = item["name"], {k: v for k, v in item.items() if k != "name"}
            else:
                problems.append(f"stages[{i}]: expected a stage name or {{name: {{params}}}}, got {item!r}")
                continue
            try:
                name, stage_cls = resolve_stage(str(name), base_dir)
            except RegistryError as exc:  # an unknown name (did you mean), or a spec whose module or class is missing
                problems.append(f"stages[{i}]: {exc}")
                continue
            if not isinstance(params, dict):
                problems.append(f"stages[{i}].{name}: parameters must be a mapping, got {params!r}")
                continue
            try:
                specs.append(StageSpec(name=str(name), params=stage_cls.Params(**params)))
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"])
                    problems.append(f"stages[{i}].{name}.{loc}: {err['msg']}")
        if problems:
            raise ValueError("; ".join(problems))
        return specs

    @property
    def output_path(self) -> Path:
        """The run's output folder: ``output_dir``, else ``out/<name>``, relative to the config file."""
        return self.resolve(self.output_dir or f"out/{self.name}")

    @property
    def workspace_path(self) -> Path:
        """The workspace folder, relative to the config file."""
        return self.resolve(self.workspace)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The JSON Schema of the YAML a user writes: ``stages`` items as a config lists them (a registered
        stage's name, or ``{name: {params}}`` with that stage's parameters), not the validated form."""
        from curate.stages import all_stages

        schema = super().model_json_schema(*args, **kwargs)
        defs = schema.setdefault("$defs", {})
        stages = all_stages()
        variants: list[dict[str, Any]] = [{"type": "string", "enum": list(stages)}]
        for stage, stage_cls in stages.items():
            params = stage_cls.Params.model_json_schema(ref_template="#/$defs/{model}")
            defs.update(params.pop("$defs", {}))
            params["title"] = f"{stage} params"
            defs[f"stage_{stage}"] = params
            variants.append({"type": "object", "additionalProperties": False, "required": [stage], "minProperties": 1, "maxProperties": 1,
                             "properties": {stage: {"anyOf": [{"$ref": f"#/$defs/stage_{stage}"}, {"type": "null"}]}}})
        variants.append({"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "enum": list(stages)}},
                         "description": "{name: STAGE, PARAM: value, ...}"})
        schema["properties"]["stages"]["items"] = {"anyOf": variants}
        for internal in ("StageSpec", "StageParams"):
            defs.pop(internal, None)
        return schema


def format_validation(exc: ValidationError, source: str) -> str:
    """A pydantic error as 'source: invalid config' plus one 'key.path: message' line per problem."""
    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def one_line(message: str) -> str:
    """A message of several lines (a config error: a heading, then one line per bad key) as one line, for a
    command line that exits 2 with one line."""
    lines = [part.strip() for part in str(message).splitlines() if part.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0].rstrip(':')}: {'; '.join(lines[1:])}"


def validate(model: type[FileConfigT], data: Any, base_dir: Path | None, source: str, error: type[ValueError] = ConfigError) -> FileConfigT:
    """A typed config (any of our pydantic config models) from a mapping, every bad key named in one
    ``error``; relative paths in it resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise error(f"{source}: the config must be a mapping of keys, got {type(data).__name__}")
    base = Path(base_dir or Path.cwd()).resolve()
    try:
        cfg = model.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        raise error(format_validation(exc, source)) from None
    except RegistryError as exc:  # raised outside a field validator (a default value's own lookup)
        raise error(f"{source}: {exc}") from None
    cfg.base_dir = base
    return cfg


def import_plugins(data: Any, base_dir: Path | None, source: str, error: type[ValueError] = ConfigError) -> list[dict[str, str | None]]:
    """Import the modules of a config's ``plugins:`` list (before it is validated, so what they register is
    known); ``error`` in one line naming the file and the plugin. Returns what a run records of each."""
    from curate.plugins import PluginError, load_plugins

    if not isinstance(data, dict) or "plugins" not in data:
        return []
    try:
        return load_plugins(data["plugins"], Path(base_dir or Path.cwd()))
    except PluginError as exc:
        raise error(f"{source}: plugins: {exc}") from None


def read_yaml(path: str | Path, error: type[ValueError] = ConfigError) -> Any:
    """The parsed YAML of a config file; ``error`` names the file when it is missing or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such config file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None


def parse_config(data: Any, base_dir: Path | None = None, source: str = "<config>") -> CurateConfig:
    """A validated :class:`CurateConfig` from a mapping (parsed YAML): its ``plugins`` imported first, then every
    key checked; relative paths resolve against ``base_dir``; ConfigError names ``source`` and every bad key."""
    import_plugins(data, base_dir, source)
    return validate(CurateConfig, data, base_dir, source)


def load_config(path: str | Path) -> CurateConfig:
    """Read and validate a YAML config; ConfigError names the file and every bad key."""
    return parse_config(read_yaml(path), Path(path).parent, str(path))
