"""Shape detection and conversion of parsed records to the canonical chat schema, plus normalization.

Shapes, recognized per record so one file may mix them:

- ``openai``: ``messages`` = [{role, content}] (content may be a list of parts; text parts are joined)
- ``sharegpt``: ``conversations`` = [{from, value}] with human/gpt/system aliases
- ``alpaca``: ``instruction``, ``input`` (optional), ``output`` (optional ``system``, ``history``)
- ``dolly``: ``instruction``, ``context`` (optional), ``response``, ``category`` (kept in meta)
- ``prompt_completion``: ``prompt`` and ``completion`` (or ``response``); an Alpaca-templated prompt
  ("### Instruction: ... ### Response:") is unwrapped into a plain user turn
- ``mapped``: any other columns, through an explicit ``mapping`` in the input's config

Every shape is a :class:`Shape` class in one registry, :data:`SHAPES`: this list, and any shape a user's module
registers (``@register_shape``, a ``plugins:`` entry, a ``shape: ./my_shape.py:MyShape`` spec, or the entry
point group ``finetune_workbench.shapes``). Configs validate ``shape`` against it (:func:`resolve_shape`), and
``auto`` detection asks each registered shape in registration order, the built-ins above first.

A record that cannot be converted raises :class:`ShapeError` naming the field; the pipeline quarantines it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import polars as pl

from curate.registry import Registry, RegistryError, UnknownNameError
from curate.schema import MESSAGES, RECORD_SCHEMA

DEFAULT_ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "person": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "ai": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
}

# Values people put in an optional input field to mean "nothing" (Alpaca has thousands of them). They are
# compared by their words only (see ``_placeholder_key``), so "<noinput>", "(noinput)", "< noinput >",
# "\\<noinput\\>", "`<noinput>`" and "NoInput." are one entry, and "<N/A>", "N/A" and "n/a" another (so
# "<blank>" also matches an input "Blank": short common words that may be data, "empty", "nothing", stay out).
DEFAULT_PLACEHOLDERS = (
    "<noinput>", "<no input>", "no input", "<none>", "none", "n/a", "na", "null", "nan", "nil", "-", "--", "...",
    "<input>", "input:", "no input required", "no input needed", "no input necessary", "no input provided",
    "no input given", "not applicable", "<blank>", "no additional input", "no context", "no context needed",
)
# Values standing for a missing answer (Alpaca has "<nooutput>", "No output required", "N/A", even "<noinput>").
# "None" is not one: it is a real answer to many questions ("Which of these is prime?").
DEFAULT_OUTPUT_PLACEHOLDERS = (
    "<nooutput>", "<no output>", "no output", "no output required", "no output needed", "no output necessary",
    "<noanswer>", "n/a", "<noinput>", "<no input>",
)
# Input placeholders that are also values in code ("None", "null", "NaN"): data, not a placeholder, when the
# instruction is about code or values ("What does this function return for the input None?").
_CODE_VALUE_PLACEHOLDERS = frozenset({"none", "null", "nan", "nil"})
_CODE_INSTRUCTION = re.compile(
    r"(?i)\b(?:code|coding|function|program|programming|python|javascript|java|c\+\+|sql|script|algorithm|variable"
    r"|argument|parameter|method|class|return|returns|print|debug|compile|data ?type|json|value|values|null|none|nan)\b"
)
# A generator's "<noinput>" with a stray short token before or after it ("<noinput> 8", "The <noinput>"), as
# a placeholder key: up to three word characters on either side of the marker.
_MARKER_WITH_STRAY = re.compile(r"^(?:\w{1,3} )?(?:no ?input|no ?output)(?: \w{1,3})?$")
DEFAULT_EOS_MARKERS = ("<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<eos>")

ALPACA_TEMPLATE = re.compile(
    r"^\s*(?:Below is an instruction.*?\n\s*\n)?### Instruction:\s*\n(?P<instruction>.*?)"
    r"(?:\n\s*\n### Input:\s*\n(?P<input>.*?))?\n\s*\n### Response:\s*$",
    re.DOTALL,
)


class ShapeError(ValueError):
    """A record that cannot become a canonical record; ``field`` names the offending field."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class Shape:
    """A record shape: which parsed records it recognizes, and how it turns one into chat turns.

    A user's shape sets ``name`` and ``fields`` and implements :meth:`convert`::

        @register_shape
        class QAPairs(Shape):
            name = "qa_pairs"
            fields = ("question", "answer")   # auto detection: a record with all of them is this shape

            def convert(self, record):
                return [{"role": "user", "content": record["question"]},
                        {"role": "assistant", "content": record["answer"]}]

    The contract: :meth:`convert` returns the conversation as ``[{"role", "content"}]`` (roles system, user
    or assistant, or an alias the input's ``role_aliases`` maps; contents strings). It raises
    :class:`ShapeError` naming the field for a record it cannot convert; any other exception it raises is
    turned into one, so the record is quarantined with the message, never lost. Fields not in ``fields`` are
    kept in the record's ``meta`` (all of them are, when ``fields`` is empty). Normalization (NFC, whitespace,
    end-of-sequence markers) is applied to the result as to every shape's.
    """

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()
    # False: never chosen by `auto` (a shape that needs its own settings, as `mapped` needs a mapping)
    detectable: ClassVar[bool] = True
    # True when an overridden detect() still looks only at which fields are present, never at values
    # (auto detection then runs once per distinct key list); the default detect() is such a one
    detects_by_keys: ClassVar[bool] = False

    def detect(self, record: Mapping[str, Any]) -> bool:
        """Whether ``auto`` should read ``record`` as this shape; default: every field of ``fields`` is present."""
        return bool(self.fields) and all(f in record for f in self.fields)

    def convert(self, record: Mapping[str, Any]) -> list[dict[str, str]]:  # pragma: no cover - interface
        """The record as ``[{"role": ..., "content": ...}]``."""
        raise NotImplementedError

    def turns(self, record: Mapping[str, Any], converter: Converter, fixes: list[str]) -> tuple[list[str], list[str], set[str]]:
        """(roles, contents, fields used) of ``record``, through :meth:`convert`; the built-in shapes override
        it to apply the input's placeholder and template settings."""
        try:
            messages = self.convert(record)
        except ShapeError:
            raise
        except Exception as exc:  # a user's converter: its failure quarantines the record, with the reason
            text = str(exc).splitlines()[0] if str(exc) else ""
            raise ShapeError(None, f"shape {self.name!r} failed: {type(exc).__name__}: {text}") from None
        if not isinstance(messages, list) or not messages:
            raise ShapeError(None, f"shape {self.name!r} returned {type(messages).__name__}, not a non-empty list of messages")
        roles, contents = [], []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise ShapeError(None, f"shape {self.name!r}: message {i} is a {type(m).__name__}, not {{role, content}}")
            roles.append(converter._role(m.get("role"), f"messages[{i}].role"))
            contents.append(_text(m.get("content"), f"messages[{i}].content", required=True))
        return roles, contents, set(self.fields) if self.fields else set(record)


class UnknownShapeError(UnknownNameError):
    """A shape name that is not registered."""


def _shape_class(name: str, obj: Any) -> type[Shape]:
    """``obj`` itself when it is a :class:`Shape` subclass named ``name``; RegistryError otherwise."""
    if not (isinstance(obj, type) and issubclass(obj, Shape)):
        raise RegistryError(f"{obj!r} is not a shape class (a subclass of curate.shapes.Shape)")
    if getattr(obj, "name", None) != name:
        raise RegistryError(f"shape class {obj.__qualname__} has name {getattr(obj, 'name', None)!r}, registered as {name!r}")
    if name == "auto":
        raise RegistryError("'auto' means \"detect the shape\"; a shape needs another name")
    return obj


#: Every shape a config can name, in registration order (the order ``auto`` tries them).
SHAPES: Registry[type[Shape]] = Registry("shape", coerce=_shape_class, error=UnknownShapeError)


def register_shape(cls: type[Shape]) -> type[Shape]:
    """Class decorator: register a :class:`Shape` under its ``name`` (``shape: NAME`` in a config; tried by
    ``auto`` after the shapes registered before it)."""
    return SHAPES.register(cls)


def resolve_shape(value: str, base_dir: str | Path | None = None) -> str:
    """The shape name a config's ``shape`` means: ``auto``, a registered name, or a ``module:Class`` /
    ``./file.py:Class`` spec (imported and registered). :class:`UnknownShapeError` with a did-you-mean
    (a ValueError), or a RegistryError naming a missing module, file or class."""
    if value == "auto":
        return value
    try:
        return SHAPES.lookup(value, base_dir)[0]
    except UnknownShapeError:
        raise SHAPES.unknown(value, extra=("auto",)) from None


def shape_names() -> list[str]:
    """``auto`` and every registered shape, in the order ``auto`` tries them."""
    SHAPES.load()
    return ["auto", *SHAPES.entries]


@register_shape
class OpenAIShape(Shape):
    """``messages`` = [{role, content}]; content may be a list of parts (text parts joined)."""

    name = "openai"
    fields = ("messages",)

    def turns(self, record, converter, fixes):  # noqa: D102 - Shape.turns
        return converter._openai(record, fixes)


@register_shape
class ShareGPTShape(Shape):
    """``conversations`` = [{from, value}] with human/gpt/system aliases (optional ``system``)."""

    name = "sharegpt"
    fields = ("conversations",)

    def turns(self, record, converter, fixes):  # noqa: D102 - Shape.turns
        return converter._sharegpt(record)


@register_shape
class AlpacaShape(Shape):
    """``instruction``, ``input`` (optional), ``output`` (optional ``system``, ``history``)."""

    name = "alpaca"
    fields = ("instruction", "output")

    def turns(self, record, converter, fixes):  # noqa: D102 - Shape.turns
        return converter._alpaca(record, fixes)


@register_shape
class DollyShape(Shape):
    """``instruction``, ``context`` (optional), ``response``; ``category`` kept in meta."""

    name = "dolly"
    fields = ("instruction", "response")

    def turns(self, record, converter, fixes):  # noqa: D102 - Shape.turns
        return converter._dolly(record, fixes)


@register_shape
class PromptCompletionShape(Shape):
    """``prompt`` and ``completion`` (or ``response``); an Alpaca-templated prompt is unwrapped."""

    name = "prompt_completion"
    fields = ("prompt",)
    detects_by_keys = True

    def detect(self, record):  # noqa: D102 - Shape.detect
        return "prompt" in record and ("completion" in record or "response" in record)

    def turns(self, record, converter, fixes):  # noqa: D102 - Shape.turns
        return converter._prompt_completion(record, fixes)


@register_shape
class MappedShape(Shape):
    """Any other columns, through the input's explicit ``mapping`` (never detected)."""

    name = "mapped"
    detectable = False

    def turns(self, record, converter, fixes):  # noqa: D102 - Shape.turns
        return converter._mapped(record, fixes)


class Converter:
    """Turns parsed records into (shape, roles, contents, meta, fixes); one per input spec."""

    def __init__(
        self,
        shape: str = "auto",
        mapping: Mapping[Any, str | Sequence[str]] | None = None,  # role -> column(s); keys may be a Literal of roles
        role_aliases: Mapping[str, str] | None = None,
        placeholders: Sequence[str] = DEFAULT_PLACEHOLDERS,
        output_placeholders: Sequence[str] = DEFAULT_OUTPUT_PLACEHOLDERS,
        eos_markers: Sequence[str] = DEFAULT_EOS_MARKERS,
        unwrap_templates: bool = True,
    ):
        self.shape = shape
        self.mapping = dict(mapping or {})
        self.roles = {**DEFAULT_ROLE_ALIASES, **{k.lower(): v for k, v in (role_aliases or {}).items()}}
        self.placeholders = {_placeholder_key(p) for p in placeholders}
        self.output_placeholders = {_placeholder_key(p) for p in output_placeholders}
        self.eos_markers = tuple(eos_markers)
        self.unwrap_templates = unwrap_templates
        # the registry as it stands now: a shape registered later is seen by the next Converter
        SHAPES.load()
        if shape == "auto":
            self._fixed: Shape | None = None
            self._detectors = [cls() for cls in SHAPES.entries.values() if cls.detectable]
        else:
            self._fixed = SHAPES.lookup(shape)[1]()
            self._detectors = []
        # detection by the record's keys alone (every shape's detect looks only at which fields are present)
        # can be remembered per key list
        self._by_keys = all(s.detects_by_keys or type(s).detect is Shape.detect for s in self._detectors)
        self._seen: dict[tuple, Shape] = {}

    # -- detection -------------------------------------------------------------------------------------
    def detect(self, rec: Mapping[str, Any]) -> str:
        """The name of the shape ``rec`` is: the configured one, or the first registered shape whose
        ``detect`` accepts it; ShapeError listing the record's fields when none does."""
        return self._shape_of(rec).name

    def _shape_of(self, rec: Mapping[str, Any]) -> Shape:
        if self._fixed is not None:
            return self._fixed
        if self._by_keys:  # records of one file share their keys: detect once per key list
            keys = tuple(rec)
            found = self._seen.get(keys)
            if found is None:
                found = self._detect(rec)
                if len(self._seen) < 4096:
                    self._seen[keys] = found
            return found
        return self._detect(rec)

    def _detect(self, rec: Mapping[str, Any]) -> Shape:
        for shape in self._detectors:
            if shape.detect(rec):
                return shape
        keys = ", ".join(sorted(map(str, rec))[:12])
        raise ShapeError(None, f"unrecognized shape (fields: {keys}); set `shape` and `mapping` for this input")

    def convert(self, rec: Mapping[str, Any]) -> tuple[str, list[str], list[str], str, list[str]]:
        """(shape, roles, contents, meta JSON, fixes) for one parsed record; ShapeError if impossible.

        Contents come out NFC-normalized with EOS markers stripped from assistant turns; whitespace is
        normalized later, vectorized, by :func:`build_frame`.
        """
        fixes: list[str] = []
        # Fast path for the most common record of all: a plain Alpaca row of strings (a million of them
        # must convert in a few seconds); anything unusual takes the general path below.
        if self.shape == "auto" and len(rec) == 3 and "instruction" in rec and "output" in rec and "input" in rec:
            ins, inp, out = rec["instruction"], rec["input"], rec["output"]
            if type(ins) is str and type(inp) is str and type(out) is str and ins:
                if inp and is_placeholder(inp, self.placeholders, ins):
                    fixes.append("placeholder_input")
                    inp = ""
                if is_placeholder(out, self.output_placeholders):
                    fixes.append("placeholder_output")
                    out = ""
                elif out.rstrip().endswith(self.eos_markers):
                    out = self._strip_eos(out, fixes)
                user = f"{ins}\n\n{inp}" if inp else ins
                if not user.isascii():
                    user = unicodedata.normalize("NFC", user)
                if not out.isascii():
                    out = unicodedata.normalize("NFC", out)
                return "alpaca", ["user", "assistant"], [user, out], "{}", fixes
        found = self._shape_of(rec)
        shape = found.name
        roles, contents, used = found.turns(rec, self, fixes)
        for i, role in enumerate(roles):
            if role == "assistant" and contents[i].rstrip().endswith(self.eos_markers):
                contents[i] = self._strip_eos(contents[i], fixes)
        contents = [c if c.isascii() else unicodedata.normalize("NFC", c) for c in contents]
        if len(rec) > len(used):
            rest = {k: v for k, v in rec.items() if k not in used}
            meta = orjson.dumps(rest, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode()
        else:
            meta = "{}"
        return shape, roles, contents, meta, fixes

    # -- shapes ------------------------------------------------------------------------------------------
    def _openai(self, rec, fixes):
        msgs = rec.get("messages")
        if not isinstance(msgs, list):
            raise ShapeError("messages", f"`messages` must be a list, got {type(msgs).__name__}")
        roles, contents = [], []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise ShapeError(f"messages[{i}]", f"message must be an object, got {type(m).__name__}")
            role = self._role(m.get("role"), f"messages[{i}].role")
            content = m.get("content")
            if isinstance(content, list):
                content = self._join_parts(content, f"messages[{i}].content", fixes)
            if content is None and m.get("tool_calls"):
                raise ShapeError(f"messages[{i}].tool_calls", "tool calls are not representable in the system/user/assistant schema")
            roles.append(role)
            contents.append(_text(content, f"messages[{i}].content"))
        return roles, contents, {"messages"}

    def _join_parts(self, parts: list, where: str, fixes: list[str]) -> str:
        out = []
        for j, part in enumerate(parts):
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                out.append(_text(part.get("text"), f"{where}[{j}].text"))
            elif isinstance(part, dict) and part.get("type") in ("image_url", "image", "input_image", "input_audio", "file"):
                # keep a visible marker: the unseeable_context stage rejects turns that depend on media
                out.append(f"<{part['type'].replace('input_', '').replace('_url', '')}>")
                fixes.append("media_placeholder")
            else:
                raise ShapeError(f"{where}[{j}]", f"unsupported content part {str(part)[:60]!r}")
        return "\n".join(out)

    def _sharegpt(self, rec):
        conv = rec.get("conversations")
        if not isinstance(conv, list):
            raise ShapeError("conversations", f"`conversations` must be a list, got {type(conv).__name__}")
        roles, contents = [], []
        for i, turn in enumerate(conv):
            if not isinstance(turn, dict):
                raise ShapeError(f"conversations[{i}]", f"turn must be an object, got {type(turn).__name__}")
            who = turn.get("from", turn.get("role"))
            roles.append(self._role(who, f"conversations[{i}].from"))
            contents.append(_text(turn.get("value", turn.get("content")), f"conversations[{i}].value"))
        used = {"conversations"}
        system = rec.get("system")
        if isinstance(system, str) and system.strip():
            roles.insert(0, "system")
            contents.insert(0, system)
            used.add("system")
        return roles, contents, used

    def _alpaca(self, rec, fixes):
        instruction = _text(rec.get("instruction"), "instruction", required=True)
        inp = self._optional_input(rec, "input", fixes)
        output = self._output(rec, "output", fixes)
        roles, contents, used = [], [], {"instruction", "input", "output"}
        system = rec.get("system")
        if isinstance(system, str) and system.strip():
            roles.append("system")
            contents.append(system)
            used.add("system")
        history = rec.get("history")
        if isinstance(history, list) and history:
            for i, pair in enumerate(history):
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                    raise ShapeError(f"history[{i}]", "history items must be [prompt, response] pairs")
                roles += ["user", "assistant"]
                contents += [_text(pair[0], f"history[{i}][0]"), _text(pair[1], f"history[{i}][1]")]
            used.add("history")
        roles += ["user", "assistant"]
        contents += [f"{instruction}\n\n{inp}" if inp else instruction, output]
        return roles, contents, used

    def _dolly(self, rec, fixes):
        instruction = _text(rec.get("instruction"), "instruction", required=True)
        context = self._optional_input(rec, "context", fixes)
        response = self._output(rec, "response", fixes)
        return ["user", "assistant"], [f"{instruction}\n\n{context}" if context else instruction, response], {
            "instruction", "context", "response"}

    def _prompt_completion(self, rec, fixes):
        prompt = _text(rec.get("prompt"), "prompt", required=True)
        key = "completion" if "completion" in rec else "response"
        completion = self._output(rec, key, fixes)
        if self.unwrap_templates and "### Instruction" in prompt:
            m = ALPACA_TEMPLATE.match(prompt)
            if m:
                inp = (m.group("input") or "").strip()
                if is_placeholder(inp, self.placeholders, m.group("instruction")):
                    inp = ""
                prompt = m.group("instruction").strip() + (f"\n\n{inp}" if inp else "")
                fixes.append("template_unwrapped")
        return ["user", "assistant"], [prompt, completion], {"prompt", key}

    def _mapped(self, rec, fixes):
        roles, contents, used = [], [], set()
        for role in ("system", "user", "assistant"):
            cols = self.mapping.get(role)
            if not cols:
                continue
            cols = [cols] if isinstance(cols, str) else list(cols)
            parts: list[str] = []
            for col in cols:
                if col not in rec:
                    raise ShapeError(col, f"missing field {col!r} (mapped to {role})")
                value = rec[col]
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = str(value)  # an explicit mapping says this column is text
                value = _text(value, col)
                used.add(col)
                if role == "user" and parts and is_placeholder(value, self.placeholders, parts[0]):
                    fixes.append("placeholder_input")
                    continue
                if value.strip():
                    parts.append(value)
            if parts or role != "system":
                roles.append(role)
                contents.append("\n\n".join(parts))
        return roles, contents, used

    # -- helpers -----------------------------------------------------------------------------------------
    def _role(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise ShapeError(where, f"role must be a string, got {type(value).__name__}")
        role = self.roles.get(value.strip().lower())
        if role is None:
            raise ShapeError(where, f"role {value!r} is not system/user/assistant; map it with `role_aliases`")
        return role

    def _optional_input(self, rec, key: str, fixes: list[str]) -> str:
        value = rec.get(key)
        if value is None:
            return ""
        value = _text(value, key)
        if is_placeholder(value, self.placeholders, rec.get("instruction") if isinstance(rec.get("instruction"), str) else ""):
            fixes.append("placeholder_input")
            return ""
        return value

    def _output(self, rec, key: str, fixes: list[str]) -> str:
        if key not in rec:
            raise ShapeError(key, f"missing field {key!r}")
        value = _text(rec.get(key), key, required=True)
        if is_placeholder(value, self.output_placeholders):
            fixes.append("placeholder_output")
            return ""
        return value

    def _strip_eos(self, text: str, fixes: list[str]) -> str:
        stripped = text.rstrip()
        changed = False
        for marker in self.eos_markers:
            while stripped.endswith(marker):
                stripped = stripped[: -len(marker)].rstrip()
                changed = True
        if changed:
            fixes.append("eos_marker")
            return stripped
        return text


def _text(value: Any, where: str, required: bool = False) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        if required:
            raise ShapeError(where, f"missing value for {where!r}")
        return ""
    raise ShapeError(where, f"{where!r} must be a string, got {type(value).__name__}")


_NOT_WORD = re.compile(r"[\W_]+")


def _placeholder_key(value: str) -> str:
    """The words of a short value, lower-cased and single-spaced, for comparison with the placeholder lists.

    Brackets, quotes, slashes, backslashes and dots go: '"<noinput>"', '(noinput)', '< noinput >',
    '\\<noinput\\>' and 'NoInput.' all give "noinput", '<N/A>' and 'N/A' give "n a". A value without any
    word character keeps its stripped self ("-", "...").
    """
    key = " ".join(_NOT_WORD.sub(" ", value.lower()).split())
    return key if key else value.strip()


def is_placeholder(value: str, keys: set[str] | frozenset[str], instruction: str = "") -> bool:
    """True when ``value`` (an optional input or an answer) stands for "nothing": its key is one of ``keys``
    (keys made by ``_placeholder_key``), or it is a "<noinput>"/"<nooutput>" marker with a stray token of up to
    three characters around it. A code value among the keys ("None", "null", "NaN") is data when
    ``instruction`` is about code or values. Values of 40 characters or more are never placeholders."""
    if len(value) >= 40 or not value.strip():
        return False
    key = _placeholder_key(value)
    if key in keys:
        return not (key in _CODE_VALUE_PLACEHOLDERS and instruction and _CODE_INSTRUCTION.search(instruction))
    return bool(_MARKER_WITH_STRAY.match(key))


# -- normalization, vectorized -------------------------------------------------------------------------------
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u200c\u200d\u2060\ufeff]"


def normalize_content(expr: pl.Expr) -> pl.Expr:
    """Whitespace normalization that keeps code intact: CRLF to LF, control and zero-width characters
    removed, no-break spaces to spaces, trailing spaces on lines removed, 3+ newlines to 2, ends stripped.
    Runs of spaces inside lines are left alone (indentation matters in code answers)."""
    return (
        expr.str.replace_all(r"\r\n?", "\n")
        .str.replace_all(_CONTROL, "")
        .str.replace_all("\u00a0", " ", literal=True)
        .str.replace_all(r"[ \t]+\n", "\n")
        .str.replace_all(r"\n{3,}", "\n\n")
        .str.strip_chars()
    )


_NEEDS_NORMALIZING = r"[\x00-\x08\x0b-\x1f\x7f\u00a0\u200b\u200c\u200d\u2060\ufeff]|[ \t]\n|\n\n\n"


def normalize_series(contents: pl.Series) -> pl.Series:
    """:func:`normalize_content` on a Series, running the regex chain only on the strings that need it
    (a few percent in practice), then stripping all."""
    mask = contents.str.contains(_NEEDS_NORMALIZING)
    if mask.any():
        fixed = contents.filter(mask).to_frame("c").select(normalize_content(pl.col("c"))).to_series()
        contents = contents.scatter(mask.arg_true(), fixed)
    return contents.str.strip_chars()


def content_ids(roles: Sequence[str], contents: Sequence[str], offsets: Sequence[int]) -> list[str]:
    """Stable content hashes (16 hex digits of XXH3-64) of normalized conversations, from flat turns."""
    import xxhash

    h = xxhash.xxh3_64_hexdigest
    out = []
    for i in range(len(offsets) - 1):
        a, b = offsets[i], offsets[i + 1]
        if b - a == 2:  # the common single-exchange record, without building a list
            out.append(h(f"{roles[a]}\x1f{contents[a]}\x1e{roles[a + 1]}\x1f{contents[a + 1]}".encode("utf-8", "surrogatepass")))
        else:
            out.append(h("\x1e".join(f"{roles[k]}\x1f{contents[k]}" for k in range(a, b)).encode("utf-8", "surrogatepass")))
    return out


def build_frame(
    uids: Sequence[int],
    source_file: str,
    lines: Sequence[int],
    shapes: Sequence[str],
    roles: Sequence[list[str]],
    contents: Sequence[list[str]],
    metas: Sequence[str],
    fixes: Sequence[list[str]],
) -> pl.DataFrame:
    """A normalized canonical batch (without derived columns) from per-record lists of turns."""
    import pyarrow as pa

    offsets = [0]
    for rs in roles:
        offsets.append(offsets[-1] + len(rs))
    flat_roles = pl.Series([r for rs in roles for r in rs], dtype=pl.Utf8)
    flat_contents = pl.Series([c for cs in contents for c in cs], dtype=pl.Utf8)
    flat_contents = normalize_series(flat_contents)
    ids = content_ids(flat_roles.to_list(), flat_contents.to_list(), offsets)
    structs = pa.StructArray.from_arrays([flat_roles.to_arrow(), flat_contents.to_arrow()], names=["role", "content"])
    msg_arr = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), structs)
    fix_offsets = [0]
    for f in fixes:
        fix_offsets.append(fix_offsets[-1] + len(f))
    fix_arr = pa.LargeListArray.from_arrays(
        pa.array(fix_offsets, pa.int64()), pa.array([x for f in fixes for x in f], pa.large_string())
    )
    n = len(uids)
    return pl.DataFrame(
        {
            "uid": pl.Series(uids, dtype=pl.Int64),
            "id": pl.Series(ids, dtype=pl.Utf8),
            "source_file": pl.repeat(source_file, n, dtype=pl.Utf8, eager=True),
            "source_line": pl.Series(lines, dtype=pl.Int64),
            "shape": pl.Series(shapes, dtype=pl.Utf8),
            "messages": pl.Series(msg_arr).cast(MESSAGES),
            "meta": pl.Series(metas, dtype=pl.Utf8),
            "fixes": pl.Series(fix_arr).cast(pl.List(pl.Utf8)),
        }
    ).select(list(RECORD_SCHEMA))
