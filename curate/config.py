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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator, model_validator

from curate.registry import RegistryError
from curate.shapes import DEFAULT_EOS_MARKERS, DEFAULT_OUTPUT_PLACEHOLDERS, DEFAULT_PLACEHOLDERS, resolve_shape
from curate.stages import StageParams, get_stage, resolve_stage

Role = Literal["system", "user", "assistant"]


class ConfigError(ValueError):
    """An invalid config; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileConfig(_Strict):
    """A config read from a file: unknown keys are errors, and relative paths resolve against the
    file's folder (``base_dir``, set by :func:`validate`). `curate` and `train` configs share it."""

    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return (p if p.is_absolute() else (self.base_dir / p)).resolve()


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


class InputSpec(_Strict):
    path: str
    shape: str = "auto"
    mapping: dict[Role, str | list[str]] | None = None
    role_aliases: dict[str, Role] = Field(default_factory=dict)
    csv_header: bool | list[str] = True
    limit: int | None = Field(default=None, ge=1, description="read at most this many records from this input")

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, value: str, info: ValidationInfo) -> str:
        return check_shape(value, info)

    @model_validator(mode="after")
    def _mapping_needs_mapped(self) -> "InputSpec":
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
    placeholders: list[str] = Field(default_factory=lambda: list(DEFAULT_PLACEHOLDERS))
    output_placeholders: list[str] = Field(default_factory=lambda: list(DEFAULT_OUTPUT_PLACEHOLDERS))
    eos_markers: list[str] = Field(default_factory=lambda: list(DEFAULT_EOS_MARKERS))
    unwrap_templates: bool = True


class SplitConfig(_Strict):
    train: float = Field(0.9, ge=0, le=1)
    validation: float = Field(0.05, ge=0, le=1)
    test: float = Field(0.05, ge=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitConfig":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1, got {total:g}")
        return self


class ReportConfig(_Strict):
    examples_per_reason: int = Field(3, ge=0, le=100)
    clusters: int = Field(5, ge=0, le=100, description="largest duplicate clusters shown per dedup stage")
    cluster_members: int = Field(4, ge=1, le=50, description="members shown next to each cluster's representative")
    contamination_rows: int = Field(50, ge=0, le=10_000, description="contaminated records listed with their matched span")


class StageSpec(_Strict):
    name: str
    params: SerializeAsAny[StageParams]

    def build(self, context):
        return get_stage(self.name)(self.params, context)


# The stage list of a config that names none: every quality filter at its defaults, PII flagged (not
# removed), then exact and MinHash dedup. The blocklist and decontamination need user files, and embedding
# dedup needs a GPU to be quick, so they are not defaults.
DEFAULT_STAGES = (
    "conversation_structure",
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
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    inputs: list[InputSpec] = Field(min_length=1)
    output_dir: str | None = Field(default=None, description="default: out/<name> next to the config")
    workspace: str = Field("workspace", description="the workspace folder the run registers in (runs registry, labels, each run's data file); shared with train, evalsuite and the app")
    tokenizer: str | None = "embedded"
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    stages: list[StageSpec] = Field(default_factory=lambda: CurateConfig._parse_stages(list(DEFAULT_STAGES)))
    splits: SplitConfig = Field(default_factory=SplitConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    batch_size: int = Field(50_000, ge=1)
    max_record_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    strict: bool = False
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
        specs, problems = [], []
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
        return self.resolve(self.output_dir or f"out/{self.name}")

    @property
    def workspace_path(self) -> Path:
        return self.resolve(self.workspace)


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


def validate(model: type[BaseModel], data: Any, base_dir: Path | None, source: str, error: type[ValueError] = ConfigError):
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
    """A validated curate config from a mapping: its ``plugins`` imported first, then every key checked;
    ConfigError names every bad key."""
    import_plugins(data, base_dir, source)
    return validate(CurateConfig, data, base_dir, source)


def load_config(path: str | Path) -> CurateConfig:
    """Read and validate a YAML config; ConfigError names the file and every bad key."""
    return parse_config(read_yaml(path), Path(path).parent, str(path))
