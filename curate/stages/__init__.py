"""Pipeline stages: the contract, the base classes and the registry.

A stage is a small class with one contract and a name a YAML config can list:

- a :class:`RecordStage` decides record by record and works batch by batch (streaming). Its
  ``evaluate(batch)`` returns the batch (columns possibly rewritten, e.g. redacted ``messages``) plus
  ``reason`` (Utf8, null means keep), ``detail`` (Utf8) and the score columns it names in
  ``score_columns``. Scores are kept in the workspace for every record that reached the stage, so a
  threshold can be retuned, and borderline cases reviewed, without recomputing ("score, then keep").
- a :class:`GlobalStage` needs one column over the whole run (dedup, decontamination). Its
  ``prepare(batch)`` runs while records stream and returns only the small columns it needs
  (``uid`` plus keys, signatures...); ``decide(prepared)`` then returns the rejects
  (``uid``, ``reason``, ``detail``, ``duplicate_of``), or a :class:`GlobalDecision` that adds the
  duplicate clusters (splits are assigned per cluster) and the scored pairs (for the report).

The runner (``curate.pipeline``) fills ``stage`` and counts rejects per stage and reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
from pydantic import BaseModel, ConfigDict

from curate.registry import Registry, RegistryError, UnknownNameError


class StageParams(BaseModel):
    """Base for stage parameters: unknown keys are errors, so typos fail before any work starts."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StageContext:
    """What a stage may need from the run beyond its own parameters."""

    config_dir: Path = field(default_factory=Path.cwd)
    tokenizer: Any = None  # a curate.tokens.TokenCounter, or None when no tokenizer is configured
    cache_dir: Path | None = None
    # The run's curate.workspace.Workspace, set before any decide() (an embedding cache lives there).
    # Only decide() may use it: while records stream, a writer thread owns the connection.
    workspace: Any = None

    def resolve(self, path: str | Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.config_dir / p)


class Stage:
    """Base of every stage: a registered ``name``, a ``Params`` model (what a config may set), the
    ``reasons`` it can emit and whether it is global. Built with its params and the run's StageContext."""
    name: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    is_global: ClassVar[bool] = False
    # reason codes this stage can emit, for documentation and `curate stages`
    reasons: ClassVar[tuple[str, ...]] = ()
    # True when the stage reads more than its config (human labels): a run with it is never served from cache
    volatile: ClassVar[bool] = False

    def __init__(self, params: StageParams | None = None, context: StageContext | None = None):
        self.params = params if params is not None else self.Params()
        self.context = context or StageContext()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    def setup(self, workspace: Any) -> None:
        """Called once with the run's workspace before records stream (the only moment a record stage may
        read it: afterwards a writer thread owns the connection). Default: nothing."""


class RecordStage(Stage):
    """A stage that decides record by record, batch by batch (streaming); see :meth:`evaluate`."""
    score_columns: ClassVar[tuple[str, ...]] = ()
    # True when evaluate() may rewrite `messages` (PII redaction): the runner then stores the new text
    rewrites_messages: ClassVar[bool] = False
    # True when the stage rejects a record for the quality of its answer (too short, repetitive, a refusal): a KTO
    # record labeled undesirable is then scored but never rejected, since its answer is bad on purpose
    judges_completion: ClassVar[bool] = False

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:  # pragma: no cover - interface
        """The batch with ``reason`` (Utf8, null: keep), ``detail`` and this stage's ``score_columns`` added;
        other columns as given, or rewritten (``messages``) when ``rewrites_messages``. Row order is kept."""
        raise NotImplementedError


@dataclass
class GlobalDecision:
    """What a global stage decided.

    - ``rejects``: ``uid``, ``reason``, ``detail``, ``duplicate_of`` (as a plain decide() returns them)
    - ``clusters``: ``uid``, ``rep_uid``, ``similarity``: every member of each cluster of two or more,
      its representative included (``rep_uid == uid``, similarity 1.0); similarity is to the representative.
      The runner stores them and assigns train/validation/test per cluster, so a cluster never straddles
      splits.
    - ``pairs``: ``uid_a``, ``uid_b``, ``similarity``: scored candidate pairs, those below the threshold
      included (down to a floor the stage picks), for the report's histogram near the threshold.
    - ``links``: ``uid_a``, ``uid_b``, ``similarity``: pairs the stage keeps both of but that must share a
      split (two tasks on one passage: not duplicates, but a test question on a passage seen in training).
    - ``stats``: counts the stage wants in the run summary (pairs checked, boilerplate lines discounted...).
    """

    rejects: pl.DataFrame
    clusters: pl.DataFrame | None = None
    pairs: pl.DataFrame | None = None
    links: pl.DataFrame | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class GlobalStage(Stage):
    """A stage that needs a column over the whole run (dedup, decontamination): :meth:`prepare` per batch
    while records stream, then one :meth:`decide` over everything prepared."""
    is_global = True
    #: a prepared column whose equal values decide together and apart from all others (exact dedup's ``key``):
    #: ``decide`` over the rows split by this key, concatenated in uid order, equals ``decide`` over all rows, so an
    #: engine with a distributed shuffle (Ray) may decide each part on its own. None: the rows decide as a whole.
    group_key: ClassVar[str | None] = None

    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:  # pragma: no cover - interface
        """The small columns this stage needs from a batch of surviving records: ``uid`` plus keys, signatures
        or texts; the runner concatenates them for :meth:`decide`."""
        raise NotImplementedError

    def decide(self, prepared: pl.DataFrame) -> pl.DataFrame | GlobalDecision:  # pragma: no cover - interface
        """The rejects (``uid``, ``reason``, ``detail``, ``duplicate_of``) over all prepared rows, or a
        :class:`GlobalDecision` that adds clusters, scored pairs, links and stats."""
        raise NotImplementedError

    def decide_sql(self, con: Any, prepared: str) -> GlobalDecision | None:
        """The same decision as :meth:`decide`, as DuckDB queries over ``prepared`` (a table expression of every row
        ``prepare`` returned, spilled to Parquet: memory stays flat in the number of records), on ``con``. The
        default, None, has the runner read the prepared rows into memory and call :meth:`decide`."""
        return None


class UnknownStageError(UnknownNameError, KeyError):
    """A stage name that is not registered (a KeyError too, as it always was)."""


def _stage_class(name: str, obj: Any) -> type[Stage]:
    """``obj`` itself when it is a stage class named ``name``; RegistryError otherwise."""
    if not (isinstance(obj, type) and issubclass(obj, (RecordStage, GlobalStage))):
        raise RegistryError(f"{obj!r} is not a stage class (a subclass of curate.stages.RecordStage or GlobalStage)")
    if getattr(obj, "name", None) != name:
        raise RegistryError(f"stage class {obj.__qualname__} has name {getattr(obj, 'name', None)!r}, registered as {name!r}: "
                            "give the class `name = ...` and register it under that name")
    return obj


class _StageRegistry(Registry[type[Stage]]):
    """Stages keep their established wording: "unknown stage 'x'. Did you mean 'y'? Known stages: ..."."""

    def unknown(self, name: str, extra=()) -> UnknownNameError:
        import difflib

        close = difflib.get_close_matches(name, list(self.entries), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return self.error(f"unknown stage {name!r}.{hint} Known stages: {', '.join(sorted(self.entries))}")


BUILTIN_MODULES = ("conversation", "preference", "quality", "pii", "langid", "exact", "minhash", "semantic", "decontam", "labels")

#: Every stage a config can name. Built-ins load on the first lookup; installed packages add theirs through the
#: entry point group ``finetune_workbench.stages``; a config names a user's stage by ``module:Class`` or
#: ``./file.py:Class`` or loads its module under ``plugins:``.
STAGES: Registry[type[Stage]] = _StageRegistry(
    "stage", builtins=tuple(f"curate.stages.{m}" for m in BUILTIN_MODULES), coerce=_stage_class, error=UnknownStageError)

REGISTRY: dict[str, type[Stage]] = STAGES.entries  # the live mapping, for code that reads it as a dict


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage listable by its ``name`` in a config (another class under a taken name is
    a RegistryError, a ValueError)."""
    return STAGES.register(cls)


def get_stage(name: str) -> type[Stage]:
    """The stage class registered as ``name``; an unknown name gets a did-you-mean hint."""
    return STAGES.get(name)


def resolve_stage(name_or_spec: str, base_dir: str | Path | None = None) -> tuple[str, type[Stage]]:
    """``(name, class)`` of a stage a config names: a registered name, or ``module:Class`` /
    ``./file.py:Class`` (relative to ``base_dir``), imported and registered under the class's ``name``."""
    return STAGES.lookup(name_or_spec, base_dir)


def all_stages() -> dict[str, type[Stage]]:
    """Every registered stage, by name."""
    return dict(STAGES.items())


MEASURED_FILE = Path(__file__).with_name("measured.json")


def measured(name: str) -> list[dict]:
    """The measured verdict quality of stage ``name`` at its defaults: one dict per labeled set and part
    (``set``, ``part`` tune/holdout, ``n_pos``, ``n_neg``, ``precision``, ``recall``, ``fp_rate``,
    ``labels``), as stored by ``bench/verdicts.py --write``; empty when the stage was not measured."""
    import json

    if not MEASURED_FILE.is_file():
        return []
    return json.loads(MEASURED_FILE.read_text()).get("stages", {}).get(name, [])


def empty_rejects() -> pl.DataFrame:
    """An empty frame with the rejects' schema (``uid``, ``reason``, ``detail``, ``duplicate_of``)."""
    from curate.schema import REJECT_SCHEMA

    return pl.DataFrame(schema=REJECT_SCHEMA)
