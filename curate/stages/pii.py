"""Personal data in message text: e-mail addresses, phone numbers, IP addresses, payment card numbers.

Detection runs in two steps. A permissive Polars regular expression over every scanned message finds the
few messages that could hold PII (one vectorized pass; instruction data is mostly free of it). Only those
messages go through the precise detectors below, in Python (lookarounds, validation), so validation costs
nothing on the bulk of the data.

- ``email``: ``local@domain.tld`` with a dotted domain and an alphabetic TLD.
- ``phone``: an international number written with ``+`` (8 to 15 digits, as E.164 allows); a North American
  number written with separators, ``(212) 555-0147``, ``212-555-0147``, ``212.555.0147``, ``+1 212 555 0147``
  (area code and exchange must start 2-9, so ``123-456-7890`` is not one); or 7 to 15 digits right after a
  word like "phone", "tel", "mobile", "fax", "call me at". Arithmetic, years, dates, prices and plain digit
  runs do not qualify: a number needs a ``+``, the NANP grouping with separators, or a phone word before it.
- ``ip``: IPv4 (four octets 0-255, not inside a longer dotted number, not right after "version"/"v"/
  "release"/"build", so ``v1.2.3.4`` is a version) and IPv6 (whatever :mod:`ipaddress` accepts, with at least
  three groups, so ``a::b`` in C++ is not one).
- ``card``: 13 to 19 digits, plain or grouped in fours (Amex 4-6-5, Diners 4-6-4) with one kind of separator,
  a known issuer prefix (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro) and a valid Luhn
  check digit. An ISBN or a random 16-digit number is not a card.

With ``skip_non_personal`` (default), values that identify no person are left alone: addresses at the reserved
example domains (``example.com``/``.org``/``.net``, ``.test``, ``.example``, ``.invalid``, ``.localhost``);
private, loopback, link-local, documentation and other non-global IP ranges (``192.168.1.1``,
``255.255.255.0``, ``2001:db8::1``) and the well-known public resolvers (``8.8.8.8``, ``1.1.1.1``...); North
American toll-free numbers (800, 888, 877, 866, 855, 844, 833: businesses and hotlines), the fictional 555
exchange and dummy digit runs (``123-456-7890``, ``555-5555``); and the published test card numbers
(``4111 1111 1111 1111``...).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from curate.frames import with_derived
from curate.schema import MESSAGES
from curate.stages import RecordStage, StageParams, register

Kind = Literal["email", "phone", "ip", "card"]
KINDS: tuple[str, ...] = ("email", "phone", "ip", "card")
PLACEHOLDER = {"email": "[EMAIL]", "phone": "[PHONE]", "ip": "[IP]", "card": "[CARD]"}

# -- the screen: permissive (a superset of what the precise detectors accept), Rust regex syntax ---------------
_SCREEN = {
    "email": r"[A-Za-z0-9._%+-]@[A-Za-z0-9-]+\.[A-Za-z0-9.-]*[A-Za-z]{2}",
    "phone": (
        r"(?:^|[^\w+])\+\d[\d ().-]{6,}\d"
        r"|\d{3}\)?[ .\t-]?\d{3}[ .\t-]\d{4}"
        r"|(?i:phone|tel|mobile|cell|fax|call|whatsapp|sms)[^\d]{0,24}[+(]?\d[\d ().-]{5,}\d"
    ),
    "ip": r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f.:]*[0-9A-Fa-f]",
    "card": r"(?:^|[^\d.,])\d(?:[ -]?\d){12,18}",
}

# -- the precise detectors (Python re) ----------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?![\w])")
_PHONE_NANP = re.compile(
    r"(?<![\w.+/-])(?:\+?1[ .-]?)?(?:\(([2-9]\d\d)\) ?|([2-9]\d\d)([ .-]))([2-9]\d\d)[ .-](\d{4})(?![\w]|[.,/-]\d)"
)
_PHONE_WORD = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|cellphone|fax|whatsapp|sms|call me at|call us at|call)\b"
    r"(?:\s*(?:number|no\.?|#))?[\s:.=-]{0,4}(\+?\(?\d[\d ().-]{5,22}\d)(?![\w]|[.,]\d)"
)
_IPV4 = re.compile(
    r"(?<![\w.-])((?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))(?![\w-]|\.\d)"
)
# a dotted quad right after one of these words is a version, section or EC number, not an address
_NOT_IP_BEFORE = re.compile(
    r"(?i)(?:\b(?:version|ver|release|build|firmware|rev|revision|ec|section|sec|chapter|ch|clause|article|art"
    r"|rule|step|item|figure|fig|table|appendix|no|number|oid)\.?|\bv|§)\s*$"
)
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:)[0-9A-Fa-f:.]{3,45}(?![\w:])")
# a run of digit groups; cards are looked for among its contiguous sub-runs, so a card next to other numbers
# ("Tel 123 4111 1111 1111 1111") is still found
_DIGIT_RUN = re.compile(r"(?<![\w.,/-])\d+(?:[ -]\d+)*(?![\w]|[.,/-]\d)")
_DIGITS = re.compile(r"\d+")

_RESERVED_DOMAINS = ("example.com", "example.org", "example.net")
_RESERVED_TLDS = ("test", "example", "invalid", "localhost")
_PUBLIC_SERVICE_IPS = frozenset(
    ["8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112", "208.67.222.222", "208.67.220.220",
     "2001:4860:4860::8888", "2001:4860:4860::8844", "2606:4700:4700::1111", "2606:4700:4700::1001"]
)
_TEST_CARDS = frozenset(
    """4111111111111111 4242424242424242 4012888888881881 4222222222222 4000056655665556 4000000000000002
    4000000000009995 4000002500003155 5555555555554444 5105105105105100 5454545454545454 2223003122003222
    5200828282828210 378282246310005 371449635398431 378734493671000 6011111111111117 6011000990139424
    6011000000000004 3530111333300000 3566002020360505 30569309025904 38520000023237 36227206271667
    6200000000000005 6304000000000000""".split()
)


@dataclass(frozen=True)
class Match:
    """One detected value: its kind (email, phone, ip, card), character span in the text and the text itself."""
    kind: str
    start: int
    end: int
    text: str


def luhn_ok(digits: str) -> bool:
    """Whether a card number's digits pass the Luhn checksum (real card numbers do; random digit runs mostly not)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _issuer_ok(d: str) -> bool:
    n = len(d)
    if d[0] == "4":
        return n in (13, 16, 19)  # Visa
    p2, p4, p6 = int(d[:2]), int(d[:4]), int(d[:6])
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16  # Mastercard
    if p2 in (34, 37):
        return n == 15  # Amex
    if p4 == 6011 or 644 <= int(d[:3]) <= 649 or p2 == 65 or 622126 <= p6 <= 622925:
        return 16 <= n <= 19  # Discover
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19  # JCB
    if 300 <= int(d[:3]) <= 305 or p2 in (36, 38, 39):
        return 14 <= n <= 19  # Diners
    if p2 == 62:
        return 16 <= n <= 19  # UnionPay
    if p2 == 50 or 56 <= p2 <= 69:
        return 12 <= n <= 19  # Maestro
    return False


def _card_grouping_ok(text: str) -> bool:
    seps = {c for c in text if not c.isdigit()}
    if not seps:
        return len(text) in (15, 16)  # a bare run of another length is a number, not a card
    if len(seps) > 1:
        return False
    groups = [len(g) for g in re.split(r"[ -]", text)]
    if groups in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4


_TOLL_FREE = frozenset({"800", "888", "877", "866", "855", "844", "833"})
_RUNS = "01234567890123456789"


def _phone_not_personal(number: str) -> bool:
    """Toll-free or fictional North American numbers and dummy digit runs (1234567, 5555555, 0000000)."""
    d = re.sub(r"\D", "", number)
    national = d[1:] if len(d) == 11 and d[0] == "1" else d
    if len(national) == 10 and (national[:3] in _TOLL_FREE or "555" in (national[:3], national[3:6])):
        return True
    if len(national) == 7 and national[:3] == "555":
        return True
    return len(set(d)) == 1 or national in _RUNS or national in _RUNS[::-1]


_PLACEHOLDER_LOCAL = re.compile(
    r"(?i)(?:example|your[._-]?(?:name|email|mail)|user[._-]?name|user|name|someone|somebody)\d*"
)
_PLACEHOLDER_HOST = re.compile(
    r"(?i)(?:example.*|your.*|my[-_]?(?:domain|company|site|website)|domain|company|sample|acme)\d*"
)


def _email_not_personal(address: str) -> bool:
    """Reserved example domains, and the stock placeholders of templates and tutorials
    (``example@...``, ``yourname@...``, ``...@yourdomain.com``, ``...@example1.com``, ``...@company.com``)."""
    local, domain = address.lower().rsplit("@", 1)
    labels = domain.split(".")
    if labels[-1] in _RESERVED_TLDS or ".".join(labels[-2:]) in _RESERVED_DOMAINS:
        return True
    return bool(_PLACEHOLDER_LOCAL.fullmatch(local) or _PLACEHOLDER_HOST.fullmatch(labels[-2]))


def _is_card(text: str, skip_non_personal: bool) -> bool:
    digits = re.sub(r"\D", "", text)
    return (
        _card_grouping_ok(text)
        and _issuer_ok(digits)
        and luhn_ok(digits)
        and len(set(digits)) > 1
        and not (skip_non_personal and digits in _TEST_CARDS)
    )


def _ip_public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return ip.is_global and not ip.is_multicast and str(ip) not in _PUBLIC_SERVICE_IPS


def find_pii(text: str, kinds: tuple[str, ...] = KINDS, skip_non_personal: bool = True) -> list[Match]:
    """Every PII match in ``text``, in order, without overlaps (an e-mail wins over a phone inside it...)."""
    found: list[Match] = []
    if "email" in kinds:
        for m in _EMAIL.finditer(text):
            if skip_non_personal and _email_not_personal(m.group()):
                continue
            found.append(Match("email", m.start(), m.end(), m.group()))
    if "card" in kinds:
        for run in _DIGIT_RUN.finditer(text):
            groups = [(g.start(), g.end()) for g in _DIGITS.finditer(text, run.start(), run.end())]
            for i in range(len(groups)):
                size = 0
                for j in range(i, len(groups)):
                    size += groups[j][1] - groups[j][0]
                    if size > 19:
                        break
                    if size >= 13:
                        start, end = groups[i][0], groups[j][1]
                        if _is_card(text[start:end], skip_non_personal):
                            found.append(Match("card", start, end, text[start:end]))
    if "ip" in kinds:
        for m in _IPV4.finditer(text):
            if _NOT_IP_BEFORE.search(text[max(0, m.start() - 12) : m.start()]):
                continue
            if skip_non_personal and all(len(o) == 1 for o in m.group(1).split(".")):
                continue  # 1.2.3.4, 5.1.3.2: versions, outline and EC numbers far more often than hosts
            if skip_non_personal and not _ip_public(m.group(1)):
                continue
            found.append(Match("ip", m.start(), m.end(), m.group()))
        for m in _IPV6.finditer(text):
            cand = m.group().rstrip(".")
            try:
                ip = ipaddress.IPv6Address(cand)
            except ValueError:
                continue
            if len([g for g in cand.split(":") if g]) < 3:
                continue
            if skip_non_personal and not _ip_public(str(ip)):
                continue
            found.append(Match("ip", m.start(), m.start() + len(cand), cand))
    if "phone" in kinds:
        spans = []
        for m in _PHONE_INTL.finditer(text):
            digits = sum(c.isdigit() for c in m.group())
            bare = digits + 1 == len(m.group())
            # "+4915112345678" is a number as written; a bare "+960397912423686" in a sum is not
            if (10 <= digits <= 13) if bare else (8 <= digits <= 15):
                spans.append((m.start(), m.end()))
        for m in _PHONE_NANP.finditer(text):
            if m.group(3) and text[m.start(4) + 3] != m.group(3):
                continue  # 212-555.0147: mixed separators
            spans.append((m.start(), m.end()))
        for m in _PHONE_WORD.finditer(text):
            if 7 <= sum(c.isdigit() for c in m.group(1)) <= 15:
                spans.append((m.start(1), m.end(1)))
        for start, end in spans:
            if not (skip_non_personal and _phone_not_personal(text[start:end])):
                found.append(Match("phone", start, end, text[start:end]))
    # earlier start wins; on a tie the longer match; drop anything overlapping an accepted match
    found.sort(key=lambda x: (x.start, -(x.end - x.start)))
    out: list[Match] = []
    for m in found:
        if out and m.start < out[-1].end:
            continue
        out.append(m)
    return out


def mask(m: Match) -> str:
    """A match with most of it hidden, for details and reports: never the raw value."""
    t = m.text
    if m.kind == "email":
        local, domain = t.rsplit("@", 1)
        host, _, tld = domain.rpartition(".")
        return f"{local[:1]}***@{host[:1]}***.{tld}"
    if m.kind == "card":
        digits = re.sub(r"\D", "", t)
        return f"****{digits[-4:]}"
    if m.kind == "ip":
        if ":" in t:
            return t.split(":", 1)[0] + ":****"
        return t.split(".", 1)[0] + ".*.*.*"
    # phone: keep the separators and the last two digits
    total = sum(c.isdigit() for c in t)
    seen = 0
    chars = []
    for c in t:
        if c.isdigit():
            seen += 1
            chars.append(c if seen > total - 2 else "*")
        else:
            chars.append(c)
    return "".join(chars)


def redact(text: str, matches: list[Match]) -> str:
    """``text`` with each match (sorted, non-overlapping) replaced by its kind's placeholder ([EMAIL], [PHONE]...)."""
    parts, at = [], 0
    for m in matches:
        parts.append(text[at : m.start])
        parts.append(PLACEHOLDER[m.kind])
        at = m.end
    parts.append(text[at:])
    return "".join(parts)


@register
class PII(RecordStage):
    """Finds e-mail addresses, phone numbers, IP addresses and payment card numbers in message text.

    ``action``: ``flag`` keeps the record and only scores it; ``redact`` keeps it with each match replaced by
    ``[EMAIL]``, ``[PHONE]``, ``[IP]`` or ``[CARD]`` (``fixes`` gains ``pii_redacted``; ``prompt_text``,
    ``response_text`` and ``n_chars`` are recomputed, ``n_tokens`` left as it was); ``drop`` rejects it with
    reason ``pii`` and a detail naming the kinds with a masked example (never the raw value).

    Scores: ``pii_kinds`` (the kinds found, comma-separated in a fixed order; null when none) and
    ``pii_count`` (matches over the scanned turns).
    """

    name = "pii"
    reasons = ("pii",)
    score_columns = ("pii_kinds", "pii_count")
    rewrites_messages = True  # the stage may rewrite messages (action "redact")

    class Params(StageParams):
        """Parameters of ``pii``."""

        action: Literal["flag", "redact", "drop"] = Field("redact", description=(
            "redact (default): keep the record with each match replaced by [EMAIL], [PHONE], [IP] or [CARD], so it stays "
            "usable and no personal value reaches a model; drop: reject it (reason pii), for zero tolerance; flag: keep "
            "it unchanged and only score it, to review first (the default stage list flags)"))
        kinds: list[Kind] = Field(list(KINDS), min_length=1, description="detectors to run: any of email, phone, ip, card")
        fields: list[Literal["system", "user", "assistant", "tool"]] = Field(["system", "user", "assistant", "tool"], min_length=1, description=(
            "roles whose turns are scanned (and redacted); a preference pair's rejected completion is scanned too"))
        skip_non_personal: bool = Field(True, description=(
            "leave alone values that identify no person: example domains, private and documentation IP ranges, "
            "toll-free and 555 numbers, test cards"))

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        # only "redact" rewrites: with flag/drop the runner need not copy messages back
        self.rewrites_messages = self.params.action == "redact"

    def evaluate(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Score ``pii_kinds`` / ``pii_count`` per record over the configured roles; then by ``action``: nothing
        more (flag), matches replaced in ``messages`` (redact), or reason ``pii`` with masked examples (drop)."""
        p = self.params
        kinds = tuple(k for k in KINDS if k in p.kinds)
        n = batch.height
        screen = "|".join(f"(?:{_SCREEN[k]})" for k in kinds)
        counts = np.zeros(n, np.int64)
        found: dict[int, dict[str, str]] = {}  # row -> kind -> masked example
        redactions: dict[str, dict[int, dict[int, str]]] = {"messages": {}, "rejected": {}}  # side -> row -> turn -> text
        # a preference pair's rejected completion is training text too: scanned (and redacted) like the rest
        sides = ["messages"] + (["rejected"] if "rejected" in batch.columns and batch["rejected"].null_count() < n else [])
        for side in sides:
            turns = self._turns(batch, side)
            cand = turns.filter(
                pl.col("role").is_in(p.fields) & pl.col("content").is_not_null() & pl.col("content").str.contains(screen)
            )
            for row, turn, content in zip(cand["_row"].to_list(), cand["_turn"].to_list(), cand["content"].to_list()):
                matches = find_pii(content, kinds, p.skip_non_personal)
                if not matches:
                    continue
                counts[row] += len(matches)
                for m in matches:
                    found.setdefault(row, {}).setdefault(m.kind, mask(m))
                if p.action == "redact":
                    redactions[side].setdefault(row, {})[turn] = redact(content, matches)
        kinds_col: list[str | None] = [None] * n
        detail: list[str | None] = [None] * n
        for row, ex in found.items():
            kinds_col[row] = ",".join(k for k in KINDS if k in ex)
            if p.action == "drop":
                c = counts[row]
                detail[row] = f"{c} match{'es' if c > 1 else ''}: " + ", ".join(f"{k} {ex[k]}" for k in KINDS if k in ex)
        out = self._apply_redactions(batch, redactions) if any(redactions.values()) else batch
        reason = None
        if p.action == "drop" and found:
            reason = pl.Series(["pii" if c else None for c in counts], dtype=pl.Utf8)
        return out.with_columns(
            reason=reason if reason is not None else pl.lit(None, dtype=pl.Utf8),
            detail=pl.Series(detail, dtype=pl.Utf8),
            pii_kinds=pl.Series(kinds_col, dtype=pl.Utf8),
            pii_count=pl.Series(counts, dtype=pl.Int64),
        )

    @staticmethod
    def _turns(batch: pl.DataFrame, side: str) -> pl.DataFrame:
        """One row per turn of column ``side`` (``messages`` or ``rejected``): its fields plus ``_row`` and ``_turn``."""
        n = batch.height
        lengths = batch[side].list.len().fill_null(0).to_numpy().astype(np.int64)
        starts = np.cumsum(lengths) - lengths
        turns = batch.select(pl.col(side).explode()).unnest(side)
        if len(turns) == int(lengths.sum()):
            return turns.with_columns(
                _row=pl.Series(np.repeat(np.arange(n), lengths)),
                _turn=pl.Series(np.arange(int(lengths.sum())) - np.repeat(starts, lengths)),
            )
        # null or empty lists explode to one null row each: number the turns the general way
        return (
            batch.select(pl.col(side))
            .with_row_index("_row")
            .explode(side)
            .with_columns(_turn=pl.int_range(pl.len()).over("_row"))
            .unnest(side)
            .with_columns(pl.col("_row").cast(pl.Int64))
        )

    @staticmethod
    def _apply_redactions(batch: pl.DataFrame, redactions: dict[str, dict[int, dict[int, str]]]) -> pl.DataFrame:
        """New messages and rejected turns (and fixes, prompt/response/rejected text, n_chars) for the redacted rows;
        n_tokens unchanged. ``redactions``: side -> row -> turn -> redacted text."""
        rows = sorted(set(redactions["messages"]) | set(redactions["rejected"]))
        new_sides = {}
        for side in ("messages", "rejected"):
            if side not in batch.columns:
                continue
            convs = batch[side].gather(rows).to_list()
            for row, conv in zip(rows, convs):
                for turn, text in redactions[side].get(row, {}).items():
                    conv[turn] = {**conv[turn], "content": text}
            new_sides[side] = pl.Series(convs, dtype=MESSAGES)
        sub = with_derived(
            batch[rows].select(*new_sides, "fixes").with_columns(
                fixes=pl.col("fixes").list.concat(pl.lit(["pii_redacted"], dtype=pl.List(pl.Utf8))), **new_sides,
            )
        )
        n = batch.height
        changed = ["messages", "fixes", "prompt_text", "response_text", "n_chars"]
        if "rejected" in new_sides:
            changed += ["rejected", "rejected_text"]
        full = {}
        for col in changed:
            values: list = [None] * n
            for row, v in zip(rows, sub[col].to_list()):
                values[row] = v
            full[f"_new_{col}"] = pl.Series(values, dtype=batch.schema[col])
        hit = np.zeros(n, bool)
        hit[rows] = True
        return (
            batch.with_columns(_hit=pl.Series(hit), **full)
            .with_columns(pl.when("_hit").then(f"_new_{c}").otherwise(c).alias(c) for c in changed)
            .drop("_hit", *full)
        )
