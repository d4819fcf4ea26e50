"""Every field a user writes in a config (YAML / JSON) has a description: `--help-config`, `curate stages` and
the JSON Schema print them, so a field without one is a field nobody can look up."""

from __future__ import annotations

import importlib

from pydantic import BaseModel

from curate.confighelp import undescribed_fields, walk_models
from curate.stages import all_stages

# The configs a user writes; nested models are found through their field annotations.
ROOTS = (
    "curate.config:CurateConfig",
    "train.config:TrainConfig",
    "evalsuite.suite:SuiteConfig",
    "evalsuite.judge:JudgeConfig",
    "evalsuite.gate:Rules",
    "evalsuite.serving:ServerConfig",
    "evalsuite.compare:RunResults",  # results.json as compare and gate read it (users' own writers target it)
)
PACKAGES = ("curate", "chat", "train", "evalsuite", "app")


def _load(path: str) -> type[BaseModel]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _user_models() -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = []
    for root in [*map(_load, ROOTS), *(cls.Params for cls in all_stages().values())]:
        models += [m for m in walk_models(root) if m not in models]
    return models


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


def test_every_config_field_has_a_description():
    models = _user_models()
    assert len(models) > 30, [m.__name__ for m in models]  # the walk reached the nested models and every stage
    missing = undescribed_fields(models)
    assert not missing, "config fields without a description:\n  " + "\n  ".join(missing)


def test_every_model_of_ours_is_reached_by_the_walk():
    """A new config model must hang off a root above (or be added to ROOTS), or its fields go unchecked."""
    models = set(_user_models())
    ours = {m for m in _subclasses(BaseModel) if m.__module__.split(".")[0] in PACKAGES and not m.__name__.startswith("_")}
    from curate.stages import StageParams

    bases = {m for m in ours if _subclasses(m) & models}  # FileConfig, StageParams: checked through their subclasses
    unreached = sorted(f"{m.__module__}.{m.__qualname__}" for m in ours - models - bases - {StageParams})
    assert not unreached, f"models no root reaches (add them to ROOTS): {unreached}"


def test_the_check_names_a_field_without_a_description():
    from pydantic import Field

    class Example(BaseModel):
        described: int = Field(1, description="has one")
        bare: int = 2

    assert undescribed_fields([Example]) == [f"{__name__}.test_the_check_names_a_field_without_a_description.<locals>.Example.bare"]
