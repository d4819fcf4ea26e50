"""Numeric answers: find the numbers in a text, take the answer (the last one by default), compare as numbers.

``numeric_match`` is the grader for math word problems (GSM8K) and any task whose answer is one number. A
prediction such as "16 - 3 - 4 = 9 eggs, so she makes 9 * $2 = $18." is read as the number 18 and compared
with the reference's number, so "18", "18.", "18.0", "$18", "18 dollars", "18%" and a reasoning chain ending
in 18 all equal a reference of "18" or "#### 18"; "17", "-18", "1.8" and a chain's first number do not.

What counts as a number (:func:`find_numbers`):

- digits with an optional decimal part: ``18``, ``3.6``, ``.5``, ``5.0`` (= 5); a trailing period ends a
  sentence, it is not part of the number (``18.`` is 18);
- thousands separated by commas in groups of three: ``65,960``, ``1,450,000`` (= 65960, 1450000); commas
  elsewhere separate numbers (``3,5,7`` is three numbers); a decimal comma (``3,5`` for 3.5) is not read;
- a sign directly before the digits or the currency symbol: ``-10``, ``−10`` (U+2212, the Unicode minus),
  ``+5``, ``-$18``, ``$-18``; a hyphen glued to a word or a number is not a sign (``16-3`` is 16 and 3,
  ``COVID-19`` is 19), nor is one followed by a space (``16 - 3``);
- a currency symbol before the number (``$ € £ ¥ ₹``) and any unit or ``%`` after it are ignored: ``18%`` is
  18, not 0.18 (GSM8K writes percentages as the number);
- a simple fraction of two whole numbers: ``1/2`` (= 0.5), ``-3/4``; a date-like ``12/25/2020`` is three
  numbers, and a mixed number ``1 1/2`` is 1 and 1/2 (its last number is 1/2);
- an exponent: ``1.5e3`` (= 1500).

Digits glued to letters (``H2O``, ``x2``) are not numbers; ``3rd`` and ``5km`` are 3 and 5. Words ("ten",
"minus 10") are not read. Numbers are parsed exactly (as fractions), so no float rounding enters.

Comparison (:func:`numbers_match`): ``|pred - ref| <= max(rel_tolerance * max(|pred|, |ref|), tolerance)``
with defaults ``rel_tolerance=1e-12`` and ``tolerance=0``: exact up to float rounding (a value printed from
float arithmetic, 0.30000000000000004, equals 0.3) while whole numbers below 10^12 must match exactly (a
relative 1e-9 would accept 1,000,000,001 for 1,000,000,000). Set ``tolerance: 0.01`` for answers given to two
decimals, ``rel_tolerance: 0.01`` for 1%.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

from evalsuite.metrics.base import MetricResult, register

# A number, never glued to a word character or a decimal point before it; see the module docstring.
_NUMBER = re.compile(
    r"""
    (?<![\w.])
    (?P<sign>[-+\u2212])?(?:[$€£¥₹](?P<sign2>[-+\u2212])?)?
    (?:
        (?<![\d/])(?P<num>\d+)/(?P<den>\d+)(?![/\d]|\.\d)      # 1/2, never a piece of 12/25/2020
      | (?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.(?P<frac>\d+))?  # 65,960  18  3.6
      | \.(?P<dec>\d+)                                          # .5
    )
    (?:[eE](?P<exp>[-+]?\d+)(?!\w))?
    """,
    re.VERBOSE,
)

TAKE = ("last", "first")


def find_numbers(text: str) -> list[Fraction]:
    """Every number in ``text``, in order, as exact fractions (the rules are in the module docstring)."""
    out = []
    for m in _NUMBER.finditer(text):
        if m["num"] is not None:
            if int(m["den"]) == 0:
                continue  # "1/0" is no number
            value = Fraction(int(m["num"]), int(m["den"]))
        elif m["int"] is not None:
            value = Fraction(m["int"].replace(",", "") + (f".{m['frac']}" if m["frac"] else ""))
        else:
            value = Fraction(f"0.{m['dec']}")
        if m["exp"] is not None:
            exp = int(m["exp"])
            if abs(exp) > 400:  # beyond any float; a typo or an identifier, not a number worth a huge integer
                continue
            value *= Fraction(10) ** exp
        if "-" in ((m["sign"] or "") + (m["sign2"] or "")).replace("\u2212", "-"):
            value = -value
        out.append(value)
    return out


def answer_number(text: str | None, take: str = "last") -> Fraction | None:
    """The answer number of ``text``: its last number (``take="first"``: its first); None when it has none."""
    if take not in TAKE:
        raise ValueError(f"take must be one of {TAKE}, got {take!r}")
    if text is None:
        return None
    numbers = find_numbers(text)
    if not numbers:
        return None
    return numbers[-1] if take == "last" else numbers[0]


def numbers_match(pred: Fraction, ref: Fraction, tolerance: float = 0.0, rel_tolerance: float = 1e-12) -> bool:
    """``|pred - ref| <= max(rel_tolerance * max(|pred|, |ref|), tolerance)``, computed exactly."""
    allowed = max(Fraction(str(rel_tolerance)) * max(abs(pred), abs(ref)), Fraction(str(tolerance)))
    return abs(pred - ref) <= allowed


@register("numeric_match", binary=True)
def numeric_match(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    extract: dict | None = None,
    take: str = "last",
    tolerance: float = 0.0,
    rel_tolerance: float = 1e-12,
) -> MetricResult:
    """Share (0-1) of predictions whose answer number equals a reference's number (GSM8K-style grading).

    The answer is the last number of the prediction (``take: first`` for the first), or of what ``extract``
    returns (``{name: gsm8k_strict}``, ``{regex: ..., take: ...}``, ``{json_field: ...}``; with
    ``references: true`` the references go through it too, else they are read like the prediction: the last
    number of "...#### 18" is 18). Several references: any one matching counts. Numbers and the comparison
    are described in the module docstring.

    A prediction without an answer number is wrong, counted in ``details["no_answer"]`` (of those, the ones
    where ``extract`` found nothing are also ``details["unparsed"]``, as for every metric). A reference without
    a number does not stop the metric: its example is scored wrong and counted in
    ``details["unparsed_references"]``, with the first indexes in ``details["unparsed_reference_examples"]``,
    so one bad item never loses a whole run.
    """
    from evalsuite.metrics.extract import prepare

    if take not in TAKE:
        raise ValueError(f"take must be one of {TAKE}, got {take!r}")
    for name, tol in (("tolerance", tolerance), ("rel_tolerance", rel_tolerance)):
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or tol < 0:
            raise ValueError(f"{name} must be a number >= 0, got {tol!r}")
    preds, refs, details = prepare(predictions, references, extract, unparsed_references="wrong")
    bad_refs = details.get("unparsed_reference_examples", [])
    scores, no_answer, unreadable = [], 0, []
    for i, (p, rs) in enumerate(zip(preds, refs)):
        ref_numbers = [n for n in (answer_number(r, take) for r in rs) if n is not None]
        if not ref_numbers:
            unreadable.append(i)
        pred = answer_number(p, take)
        if pred is None:
            no_answer += 1
        hit = pred is not None and any(numbers_match(pred, r, tolerance, rel_tolerance) for r in ref_numbers)
        scores.append(float(hit))
    bad = sorted(set(bad_refs) | set(unreadable))
    details.update(
        n=len(scores), matched=int(sum(scores)), no_answer=no_answer, unparsed_references=len(bad),
        unparsed_reference_examples=bad[:20], take=take, tolerance=tolerance, rel_tolerance=rel_tolerance,
    )
    return MetricResult("numeric_match", sum(scores) / len(scores), scores, details)

