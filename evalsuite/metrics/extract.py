"""Input handling shared by the text metrics: reference lists, and extractors for structured outputs.

Every text metric takes ``extract=``, one of

- ``{"regex": PATTERN, "group": 1, "take": "last"}``: ``group`` of the last match (``take: first``: the
  first). The last is the default because a generated answer ends with its conclusion: in a reasoning chain
  the first match of a number pattern is the first intermediate step, not the answer, and a marker that
  occurs once ("answer is N") gives the same match either way. lm-evaluation-harness's flexible GSM8K
  extraction also takes the last match (``group_select: -1``); use ``take: first`` for a format whose first
  occurrence is authoritative (its strict "#### N" match does). An extracted number loses a sentence's
  trailing period ("18." gives "18", "$1,234." gives "$1,234");
- ``{"json_field": "a.b.0"}``: a field of the first JSON value in the text;
- ``{"name": NAME}`` (or just ``NAME``): a registered extractor (:data:`EXTRACTORS`; ``gsm8k_strict`` and
  ``gsm8k_flexible`` are lm-evaluation-harness 0.4.13's GSM8K filters). A user's module registers more with
  :func:`register_extractor` (the suite's ``plugins:``).

Add ``"references": True`` to extract from the references too. A prediction the extractor cannot parse
becomes None: it is scored as wrong (an empty string for BLEU/chrF/ROUGE, a miss for exact and numeric
match), never guessed, and counted in ``details["unparsed"]``. A reference the extractor cannot parse: exact
and numeric match score its example as wrong and count it (``details["unparsed_references"]`` and the first
indexes in ``unparsed_reference_examples``), so one bad item never stops a run; BLEU/chrF/ROUGE have no
score for an example without a reference and raise a ValueError naming the examples.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from curate.registry import Registry, RegistryError, UnknownNameError
from evalsuite.jsontext import first_json_value

TAKE = ("last", "first")

# a number (sign, currency, thousands commas, decimals) followed by a sentence's period(s): "18.", "$1,234."
_NUMBER_THEN_PERIOD = re.compile(r"\s*[-+\u2212]?[$€£¥₹]?[-+\u2212]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)\.+\s*")


def strip_number_period(text: str) -> str:
    """``text`` without a trailing sentence period when ``text`` is a number ("18." -> "18", "3.6." -> "3.6");
    anything else unchanged ("Paris.", "3.6", "U.S.")."""
    return text.rstrip().rstrip(".") if _NUMBER_THEN_PERIOD.fullmatch(text) else text


def extract_regex(text: str, pattern: str | re.Pattern[str], group: int | str = 1, take: str = "last") -> str | None:
    """``group`` of the last match of ``pattern`` in ``text`` (``take="first"``: of the first match); None
    when nothing matches (or the group did not take part in that match). A number loses a trailing
    sentence period (:func:`strip_number_period`). A pattern without that group is a ValueError, not a
    silent whole match."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    if isinstance(group, int) and group > regex.groups:
        raise ValueError(f"pattern {regex.pattern!r} has {regex.groups} group(s); group {group} was asked for")
    if isinstance(group, str) and group not in regex.groupindex:
        raise ValueError(f"pattern {regex.pattern!r} has no group named {group!r}")
    if take not in TAKE:
        raise ValueError(f"take must be one of {TAKE}, got {take!r}")
    if take == "first":
        match = regex.search(text)
    else:
        matches = list(regex.finditer(text))
        match = matches[-1] if matches else None
    value = None if match is None else match.group(group)
    return None if value is None else strip_number_period(value)


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


@dataclass(frozen=True)
class NamedExtractor:
    """A registered extractor: ``fn(text) -> str | None`` (None: nothing to extract) and what it does."""

    name: str
    fn: Callable[[str], str | None]
    description: str = ""


class UnknownExtractor(UnknownNameError):
    """An extractor name that is not in :data:`EXTRACTORS`."""


def _extractor_of(name: str, obj: Any) -> NamedExtractor:
    """The entry for what a spec or an entry point names: a :class:`NamedExtractor`, or ``fn(text) -> str | None``."""
    if isinstance(obj, NamedExtractor):
        return obj
    if not callable(obj):
        raise RegistryError(f"{obj!r} is not an extractor (a function text -> str | None)")
    return NamedExtractor(name, obj, (obj.__doc__ or "").strip().split("\n")[0])


#: Every named extractor (``extract: {name: NAME}``); packages add theirs through ``finetune_workbench.extractors``.
EXTRACTOR_REGISTRY: Registry[NamedExtractor] = Registry("extractor", coerce=_extractor_of, error=UnknownExtractor,
                                                        name_of=lambda obj: obj.name if isinstance(obj, NamedExtractor) else obj.__name__)
EXTRACTORS: dict[str, NamedExtractor] = EXTRACTOR_REGISTRY.entries  # the live mapping


def register_extractor(name: str):
    """Decorator: register ``fn(text) -> str | None`` as the extractor ``name``, usable as
    ``extract: {name: NAME}`` in a suite (a user's module registers its own through the suite's ``plugins:``).
    The function is returned unchanged."""

    def decorate(fn: Callable[[str], str | None]) -> Callable[[str], str | None]:
        if name in EXTRACTORS:
            raise RegistryError(f"extractor {name!r} is already registered")
        EXTRACTOR_REGISTRY.add(name, NamedExtractor(name, fn, (fn.__doc__ or "").strip().split("\n")[0]), fn)
        return fn

    return decorate


def get_extractor(name: str) -> NamedExtractor:
    """The registered extractor ``name`` (or a ``module:function`` spec); :class:`UnknownExtractor` with a
    did-you-mean and the known names."""
    return EXTRACTOR_REGISTRY.lookup(name)[1]


# lm-evaluation-harness 0.4.13, lm_eval/tasks/gsm8k/gsm8k.yaml: the two filter pipelines (a regex filter, then
# take_first) and what its exact_match metric strips from both sides before comparing (regexes_to_ignore,
# ignore_case: true). The named extractors return that compared string, so exact_match with them gives
# lm-eval's gsm8k exact_match item by item; lm-eval's "[invalid]" fallback is None here (unparsed, wrong).
LM_EVAL_GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
LM_EVAL_GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
LM_EVAL_GSM8K_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")


def lm_eval_regex_filter(text: str, regex: re.Pattern[str], group_select: int = 0) -> str | None:
    """lm-eval's ``regex`` filter: ``findall``, the ``group_select``-th match, its first non-empty group,
    stripped; None where lm-eval returns its fallback ("[invalid]")."""
    matches = regex.findall(text)
    if not matches:
        return None
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), None)
        if match is None:
            return None
    return match.strip()


def lm_eval_gsm8k_clean(text: str) -> str:
    """What lm-eval's gsm8k ``exact_match`` compares: ``regexes_to_ignore`` removed in order, lower-cased."""
    for pattern in LM_EVAL_GSM8K_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


@register_extractor("gsm8k_strict")
def gsm8k_strict(text: str) -> str | None:
    """lm-eval 0.4.13 gsm8k "strict-match": the first ``#### (-?[0-9.,]+)``, cleaned as its exact_match does."""
    value = lm_eval_regex_filter(text, LM_EVAL_GSM8K_STRICT, 0)
    return None if value is None else lm_eval_gsm8k_clean(value)


@register_extractor("gsm8k_flexible")
def gsm8k_flexible(text: str) -> str | None:
    """lm-eval 0.4.13 gsm8k "flexible-extract": the last ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, cleaned as its
    exact_match does."""
    value = lm_eval_regex_filter(text, LM_EVAL_GSM8K_FLEXIBLE, -1)
    return None if value is None else lm_eval_gsm8k_clean(value)


def make_extractor(spec: dict[str, Any] | str) -> tuple[Callable[[str], str | None], bool]:
    """``(extract(text), also_on_references)`` from an ``extract=`` option (a dict, or an extractor's name);
    ValueError naming the problem on a bad spec (an unknown name says which names there are)."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    on_references = bool(spec.pop("references", False))
    kinds = [k for k in ("regex", "json_field", "name") if k in spec]
    if len(kinds) != 1:
        raise ValueError(f"extract= needs exactly one of 'regex', 'json_field' or 'name', got {sorted(spec)}")
    if kinds == ["regex"]:
        regex = re.compile(spec.pop("regex"))
        group = spec.pop("group", 1)
        take = spec.pop("take", "last")
        extract_regex("", regex, group, take)  # fail on a missing group or a bad take now, not on the first match
        fn: Callable[[str], str | None] = partial(extract_regex, pattern=regex, group=group, take=take)
    elif kinds == ["json_field"]:
        fn = partial(extract_json_field, path=spec.pop("json_field"))
    else:
        fn = get_extractor(spec.pop("name")).fn
    if spec:
        raise ValueError(f"unknown extract= keys for {kinds[0]}: {sorted(spec)}")
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
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], extract: dict | str | None,
    unparsed_references: str = "raise",
) -> tuple[list[str | None], list[list[str]], dict[str, Any]]:
    """Validated predictions and per-example reference lists, after extraction; and the details to report.
    Every metric scores (and computes its per-example statistics from) what this returns.

    With ``references: True`` in ``extract``, a reference the extractor finds nothing in is dropped from its
    example's list (counted in ``details["dropped_references"]``). An example left with no reference:
    ``unparsed_references="wrong"`` gives it an empty list, which a match metric scores as wrong, and counts
    it (``details["unparsed_references"]``, first indexes in ``unparsed_reference_examples``);
    ``"raise"`` (for metrics that cannot score without a reference) raises a ValueError naming them."""
    if unparsed_references not in ("raise", "wrong"):
        raise ValueError(f"unparsed_references must be 'raise' or 'wrong', got {unparsed_references!r}")
    if not predictions:
        raise ValueError("no predictions to score")
    if not all(isinstance(p, str) for p in predictions):
        raise ValueError("predictions must be strings")
    refs = reference_lists(references, len(predictions))
    preds: list[str | None] = list(predictions)
    if not extract:
        return preds, refs, {}
    fn, on_references = make_extractor(extract)
    preds = [fn(p) for p in predictions]  # strings, checked above
    details: dict[str, Any] = {"extract": {"name": extract} if isinstance(extract, str) else dict(extract),
                               "unparsed": sum(p is None for p in preds)}
    if on_references:
        extracted = [[fn(r) for r in rs] for rs in refs]
        refs = [[r for r in rs if r is not None] for rs in extracted]
        bad = [i for i, rs in enumerate(refs) if not rs]
        if bad and unparsed_references == "raise":
            raise ValueError(f"extract= found nothing in the references of examples {bad[:10]} ({len(bad)} in all)")
        details.update(dropped_references=sum(r is None for rs in extracted for r in rs), unparsed_references=len(bad),
                       unparsed_reference_examples=bad[:20])
    return preds, refs, details
