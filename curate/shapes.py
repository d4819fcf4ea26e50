"""Shape detection and conversion of parsed records to the canonical chat schema, plus normalization.

Shapes, recognized per record so one file may mix them (``auto`` tries them in this order):

- ``llamafactory_preference``: ``conversations`` + ``chosen`` + ``rejected`` (LLaMA-Factory's DPO layout)
- ``trl_preference``: ``prompt`` + ``chosen`` + ``rejected``, strings or message lists (TRL's layout)
- ``implicit_preference``: ``chosen`` + ``rejected`` full transcripts sharing their prompt (message lists, or
  Anthropic HH-RLHF's "Human: ... Assistant: ..." strings)
- ``kto``: a conversation and a boolean ``label`` (``messages`` + ``label``, ``conversations`` + ``kto_tag``,
  ``prompt`` + ``completion`` + ``label``)
- ``oasst_tree``: an OpenAssistant tree (best-ranked branch, every branch, or ranked pairs: :mod:`curate.trees`)
- ``openai``: ``messages`` = [{role, content}] (content may be a list of parts; text parts are joined), with
  ``tool_calls``, tool results and a ``tools`` list in OpenAI's shape
- ``sharegpt``: ``conversations`` = [{from, value}] with human/gpt/system aliases, and LLaMA-Factory's
  ``function_call`` / ``observation`` turns and ``tools``
- ``alpaca``: ``instruction``, ``input`` (optional), ``output`` (optional ``system``, ``history``)
- ``dolly``: ``instruction``, ``context`` (optional), ``response``, ``category`` (kept in meta)
- ``prompt_completion``: ``prompt`` and ``completion`` (or ``response``); an Alpaca-templated prompt
  ("### Instruction: ... ### Response:") is unwrapped into a plain user turn
- ``prompt_only``: a line that is a bare JSON string (a prompt with nothing to learn)
- ``mapped``: any other columns, through an explicit ``mapping`` in the input's config

Preference pairs and KTO records are one canonical record each (``kind``), so every stage, the ledger and the
splits treat a pair as one unit; see :mod:`curate.schema` for the columns.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

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
    "tool": "tool",
    "function": "tool",  # OpenAI's older function-calling format
    "observation": "tool",  # LLaMA-Factory's ShareGPT tool results
    "ipython": "tool",  # Llama 3.1's tool results
    "function_call": "\x00call",  # LLaMA-Factory's ShareGPT tool calls: the turn's content is the call
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


@dataclass(slots=True)
class Extra:
    """What a converted record holds beyond plain system/user/assistant text (None on a plain record).

    - ``kind``: ``sft``, ``preference`` or ``kto`` (see :mod:`curate.schema`)
    - ``turns``: per turn of the conversation, None or ``{"tool_calls": [...], "tool_call_id": ..., "name": ...}``
      (only the keys that are set); None when no turn has any
    - ``tools``: the JSON text of the tool definitions, OpenAI's shape
    - ``rejected``: the rejected completion of a preference pair, as ``(roles, contents, turns)``
    - ``prompt_turns``: how many leading turns are the prompt (preference and KTO records)
    - ``label``: a KTO record's desirability
    - ``meta``: fields to add to the record's meta (what a shape learned on the way, e.g. a tree path's flags)
    """

    kind: str = "sft"
    turns: list[dict[str, Any] | None] | None = None
    tools: str | None = None
    rejected: tuple[list[str], list[str], list[dict[str, Any] | None] | None] | None = None
    prompt_turns: int | None = None
    label: bool | None = None
    meta: dict[str, Any] | None = None


class Converted(NamedTuple):
    """One canonical record before normalization: its shape, turns (roles and contents), meta JSON, fixes, and
    :class:`Extra` (None for a plain conversation)."""

    shape: str
    roles: list[str]
    contents: list[str]
    meta: str
    fixes: list[str]
    extra: Extra | None = None


class Parsed(NamedTuple):
    """What a shape makes of a record: roles, contents, the fields it used (the rest goes to meta), and
    :class:`Extra` or None."""

    roles: list[str]
    contents: list[str]
    used: set[str]
    extra: Extra | None = None


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

    The contract: :meth:`convert` returns the conversation as OpenAI-style messages, ``[{"role", "content"}]``
    (roles system, user, assistant or tool, or an alias the input's ``role_aliases`` maps; contents strings;
    an assistant message may carry ``tool_calls`` and a tool message ``tool_call_id`` and ``name``, as in
    OpenAI's API). It raises :class:`ShapeError` naming the field for a record it cannot convert; any other
    exception it raises is turned into one, so the record is quarantined with the message, never lost. Fields
    not in ``fields`` are kept in the record's ``meta`` (all of them are, when ``fields`` is empty).
    Normalization (NFC, whitespace, end-of-sequence markers) is applied to the result as to every shape's.

    Built-in shapes that make preference pairs, KTO records or several records from one input record override
    :meth:`parse` instead.
    """

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()
    # False: never chosen by `auto` (a shape that needs its own settings, as `mapped` needs a mapping)
    detectable: ClassVar[bool] = True
    # True when an overridden detect() still looks only at which fields are present, never at values
    # (auto detection then runs once per distinct key list; the type of a `label` / `kto_tag` value counts too);
    # the default detect() is such a one
    detects_by_keys: ClassVar[bool] = False

    def detect(self, record: Mapping[str, Any]) -> bool:
        """Whether ``auto`` should read ``record`` as this shape; default: every field of ``fields`` is present."""
        return bool(self.fields) and all(f in record for f in self.fields)

    def convert(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:  # pragma: no cover - interface
        """The record as ``[{"role": ..., "content": ...}]``."""
        raise NotImplementedError

    def parse(self, record: Mapping[str, Any], converter: Converter, fixes: list[str]) -> list[Parsed]:
        """The canonical records ``record`` becomes (one for every shape but an expanded conversation tree),
        through :meth:`convert`."""
        try:
            messages = self.convert(record)
        except ShapeError:
            raise
        except Exception as exc:  # a user's converter: its failure quarantines the record, with the reason
            text = str(exc).splitlines()[0] if str(exc) else ""
            raise ShapeError(None, f"shape {self.name!r} failed: {type(exc).__name__}: {text}") from None
        if not isinstance(messages, list) or not messages:
            raise ShapeError(None, f"shape {self.name!r} returned {type(messages).__name__}, not a non-empty list of messages")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise ShapeError(None, f"shape {self.name!r}: message {i} is a {type(m).__name__}, not {{role, content}}")
        roles, contents, turns = converter.messages(messages, "messages", fixes, required=True)
        return [Parsed(roles, contents, set(self.fields) if self.fields else set(record), Extra(turns=turns) if turns else None)]


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


# -- the built-in shapes, in the order `auto` tries them: the specific layouts (preference pairs, KTO, trees)
# before the general ones whose fields they share ------------------------------------------------------------
def _completion_split(roles: list[str], where: str) -> int:
    """How many leading turns of a full transcript are the prompt: everything up to the last user turn."""
    last_user = max((i for i, r in enumerate(roles) if r == "user"), default=-1)
    if last_user < 0 or last_user == len(roles) - 1:
        raise ShapeError(where, "no completion after the last user turn")
    return last_user + 1


def _pair(prompt: tuple[list[str], list[str], list | None], chosen: tuple[list[str], list[str], list | None],
          rejected: tuple[list[str], list[str], list | None], used: set[str], tools: str | None) -> Parsed:
    """A preference pair as one canonical record: ``messages`` = prompt + chosen, ``rejected`` apart."""
    roles, contents = prompt[0] + chosen[0], prompt[1] + chosen[1]
    turns = _join_turns(prompt, chosen)
    return Parsed(roles, contents, used, Extra("preference", turns, tools, rejected, len(prompt[0])))


def _join_turns(*parts: tuple[list[str], list[str], list | None]) -> list | None:
    """The per-turn extras of consecutive parts, or None when none has any."""
    if all(p[2] is None for p in parts):
        return None
    out: list = []
    for p in parts:
        out += p[2] if p[2] is not None else [None] * len(p[0])
    return out


@register_shape
class LlamaFactoryPreferenceShape(Shape):
    """LLaMA-Factory's preference layout: ``conversations`` (the prompt, ShareGPT turns) with ``chosen`` and
    ``rejected`` each one {from, value} turn (or a list of turns); optional ``system`` and ``tools``."""

    name = "llamafactory_preference"
    fields = ("conversations", "chosen", "rejected")

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        prompt = converter.sharegpt_turns(record.get("conversations"), "conversations", fixes)
        sides = []
        for key in ("chosen", "rejected"):
            value = record.get(key)
            sides.append(converter.sharegpt_turns([value] if isinstance(value, Mapping) else value, key, fixes, pending_from=prompt))
        system = record.get("system")
        used = {"conversations", "chosen", "rejected", "tools"}
        if isinstance(system, str) and system.strip():
            prompt = (["system", *prompt[0]], [system, *prompt[1]], None if prompt[2] is None else [None, *prompt[2]])
            used.add("system")
        return [_pair(prompt, sides[0], sides[1], used, converter.tools(record, fixes))]


@register_shape
class TrlPreferenceShape(Shape):
    """TRL's preference layout: ``prompt``, ``chosen``, ``rejected``, each a string (standard) or a list of
    messages (conversational); optional ``tools``."""

    name = "trl_preference"
    fields = ("prompt", "chosen", "rejected")

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        prompt = converter.side(record.get("prompt"), "prompt", "user", fixes)
        chosen = converter.side(record.get("chosen"), "chosen", "assistant", fixes, pending_from=prompt)
        rejected = converter.side(record.get("rejected"), "rejected", "assistant", fixes, pending_from=prompt)
        return [_pair(prompt, chosen, rejected, {"prompt", "chosen", "rejected", "tools"}, converter.tools(record, fixes))]


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def hh_turns(transcript: str, where: str) -> tuple[list[str], list[str]]:
    """(roles, contents) of an Anthropic HH transcript: "\\n\\nHuman: ...\\n\\nAssistant: ..." turns."""
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise ShapeError(where, 'not a "Human: ... Assistant: ..." transcript')
    roles = ["user" if who == "Human" else "assistant" for who in parts[1::2]]
    return roles, [c.strip() for c in parts[2::2]]


@register_shape
class ImplicitPromptPreferenceShape(Shape):
    """A preference pair as two full transcripts, ``chosen`` and ``rejected``, sharing their prompt: lists of
    messages (TRL's implicit-prompt layout) or Anthropic HH-RLHF's "Human: ... Assistant: ..." strings. The
    prompt is everything up to the last user turn, which both transcripts must share."""

    name = "implicit_preference"
    fields = ("chosen", "rejected")

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        sides = []
        for key in ("chosen", "rejected"):
            value = record.get(key)
            if isinstance(value, str):
                roles, contents = hh_turns(value, key)
                sides.append((roles, contents, None))
            else:
                sides.append(converter.messages(value, key, fixes, required=True))
        (cr, cc, ct), (rr, rc, rt) = sides
        k = _completion_split(cr, "chosen")
        if rr[:k] != cr[:k] or rc[:k] != cc[:k]:
            raise ShapeError("rejected", "chosen and rejected do not share their prompt (the turns up to the last user turn)")
        prompt = (cr[:k], cc[:k], ct[:k] if ct else None)
        chosen = (cr[k:], cc[k:], ct[k:] if ct else None)
        rejected = (rr[k:], rc[k:], rt[k:] if rt else None)
        if not rejected[0]:
            raise ShapeError("rejected", "no completion after the shared prompt")
        return [_pair(prompt, chosen, rejected, {"chosen", "rejected", "tools"}, converter.tools(record, fixes))]


@register_shape
class KtoShape(Shape):
    """Unpaired preference (KTO): a conversation whose last completion is labeled desirable or not. LLaMA-Factory's
    ``messages`` + ``label`` or ``conversations`` + ``kto_tag``, and TRL's ``prompt`` + ``completion`` +
    ``label`` (strings or message lists). The label must be a boolean."""

    name = "kto"
    detects_by_keys = True

    def detect(self, record):  # noqa: D102 - Shape.detect
        # a boolean label only: `messages` with a category label (a string) are a plain conversation
        return (isinstance(record.get("label"), bool) and ("messages" in record or ("prompt" in record and "completion" in record))) or (
            isinstance(record.get("kto_tag"), bool) and "conversations" in record)

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        label_key = "kto_tag" if "kto_tag" in record else "label"
        label = record.get(label_key)
        if not isinstance(label, bool):
            raise ShapeError(label_key, f"{label_key!r} must be true or false, got {label!r}")
        tools = converter.tools(record, fixes)
        if "prompt" in record and "completion" in record:
            prompt = converter.side(record.get("prompt"), "prompt", "user", fixes)
            completion = converter.side(record.get("completion"), "completion", "assistant", fixes, pending_from=prompt)
            roles, contents = prompt[0] + completion[0], prompt[1] + completion[1]
            return [Parsed(roles, contents, {"prompt", "completion", label_key, "tools"},
                           Extra("kto", _join_turns(prompt, completion), tools, None, len(prompt[0]), label))]
        if "messages" in record:
            roles, contents, turns = converter.messages(record.get("messages"), "messages", fixes, required=True)
            used = {"messages", label_key, "tools"}
        else:
            roles, contents, turns = converter.sharegpt_turns(record.get("conversations"), "conversations", fixes)
            used = {"conversations", label_key, "tools", "system"}
            system = record.get("system")
            if isinstance(system, str) and system.strip():
                roles, contents = ["system", *roles], [system, *contents]
                turns = None if turns is None else [None, *turns]
        k = _completion_split(roles, "messages" if "messages" in record else "conversations")
        return [Parsed(roles, contents, used, Extra("kto", turns, tools, None, k, label))]


@register_shape
class OasstTreeShape(Shape):
    """An OpenAssistant conversation tree: a tree export line (``message_tree_id``, ``prompt`` with nested
    ``replies``) or a root message with nested replies (the message export). Read per the input's ``trees``
    setting: the best-ranked branch (default), every branch, or preference pairs from the ranks
    (:mod:`curate.trees`). The tree's other fields, and each message's ``lang`` and ``synthetic`` flags over the
    path, go to meta."""

    name = "oasst_tree"
    detects_by_keys = True

    def detect(self, record):  # noqa: D102 - Shape.detect
        return ("message_tree_id" in record and "prompt" in record) or (
            "message_id" in record and "replies" in record and "text" in record and "parent_id" in record)

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        from curate import trees

        root = trees.tree_root(record)
        if root is None or not isinstance(root.get("text"), str):
            raise ShapeError("prompt", "an OASST tree needs a root message with text")
        used = {"prompt"} if "message_tree_id" in record else set(record)

        def turns(path: list[Mapping[str, Any]]) -> tuple[list[str], list[str], None]:
            return [converter.role(m.get("role"), "prompt.role") for m in path], [m["text"] for m in path], None

        def conversation(path: list[Mapping[str, Any]]) -> Parsed:
            roles, contents, _ = turns(path)
            return Parsed(roles, contents, used, _with_flags(None, path))

        mode = converter.trees
        if mode == "pairs":
            out = []
            for path, best, worse in trees.ranked_pairs(root):
                p = _pair(turns(path), turns([best]), turns([worse]), used, None)
                out.append(p._replace(extra=_with_flags(p.extra, [*path, best, worse])))
            if not out:
                raise ShapeError("prompt.replies", "no prompter message in this tree has two ranked assistant replies")
            return out
        branches = trees.all_branches(root) if mode == "all" else [trees.best_branch(root)]
        return [conversation(path) for path in branches]


def _with_flags(extra: Extra | None, path: list[Mapping[str, Any]]) -> Extra:
    """``extra`` (or a plain one) with the path's OASST flags for meta: synthetic anywhere, languages."""
    extra = extra or Extra()
    extra.meta = {"oasst_synthetic": any(bool(m.get("synthetic")) for m in path),
                  "oasst_lang": sorted({m["lang"] for m in path if isinstance(m.get("lang"), str)})}
    return extra


@register_shape
class OpenAIShape(Shape):
    """``messages`` = [{role, content}] in OpenAI's chat format: content may be a list of parts (text parts
    joined); assistant ``tool_calls`` (or the older ``function_call``), ``tool`` (or ``function``) results, and a
    ``tools`` (or ``functions``) list of definitions."""

    name = "openai"
    fields = ("messages",)

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        roles, contents, turns = converter.messages(record.get("messages"), "messages", fixes)
        tools = converter.tools(record, fixes)
        extra = Extra(turns=turns, tools=tools) if turns or tools else None
        return [Parsed(roles, contents, {"messages", "tools", "functions"}, extra)]


@register_shape
class ShareGPTShape(Shape):
    """``conversations`` = [{from, value}] with human/gpt/system aliases (optional ``system``); LLaMA-Factory's
    ``function_call`` and ``observation`` turns become an assistant tool call and its tool result, and its
    ``tools`` (a JSON text of definitions) the record's tools."""

    name = "sharegpt"
    fields = ("conversations",)

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        roles, contents, turns = converter.sharegpt_turns(record.get("conversations"), "conversations", fixes)
        used = {"conversations", "tools"}
        system = record.get("system")
        if isinstance(system, str) and system.strip():
            roles, contents = ["system", *roles], [system, *contents]
            turns = None if turns is None else [None, *turns]
            used.add("system")
        tools = converter.tools(record, fixes)
        extra = Extra(turns=turns, tools=tools) if turns or tools else None
        return [Parsed(roles, contents, used, extra)]


@register_shape
class AlpacaShape(Shape):
    """``instruction``, ``input`` (optional), ``output`` (optional ``system``, ``history``)."""

    name = "alpaca"
    fields = ("instruction", "output")

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        return [Parsed(*converter._alpaca(record, fixes))]


@register_shape
class DollyShape(Shape):
    """``instruction``, ``context`` (optional), ``response``; ``category`` kept in meta."""

    name = "dolly"
    fields = ("instruction", "response")

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        return [Parsed(*converter._dolly(record, fixes))]


@register_shape
class PromptCompletionShape(Shape):
    """``prompt`` and ``completion`` (or ``response``): strings, or message lists (TRL's conversational
    prompt-completion); an Alpaca-templated prompt is unwrapped."""

    name = "prompt_completion"
    fields = ("prompt",)
    detects_by_keys = True

    def detect(self, record):  # noqa: D102 - Shape.detect
        return "prompt" in record and ("completion" in record or "response" in record)

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        key = "completion" if "completion" in record else "response"
        if isinstance(record.get("prompt"), list) or isinstance(record.get(key), list):
            prompt = converter.side(record.get("prompt"), "prompt", "user", fixes)
            completion = converter.side(record.get(key), key, "assistant", fixes, pending_from=prompt)
            turns = _join_turns(prompt, completion)
            tools = converter.tools(record, fixes)
            extra = Extra(turns=turns, tools=tools) if turns or tools else None
            return [Parsed(prompt[0] + completion[0], prompt[1] + completion[1], {"prompt", key, "tools"}, extra)]
        return [Parsed(*converter._prompt_completion(record, fixes))]


@register_shape
class PromptOnlyShape(Shape):
    """A bare JSON string (a line that is a string, not an object): a prompt with no answer, such as a file of
    generation prompts. It becomes one user turn (the structure check rejects it as having nothing to learn)."""

    name = "prompt_only"
    detects_by_keys = True

    def detect(self, record):  # noqa: D102 - Shape.detect
        return False  # strings are routed here by the converter; objects never are

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        return [Parsed(["user"], [_text(record.get(_BARE), "(the line)", required=True)], {_BARE})]


_BARE = "\x00text"  # the key under which a bare-string record is passed to PromptOnlyShape


@register_shape
class MappedShape(Shape):
    """Any other columns, through the input's explicit ``mapping`` (never detected)."""

    name = "mapped"
    detectable = False

    def parse(self, record, converter, fixes):  # noqa: D102 - Shape.parse
        return [Parsed(*converter._mapped(record, fixes))]


_CALL_ROLE = "\x00call"  # what `function_call` turns resolve to: an assistant turn whose content is a call


class Converter:
    """Turns parsed records into canonical records (:class:`Converted`); one per input spec."""

    def __init__(
        self,
        shape: str = "auto",
        mapping: Mapping[Any, str | Sequence[str]] | None = None,  # role -> column(s); keys may be a Literal of roles
        role_aliases: Mapping[str, str] | None = None,
        placeholders: Sequence[str] = DEFAULT_PLACEHOLDERS,
        output_placeholders: Sequence[str] = DEFAULT_OUTPUT_PLACEHOLDERS,
        eos_markers: Sequence[str] = DEFAULT_EOS_MARKERS,
        unwrap_templates: bool = True,
        trees: str = "best",
    ):
        self.shape = shape
        self.mapping = dict(mapping or {})
        self.roles = {**DEFAULT_ROLE_ALIASES, **{k.lower(): v for k, v in (role_aliases or {}).items()}}
        self.placeholders = {_placeholder_key(p) for p in placeholders}
        self.output_placeholders = {_placeholder_key(p) for p in output_placeholders}
        self.eos_markers = tuple(eos_markers)
        self.unwrap_templates = unwrap_templates
        self.trees = trees
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
        self._prompt_only = PromptOnlyShape()

    # -- detection -------------------------------------------------------------------------------------
    def detect(self, rec: Mapping[str, Any] | str) -> str:
        """The name of the shape ``rec`` is: the configured one, or the first registered shape whose
        ``detect`` accepts it; ShapeError listing the record's fields when none does."""
        return self._shape_of(rec).name

    def _shape_of(self, rec: Mapping[str, Any] | str) -> Shape:
        if isinstance(rec, str):
            return self._prompt_only
        if self._fixed is not None:
            return self._fixed
        if self._by_keys:  # records of one file share their keys: detect once per key list
            keys: tuple[Any, ...] = tuple(rec)
            if "label" in rec or "kto_tag" in rec:  # whether a label is boolean decides KTO (KtoShape.detect)
                keys += (type(rec.get("label")), type(rec.get("kto_tag")))
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

    def convert(self, rec: Mapping[str, Any] | str) -> Converted:
        """The canonical record ``rec`` becomes (the first, for a tree read as several): ShapeError if impossible.
        See :meth:`records`."""
        return self.records(rec)[0]

    def records(self, rec: Mapping[str, Any] | str) -> list[Converted]:
        """Every canonical record ``rec`` becomes (one, but for a conversation tree read as all branches or as
        pairs); ShapeError if none can be made.

        Contents come out NFC-normalized with EOS markers stripped from assistant turns; whitespace is
        normalized later, vectorized, by :func:`build_frame`.
        """
        fixes: list[str] = []
        # Fast path for the most common record of all: a plain Alpaca row of strings (a million of them
        # must convert in a few seconds); anything unusual takes the general path below.
        if self.shape == "auto" and type(rec) is dict and len(rec) == 3 and "instruction" in rec and "output" in rec and "input" in rec:
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
                return [Converted("alpaca", ["user", "assistant"], [user, out], "{}", fixes)]
        found = self._shape_of(rec)
        record: Mapping[str, Any] = {_BARE: rec} if isinstance(rec, str) else rec
        parsed = found.parse(record, self, fixes)
        out_records = []
        for roles, contents, used, extra in parsed:
            rec_fixes = list(fixes)
            contents = self._finish(roles, contents, rec_fixes)
            if extra is not None and extra.rejected is not None:
                rr, rc, rt = extra.rejected
                extra.rejected = (rr, self._finish(rr, rc, rec_fixes), rt)
            flags = extra.meta if extra is not None else None
            if isinstance(rec, str):
                meta = "{}"
            elif len(record) > len(used & set(record)) or flags:
                rest = {k: v for k, v in record.items() if k not in used}
                if flags:
                    rest.update(flags)
                meta = orjson.dumps(rest, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode()
            else:
                meta = "{}"
            if extra is not None and extra.kind == "sft" and extra.turns is None and extra.tools is None:
                extra = None  # a plain conversation (its meta flags are in meta already)
            out_records.append(Converted(found.name, roles, contents, meta, list(dict.fromkeys(rec_fixes)), extra))
        if not out_records:
            raise ShapeError(None, f"shape {found.name!r} made no record of this one")
        return out_records

    def _finish(self, roles: list[str], contents: list[str], fixes: list[str]) -> list[str]:
        """Contents with EOS markers stripped from assistant turns and NFC applied."""
        for i, role in enumerate(roles):
            if role == "assistant" and contents[i].rstrip().endswith(self.eos_markers):
                contents[i] = self._strip_eos(contents[i], fixes)
        return [c if c.isascii() else unicodedata.normalize("NFC", c) for c in contents]

    # -- turns in OpenAI's message shape, and ShareGPT's ----------------------------------------------------
    def messages(self, msgs: Any, where: str, fixes: list[str], required: bool = False,
                 pending_from: tuple[list[str], list[str], list | None] | None = None,
                 names: tuple[str, str] = ("role", "content")) -> tuple[list[str], list[str], list | None]:
        """(roles, contents, per-turn extras or None) of a list of OpenAI-style messages; tool calls become
        ``tool_calls`` in OpenAI's shape (``function_call`` too), tool results (role ``tool`` or ``function``)
        carry the id of the call they answer (taken from the earliest unanswered call when missing).
        ``pending_from``: the prompt whose unanswered calls a completion's tool results may answer; ``names``:
        the role and content fields as errors name them."""
        if not isinstance(msgs, list):
            raise ShapeError(where, f"`{where}` must be a list, got {type(msgs).__name__}")
        roles: list[str] = []
        contents: list[str] = []
        turns: list[dict[str, Any] | None] = []
        pending = _pending_calls(pending_from)
        for i, m in enumerate(msgs):
            at = f"{where}[{i}]"
            if not isinstance(m, Mapping):
                raise ShapeError(at, f"message must be an object, got {type(m).__name__}")
            role = self.role(m.get("role"), f"{at}.{names[0]}")
            content = m.get("content")
            if isinstance(content, list):
                content = self._join_parts(content, f"{at}.{names[1]}", fixes)
            extra: dict[str, Any] | None = None
            calls = m.get("tool_calls")
            if calls is None and m.get("function_call") is not None:
                calls = [{"type": "function", "function": m.get("function_call")}]
            if role == _CALL_ROLE:  # a turn whose content is the call (a `function_call` role)
                role, calls, content = "assistant", [self._call_from_text(content, f"{at}.{names[1]}")], None
            if calls:
                if role != "assistant":
                    raise ShapeError(f"{at}.tool_calls", f"only an assistant turn can call tools, not a {role} turn")
                extra = {"tool_calls": self._tool_calls(calls, f"{at}.tool_calls", i, fixes)}
                pending += [(c["id"], c["function"]["name"]) for c in extra["tool_calls"]]
            elif role == "tool":
                extra = self._tool_result(m, at, pending, fixes)
            text = _text(content, f"{at}.{names[1]}", required=required and not calls)
            roles.append(role)
            contents.append(text)
            turns.append(extra)
        return roles, contents, turns if any(t is not None for t in turns) else None

    def sharegpt_turns(self, conv: Any, where: str, fixes: list[str],
                       pending_from: tuple[list[str], list[str], list | None] | None = None) -> tuple[list[str], list[str], list | None]:
        """(roles, contents, per-turn extras or None) of ShareGPT turns ({from, value}); ``function_call`` turns
        (a JSON {name, arguments}) become assistant tool calls, ``observation`` turns their tool results."""
        if not isinstance(conv, list):
            raise ShapeError(where, f"`{where}` must be a list, got {type(conv).__name__}")
        msgs = []
        for i, turn in enumerate(conv):
            if not isinstance(turn, Mapping):
                raise ShapeError(f"{where}[{i}]", f"turn must be an object, got {type(turn).__name__}")
            who = turn.get("from", turn.get("role"))
            if not isinstance(who, str):
                raise ShapeError(f"{where}[{i}].from", f"role must be a string, got {type(who).__name__}")
            msgs.append({"role": who, "content": turn.get("value", turn.get("content"))})
        return self.messages(msgs, where, fixes, pending_from=pending_from, names=("from", "value"))

    def side(self, value: Any, where: str, role: str, fixes: list[str],
             pending_from: tuple[list[str], list[str], list | None] | None = None) -> tuple[list[str], list[str], list | None]:
        """One side of a TRL-style record: a string (one ``role`` turn) or a list of messages."""
        if isinstance(value, str):
            return [role], [value], None
        if isinstance(value, Mapping):
            value = [value]
        return self.messages(value, where, fixes, required=True, pending_from=pending_from)

    def tools(self, rec: Mapping[str, Any], fixes: list[str]) -> str | None:
        """The record's tool definitions (``tools``, or the older ``functions``) as JSON text in OpenAI's shape
        (``[{"type": "function", "function": {...}}]``); None when it has none. A JSON text is parsed; bare
        function definitions ({name, description, parameters}) are wrapped."""
        key = "tools" if rec.get("tools") not in (None, "", []) else "functions"
        value = rec.get(key)
        if value in (None, "", []):
            return None
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise ShapeError(key, f"`{key}` is not valid JSON: {exc}") from None
        if isinstance(value, Mapping):
            value = [value]
        if not isinstance(value, list):
            raise ShapeError(key, f"`{key}` must be a list of tool definitions, got {type(value).__name__}")
        out = []
        for i, tool in enumerate(value):
            if not isinstance(tool, Mapping):
                raise ShapeError(f"{key}[{i}]", f"a tool definition must be an object, got {type(tool).__name__}")
            if "function" in tool and isinstance(tool["function"], Mapping):
                fn = tool["function"]
            else:
                fn = tool
            if not isinstance(fn.get("name"), str) or not fn["name"]:
                raise ShapeError(f"{key}[{i}]", "a tool definition needs a `name`")
            out.append({"type": tool.get("type", "function"), "function": dict(fn)})
        return orjson.dumps(out).decode() if out else None

    def _tool_calls(self, calls: Any, where: str, turn: int, fixes: list[str]) -> list[dict[str, Any]]:
        if isinstance(calls, Mapping):
            calls = [calls]
        if not isinstance(calls, list):
            raise ShapeError(where, f"tool_calls must be a list, got {type(calls).__name__}")
        out = []
        for k, call in enumerate(calls):
            at = f"{where}[{k}]"
            if not isinstance(call, Mapping):
                raise ShapeError(at, f"a tool call must be an object, got {type(call).__name__}")
            fn = call.get("function") if isinstance(call.get("function"), Mapping) else (call if "name" in call else None)
            if fn is None:
                raise ShapeError(f"{at}.function", "a tool call needs a function {name, arguments}")
            name = fn.get("name")
            if not isinstance(name, str) or not name:
                raise ShapeError(f"{at}.function.name", "a tool call needs the name of the function it calls")
            args = fn.get("arguments", "{}")
            if not isinstance(args, str):  # LLaMA-Factory and HF write arguments as an object; OpenAI as JSON text
                args = orjson.dumps(args).decode()
            cid = call.get("id")
            if not isinstance(cid, str) or not cid:
                cid = f"call_{turn}_{k}"
                fixes.append("tool_call_id_added")
            out.append({"id": cid, "type": "function", "function": {"name": name, "arguments": args}})
        return out

    def _call_from_text(self, content: Any, where: str) -> dict[str, Any]:
        """A ``function_call`` turn's content, ``{"name": ..., "arguments": ...}`` as JSON text, as a call."""
        if not isinstance(content, str):
            raise ShapeError(where, f"a function_call turn holds JSON text, got {type(content).__name__}")
        try:
            call = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ShapeError(where, f"a function_call turn is not valid JSON: {exc}") from None
        if not isinstance(call, Mapping):
            raise ShapeError(where, "a function_call turn must be a JSON object {name, arguments}")
        return {"type": "function", "function": call}

    def _tool_result(self, m: Mapping[str, Any], at: str, pending: list[tuple[str, str]], fixes: list[str]) -> dict[str, Any]:
        cid, name = m.get("tool_call_id"), m.get("name")
        if cid is not None and not isinstance(cid, str):
            raise ShapeError(f"{at}.tool_call_id", f"tool_call_id must be a string, got {type(cid).__name__}")
        if cid is None and pending:  # ShareGPT observations and OpenAI's older `function` role name no id
            match = next((p for p in pending if name is None or p[1] == name), None)
            if match is not None:
                cid, name = match[0], name or match[1]
                fixes.append("tool_result_linked")
        if cid is not None:
            found = next((p for p in pending if p[0] == cid), None)
            if found is not None:
                pending.remove(found)
                name = name if isinstance(name, str) else found[1]
        return {"tool_call_id": cid, "name": name if isinstance(name, str) else None}

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
    def role(self, value: Any, where: str) -> str:
        """The canonical role (system, user, assistant, tool) of a speaker name, through the role aliases;
        ShapeError naming ``where`` for anything else."""
        if not isinstance(value, str):
            raise ShapeError(where, f"role must be a string, got {type(value).__name__}")
        role = self.roles.get(value.strip().lower())
        if role is None:
            raise ShapeError(where, f"role {value!r} is not system/user/assistant/tool; map it with `role_aliases`")
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




def _pending_calls(prompt: tuple[list[str], list[str], list | None] | None) -> list[tuple[str, str]]:
    """(id, name) of the tool calls in ``prompt``'s turns that no tool turn has answered yet."""
    if prompt is None or prompt[2] is None:
        return []
    pending: list[tuple[str, str]] = []
    for extra in prompt[2]:
        if not extra:
            continue
        pending += [(c["id"], c["function"]["name"]) for c in extra.get("tool_calls") or []]
        cid = extra.get("tool_call_id")
        pending = [p for p in pending if p[0] != cid]
    return pending


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
# Zero-width space, word joiner and BOM go; the zero-width (non-)joiners stay: they are spelling in Persian and
# Indic scripts and glue emoji sequences together.
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u2060\ufeff]"


def normalize_content(expr: pl.Expr) -> pl.Expr:
    """Whitespace normalization that keeps code intact: CRLF to LF, control characters, zero-width spaces and
    BOMs removed (zero-width joiners kept), no-break spaces to spaces, trailing spaces on lines removed, 3+ newlines to 2, ends stripped.
    Runs of spaces inside lines are left alone (indentation matters in code answers)."""
    return (
        expr.str.replace_all(r"\r\n?", "\n")
        .str.replace_all(_CONTROL, "")
        .str.replace_all("\u00a0", " ", literal=True)
        .str.replace_all(r"[ \t]+\n", "\n")
        .str.replace_all(r"\n{3,}", "\n\n")
        .str.strip_chars()
    )


_NEEDS_NORMALIZING = r"[\x00-\x08\x0b-\x1f\x7f\u00a0\u200b\u2060\ufeff]|[ \t]\n|\n\n\n"


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


def _messages_array(offsets: list[int], roles: pl.Series, contents: pl.Series, turns: list | None):
    """A pyarrow large-list array of message structs (OpenAI's shape) from flat turns; ``turns`` holds each
    turn's extras (tool calls, tool_call_id, name) or None for none in the whole batch."""
    import pyarrow as pa

    n = len(roles)
    if turns is None:
        calls = pa.nulls(n, _TOOL_CALLS_PA)
        call_ids = names = pa.nulls(n, pa.large_string())
    else:
        calls = pa.array([t.get("tool_calls") if t else None for t in turns], _TOOL_CALLS_PA)
        call_ids = pa.array([t.get("tool_call_id") if t else None for t in turns], pa.large_string())
        names = pa.array([t.get("name") if t else None for t in turns], pa.large_string())
    structs = pa.StructArray.from_arrays(
        [roles.to_arrow(), contents.to_arrow(), calls, call_ids, names], names=["role", "content", "tool_calls", "tool_call_id", "name"]
    )
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), structs)


def _tool_calls_pa():
    import pyarrow as pa

    fn = pa.struct([("name", pa.large_string()), ("arguments", pa.large_string())])
    return pa.large_list(pa.struct([("id", pa.large_string()), ("type", pa.large_string()), ("function", fn)]))


def build_frame(
    uids: Sequence[int],
    source_file: str,
    lines: Sequence[int],
    shapes: Sequence[str],
    roles: Sequence[list[str]],
    contents: Sequence[list[str]],
    metas: Sequence[str],
    fixes: Sequence[list[str]],
    extras: Sequence[Extra | None] | None = None,
) -> pl.DataFrame:
    """A normalized canonical batch (without derived columns) from per-record lists of turns, and per record its
    :class:`Extra` or None (``extras`` None: every record is a plain conversation).

    The content id of a record with extras also covers its tool calls, tools, rejected completion and label, so
    two pairs sharing a chosen answer but not the rejected one are different records."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import xxhash

    global _TOOL_CALLS_PA
    if _TOOL_CALLS_PA is None:
        _TOOL_CALLS_PA = _tool_calls_pa()
    n = len(uids)
    offsets = [0]
    for rs in roles:
        offsets.append(offsets[-1] + len(rs))
    flat_roles = pl.Series([r for rs in roles for r in rs], dtype=pl.Utf8)
    flat_contents = pl.Series([c for cs in contents for c in cs], dtype=pl.Utf8)
    flat_contents = normalize_series(flat_contents)
    ids = content_ids(flat_roles.to_list(), flat_contents.to_list(), offsets)
    rich = [i for i, e in enumerate(extras) if e is not None] if extras is not None else []
    turns: list[dict[str, Any] | None] | None = None
    msg_arr = _messages_array(offsets, flat_roles, flat_contents, None)
    rejected_arr = pa.nulls(n, msg_arr.type)
    if rich:
        assert extras is not None
        if any(extras[i].turns for i in rich):  # type: ignore[union-attr]
            turns = []
            for e, rs in zip(extras, roles):
                turns += e.turns if e is not None and e.turns is not None else [None] * len(rs)
        pair_rows = [i for i in rich if extras[i].rejected is not None]  # type: ignore[union-attr]
        rej_contents: dict[int, list[str]] = {}
        if pair_rows:
            rej_offsets, rej_roles, rej_flat = [0], [], []
            rej_turns: list[dict[str, Any] | None] = []
            for i in range(n):
                e = extras[i]
                if e is not None and e.rejected is not None:
                    rr, rc, rt = e.rejected
                    rej_roles += rr
                    rej_flat += rc
                    rej_turns += rt if rt is not None else [None] * len(rr)
                rej_offsets.append(len(rej_roles))
            normalized = normalize_series(pl.Series(rej_flat, dtype=pl.Utf8))
            values = _messages_array(rej_offsets, pl.Series(rej_roles, dtype=pl.Utf8), normalized,
                                     rej_turns if any(rej_turns) else None)
            valid = pa.array([extras[i] is not None and extras[i].rejected is not None for i in range(n)])  # type: ignore[union-attr]
            rejected_arr = pa.LargeListArray.from_arrays(pa.array(rej_offsets, pa.int64()), values.values, mask=pc.invert(valid))
            flat = normalized.to_list()
            for i in pair_rows:
                rej_contents[i] = flat[rej_offsets[i]:rej_offsets[i + 1]]
        for i in rich:
            e = extras[i]
            assert e is not None
            key = {"kind": e.kind, "turns": e.turns, "tools": e.tools, "prompt_turns": e.prompt_turns, "label": e.label,
                   "rejected": [e.rejected[0], rej_contents.get(i), e.rejected[2]] if e.rejected is not None else None}
            ids[i] = xxhash.xxh3_64_hexdigest(ids[i].encode() + b"\x1d" + orjson.dumps(key))
    if turns is not None:
        msg_arr = _messages_array(offsets, flat_roles, flat_contents, turns)
    fix_offsets = [0]
    for f in fixes:
        fix_offsets.append(fix_offsets[-1] + len(f))
    fix_arr = pa.LargeListArray.from_arrays(
        pa.array(fix_offsets, pa.int64()), pa.array([x for f in fixes for x in f], pa.large_string())
    )

    def column(get, dtype):  # type: ignore[no-untyped-def]
        if not rich:
            return pl.repeat(None, n, dtype=dtype, eager=True)
        return pl.Series([get(e) if e is not None else None for e in extras], dtype=dtype)  # type: ignore[union-attr]

    kinds = pl.repeat("sft", n, dtype=pl.Utf8, eager=True) if not rich else pl.Series(
        [e.kind if e is not None else "sft" for e in extras], dtype=pl.Utf8)  # type: ignore[union-attr]
    return pl.DataFrame(
        {
            "uid": pl.Series(uids, dtype=pl.Int64),
            "id": pl.Series(ids, dtype=pl.Utf8),
            "source_file": pl.repeat(source_file, n, dtype=pl.Utf8, eager=True),
            "source_line": pl.Series(lines, dtype=pl.Int64),
            "shape": pl.Series(shapes, dtype=pl.Utf8),
            "kind": kinds,
            "messages": pl.Series(msg_arr).cast(MESSAGES),
            "tools": column(lambda e: e.tools, pl.Utf8),
            "rejected": pl.Series(rejected_arr).cast(MESSAGES),
            "prompt_turns": column(lambda e: e.prompt_turns, pl.Int64),
            "label": column(lambda e: e.label, pl.Boolean),
            "meta": pl.Series(metas, dtype=pl.Utf8),
            "fixes": pl.Series(fix_arr).cast(pl.List(pl.Utf8)),
        }
    ).select(list(RECORD_SCHEMA))


_TOOL_CALLS_PA = None  # the pyarrow type of a message's tool_calls, built on first use (pyarrow loads lazily)
