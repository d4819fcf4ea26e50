"""Token counting with the configured tokenizer (fast Rust `tokenizers`, batched, all cores)."""

from __future__ import annotations

from pathlib import Path

import polars as pl


class TokenCounter:
    """Counts tokens of texts and of canonical conversations (turn contents joined, no template)."""

    def __init__(self, tokenizer, name: str):
        self._tok = tokenizer  # a tokenizers.Tokenizer
        self.name = name

    @classmethod
    def from_spec(cls, spec: str, base: Path | None = None) -> TokenCounter:
        """``embedded`` (SmolLM2's tokenizer), a tokenizer.json file, a folder holding one, or a hub id
        that the local transformers cache can resolve."""
        from tokenizers import Tokenizer

        if spec == "embedded":
            from curate.models import SMOLLM2_NAME, smollm2_tokenizer_dir

            return cls(Tokenizer.from_file(str(smollm2_tokenizer_dir() / "tokenizer.json")), SMOLLM2_NAME)
        path = Path(spec).expanduser()
        if not path.is_absolute() and base is not None and (base / path).exists():
            path = base / path
        if path.is_file():
            return cls(Tokenizer.from_file(str(path)), path.name)
        if path.is_dir() and (path / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(path / "tokenizer.json")), path.name)
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(spec)
        except Exception as exc:  # noqa: BLE001 - report any loader failure the same way
            raise ValueError(
                f"tokenizer {spec!r}: not a tokenizer.json, a folder with one, or a model id available offline ({exc})"
            ) from exc
        if getattr(tok, "backend_tokenizer", None) is None:
            raise ValueError(f"tokenizer {spec!r} has no fast (Rust) tokenizer")
        return cls(tok.backend_tokenizer, spec)

    def count(self, texts: list[str]) -> list[int]:
        """The token count of each text (no special tokens added)."""
        encode = getattr(self._tok, "encode_batch_fast", None) or self._tok.encode_batch
        return [len(e.ids) for e in encode(texts, add_special_tokens=False)]

    def count_messages(self, messages: pl.Series) -> list[int]:
        """The token count of each conversation: every turn's content joined by newlines, roles not counted."""
        texts = (
            messages.to_frame("m")
            .select(pl.col("m").list.eval(pl.element().struct.field("content")).list.join("\n"))
            .to_series()
            .to_list()
        )
        return self.count(texts)
