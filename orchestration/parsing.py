"""Reading a critic's score and a validator's verdict out of free text.

Small models break formats: they bold the label, drop the "/10", write "7 out of 10" or
answer "looks good" instead of "VERDICT: PASS". Each parser tries the asked-for format
first and falls back to looser phrasings; when nothing fits it returns None, which the
callers treat as "not good enough" and never as a top mark.
"""

from __future__ import annotations

import re
from typing import Literal

Verdict = Literal["pass", "fail"]

_MAX_SCORE = 10.0
_NUMBER = r"(-?\d+(?:\.\d+)?)"
_OUT_OF = rf"(?:\s*(?:/|out\s+of)\s*{_NUMBER})?"
# Asked-for format, also "Score = 7", "score: 7 / 10", "Rating: 8/10"; the last one wins
# because the critique is told to end with it.
_LABELLED = re.compile(rf"\b(?:score|rating)\s*[:=]\s*{_NUMBER}{_OUT_OF}", re.IGNORECASE)
# "score of 7 out of 10", "I would score it 6/10", "rate this answer a 4". Only short
# filler words may stand between, so an echoed "SCORE: N/10" template reads as no score.
_PHRASED = re.compile(
    r"\b(?:score|rate|rating|grade)[sd]?\b"
    r"(?:\s*[:=]|\s+(?:of|is|it|this|that|the|answer|response|a|an|at|as|would|be|to|me|i|give|gets?)\b){0,4}"
    rf"\s*{_NUMBER}{_OUT_OF}",
    re.IGNORECASE,
)
# A bare "7/10" or "7 out of 10": only over 10 or 100, so "1/2 cup" is no score.
_FRACTION = re.compile(rf"(?<![\d./]){_NUMBER}\s*(?:/|out\s+of)\s*(10|100)\b(?![./]\d)", re.IGNORECASE)

_VERDICT = re.compile(r"\bverdict\b\s*[:=\-]?\s*(pass(?:ed)?|fail(?:ed)?)\b", re.IGNORECASE)
_NEGATED_PASS = re.compile(
    r"\b(?:not|never|doesn't|does\s+not|isn't|is\s+not|cannot|can't)\s+(?:\w+\s+)?"
    r"(?:pass(?:es|ed)?|approved?|correct|good|acceptable)\b",
    re.IGNORECASE,
)
_FAIL_WORDS = re.compile(
    r"\b(?:fail(?:s|ed|ing|ure)?|incorrect|wrong|reject(?:ed)?|inaccurate|invalid|unacceptable)\b", re.IGNORECASE
)
_PASS_WORDS = re.compile(
    r"\b(?:pass(?:es|ed)?|approved?|looks\s+good|lgtm|correct|accurate|acceptable|valid)\b", re.IGNORECASE
)


def _plain(text: str) -> str:
    # Markdown emphasis and headings get between label and value ("**SCORE:** 7/10").
    return re.sub(r"[*_`#]", "", text)


def _scaled(value: str, scale: str | None) -> float:
    number = float(value)
    if scale is not None and float(scale) > 0:
        number = number * _MAX_SCORE / float(scale)
    return min(max(number, 0.0), _MAX_SCORE)


def parse_score(text: str) -> float | None:
    """The critic's score on 0..10 (clamped), or None when the text holds none."""
    plain = _plain(text)
    for pattern in (_LABELLED, _PHRASED, _FRACTION):
        matches = list(pattern.finditer(plain))
        if matches:
            last = matches[-1]
            return _scaled(last.group(1), last.group(2))
    return None


def parse_verdict(text: str) -> Verdict | None:
    """PASS or FAIL from a validator's text; None when it is missing or contradicts itself."""
    plain = _plain(text)
    explicit = _VERDICT.findall(plain)
    if explicit:
        return "pass" if explicit[-1].lower().startswith("pass") else "fail"
    if _NEGATED_PASS.search(plain):
        return "fail"
    failed = bool(_FAIL_WORDS.search(plain))
    passed = bool(_PASS_WORDS.search(plain))
    if failed == passed:
        return None
    return "fail" if failed else "pass"
