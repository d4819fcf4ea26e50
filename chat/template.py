"""Chat records -> token ids with a loss mask, through the tokenizer's own chat template.

The mask is found from the rendered text, not from token ids, so it works with any template (the
SmolLM2 template has no ``{% generation %}`` markers, which TRL's ``assistant_only_loss`` needs):

- the conversation is rendered with ``apply_chat_template``; for the k-th assistant turn, the text
  rendered for the turns before it with ``add_generation_prompt=True`` must be a prefix of the text
  rendered up to and including it (a template that rewrites earlier turns when later ones are added
  fails that check: :class:`TemplateMismatch`, before any training);
- the trained span of that turn runs from the end of the generation prompt to the end of the turn's
  rendering, so the end-of-turn marker (``<|im_end|>``) is trained too: a model that never sees it as a
  target never learns to stop;
- the rendered text is tokenized once with offsets; a token is trained when its first character lies
  in a trained span. With ``train_on_inputs`` every token is trained.

Padding never enters the mask by token id: SmolLM2's pad token *is* its end-of-turn token, and masking
"pad" ids would mask every end-of-turn target (the most reported silent failure). Packed batches have no
padding at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100


class TemplateMismatch(ValueError):
    """The chat template does not render conversations prefix-stably: spans cannot be located."""


@dataclass
class Encoded:
    """One record, tokenized: ``labels`` is ``input_ids`` with untrained tokens set to -100."""

    input_ids: list[int]
    labels: list[int]
    n_tokens_full: int  # before truncation
    spans: list[tuple[int, int]] = field(default_factory=list)  # trained character spans of ``text``
    text: str = ""

    @property
    def n_trainable(self) -> int:
        """Tokens that carry a label (count in the loss): the assistant spans, or every token with ``train_on_inputs``."""
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    @property
    def truncated(self) -> bool:
        """Whether ``max_seq_len`` cut tokens off the end of the rendered conversation."""
        return self.n_tokens_full > len(self.input_ids)


class ChatEncoder:
    """Renders, tokenizes and masks chat records for one tokenizer.

    ``max_seq_len`` truncates (from the right: the prompt is kept, the end of a long answer goes), and
    the caller counts truncated examples; ``train_on_inputs`` trains on every token.
    """

    def __init__(self, tokenizer: Any, max_seq_len: int, train_on_inputs: bool = False):
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateMismatch("the tokenizer has no chat template: set one (tokenizer.chat_template) or pick an instruct model")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.train_on_inputs = train_on_inputs

    def render(self, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of its assistant turns."""
        tok = self.tokenizer
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        full = tok.apply_chat_template(messages, tokenize=False)
        spans = []
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = tok.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True) if k else ""
            through = tok.apply_chat_template(messages[: k + 1], tokenize=False)
            if not full.startswith(through) or not through.startswith(before):
                raise TemplateMismatch(
                    f"the chat template does not render turn {k + 1} prefix-stably (rendering the conversation up to it "
                    "is not a prefix of rendering the whole conversation), so the assistant spans cannot be located"
                )
            if m["content"] not in through[len(before):]:
                raise TemplateMismatch(f"the chat template drops or rewrites the content of assistant turn {k + 1}")
            spans.append((len(before), len(through)))
        return full, spans

    def encode(self, messages: Sequence[dict[str, str]]) -> Encoded:
        """Render ``messages`` with the tokenizer's chat template and tokenize them: input ids plus labels that
        mask everything outside assistant turns (unless ``train_on_inputs``), truncated to ``max_seq_len``.
        Raises TemplateMismatch when the template does not render assistant turns prefix-stably."""
        text, spans = self.render(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if self.train_on_inputs:
            labels = list(ids)
        else:
            labels = [IGNORE_INDEX] * len(ids)
            j = 0
            for i, (start, _end) in enumerate(offsets):
                while j < len(spans) and start >= spans[j][1]:
                    j += 1
                if j < len(spans) and spans[j][0] <= start < spans[j][1]:
                    labels[i] = ids[i]
        n = len(ids)
        return Encoded(ids[: self.max_seq_len], labels[: self.max_seq_len], n, spans, text)


def mask_audit(encoder: ChatEncoder, records: Iterable[Sequence[dict[str, str]]], show: int = 3, mark: tuple[str, str] = ("⟦", "⟧")) -> dict[str, Any]:
    """Render records through the real template with the trained spans marked.

    Returns ``{"examples": [marked text of the first ``show`` records], "trainable_share": [share of
    trainable tokens per record], "no_trainable": [indexes of records with no trainable token]}``. Run
    before training: a record with nothing to learn is rejected with a reason, not discovered mid-run.
    """
    examples: list[str] = []
    shares: list[float] = []
    empty: list[int] = []
    for i, messages in enumerate(records):
        e = encoder.encode(messages)
        share = e.n_trainable / len(e.input_ids) if e.input_ids else 0.0
        shares.append(share)
        if e.n_trainable == 0:
            empty.append(i)
        if len(examples) < show:
            examples.append(marked_text(encoder.tokenizer, e, mark))
    return {"examples": examples, "trainable_share": shares, "no_trainable": empty}


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
