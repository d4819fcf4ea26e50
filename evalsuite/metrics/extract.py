"""Input handling shared by the text metrics: reference lists, and extractors for structured outputs.

Every text metric takes ``extract={"regex": PATTERN, "group": 1}`` or ``extract={"json_field": "a.b.0"}``
(add ``"references": True`` to extract from the references too). A prediction the extractor cannot parse
becomes None: it is scored as wrong (an empty string for BLEU/chrF/ROUGE, a miss for exact match), never
guessed, and counted in ``details["unparsed"]``. A reference that does not parse is an error (the
extractor does not fit the data).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from evalsuite.jsontext import first_json_value


def extract_regex(text: str, pattern: str | re.Pattern[str], group: int | str = 1) -> str | None:
    """``group`` of the first match of ``pattern`` in ``text``; None when nothing matches (or the group did
    not take part in the match). A pattern without that group is a ValueError, not a silent whole match."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    if isinstance(group, int) and group > regex.groups:
        raise ValueError(f"pattern {regex.pattern!r} has {regex.groups} group(s); group {group} was asked for")
    if isinstance(group, str) and group not in regex.groupindex:
        raise ValueError(f"pattern {regex.pattern!r} has no group named {group!r}")
    match = regex.search(text)
    return None if match is None else match.group(group)


def extract_json_field(text: str, path: str) -> str | None:
    """The field at dotted ``path`` ("a.b.0": key a, key b, list index 0) of the first JSON object (or
    array) in ``text``, as a string; None when no JSON decodes or the path is missing.

    Tolerant of code fences and surrounding prose (the first ``{``/``[`` from which a JSON value decodes
    is used). String fields are returned as they are; other values as compact JSON (``42``, ``true``,
    ``null``, ``{"x":1}``), so ``42`` and ``"42"`` compare equal. ``path=""`` is the whole value. Keys
    containing dots cannot be addressed.
    """
    value: Any = first_json_value(text)
    if value is None:
        return None
    for part in path.split(".") if path else []:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and re.fullmatch(r"-?\d+", part) and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def make_extractor(spec: dict[str, Any]) -> tuple[Callable[[str], str | None], bool]:
    """``(extract(text), also_on_references)`` from an ``extract=`` option; ValueError on a bad spec."""
    spec = dict(spec)
    on_references = bool(spec.pop("references", False))
    if "regex" in spec and "json_field" not in spec:
        regex = re.compile(spec.pop("regex"))
        group = spec.pop("group", 1)
        extract_regex("", regex, group)  # fail on a missing group now, not on the first match
        fn: Callable[[str], str | None] = partial(extract_regex, pattern=regex, group=group)
    elif "json_field" in spec and "regex" not in spec:
        fn = partial(extract_json_field, path=spec.pop("json_field"))
    else:
        raise ValueError(f"extract= needs exactly one of 'regex' or 'json_field', got {sorted(spec)}")
    if spec:
        raise ValueError(f"unknown extract= keys: {sorted(spec)}")
    return fn, on_references


def reference_lists(references: Sequence[str] | Sequence[Sequence[str]], n: int) -> list[list[str]]:
    """One non-empty list of reference strings per prediction; ValueError naming the first bad one."""
    if len(references) != n:
        raise ValueError(f"{n} predictions but {len(references)} references")
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"reference {i} must be a string or a non-empty list of strings, got {ref!r}")
        out.append(refs)
    return out


def prepare(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], extract: dict | None
) -> tuple[list[str | None], list[list[str]], dict[str, Any]]:
    """Validated predictions and per-example reference lists, after extraction; and the details to report.
    Every metric scores (and computes its per-example statistics from) what this returns."""
    if not predictions:
        raise ValueError("no predictions to score")
    if not all(isinstance(p, str) for p in predictions):
        raise ValueError("predictions must be strings")
    refs = reference_lists(references, len(predictions))
    preds: list[str | None] = list(predictions)
    if not extract:
        return preds, refs, {}
    fn, on_references = make_extractor(extract)
    preds = [fn(p) for p in preds]
    if on_references:
        refs = [[fn(r) for r in rs] for rs in refs]  # type: ignore[misc]
        bad = [i for i, rs in enumerate(refs) if any(r is None for r in rs)]
        if bad:
            raise ValueError(f"extract= found nothing in the references of examples {bad[:10]} ({len(bad)} in all)")
    return preds, refs, {"extract": dict(extract), "unparsed": sum(p is None for p in preds)}
