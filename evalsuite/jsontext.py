"""The first JSON value inside free text: what a structured-output extractor and a judge's reply parser
both read out of model outputs (code fences, prose before and after)."""

from __future__ import annotations

import json
import re

_JSON = json.JSONDecoder()


def first_json_value(text: str) -> dict | list | None:
    """The first object or array that decodes, trying every ``{`` or ``[`` in order; None when none does.

    Markdown code fences, prose before and after, or a second JSON object later in the text all stay
    outside the first value that decodes."""
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _end = _JSON.raw_decode(text, match.start())
        except ValueError:
            continue
        return value
    return None
