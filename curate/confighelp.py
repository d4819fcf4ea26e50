"""The reference of a typed config, from the models themselves: the tree ``--help-config`` prints, the JSON
Schema ``--schema`` prints, and the check that every field a user writes has a description.

curate, train and evalsuite configs are pydantic models; their fields carry ``Field(description=...)``. The
CLIs of all three print through these functions, so the text a user reads is the text in the code.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

INDENT = "  "
DEFAULT_WIDTH = 100


def nested_models(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model class that ``annotation`` names, at any depth (``list[X]``, ``X | None``,
    ``dict[str, X]``, ``Annotated[...]``), in order of appearance, each once."""
    found: list[type[BaseModel]] = []

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp not in found:
                found.append(tp)
            return
        for arg in typing.get_args(tp):
            visit(arg)

    visit(annotation)
    return found


def walk_models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every model reachable from it through field annotations, depth first, each once."""
    seen: list[type[BaseModel]] = []
    stack = [root]
    while stack:
        model = stack.pop(0)
        if model in seen:
            continue
        seen.append(model)
        for info in model.model_fields.values():
            stack.extend(m for m in nested_models(info.annotation) if m not in seen)
    return seen


def undescribed_fields(models: typing.Iterable[type[BaseModel]]) -> list[str]:
    """``Module.Model.field`` for every field of ``models`` without a non-empty description."""
    missing = []
    for model in models:
        for name, info in model.model_fields.items():
            if not (info.description or "").strip():
                missing.append(f"{model.__module__}.{model.__qualname__}.{name}")
    return missing


# ---------------------------------------------------------------------------------------------- the tree


def type_text(annotation: Any) -> str:
    """A field type as a user reads it: ``int | None``, ``'first' | 'last'``, ``list[InputSpec]``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin in (list, tuple, set, frozenset):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in args if a is not Ellipsis)}]"
    if origin is dict:
        return f"dict[{type_text(args[0])}, {type_text(args[1])}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _constraints(info: FieldInfo) -> list[str]:
    """The field's bounds and pattern as ``>= 0``, ``<= 1``, ``at least 1 item``, ``matches ...``."""
    out = []
    for meta in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                out.append(f"{sign} {getattr(meta, attr)}")
        if getattr(meta, "min_length", None):
            out.append(f"at least {meta.min_length}")
        if getattr(meta, "pattern", None):
            out.append(f"matches {meta.pattern}")
    return out


def default_text(info: FieldInfo, width: int = 80) -> str:
    """``required``, or the default as YAML would spell it (``null``, ``true``, ``0.9``, ``'first'``), shortened
    to ``width`` characters; a nested model's default is ``(its defaults)``."""
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(its defaults)"
    if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        names = [getattr(v, "name", None) for v in value]
        text = "[" + ", ".join(n for n in names if n) + "]" if all(names) else f"({len(value)} items)"
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _wrap(text: str, indent: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(" ".join(text.split()), width=max(40, width - len(indent)), initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)


def field_lines(name: str, info: FieldInfo, depth: int = 0, width: int = DEFAULT_WIDTH) -> list[str]:
    """One field as ``name: type = default  (bounds)`` (``(required ...)`` when it has no default), then its
    description wrapped to ``width`` and indented one level deeper than ``depth``."""
    pad = INDENT * depth
    bounds = _constraints(info)
    if info.is_required():
        head = f"{pad}{name}: {type_text(info.annotation)}  (required{'; ' if bounds else ''}{'; '.join(bounds)})"
    else:
        head = f"{pad}{name}: {type_text(info.annotation)} = {default_text(info)}" + (f"  ({'; '.join(bounds)})" if bounds else "")
    lines = [head]
    if info.description:
        lines += _wrap(info.description, pad + INDENT * 2, width)
    return lines


def _model_lines(model: type[BaseModel], depth: int, width: int, prefix: str, seen: tuple[type, ...]) -> list[str]:
    from curate.stages import StageParams

    lines: list[str] = []
    for name, info in model.model_fields.items():
        if info.exclude:  # set by the loader (the config's folder), never written by a user
            continue
        key = f"{prefix}{name}"
        annotation = info.annotation
        lines += field_lines(key, info, depth, width)
        if _is_stage_list(annotation):
            lines += stage_lines(depth + 1, width, f"{key}[].")
            continue
        for sub in nested_models(annotation):
            if sub in seen or sub is StageParams:
                continue
            many = typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in typing.get_args(annotation))
            lines += _model_lines(sub, depth + 1, width, f"{key}{'[]' if many else ''}.", (*seen, sub))
    return lines


def _is_stage_list(annotation: Any) -> bool:
    from curate.config import StageSpec

    return StageSpec in nested_models(annotation)


def doc_summary(obj: Any) -> str:
    """The first sentence of ``obj``'s docstring's first paragraph, on one line ("" when it has none)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    para = " ".join(doc.split("\n\n")[0].split())
    end = para.find(". ")
    return para[: end + 1] if end >= 0 else para


def stage_lines(depth: int = 0, width: int = DEFAULT_WIDTH, prefix: str = "") -> list[str]:
    """Every registered stage as a config lists it (``name`` or ``{name: {params}}``), with its parameters."""
    from curate.stages import all_stages

    pad = INDENT * depth
    lines = [f"{pad}(each item: a stage name, or {{name: {{params}}}}; the registered stages and their params follow)"]
    for stage, cls in all_stages().items():
        doc = doc_summary(cls)
        lines.append(f"{pad}{prefix}{stage}: {'global' if cls.is_global else 'per-record'} stage" + (f"; {doc}" if doc else ""))
        lines += _model_lines(cls.Params, depth + 1, width, f"{prefix}{stage}.", (cls.Params,))
    return lines


def config_tree(model: type[BaseModel], title: str | None = None, width: int = DEFAULT_WIDTH) -> str:
    """Every field of ``model``, nested models expanded under their field, each as ``key: type; default;
    bounds`` with its description below; a stage list expands to every registered stage's parameters."""
    head = title or model.__name__
    doc = doc_summary(model)
    lines = [head] + (_wrap(doc, INDENT, width) if doc else []) + [""]
    lines += _model_lines(model, 0, width, "", (model,))
    return "\n".join(lines)


def config_schema(model: type[BaseModel]) -> str:
    """The JSON Schema of ``model`` (``model.model_json_schema()``), indented, for editors and validators."""
    return json.dumps(model.model_json_schema(), indent=2, ensure_ascii=False)


def config_flag_callbacks(load_model: Callable[[], type[BaseModel]], title: str) -> tuple[Callable[[bool], None], Callable[[bool], None]]:
    """The typer callbacks of a CLI's ``--help-config`` and ``--schema`` flags: each prints (the config tree under
    ``title``, or the JSON Schema) of the model ``load_model()`` returns, then exits 0. The model is loaded only
    when a flag is given, so ``--help`` stays fast."""
    import typer

    def print_tree(value: bool) -> None:
        if value:
            typer.echo(config_tree(load_model(), title))
            raise typer.Exit()

    def print_schema(value: bool) -> None:
        if value:
            typer.echo(config_schema(load_model()))
            raise typer.Exit()

    return print_tree, print_schema
