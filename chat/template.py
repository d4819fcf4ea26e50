"""Chat records -> token ids with a loss mask, through the tokenizer's own chat template.

The mask is found from the rendered text, not from token ids, so it works with any template (the
SmolLM2 template has no ``{% generation %}`` markers, which TRL's ``assistant_only_loss`` needs):

- the conversation is rendered with ``apply_chat_template`` (message dicts passed as given, a ``None``
  content as ""; ``tools`` passed through); for the k-th assistant turn, the text rendered for the turns
  before it with ``add_generation_prompt=True`` must be a prefix of the text rendered up to and including
  it (a template that rewrites earlier turns when later ones are added fails that check:
  :class:`TemplateMismatch`, before any training);
- the trained span of an answer runs from the end of the generation prompt through the end-of-turn token
  (``<|im_end|>``; any special token, the eos among them, that ends the turn's rendering once trailing
  whitespace is set aside): a model that never sees it as a target never learns to stop. Whitespace the
  template puts after it (ChatML's newline) is glue, not a target. A template whose turns end in no
  special token keeps the whole turn's rendering as the span;
- an assistant turn whose content is empty (or only whitespace) and carries no tool call, or whose rendering
  holds nothing but whitespace before its end of turn, trains nothing, not even its end of turn: it would
  teach the model to stop at once. A record with no non-empty answer has nothing to learn
  (:attr:`Encoded.reason`);
- the text is tokenized in segments cut at the edges of the trained spans, and the ids concatenated: the
  prompt is tokenized alone, as at generation time, so a token never straddles a span edge (an answer that
  starts with whitespace would otherwise lose its first token to the prompt's newline, merged into one
  token that lies mostly in the prompt). A tokenizer that marks the start of every text it is given
  (sentencepiece's "▁") gets a special token in front of each later segment, dropped again, so the segment
  is tokenized as the continuation it is;
- message content is text: content holding the text of a special token (``"<|im_end|>"``) is located in
  the rendering and tokenized with ``split_special_tokens=True``, so it never becomes a control token
  (:attr:`Encoded.special_text` says it happened); everything else is tokenized as the tokenizer does;
- ``max_seq_len`` is enforced by ``truncation`` (:data:`TRUNCATIONS`): ``turn`` cuts after the last answer
  that ends within it, so no half answer is trained; ``drop`` rejects the record; ``tokens`` cuts at
  ``max_seq_len`` wherever that falls, a half answer included (:attr:`Encoded.half_answer`);
- with ``train_on_inputs`` every token is trained, except an empty answer's span.

Padding never enters the mask by token id: SmolLM2's pad token *is* its end-of-turn token, and masking
"pad" ids would mask every end-of-turn target (the most reported silent failure). Packed batches have no
padding at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100
TRUNCATIONS = ("turn", "drop", "tokens")  # how a conversation longer than max_seq_len is handled
# stand-ins for content while locating it in a rendering: private-use characters no template rewrites
_MARK = re.compile("\ue000(\\d+)\ue001")


class TemplateMismatch(ValueError):
    """The chat template does not render conversations prefix-stably: spans cannot be located."""


@dataclass
class Encoded:
    """One record, tokenized: ``labels`` is ``input_ids`` with untrained tokens set to -100.

    ``spans`` are the trained character spans of ``text`` (one per non-empty answer, each through its
    end-of-turn token); ``answers`` counts the non-empty assistant answers of the record and
    ``empty_answers`` the empty ones (trained on nothing). ``cut`` says how ``max_seq_len`` was enforced:
    None (it fits), ``"turn"`` (cut after the last answer that fits), ``"tokens"`` (cut at ``max_seq_len``;
    ``half_answer`` when that falls inside an answer) or ``"drop"`` (nothing trained). ``special_text``:
    some message content holds the text of a special token (tokenized as text)."""

    input_ids: list[int]
    labels: list[int]
    n_tokens_full: int  # before truncation
    spans: list[tuple[int, int]] = field(default_factory=list)
    text: str = ""
    answers: int = 0
    empty_answers: int = 0
    cut: str | None = None
    half_answer: bool = False
    special_text: bool = False

    @property
    def n_trainable(self) -> int:
        """Tokens that carry a label (count in the loss): the answers' spans, or every token with ``train_on_inputs``."""
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    @property
    def truncated(self) -> bool:
        """Whether ``max_seq_len`` cut tokens off the end of the rendered conversation."""
        return self.n_tokens_full > len(self.input_ids)

    @property
    def reason(self) -> str | None:
        """Why the record is not trained on (a line for ``rejected.jsonl``), or None when it has a trainable token."""
        if self.cut == "drop":
            return f"longer than max_seq_len: {self.n_tokens_full} tokens (truncation: drop)"
        if self.n_trainable:
            return None
        if not self.answers:
            if self.empty_answers:
                return "no trainable token: every assistant answer is empty"
            return "no trainable token (no assistant turn)"
        return "truncated: no complete answer within max_seq_len" if self.cut == "turn" else "truncated: no assistant token left within max_seq_len"


def _anchor(tokenizer: Any, special_texts: list[str]) -> tuple[str, int] | None:
    """How to tokenize a piece of text as the continuation of a longer text: None when tokenizing pieces apart
    and joining the ids already gives the joined text (byte-level BPE: SmolLM2, Llama 3, Qwen); else a special
    token's (text, id) to put in front of each piece and drop again (sentencepiece tokenizers mark the start of
    every text they are given with "▁", but not the text after a special token), or None when that does not
    help either (nothing better to do then)."""

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def joined(parts: list[list[int]], want: str) -> bool:
        return tokenizer.decode([i for p in parts for i in p], skip_special_tokens=False, clean_up_tokenization_spaces=False) == want

    probes = (("Hi", "there"), ("1\n", "x y"))
    if all(joined([ids(a), ids(b)], a + b) for a, b in probes):
        return None
    for text in [tokenizer.eos_token, *special_texts]:
        if text and len(ids(text)) == 1:
            (tid,) = ids(text)
            if all(ids(text + b)[0] == tid and joined([ids(a), ids(text + b)[1:]], a + b) for a, b in probes):
                return text, tid
    return None


def _special_texts(tokenizer: Any) -> list[str]:
    """The text of every special token the tokenizer matches as a unit inside plain text, longest first."""
    texts = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            texts.add(str(tok.content))
    return sorted((t for t in texts if t), key=len, reverse=True)


class ChatEncoder:
    """Renders, tokenizes and masks chat records for one tokenizer.

    ``max_seq_len`` is enforced by ``truncation`` (``turn``, ``drop`` or ``tokens``: see the module
    docstring) and the caller counts what was cut (:attr:`Encoded.cut`); ``train_on_inputs`` trains on
    every token but empty answers.
    """

    def __init__(self, tokenizer: Any, max_seq_len: int, train_on_inputs: bool = False, truncation: str = "turn"):
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateMismatch("the tokenizer has no chat template: set one (tokenizer.chat_template) or pick an instruct model")
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, not {truncation!r}")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.train_on_inputs = train_on_inputs
        self.truncation = truncation
        self.special_texts = _special_texts(tokenizer)
        self.anchor = _anchor(tokenizer, self.special_texts)

    def _apply(self, messages: list[dict[str, Any]], tools: list[dict] | None, generation_prompt: bool = False) -> str:
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": generation_prompt}
        if tools is not None:
            kwargs["tools"] = tools
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    @staticmethod
    def _messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        # every key kept (tool calls, names, ... are the template's business); only a missing content is ""
        return [{**m, "content": m.get("content") or ""} for m in messages]

    def render(self, messages: Sequence[dict[str, Any]], tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of its assistant turns, one per assistant turn:
        from the end of its generation prompt to the end of the turn's rendering (whitespace after the
        end-of-turn token and empty answers included: :meth:`encode` trains less). Message dicts are passed
        to ``apply_chat_template`` as given (a ``None`` content as ""), ``tools`` too when not None.
        Raises TemplateMismatch when the template does not render assistant turns prefix-stably."""
        return self._render(self._messages(messages), tools)

    def _render(self, messages: list[dict[str, Any]], tools: list[dict] | None) -> tuple[str, list[tuple[int, int]]]:
        full = self._apply(messages, tools)
        spans = []
        for k, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            before = self._apply(messages[:k], tools, generation_prompt=True) if k else ""
            through = self._apply(messages[: k + 1], tools)
            if not full.startswith(through) or not through.startswith(before):
                raise TemplateMismatch(
                    f"the chat template does not render turn {k + 1} prefix-stably (rendering the conversation up to it "
                    "is not a prefix of rendering the whole conversation), so the assistant spans cannot be located"
                )
            if m["content"] not in through[len(before):]:
                raise TemplateMismatch(f"the chat template drops or rewrites the content of assistant turn {k + 1}")
            spans.append((len(before), len(through)))
        return full, spans

    def _turn_end(self, text: str, start: int, end: int) -> tuple[int, str]:
        """Where the trained span of the turn ``text[start:end]`` ends: right after the special token that
        ends it once trailing whitespace is set aside, else at ``end``; and the turn's body, what the
        template rendered before that token."""
        stripped = text[start:end].rstrip()
        for token in self.special_texts:
            if stripped.endswith(token):
                return start + len(stripped), stripped[: -len(token)]
        return end, text[start:end]

    def _content_ranges(self, messages: list[dict[str, Any]], tools: list[dict] | None, full: str, which: list[int],
                        generation_prompt: bool = False) -> list[tuple[int, int]]:
        """The character ranges of the contents of ``messages[which]`` in ``full``: the conversation is
        rendered again with those contents replaced by marks, and the marks put back must give ``full``."""
        marked = [{**m, "content": f"\ue000{k}\ue001"} if k in which else m for k, m in enumerate(messages)]
        text = self._apply(marked, tools, generation_prompt)
        out, ranges, last, pos = [], [], 0, 0
        for mt in _MARK.finditer(text):
            content = messages[int(mt.group(1))]["content"]
            pos += mt.start() - last
            out += [text[last:mt.start()], content]
            ranges.append((pos, pos + len(content)))
            pos += len(content)
            last = mt.end()
        out.append(text[last:])
        if "".join(out) != full:
            raise TemplateMismatch("the chat template rewrites message content, so special-token text in it cannot be kept as text")
        return ranges

    def _pieces(self, text: str, edges: list[int], as_text: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], dict[int, list[int]]]:
        """``text`` cut at ``edges`` into pieces, each tokenized apart: (the pieces' character ranges, piece index ->
        its ids). Pieces inside ``as_text`` (content holding special-token text) are tokenized as plain text."""
        cuts = sorted({0, len(text), *edges})
        pieces = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        literal = [any(s <= a and b <= e for s, e in as_text) for a, b in pieces]
        ids_of: dict[int, list[int]] = {}
        for flag in (False, True):
            idx = [i for i, lit in enumerate(literal) if lit == flag]
            if not idx:
                continue
            # a piece past the start is tokenized as a continuation (see _anchor). Not content holding special-token
            # text: the anchor would be split too; with a sentencepiece tokenizer that content may keep a leading "▁"
            anchored = [self.anchor is not None and not flag and pieces[i][0] > 0 for i in idx]
            prefix = self.anchor[0] if self.anchor else ""
            texts = [prefix * a + text[pieces[i][0]:pieces[i][1]] for i, a in zip(idx, anchored)]
            enc = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=flag)["input_ids"]
            ids_of.update((i, list(e[1:] if a else e)) for i, a, e in zip(idx, anchored, enc))
        return pieces, ids_of

    def prompt_ids(self, messages: Sequence[dict[str, Any]], tools: list[dict] | None = None) -> list[int]:
        """The token ids of ``messages`` rendered with the generation prompt: what a model reads before it answers.
        Content holding the text of a special token is tokenized as text, as training tokenizes it (whole
        otherwise, as the tokenizer does)."""
        msgs = self._messages(messages)
        text = self._apply(msgs, tools, generation_prompt=True)
        special = [k for k, m in enumerate(msgs) if any(t in str(m["content"]) for t in self.special_texts)]
        if not special:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        as_text = self._content_ranges(msgs, tools, text, special, generation_prompt=True)
        pieces, ids_of = self._pieces(text, [x for r in as_text for x in r], as_text)
        return [t for i in range(len(pieces)) for t in ids_of[i]]

    def encode(self, messages: Sequence[dict[str, Any]], tools: list[dict] | None = None, train_from: int = 0) -> Encoded:
        """Render ``messages`` with the tokenizer's chat template and tokenize them: input ids plus labels that
        mask everything outside the answers' trained spans (unless ``train_on_inputs``), ``max_seq_len``
        enforced by ``truncation``. ``train_from``: answers in the first ``train_from`` turns are context, not
        trained (the prompt of a preference pair; its completion starts there). Raises TemplateMismatch when the
        template does not render assistant turns prefix-stably (or rewrites content that holds special-token
        text)."""
        msgs = self._messages(messages)
        text, turns = self._render(msgs, tools)
        answers = [(k, m) for k, m in enumerate(msgs) if m.get("role") == "assistant"]
        trained: list[tuple[int, int]] = []
        empty: list[tuple[int, int]] = []
        for (k, m), (start, end) in zip(answers, turns):
            if k < train_from:
                continue
            stop, body = self._turn_end(text, start, end)
            # empty: nothing but whitespace rendered before the end of turn, or neither content nor a tool call
            # (a template may render fixed text into every turn)
            is_empty = not body.strip() or (not str(m["content"]).strip() and not m.get("tool_calls"))
            (empty if is_empty else trained).append((start, stop))
        special = [k for k, m in enumerate(msgs) if any(t in str(m["content"]) for t in self.special_texts)]
        as_text = self._content_ranges(msgs, tools, text, special) if special else []

        # segments cut at every span edge (and around content holding special-token text), tokenized apart
        pieces, ids_of = self._pieces(text, [x for s in trained + empty + as_text for x in s], as_text)

        ids: list[int] = []
        labels: list[int] = []
        answer_starts: list[int] = []
        answer_ends: list[int] = []
        for i, (a, b) in enumerate(pieces):
            if any(a == s for s, _e in trained):
                answer_starts.append(len(ids))
            in_answer = any(s <= a and b <= e for s, e in trained)
            in_empty = any(s <= a and b <= e for s, e in empty)
            # train_on_inputs trains the prompts too, never an empty answer, nor a record without an answer
            learn = bool(trained) and (in_answer or (self.train_on_inputs and not in_empty))
            piece = ids_of[i]
            ids += piece
            labels += piece if learn else [IGNORE_INDEX] * len(piece)
            if any(b == e for _s, e in trained):
                answer_ends.append(len(ids))

        n_full, limit = len(ids), self.max_seq_len
        cut, half = None, False
        if n_full > limit:
            cut = self.truncation
            if cut == "turn":
                fit = max((e for e in answer_ends if e <= limit), default=0)
                if fit:
                    ids, labels = ids[:fit], labels[:fit]
                else:  # not even the first answer fits: nothing is trained
                    ids, labels = ids[:limit], [IGNORE_INDEX] * limit
            elif cut == "drop":
                ids, labels = ids[:limit], [IGNORE_INDEX] * limit
            else:
                ids, labels = ids[:limit], labels[:limit]
                half = any(s < limit < e for s, e in zip(answer_starts, answer_ends))
        return Encoded(ids, labels, n_full, trained, text, len(trained), len(empty), cut, half, bool(special))


def mask_audit(encoder: ChatEncoder, records: Iterable[Sequence[dict[str, Any]]], show: int = 3, mark: tuple[str, str] = ("⟦", "⟧")) -> dict[str, Any]:
    """Render records through the real template with the trained spans marked.

    Returns ``{"examples": [marked text of the first ``show`` records], "trainable_share": [share of
    trainable tokens per record], "no_trainable": [indexes of records with no trainable token],
    "reasons": {index: why it has none}, "cut": {index: how max_seq_len cut it}, "half_answer": [indexes
    of records whose cut falls inside an answer], "special_text": [indexes of records whose content holds
    special-token text]}``. Run before training: a record with nothing to learn is rejected with a reason,
    and a cut one is counted, not discovered mid-run.
    """
    examples: list[str] = []
    shares: list[float] = []
    empty: list[int] = []
    reasons: dict[int, str] = {}
    cut: dict[int, str] = {}
    half: list[int] = []
    special: list[int] = []
    for i, messages in enumerate(records):
        e = encoder.encode(messages)
        share = e.n_trainable / len(e.input_ids) if e.input_ids else 0.0
        shares.append(share)
        if e.reason:
            empty.append(i)
            reasons[i] = e.reason
        if e.cut:
            cut[i] = e.cut
        if e.half_answer:
            half.append(i)
        if e.special_text:
            special.append(i)
        if len(examples) < show:
            examples.append(marked_text(encoder.tokenizer, e, mark))
    return {"examples": examples, "trainable_share": shares, "no_trainable": empty, "reasons": reasons, "cut": cut,
            "half_answer": half, "special_text": special}


def marked_text(tokenizer: Any, e: Encoded, mark: tuple[str, str] = ("⟦", "⟧")) -> str:
    """The record's tokens decoded one by one, trained runs wrapped in ``mark``: what the loss sees."""
    out, inside = [], False
    for tid, lab in zip(e.input_ids, e.labels):
        trained = lab != IGNORE_INDEX
        if trained != inside:
            out.append(mark[0] if trained else mark[1])
            inside = trained
        out.append(tokenizer.decode([tid]))
    if inside:
        out.append(mark[1])
    return "".join(out)
